#include "load_tests/http_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace kvwire {
namespace load {
namespace {

// A response head larger than this is refused (a misdirected or hostile
// server must not make the generator buffer without bound).
constexpr size_t kMaxHeadBytes = 64 << 10;
constexpr size_t kMaxChunkLineBytes = 4096;

bool IsIpLiteral(const std::string& host) {
  in6_addr v6{};
  in_addr v4{};
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 ||
         inet_pton(AF_INET6, host.c_str(), &v6) == 1;
}

std::string OpenSslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown TLS error";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof(buf));
  return buf;
}

// Time left until `deadline` as a timeval for SO_RCVTIMEO / SO_SNDTIMEO
// (at least 1 ms: zero would mean "block forever").
timeval Remaining(absl::Time deadline) {
  absl::Duration left = deadline - absl::Now();
  if (left < absl::Milliseconds(1)) left = absl::Milliseconds(1);
  timeval tv{};
  tv.tv_sec = absl::ToInt64Seconds(left);
  tv.tv_usec = absl::ToInt64Microseconds(left - absl::Seconds(tv.tv_sec));
  return tv;
}

void SetSocketTimeouts(int fd, absl::Time deadline) {
  const timeval tv = Remaining(deadline);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// The error of a failed or timed-out socket operation.
absl::Status IoError(absl::string_view what, int err, absl::Time deadline,
                     const HttpCancel* cancel) {
  if (cancel != nullptr && cancel->cancelled()) {
    return absl::CancelledError(absl::StrCat(what, ": cancelled"));
  }
  if (err == EAGAIN || err == EWOULDBLOCK || absl::Now() >= deadline) {
    return absl::DeadlineExceededError(absl::StrCat(what, ": deadline"));
  }
  return absl::UnavailableError(absl::StrCat(what, ": ", strerror(err)));
}

}  // namespace

// A connected socket, with TLS on top when `ssl` is set. Closes both.
class HttpConnection {
 public:
  explicit HttpConnection(int fd) : fd_(fd) {}
  ~HttpConnection() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (fd_ >= 0) close(fd_);
  }
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  int fd() const { return fd_; }
  void set_ssl(SSL* ssl) { ssl_ = ssl; }
  // The call whose cancel may interrupt this connection's I/O (its errors
  // then read CANCELLED); null between calls.
  void set_cancel(HttpCancel* cancel) { cancel_ = cancel; }

