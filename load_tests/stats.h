// The arithmetic of kvwire-load: latency samples and their percentiles,
// Poisson arrival schedules for open-loop runs, and the per-scenario
// counters a run accumulates. Pure C++ (no gRPC), unit-tested in
// load_tests/tests/stats_test.cc.
//
// Coordinated omission: in an open-loop run every request has an intended
// send time on a precomputed schedule. Its latency is measured from that
// intended time, not from when the generator got round to sending it, so a
// stalled server (or a backlogged generator) shows up as latency instead of
// silently lowering the offered rate.
#ifndef KVWIRE_LOAD_TESTS_STATS_H_
#define KVWIRE_LOAD_TESTS_STATS_H_

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace kvwire {
namespace load {

// Percentiles reported for every latency distribution.
inline constexpr double kReportedPercentiles[] = {50, 90, 99, 99.9};

// Exact latency samples (seconds). Bounded by the run's request cap.
class LatencySamples {
 public:
  void Add(double seconds) {
    samples_.push_back(seconds);
    sorted_ = false;
  }
  void Merge(const LatencySamples& other);
  int64_t count() const { return static_cast<int64_t>(samples_.size()); }
  bool empty() const { return samples_.empty(); }

  // Nearest-rank percentile: the smallest sample x such that at least p% of
  // the samples are <= x (p in (0, 100]; p <= 0 gives the minimum). 0 when
  // there are no samples.
  double Percentile(double p) const;
  double Max() const;
  double Min() const;
  double Mean() const;

 private:
  void Sort() const;
  mutable std::vector<double> samples_;
  mutable bool sorted_ = true;
};

// Nearest-rank index into a sorted sample of size n for percentile p:
// ceil(p/100 * n) - 1, clamped to [0, n-1]. Exposed for tests.
int64_t NearestRankIndex(double p, int64_t n);

// The intended send times (seconds from the start of the measured phase) of
// an open-loop run: a Poisson process of `rate` per second, i.e. i.i.d.
// exponential gaps with mean 1/rate, from a seeded generator so runs are
// reproducible. `uniform` gives fixed 1/rate gaps instead.
class ArrivalSchedule {
 public:
  ArrivalSchedule(double rate, uint64_t seed, bool uniform = false);
  // The next intended time (strictly increasing).
  double Next();

 private:
  double rate_;
  bool uniform_;
  double t_ = 0;
  std::mt19937_64 rng_;
  std::exponential_distribution<double> gap_;
};

// Latency of one request, measured from its intended start (open loop) or
// its actual start (closed loop), to completion; both in seconds on the same
// monotonic clock. Never negative.
double CorrectedLatency(double intended_start, double actual_start,
                        double completion, bool open_loop);

// Counters of one scenario at one load point.
struct ScenarioStats {
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;  // Status code name -> count.
  // The first message seen per status code (for the report).
  std::map<std::string, std::string> error_examples;
  LatencySamples latency;  // OK requests only.
  LatencySamples ttft;     // Time to first token / chunk.
  // Gaps between consecutive streamed tokens (answer_stream: token events;
  // openai_chat: content-bearing SSE chunks), pooled over every request.
  LatencySamples inter_token;
  LatencySamples service_time;  // Actual send -> completion.
  // First block / token -> completion: the streaming phase (Share: how
  // long the KV took to arrive once the first layer was on its way).
  LatencySamples stream_time;
  int64_t payload_bytes = 0;     // KV payload (values) bytes.
  int64_t serialized_bytes = 0;  // KvChunk messages.
  int64_t wire_bytes = 0;        // + 5-byte gRPC message prefixes.
  int64_t raw_bytes = 0;         // 16-bit KV bytes (uncompressed).
  int64_t prompt_tokens = 0;
  int64_t tokens_sent = 0;
  int64_t fallbacks = 0;  // Receiver answered receiver-only.
  int64_t generated_tokens = 0;

  int64_t total() const;
  int64_t error_count() const;
  void Merge(const ScenarioStats& other);
};

// The column name of a percentile: 50 -> "p50", 99.9 -> "p99.9".
std::string PercentileLabel(double p);

}  // namespace load
}  // namespace kvwire

#endif  // KVWIRE_LOAD_TESTS_STATS_H_
