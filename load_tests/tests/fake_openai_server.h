// A fake OpenAI chat.completions server for kvwire-load's tests: plain HTTP/1.1
// on 127.0.0.1 (one thread per connection), answering POST
// /v1/chat/completions with a streamed SSE response of `tokens` content
// chunks `gap` apart, a usage chunk and "data: [DONE]", chunked or
// read-to-close, the last chunk with kvwire-receiver's "kvwire" report; GET
// /v1/models lists "fake-model"; 401 with an OpenAI error body for a wrong
// bearer token and 404 for another path. Records the last request's head
// and body.
#ifndef KVWIRE_LOAD_TESTS_TESTS_FAKE_OPENAI_SERVER_H_
#define KVWIRE_LOAD_TESTS_TESTS_FAKE_OPENAI_SERVER_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace kvwire {
namespace load {

class FakeOpenAiServer {
 public:
  struct Behaviour {
    int tokens = 3;
    absl::Duration first_token_delay = absl::Milliseconds(5);
    absl::Duration gap = absl::Milliseconds(10);
    bool chunked = true;       // Else no length: the body ends at close.
    std::string token;         // Bearer token required ("" for none).
    bool send_done = true;     // End with "data: [DONE]".
    bool error_event = false;  // Send an in-stream error event first.
    // Sent as soon as a connection opens, which then closes (a server that
    // is not what the client expects, e.g. plaintext for a TLS client).
    std::string greeting;
    // Keep the connection for the next request (needs `chunked`).
    bool keep_alive = false;
    // With keep_alive: say so, but close after each response anyway (a
    // server whose idle timeout ran out).
    bool close_after_response = false;
  };

