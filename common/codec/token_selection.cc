#include "common/codec/token_selection.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/codec/index_coding.h"
#include "common/codec/scheme.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {
namespace {

double RoundHalfEven(double x) {
  const double floor = std::floor(x);
  const double diff = x - floor;
  if (diff < 0.5) return floor;
  if (diff > 0.5) return floor + 1.0;
  return std::fmod(floor, 2.0) == 0.0 ? floor : floor + 1.0;
}

// Unbiased integer in [0, n), n >= 1: see the header.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t n) {
  const uint64_t threshold = (0 - n) % n;  // 2^64 mod n.
  while (true) {
    const uint64_t x = rng();
    if (x >= threshold) return x % n;
  }
}

std::vector<uint32_t> Iota(uint32_t first, uint32_t count) {
  std::vector<uint32_t> out(count);
  std::iota(out.begin(), out.end(), first);
  return out;
}

std::vector<uint32_t> RandomTokens(uint64_t seed, uint32_t total_tokens,
                                   uint32_t k) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> perm = Iota(0, total_tokens);
  for (uint32_t i = 0; i < k; ++i) {
    const uint64_t r = UniformBelow(rng, total_tokens - i);
    std::swap(perm[i], perm[i + r]);
  }
  perm.resize(k);
  std::sort(perm.begin(), perm.end());
  return perm;
}

absl::StatusOr<std::vector<uint32_t>> ExplicitTokens(
    const v1::TokenSelection& selection, uint32_t total_tokens) {
  std::vector<uint32_t> out(selection.indices().begin(),
                            selection.indices().end());
  for (uint32_t index : out) {
    if (index >= total_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("explicit token index ", index, " out of range [0, ",
                       total_tokens, ")"));
    }
  }
  std::sort(out.begin(), out.end());
  const auto dup = std::adjacent_find(out.begin(), out.end());
  if (dup != out.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("explicit token index ", *dup, " listed twice"));
  }
  return out;
}

// The 1-D scores as a CPU fp32 vector. Throws c10::Error on failure.
std::vector<float> ScoresToVector(const at::Tensor& scores) {
  const at::Tensor cpu = scores.detach().to(at::kCPU, at::kFloat).contiguous();
  const float* data = cpu.data_ptr<float>();
  return std::vector<float>(data, data + cpu.numel());
}

std::vector<uint32_t> TopKOfVector(const std::vector<float>& scores,
                                   int64_t k) {
  const int64_t n = static_cast<int64_t>(scores.size());
  k = std::clamp<int64_t>(k, 0, n);
  // NaN ranks lowest; (key descending, index ascending) is a strict total
  // order, so the result is deterministic.
  auto key = [&scores](uint32_t i) {
    const float s = scores[i];
    return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s;
  };
  std::vector<uint32_t> order = Iota(0, static_cast<uint32_t>(n));
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&key](uint32_t a, uint32_t b) {
                      const float ka = key(a), kb = key(b);
                      if (ka != kb) return ka > kb;
                      return a < b;
                    });
  order.resize(static_cast<size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

absl::Status CheckCommon(const v1::TokenSelection& selection,
                         uint32_t total_tokens) {
  if (std::isnan(selection.proportion())) {
    return absl::InvalidArgumentError("selection proportion is NaN");
  }
  if (total_tokens > kMaxIndexTokens) {
    return absl::InvalidArgumentError(absl::StrCat("token count ", total_tokens,
                                                   " exceeds the limit of ",
                                                   kMaxIndexTokens));
  }
  return absl::OkStatus();
}

// Top-k over CPU scores with the selection's k. Non-finite -> error.
absl::StatusOr<std::vector<uint32_t>> TopKChecked(
    const v1::TokenSelection& selection, uint32_t total_tokens,
    const std::vector<float>& scores) {
  if (scores.size() != total_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "got ", scores.size(), " token scores for ", total_tokens, " tokens"));
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("non-finite score ", scores[i], " for token ", i));
    }
  }
  const int64_t k = SelectedTokenCount(total_tokens, selection.proportion(),
                                       selection.min_tokens());
  return TopKOfVector(scores, k);
}

