// What both services and the in-process pipeline share about generating:
// the wire's GenerationParams validation (no Torch, for the gRPC-side
// validators), the defaults a request's zero fields stand for, and the
// text-to-text background prompt. ToGenerationOptions (receiver_session.h)
// turns them into the decoder's GenerationOptions.
#ifndef KVWIRE_COMMON_PROTOCOL_GENERATION_PARAMS_H_
#define KVWIRE_COMMON_PROTOCOL_GENERATION_PARAMS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// The sharer's prompt in text-to-text mode: the C2C paper's "Text 3"
// (arXiv 2510.03215 v2, Appendix), with {question} replaced by the question
// (the request's background_question, else its last user message).
inline constexpr char kTextToTextPrompt[] =
    "In one clear sentence, describe the most essential background knowledge "
    "needed to answer the question:{question} Do NOT directly solve or give "
    "answer to the question.";

// GenerationParams.max_new_tokens when the request leaves it 0.
inline constexpr uint32_t kDefaultMaxNewTokens = 64;

// INVALID_ARGUMENT (the message names the field) for max_new_tokens over
// `max_new_tokens_limit`, a temperature that is negative or not finite, or
// a top_p outside [0, 1].
absl::Status ValidateGenerationParams(const v1::GenerationParams& params,
                                      uint32_t max_new_tokens_limit);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_PROTOCOL_GENERATION_PARAMS_H_