  absl::Status WriteAll(absl::string_view data, absl::Time deadline) {
    while (!data.empty()) {
      SetSocketTimeouts(fd_, deadline);
      ssize_t n;
      if (ssl_ != nullptr) {
        n = SSL_write(ssl_, data.data(), static_cast<int>(data.size()));
        if (n <= 0) {
          const int err = errno;
          ERR_clear_error();
          return IoError("sending the request", err, deadline, cancel_);
        }
      } else {
        n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0) {
          if (errno == EINTR) continue;
          return IoError("sending the request", errno, deadline, cancel_);
        }
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  // Bytes read (0 at end of stream).
  absl::StatusOr<size_t> Read(char* buf, size_t size, absl::Time deadline) {
    while (true) {
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError("reading the response: deadline");
      }
      SetSocketTimeouts(fd_, deadline);
      if (ssl_ != nullptr) {
        const int n = SSL_read(ssl_, buf, static_cast<int>(size));
        if (n > 0) return static_cast<size_t>(n);
        const int err = errno;
        const int ssl_error = SSL_get_error(ssl_, n);
        ERR_clear_error();
        if (ssl_error == SSL_ERROR_ZERO_RETURN) return 0;
        // A peer that closes without close_notify: end of stream for a
        // read-to-close body, a cut-short body otherwise (the caller knows).
        if (ssl_error == SSL_ERROR_SYSCALL && err == 0) return 0;
        return IoError("reading the response", err, deadline, cancel_);
      }
      const ssize_t n = recv(fd_, buf, size, 0);
      if (n >= 0) {
        if (n == 0 && cancel_ != nullptr && cancel_->cancelled()) {
          return absl::CancelledError("reading the response: cancelled");
        }
        return static_cast<size_t>(n);
      }
      if (errno == EINTR) continue;
      return IoError("reading the response", errno, deadline, cancel_);
    }
  }

 private:
  int fd_;
  SSL* ssl_ = nullptr;
  HttpCancel* cancel_ = nullptr;
};

namespace {

// Connects to the first address of host:port that answers before
// `deadline`.
absl::StatusOr<int> ConnectTcp(const HttpUrl& url, absl::Time deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  const std::string port = absl::StrCat(url.port);
  const int rc = getaddrinfo(url.host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve '", url.host, "': ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> addresses(result,
                                                           freeaddrinfo);
  std::string last_error = "no address";
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    const int fd =
        socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = strerror(errno);
      continue;
    }
    // Non-blocking connect so that the deadline bounds it too.
    const int flags = fcntl(fd, F_GETFL, 0);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    int err = 0;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        const int64_t ms = std::max<int64_t>(
            1, absl::ToInt64Milliseconds(deadline - absl::Now()));
        const int ready = poll(
            &p, 1, static_cast<int>(std::min<int64_t>(ms, 24 * 3600 * 1000)));
        if (ready <= 0) {
          err = ready == 0 ? ETIMEDOUT : errno;
        } else {
          socklen_t len = sizeof(err);
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        }
      }
    }
    if (err != 0) {
      last_error = strerror(err);
      close(fd);
      if (absl::Now() >= deadline) break;
      continue;
    }
    fcntl(fd, F_SETFL, flags);
    // Small request, latency-sensitive: no Nagle delay.
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
  }
  return absl::UnavailableError(
      absl::StrCat("cannot connect to ", url.HostPort(), ": ", last_error));
}

}  // namespace

std::string HttpUrl::HostPort() const {
  return absl::StrContains(host, ':') ? absl::StrCat("[", host, "]:", port)
                                      : absl::StrCat(host, ":", port);
}

absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view url) {
  HttpUrl out;
  absl::string_view rest = url;
  if (absl::ConsumePrefix(&rest, "https://")) {
    out.https = true;
    out.port = 443;
  } else if (absl::ConsumePrefix(&rest, "http://")) {
    out.port = 80;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("'", url, "' is not an http:// or https:// URL"));
  }
  const size_t slash = rest.find('/');
  absl::string_view authority = rest.substr(0, slash);
  out.path =
      slash == absl::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (absl::StrContains(authority, '@')) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", url,
                     "': credentials in URLs are not supported "
                     "(use --auth_token_file)"));
  }
  absl::string_view port_text;
  if (absl::StartsWith(authority, "[")) {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad URL '", url, "'"));
    }
    out.host = std::string(authority.substr(1, close - 1));
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (!absl::ConsumePrefix(&after, ":")) {
        return absl::InvalidArgumentError(absl::StrCat("bad URL '", url, "'"));
      }
      port_text = after;
    }
  } else {
    const size_t colon = authority.rfind(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != absl::string_view::npos) {
      port_text = authority.substr(colon + 1);
    }
  }
  if (out.host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no host in URL '", url, "'"));
  }
  if (!port_text.empty() || absl::EndsWith(authority, ":")) {
    int port = 0;
    if (!absl::SimpleAtoi(port_text, &port) || port <= 0 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad port in URL '", url, "'"));
    }
    out.port = port;
  }
  return out;
}

std::string HttpResponseHead::Header(absl::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return value;
  }
  return "";
}

