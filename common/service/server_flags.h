// The command-line flags every kvwire server shares (TLS, bearer token,
// keepalive, reflection, drain, the metrics port's TLS and token), defined once
// and linked into each server binary (kvwire-sharer, kvwire-receiver). Each
// binary keeps its own
// --listen_address and --metrics_address, whose defaults differ.
#ifndef KVWIRE_COMMON_SERVICE_SERVER_FLAGS_H_
#define KVWIRE_COMMON_SERVICE_SERVER_FLAGS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/service/metrics.h"
#include "common/service/server.h"

namespace kvwire {

// Sets everything of `options` but listen_address from the shared flags,
// reading --auth_token_file. UNAVAILABLE / NOT_FOUND when that file cannot
// be read, naming the flag.
absl::Status ServerOptionsFromFlags(ServerOptions* options);

// The metrics port's TLS and token from the shared --metrics_* flags,
// reading --metrics_auth_token_file (errors name the flag).
absl::Status MetricsSecurityFromFlags(MetricsSecurityOptions* options);

// Whether a flag defined in `path` is one of the shared server flags (for a
// binary's --help filter).
bool IsServerFlagsFile(absl::string_view path);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_SERVER_FLAGS_H_
