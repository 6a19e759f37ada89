// The load engine of kvwire-load: drives Share, Answer or AnswerStream
// calls with gRPC's callback API, or streaming OpenAI chat.completions
// requests over HTTP (one thread per call in flight), closed loop (N
// outstanding calls, the next sent when one completes) or open loop (calls sent
// at intended times of a Poisson schedule whatever the server does; when the
// in-flight cap is reached they wait in a backlog and their latency still
// counts from the intended time), with a warm-up before every load point,
// bounded by duration and request count, and a live progress line.
#ifndef KVWIRE_LOAD_TESTS_LOAD_RUNNER_H_
#define KVWIRE_LOAD_TESTS_LOAD_RUNNER_H_

#include <grpcpp/channel.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvwire/v1/kvwire.pb.h"
#include "load_tests/http_client.h"
#include "load_tests/scenario.h"
#include "load_tests/stats.h"

namespace kvwire {
namespace load {

// Results of one load point (one concurrency or one rate).
struct PointResult {
  std::string label;            // "concurrency=4" / "rate=20".
  double load = 0;              // The concurrency or the rate.
  double offered_rate = 0;      // Open loop: the rate; closed: 0.
  double measured_seconds = 0;  // First measured send -> last completion.
  std::vector<ScenarioStats> scenarios;  // Index as LoadConfig::scenarios.
  ScenarioStats all;
  // Open loop: the largest backlog (calls due but not yet sent because of
  // max_in_flight) and how many calls were sent more than 1 ms late.
  int64_t max_backlog = 0;
  int64_t late_sends = 0;
  int64_t warmup_requests = 0;
};

struct RunResult {
  std::vector<PointResult> points;
  // Every call of the run, warm-up included: what the server's counters
  // should show for a server that served nothing else.
  int64_t requests_including_warmup = 0;
  int64_t ok_including_warmup = 0;
  int64_t wire_bytes_including_warmup = 0;
  int64_t payload_bytes_including_warmup = 0;
  int64_t serialized_bytes_including_warmup = 0;
  v1::SharerInfo sharer_info;  // Share runs: the sharer's GetInfo.
  double wall_seconds = 0;
};

struct RunnerOptions {
  LoadConfig config;
  // gRPC RPCs: the channel to the target.
  std::shared_ptr<grpc::Channel> channel;
  // openai_chat: the client and the URL requests are POSTed to (the
  // target's, with /v1/chat/completions for an empty path).
  std::shared_ptr<const HttpClient> http_client;
  HttpUrl chat_url;
  // Bearer token sent on every call (gRPC metadata or the HTTP
  // Authorization header); empty: none.
  std::string auth_token;
  std::vector<std::string> questions;
  // Progress lines on stderr: "\r"-updated on a terminal, one line every
  // few seconds otherwise; off when false.
  bool progress = true;
  // Hard cap on the whole run's wall time (every point, warm-ups and
  // drains); calls still running then are cancelled.
  double max_total_seconds = 3600;
};

// Runs every load point of `options.config` in turn. Errors only for a run
// that could not start (INVALID_ARGUMENT for a config that fails
// ValidateLoadConfig or lacks its channel / HTTP client; GetInfo failing
// for Share runs); failed calls are counted, not returned.
absl::StatusOr<RunResult> RunLoad(const RunnerOptions& options);

}  // namespace load
}  // namespace kvwire

#endif  // KVWIRE_LOAD_TESTS_LOAD_RUNNER_H_
