// A complete kvwire sharer in one object: the engine (model), the work
// queue, the gRPC server with SharerService, health and reflection, and the
// metrics port (/metrics, /healthz, /readyz). main.cc only fills a
// SharerConfig from flags; tests and other binaries can run a sharer
// in-process the same way.
//
// Readiness (/readyz and the gRPC health of kvwire.v1.Sharer alike): the
// model is loaded and the gRPC port is serving, not draining. The metrics
// port opens before the model loads, so /healthz answers (and /readyz says
// 503 "loading") during a long load.
#ifndef KVWIRE_SHARER_SERVICE_SHARER_SERVER_H_
#define KVWIRE_SHARER_SERVICE_SHARER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/engine/sharer_engine.h"
#include "common/service/health.h"
#include "common/service/metrics.h"
#include "common/service/security.h"
#include "common/service/server.h"
#include "common/service/work_queue.h"
#include "kvwire/v1/kvwire.pb.h"
#include "sharer_service/sharer_service.h"

namespace kvwire {

// The health-service name of the sharer.
inline constexpr char kSharerServiceName[] = "kvwire.v1.Sharer";

struct SharerConfig {
  SharerEngineOptions engine;
  ServerOptions server;
  SharerServiceOptions service;
  // "host:port" for /metrics; empty: no metrics endpoint.
  std::string metrics_address = "127.0.0.1:9464";
  // TLS and bearer token of the metrics port.
  MetricsSecurityOptions metrics_security;
  int workers = 1;
  int queue_size = 16;
  // Dynamic batching: up to this many queued requests are prefilled
  // together (1: off). See docs/perf/sharer.md.
  int max_batch_size = 1;
  // Padding allowed in a batch (WorkQueue::Options::max_padding).
  double batch_max_padding = 0.5;
  // Not owned; nullptr: Metrics::Global().
  Metrics* metrics = nullptr;
};

class SharerServer {
 public:
  // Loads the model, starts the workers, the metrics endpoint and the gRPC
  // server. Errors: the engine's (model loading), the server's (credentials,
  // binding), UNAVAILABLE for the metrics address.
  static absl::StatusOr<std::unique_ptr<SharerServer>> Start(
      const SharerConfig& config);
  // Shutdown().
  ~SharerServer();

  int port() const { return server_->port(); }
  // 0 without a metrics endpoint.
  int metrics_port() const;
  const v1::SharerInfo& info() const { return engine_->info(); }
  const Readiness& readiness() const { return readiness_; }

  // Graceful: NOT_SERVING, drain in-flight calls (up to the drain timeout),
  // stop the workers. Idempotent.
  void Shutdown();

 private:
  SharerServer() = default;

  SharerConfig config_;
  // Declared before everything that reports into it or reads it.
  Readiness readiness_;
  std::unique_ptr<SharerEngine> engine_;
  std::unique_ptr<WorkQueue> queue_;
  std::unique_ptr<BearerTokenAuth> auth_;
  std::unique_ptr<SharerService> service_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<GrpcServer> server_;
};

// The whole process: starts a SharerServer, announces readiness on stdout,
// waits for SIGTERM/SIGINT, drains and returns the exit code (0 after a
// clean drain, 1 when start-up fails).
int RunSharerProcess(const SharerConfig& config);

}  // namespace kvwire

#endif  // KVWIRE_SHARER_SERVICE_SHARER_SERVER_H_