absl::StatusOr<std::vector<uint32_t>> NormTopK(
    const v1::TokenSelection& selection, uint32_t total_tokens,
    const at::Tensor& x, const char* name) {
  if (!x.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(
        SelectionModeName(selection.mode()), " needs the ", name, " tensor"));
  }
  if (x.dim() != 3 || !at::isFloatingType(x.scalar_type()) || x.size(0) == 0 ||
      x.size(1) != static_cast<int64_t>(total_tokens)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be a floating [kv_heads > 0, ", total_tokens,
                     ", head_dim] tensor, got ", x.toString(), " of shape ",
                     c10::str(x.sizes())));
  }
  const at::Tensor scores = TokenNormScores(x);
  if (!scores.defined()) {
    return absl::InvalidArgumentError(
        absl::StrCat("could not score the ", name, " tensor"));
  }
  return TopKChecked(selection, total_tokens, ScoresToVector(scores));
}

}  // namespace

int64_t SelectedTokenCount(int64_t total_tokens, double proportion,
                           uint32_t min_tokens) {
  if (total_tokens <= 0) return 0;
  if (!(proportion > 0.0 && proportion < 1.0)) return total_tokens;
  const double rounded =
      RoundHalfEven(proportion * static_cast<double>(total_tokens));
  const int64_t k =
      std::max<int64_t>(min_tokens, static_cast<int64_t>(rounded));
  return std::min(k, total_tokens);
}

bool SelectionNeedsScores(v1::SelectionMode mode) {
  return mode == v1::SELECTION_KNORM_TOPK || mode == v1::SELECTION_VNORM_TOPK;
}

absl::StatusOr<std::vector<uint32_t>> SelectTokens(
    const v1::TokenSelection& selection, uint32_t total_tokens,
    const at::Tensor& keys, const at::Tensor& values) {
  RETURN_IF_ERROR(CheckCommon(selection, total_tokens));
  const auto k = static_cast<uint32_t>(SelectedTokenCount(
      total_tokens, selection.proportion(), selection.min_tokens()));
  // A Torch failure here comes from the caller's tensors (shape, device).
  return GuardedAs(
      absl::StatusCode::kInvalidArgument, "token selection failed",
      [&]() -> absl::StatusOr<std::vector<uint32_t>> {
        switch (selection.mode()) {
          case v1::SELECTION_UNSPECIFIED:
          case v1::SELECTION_ALL:
            return Iota(0, total_tokens);
          case v1::SELECTION_FRONT:
            return Iota(0, k);
          case v1::SELECTION_BACK:
            return Iota(total_tokens - k, k);
          case v1::SELECTION_RANDOM:
            return RandomTokens(selection.seed(), total_tokens, k);
          case v1::SELECTION_KNORM_TOPK:
            return NormTopK(selection, total_tokens, keys, "keys");
          case v1::SELECTION_VNORM_TOPK:
            return NormTopK(selection, total_tokens, values, "values");
          case v1::SELECTION_EXPLICIT:
            return ExplicitTokens(selection, total_tokens);
          default:
            return absl::InvalidArgumentError(absl::StrCat(
                "unknown selection mode ", static_cast<int>(selection.mode())));
        }
      });
}

absl::StatusOr<std::vector<uint32_t>> SelectTokensByScores(
    const v1::TokenSelection& selection, uint32_t total_tokens,
    const at::Tensor& scores) {
  RETURN_IF_ERROR(CheckCommon(selection, total_tokens));
  if (!scores.defined() || scores.dim() != 1 ||
      !at::isFloatingType(scores.scalar_type())) {
    return absl::InvalidArgumentError(
        "token scores must be a defined 1-D floating tensor");
  }
  return GuardedAs(
      absl::StatusCode::kInvalidArgument, "token selection failed", [&] {
        return TopKChecked(selection, total_tokens, ScoresToVector(scores));
      });
}

at::Tensor TokenNormScores(const at::Tensor& x) {
  if (!x.defined() || x.dim() != 3 || !at::isFloatingType(x.scalar_type()) ||
      x.size(0) == 0) {
    return at::Tensor();
  }
  try {
    const at::Tensor norms = at::linalg_vector_norm(
        x.detach().to(at::kFloat), 2, at::IntArrayRef{2}, /*keepdim=*/false);
    return norms.mean(/*dim=*/0);
  } catch (const c10::Error&) {
    return at::Tensor();
  }
}

std::vector<uint32_t> TopKTokens(const at::Tensor& scores, int64_t k) {
  if (!scores.defined() || scores.dim() != 1 ||
      scores.numel() > static_cast<int64_t>(kMaxIndexTokens)) {
    return {};
  }
  try {
    return TopKOfVector(ScoresToVector(scores), k);
  } catch (const c10::Error&) {
    return {};
  }
}

}  // namespace kvwire
