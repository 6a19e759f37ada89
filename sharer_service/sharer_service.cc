// kvwire.v1.Sharer on gRPC's callback API.
//
// One Share call is a ShareReactor (owned by gRPC until OnDone) plus a
// ShareCall shared by the reactor, the WorkQueue and the worker running the
// engine. The worker pushes chunks into ShareCall's queue; whoever finds no
// write in flight starts the next one, OnWriteDone continues the chain, and
// the last one out calls Finish. Reactions only take a mutex briefly.
#include "sharer_service/sharer_service.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/codec/kv_stream.h"
#include "common/log_text.h"
#include "common/protocol/request_validation.h"
#include "common/protocol/wire_framing.h"
#include "common/service/grpc_status.h"
#include "common/service/raw_messages.h"
#include "glog/logging.h"

namespace kvwire {
namespace {

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

// gRPC's length prefix in front of every message.

}  // namespace

class ShareReactor;

class ShareCall final : public WorkItem, public ChunkSink {
 public:
  ShareCall(SharerService* service, grpc::CallbackServerContext* context,
            v1::ShareRequest request, ShareReactor* reactor)
      : service_(service),
        reactor_(reactor),
        context_(context),
        request_(std::move(request)),
        deadline_(DeadlineOf(*context)),
        peer_(context->peer()),
        call_id_(service->next_call_id_.fetch_add(1)),
        start_(std::chrono::steady_clock::now()) {
    service_->share_rpc_.Started();
  }

  // Authenticates, validates and admits the call; finishes it at once on
  // any error. Called once, right after construction.
  // `parsed`: whether the request's bytes parsed (checked after the token,
  // so that unauthenticated callers learn nothing).
  void Begin(const grpc::CallbackServerContext& context,
             std::shared_ptr<ShareCall> self, absl::Status parsed) {
    absl::Status status = service_->auth_->Check(context);
    if (status.ok()) status = std::move(parsed);
    if (status.ok()) {
      status = ValidateShareRequest(request_, service_->engine_->info());
    }
    if (status.ok()) {
      status = service_->queue_->Submit(std::move(self), deadline_);
    }
    VLOG(1) << "share call=" << call_id_
            << " request_id=" << ForLog(request_.request_id())
            << " peer=" << peer_ << " tokens=" << request_.token_ids_size()
            << " admitted=" << status.ok();
    if (!status.ok()) Complete(std::move(status));
  }

  // ----- WorkItem
  void Run(absl::Duration queue_wait) override {
    queue_wait_ = queue_wait;
    const absl::Status status =
        service_->engine_->Share(request_, *this, &report_);
    Complete(status);
  }

  int64_t BatchSize() const override { return request_.token_ids_size(); }

  // ----- Batched runs (SharerService::MakeBatchRunner)
  ShareTask Task() { return ShareTask{&request_, this, &report_}; }
  void set_queue_wait(absl::Duration wait) { queue_wait_ = wait; }

