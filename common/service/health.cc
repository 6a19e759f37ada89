// Readiness conditions and the peer health monitor.
#include "common/service/health.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <future>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/service/grpc_status.h"
#include "common/status_macros.h"
#include "glog/logging.h"

namespace kvwire {

void Readiness::Set(absl::string_view condition, const absl::Status& status) {
  std::shared_ptr<Listener> listener;
  bool ready = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = conditions_.find(condition);
    if (it == conditions_.end()) {
      conditions_.emplace(std::string(condition), status);
    } else {
      it->second = status;
    }
    ready = true;
    for (const auto& [name, st] : conditions_) ready = ready && st.ok();
    if (ready == last_ready_) return;
    last_ready_ = ready;
    listener = listener_;
  }
  if (listener != nullptr && *listener) (*listener)(ready);
}

absl::Status Readiness::Check() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> failing;
  for (const auto& [name, st] : conditions_) {
    if (!st.ok()) {
      failing.push_back(absl::StrCat(name, ": ", StatusCodeName(st.code()),
                                     ": ", st.message()));
    }
  }
  if (failing.empty()) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("not ready: ", absl::StrJoin(failing, "; ")));
}

void Readiness::SetListener(Listener listener) {
  std::shared_ptr<Listener> current;
  bool ready = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    listener_ =
        listener ? std::make_shared<Listener>(std::move(listener)) : nullptr;
    current = listener_;
    ready = last_ready_;
  }
  if (current != nullptr) (*current)(ready);
}

absl::StatusOr<std::string> RawUnaryCall(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
    const std::string& request, absl::Duration timeout) {
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::GenericStub stub(channel);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request_buffer,
                 &response_buffer,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  std::vector<grpc::Slice> slices;
  if (!response_buffer.Dump(&slices).ok()) {
    return absl::InternalError(absl::StrCat(method, ": response unreadable"));
  }
  std::string response;
  for (const grpc::Slice& s : slices) {
    response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return response;
}

absl::Status CheckPeerServing(const std::shared_ptr<grpc::Channel>& channel,
                              const std::string& service,
                              absl::Duration timeout) {
  // grpc.health.v1.HealthCheckRequest{string service = 1} encoded by hand:
  // Debian's gRPC ships no generated health stubs.
  std::string request;
  if (!service.empty()) {
    if (service.size() >= 128) {
      return absl::InvalidArgumentError("health service name too long");
    }
    request.push_back(0x0A);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  ASSIGN_OR_RETURN(
      std::string response,
      RawUnaryCall(channel, "/grpc.health.v1.Health/Check", request, timeout));
  // HealthCheckResponse{ServingStatus status = 1}: 1 is SERVING.
  if (response.size() >= 2 && response[0] == 0x08 && response[1] == 1) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat(
      service.empty() ? std::string("server") : service, " not serving"));
}

std::unique_ptr<PeerHealthMonitor> PeerHealthMonitor::Start(
    const Options& options, Readiness* readiness) {
  auto monitor = std::unique_ptr<PeerHealthMonitor>(new PeerHealthMonitor());
  monitor->options_ = options;
  monitor->readiness_ = readiness;
  monitor->CheckOnce();
  monitor->thread_ = std::thread([m = monitor.get()] { m->Loop(); });
  return monitor;
}

PeerHealthMonitor::~PeerHealthMonitor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PeerHealthMonitor::CheckOnce() {
  const absl::Status st =
      CheckPeerServing(options_.channel, options_.service, options_.timeout);
  readiness_->Set(
      options_.condition,
      st.ok() ? st
              : absl::Status(st.code(), absl::StrCat(options_.peer_label, ": ",
                                                     st.message())));
  // Log the changes only: the check runs every couple of seconds.
  if (!last_ok_.has_value() || *last_ok_ != st.ok()) {
    LOG(INFO) << "readiness: " << options_.condition << " "
              << options_.peer_label << " "
              << (st.ok() ? std::string("serving")
                          : absl::StrCat("not serving (", st.ToString(), ")"));
    last_ok_ = st.ok();
  }
}

void PeerHealthMonitor::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    wake_.wait_for(lock, absl::ToChronoNanoseconds(options_.interval),
                   [this] { return stop_; });
    if (stop_) break;
    lock.unlock();
    CheckOnce();
    lock.lock();
  }
}

}  // namespace kvwire
