// kvwire-health: a gRPC health probe (grpc.health.v1.Health/Check) for
// container health checks and Kubernetes exec probes, with kvwire's TLS
// options (Debian packages no grpc_health_probe, and kubelet's built-in
// gRPC probe speaks plaintext only). Exit status: 0 SERVING, 1 NOT_SERVING
// or unknown service, 2 the call failed, 3 bad usage.
//
//   kvwire-health --target=127.0.0.1:50051 --allow_insecure
//   kvwire-health --target=127.0.0.1:50051 --service=kvwire.v1.Sharer \
//       --tls_ca=/etc/kvwire/tls/ca.crt --tls_server_name=kvwire-sharer
#include <grpcpp/client_context.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <future>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/flags_help.h"
#include "common/service/channel.h"
#include "common/service/security.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "host:port to probe.");
ABSL_FLAG(std::string, service, "",
          "Service to check (empty: the server's overall health).");
ABSL_FLAG(double, timeout_seconds, 3, "Deadline of the check.");
ABSL_FLAG(std::string, tls_ca, "", "PEM roots that verify the server.");
ABSL_FLAG(std::string, tls_cert, "", "Client certificate (mutual TLS).");
ABSL_FLAG(std::string, tls_key, "", "Client key (mutual TLS).");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name to verify the server certificate against.");
ABSL_FLAG(bool, allow_insecure, false, "Plaintext channel.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "gRPC health probe with TLS; exit 0 when SERVING.");
  kvwire::HelpListsFlagsOf({"load_tests/health_main.cc"});
  absl::ParseCommandLine(argc, argv);
  kvwire::ChannelOptions options;
  options.load_balancing_policy = "pick_first";
  options.security.tls_ca_path = absl::GetFlag(FLAGS_tls_ca);
  options.security.tls_cert_path = absl::GetFlag(FLAGS_tls_cert);
  options.security.tls_key_path = absl::GetFlag(FLAGS_tls_key);
  options.security.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  options.security.allow_insecure = absl::GetFlag(FLAGS_allow_insecure);
  auto channel =
      kvwire::CreateKvwireChannel(absl::GetFlag(FLAGS_target), options);
  if (!channel.ok()) {
    std::cerr << "kvwire-health: " << channel.status().message() << "\n";
    return 3;
  }
  // HealthCheckRequest{service = 1}, encoded by hand (no generated code for
  // health.proto is needed).
  const std::string service = absl::GetFlag(FLAGS_service);
  if (service.size() > 127) {
    std::cerr << "kvwire-health: --service too long\n";
    return 3;
  }
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0A);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(
      absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_timeout_seconds))));
  grpc::GenericStub stub(*channel);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &request_buffer, &response_buffer,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) {
    std::cerr << "kvwire-health: " << absl::GetFlag(FLAGS_target) << ": "
              << status.error_message() << " (code " << status.error_code()
              << ")\n";
    return status.error_code() == grpc::StatusCode::NOT_FOUND ? 1 : 2;
  }
  std::vector<grpc::Slice> slices;
  std::string response;
  if (response_buffer.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      response.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  // HealthCheckResponse{status = 1}: 1 SERVING, 2 NOT_SERVING,
  // 3 SERVICE_UNKNOWN; absent = UNKNOWN (0).
  const int code =
      response.size() >= 2 && response[0] == 0x08 ? response[1] : 0;
  static const char* const kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING",
                                       "SERVICE_UNKNOWN"};
  std::cout << (code >= 0 && code <= 3 ? kNames[code] : "UNKNOWN") << "\n";
  return code == 1 ? 0 : 1;
}
