// The receiver's OpenAI-compatible HTTP API (docs/OPENAI_API.md):
// GET /v1/models and POST /v1/chat/completions, streamed (server-sent
// events) or not, on civetweb. Handlers are thin: bearer token, body,
// openai_mapping.h for JSON <-> v1::AnswerRequest, and the request runs
// through ReceiverService::StartCall, the path of gRPC's Answer and
// AnswerStream (same validation, work queue and admission limits, deadline,
// metrics and live page); tokens stream from its token events. A client
// that disconnects cancels its call, as a cancelled RPC does.
//
// Security is the gRPC port's: its bearer token, and with a certificate
// HTTPS through TlsFront (tls_front.h, as the metrics port does). Mutual
// TLS is not available on this port: Start refuses a client CA rather than
// serve without checking client certificates.
//
// Thread-safety: civetweb runs each connection on one of its threads; the
// server object is immutable after Start except for the stopping flag.
#ifndef KVWIRE_RECEIVER_SERVICE_OPENAI_HTTP_SERVER_H_
#define KVWIRE_RECEIVER_SERVICE_OPENAI_HTTP_SERVER_H_

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/engine/receiver_engine.h"
#include "common/service/metrics.h"
#include "common/service/security.h"
#include "common/service/tls_front.h"
#include "receiver_service/receiver_service.h"

struct mg_connection;
struct mg_context;

namespace kvwire {

struct OpenAiHttpOptions {
  // "host:port"; port 0 picks a free port (see port()).
  std::string address;
  // What /v1/models lists and requests must name (openai_mapping.h's
  // ServedModelNameFor).
  std::string served_model_name;
  // The gRPC port's: TLS files, allow_insecure, bearer token.
  ServerSecurityOptions security;
  // The deadline of each request (gRPC's comes from the client).
  absl::Duration request_timeout = absl::Seconds(600);
  // Larger bodies get 413 (the gRPC port's max receive message size).
  size_t max_body_bytes = 4 << 20;
  // civetweb threads: one per open connection, waiting or running; at
  // least the receiver's workers + queue, so admission decides, not this.
  int threads = 32;
};

class OpenAiHttpServer {
 public:
  // Starts serving. `service` runs the requests, `engine` counts prompt
  // tokens for `usage`, `metrics` gives the method's RPC metrics
  // (kvwire_requests_total{method="ChatCompletions"}); none owned, all
  // must outlive the server. Errors: INVALID_ARGUMENT (no address or model
  // name, an incomplete TLS pair, a client CA), FAILED_PRECONDITION
  // (plaintext without allow_insecure), UNAVAILABLE (cannot listen), TLS
  // file errors as TlsFront::Start.
  static absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> Start(
      const OpenAiHttpOptions& options, ReceiverService* service,
      const ReceiverEngine* engine, Metrics* metrics);
  // Cancels the requests still running, then stops civetweb (which waits
  // for its handlers) and the TLS front.
  ~OpenAiHttpServer();
  OpenAiHttpServer(const OpenAiHttpServer&) = delete;
  OpenAiHttpServer& operator=(const OpenAiHttpServer&) = delete;

  // The port clients connect to (the TLS front's with TLS).
  int port() const { return port_; }

 private:
  OpenAiHttpServer(const OpenAiHttpOptions& options, ReceiverService* service,
                   const ReceiverEngine* engine, Metrics* metrics);
  static int HandleRequest(mg_connection* conn, void* server);
  int Handle(mg_connection* conn);
  int ChatCompletions(mg_connection* conn);

  const OpenAiHttpOptions options_;
  ReceiverService* const service_;
  const ReceiverEngine* const engine_;
  RpcMetrics& rpc_;
  const BearerTokenAuth auth_;
  std::atomic<bool> stopping_{false};
  mg_context* context_ = nullptr;
  std::unique_ptr<TlsFront> tls_front_;
  int port_ = 0;
};

}  // namespace kvwire

#endif  // KVWIRE_RECEIVER_SERVICE_OPENAI_HTTP_SERVER_H_
