// absl::Status <-> grpc::Status conversion.
#include "common/service/grpc_status.h"

#include <atomic>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"

namespace kvwire {
namespace {

constexpr absl::string_view kTruncationMarker = "... [truncated]";
constexpr int kMaxCanonicalCode = 16;  // UNAUTHENTICATED.

}  // namespace

std::string TruncateStatusMessage(absl::string_view message, size_t max_bytes) {
  if (message.size() <= max_bytes) return std::string(message);
  if (max_bytes <= kTruncationMarker.size()) {
    return std::string(kTruncationMarker.substr(0, max_bytes));
  }
  size_t cut = max_bytes - kTruncationMarker.size();
  // Back up over UTF-8 continuation bytes (10xxxxxx) so a multi-byte
  // character is never split.
  while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  return absl::StrCat(message.substr(0, cut), kTruncationMarker);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      TruncateStatusMessage(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  if (code < 0 || code > kMaxCanonicalCode) {
    return absl::UnknownError(
        absl::StrCat("gRPC status code ", code, ": ", status.error_message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(code),
                      status.error_message());
}

absl::string_view StatusCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kUnknown:
      return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

absl::string_view StatusCodeName(grpc::StatusCode code) {
  return StatusCodeName(static_cast<absl::StatusCode>(code));
}

namespace {
// Unix nanoseconds; int64 max: no shutdown.
std::atomic<int64_t> shutdown_cancels_calls_at{
    std::numeric_limits<int64_t>::max()};
}  // namespace

void NoteShutdownCancelsCallsAt(absl::Time when) {
  shutdown_cancels_calls_at = absl::ToUnixNanos(when);
}

absl::Status CancellationCause(absl::Time server_deadline) {
  constexpr absl::Duration kSkew = absl::Milliseconds(100);
  const absl::Time now = absl::Now();
  if (now + kSkew >= server_deadline) {
    return absl::DeadlineExceededError("deadline exceeded");
  }
  if (now + kSkew >= absl::FromUnixNanos(shutdown_cancels_calls_at)) {
    return absl::UnavailableError(
        "cancelled by the server's shutdown: still running when the drain "
        "timeout (--drain_timeout_seconds) ended");
  }
  return absl::CancelledError("cancelled by the client");
}

}  // namespace kvwire
