// AnswerBackend over a running receiver service: one Receiver.Answer RPC per
// question through the generated stub, so the reported bytes and times
// include the real network between sharer and receiver. The receiver renders
// the prompt with its own chat template; the transfer report and stage
// timings come from its AnswerResponse.
//
// Sharer-only is ANSWER_MODE_SHARER_ONLY (the receiver asks its sharer to
// answer alone; no KV transfer is reported). Not available over gRPC: the
// in-process selection strategies, and per-run model pairs (grid `sharer`,
// `token_alignment`, `alignment_strategy`): the sharer, fuser, sharer
// tokenizer and token alignment are the receiver service's flags
// (--sharer_target, --fuser_dir, --sharer_tokenizer_dir, --token_alignment,
// --alignment_strategy), fixed for its lifetime. Both are INVALID_ARGUMENT
// before any call; to sweep pairs over gRPC, start one receiver per pair and
// run a grid without those keys against each.
// Text-to-text is sent as ANSWER_MODE_TEXT_TO_TEXT (the receiver runs it
// through Sharer.Generate); AnswerRequest has no separate background
// question, so its sharer reads the whole multiple-choice prompt (the
// reference gives it the question without its options), and the text bytes
// are taken from the response's transfer.wire_bytes.
#ifndef KVWIRE_TOOLS_EVAL_GRPC_BACKEND_H_
#define KVWIRE_TOOLS_EVAL_GRPC_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/service/channel.h"
#include "tools/eval/backend.h"

namespace kvwire {
namespace eval {

struct GrpcBackendOptions {
  std::string target;            // "host:port", "dns:///host:port", ...
  ChannelOptions channel;        // TLS, bearer token, message sizes.
  double timeout_seconds = 300;  // Per-RPC deadline.
  // C2C fallback policy sent with each request: "fail" (default: a question
  // whose transfer fails is an error, not a silent receiver-only answer),
  // "receiver-only", or "server" (the server's default).
  std::string fallback = "fail";
  // Layer counts for schedules indexed by receiver layer (0: unknown; such
  // schedules then fail to resolve). The map is assumed last-aligned.
  int receiver_layers = 0;
  int sharer_layers = 0;
};

absl::StatusOr<std::unique_ptr<AnswerBackend>> CreateGrpcBackend(
    const GrpcBackendOptions& options);

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_GRPC_BACKEND_H_