  void Drop(absl::Status why) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!cancel_status_.ok()) why = cancel_status_;
    }
    Complete(std::move(why));
  }

  // ----- ChunkSink
  absl::Status Send(std::vector<v1::KvChunk> chunks) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cancel_status_.ok()) return cancel_status_;
    if (finish_called_) return absl::CancelledError("call already finished");
    for (v1::KvChunk& chunk : chunks) {
      MaybeCorrupt(chunk);
      // The resolved chunk size bounds every batch of blocks (the receiver
      // sized its message limit for it).
      if (chunk.has_header()) {
        batch_max_bytes_ = chunk.header().spec().chunk_size_bytes();
      }
      pending_bytes_ += static_cast<int64_t>(chunk.ByteSizeLong());
      pending_.push_back(std::move(chunk));
    }
    MaybeStartWriteLocked(lock);  // Unlocks.
    lock.lock();
    // Backpressure: wait for the network, never past the deadline.
    auto drained = [this] {
      return pending_bytes_ <=
                 service_->options_.max_buffered_bytes_per_stream ||
             !cancel_status_.ok() || finish_called_;
    };
    if (deadline_ == absl::InfiniteFuture()) {
      cv_.wait(lock, drained);
    } else {
      cv_.wait_until(lock, absl::ToChronoTime(deadline_), drained);
    }
    return AliveLocked();
  }

  absl::Status Alive() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return AliveLocked();
  }

  // The worker is done (or the call never ran): finish once everything
  // queued is written (success) or right away (error).
  void Complete(absl::Status status) {
    std::unique_lock<std::mutex> lock(mu_);
    work_done_ = true;
    final_status_ = std::move(status);
    if (!final_status_.ok()) {
      pending_.clear();
      pending_bytes_ = current_bytes_;
    }
    cv_.notify_all();
    if (!writing_) {
      if (pending_.empty()) {
        FinishLocked(lock, final_status_);
      } else {
        MaybeStartWriteLocked(lock);
      }
    }
  }

  uint64_t call_id() const { return call_id_; }

  // The stall watchdog: cancels the call when one message write has been
  // in flight for `limit` (the client stopped reading). The worker stops at
  // its next Send / Alive, the buffered chunks go, and gRPC's cancellation
  // completes the stuck write, which finishes the call.
  void CancelIfStalled(absl::Duration limit) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto stalled = std::chrono::steady_clock::now() - write_started_;
      if (!writing_ || finish_called_ || !cancel_status_.ok() ||
          stalled < absl::ToChronoNanoseconds(limit)) {
        return;
      }
      cancel_status_ = absl::ResourceExhaustedError(absl::StrCat(
          "the client read nothing for ", absl::FormatDuration(limit),
          " (--stream_stall_timeout_seconds): stream cancelled after ",
          messages_written_, " messages"));
      pending_.clear();
      pending_bytes_ = current_bytes_;
      cv_.notify_all();
    }
    // gRPC may run reactions (OnDone included) inline in TryCancel, on this
    // thread: the recursive lock keeps the context alive until then.
    std::lock_guard<std::recursive_mutex> lock(context_mu_);
    if (context_ != nullptr) context_->TryCancel();
  }

  // ----- Reactions (forwarded by ShareReactor)
  void OnWriteDone(bool ok) {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (ok) ++messages_written_;
    pending_bytes_ -= current_bytes_;
    current_bytes_ = 0;
    cv_.notify_all();
    if (!ok) {
      // The stream broke (client gone or call cancelled): stop the worker.
      if (cancel_status_.ok()) {
        cancel_status_ = absl::CancelledError("client stopped receiving");
      }
      pending_.clear();
      pending_bytes_ = 0;
      FinishLocked(lock, cancel_status_);
      return;
    }
    MaybeStartWriteLocked(lock);
  }

  void OnCancel() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      // gRPC also reports calls we finished with an error as cancelled.
      if (finish_called_) return;
      if (cancel_status_.ok()) {
        cancel_status_ = CancellationCause(deadline_);
      }
      cv_.notify_all();
    }
    // Still queued: leave the queue now (Drop completes the call).
    service_->queue_->Cancel(this);
  }

  void OnDone() {
    {
      std::lock_guard<std::recursive_mutex> lock(context_mu_);
      context_ = nullptr;
    }
    service_->ForgetStream(call_id_);
    absl::Status final_status;
    int64_t merged_blocks = 0;
    int64_t batched_blocks = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      final_status = cancel_status_.ok() ? final_status_ : cancel_status_;
      merged_blocks = merged_blocks_;
      batched_blocks = batched_blocks_;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_)
            .count();
    service_->share_rpc_.Finished(final_status.code(), seconds);
    if (final_status.ok()) {
      TransferRecord record;
      record.scheme = report_.scheme_label;
      record.raw_bytes = report_.raw_bytes;
      record.payload_bytes = report_.payload_bytes;
      record.serialized_bytes = report_.serialized_bytes;
      // Batches of blocks change the message count, never the bytes.
      const int64_t messages = report_.messages - merged_blocks;
      record.wire_bytes =
          report_.serialized_bytes + kGrpcMessagePrefixBytes * messages;
      record.prompt_tokens = report_.prompt_tokens;
      record.selected_tokens = report_.selected_tokens;
      service_->transfer_.Record(record);
      service_->compute_stage_.Observe(report_.compute_seconds);
      service_->encode_stage_.Observe(report_.encode_seconds);
      service_->first_layer_stage_.Observe(report_.first_layer_seconds);
      service_->stream_stage_.Observe(seconds);
      LOG(INFO) << "share call=" << call_id_
                << " request_id=" << ForLog(request_.request_id())
                << " peer=" << peer_
                << " status=OK tokens=" << report_.prompt_tokens
                << " selected=" << report_.selected_tokens
                << " layers=" << report_.layers
                << " scheme=" << report_.scheme_label
                << " raw_bytes=" << report_.raw_bytes
                << " serialized_bytes=" << report_.serialized_bytes
                << " messages=" << messages
                << " batched_blocks=" << batched_blocks
                << " batch=" << report_.batch_size
                << " queue_s=" << absl::ToDoubleSeconds(queue_wait_)
                << " compute_s=" << report_.compute_seconds
                << " encode_s=" << report_.encode_seconds
                << " total_s=" << seconds;
    } else {
      LOG(INFO) << "share call=" << call_id_
                << " request_id=" << ForLog(request_.request_id())
                << " peer=" << peer_
                << " status=" << StatusCodeName(final_status.code())
                << " message=\"" << ForLog(final_status.message(), 512)
                << "\" total_s=" << seconds;
    }
  }

 private:
  absl::Status AliveLocked() const {
    if (!cancel_status_.ok()) return cancel_status_;
    if (finish_called_) return absl::CancelledError("call already finished");
    if (absl::Now() >= deadline_) {
      return absl::DeadlineExceededError("deadline exceeded");
    }
    return absl::OkStatus();
  }

  // SharerServiceOptions::testing_corrupt_chunk_probability.
  void MaybeCorrupt(v1::KvChunk& chunk) {
    const double p = service_->options_.testing_corrupt_chunk_probability;
    if (p <= 0) return;
    std::string* bytes =
        chunk.has_block()      ? chunk.mutable_block()->mutable_values()
        : chunk.has_fragment() ? chunk.mutable_fragment()->mutable_data()
                               : nullptr;
    if (bytes == nullptr || bytes->empty()) return;
    thread_local std::mt19937_64 rng(std::random_device{}());
    if (std::uniform_real_distribution<double>(0, 1)(rng) >= p) return;
    (*bytes)[rng() % bytes->size()] ^= static_cast<char>(1 + rng() % 255);
    LOG(WARNING) << "share call=" << call_id_
                 << " TESTING: corrupted a chunk (--testing_corrupt_chunk_"
                    "probability)";
  }

  // With mu_ held by `lock`: starts the next write, or finishes when the
  // work is done and nothing is left. Always returns with `lock` released.
  void MaybeStartWriteLocked(std::unique_lock<std::mutex>& lock) {
    if (writing_ || finish_called_) {
      lock.unlock();
      return;
    }
    if (pending_.empty()) {
      if (work_done_) {
        FinishLocked(lock, final_status_);
      } else {
        lock.unlock();
      }
      return;
    }
    // Several blocks waiting (the network is slower than the encoder): one
    // message for them, if the receiver accepts batches. Moves, no copies.
    int64_t merged = 0;
    v1::KvChunk next = TakeNextMessage(
        pending_, request_.max_blocks_per_message(), batch_max_bytes_, &merged);
    if (merged > 0) {
      merged_blocks_ += merged;
      batched_blocks_ += merged + 1;
    }
    if (next.has_trailer() && merged_blocks_ > 0) {
      // TransferStats.chunks counts messages: the batches' (a fixed32, so
      // the trailer's size does not change).
      v1::TransferStats* stats = next.mutable_trailer()->mutable_stats();
      stats->set_chunks(
          static_cast<uint32_t>(stats->chunks() - merged_blocks_));
    }
    current_bytes_ = static_cast<int64_t>(next.ByteSizeLong());
    writing_ = true;
    write_started_ = std::chrono::steady_clock::now();
    ShareReactor* reactor = reactor_;
    lock.unlock();
    // Serialized outside the lock (a block may be MiBs); current_ is this
    // write's alone while writing_ is set.
    current_ = SerializeToByteBuffer(next);
    // No buffer hint: with one write in flight at a time, a corked write's
    // OnWriteDone can wait for a flush that only the next write would
    // bring (seen: a 4 MiB block held ~30 s, until a keepalive ping).
    StartWrite(reactor, &current_, grpc::WriteOptions());
  }

  // With mu_ held: calls Finish once; returns with `lock` released.
  void FinishLocked(std::unique_lock<std::mutex>& lock, absl::Status status) {
    if (finish_called_) {
      lock.unlock();
      return;
    }
    finish_called_ = true;
    if (!status.ok() && final_status_.ok()) final_status_ = status;
    cv_.notify_all();
    ShareReactor* reactor = reactor_;
    lock.unlock();
    // After Finish the reactor may be deleted at any time; never touch it
    // again (finish_called_ guards every path).
    Finish(reactor, ToGrpcStatus(status));
  }

  static void StartWrite(ShareReactor* reactor, const grpc::ByteBuffer* chunk,
                         grpc::WriteOptions options);
  static void Finish(ShareReactor* reactor, grpc::Status status);

  SharerService* const service_;
  ShareReactor* const reactor_;
  // Valid until OnDone (which clears it under context_mu_).
  grpc::CallbackServerContext* context_;
  std::recursive_mutex context_mu_;
  const v1::ShareRequest request_;  // A copy: the worker may outlive OnDone.
  const absl::Time deadline_;
  const std::string peer_;
  const uint64_t call_id_;
  const std::chrono::steady_clock::time_point start_;
  absl::Duration queue_wait_;
  ShareReport report_;  // Written by Run before Complete; read in OnDone.

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::KvChunk> pending_;
  int64_t pending_bytes_ = 0;  // pending_ + current_.
  grpc::ByteBuffer current_;   // The message being written, serialized.
  int64_t current_bytes_ = 0;
  std::chrono::steady_clock::time_point write_started_;
  int64_t messages_written_ = 0;
  // Batching (ShareRequest.max_blocks_per_message): the stream's
  // chunk_size_bytes (from its header; 0 before it: no batches), blocks
  // that travelled inside a batch, and how many of them stopped being
  // messages of their own (each batch's size - 1).
  int64_t batch_max_bytes_ = 0;
  int64_t batched_blocks_ = 0;
  int64_t merged_blocks_ = 0;
  bool writing_ = false;
  bool work_done_ = false;
  bool finish_called_ = false;
  absl::Status final_status_;
  absl::Status cancel_status_;
};

class ShareReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  ShareReactor(SharerService* service, grpc::CallbackServerContext* context,
               const grpc::ByteBuffer* raw_request) {
    v1::ShareRequest request;
    absl::Status parsed = ParseRequest(*raw_request, &request);
    call_ =
        std::make_shared<ShareCall>(service, context, std::move(request), this);
    service->TrackStream(call_->call_id(), call_);
    call_->Begin(*context, call_, std::move(parsed));
  }

  void OnWriteDone(bool ok) override { call_->OnWriteDone(ok); }
  void OnCancel() override { call_->OnCancel(); }
  void OnDone() override {
    call_->OnDone();
    delete this;
  }

 private:
  std::shared_ptr<ShareCall> call_;
};

void ShareCall::StartWrite(ShareReactor* reactor, const grpc::ByteBuffer* chunk,
                           grpc::WriteOptions options) {
  reactor->StartWrite(chunk, options);
}

void ShareCall::Finish(ShareReactor* reactor, grpc::Status status) {
  reactor->Finish(std::move(status));
}

// One Generate call: a GenerateReactor plus this item, shared by the
// reactor, the WorkQueue and the worker. Whoever ends the call first (the
// worker, a drop from the queue, or an early error) calls Finish, exactly
// once.
class GenerateCall final : public WorkItem {
 public:
  GenerateCall(SharerService* service, grpc::CallbackServerContext* context,
               v1::GenerateRequest request, grpc::ByteBuffer* response,
               grpc::ServerUnaryReactor* reactor)
      : service_(service),
        reactor_(reactor),
        request_(std::move(request)),
        response_(response),
        deadline_(DeadlineOf(*context)),
        peer_(context->peer()),
        start_(std::chrono::steady_clock::now()) {
    service_->generate_rpc_.Started();
  }

