#include "load_tests/stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvwire {
namespace load {

int64_t NearestRankIndex(double p, int64_t n) {
  if (n <= 0) return 0;
  if (p <= 0) return 0;
  // The tiny epsilon keeps p*n that is mathematically an integer (99.9% of
  // 1000) from rounding up to the next rank through floating-point error.
  const double rank = std::ceil(p / 100.0 * static_cast<double>(n) - 1e-9);
  const int64_t index = static_cast<int64_t>(rank) - 1;
  return std::clamp<int64_t>(index, 0, n - 1);
}

void LatencySamples::Sort() const {
  if (!sorted_) {
    std::sort(samples_.begin(), samples_.end());
    sorted_ = true;
  }
}

void LatencySamples::Merge(const LatencySamples& other) {
  samples_.insert(samples_.end(), other.samples_.begin(), other.samples_.end());
  sorted_ = samples_.size() <= 1;
}

double LatencySamples::Percentile(double p) const {
  if (samples_.empty()) return 0;
  Sort();
  return samples_[NearestRankIndex(p, count())];
}

double LatencySamples::Max() const {
  if (samples_.empty()) return 0;
  Sort();
  return samples_.back();
}

double LatencySamples::Min() const {
  if (samples_.empty()) return 0;
  Sort();
  return samples_.front();
}

double LatencySamples::Mean() const {
  if (samples_.empty()) return 0;
  return std::accumulate(samples_.begin(), samples_.end(), 0.0) /
         static_cast<double>(samples_.size());
}

ArrivalSchedule::ArrivalSchedule(double rate, uint64_t seed, bool uniform)
    : rate_(rate > 0 ? rate : 1), uniform_(uniform), rng_(seed), gap_(rate_) {}

double ArrivalSchedule::Next() {
  double gap = uniform_ ? 1.0 / rate_ : gap_(rng_);
  // Strictly increasing even for a zero draw.
  if (gap <= 0) gap = 1e-9;
  t_ += gap;
  return t_;
}

double CorrectedLatency(double intended_start, double actual_start,
                        double completion, bool open_loop) {
  const double from =
      open_loop ? std::min(intended_start, actual_start) : actual_start;
  return std::max(0.0, completion - from);
}

int64_t ScenarioStats::error_count() const {
  int64_t n = 0;
  for (const auto& [code, count] : errors) n += count;
  return n;
}

int64_t ScenarioStats::total() const { return ok + error_count(); }

void ScenarioStats::Merge(const ScenarioStats& other) {
  ok += other.ok;
  for (const auto& [code, count] : other.errors) errors[code] += count;
  for (const auto& [code, message] : other.error_examples) {
    error_examples.emplace(code, message);
  }
  latency.Merge(other.latency);
  ttft.Merge(other.ttft);
  inter_token.Merge(other.inter_token);
  service_time.Merge(other.service_time);
  stream_time.Merge(other.stream_time);
  payload_bytes += other.payload_bytes;
  serialized_bytes += other.serialized_bytes;
  wire_bytes += other.wire_bytes;
  raw_bytes += other.raw_bytes;
  prompt_tokens += other.prompt_tokens;
  tokens_sent += other.tokens_sent;
  fallbacks += other.fallbacks;
  generated_tokens += other.generated_tokens;
}

std::string PercentileLabel(double p) {
  if (std::floor(p) == p) return absl::StrCat("p", static_cast<int64_t>(p));
  return absl::StrCat("p", absl::StrFormat("%g", p));
}

}  // namespace load
}  // namespace kvwire