absl::StatusOr<HttpResponseHead> ParseResponseHead(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, "\r\n");
  if (lines.empty()) return absl::InvalidArgumentError("empty response");
  // "HTTP/1.1 200 OK" (the reason phrase may be empty).
  absl::string_view status_line = lines[0];
  HttpResponseHead head;
  if (!absl::ConsumePrefix(&status_line, "HTTP/1.") || status_line.size() < 5 ||
      status_line[1] != ' ' || !absl::ascii_isdigit(status_line[0])) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not an HTTP/1.x response: '", lines[0].substr(0, 80), "'"));
  }
  head.minor_version = status_line[0] - '0';
  if (!absl::SimpleAtoi(status_line.substr(2, 3), &head.status) ||
      head.status < 100 || head.status > 599) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad status line '", lines[0].substr(0, 80), "'"));
  }
  head.reason = std::string(absl::StripAsciiWhitespace(
      status_line.substr(std::min<size_t>(5, status_line.size()))));
  for (size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos || colon == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad header line '", lines[i].substr(0, 80), "'"));
    }
    head.headers.emplace_back(
        absl::AsciiStrToLower(lines[i].substr(0, colon)),
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1))));
  }
  return head;
}

absl::Status ChunkedDecoder::Feed(absl::string_view bytes, std::string* out,
                                  size_t* consumed) {
  const size_t total = bytes.size();
  // On every return: what was read of `bytes`.
  absl::Cleanup count = [&] {
    if (consumed != nullptr) *consumed = total - bytes.size();
  };
  while (!bytes.empty() && state_ != State::kDone) {
    switch (state_) {
      case State::kSize:
      case State::kTrailer: {
        const size_t lf = bytes.find('\n');
        const absl::string_view part = bytes.substr(0, lf);
        if (line_.size() + part.size() > kMaxChunkLineBytes) {
          return absl::InvalidArgumentError("chunk size line too long");
        }
        line_.append(part.data(), part.size());
        if (lf == absl::string_view::npos) return absl::OkStatus();
        bytes.remove_prefix(lf + 1);
        absl::string_view line = absl::StripSuffix(line_, "\r");
        if (state_ == State::kTrailer) {
          // Trailer fields end with an empty line.
          if (line.empty()) state_ = State::kDone;
          line_.clear();
          break;
        }
        // "1a;ext=value": the size is the hex digits before any extension.
        absl::string_view hex =
            absl::StripAsciiWhitespace(line.substr(0, line.find(';')));
        uint64_t size = 0;
        if (hex.empty() || hex.size() > 15) {
          return absl::InvalidArgumentError(
              absl::StrCat("bad chunk size line '", line.substr(0, 40), "'"));
        }
        for (char c : hex) {
          int digit;
          if (c >= '0' && c <= '9') {
            digit = c - '0';
          } else if (c >= 'a' && c <= 'f') {
            digit = c - 'a' + 10;
          } else if (c >= 'A' && c <= 'F') {
            digit = c - 'A' + 10;
          } else {
            return absl::InvalidArgumentError(
                absl::StrCat("bad chunk size '", hex, "'"));
          }
          size = size * 16 + static_cast<uint64_t>(digit);
        }
        line_.clear();
        remaining_ = size;
        state_ = size == 0 ? State::kTrailer : State::kData;
        break;
      }
      case State::kData: {
        const size_t n =
            static_cast<size_t>(std::min<uint64_t>(remaining_, bytes.size()));
        out->append(bytes.data(), n);
        bytes.remove_prefix(n);
        remaining_ -= n;
        if (remaining_ == 0) state_ = State::kDataEnd;
        break;
      }
      case State::kDataEnd: {
        // The CRLF after a chunk's data (it may arrive split).
        const char c = bytes[0];
        bytes.remove_prefix(1);
        if (c == '\r' && line_.empty()) {
          line_ = "\r";
        } else if (c == '\n') {
          line_.clear();
          state_ = State::kSize;
        } else {
          return absl::InvalidArgumentError("missing CRLF after chunk data");
        }
        break;
      }
      case State::kDone:
        break;
    }
  }
  return absl::OkStatus();
}

bool HttpCancel::Attach(int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancelled_) return false;
  fd_ = fd;
  return true;
}

void HttpCancel::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  fd_ = -1;
}

void HttpCancel::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  // Wakes a blocked read or write; the owner still closes the descriptor.
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
}

bool HttpCancel::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

struct HttpClient::TlsContext {
  SSL_CTX* ctx = nullptr;
  ~TlsContext() {
    if (ctx != nullptr) SSL_CTX_free(ctx);
  }
};

