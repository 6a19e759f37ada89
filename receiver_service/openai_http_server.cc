// The OpenAI-compatible HTTP API on civetweb.
#include "receiver_service/openai_http_server.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "glog/logging.h"
#include "receiver_service/openai_mapping.h"

namespace kvwire {
namespace {

using nlohmann::json;

// How often a waiting handler looks whether its client is still there.
constexpr auto kClientCheckInterval = std::chrono::milliseconds(100);
// civetweb's socket timeout for reading a request and writing a response.
constexpr int kSocketTimeoutMs = 30000;

// JSON text that never throws: model text that is not valid UTF-8 (a
// sharer's decode, say) is written with replacement characters.
std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

void SendJson(mg_connection* conn, int status, const json& body,
              const std::string& extra_headers = "") {
  const std::string text = Dump(body);
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            "Content-Length: %zu\r\n%sConnection: close\r\n\r\n",
            status, mg_get_response_code_text(conn, status), text.size(),
            extra_headers.c_str());
  mg_write(conn, text.data(), text.size());
}

int SendError(mg_connection* conn, const absl::Status& status) {
  const OpenAiError error = OpenAiErrorFromStatus(status);
  SendJson(conn, error.http_status, error.body,
           error.http_status == 401
               ? "WWW-Authenticate: Bearer realm=\"kvwire\"\r\n"
               : "");
  return error.http_status;
}

// A fresh completion id: "chatcmpl-" and 24 random hex digits.
std::string NewCompletionId() {
  thread_local std::mt19937_64 random(std::random_device{}());
  return absl::StrCat("chatcmpl-", absl::Hex(random(), absl::kZeroPad16),
                      absl::Hex(random() >> 32, absl::kZeroPad8));
}

// civetweb 1.15 neither says when a client hangs up nor gives a handler its
// socket, so a handler that waits for an answer finds the socket among the
// process's descriptors by the connection's two addresses (unique while the
// handler holds the connection) and polls it.
int FindConnectionSocket(const mg_request_info& info) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    const int fd = atoi(entry->d_name);
    if (fd <= 2) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
      continue;
    }
    char address[INET6_ADDRSTRLEN] = {};
    int local_port = 0, peer_port = 0;
    if (peer.ss_family == AF_INET) {
      const auto* p = reinterpret_cast<const sockaddr_in*>(&peer);
      inet_ntop(AF_INET, &p->sin_addr, address, sizeof(address));
      peer_port = ntohs(p->sin_port);
      local_port =
          ntohs(reinterpret_cast<const sockaddr_in*>(&local)->sin_port);
    } else if (peer.ss_family == AF_INET6) {
      const auto* p = reinterpret_cast<const sockaddr_in6*>(&peer);
      inet_ntop(AF_INET6, &p->sin6_addr, address, sizeof(address));
      peer_port = ntohs(p->sin6_port);
      local_port =
          ntohs(reinterpret_cast<const sockaddr_in6*>(&local)->sin6_port);
    } else {
      continue;
    }
    if (local_port == info.server_port && peer_port == info.remote_port &&
        std::strcmp(address, info.remote_addr) == 0) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

// Whether the client closed its side. Bytes it sent early (a pipelined
// request) do not count; -1 (socket unknown) is never gone.
bool ClientGone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLHUP | POLLERR | POLLRDHUP)) return true;
  char byte;
  return recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

// The body, or 413 / 400 as a status for the caller to send.
absl::StatusOr<std::string> ReadBody(mg_connection* conn,
                                     const mg_request_info& info,
                                     size_t max_bytes) {
  if (info.content_length > static_cast<long long>(max_bytes)) {
    return WithOpenAiError(absl::InvalidArgumentError(absl::StrCat(
                               "The request body has ", info.content_length,
                               " bytes; at most ", max_bytes)),
                           "", "request_too_large");
  }
  std::string body;
  char buffer[16384];
  while (true) {
    const int n = mg_read(conn, buffer, sizeof(buffer));
    if (n < 0) return absl::InvalidArgumentError("reading the body failed");
    if (n == 0) break;
    body.append(buffer, n);
    if (body.size() > max_bytes) {
      return WithOpenAiError(
          absl::InvalidArgumentError(
              absl::StrCat("The request body exceeds ", max_bytes, " bytes")),
          "", "request_too_large");
    }
  }
  return body;
}

