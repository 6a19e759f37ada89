// Receiver process assembly.
#include "receiver_service/receiver_server.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/service/channel.h"
#include "common/service/grpc_status.h"
#include "common/service/process.h"
#include "glog/logging.h"
#include "receiver_service/openai_mapping.h"

namespace kvwire {

absl::StatusOr<SharerReadiness> ParseSharerReadiness(absl::string_view text) {
  if (text == "auto") return SharerReadiness::kAuto;
  if (text == "true") return SharerReadiness::kRequired;
  if (text == "false") return SharerReadiness::kIgnored;
  return absl::InvalidArgumentError(
      absl::StrCat("expected auto, true or false, got \"", text, "\""));
}

absl::StatusOr<std::unique_ptr<ReceiverServer>> ReceiverServer::Start(
    const ReceiverConfig& config) {
  auto s = std::unique_ptr<ReceiverServer>(new ReceiverServer());
  s->config_ = config;
  Metrics* metrics =
      config.metrics != nullptr ? config.metrics : &Metrics::Global();

  // Refuse bad security configurations before spending time on the model.
  if (auto creds = MakeServerCredentials(config.server.security); !creds.ok()) {
    return creds.status();
  }
  s->readiness_.Set(kReadyModels, absl::UnavailableError("loading the models"));
  s->readiness_.Set(kReadyGrpc, absl::UnavailableError("not serving yet"));
  // The metrics port first: liveness and "not ready" answer while the
  // models load.
  if (!config.metrics_address.empty()) {
    auto metrics_server = MetricsServer::Start(
        config.metrics_address, metrics->registry(), &metrics->Live(),
        config.metrics_security, &s->readiness_);
    if (!metrics_server.ok()) return metrics_server.status();
    s->metrics_server_ = *std::move(metrics_server);
  }
  if (!config.sharer.target.empty()) {
    auto client = SharerClient::Create(config.sharer);
    if (!client.ok()) {
      return absl::Status(
          client.status().code(),
          absl::StrCat("sharer channel: ", client.status().message()));
    }
    s->sharer_ = *std::move(client);
  }
  const auto load_start = std::chrono::steady_clock::now();
  ReceiverEngineOptions engine_options = config.engine;
  engine_options.model.decode_batch_observer =
      metrics->ModelBatchObserver(ServiceRole::kReceiver, "decode");
  engine_options.model.prefill_batch_observer =
      metrics->ModelBatchObserver(ServiceRole::kReceiver, "prefill");
  engine_options.fusion_batch_observer =
      metrics->ModelBatchObserver(ServiceRole::kReceiver, "fuse");
  auto engine = ReceiverEngine::Load(engine_options);
  if (!engine.ok()) return engine.status();
  s->engine_ = *std::move(engine);
  s->readiness_.Set(kReadyModels, absl::OkStatus());
  const ReceiverModelInfo& info = s->engine_->info();
  LOG(INFO) << "loaded receiver dir=" << config.engine.model.dir
            << " architecture=" << info.model.architecture()
            << " layers=" << info.model.num_layers()
            << " kv_heads=" << info.model.num_kv_heads()
            << " head_dim=" << info.model.head_dim()
            << " vocab=" << info.model.vocab_size()
            << " tokenizer_vocab=" << info.tokenizer_vocab_size
            << " chat_template=" << info.chat_template_family
            << " sharer_chat_template="
            << (info.sharer_chat_template_family.empty()
                    ? std::string("(receiver's)")
                    : info.sharer_chat_template_family)
            << " token_alignment="
            << (info.token_alignment ? info.alignment_strategy
                                     : std::string("off"))
            << " max_prompt_tokens=" << info.max_prompt_tokens << " fuser="
            << (info.has_fuser
                    ? absl::StrCat(config.engine.fuser_dir, " (",
                                   info.fused_receiver_layers,
                                   " receiver layers, reads ",
                                   info.sharer_layers_needed,
                                   "+ sharer layers of ", info.sharer_kv_heads,
                                   "x", info.sharer_head_dim, ")")
                    : std::string("none (receiver-only)"))
            << " kv_slots=" << s->engine_->kv_slots().slots
            << " prefill_batch_rows=" << config.engine.model.prefill_batch_rows
            << " fusion_batch_requests=" << config.engine.fusion_batch_requests
            << " load_s="
            << std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                             load_start)
                   .count();