  void Begin(const grpc::CallbackServerContext& context,
             std::shared_ptr<GenerateCall> self, absl::Status parsed) {
    absl::Status status = service_->auth_->Check(context);
    if (status.ok()) status = std::move(parsed);
    if (status.ok()) {
      status = ValidateGenerateRequest(request_, service_->engine_->info());
    }
    if (status.ok()) {
      status = service_->queue_->Submit(std::move(self), deadline_);
    }
    if (!status.ok()) Complete(std::move(status), {});
  }

  // gRPC's cancellation (client gone, deadline): a queued call leaves the
  // queue at once (Drop finishes it); a running one stops at the worker's
  // next Alive() check (after the current prefill layer or decode step).
  void OnCancel() {
    cancelled_ = true;
    service_->queue_->Cancel(this);
  }

  void Run(absl::Duration queue_wait) override {
    queue_wait_ = queue_wait;
    auto result =
        service_->engine_->Generate(request_, [this] { return Alive(); });
    if (result.ok()) {
      Complete(absl::OkStatus(), *std::move(result));
    } else {
      Complete(result.status(), {});
    }
  }

  void Drop(absl::Status why) override {
    // gRPC cancels a call whose deadline passed: name the deadline.
    if (cancelled_) why = CancellationCause(deadline_);
    Complete(std::move(why), {});
  }