HttpClient::HttpClient(ClientSecurityOptions security, bool https,
                       bool keep_alive, std::unique_ptr<TlsContext> tls)
    : security_(std::move(security)),
      https_(https),
      keep_alive_(keep_alive),
      tls_(std::move(tls)) {}

HttpClient::~HttpClient() = default;

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(
    const ClientSecurityOptions& security, bool https, bool keep_alive) {
  const bool has_files = !security.tls_ca_path.empty() ||
                         !security.tls_cert_path.empty() ||
                         !security.tls_key_path.empty();
  if (!https) {
    if (has_files) {
      return absl::InvalidArgumentError(
          "TLS files given for an http:// URL (use https://)");
    }
    if (!security.allow_insecure) {
      return absl::FailedPreconditionError(
          "an http:// URL is plaintext: pass --allow_insecure, or use "
          "https://");
    }
    return std::unique_ptr<HttpClient>(
        new HttpClient(security, false, keep_alive, {}));
  }
  if (security.tls_cert_path.empty() != security.tls_key_path.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key go together (mutual TLS)");
  }
  auto tls = std::make_unique<TlsContext>();
  tls->ctx = SSL_CTX_new(TLS_client_method());
  if (tls->ctx == nullptr) return absl::InternalError(OpenSslError());
  SSL_CTX_set_min_proto_version(tls->ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(tls->ctx, SSL_VERIFY_PEER, nullptr);
  if (!security.tls_ca_path.empty()) {
    if (SSL_CTX_load_verify_locations(tls->ctx, security.tls_ca_path.c_str(),
                                      nullptr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("cannot load CA bundle ",
                                                     security.tls_ca_path, ": ",
                                                     OpenSslError()));
    }
  } else if (SSL_CTX_set_default_verify_paths(tls->ctx) != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load the system CA roots: ", OpenSslError()));
  }
  if (!security.tls_cert_path.empty()) {
    if (SSL_CTX_use_certificate_chain_file(
            tls->ctx, security.tls_cert_path.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(tls->ctx, security.tls_key_path.c_str(),
                                    SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(tls->ctx) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot use client certificate ", security.tls_cert_path,
          " with key ", security.tls_key_path, ": ", OpenSslError()));
    }
  }
  static const unsigned char kAlpn[] = {8,   'h', 't', 't', 'p',
                                        '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(tls->ctx, kAlpn, sizeof(kAlpn));
  return std::unique_ptr<HttpClient>(
      new HttpClient(security, true, keep_alive, std::move(tls)));
}

std::unique_ptr<HttpConnection> HttpClient::TakeIdle(
    const std::string& key) const {
  std::lock_guard<std::mutex> lock(pool_mu_);
  auto it = idle_.find(key);
  if (it == idle_.end() || it->second.empty()) return nullptr;
  std::unique_ptr<HttpConnection> connection = std::move(it->second.back());
  it->second.pop_back();
  return connection;
}

void HttpClient::PutIdle(const std::string& key,
                         std::unique_ptr<HttpConnection> connection) const {
  std::lock_guard<std::mutex> lock(pool_mu_);
  std::vector<std::unique_ptr<HttpConnection>>& idle = idle_[key];
  // More idle connections than this are closed: the most calls in flight
  // kvwire-load allows (kMaxInFlight) is what could come back at once.
  if (idle.size() < 4096) idle.push_back(std::move(connection));
}

absl::StatusOr<std::unique_ptr<HttpConnection>> HttpClient::Connect(
    const HttpUrl& url, absl::Time deadline, HttpCancel* cancel) const {
  auto fd = ConnectTcp(url, deadline);
  if (!fd.ok()) return fd.status();
  auto connection = std::make_unique<HttpConnection>(*fd);
  if (!https_) return connection;
  // The handshake honours cancel too.
  if (cancel != nullptr && !cancel->Attach(*fd)) {
    return absl::CancelledError("cancelled before sending");
  }
  absl::Cleanup detach = [cancel] {
    if (cancel != nullptr) cancel->Detach();
  };
  SSL* ssl = SSL_new(tls_->ctx);
  if (ssl == nullptr) return absl::InternalError(OpenSslError());
  connection->set_ssl(ssl);
  SSL_set_fd(ssl, *fd);
  const std::string name =
      security_.tls_server_name.empty() ? url.host : security_.tls_server_name;
  if (IsIpLiteral(name)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str());
  } else {
    // SNI, and the name the certificate must carry.
    SSL_set_tlsext_host_name(ssl, name.c_str());
    SSL_set1_host(ssl, name.c_str());
  }
  SetSocketTimeouts(*fd, deadline);
  if (SSL_connect(ssl) != 1) {
    const int err = errno;
    const long verify = SSL_get_verify_result(ssl);
    std::string detail = OpenSslError();
    if (verify != X509_V_OK) {
      detail = X509_verify_cert_error_string(verify);
    }
    if (cancel != nullptr && cancel->cancelled()) {
      return absl::CancelledError("TLS handshake: cancelled");
    }
    if (absl::Now() >= deadline || err == EAGAIN) {
      return absl::DeadlineExceededError("TLS handshake: deadline");
    }
    return absl::UnavailableError(
        absl::StrCat("TLS handshake with ", url.HostPort(), ": ", detail));
  }
  return connection;
}

absl::StatusOr<HttpResponseHead> HttpClient::Exchange(
    HttpConnection& connection, const HttpRequest& request, absl::Time deadline,
    const std::function<void(const HttpResponseHead&)>& on_head,
    const HttpBodyFn& on_body, ExchangeInfo* info) const {
  const HttpUrl& url = request.url;
  const bool has_body = request.method != "GET";
  std::string wire = absl::StrCat(
      request.method, " ", url.path, " HTTP/1.1\r\nHost: ",
      (url.port == (url.https ? 443 : 80))
          ? (absl::StrContains(url.host, ':') ? absl::StrCat("[", url.host, "]")
                                              : url.host)
          : url.HostPort(),
      "\r\nUser-Agent: kvwire-load\r\n",
      "Accept: text/event-stream, application/json\r\n",
      has_body
          ? absl::StrCat("Content-Type: ", request.content_type,
                         "\r\nContent-Length: ", request.body.size(), "\r\n")
          : std::string(),
      keep_alive_ ? "" : "Connection: close\r\n");
  for (const auto& [name, value] : request.headers) {
    absl::StrAppend(&wire, name, ": ", value, "\r\n");
  }
  absl::StrAppend(&wire, "\r\n", has_body ? request.body : std::string());
  info->nothing_received = true;
  if (absl::Status st = connection.WriteAll(wire, deadline); !st.ok()) {
    return st;
  }

  // The head: everything up to the first blank line.
  std::string buffer;
  char chunk[16 << 10];
  size_t head_end = std::string::npos;
  while (head_end == std::string::npos) {
    auto n = connection.Read(chunk, sizeof(chunk), deadline);
    if (!n.ok()) return n.status();
    if (*n == 0) {
      return absl::UnavailableError(
          buffer.empty() ? "the server closed the connection without a "
                           "response"
                         : "the response ended inside its head");
    }
    info->nothing_received = false;
    buffer.append(chunk, *n);
    head_end = buffer.find("\r\n\r\n");
    if (head_end == std::string::npos && buffer.size() > kMaxHeadBytes) {
      return absl::InvalidArgumentError("response head over 64 KiB");
    }
  }
  auto head = ParseResponseHead(absl::string_view(buffer).substr(0, head_end));
  if (!head.ok()) return head.status();
  if (on_head) on_head(*head);

  const bool chunked = absl::StrContains(
      absl::AsciiStrToLower(head->Header("transfer-encoding")), "chunked");
  int64_t content_length = -1;
  if (!chunked && !head->Header("content-length").empty() &&
      !absl::SimpleAtoi(head->Header("content-length"), &content_length)) {
    return absl::InvalidArgumentError("bad Content-Length");
  }
  ChunkedDecoder decoder;
  std::string decoded;
  int64_t body_read = 0;
  // Bytes after the body's end: a protocol error, so the connection is not
  // reused (no pipelining here).
  bool trailing_bytes = false;
  // Hands `bytes` to on_body; true once the body is complete.
  auto consume = [&](absl::string_view bytes) -> absl::StatusOr<bool> {
    if (chunked) {
      decoded.clear();
      size_t used = 0;
      if (absl::Status st = decoder.Feed(bytes, &decoded, &used); !st.ok()) {
        return st;
      }
      if (used < bytes.size()) trailing_bytes = true;
      if (!decoded.empty()) {
        if (absl::Status st = on_body(decoded); !st.ok()) return st;
      }
      return decoder.finished();
    }
    if (content_length >= 0) {
      const int64_t left = content_length - body_read;
      if (static_cast<int64_t>(bytes.size()) > left) trailing_bytes = true;
      bytes = bytes.substr(
          0, static_cast<size_t>(std::min<int64_t>(bytes.size(), left)));
    }
    body_read += static_cast<int64_t>(bytes.size());
    if (!bytes.empty()) {
      if (absl::Status st = on_body(bytes); !st.ok()) return st;
    }
    return content_length >= 0 && body_read >= content_length;
  };
  bool framed = true;  // The body's end came from its framing, not a close.
  auto complete = consume(absl::string_view(buffer).substr(head_end + 4));
  if (!complete.ok()) return complete.status();
  while (!*complete) {
    auto n = connection.Read(chunk, sizeof(chunk), deadline);
    if (!n.ok()) return n.status();
    if (*n == 0) {
      if (!chunked && content_length < 0) {  // Read-to-close body.
        framed = false;
        break;
      }
      return absl::UnavailableError("the response body was cut short");
    }
    complete = consume(absl::string_view(chunk, *n));
    if (!complete.ok()) return complete.status();
  }
  const std::string connection_header =
      absl::AsciiStrToLower(head->Header("connection"));
  const bool server_keeps =
      head->minor_version >= 1
          ? !absl::StrContains(connection_header, "close")
          : absl::StrContains(connection_header, "keep-alive");
  info->reusable = keep_alive_ && framed && !trailing_bytes && server_keeps;
  return head;
}

absl::StatusOr<HttpResponseHead> HttpClient::Send(
    const HttpRequest& request, absl::Time deadline,
    const std::function<void(const HttpResponseHead&)>& on_head,
    const HttpBodyFn& on_body, HttpCancel* cancel) const {
  const HttpUrl& url = request.url;
  if (url.https != https_) {
    return absl::InvalidArgumentError(
        "the URL's scheme differs from the client's");
  }
  const std::string key = url.HostPort();
  // A pooled connection the server has closed meanwhile (its idle timeout)
  // fails before any response byte: then, once, a new connection.
  for (int attempt = 0;; ++attempt) {
    std::unique_ptr<HttpConnection> connection =
        keep_alive_ && attempt == 0 ? TakeIdle(key) : nullptr;
    const bool reused = connection != nullptr;
    if (connection == nullptr) {
      auto fresh = Connect(url, deadline, cancel);
      if (!fresh.ok()) return fresh.status();
      connection = *std::move(fresh);
    }
    if (cancel != nullptr && !cancel->Attach(connection->fd())) {
      return absl::CancelledError("cancelled before sending");
    }
    connection->set_cancel(cancel);
    ExchangeInfo info;
    absl::StatusOr<HttpResponseHead> head =
        Exchange(*connection, request, deadline, on_head, on_body, &info);
    // Before the descriptor may be closed or handed to another call, so
    // that a late Cancel never shuts down a descriptor it does not own.
    if (cancel != nullptr) cancel->Detach();
    connection->set_cancel(nullptr);
    if (!head.ok() && reused && info.nothing_received &&
        absl::IsUnavailable(head.status()) && absl::Now() < deadline) {
      continue;
    }
    if (head.ok() && info.reusable) PutIdle(key, std::move(connection));
    return head;
  }
}

}  // namespace load
}  // namespace kvwire
