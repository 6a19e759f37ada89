// kvwire.v1.Receiver on gRPC's callback API.
//
// One call is a reactor (owned by gRPC until OnDone) plus an AnswerCall
// shared by the reactor, the WorkQueue and the worker running it. The
// reactor is the AnswerCall's Transport: the worker hands it token events
// and, exactly once, the final status and response; the reactor calls
// Finish only after that, so the worker never touches a deleted reactor.
#include "receiver_service/receiver_service.h"

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log_text.h"
#include "common/service/grpc_status.h"
#include "common/service/raw_messages.h"
#include "glog/logging.h"
#include "receiver_service/live_record.h"

namespace kvwire {
namespace {

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

}  // namespace

class AnswerCall final : public WorkItem {
 public:
  using Transport = AnswerTransport;

  AnswerCall(ReceiverService* service, v1::AnswerRequest request,
             const AnswerCallOptions& options, Transport* transport)
      : service_(service),
        transport_(transport),
        request_(std::move(request)),
        streaming_(options.streaming),
        method_(options.method),
        rpc_(*options.rpc),
        control_(options.deadline),
        peer_(options.peer),
        call_id_(service->next_call_id_.fetch_add(1)),
        start_(std::chrono::steady_clock::now()) {
    rpc_.Started();
  }

  // The options of a gRPC call.
  static AnswerCallOptions GrpcOptions(
      ReceiverService* service, const grpc::CallbackServerContext& context,
      bool streaming) {
    AnswerCallOptions options;
    options.deadline = DeadlineOf(context);
    options.peer = context.peer();
    options.method = streaming ? "AnswerStream" : "Answer";
    options.streaming = streaming;
    options.rpc = streaming ? &service->stream_rpc_ : &service->answer_rpc_;
    return options;
  }

  // The token first, then whether the request's bytes parsed, so that
  // unauthenticated callers learn nothing.
  static absl::Status AuthenticateThenParsed(
      const ReceiverService& service,
      const grpc::CallbackServerContext& context, absl::Status parsed) {
    absl::Status status = service.auth_->Check(context);
    if (status.ok()) status = std::move(parsed);
    return status;
  }

  // Validates and admits the call after the front end's own checks
  // (`checked`); completes it at once on any error. Called once, right
  // after construction.
  void Begin(std::shared_ptr<AnswerCall> self, absl::Status checked) {
    absl::Status status = std::move(checked);
    if (status.ok()) status = service_->runner_->Validate(request_);
    if (status.ok()) {
      status = service_->queue_->Submit(std::move(self), control_.deadline());
    }
    VLOG(1) << "answer call=" << call_id_
            << " request_id=" << ForLog(request_.request_id())
            << " peer=" << peer_ << " admitted=" << status.ok();
    if (!status.ok()) Complete(std::move(status), v1::AnswerResponse());
  }

  // ----- WorkItem
  void Run(absl::Duration queue_wait) override {
    queue_wait_ = queue_wait;
    TokenEventSink on_token;
    if (streaming_) {
      on_token = [this](const v1::TokenEvent& e) { transport_->Token(e); };
    }
    auto response =
        service_->runner_->Run(request_, control_, start_, on_token);
    if (response.ok()) {
      Complete(absl::OkStatus(), *std::move(response));
    } else {
      Complete(response.status(), v1::AnswerResponse());
    }
  }

  void Drop(absl::Status why) override {
    const absl::Status cancelled = control_.Check();
    Complete(cancelled.ok() ? std::move(why) : cancelled, v1::AnswerResponse());
  }

  // ----- Reactions
  void OnCancel() {
    control_.Cancel(CancellationCause(control_.deadline()));
    // Still queued: leave the queue now (Drop completes the call).
    service_->queue_->Cancel(this);
  }

