// The data behind the receiver's live bandwidth page (/ui/live): a bounded
// ring of the most recent requests (time, transfer spec, scheme, bytes,
// tokens, stage times, status, fallback) and per-second aggregates over the
// last few minutes, rendered as JSON for /ui/live/data.json. Prometheus remains
// the source of truth for dashboards and alerts (docs/METRICS.md); this is
// for a developer without Grafana.
//
// No Torch, no gRPC, no Prometheus: callers convert their own types into a
// LiveRequest. Memory is bounded by the constructor's limits: `recent`
// requests plus `window_seconds` buckets, each with at most
// kMaxSchemesPerSecond scheme entries.
//
// Thread-safety: every method may be called from any thread.
#ifndef KVWIRE_COMMON_SERVICE_LIVE_STATS_H_
#define KVWIRE_COMMON_SERVICE_LIVE_STATS_H_

#include <array>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace kvwire {

// The stage times a LiveRequest carries, in this order (the JSON names).
inline constexpr std::array<absl::string_view, 10> kLiveStageNames = {
    "queue", "transfer",         "sharer_compute",      "encode",     "decode",
    "fuse",  "receiver_prefill", "time_to_first_token", "generation", "total"};
inline constexpr int kNumLiveStages = static_cast<int>(kLiveStageNames.size());

// One finished request, as the live page shows it.
struct LiveRequest {
  double time = 0;     // When it finished, Unix seconds.
  std::string method;  // RPC name ("Answer", "AnswerStream").
  std::string status;  // Status code name ("OK", "DEADLINE_EXCEEDED", ...).
  std::string mode;    // "c2c", "receiver_only", ...
  std::string spec;    // The transfer spec, human-readable; empty if none.
  // The scheme label of a complete transfer ("int4", "mixed", ...; as
  // kvwire_kv_wire_bytes_total's), empty when no complete stream arrived.
  std::string scheme;
  bool fell_back = false;
  std::string fallback_reason;
  int64_t prompt_tokens = 0;  // T.
  int64_t tokens_sent = 0;    // k: tokens sent per layer.
  int64_t layers_sent = 0;
  int64_t raw_bytes = 0;         // Complete transfers only.
  int64_t payload_bytes = 0;     // Complete transfers only.
  int64_t serialized_bytes = 0;  // Whatever arrived (partial streams too).
  int64_t wire_bytes = 0;        // serialized + 5 bytes per message.
  int64_t generated_tokens = 0;
  // Seconds per stage, indexed like kLiveStageNames; 0: did not run.
  std::array<double, kNumLiveStages> stage_seconds{};

  // A complete stream arrived (its scheme is known).
  bool transferred() const { return !scheme.empty(); }
};

class LiveStats {
 public:
  // Distinct schemes one second may hold; later ones count as "other".
  static constexpr int kMaxSchemesPerSecond = 12;
  // The scheme bytes of streams that failed half-way are counted under.
  static constexpr absl::string_view kPartialScheme = "partial";

  // Keeps the last `recent` requests and per-second aggregates of the last
  // `window_seconds` seconds (both at least 1).
  explicit LiveStats(int recent = 50, int window_seconds = 600);
  LiveStats(const LiveStats&) = delete;
  LiveStats& operator=(const LiveStats&) = delete;

  int window_seconds() const { return window_seconds_; }
  int recent_capacity() const { return recent_capacity_; }

  // Adds a finished request (aggregated into the second of its `time`;
  // requests older than the window only join the recent list).
  void Record(const LiveRequest& request);

  // The page's data as JSON, at `now` (Unix seconds):
  //   {"now", "window_seconds", "totals": {...}, "schemes": [...],
  //    "stages": [...], "seconds": [{"t", "requests", ...}, ...],
  //    "recent": [{...}, ...]}
  // `seconds` lists only seconds with requests, oldest first, within
  // (now - window_seconds, now]; `recent` is newest first. docs/METRICS.md
  // describes every field.
  std::string ToJson(double now) const;
  // The same at the current time.
  std::string ToJson() const;

  // For tests.
  size_t recent_size() const;

 private:
  struct Second {
    int64_t t = -1;  // Unix second; -1: unused.
    int64_t requests = 0;
    int64_t errors = 0;  // Status other than OK.
    int64_t fallbacks = 0;
    int64_t transfers = 0;
    int64_t wire_bytes = 0;  // Every request's, partial streams included.
    int64_t transfer_wire_bytes = 0;  // Complete transfers only.
    int64_t raw_bytes = 0;
    int64_t payload_bytes = 0;
    int64_t serialized_bytes = 0;  // Complete transfers only.
    int64_t prompt_tokens = 0;     // Complete transfers only.
    int64_t tokens_sent = 0;       // Complete transfers only.
    int64_t generated_tokens = 0;
    struct Scheme {
      std::string name;
      int64_t wire_bytes = 0;
      int64_t streams = 0;  // Requests that put bytes on the wire.
    };
    std::vector<Scheme> schemes;  // At most kMaxSchemesPerSecond.
    std::array<double, kNumLiveStages> stage_sum{};
    std::array<int64_t, kNumLiveStages> stage_count{};
  };

  const int recent_capacity_;
  const int window_seconds_;
  mutable std::mutex mu_;
  std::deque<LiveRequest> recent_;  // Newest first.
  std::vector<Second> seconds_;     // Ring indexed by t % window_seconds_.
  int64_t newest_second_ = -1;      // The newest second recorded.
  // Since start.
  int64_t total_requests_ = 0;
  int64_t total_errors_ = 0;
  int64_t total_fallbacks_ = 0;
  int64_t total_transfers_ = 0;
  int64_t total_wire_bytes_ = 0;
  int64_t total_raw_bytes_ = 0;
  int64_t total_serialized_bytes_ = 0;
};

// The page served at /ui/live (common/service/live_page.html, embedded at
// build time): polls /ui/live/data.json every second and draws its charts on
// <canvas> elements.
absl::string_view LivePageHtml();

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_LIVE_STATS_H_