 private:
  absl::Status Alive() const {
    if (cancelled_) return CancellationCause(deadline_);
    if (absl::Now() >= deadline_) {
      return absl::DeadlineExceededError("deadline exceeded");
    }
    return absl::OkStatus();
  }

  void Complete(absl::Status status, v1::GenerateResponse response) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_)
            .count();
    service_->generate_rpc_.Finished(status.code(), seconds);
    if (status.ok()) {
      service_->generation_stage_.Observe(response.generation_seconds());
      service_->generated_tokens_.Increment(
          static_cast<double>(response.token_ids_size()));
      // The sharer's generation stage starts at the last prompt token, so
      // every new token (the first included) shares its time.
      if (response.token_ids_size() > 0 && response.generation_seconds() > 0) {
        service_->time_per_output_token_.Observe(
            response.generation_seconds() /
            static_cast<double>(response.token_ids_size()));
      }
      LOG(INFO) << "generate request_id=" << ForLog(request_.request_id())
                << " peer=" << peer_
                << " status=OK prompt_tokens=" << request_.token_ids_size()
                << " new_tokens=" << response.token_ids_size()
                << " queue_s=" << absl::ToDoubleSeconds(queue_wait_)
                << " prefill_s=" << response.prefill_seconds()
                << " generation_s=" << response.generation_seconds()
                << " total_s=" << seconds;
      *response_ = SerializeToByteBuffer(response);
    } else {
      LOG(INFO) << "generate request_id=" << ForLog(request_.request_id())
                << " peer=" << peer_
                << " status=" << StatusCodeName(status.code()) << " message=\""
                << ForLog(status.message(), 512) << "\" total_s=" << seconds;
    }
    // The reactor (and response_) may go away once Finish is called.
    reactor_->Finish(ToGrpcStatus(status));
  }

  SharerService* const service_;
  grpc::ServerUnaryReactor* const reactor_;
  const v1::GenerateRequest request_;  // A copy: the worker may outlive it.
  grpc::ByteBuffer* const response_;
  std::atomic<bool> cancelled_{false};
  const absl::Time deadline_;
  const std::string peer_;
  const std::chrono::steady_clock::time_point start_;
  absl::Duration queue_wait_;
  std::mutex mu_;
  bool finished_ = false;
};

