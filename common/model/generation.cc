// Decoder's sampling and generation loops (decoder.h): HF-order sampling
// (temperature, top-k, top-p, then a seeded draw) and Generate /
// GenerateBatch over Forward.
#include <ATen/TensorOperators.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <limits>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/model/decoder.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A uniform double in [0, 1) determined by (seed, step).
double UniformDraw(uint64_t seed, int64_t step) {
  std::mt19937_64 rng(
      SplitMix64(seed) ^
      SplitMix64(0x5851f42d4c957f2dULL + static_cast<uint64_t>(step)));
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> Decoder::Sample(
    const at::Tensor& logits, const SamplingOptions& sampling,
    int64_t step) const {
  if (!logits.defined() || logits.dim() < 1 || logits.dim() > 2) {
    return absl::InvalidArgumentError(
        "Sample needs logits [vocab] or [batch, vocab]");
  }
  if (sampling.top_k < 0 || !(sampling.top_p > 0.0) || sampling.top_p > 1.0) {
    return absl::InvalidArgumentError("top_k must be >= 0 and top_p in (0, 1]");
  }
  return Guarded("sampling", [&]() -> absl::StatusOr<std::vector<int64_t>> {
    c10::InferenceMode inference;
    const at::Tensor rows = logits.dim() == 1 ? logits.unsqueeze(0) : logits;
    const int64_t batch = rows.size(0);
    const int64_t vocab = rows.size(1);
    std::vector<int64_t> out(batch);
    // Below fp32's smallest normal number a temperature would divide by a
    // denormal or by zero: sampling is then greedy, its limit.
    if (sampling.temperature < std::numeric_limits<float>::min()) {
      const at::Tensor best = rows.argmax(-1).to(at::kCPU).contiguous();
      std::copy(best.data_ptr<int64_t>(), best.data_ptr<int64_t>() + batch,
                out.begin());
      return out;
    }
    const double neg_inf = -std::numeric_limits<double>::infinity();
    // Shifted by each row's maximum first (softmax is shift-invariant), so
    // a tiny temperature sends the others to -inf instead of overflowing to
    // +inf (whose softmax is NaN).
    const at::Tensor x = rows.to(at::kFloat);
    at::Tensor scores =
        (x - std::get<0>(x.max(-1, /*keepdim=*/true))) / sampling.temperature;
    if (sampling.top_k > 0 && sampling.top_k < vocab) {
      const at::Tensor kth = std::get<0>(scores.topk(sampling.top_k, -1))
                                 .narrow(-1, sampling.top_k - 1, 1);
      scores = scores.masked_fill(scores < kth, neg_inf);
    }
    if (sampling.top_p < 1.0) {
      const auto sorted = scores.sort(-1, /*descending=*/false);
      const at::Tensor cumulative = std::get<0>(sorted).softmax(-1).cumsum(-1);
      at::Tensor remove = cumulative <= (1.0 - sampling.top_p);
      remove.narrow(-1, vocab - 1, 1).fill_(false);
      remove = remove.scatter(-1, std::get<1>(sorted), remove);
      scores = scores.masked_fill(remove, neg_inf);
    }
    const at::Tensor probs =
        scores.softmax(-1).to(at::kDouble).to(at::kCPU).contiguous();
    const double* p = probs.data_ptr<double>();
    for (int64_t b = 0; b < batch; ++b) {
      const double* row = p + b * vocab;
      double total = 0;
      for (int64_t i = 0; i < vocab; ++i) total += row[i];
      const double target =
          UniformDraw(sampling.seed + static_cast<uint64_t>(b), step) * total;
      double acc = 0;
      int64_t pick = -1;
      for (int64_t i = 0; i < vocab; ++i) {
        if (row[i] <= 0) continue;
        pick = i;
        acc += row[i];
        if (acc > target) break;
      }
      if (pick < 0) {
        return absl::InternalError(
            "sampling found no token with probability > 0");
      }
      out[b] = pick;
    }
    return out;
  });
}

absl::StatusOr<std::vector<GenerationResult>> Decoder::GenerateRows(
    KvCache& cache, const std::vector<std::vector<int64_t>>& pending,
    const GenerationOptions& options) const {
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  }
  const int64_t batch = static_cast<int64_t>(pending.size());
  std::vector<GenerationResult> results(batch);
  if (options.max_new_tokens == 0) return results;
  int64_t width = 0;
  for (const auto& row : pending) {
    width = std::max<int64_t>(width, static_cast<int64_t>(row.size()));
  }
  for (int64_t b = 0; b < batch && b < cache.batch_size(); ++b) {
    // The padded first forward writes `width` positions; each later step one.
    const int64_t needed =
        std::max(cache.length(b) + width,
                 cache.length(b) + static_cast<int64_t>(pending[b].size()) +
                     options.max_new_tokens - 1);
    if (needed > cache.capacity()) {
      return absl::OutOfRangeError(absl::StrCat(
          "KV cache capacity ", cache.capacity(), " is too small: row ", b,
          " needs ", needed, " positions"));
    }
  }
  const std::vector<int64_t>& eos = options.eos_token_ids.has_value()
                                        ? *options.eos_token_ids
                                        : config_.eos_token_ids;
  const std::set<int64_t> stop(eos.begin(), eos.end());
  ASSIGN_OR_RETURN(at::Tensor logits,
                   Forward(pending, cache, nullptr, LogitsMode::kLast));
  std::vector<bool> done(batch, false);
  int64_t remaining = batch;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    ASSIGN_OR_RETURN(std::vector<int64_t> next,
                     Sample(logits, options.sampling, step));
    std::vector<std::vector<int64_t>> feed(batch);
    for (int64_t b = 0; b < batch; ++b) {
      if (!done[b]) {
        results[b].tokens.push_back(next[b]);
        if (stop.count(next[b]) > 0) {
          done[b] = true;
          results[b].finish_reason = FinishReason::kEos;
          --remaining;
        }
      }
      feed[b] = {done[b] ? results[b].tokens.back() : next[b]};
    }
    if (remaining == 0 || step + 1 == options.max_new_tokens) break;
    ASSIGN_OR_RETURN(logits, Forward(feed, cache, nullptr, LogitsMode::kLast));
  }
  return results;
}