  std::optional<v1::SharerInfo> probed_sharer;
  if (s->sharer_ != nullptr) {
    auto sharer_info = s->sharer_->GetInfo(config.sharer_probe_timeout);
    if (sharer_info.ok()) probed_sharer = *sharer_info;
    if (!sharer_info.ok()) {
      LOG(WARNING) << "sharer " << config.sharer.target
                   << " did not answer GetInfo at start ("
                   << StatusCodeName(sharer_info.status().code()) << ": "
                   << sharer_info.status().message()
                   << "); C2C requests fall back or fail per policy until it "
                      "does";
    } else {
      const v1::ModelInfo& m = sharer_info->model();
      const absl::Status fits = s->engine_->CheckSharerModel(m);
      LOG(INFO) << "sharer " << config.sharer.target
                << " architecture=" << m.architecture()
                << " layers=" << m.num_layers()
                << " kv_heads=" << m.num_kv_heads()
                << " head_dim=" << m.head_dim()
                << " fingerprint=" << m.fingerprint()
                << " version=" << sharer_info->version();
      if (!fits.ok()) LOG(ERROR) << fits.message();
    }
  }

#ifdef KVWIRE_VERSION
  metrics->SetBuildInfo(ServiceRole::kReceiver, KVWIRE_VERSION);
#endif
  metrics->SetModelInfo(ServiceRole::kReceiver, info.model.name(),
                        info.model.fingerprint(),
                        absl::AsciiStrToLower(absl::StripPrefix(
                            v1::DType_Name(info.model.dtype()), "DTYPE_")),
                        config.engine.model.device);

  const bool needs_sharer =
      !config.sharer.target.empty() &&
      (config.sharer_readiness == SharerReadiness::kRequired ||
       (config.sharer_readiness == SharerReadiness::kAuto && info.has_fuser &&
        config.runner.default_fallback == v1::FALLBACK_POLICY_FAIL));
  if (needs_sharer) {
    // A channel of its own: health calls carry no token and are not counted
    // as sharer requests; gRPC shares the connections of equal channels.
    auto channel =
        CreateKvwireChannel(config.sharer.target, config.sharer.channel);
    if (!channel.ok()) return channel.status();
    PeerHealthMonitor::Options monitor;
    monitor.channel = *channel;
    monitor.service = kSharerHealthServiceName;
    monitor.condition = std::string(kReadySharer);
    monitor.peer_label = config.sharer.target;
    monitor.interval = config.sharer_health_interval;
    s->sharer_monitor_ = PeerHealthMonitor::Start(monitor, &s->readiness_);
  }