SharerService::SharerService(SharerEngine* engine, WorkQueue* queue,
                             const BearerTokenAuth* auth, Metrics* metrics,
                             const SharerServiceOptions& options)
    : engine_(engine),
      queue_(queue),
      auth_(auth),
      metrics_(metrics),
      options_(options),
      share_rpc_(metrics->Rpc(ServiceRole::kSharer, "Share")),
      info_rpc_(metrics->Rpc(ServiceRole::kSharer, "GetInfo")),
      generate_rpc_(metrics->Rpc(ServiceRole::kSharer, "Generate")),
      generation_stage_(metrics->Stage(ServiceRole::kSharer, kStageGeneration)),
      generated_tokens_(metrics->GeneratedTokens(ServiceRole::kSharer)),
      time_per_output_token_(metrics->TimePerOutputToken(ServiceRole::kSharer)),
      transfer_(metrics->Transfer(ServiceRole::kSharer)),
      compute_stage_(metrics->Stage(ServiceRole::kSharer, kStageCompute)),
      encode_stage_(metrics->Stage(ServiceRole::kSharer, kStageEncode)),
      first_layer_stage_(
          metrics->Stage(ServiceRole::kSharer, kStageFirstLayer)),
      stream_stage_(metrics->Stage(ServiceRole::kSharer, kStageStream)) {
  if (options_.stream_stall_timeout > absl::ZeroDuration()) {
    stall_watchdog_ = std::thread([this] { WatchStalls(); });
  }
}

SharerService::~SharerService() {
  {
    std::lock_guard<std::mutex> lock(streams_mu_);
    stopping_ = true;
  }
  streams_cv_.notify_all();
  if (stall_watchdog_.joinable()) stall_watchdog_.join();
}

void SharerService::TrackStream(uint64_t id, std::weak_ptr<ShareCall> call) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_.emplace(id, std::move(call));
}

void SharerService::ForgetStream(uint64_t id) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_.erase(id);
}

void SharerService::WatchStalls() {
  const absl::Duration limit = options_.stream_stall_timeout;
  const absl::Duration period =
      std::clamp(limit / 4, absl::Milliseconds(10), absl::Seconds(1));
  std::unique_lock<std::mutex> lock(streams_mu_);
  while (!streams_cv_.wait_for(lock, absl::ToChronoNanoseconds(period),
                               [this] { return stopping_; })) {
    std::vector<std::shared_ptr<ShareCall>> open;
    for (const auto& [id, weak] : streams_) {
      if (auto call = weak.lock()) open.push_back(std::move(call));
    }
    // Cancelling may run OnDone (ForgetStream) on this thread.
    lock.unlock();
    for (const auto& call : open) call->CancelIfStalled(limit);
    open.clear();
    lock.lock();
  }
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SharerService::Share(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new ShareReactor(this, context, request);
}

BatchRunner SharerService::MakeBatchRunner(SharerEngine* engine) {
  return [engine](const std::vector<std::shared_ptr<WorkItem>>& items,
                  const std::vector<absl::Duration>& waits) {
    std::vector<ShareCall*> calls;
    std::vector<ShareTask> tasks;
    for (size_t i = 0; i < items.size(); ++i) {
      auto* call = static_cast<ShareCall*>(items[i].get());
      call->set_queue_wait(waits[i]);
      calls.push_back(call);
      tasks.push_back(call->Task());
    }
    const std::vector<absl::Status> statuses = engine->ShareBatch(tasks);
    for (size_t i = 0; i < calls.size(); ++i) calls[i]->Complete(statuses[i]);
  };
}

// Owned by gRPC until OnDone; forwards the cancellation to the call.
class GenerateReactor final : public grpc::ServerUnaryReactor {
 public:
  GenerateReactor(SharerService* service, grpc::CallbackServerContext* context,
                  const grpc::ByteBuffer* raw_request,
                  grpc::ByteBuffer* response) {
    v1::GenerateRequest request;
    absl::Status parsed = ParseRequest(*raw_request, &request);
    call_ = std::make_shared<GenerateCall>(service, context, std::move(request),
                                           response, this);
    call_->Begin(*context, call_, std::move(parsed));
  }
  void OnCancel() override { call_->OnCancel(); }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<GenerateCall> call_;
};

grpc::ServerUnaryReactor* SharerService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return new GenerateReactor(this, context, request, response);
}

grpc::ServerUnaryReactor* SharerService::GetInfo(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  const auto start = std::chrono::steady_clock::now();
  info_rpc_.Started();
  absl::Status status = auth_->Check(*context);
  v1::GetInfoRequest parsed;
  if (status.ok()) status = ParseRequest(*request, &parsed);
  if (status.ok()) *response = SerializeToByteBuffer(engine_->info());
  info_rpc_.Finished(
      status.code(),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace kvwire
