#include "common/service/server_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/service/security.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate chain (TLS).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle; when set, clients must present a certificate "
          "signed by it (mutual TLS).");
ABSL_FLAG(bool, allow_insecure, false,
          "Serve plaintext when no --tls_cert is given. Without it the "
          "server refuses to start without TLS.");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding the bearer token clients must send "
          "('authorization: Bearer <token>').");
ABSL_FLAG(std::string, auth_token, "",
          "The bearer token itself (prefer --auth_token_file: command lines "
          "are visible to other users).");
ABSL_FLAG(double, drain_timeout_seconds, 30,
          "On SIGTERM/SIGINT: how long in-flight calls may run before they "
          "are cancelled.");
ABSL_FLAG(double, shutdown_grace_seconds, 0,
          "On SIGTERM/SIGINT: how long to report NOT_SERVING while still "
          "accepting calls, before draining.");
ABSL_FLAG(int, keepalive_time_ms, 30000,
          "HTTP/2 keepalive ping interval on idle connections.");
ABSL_FLAG(int, keepalive_timeout_ms, 10000,
          "Drop a connection whose keepalive ping is not answered in time.");
ABSL_FLAG(bool, reflection, true,
          "Enable gRPC server reflection (lists the services and their "
          "message types to any client that may call the port).");
ABSL_FLAG(std::string, metrics_tls_cert, "",
          "PEM certificate chain: serve /metrics and /live over HTTPS "
          "(with --metrics_tls_key).");
ABSL_FLAG(std::string, metrics_tls_key, "",
          "PEM private key of --metrics_tls_cert.");
ABSL_FLAG(std::string, metrics_auth_token_file, "",
          "File with a bearer token every /metrics and /live request must "
          "send ('Authorization: Bearer <token>'; Prometheus: "
          "authorization.credentials_file).");

namespace kvwire {
namespace {

// The token in `path` (when set) into `token`; errors name --`flag`.
absl::Status ReadTokenFile(absl::string_view flag, const std::string& path,
                           std::string* token) {
  if (path.empty()) return absl::OkStatus();
  auto read = ReadSecretFile(path);
  if (!read.ok()) {
    return absl::Status(
        read.status().code(),
        absl::StrCat("--", flag, ": ", read.status().message()));
  }
  *token = *std::move(read);
  return absl::OkStatus();
}

}  // namespace

absl::Status ServerOptionsFromFlags(ServerOptions* options) {
  ServerSecurityOptions& security = options->security;
  security.tls_cert_path = absl::GetFlag(FLAGS_tls_cert);
  security.tls_key_path = absl::GetFlag(FLAGS_tls_key);
  security.tls_client_ca_path = absl::GetFlag(FLAGS_tls_client_ca);
  security.allow_insecure = absl::GetFlag(FLAGS_allow_insecure);
  security.auth_token = absl::GetFlag(FLAGS_auth_token);
  RETURN_IF_ERROR(ReadTokenFile("auth_token_file",
                                absl::GetFlag(FLAGS_auth_token_file),
                                &security.auth_token));
  options->drain_timeout =
      absl::Seconds(absl::GetFlag(FLAGS_drain_timeout_seconds));
  options->shutdown_grace =
      absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds));
  options->keepalive.time_ms = absl::GetFlag(FLAGS_keepalive_time_ms);
  options->keepalive.timeout_ms = absl::GetFlag(FLAGS_keepalive_timeout_ms);
  options->enable_reflection = absl::GetFlag(FLAGS_reflection);
  return absl::OkStatus();
}

absl::Status MetricsSecurityFromFlags(MetricsSecurityOptions* options) {
  options->tls_cert_path = absl::GetFlag(FLAGS_metrics_tls_cert);
  options->tls_key_path = absl::GetFlag(FLAGS_metrics_tls_key);
  options->auth_token.clear();
  return ReadTokenFile("metrics_auth_token_file",
                       absl::GetFlag(FLAGS_metrics_auth_token_file),
                       &options->auth_token);
}

bool IsServerFlagsFile(absl::string_view path) {
  return absl::EndsWith(path, "common/service/server_flags.cc");
}

}  // namespace kvwire
