// A complete kvwire receiver in one object: the engine (receiver model,
// tokenizer, fuser), the client of the sharer(s), the work queue, the gRPC
// server with ReceiverService, health and reflection, and the metrics port
// (/metrics, /ui/live, /healthz, /readyz). main.cc only fills a
// ReceiverConfig from flags.
//
// Readiness (/readyz and the gRPC health of kvwire.v1.Receiver alike): the
// models are loaded, the gRPC port is serving and not draining, and, where
// the configuration needs the sharer (SharerReadiness), the sharer's own
// gRPC health says SERVING (checked every sharer_health_interval). The
// metrics port opens before the models load.
#ifndef KVWIRE_RECEIVER_SERVICE_RECEIVER_SERVER_H_
#define KVWIRE_RECEIVER_SERVICE_RECEIVER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/engine/receiver_engine.h"
#include "common/service/health.h"
#include "common/service/metrics.h"
#include "common/service/security.h"
#include "common/service/server.h"
#include "common/service/work_queue.h"
#include "receiver_service/answer_runner.h"
#include "receiver_service/openai_http_server.h"
#include "receiver_service/receiver_service.h"
#include "receiver_service/sharer_client.h"

namespace kvwire {

// The health-service name of the receiver.
inline constexpr char kReceiverServiceName[] = "kvwire.v1.Receiver";
// The sharer's, whose health the receiver asks where it needs the sharer.
inline constexpr char kSharerHealthServiceName[] = "kvwire.v1.Sharer";

// Whether the receiver is ready only while its sharer is reachable.
enum class SharerReadiness {
  // Needed when answers fail without it: a sharer target, a fuser (C2C) and
  // the default fallback policy FAIL. With receiver-only fallback the
  // receiver still answers (and says it fell back), so it stays ready.
  kAuto,
  kRequired,  // Whenever a sharer target is set.
  kIgnored,   // Never.
};
// "auto", "true", "false" -> SharerReadiness; INVALID_ARGUMENT otherwise.
absl::StatusOr<SharerReadiness> ParseSharerReadiness(absl::string_view text);

struct ReceiverConfig {
  ReceiverEngineOptions engine;
  ServerOptions server;
  AnswerRunnerOptions runner;
  // The sharer(s); an empty target runs without a sharer (C2C requests then
  // fall back or fail per policy).
  SharerClientOptions sharer;
  // GetInfo on the sharer at start (logged; a model the fuser cannot read
  // is an error in the log, not a refusal to start: other sharers behind the
  // same target may fit, and every stream's header is checked anyway).
  absl::Duration sharer_probe_timeout = absl::Seconds(5);
  // Readiness on the sharer's health, and how often it is asked.
  SharerReadiness sharer_readiness = SharerReadiness::kAuto;
  absl::Duration sharer_health_interval = absl::Seconds(2);
  // "host:port" for /metrics; empty: no metrics endpoint.
  std::string metrics_address = "127.0.0.1:9465";
  // TLS and bearer token of the metrics port.
  MetricsSecurityOptions metrics_security;
  // "host:port" of the OpenAI-compatible HTTP API (openai_http_server.h),
  // secured as the gRPC port; empty: off.
  std::string http_address;
  // The model name the HTTP API serves; empty: the model directory's base
  // name.
  std::string served_model_name;
  // Deadline of each HTTP API request.
  absl::Duration http_request_timeout = absl::Seconds(600);
  int workers = 1;
  int queue_size = 16;
  // Not owned; nullptr: Metrics::Global().
  Metrics* metrics = nullptr;
};

class ReceiverServer {
 public:
  // Starts the metrics endpoint, loads the engine, creates the sharer
  // channel, starts the workers and the gRPC server. Errors: the engine's
  // (model, tokenizer, fuser loading), the channel's and server's
  // (credentials, binding), UNAVAILABLE for the metrics address.
  static absl::StatusOr<std::unique_ptr<ReceiverServer>> Start(
      const ReceiverConfig& config);
  ~ReceiverServer();  // Shutdown().

  int port() const { return server_->port(); }
  int metrics_port() const;
  int http_port() const;  // 0 without the HTTP API.
  const ReceiverModelInfo& info() const { return engine_->info(); }
  const Readiness& readiness() const { return readiness_; }

  // Graceful: NOT_SERVING, drain in-flight calls (up to the drain timeout),
  // stop the workers. Idempotent.
  void Shutdown();

 private:
  ReceiverServer() = default;

  ReceiverConfig config_;
  // Declared before everything that reports into it or reads it.
  Readiness readiness_;
  std::unique_ptr<ReceiverEngine> engine_;
  std::unique_ptr<SharerClient> sharer_;
  std::unique_ptr<AnswerRunner> runner_;
  std::unique_ptr<WorkQueue> queue_;
  std::unique_ptr<BearerTokenAuth> auth_;
  std::unique_ptr<ReceiverService> service_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<GrpcServer> server_;
  std::unique_ptr<OpenAiHttpServer> http_server_;
  // Where readiness waits for the sharer; stopped first in Shutdown().
  std::unique_ptr<PeerHealthMonitor> sharer_monitor_;
};

// The whole process: starts a ReceiverServer, announces readiness on stdout
// ("kvwire-receiver ready grpc_port=... metrics_port=... http_port=..."), waits
// for SIGTERM/SIGINT, drains and returns the exit code (0 after a clean drain,
// 1 when start-up fails).
int RunReceiverProcess(const ReceiverConfig& config);

}  // namespace kvwire

#endif  // KVWIRE_RECEIVER_SERVICE_RECEIVER_SERVER_H_
