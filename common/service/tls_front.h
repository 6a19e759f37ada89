// TLS termination in front of a local plaintext HTTP server: the metrics
// port's HTTPS. civetweb's own TLS (Debian 12's libcivetweb 1.15 loading
// OpenSSL 3 at run time) crashes a worker on the first TLS connection, so
// the metrics server listens on loopback and TlsFront, with OpenSSL linked
// in, accepts TLS on the public address and relays each connection's
// plaintext to it.
//
// Bounded: at most `max_connections` relayed at once (more are closed at
// accept), a handshake must finish within `handshake_timeout`, and a
// connection idle for `idle_timeout` is closed, so idle or slow clients
// cannot hold the port.
#ifndef KVWIRE_COMMON_SERVICE_TLS_FRONT_H_
#define KVWIRE_COMMON_SERVICE_TLS_FRONT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvwire {

struct TlsFrontOptions {
  std::string listen_address;  // "host:port" (IPv4 or [IPv6]); port 0: any.
  int backend_port = 0;        // The plaintext server on 127.0.0.1.
  std::string cert_path;       // PEM certificate chain.
  std::string key_path;        // PEM private key.
  int max_connections = 16;
  absl::Duration handshake_timeout = absl::Seconds(2);
  absl::Duration idle_timeout = absl::Seconds(30);
};

class TlsFront {
 public:
  // Loads the certificate and key (INVALID_ARGUMENT naming the files),
  // binds the address (UNAVAILABLE when it cannot) and starts accepting.
  static absl::StatusOr<std::unique_ptr<TlsFront>> Start(
      const TlsFrontOptions& options);
  // Stops accepting, closes every relayed connection and joins the threads.
  ~TlsFront();
  TlsFront(const TlsFront&) = delete;
  TlsFront& operator=(const TlsFront&) = delete;

  int port() const;

 private:
  struct State;
  explicit TlsFront(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_TLS_FRONT_H_