  s->runner_ = std::make_unique<AnswerRunner>(
      s->engine_.get(), s->sharer_.get(), metrics, config.runner);
  if (probed_sharer.has_value()) s->runner_->NoteSharerInfo(*probed_sharer);
  WorkQueue::Options queue_options;
  queue_options.workers = config.workers;
  queue_options.queue_capacity = config.queue_size;
  queue_options.name = "receiver";
  s->queue_ = std::make_unique<WorkQueue>(
      queue_options, &metrics->Queue(ServiceRole::kReceiver));
  s->auth_ =
      std::make_unique<BearerTokenAuth>(config.server.security.auth_token);
  s->service_ = std::make_unique<ReceiverService>(
      s->runner_.get(), s->queue_.get(), s->auth_.get(), metrics);
  auto server = GrpcServer::Start(config.server, {s->service_.get()},
                                  {kReceiverServiceName});
  if (!server.ok()) {
    s->queue_->Shutdown();
    return server.status();
  }
  s->server_ = *std::move(server);
  if (!config.http_address.empty()) {
    OpenAiHttpOptions http;
    http.address = config.http_address;
    http.served_model_name =
        config.served_model_name.empty()
            ? ServedModelNameFor(config.engine.model.dir,
                                 /*is_local_directory=*/true)
            : config.served_model_name;
    http.security = config.server.security;
    http.request_timeout = config.http_request_timeout;
    http.max_body_bytes = config.server.max_receive_message_bytes;
    // Every admitted request holds a connection; a few more answer errors.
    http.threads = std::max(16, config.workers + config.queue_size + 8);
    auto http_server = OpenAiHttpServer::Start(http, s->service_.get(),
                                               s->engine_.get(), metrics);
    if (!http_server.ok()) {
      s->server_->Shutdown();
      s->queue_->Shutdown();
      return http_server.status();
    }
    s->http_server_ = *std::move(http_server);
    LOG(INFO) << "OpenAI-compatible HTTP API on " << config.http_address
              << " (port " << s->http_server_->port() << ", model \""
              << http.served_model_name << "\")";
  }
  s->readiness_.Set(kReadyGrpc, absl::OkStatus());
  // The gRPC health service says what /readyz says.
  s->readiness_.SetListener([grpc = s->server_.get()](bool ready) {
    grpc->SetServing(kReceiverServiceName, ready);
    grpc->SetServing("", ready);
  });
  LOG(INFO) << "kvwire-receiver serving on " << config.server.listen_address
            << " (port " << s->server_->port() << ", "
            << DescribeSecurity(config.server.security) << ")"
            << ", sharer "
            << (s->sharer_ != nullptr
                    ? absl::StrCat(
                          config.sharer.target, " (",
                          DescribeSecurity(config.sharer.channel.security),
                          ", ", config.sharer.channel.load_balancing_policy,
                          ")")
                    : std::string("none"))
            << ", metrics "
            << (s->metrics_server_ != nullptr
                    ? absl::StrCat("on port ", s->metrics_server_->port())
                    : std::string("disabled"))
            << ", workers=" << config.workers
            << " queue_size=" << config.queue_size << " fallback="
            << FallbackPolicyName(config.runner.default_fallback)
            << " ready_requires_sharer=" << (needs_sharer ? "yes" : "no");
  return s;
}

ReceiverServer::~ReceiverServer() { Shutdown(); }

int ReceiverServer::http_port() const {
  return http_server_ != nullptr ? http_server_->port() : 0;
}

int ReceiverServer::metrics_port() const {
  return metrics_server_ != nullptr ? metrics_server_->port() : 0;
}

void ReceiverServer::Shutdown() {
  // Not ready from the first moment of the drain; the monitor stops before
  // the server it reports to goes away.
  readiness_.Set(kReadyGrpc, absl::UnavailableError("draining"));
  readiness_.SetListener(nullptr);
  sharer_monitor_.reset();
  // The server first (it waits for every call, cancelling the stragglers at
  // the drain deadline, which cancels their Share calls), then the workers.
  if (server_ != nullptr) server_->Shutdown();
  // Then the HTTP API, whose running requests are cancelled (it has no
  // drain), before the workers they wait for stop.
  http_server_.reset();
  if (queue_ != nullptr) queue_->Shutdown();
}

int RunReceiverProcess(const ReceiverConfig& config) {
  if (absl::Status st = InstallTerminationSignalHandlers(); !st.ok()) {
    LOG(ERROR) << st;
    return 1;
  }
  auto server = ReceiverServer::Start(config);
  if (!server.ok()) {
    LOG(ERROR) << "kvwire-receiver failed to start: " << server.status();
    return 1;
  }
  AnnounceReady("kvwire-receiver",
                {{"grpc_port", absl::StrCat((*server)->port())},
                 {"metrics_port", absl::StrCat((*server)->metrics_port())},
                 {"http_port", absl::StrCat((*server)->http_port())},
                 {"fuser", (*server)->info().has_fuser ? "1" : "0"}});
  const int signo = WaitForTerminationSignal();
  LOG(INFO) << "kvwire-receiver: signal " << signo
            << " received, draining (up to " << config.server.drain_timeout
            << ")";
  (*server)->Shutdown();
  server->reset();
  LOG(INFO) << "kvwire-receiver: stopped";
  return 0;
}

}  // namespace kvwire