  void OnDone() {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_)
            .count();
    std::lock_guard<std::mutex> lock(mu_);
    rpc_.Finished(final_status_.code(), seconds);
    service_->live_.Record(MakeLiveRequest(request_, summary_, final_status_,
                                           streaming_, queue_wait_, seconds,
                                           absl::Now()));
    const v1::TransferReport& t = summary_.transfer();
    LOG(INFO) << "answer call=" << call_id_ << " method=" << method_
              << " request_id=" << ForLog(request_.request_id())
              << " peer=" << peer_
              << " status=" << StatusCodeName(final_status_.code())
              << (final_status_.ok()
                      ? ""
                      : absl::StrCat(" message=\"",
                                     ForLog(final_status_.message(), 512),
                                     "\""))
              << " mode=" << AnswerModeName(summary_.mode())
              << " fell_back=" << summary_.fell_back()
              << " tokens=" << summary_.token_ids_size()
              << " prompt_tokens=" << t.prompt_tokens()
              << " tokens_sent=" << t.tokens_sent()
              << " wire_bytes=" << t.wire_bytes()
              << " queue_s=" << absl::ToDoubleSeconds(queue_wait_)
              << " ttft_s=" << summary_.timings().time_to_first_token_seconds()
              << " total_s=" << seconds;
    if (summary_.fell_back()) {
      LOG(WARNING) << "answer call=" << call_id_
                   << " fell back to receiver-only: "
                   << ForLog(summary_.fallback_reason(), 512);
    }
  }

 private:
  void Complete(absl::Status status, v1::AnswerResponse response) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (completed_) return;
      completed_ = true;
      if (status.ok()) {
        // Finished, but the client is gone: record what it saw.
        const absl::Status alive = control_.Check();
        if (!alive.ok()) status = alive;
      }
      final_status_ = status;
      summary_.set_mode(response.mode());
      summary_.set_fell_back(response.fell_back());
      summary_.set_fallback_reason(response.fallback_reason());
      *summary_.mutable_transfer() = response.transfer();
      *summary_.mutable_timings() = response.timings();
      summary_.mutable_token_ids()->CopyFrom(response.token_ids());
    }
    // After Done the transport may be deleted at any time.
    transport_->Done(std::move(status), std::move(response));
  }

  ReceiverService* const service_;
  Transport* const transport_;
  const v1::AnswerRequest request_;  // A copy: the worker may outlive OnDone.
  const bool streaming_;
  const std::string method_;
  RpcMetrics& rpc_;
  CallControl control_;
  const std::string peer_;
  const uint64_t call_id_;
  const std::chrono::steady_clock::time_point start_;
  absl::Duration queue_wait_;

  std::mutex mu_;
  bool completed_ = false;
  absl::Status final_status_;
  v1::AnswerResponse summary_;  // What OnDone logs (no text).
};

namespace {

class UnaryAnswerReactor final : public grpc::ServerUnaryReactor,
                                 public AnswerCall::Transport {
 public:
  UnaryAnswerReactor(ReceiverService* service,
                     grpc::CallbackServerContext* context,
                     const grpc::ByteBuffer* raw_request,
                     grpc::ByteBuffer* response)
      : response_(response) {
    v1::AnswerRequest request;
    absl::Status parsed = ParseRequest(*raw_request, &request);
    call_ = std::make_shared<AnswerCall>(
        service, std::move(request),
        AnswerCall::GrpcOptions(service, *context, /*streaming=*/false), this);
    call_->Begin(call_, AnswerCall::AuthenticateThenParsed(*service, *context,
                                                           std::move(parsed)));
  }

  void Token(const v1::TokenEvent&) override {}
  void Done(absl::Status status, v1::AnswerResponse response) override {
    if (status.ok()) *response_ = SerializeToByteBuffer(response);
    Finish(ToGrpcStatus(status));
  }

  void OnCancel() override { call_->OnCancel(); }
  void OnDone() override {
    call_->OnDone();
    delete this;
  }

 private:
  grpc::ByteBuffer* const response_;
  std::shared_ptr<AnswerCall> call_;
};

class StreamAnswerReactor final
    : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
      public AnswerCall::Transport {
 public:
  StreamAnswerReactor(ReceiverService* service,
                      grpc::CallbackServerContext* context,
                      const grpc::ByteBuffer* raw_request) {
    v1::AnswerRequest request;
    absl::Status parsed = ParseRequest(*raw_request, &request);
    call_ = std::make_shared<AnswerCall>(
        service, std::move(request),
        AnswerCall::GrpcOptions(service, *context, /*streaming=*/true), this);
    call_->Begin(call_, AnswerCall::AuthenticateThenParsed(*service, *context,
                                                           std::move(parsed)));
  }

  void Token(const v1::TokenEvent& event) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (broken_) return;
    v1::AnswerEvent e;
    *e.mutable_token() = event;
    pending_.push_back(std::move(e));
    MaybeWriteLocked(lock);
  }

