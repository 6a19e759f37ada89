// A small HTTP/1.1 client for kvwire-load's OpenAI mode: requests over
// plain TCP sockets, or over TLS with OpenSSL for https URLs, on persistent
// connections (kept for the next request when the server keeps them open,
// as OpenAI clients do; or one per request with keep-alive off), whose response
// body is handed to a callback as it arrives (chunked, Content-Length or
// read-to-close bodies), so that a streamed (SSE) response can be timed chunk
// by chunk. TLS takes the same ClientSecurityOptions as kvwire's gRPC channels
// (common/service/ security.h): CA bundle or the system roots, client
// certificate for mutual TLS, server-name override; plaintext (http://) only
// with allow_insecure.
//
// Blocking I/O: each call runs on the caller's thread and ends by its
// deadline; HttpCancel lets another thread abort it. Plain sockets send
// with MSG_NOSIGNAL, but OpenSSL writes with write(2): a process using
// https must ignore SIGPIPE (kvwire-load's main does).
#ifndef KVWIRE_LOAD_TESTS_HTTP_CLIENT_H_
#define KVWIRE_LOAD_TESTS_HTTP_CLIENT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/service/security.h"

namespace kvwire {
namespace load {

struct HttpUrl {
  bool https = false;
  std::string host;  // Without brackets for IPv6 literals.
  int port = 0;
  std::string path;  // Starts with '/'; includes any query.

  // "host:port" or "[v6]:port" (for the target guard and Host headers).
  std::string HostPort() const;
};

// Parses "http://host[:port][/path]" or "https://...". The port defaults to
// 80 / 443 and the path to "/". INVALID_ARGUMENT for another scheme, user
// info, a bad port or an empty host.
absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view url);

// Status line and headers of a response (names lower-cased).
struct HttpResponseHead {
  int minor_version = 1;  // HTTP/1.x.
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;

  // The first header of that (lower-case) name, or "".
  std::string Header(absl::string_view lower_name) const;
};

// Parses a response head (status line and headers, without the blank line
// that ends them). INVALID_ARGUMENT for a malformed status line or header.
absl::StatusOr<HttpResponseHead> ParseResponseHead(absl::string_view text);

// Decodes a "Transfer-Encoding: chunked" body incrementally: Feed() takes
// bytes as they arrive, in pieces of any size, and appends the decoded body
// bytes to `out`. INVALID_ARGUMENT for a malformed chunk size or missing
// CRLF; finished() once the last (zero-size) chunk and its trailers ended.
class ChunkedDecoder {
 public:
  // `consumed` (may be null) gets how many of `bytes` belonged to the body:
  // fewer than all only once finished.
  absl::Status Feed(absl::string_view bytes, std::string* out,
                    size_t* consumed = nullptr);
  bool finished() const { return state_ == State::kDone; }

 private:
  enum class State { kSize, kData, kDataEnd, kTrailer, kDone };
  State state_ = State::kSize;
  std::string line_;  // The size line or trailer line being read.
  uint64_t remaining_ = 0;
};

// Lets another thread abort a running HttpClient::Send (closes its socket).
// Thread-safe; one per call.
class HttpCancel {
 public:
  void Cancel();
  bool cancelled() const;

 private:
  friend class HttpClient;
  // False (and nothing attached) when already cancelled.
  bool Attach(int fd);
  // After Detach no Cancel touches the descriptor, so it may be closed.
  void Detach();
  mutable std::mutex mu_;
  bool cancelled_ = false;
  int fd_ = -1;
};

struct HttpRequest {
  std::string method = "POST";  // Or "GET", which sends no body.
  HttpUrl url;
  std::vector<std::pair<std::string, std::string>> headers;  // Extra ones.
  std::string body;
  std::string content_type = "application/json";
};

// Receives body bytes as they arrive (already de-chunked). A non-OK status
// stops the call and is returned by Send.
using HttpBodyFn = std::function<absl::Status(absl::string_view bytes)>;

class HttpConnection;  // A connected socket, TLS on top for https.

// Sends requests; owns the TLS context (loaded once) and the idle
// keep-alive connections (closed with the client). Thread-safe: calls may
// run concurrently from many threads, each on a connection of its own.
class HttpClient {
 public:
  // INVALID_ARGUMENT for an incomplete TLS combination (a cert without a
  // key), FAILED_PRECONDITION for plaintext without allow_insecure when
  // `https` is false, file errors (NOT_FOUND, INVALID_ARGUMENT) for
  // unreadable or invalid PEM files.
  // `keep_alive` false sends "Connection: close" and opens a connection per
  // request (every call's time then includes TCP and TLS set-up).
  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(
      const ClientSecurityOptions& security, bool https,
      bool keep_alive = true);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends `request` (a POST, or a GET without body) and streams the
  // response body to `on_body`; returns the response head once the body has
  // ended. `on_head` (may be null) runs as soon as the head arrives. Errors:
  // UNAVAILABLE (connect, TLS handshake, reset, body cut short),
  // DEADLINE_EXCEEDED, CANCELLED (by `cancel`), INVALID_ARGUMENT (malformed
  // response, a URL whose scheme does not match the client), and whatever
  // `on_body` returns. A non-2xx status is not an error here: the caller reads
  // head.status. A kept connection the server closed meanwhile is retried
  // once on a new one (nothing was answered on it).
  absl::StatusOr<HttpResponseHead> Send(
      const HttpRequest& request, absl::Time deadline,
      const std::function<void(const HttpResponseHead&)>& on_head,
      const HttpBodyFn& on_body, HttpCancel* cancel) const;

 private:
  struct TlsContext;
  // What one request/response exchange says about its connection.
  struct ExchangeInfo {
    bool nothing_received = false;  // Failed before any response byte.
    bool reusable = false;  // Framed body, server keeps it: may be kept.
  };
  HttpClient(ClientSecurityOptions security, bool https, bool keep_alive,
             std::unique_ptr<TlsContext> tls);
  absl::StatusOr<std::unique_ptr<HttpConnection>> Connect(
      const HttpUrl& url, absl::Time deadline, HttpCancel* cancel) const;
  absl::StatusOr<HttpResponseHead> Exchange(
      HttpConnection& connection, const HttpRequest& request,
      absl::Time deadline,
      const std::function<void(const HttpResponseHead&)>& on_head,
      const HttpBodyFn& on_body, ExchangeInfo* info) const;
  std::unique_ptr<HttpConnection> TakeIdle(const std::string& key) const;
  void PutIdle(const std::string& key,
               std::unique_ptr<HttpConnection> connection) const;

  ClientSecurityOptions security_;
  bool https_;
  bool keep_alive_;
  std::unique_ptr<TlsContext> tls_;
  mutable std::mutex pool_mu_;
  // Idle connections by "host:port".
  mutable std::map<std::string, std::vector<std::unique_ptr<HttpConnection>>>
      idle_;
};

}  // namespace load
}  // namespace kvwire

#endif  // KVWIRE_LOAD_TESTS_HTTP_CLIENT_H_
