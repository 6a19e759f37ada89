// Sharer process assembly.
#include "sharer_service/sharer_server.h"

#include <chrono>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/service/process.h"
#include "glog/logging.h"

namespace kvwire {

absl::StatusOr<std::unique_ptr<SharerServer>> SharerServer::Start(
    const SharerConfig& config) {
  auto s = std::unique_ptr<SharerServer>(new SharerServer());
  s->config_ = config;
  Metrics* metrics =
      config.metrics != nullptr ? config.metrics : &Metrics::Global();

  // Refuse a bad security configuration before spending time on the model.
  if (auto creds = MakeServerCredentials(config.server.security); !creds.ok()) {
    return creds.status();
  }
  s->readiness_.Set(kReadyModels, absl::UnavailableError("loading the model"));
  s->readiness_.Set(kReadyGrpc, absl::UnavailableError("not serving yet"));
  // The metrics port first: liveness and "not ready" answer while the model
  // loads (which takes minutes for large models).
  if (!config.metrics_address.empty()) {
    auto metrics_server = MetricsServer::Start(
        config.metrics_address, metrics->registry(),
        /*live=*/nullptr, config.metrics_security, &s->readiness_);
    if (!metrics_server.ok()) return metrics_server.status();
    s->metrics_server_ = *std::move(metrics_server);
  }
  const auto load_start = std::chrono::steady_clock::now();
  SharerEngineOptions engine_options = config.engine;
  engine_options.model.prefill_batch_observer =
      metrics->ModelBatchObserver(ServiceRole::kSharer, "prefill");
  auto engine = SharerEngine::Load(engine_options);
  if (!engine.ok()) return engine.status();
  s->engine_ = *std::move(engine);
  s->readiness_.Set(kReadyModels, absl::OkStatus());
  const v1::ModelInfo& model = s->engine_->info().model();
  LOG(INFO) << "loaded model dir=" << config.engine.model.dir
            << " architecture=" << model.architecture()
            << " layers=" << model.num_layers()
            << " kv_heads=" << model.num_kv_heads()
            << " head_dim=" << model.head_dim()
            << " vocab=" << model.vocab_size()
            << " fingerprint=" << model.fingerprint()
            << " prefill_batch_rows=" << config.engine.model.prefill_batch_rows
            << " load_s="
            << std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                             load_start)
                   .count();

  metrics->SetBuildInfo(ServiceRole::kSharer, s->engine_->info().version());
  metrics->SetModelInfo(ServiceRole::kSharer, model.name(), model.fingerprint(),
                        absl::AsciiStrToLower(absl::StripPrefix(
                            v1::DType_Name(model.dtype()), "DTYPE_")),
                        config.engine.model.device);

  WorkQueue::Options queue_options;
  queue_options.workers = config.workers;
  queue_options.queue_capacity = config.queue_size;
  queue_options.name = "sharer";
  queue_options.max_batch = config.max_batch_size;
  queue_options.max_padding = config.batch_max_padding;
  s->queue_ = std::make_unique<WorkQueue>(
      queue_options, &metrics->Queue(ServiceRole::kSharer),
      SharerService::MakeBatchRunner(s->engine_.get()));
  s->auth_ =
      std::make_unique<BearerTokenAuth>(config.server.security.auth_token);
  s->service_ =
      std::make_unique<SharerService>(s->engine_.get(), s->queue_.get(),
                                      s->auth_.get(), metrics, config.service);
  auto server = GrpcServer::Start(config.server, {s->service_.get()},
                                  {kSharerServiceName});
  if (!server.ok()) {
    s->queue_->Shutdown();
    return server.status();
  }
  s->server_ = *std::move(server);
  s->readiness_.Set(kReadyGrpc, absl::OkStatus());
  // The gRPC health service says what /readyz says.
  s->readiness_.SetListener([grpc = s->server_.get()](bool ready) {
    grpc->SetServing(kSharerServiceName, ready);
    grpc->SetServing("", ready);
  });
  LOG(INFO) << "kvwire-sharer serving on " << config.server.listen_address
            << " (port " << s->server_->port() << ", "
            << DescribeSecurity(config.server.security) << ")"
            << ", metrics "
            << (s->metrics_server_ != nullptr
                    ? absl::StrCat("on port ", s->metrics_server_->port())
                    : std::string("disabled"))
            << ", workers=" << config.workers
            << " queue_size=" << config.queue_size
            << " max_batch_size=" << config.max_batch_size;
  return s;
}

SharerServer::~SharerServer() { Shutdown(); }

int SharerServer::metrics_port() const {
  return metrics_server_ != nullptr ? metrics_server_->port() : 0;
}

void SharerServer::Shutdown() {
  // Not ready from the first moment of the drain (the gRPC health turns
  // NOT_SERVING in GrpcServer::Shutdown too).
  readiness_.Set(kReadyGrpc, absl::UnavailableError("draining"));
  readiness_.SetListener(nullptr);
  // The server first (it waits for every call, cancelling the stragglers at
  // the drain deadline, which stops their workers between layers), then the
  // workers.
  if (server_ != nullptr) server_->Shutdown();
  if (queue_ != nullptr) queue_->Shutdown();
}

int RunSharerProcess(const SharerConfig& config) {
  if (absl::Status st = InstallTerminationSignalHandlers(); !st.ok()) {
    LOG(ERROR) << st;
    return 1;
  }
  auto server = SharerServer::Start(config);
  if (!server.ok()) {
    LOG(ERROR) << "kvwire-sharer failed to start: " << server.status();
    return 1;
  }
  AnnounceReady("kvwire-sharer",
                {{"grpc_port", absl::StrCat((*server)->port())},
                 {"metrics_port", absl::StrCat((*server)->metrics_port())},
                 {"fingerprint", (*server)->info().model().fingerprint()}});
  const int signo = WaitForTerminationSignal();
  LOG(INFO) << "kvwire-sharer: signal " << signo
            << " received, draining (up to " << config.server.drain_timeout
            << ")";
  (*server)->Shutdown();
  server->reset();
  LOG(INFO) << "kvwire-sharer: stopped";
  return 0;
}

}  // namespace kvwire
