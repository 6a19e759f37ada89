// The one place where absl::Status and grpc::Status are converted into each
// other. Servers call ToGrpcStatus when finishing an RPC; clients call
// FromGrpcStatus on what a stub returned.
//
// The canonical codes of absl and gRPC share their numeric values, so the
// code is carried unchanged. Messages travel in the grpc-message trailer,
// so ToGrpcStatus truncates long messages (at a UTF-8 character boundary,
// marking the cut) to keep trailers small; absl payloads are not carried.
#ifndef KVWIRE_COMMON_SERVICE_GRPC_STATUS_H_
#define KVWIRE_COMMON_SERVICE_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace kvwire {

// Longest message ToGrpcStatus sends, in bytes (marker included).
constexpr size_t kMaxGrpcStatusMessageBytes = 1024;

// `message` cut to at most `max_bytes` bytes at a UTF-8 character boundary,
// ending with "... [truncated]" when cut.
std::string TruncateStatusMessage(
    absl::string_view message, size_t max_bytes = kMaxGrpcStatusMessageBytes);

// absl -> gRPC, same code, message truncated. An OK status maps to OK (its
// message, if any, is dropped).
grpc::Status ToGrpcStatus(const absl::Status& status);

// gRPC -> absl, same code; a code outside the canonical range becomes
// UNKNOWN with the original number in the message. The error_details
// binary trailer, if any, is not carried.
absl::Status FromGrpcStatus(const grpc::Status& status);

// The canonical name of a code: "OK", "INVALID_ARGUMENT", ...
// ("UNKNOWN" for out-of-range values). Used as a metric label value.
absl::string_view StatusCodeName(absl::StatusCode code);
absl::string_view StatusCodeName(grpc::StatusCode code);

// Why a server-side call was cancelled: DEADLINE_EXCEEDED when its deadline
// has passed, or nearly (the server's deadline is the client's timeout
// counted from the call's arrival, so it trails the client's own by the
// transit time and a client whose deadline fired cancels a little early);
// CANCELLED otherwise.
absl::Status CancellationCause(absl::Time server_deadline);

// Process-wide: a server shutting down cancels the calls still running at
// `when` (GrpcServer::Shutdown, after its drain timeout). From then on
// CancellationCause names the shutdown (UNAVAILABLE), not the client.
void NoteShutdownCancelsCallsAt(absl::Time when);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_GRPC_STATUS_H_