absl::StatusOr<GenerationResult> Decoder::Generate(
    absl::Span<const int64_t> prompt, const GenerationOptions& options) const {
  if (prompt.empty()) return absl::InvalidArgumentError("empty prompt");
  ASSIGN_OR_RETURN(KvCache cache,
                   NewCache(static_cast<int64_t>(prompt.size()) +
                            std::max<int64_t>(options.max_new_tokens, 1)));
  return Generate(cache, prompt, options);
}

absl::StatusOr<GenerationResult> Decoder::Generate(
    KvCache& cache, absl::Span<const int64_t> pending,
    const GenerationOptions& options) const {
  if (cache.batch_size() != 1) {
    return absl::InvalidArgumentError(
        "Generate needs a batch-1 KV cache (use GenerateBatch)");
  }
  if (pending.empty()) {
    return absl::InvalidArgumentError(
        "Generate needs at least one token not yet in the cache");
  }
  ASSIGN_OR_RETURN(
      std::vector<GenerationResult> results,
      GenerateRows(cache,
                   {std::vector<int64_t>(pending.begin(), pending.end())},
                   options));
  return std::move(results[0]);
}

absl::StatusOr<std::vector<GenerationResult>> Decoder::GenerateBatch(
    const std::vector<std::vector<int64_t>>& prompts,
    const GenerationOptions& options) const {
  if (prompts.empty()) return std::vector<GenerationResult>{};
  int64_t longest = 0;
  for (const auto& p : prompts) {
    if (p.empty()) return absl::InvalidArgumentError("empty prompt in batch");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  }
  ASSIGN_OR_RETURN(
      KvCache cache,
      NewCache(longest + std::max<int64_t>(options.max_new_tokens, 1),
               static_cast<int64_t>(prompts.size())));
  return GenerateRows(cache, prompts, options);
}

}  // namespace kvwire
