// Building, running and draining a kvwire gRPC server: credentials from
// security.h, the standard health service (overall and per service),
// reflection, message-size limits, keepalive, and a graceful shutdown that
// marks everything NOT_SERVING, lets in-flight RPCs finish up to a deadline,
// cancels whatever is left and returns.
//
// Typical main():
//   InstallTerminationSignalHandlers();
//   auto server = GrpcServer::Start(options, {&service}, {"kvwire.v1.Sharer"});
//   WaitForTerminationSignal();
//   (*server)->Shutdown();   // drain
#ifndef KVWIRE_COMMON_SERVICE_SERVER_H_
#define KVWIRE_COMMON_SERVICE_SERVER_H_

#include <grpcpp/server.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/service/channel.h"
#include "common/service/security.h"

namespace grpc {
class Service;
}  // namespace grpc

namespace kvwire {

struct ServerOptions {
  // "host:port"; port 0 picks a free port (GrpcServer::port()).
  std::string listen_address = "0.0.0.0:50051";
  ServerSecurityOptions security;
  int max_receive_message_bytes = kDefaultMaxMessageBytes;
  int max_send_message_bytes = kDefaultMaxMessageBytes;
  KeepaliveOptions keepalive;
  bool enable_reflection = true;
  // How long Shutdown() waits for in-flight RPCs before cancelling them.
  absl::Duration drain_timeout = absl::Seconds(30);
  // How long Shutdown() keeps answering (health NOT_SERVING) before it stops
  // accepting new RPCs, so that load balancers notice first.
  absl::Duration shutdown_grace = absl::ZeroDuration();
};

class GrpcServer {
 public:
  // Builds and starts the server with `services` (not owned; they must
  // outlive it) and marks the overall health and each of `health_services`
  // SERVING. Errors: as MakeServerCredentials; UNAVAILABLE when the address
  // cannot be bound.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(
      const ServerOptions& options, const std::vector<grpc::Service*>& services,
      const std::vector<std::string>& health_services);

  ~GrpcServer();  // Shutdown() if not done yet.
  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  // The bound port.
  int port() const { return port_; }
  const ServerOptions& options() const { return options_; }
  grpc::Server* server() { return server_.get(); }

  // Health of one registered service (or "" for the overall status). Once
  // Shutdown() has begun, SERVING is no longer set: a drain stays visible.
  void SetServing(const std::string& service, bool serving);

  // Graceful stop: health NOT_SERVING everywhere, shutdown_grace, then no
  // new RPCs; in-flight RPCs get until drain_timeout, after which gRPC
  // cancels them (their reactors see OnCancel). Returns once every RPC has
  // finished. Idempotent and thread-safe.
  void Shutdown();

 private:
  GrpcServer() = default;

  ServerOptions options_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::string> health_services_;
  int port_ = 0;
  // Orders SetServing against Shutdown's NOT_SERVING.
  std::mutex health_mu_;
  bool shutting_down_ = false;
  std::once_flag shutdown_once_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_SERVER_H_
