// Readiness of a kvwire process, as both health interfaces report it: the
// HTTP probes on the metrics port (/healthz: the process answers; /readyz:
// it is serving) and the gRPC health service of its port
// (grpc.health.v1, per service). One Readiness holds the named conditions
// that must all hold for the process to be ready (models loaded, gRPC port
// open and not draining, the sharer reachable where the receiver needs it)
// and tells a listener when the verdict changes, so that the gRPC health
// status follows /readyz. PeerHealthMonitor keeps one such condition up to
// date by asking a peer's gRPC health service at an interval.
#ifndef KVWIRE_COMMON_SERVICE_HEALTH_H_
#define KVWIRE_COMMON_SERVICE_HEALTH_H_

#include <grpcpp/channel.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace kvwire {

// Condition names used by the servers (the text of /readyz names them).
inline constexpr absl::string_view kReadyModels = "models";
inline constexpr absl::string_view kReadyGrpc = "grpc";
inline constexpr absl::string_view kReadySharer = "sharer";

// A set of named conditions; ready when every one is OK. Thread-safe.
class Readiness {
 public:
  // Called with the new verdict each time it changes (from the thread that
  // changed a condition, outside the lock).
  using Listener = std::function<void(bool ready)>;

  Readiness() = default;
  Readiness(const Readiness&) = delete;
  Readiness& operator=(const Readiness&) = delete;

  // Sets (or replaces) `condition`: OK when it holds, otherwise a status
  // whose message says why not (shown on /readyz).
  void Set(absl::string_view condition, const absl::Status& status);

  // OK when every condition holds (also with none); otherwise UNAVAILABLE
  // naming each failing condition and its reason, e.g.
  // "not ready: sharer: UNAVAILABLE: connection refused".
  absl::Status Check() const;
  bool ready() const { return Check().ok(); }

  // Replaces the listener; it is called once at once with the current
  // verdict. Pass nullptr to stop notifications (before whatever it calls
  // goes away).
  void SetListener(Listener listener);

 private:
  mutable std::mutex mu_;
  std::map<std::string, absl::Status, std::less<>> conditions_;
  bool last_ready_ = true;
  std::shared_ptr<Listener> listener_;
};

// Calls `method` ("/package.Service/Method") with `request` as the raw
// request bytes: the raw response bytes, or the call's status. Also reaches
// server-streaming methods that end without sending a message (errors).
absl::StatusOr<std::string> RawUnaryCall(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
    const std::string& request, absl::Duration timeout = absl::Seconds(10));

// grpc.health.v1.Health/Check of `service` ("" for the server overall) on
// `channel`: OK when SERVING; UNAVAILABLE for NOT_SERVING or an unknown
// service; the call's own status otherwise (UNAVAILABLE when nothing
// listens, DEADLINE_EXCEEDED after `timeout`). Health calls need no bearer
// token and are not counted in kvwire_requests_total.
absl::Status CheckPeerServing(const std::shared_ptr<grpc::Channel>& channel,
                              const std::string& service,
                              absl::Duration timeout);

// Asks a peer's gRPC health service every `interval` (each call bounded by
// `timeout`) and writes the answer into `readiness` as `condition`. The
// first check runs before Start returns, so the condition is known as soon
// as the monitor exists. Owns its thread; the destructor stops it.
class PeerHealthMonitor {
 public:
  struct Options {
    std::shared_ptr<grpc::Channel> channel;
    std::string service;     // Health service name of the peer.
    std::string condition;   // Readiness condition to keep up to date.
    std::string peer_label;  // For messages, e.g. the target.
    absl::Duration interval = absl::Seconds(2);
    absl::Duration timeout = absl::Seconds(1);
  };
  // `readiness` (not owned) must outlive the monitor.
  static std::unique_ptr<PeerHealthMonitor> Start(const Options& options,
                                                  Readiness* readiness);
  ~PeerHealthMonitor();
  PeerHealthMonitor(const PeerHealthMonitor&) = delete;
  PeerHealthMonitor& operator=(const PeerHealthMonitor&) = delete;

 private:
  PeerHealthMonitor() = default;
  void CheckOnce();
  void Loop();

  Options options_;
  Readiness* readiness_ = nullptr;
  std::optional<bool> last_ok_;  // The previous check's verdict, for logs.
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_HEALTH_H_