// The results of one call, handed from the worker to the civetweb thread.
class HttpAnswer final : public AnswerTransport {
 public:
  void Token(const v1::TokenEvent& event) override {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_.push_back(event);
    cv_.notify_one();
  }
  void Done(absl::Status status, v1::AnswerResponse response) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = std::move(status);
    response_ = std::move(response);
    done_ = true;
    cv_.notify_one();
  }

  // Waits up to one client-check interval; takes the tokens that came.
  // Returns whether the call is done (then status() and response() hold).
  bool Wait(std::deque<v1::TokenEvent>& tokens) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, kClientCheckInterval,
                 [this] { return done_ || !tokens_.empty(); });
    tokens.insert(tokens.end(), tokens_.begin(), tokens_.end());
    tokens_.clear();
    return done_;
  }
  // Only after Wait returned true.
  const absl::Status& status() const { return status_; }
  const v1::AnswerResponse& response() const { return response_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::TokenEvent> tokens_;
  bool done_ = false;
  absl::Status status_;
  v1::AnswerResponse response_;
};

// Writes server-sent events; remembers a failed write (the client left).
class EventStream {
 public:
  explicit EventStream(mg_connection* conn) : conn_(conn) {}

  void Start() {
    mg_printf(conn_,
              "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              "Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
    started_ = true;
  }
  bool started() const { return started_; }
  bool broken() const { return broken_; }

  void Data(const std::string& data) {
    if (broken_) return;
    const std::string event = absl::StrCat("data: ", data, "\n\n");
    if (mg_write(conn_, event.data(), event.size()) <= 0) broken_ = true;
  }

 private:
  mg_connection* const conn_;
  bool started_ = false;
  bool broken_ = false;
};

}  // namespace

OpenAiHttpServer::OpenAiHttpServer(const OpenAiHttpOptions& options,
                                   ReceiverService* service,
                                   const ReceiverEngine* engine,
                                   Metrics* metrics)
    : options_(options),
      service_(service),
      engine_(engine),
      rpc_(metrics->Rpc(ServiceRole::kReceiver, "ChatCompletions")),
      auth_(options.security.auth_token) {}

absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> OpenAiHttpServer::Start(
    const OpenAiHttpOptions& options, ReceiverService* service,
    const ReceiverEngine* engine, Metrics* metrics) {
  if (options.address.empty()) {
    return absl::InvalidArgumentError("the HTTP API address is empty");
  }
  if (options.served_model_name.empty()) {
    return absl::InvalidArgumentError("the served model name is empty");
  }
  const ServerSecurityOptions& security = options.security;
  const bool tls =
      !security.tls_cert_path.empty() || !security.tls_key_path.empty();
  if (!security.tls_client_ca_path.empty()) {
    return absl::InvalidArgumentError(
        "--http_address cannot check client certificates (--tls_client_ca): "
        "serve the HTTP API without mutual TLS on the gRPC port, or behind "
        "a proxy that checks them");
  }
  if (tls &&
      (security.tls_cert_path.empty() || security.tls_key_path.empty())) {
    return absl::InvalidArgumentError(
        "HTTPS needs both a certificate and a key (--tls_cert, --tls_key)");
  }
  if (!tls && !security.allow_insecure) {
    return absl::FailedPreconditionError(
        "plaintext HTTP API refused: give --tls_cert/--tls_key or "
        "--allow_insecure");
  }
  auto server = std::unique_ptr<OpenAiHttpServer>(
      new OpenAiHttpServer(options, service, engine, metrics));

  mg_init_library(0);
  mg_callbacks callbacks{};
  callbacks.log_message = [](const mg_connection*, const char* message) {
    LOG(WARNING) << "HTTP API: " << message;
    return 1;
  };
  // With TLS civetweb listens on loopback only, behind the TLS front
  // (tls_front.h says why civetweb's own TLS is not used).
  const std::string listen = tls ? "127.0.0.1:0" : options.address;
  const std::string threads = std::to_string(options.threads);
  const std::string timeout = std::to_string(kSocketTimeoutMs);
  const char* civet_options[] = {
      "listening_ports",    listen.c_str(),  "num_threads", threads.c_str(),
      "request_timeout_ms", timeout.c_str(), nullptr};
  server->context_ = mg_start(&callbacks, nullptr, civet_options);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve the HTTP API on ", options.address, " (port in use?)"));
  }
  mg_set_request_handler(server->context_, "/", HandleRequest, server.get());
  mg_server_port ports[4] = {};
  if (mg_get_server_ports(server->context_, 4, ports) < 1 ||
      ports[0].port <= 0) {
    return absl::UnavailableError(absl::StrCat(
        "the HTTP API on ", options.address, " has no listening port"));
  }
  server->port_ = ports[0].port;
  if (tls) {
    TlsFrontOptions front;
    front.listen_address = options.address;
    front.backend_port = server->port_;
    front.cert_path = security.tls_cert_path;
    front.key_path = security.tls_key_path;
    front.max_connections = options.threads;
    // Generations take long; the front's idle timeout must not cut them.
    front.idle_timeout = options.request_timeout;
    ASSIGN_OR_RETURN(server->tls_front_, TlsFront::Start(front));
    server->port_ = server->tls_front_->port();
  }
  return server;
}

