// gRPC server building and graceful shutdown.
#include "common/service/server.h"

#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/service/grpc_status.h"
#include "glog/logging.h"

namespace kvwire {
namespace {

// Removes gRPC's reflection plugin from one server builder.
class WithoutReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                         return p->name() == "proto_server_reflection";
                       }),
        plugins->end());
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(
    const ServerOptions& options, const std::vector<grpc::Service*>& services,
    const std::vector<std::string>& health_services) {
  auto creds = MakeServerCredentials(options.security);
  if (!creds.ok()) return creds.status();

  // Both must happen before the builder exists. Linking grpc++_reflection
  // registers its plugin for every builder of the process already; without
  // reflection, WithoutReflection takes it out of this builder.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  auto server = std::unique_ptr<GrpcServer>(new GrpcServer());
  server->options_ = options;
  server->health_services_ = health_services;

  grpc::ServerBuilder builder;
  if (!options.enable_reflection) {
    builder.SetOption(std::make_unique<WithoutReflection>());
  }
  builder.AddListeningPort(options.listen_address, *creds, &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.SetMaxSendMessageSize(options.max_send_message_bytes);
  const KeepaliveOptions& k = options.keepalive;
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, k.time_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, k.timeout_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                             k.permit_without_calls ? 1 : 0);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      k.min_recv_ping_interval_ms);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // gRPC sets SO_REUSEPORT by default: a second copy of a service on the
  // same port would start and take half the connections. One listener per
  // port: the second start fails instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  for (grpc::Service* service : services) builder.RegisterService(service);

  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    if (server->server_ != nullptr) server->server_->Shutdown();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen_address,
                     " (address in use or invalid?)"));
  }
  server->SetServing("", true);
  for (const std::string& name : health_services) {
    server->SetServing(name, true);
  }
  return server;
}

GrpcServer::~GrpcServer() { Shutdown(); }

void GrpcServer::SetServing(const std::string& service, bool serving) {
  if (server_ == nullptr) return;
  std::lock_guard<std::mutex> lock(health_mu_);
  if (serving && shutting_down_) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health != nullptr) health->SetServingStatus(service, serving);
}

void GrpcServer::Shutdown() {
  std::call_once(shutdown_once_, [this] {
    if (server_ == nullptr) return;
    const auto start = std::chrono::steady_clock::now();
    grpc::HealthCheckServiceInterface* health =
        server_->GetHealthCheckService();
    {
      std::lock_guard<std::mutex> lock(health_mu_);
      shutting_down_ = true;
      if (health != nullptr) {
        for (const std::string& name : health_services_) {
          health->SetServingStatus(name, false);
        }
        health->SetServingStatus(false);
      }
    }
    if (options_.shutdown_grace > absl::ZeroDuration()) {
      LOG(INFO) << "shutdown: NOT_SERVING, accepting calls for "
                << options_.shutdown_grace << " more";
      absl::SleepFor(options_.shutdown_grace);
    }
    // Freezes every status at NOT_SERVING (and ends Watch streams).
    if (health != nullptr) health->Shutdown();
    LOG(INFO) << "shutdown: draining in-flight RPCs for up to "
              << options_.drain_timeout;
    const absl::Time cancel_at = absl::Now() + options_.drain_timeout;
    NoteShutdownCancelsCallsAt(cancel_at);
    server_->Shutdown(absl::ToChronoTime(cancel_at));
    server_->Wait();
    LOG(INFO) << "shutdown: server stopped after "
              << std::chrono::duration<double>(
                     std::chrono::steady_clock::now() - start)
                     .count()
              << " s";
  });
}

}  // namespace kvwire
