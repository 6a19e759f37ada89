// Validation of a ShareRequest against what the sharer serves, done before
// the request is queued so that bad requests never occupy a worker.
// Torch-free.
#ifndef KVWIRE_COMMON_PROTOCOL_REQUEST_VALIDATION_H_
#define KVWIRE_COMMON_PROTOCOL_REQUEST_VALIDATION_H_

#include <string>

#include "absl/status/status.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// Errors, in this order:
//  INVALID_ARGUMENT    request id longer than 64 bytes; no token ids; more
//                      tokens than info.max_prompt_tokens; a token id
//                      outside [0, vocab_size) (the message names the first
//                      offending position and value); positions that
//                      are not one per token, not strictly increasing or
//                      past max_position_embeddings (Share only);
//  FAILED_PRECONDITION expected_model_fingerprint set and different from
//                      the served model's;
//  INVALID_ARGUMENT    the transfer spec does not resolve for this model and
//                      prompt (the codec's message names the field);
//  RESOURCE_EXHAUSTED  max_payload_bytes cannot be met (the message states
//                      the smallest possible stream).
absl::Status ValidateShareRequest(const v1::ShareRequest& request,
                                  const v1::SharerInfo& info);

// Errors, in this order: the prompt checks of ValidateShareRequest
// (request id, token ids, fingerprint), then INVALID_ARGUMENT for
// generation parameters ValidateGenerationParams refuses (max_new_tokens
// over info.max_new_tokens, ...) or a prompt plus max_new_tokens past the
// model's max_position_embeddings.
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const v1::SharerInfo& info);

// The scheme label of a resolved header: the scheme's name when every
// layer uses it, "mixed" otherwise ("none" without layers).
std::string SchemeLabel(const v1::KvHeader& header);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_PROTOCOL_REQUEST_VALIDATION_H_
