// ShareRequest validation.
#include "common/protocol/request_validation.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/codec/scheme.h"
#include "common/codec/transfer_plan.h"
#include "common/protocol/generation_params.h"
#include "common/status_macros.h"

namespace kvwire {

namespace {

// What Share and Generate check of the prompt alike.
template <typename Request>
absl::Status ValidatePrompt(const Request& request,
                            const v1::SharerInfo& info) {
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id has ", request.request_id().size(),
                     " bytes; at most ", kMaxRequestIdBytes, " are allowed"));
  }
  const int n = request.token_ids_size();
  if (n == 0) {
    return absl::InvalidArgumentError(
        "token_ids is empty: the prompt must have at least one token");
  }
  if (static_cast<uint32_t>(n) > info.max_prompt_tokens()) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt has ", n, " tokens; this sharer accepts at most ",
                     info.max_prompt_tokens()));
  }
  const uint32_t vocab = info.model().vocab_size();
  for (int i = 0; i < n; ++i) {
    if (request.token_ids(i) >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token_ids[", i, "] = ", request.token_ids(i),
                       " is outside the model's vocabulary [0, ", vocab,
                       ") (ids of another tokenizer need C2C token "
                       "alignment at the receiver)"));
    }
  }
  if (!request.expected_model_fingerprint().empty() &&
      request.expected_model_fingerprint() != info.model().fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model fingerprint mismatch: the request expects ",
        request.expected_model_fingerprint(), " but this sharer serves ",
        info.model().fingerprint(), " (", info.model().name(), ")"));
  }
  return absl::OkStatus();
}

// ShareRequest.positions: none, or one per token, strictly increasing and
// below max_position_embeddings.
absl::Status ValidatePositions(const v1::ShareRequest& request,
                               const v1::ModelInfo& model) {
  const int n = request.positions_size();
  if (n == 0) return absl::OkStatus();
  if (n != request.token_ids_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("positions has ", n, " entries for ",
                     request.token_ids_size(), " token ids"));
  }
  for (int i = 1; i < n; ++i) {
    if (request.positions(i) <= request.positions(i - 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "positions must increase strictly: positions[", i,
          "] = ", request.positions(i), " after ", request.positions(i - 1)));
    }
  }
  const uint32_t limit = model.max_position_embeddings();
  if (limit > 0 && request.positions(n - 1) >= limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("positions[", n - 1, "] = ", request.positions(n - 1),
                     " is past the model's max_position_embeddings ", limit));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateShareRequest(const v1::ShareRequest& request,
                                  const v1::SharerInfo& info) {
  RETURN_IF_ERROR(ValidatePrompt(request, info));
  const int n = request.token_ids_size();
  RETURN_IF_ERROR(ValidatePositions(request, info.model()));
  auto plan =
      PlanTransfer(info.model(), static_cast<uint32_t>(n), request.spec());
  if (!plan.ok()) {
    return absl::Status(
        plan.status().code(),
        absl::StrCat("transfer spec: ", plan.status().message()));
  }
  return absl::OkStatus();
}

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const v1::SharerInfo& info) {
  RETURN_IF_ERROR(ValidatePrompt(request, info));
  RETURN_IF_ERROR(
      ValidateGenerationParams(request.generation(), info.max_new_tokens()));
  const uint64_t new_tokens = request.generation().max_new_tokens() == 0
                                  ? kDefaultMaxNewTokens
                                  : request.generation().max_new_tokens();
  const uint32_t positions = info.model().max_position_embeddings();
  if (positions > 0 &&
      static_cast<uint64_t>(request.token_ids_size()) + new_tokens >
          positions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt (", request.token_ids_size(), " tokens) plus ", new_tokens,
        " new tokens exceed the model's max_position_embeddings ", positions));
  }
  return absl::OkStatus();
}

std::string SchemeLabel(const v1::KvHeader& header) {
  if (header.layers_size() == 0) return "none";
  const v1::Scheme first = header.layers(0).scheme();
  for (const v1::LayerPlan& layer : header.layers()) {
    if (layer.scheme() != first) return "mixed";
  }
  return SchemeName(first);
}

}  // namespace kvwire