  explicit FakeOpenAiServer(Behaviour behaviour) : behaviour_(behaviour) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_fd_, 64);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }

  ~FakeOpenAiServer() {
    stopping_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    close(listen_fd_);
    acceptor_.join();
    std::vector<std::thread> connections;
    {
      std::lock_guard<std::mutex> lock(mu_);
      connections.swap(connections_);
    }
    for (std::thread& t : connections) t.join();
  }

  int port() const { return port_; }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }
  int requests() const { return requests_.load(); }
  int connections() const { return connections_accepted_.load(); }
  std::string last_head() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_head_;
  }
  std::string last_body() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_body_;
  }

 private:
  void AcceptLoop() {
    while (!stopping_) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (stopping_) return;
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      connections_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  static void SendAll(int fd, const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n =
          send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;
      sent += static_cast<size_t>(n);
    }
  }

  void SendPiece(int fd, const std::string& piece) {
    if (behaviour_.chunked) {
      char size[32];
      snprintf(size, sizeof(size), "%zx\r\n", piece.size());
      SendAll(fd, absl::StrCat(size, piece, "\r\n"));
    } else {
      SendAll(fd, piece);
    }
  }

  void Serve(int fd) {
    connections_accepted_.fetch_add(1);
    while (ServeOne(fd)) {
    }
    close(fd);
  }

  // Answers one request on `fd`; whether the connection stays open.
  bool ServeOne(int fd) {
    if (!behaviour_.greeting.empty()) {
      SendAll(fd, behaviour_.greeting);
      return false;
    }
    std::string in;
    char buf[4096];
    size_t head_end;
    while ((head_end = in.find("\r\n\r\n")) == std::string::npos) {
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) {
        return false;
      }
      in.append(buf, static_cast<size_t>(n));
    }
    const std::string head = in.substr(0, head_end);
    size_t length = 0;
    const size_t at = head.find("Content-Length: ");
    if (at != std::string::npos) {
      absl::SimpleAtoi(head.substr(at + 16, head.find("\r\n", at) - at - 16),
                       &length);
    }
    while (in.size() < head_end + 4 + length) {
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      in.append(buf, static_cast<size_t>(n));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_head_ = head;
      last_body_ = in.substr(head_end + 4);
    }
    requests_.fetch_add(1);
    if (absl::StartsWith(head, "GET /v1/models ")) {
      const std::string body =
          "{\"object\":\"list\",\"data\":[{\"id\":\"fake-model\","
          "\"object\":\"model\",\"owned_by\":\"kvwire\"}]}";
      SendAll(fd,
              absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: "
                           "application/json\r\nContent-Length: ",
                           body.size(), "\r\n",
                           behaviour_.keep_alive ? "" : "Connection: close\r\n",
                           "\r\n", body));
      return behaviour_.keep_alive && !behaviour_.close_after_response;
    }
    if (!absl::StartsWith(head, "POST /v1/chat/completions ")) {
      SendAll(fd,
              "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n"
              "Connection: close\r\n\r\nnot found");
      return false;
    }
    if (!behaviour_.token.empty() &&
        !absl::StrContains(
            head, absl::StrCat("Authorization: Bearer ", behaviour_.token))) {
      const std::string body =
          "{\"error\": {\"message\": \"invalid bearer token\", \"type\": "
          "\"authentication_error\"}}";
      SendAll(fd,
              absl::StrCat("HTTP/1.1 401 Unauthorized\r\nContent-Type: "
                           "application/json\r\nContent-Length: ",
                           body.size(), "\r\nConnection: close\r\n\r\n", body));
      return false;
    }
    SendAll(fd,
            absl::StrCat(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n",
                behaviour_.chunked ? "Transfer-Encoding: chunked\r\n" : "",
                behaviour_.keep_alive ? "" : "Connection: close\r\n", "\r\n"));
    absl::SleepFor(behaviour_.first_token_delay);
    // A role-only first chunk, as OpenAI sends: no content, no token.
    SendPiece(fd,
              "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{"
              "\"index\":0,\"delta\":{\"role\":\"assistant\"},"
              "\"finish_reason\":null}]}\n\n");
    if (behaviour_.error_event) {
      SendPiece(fd, "data: {\"error\":{\"message\":\"model overloaded\"}}\n\n");
    }
    for (int i = 0; i < behaviour_.tokens; ++i) {
      if (i > 0) absl::SleepFor(behaviour_.gap);
      SendPiece(fd, absl::StrCat(": keep-alive comment\n",
                                 "data: {\"object\":\"chat.completion.chunk\","
                                 "\"choices\":[{\"index\":0,\"delta\":{"
                                 "\"content\":\"tok",
                                 i, " \"},\"finish_reason\":null}]}\r\n\r\n"));
    }
    SendPiece(fd, absl::StrCat("data: {\"choices\":[{\"index\":0,\"delta\":{},"
                               "\"finish_reason\":\"length\"}],\"kvwire\":{"
                               "\"mode\":\"c2c\",\"fell_back\":false,"
                               "\"transfer\":{\"payload_bytes\":\"1000\","
                               "\"serialized_bytes\":\"1200\",\"wire_bytes\":"
                               "\"1234\",\"raw_kv_bytes\":\"4000\","
                               "\"prompt_tokens\":32,\"tokens_sent\":96,"
                               "\"future_field\":1}}}\n\n",
                               "data: {\"choices\":[],\"usage\":{"
                               "\"prompt_tokens\":7,\"completion_tokens\":",
                               behaviour_.tokens, ",\"total_tokens\":",
                               7 + behaviour_.tokens, "}}\n\n"));
    if (behaviour_.send_done) SendPiece(fd, "data: [DONE]\n\n");
    if (behaviour_.chunked) SendAll(fd, "0\r\n\r\n");
    return behaviour_.keep_alive && !behaviour_.close_after_response;
  }

  const Behaviour behaviour_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> requests_{0};
  std::atomic<int> connections_accepted_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> connections_;
  std::string last_head_;
  std::string last_body_;
};

}  // namespace load
}  // namespace kvwire

#endif  // KVWIRE_LOAD_TESTS_TESTS_FAKE_OPENAI_SERVER_H_
