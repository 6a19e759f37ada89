// ShareRequest validation.
#include "sharer_service/request_validation.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/codec/scheme.h"
#include "common/codec/transfer_plan.h"

namespace kvwire {

absl::Status ValidateShareRequest(const v1::ShareRequest& request,
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
                       " is outside the model's vocabulary [0, ", vocab, ")"));
    }
  }
  if (!request.expected_model_fingerprint().empty() &&
      request.expected_model_fingerprint() != info.model().fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model fingerprint mismatch: the request expects ",
        request.expected_model_fingerprint(), " but this sharer serves ",
        info.model().fingerprint(), " (", info.model().name(), ")"));
  }
  auto plan =
      PlanTransfer(info.model(), static_cast<uint32_t>(n), request.spec());
  if (!plan.ok()) {
    return absl::Status(
        plan.status().code(),
        absl::StrCat("transfer spec: ", plan.status().message()));
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