  void Done(absl::Status status, v1::AnswerResponse response) override {
    std::unique_lock<std::mutex> lock(mu_);
    done_ = true;
    status_ = ToGrpcStatus(status);
    if (status.ok() && !broken_) {
      v1::AnswerEvent e;
      *e.mutable_final() = std::move(response);
      pending_.push_back(std::move(e));
    } else {
      pending_.clear();
    }
    MaybeWriteLocked(lock);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      // The client is gone; the worker still owns the call until Done.
      broken_ = true;
      pending_.clear();
    }
    MaybeWriteLocked(lock);
  }

  void OnCancel() override { call_->OnCancel(); }
  void OnDone() override {
    call_->OnDone();
    delete this;
  }

 private:
  // With mu_ held by `lock`: starts the next write, or finishes once Done
  // came and everything is written. Returns with `lock` released.
  void MaybeWriteLocked(std::unique_lock<std::mutex>& lock) {
    if (writing_ || finished_) {
      lock.unlock();
      return;
    }
    if (pending_.empty()) {
      if (!done_) {
        lock.unlock();
        return;
      }
      finished_ = true;
      const grpc::Status status = status_;
      lock.unlock();
      Finish(status);  // The reactor may be deleted from here on.
      return;
    }
    v1::AnswerEvent next = std::move(pending_.front());
    pending_.pop_front();
    writing_ = true;
    lock.unlock();
    current_ = SerializeToByteBuffer(next);  // Ours alone while writing_.
    // No buffer hint (see ShareCall): a corked token event could wait for a
    // flush until the next event or a keepalive ping.
    StartWrite(&current_);
  }

  std::shared_ptr<AnswerCall> call_;
  std::mutex mu_;
  std::deque<v1::AnswerEvent> pending_;
  grpc::ByteBuffer current_;  // The event being written, serialized.
  bool writing_ = false;
  bool done_ = false;
  bool broken_ = false;
  bool finished_ = false;
  grpc::Status status_;
};

}  // namespace

ReceiverService::ReceiverService(const AnswerRunner* runner, WorkQueue* queue,
                                 const BearerTokenAuth* auth, Metrics* metrics)
    : runner_(runner),
      queue_(queue),
      auth_(auth),
      answer_rpc_(metrics->Rpc(ServiceRole::kReceiver, "Answer")),
      stream_rpc_(metrics->Rpc(ServiceRole::kReceiver, "AnswerStream")),
      live_(metrics->Live()) {}

AnswerCallHandle::AnswerCallHandle(std::shared_ptr<AnswerCall> call)
    : call_(std::move(call)) {}
AnswerCallHandle::~AnswerCallHandle() = default;
void AnswerCallHandle::Cancel() { call_->OnCancel(); }
void AnswerCallHandle::Finish() { call_->OnDone(); }

std::unique_ptr<AnswerCallHandle> ReceiverService::StartCall(
    v1::AnswerRequest request, const AnswerCallOptions& options,
    absl::Status checked, AnswerTransport* transport) {
  auto call = std::make_shared<AnswerCall>(this, std::move(request), options,
                                           transport);
  auto handle = std::make_unique<AnswerCallHandle>(call);
  call->Begin(call, std::move(checked));
  return handle;
}

grpc::ServerUnaryReactor* ReceiverService::Answer(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return new UnaryAnswerReactor(this, context, request, response);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ReceiverService::AnswerStream(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new StreamAnswerReactor(this, context, request);
}

}  // namespace kvwire
