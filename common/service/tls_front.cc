// TLS termination with OpenSSL, relaying plaintext to a loopback server.
#include "common/service/tls_front.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace kvwire {

struct TlsFront::State {
  TlsFrontOptions options;
  SSL_CTX* ctx = nullptr;
  int listen_fd = -1;
  int port = 0;
  std::thread acceptor;
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::set<int> clients;  // Relayed connections' sockets.
  int active = 0;         // Relay threads running.

  ~State() {
    if (listen_fd >= 0) ::close(listen_fd);
    if (ctx != nullptr) SSL_CTX_free(ctx);
  }
  void AcceptLoop();
  void Relay(int client);
};

namespace {

void SetTimeouts(int fd, absl::Duration timeout) {
  const timeval tv = absl::ToTimeval(timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

int ConnectLoopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string OpenSslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown OpenSSL error";
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  return text;
}

}  // namespace

void TlsFront::State::AcceptLoop() {
  while (true) {
    const int client = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    std::unique_lock<std::mutex> lock(mu);
    if (stopping) {
      if (client >= 0) ::close(client);
      return;
    }
    if (client < 0) {
      lock.unlock();
      ::usleep(10000);  // E.g. out of descriptors: do not spin.
      continue;
    }
    if (active >= options.max_connections) {
      ::close(client);  // Over the bound: refuse rather than queue.
      continue;
    }
    ++active;
    clients.insert(client);
    lock.unlock();
    std::thread([this, client] { Relay(client); }).detach();
  }
}

void TlsFront::State::Relay(int client) {
  SetTimeouts(client, options.handshake_timeout);
  SSL* ssl = SSL_new(ctx);
  int backend = -1;
  if (ssl != nullptr && SSL_set_fd(ssl, client) == 1 && SSL_accept(ssl) == 1) {
    // Reads and writes that stall this long end the connection.
    SetTimeouts(client, options.idle_timeout);
    backend = ConnectLoopback(options.backend_port);
  }
  if (backend >= 0) {
    SetTimeouts(backend, options.idle_timeout);
    char buffer[16384];
    const int idle_ms =
        static_cast<int>(absl::ToInt64Milliseconds(options.idle_timeout));
    bool open = true;
    while (open) {
      pollfd fds[2] = {{client, POLLIN, 0}, {backend, POLLIN, 0}};
      // Decrypted bytes OpenSSL already holds do not show up in poll().
      if (SSL_pending(ssl) == 0 && ::poll(fds, 2, idle_ms) <= 0) break;
      if (SSL_pending(ssl) > 0 || (fds[0].revents & (POLLIN | POLLHUP))) {
        const int n = SSL_read(ssl, buffer, sizeof(buffer));
        if (n <= 0) {
          const int error = SSL_get_error(ssl, n);
          open = error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE;
        } else {
          open = WriteAll(backend, buffer, static_cast<size_t>(n));
        }
      }
      if (open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
        const ssize_t n = ::read(backend, buffer, sizeof(buffer));
        open = n > 0 && SSL_write(ssl, buffer, static_cast<int>(n)) == n;
      }
    }
    SSL_shutdown(ssl);
    ::close(backend);
  }
  if (ssl != nullptr) SSL_free(ssl);
  ERR_clear_error();
  std::lock_guard<std::mutex> lock(mu);
  clients.erase(client);
  ::close(client);
  --active;
  cv.notify_all();
}

absl::StatusOr<std::unique_ptr<TlsFront>> TlsFront::Start(
    const TlsFrontOptions& options) {
  auto state = std::make_unique<State>();
  state->options = options;
  state->ctx = SSL_CTX_new(TLS_server_method());
  if (state->ctx == nullptr) return absl::InternalError(OpenSslError());
  SSL_CTX_set_min_proto_version(state->ctx, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(state->ctx,
                                         options.cert_path.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot use certificate ", options.cert_path, ": ", OpenSslError()));
  }
  if (SSL_CTX_use_PrivateKey_file(state->ctx, options.key_path.c_str(),
                                  SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(state->ctx) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use private key ", options.key_path, " with ",
                     options.cert_path, ": ", OpenSslError()));
  }

  // "host:port", the host possibly in brackets (IPv6).
  const size_t colon = options.listen_address.rfind(':');
  int port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(options.listen_address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad address '", options.listen_address, "' (host:port expected)"));
  }
  std::string host = options.listen_address.substr(0, colon);
  host = std::string(absl::StripSuffix(absl::StripPrefix(host, "["), "]"));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* resolved = nullptr;
  if (::getaddrinfo(host.empty() ? nullptr : host.c_str(),
                    std::to_string(port).c_str(), &hints, &resolved) != 0 ||
      resolved == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve '", host, "'"));
  }
  const int fd =
      ::socket(resolved->ai_family, resolved->ai_socktype | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool bound = fd >= 0 &&
                     ::bind(fd, resolved->ai_addr, resolved->ai_addrlen) == 0 &&
                     ::listen(fd, 64) == 0;
  const int bind_errno = errno;
  ::freeaddrinfo(resolved);
  if (!bound) {
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot listen on ",
                                               options.listen_address, ": ",
                                               std::strerror(bind_errno)));
  }
  state->listen_fd = fd;
  sockaddr_storage local{};
  socklen_t length = sizeof(local);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length);
  state->port = ntohs(local.ss_family == AF_INET6
                          ? reinterpret_cast<sockaddr_in6*>(&local)->sin6_port
                          : reinterpret_cast<sockaddr_in*>(&local)->sin_port);
  State* raw = state.get();
  state->acceptor = std::thread([raw] { raw->AcceptLoop(); });
  return std::unique_ptr<TlsFront>(new TlsFront(std::move(state)));
}

TlsFront::TlsFront(std::unique_ptr<State> state) : state_(std::move(state)) {}

TlsFront::~TlsFront() {
  State& s = *state_;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.stopping = true;
    // Wakes the relays' poll() and reads; they close their own sockets.
    for (int fd : s.clients) ::shutdown(fd, SHUT_RDWR);
  }
  ::shutdown(s.listen_fd, SHUT_RDWR);  // Wakes accept().
  s.acceptor.join();
  std::unique_lock<std::mutex> lock(s.mu);
  s.cv.wait(lock, [&s] { return s.active == 0; });
}

int TlsFront::port() const { return state_->port; }

}  // namespace kvwire