OpenAiHttpServer::~OpenAiHttpServer() {
  stopping_ = true;  // Waiting handlers cancel their calls and return.
  tls_front_.reset();
  if (context_ != nullptr) mg_stop(context_);
}

int OpenAiHttpServer::HandleRequest(mg_connection* conn, void* server) {
  // Nothing may unwind into civetweb's C threads: a bug here must cost one
  // request, not the process.
  try {
    return static_cast<OpenAiHttpServer*>(server)->Handle(conn);
  } catch (const std::exception& e) {
    LOG(ERROR) << "HTTP API request failed: " << e.what();
    return SendError(conn, absl::InternalError("internal error"));
  }
}

int OpenAiHttpServer::Handle(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string uri = info->local_uri != nullptr ? info->local_uri : "";
  const std::string method =
      info->request_method != nullptr ? info->request_method : "";
  if (uri == "/v1/chat/completions") {
    if (method != "POST") {
      SendJson(conn, 405,
               OpenAiErrorFromStatus(
                   absl::InvalidArgumentError("Use POST /v1/chat/completions."))
                   .body);
      return 405;
    }
    return ChatCompletions(conn);
  }
  const char* header = mg_get_header(conn, "Authorization");
  const absl::string_view value(header != nullptr ? header : "");
  if (absl::Status st = auth_.CheckHeader(header != nullptr ? &value : nullptr);
      !st.ok()) {
    return SendError(conn, st);
  }
  const std::string model_path =
      absl::StrCat("/v1/models/", options_.served_model_name);
  if (method == "GET" && (uri == "/v1/models" || uri == model_path)) {
    const json list = ModelListJson(options_.served_model_name,
                                    absl::ToUnixSeconds(absl::Now()));
    SendJson(conn, 200, uri == "/v1/models" ? list : list["data"][0]);
    return 200;
  }
  if (absl::StartsWith(uri, "/v1/models/")) {
    return SendError(
        conn,
        WithOpenAiError(absl::NotFoundError(absl::StrCat(
                            "The model '", uri.substr(11), "' does not exist")),
                        "model", "model_not_found"));
  }
  return SendError(conn, WithOpenAiError(absl::NotFoundError(absl::StrCat(
                                             "Unknown path ", method, " ", uri,
                                             ": GET /v1/models, POST "
                                             "/v1/chat/completions")),
                                         "", "unknown_url"));
}

