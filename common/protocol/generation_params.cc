// GenerationParams validation.
#include "common/protocol/generation_params.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvwire {

absl::Status ValidateGenerationParams(const v1::GenerationParams& params,
                                      uint32_t max_new_tokens_limit) {
  if (params.max_new_tokens() > max_new_tokens_limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("generation.max_new_tokens ", params.max_new_tokens(),
                     " is over the limit of ", max_new_tokens_limit));
  }
  if (!std::isfinite(params.temperature()) || params.temperature() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "generation.temperature must be >= 0, got ", params.temperature()));
  }
  if (!std::isfinite(params.top_p()) || params.top_p() < 0 ||
      params.top_p() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "generation.top_p must lie in [0, 1], got ", params.top_p()));
  }
  return absl::OkStatus();
}

}  // namespace kvwire
