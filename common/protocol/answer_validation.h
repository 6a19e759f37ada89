// Validation of an AnswerRequest, done in the handler before the request is
// queued so that bad requests never occupy a worker, and the receiver-side
// conventions of the request (receiver-guided selection). Torch-free.
//
// Receiver-guided token selection over the network: a C2C request whose
// spec.selection is SELECTION_EXPLICIT with *no* indices (which the sharer
// would refuse) asks the receiver to choose the tokens itself. The receiver
// prefills first, scores the prompt positions from its own cache (the
// server's --guided_selection_signal: the attention of its last prompt
// token, or its V norms), and sends the top-k, k = max(min_tokens,
// round_half_even(proportion * T)), as explicit indices to the sharer. This
// equals C2cPipeline's kReceiverAttention / kReceiverVNorm strategies.
#ifndef KVWIRE_COMMON_PROTOCOL_ANSWER_VALIDATION_H_
#define KVWIRE_COMMON_PROTOCOL_ANSWER_VALIDATION_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

struct AnswerLimits {
  // Bytes of question / message text over all messages.
  int64_t max_question_bytes = 64 << 10;
  int64_t max_messages = 64;
  uint32_t max_new_tokens = 1024;
};

// Errors, in this order:
//  INVALID_ARGUMENT  request_id longer than 64 bytes; neither a question nor
//                    messages, or both; an empty question; a message with
//                    an unknown role or no user message; more text than
//                    max_question_bytes or messages than max_messages; an
//                    unknown mode or fallback policy; max_new_tokens over
//                    the limit; temperature negative or not finite; top_p
//                    outside [0, 1]; an unknown scheme, granularity,
//                    selection mode or entropy coder in the spec; a
//                    receiver-guided selection outside C2C mode.
absl::Status ValidateAnswerRequest(const v1::AnswerRequest& request,
                                   const AnswerLimits& limits);

// Whether `spec` asks for receiver-guided selection (EXPLICIT, no indices).
bool IsReceiverGuided(const v1::TransferSpec& spec);

// AnswerMode with UNSPECIFIED resolved to C2C.
v1::AnswerMode EffectiveMode(const v1::AnswerRequest& request);

// A transfer spec in a few words: "int4 per_head sym, back 50%, zstd",
// "bf16", "int8 per_token asym, layers 0-3, <= 200000 B".
std::string DescribeTransferSpec(const v1::TransferSpec& spec);

// "c2c", "receiver-only", "text-to-text"; parsers accept '_' for '-'.
std::string AnswerModeName(v1::AnswerMode mode);
absl::Status ParseAnswerMode(absl::string_view name, v1::AnswerMode* mode);
// "receiver-only", "fail"; "server"/"" for UNSPECIFIED.
std::string FallbackPolicyName(v1::FallbackPolicy policy);
absl::Status ParseFallbackPolicy(absl::string_view name,
                                 v1::FallbackPolicy* policy);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_PROTOCOL_ANSWER_VALIDATION_H_