int OpenAiHttpServer::ChatCompletions(mg_connection* conn) {
  const mg_request_info& info = *mg_get_request_info(conn);
  // The checks before the call in gRPC's order: the token first (nothing
  // is parsed for unauthenticated callers), then the request itself. A
  // failure still goes through StartCall, so it is counted as gRPC's are.
  const char* header = mg_get_header(conn, "Authorization");
  const absl::string_view value(header != nullptr ? header : "");
  absl::Status checked =
      auth_.CheckHeader(header != nullptr ? &value : nullptr);
  ChatCompletionRequest request;
  if (checked.ok()) {
    absl::StatusOr<std::string> body =
        ReadBody(conn, info, options_.max_body_bytes);
    absl::StatusOr<ChatCompletionRequest> parsed =
        body.ok()
            ? ParseChatCompletionRequest(*body, options_.served_model_name)
            : absl::StatusOr<ChatCompletionRequest>(body.status());
    if (parsed.ok()) {
      request = *std::move(parsed);
    } else {
      checked = parsed.status();
    }
  }
  CompletionInfo completion;
  if (request.answer.request_id().empty()) {
    completion.id = NewCompletionId();
    request.answer.set_request_id(completion.id);
  } else {
    completion.id = absl::StrCat("chatcmpl-", request.answer.request_id());
  }
  completion.created = absl::ToUnixSeconds(absl::Now());
  completion.model = options_.served_model_name;

  AnswerCallOptions call_options;
  call_options.deadline = absl::Now() + options_.request_timeout;
  call_options.peer =
      absl::StrCat("http:", info.remote_addr, ":", info.remote_port);
  call_options.method = "ChatCompletions";
  call_options.streaming = request.stream;
  call_options.rpc = &rpc_;
  HttpAnswer answer;
  std::unique_ptr<AnswerCallHandle> call =
      service_->StartCall(request.answer, call_options, checked, &answer);

  int fd = -2;  // The connection's socket, looked up once it is needed.
  StopSequenceFilter filter(request.stop);
  NewlineTrimmer trimmer;
  EventStream events(conn);
  bool cancelled = false;
  bool sent_any = false;
  auto send_text = [&](const std::string& text) {
    if (text.empty()) return;
    if (!events.started()) events.Start();
    const bool first = !sent_any;
    events.Data(Dump(ChatCompletionChunkJson(completion, text, first, "")));
    sent_any = true;
  };
  std::deque<v1::TokenEvent> tokens;
  while (true) {
    const bool done = answer.Wait(tokens);
    for (const v1::TokenEvent& token : tokens) {
      if (!filter.stopped() && !events.broken()) {
        send_text(filter.Push(trimmer.Push(token.text())));
      }
    }
    tokens.clear();
    if (done) break;
    if (fd == -2) fd = FindConnectionSocket(info);
    // Past the deadline the call is cancelled as gRPC cancels an expired
    // RPC (the code is then DEADLINE_EXCEEDED), stopping a Share in flight.
    if (!cancelled && (events.broken() || stopping_.load() || ClientGone(fd) ||
                       absl::Now() >= call_options.deadline)) {
      cancelled = true;
      call->Cancel();
    }
  }

  int http_status = 200;
  const absl::Status& status = answer.status();
  const v1::AnswerResponse& response = answer.response();
  if (status.ok()) {
    completion.completion_tokens = response.token_ids_size();
    std::vector<ChatMessage> messages;
    for (const v1::ChatMessage& m : request.answer.messages()) {
      messages.push_back(ChatMessage{m.role(), m.content(), std::nullopt});
    }
    // The conversation as the receiver's template renders it (text-to-text
    // adds the sharer's background, reported under kvwire).
    if (auto prompt = engine_->RenderPrompt(messages); prompt.ok()) {
      completion.prompt_tokens = static_cast<int64_t>(prompt->size());
    }
  }
  if (!request.stream) {
    if (status.ok()) {
      std::string text = filter.Push(response.text());
      text += filter.Flush();
      completion.finish_reason = FinishReasonFor(
          response, request.answer.generation().max_new_tokens(),
          filter.stopped());
      SendJson(conn, 200, ChatCompletionJson(completion, text, response));
    } else {
      http_status = SendError(conn, status);
    }
  } else if (!status.ok() && !events.started()) {
    http_status = SendError(conn, status);
  } else if (!status.ok()) {
    // Headers are out: the error goes as an event, as OpenAI's does.
    events.Data(Dump(OpenAiErrorFromStatus(status).body));
  } else {
    send_text(filter.Flush());
    if (!events.started()) events.Start();
    completion.finish_reason =
        FinishReasonFor(response, request.answer.generation().max_new_tokens(),
                        filter.stopped());
    json last = ChatCompletionChunkJson(completion, "", !sent_any,
                                        completion.finish_reason);
    last["kvwire"] = KvwireReportJson(response);
    events.Data(Dump(last));
    if (request.include_usage) {
      events.Data(Dump(UsageChunkJson(completion)));
    }
    events.Data("[DONE]");
  }
  call->Finish();
  return http_status;
}

}  // namespace kvwire
