// Receiver process assembly.
#include "receiver_service/receiver_server.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/service/grpc_status.h"
#include "common/service/process.h"
#include "glog/logging.h"

namespace kvwire {

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
  auto engine = ReceiverEngine::Load(config.engine);
  if (!engine.ok()) return engine.status();
  s->engine_ = *std::move(engine);
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

  if (!config.metrics_address.empty()) {
    auto metrics_server =
        MetricsServer::Start(config.metrics_address, metrics->registry(),
                             &metrics->Live(), config.metrics_security);
    if (!metrics_server.ok()) return metrics_server.status();
    s->metrics_server_ = *std::move(metrics_server);
  }
#ifdef KVWIRE_VERSION
  metrics->SetBuildInfo(ServiceRole::kReceiver, KVWIRE_VERSION);
#endif

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
            << FallbackPolicyName(config.runner.default_fallback);
  return s;
}

ReceiverServer::~ReceiverServer() { Shutdown(); }

int ReceiverServer::metrics_port() const {
  return metrics_server_ != nullptr ? metrics_server_->port() : 0;
}

void ReceiverServer::Shutdown() {
  // The server first (it waits for every call, cancelling the stragglers at
  // the drain deadline, which cancels their Share calls), then the workers.
  if (server_ != nullptr) server_->Shutdown();
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
