// Transport security and client authentication for kvwire servers and
// channels: TLS and mutual TLS from PEM files, a bearer-token check, and
// plaintext only when explicitly allowed.
//
// The bearer token is checked by the application handlers (BearerTokenAuth::
// Check at the top of every kvwire RPC), not by an AuthMetadataProcessor:
// gRPC's insecure server credentials abort the process when given a
// processor, and a handler-level check works identically with and without
// TLS. The health and reflection services stay unauthenticated so that
// orchestrator probes need no secret. Tokens are never logged.
#ifndef KVWIRE_COMMON_SERVICE_SECURITY_H_
#define KVWIRE_COMMON_SERVICE_SECURITY_H_

#include <grpcpp/client_context.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {

struct ServerSecurityOptions {
  // PEM certificate chain and private key of the server. Both or neither.
  std::string tls_cert_path;
  std::string tls_key_path;
  // PEM CA bundle; when set, clients must present a certificate it signed
  // (mutual TLS). Needs tls_cert_path.
  std::string tls_client_ca_path;
  // Plaintext is refused unless this is set (and no certificate is given).
  bool allow_insecure = false;
  // Bearer token clients must send ("authorization: Bearer <token>"); empty
  // disables the check.
  std::string auth_token;
};

struct ClientSecurityOptions {
  // Use TLS. Implied by any tls_* path.
  bool use_tls = false;
  // PEM roots that verify the server; empty: the system roots.
  std::string tls_ca_path;
  // Client certificate chain and key for mutual TLS. Both or neither.
  std::string tls_cert_path;
  std::string tls_key_path;
  // Name the server certificate is checked against instead of the target
  // host (e.g. "localhost" when dialling an IP address).
  std::string tls_server_name;
  // Plaintext is refused unless this is set.
  bool allow_insecure = false;
  // Sent on every call by AttachBearerToken; empty: none.
  std::string auth_token;

  bool tls_enabled() const {
    return use_tls || !tls_ca_path.empty() || !tls_cert_path.empty() ||
           !tls_key_path.empty();
  }
};

// A secret from a file, trailing whitespace (newlines) removed.
// INVALID_ARGUMENT if it ends up empty; file errors as ReadFileToString
// (common/file_util.h).
absl::StatusOr<std::string> ReadSecretFile(const std::string& path);

// Server credentials for `options`: TLS (mutual with a client CA) or, only
// with allow_insecure, plaintext. INVALID_ARGUMENT for an incomplete or
// contradictory combination, FAILED_PRECONDITION for plaintext without
// allow_insecure; file errors as ReadFileToString
// (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& options);

// Channel credentials for `options`, with the same rules. The bearer token
// is not part of them (see AttachBearerToken).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const ClientSecurityOptions& options);

// One line for logs: "mutual TLS, bearer token", "TLS", "plaintext", ...
std::string DescribeSecurity(const ServerSecurityOptions& options);
std::string DescribeSecurity(const ClientSecurityOptions& options);

// Adds "authorization: Bearer <token>" to a call (no-op for an empty
// token). Works over TLS and plaintext channels alike.
void AttachBearerToken(grpc::ClientContext* context, absl::string_view token);

// Checks the bearer token of incoming calls. Thread-safe and immutable.
class BearerTokenAuth {
 public:
  // An empty token accepts every call.
  explicit BearerTokenAuth(std::string token) : token_(std::move(token)) {}

  bool enabled() const { return !token_.empty(); }
  // OK, or UNAUTHENTICATED ("missing bearer token" / "invalid bearer
  // token"). The comparison takes time independent of where tokens differ.
  absl::Status Check(const grpc::ServerContextBase& context) const;
  // The same check on an "authorization" metadata value (nullptr: absent).
  absl::Status CheckHeader(const absl::string_view* authorization) const;

 private:
  std::string token_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_SECURITY_H_
