#include "load_tests/load_runner.h"

#include <grpcpp/client_context.h>
#include <grpcpp/support/client_callback.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <random>
#include <set>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/protocol/wire_framing.h"
#include "common/service/grpc_status.h"
#include "common/service/security.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "load_tests/openai_chat.h"

namespace kvwire {
namespace load {
namespace {

using Clock = std::chrono::steady_clock;

// gRPC's length-prefixed message framing: 1 flag byte + 4 length bytes.

// What one call produced. Times are seconds since the point's start.
struct Outcome {
  int scenario = 0;
  bool measured = false;
  bool ok = false;
  std::string code;
  std::string message;
  double intended = 0;
  double actual = 0;
  double completion = 0;
  double first = -1;  // First block / token; -1 if none.
  int64_t payload = 0;
  int64_t serialized = 0;
  int64_t wire = 0;
  int64_t raw = 0;
  int64_t prompt_tokens = 0;
  int64_t tokens_sent = 0;
  int64_t generated = 0;
  bool fell_back = false;
  std::vector<double> inter_token_gaps;  // Seconds between tokens.
};

// A request to send: which scenario, and its prepared message.
struct Prepared {
  int scenario = 0;
  v1::ShareRequest share;
  v1::AnswerRequest answer;
  std::string chat_body;  // openai_chat: the JSON request.
};

class PointRun;

// Live calls, so that a run past its hard cap can cancel them.
class CallRegistry {
 public:
  void Add(grpc::ClientContext* c) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.insert(c);
  }
  void Remove(grpc::ClientContext* c) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(c);
  }
  void Add(HttpCancel* c) {
    std::lock_guard<std::mutex> lock(mu_);
    live_http_.insert(c);
  }
  void Remove(HttpCancel* c) {
    std::lock_guard<std::mutex> lock(mu_);
    live_http_.erase(c);
  }
  void CancelAll() {
    std::lock_guard<std::mutex> lock(mu_);
    for (grpc::ClientContext* c : live_) c->TryCancel();
    for (HttpCancel* c : live_http_) c->Cancel();
  }

 private:
  std::mutex mu_;
  std::set<grpc::ClientContext*> live_;
  std::set<HttpCancel*> live_http_;
};

using DoneFn = std::function<void(Outcome)>;
using NowFn = std::function<double()>;

void FinishOutcome(const grpc::Status& status, Outcome* o) {
  o->ok = status.ok();
  o->code = std::string(StatusCodeName(status.error_code()));
  if (!status.ok()) o->message = status.error_message().substr(0, 300);
}

class ShareCall : public grpc::ClientReadReactor<v1::KvChunk> {
 public:
  ShareCall(v1::Sharer::Stub* stub, v1::ShareRequest request, Outcome base,
            absl::Duration deadline, const std::string& token, NowFn now,
            DoneFn done, CallRegistry* registry)
      : request_(std::move(request)),
        outcome_(std::move(base)),
        now_(std::move(now)),
        done_(std::move(done)),
        registry_(registry) {
    context_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    AttachBearerToken(&context_, token);
    registry_->Add(&context_);
    stub->async()->Share(&context_, &request_, this);
    StartRead(&chunk_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows.
    outcome_.serialized += static_cast<int64_t>(chunk_.ByteSizeLong());
    outcome_.wire +=
        static_cast<int64_t>(chunk_.ByteSizeLong()) + kGrpcMessagePrefixBytes;
    if (outcome_.first < 0 && (chunk_.has_block() || chunk_.has_fragment() ||
                               chunk_.blocks_size() > 0)) {
      outcome_.first = now_();
    }
    if (chunk_.has_header()) {
      outcome_.prompt_tokens = chunk_.header().token_count();
    } else if (chunk_.has_trailer()) {
      const v1::TransferStats& s = chunk_.trailer().stats();
      outcome_.payload = static_cast<int64_t>(s.payload_bytes());
      outcome_.raw = static_cast<int64_t>(s.raw_bytes());
      outcome_.tokens_sent = s.selected_tokens();
    }
    StartRead(&chunk_);
  }

  void OnDone(const grpc::Status& status) override {
    outcome_.completion = now_();
    FinishOutcome(status, &outcome_);
    registry_->Remove(&context_);
    DoneFn done = std::move(done_);
    Outcome outcome = std::move(outcome_);
    delete this;
    done(std::move(outcome));
  }

 private:
  grpc::ClientContext context_;
  v1::ShareRequest request_;
  v1::KvChunk chunk_;
  Outcome outcome_;
  NowFn now_;
  DoneFn done_;
  CallRegistry* registry_;
};

void AccountAnswer(const v1::AnswerResponse& r, Outcome* o) {
  o->payload = static_cast<int64_t>(r.transfer().payload_bytes());
  o->serialized = static_cast<int64_t>(r.transfer().serialized_bytes());
  o->wire = static_cast<int64_t>(r.transfer().wire_bytes());
  o->raw = static_cast<int64_t>(r.transfer().raw_kv_bytes());
  o->prompt_tokens = r.transfer().prompt_tokens();
  o->tokens_sent = r.transfer().tokens_sent();
  o->generated = r.token_ids_size();
  o->fell_back = r.fell_back();
}

class AnswerCall {
 public:
  static void Start(v1::Receiver::Stub* stub, v1::AnswerRequest request,
                    Outcome base, absl::Duration deadline,
                    const std::string& token, NowFn now, DoneFn done,
                    CallRegistry* registry) {
    auto* call = new AnswerCall;
    call->request_ = std::move(request);
    call->outcome_ = std::move(base);
    call->context_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    AttachBearerToken(&call->context_, token);
    registry->Add(&call->context_);
    stub->async()->Answer(
        &call->context_, &call->request_, &call->response_,
        [call, now = std::move(now), done = std::move(done),
         registry](grpc::Status status) {
          Outcome o = std::move(call->outcome_);
          o.completion = now();
          FinishOutcome(status, &o);
          if (status.ok()) {
            AccountAnswer(call->response_, &o);
            // Server-measured TTFT, from the time this call was due.
            const double ttft =
                call->response_.timings().time_to_first_token_seconds();
            if (ttft > 0) o.first = o.actual + ttft;
          }
          registry->Remove(&call->context_);
          delete call;
          done(std::move(o));
        });
  }

 private:
  grpc::ClientContext context_;
  v1::AnswerRequest request_;
  v1::AnswerResponse response_;
  Outcome outcome_;
};

class AnswerStreamCall : public grpc::ClientReadReactor<v1::AnswerEvent> {
 public:
  AnswerStreamCall(v1::Receiver::Stub* stub, v1::AnswerRequest request,
                   Outcome base, absl::Duration deadline,
                   const std::string& token, NowFn now, DoneFn done,
                   CallRegistry* registry)
      : request_(std::move(request)),
        outcome_(std::move(base)),
        now_(std::move(now)),
        done_(std::move(done)),
        registry_(registry) {
    context_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    AttachBearerToken(&context_, token);
    registry_->Add(&context_);
    stub->async()->AnswerStream(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (event_.has_token()) {
      const double now = now_();
      if (outcome_.first < 0) outcome_.first = now;
      if (last_token_ >= 0) {
        outcome_.inter_token_gaps.push_back(std::max(0.0, now - last_token_));
      }
      last_token_ = now;
    } else if (event_.has_final()) {
      AccountAnswer(event_.final(), &outcome_);
    }
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& status) override {
    outcome_.completion = now_();
    FinishOutcome(status, &outcome_);
    registry_->Remove(&context_);
    DoneFn done = std::move(done_);
    Outcome outcome = std::move(outcome_);
    delete this;
    done(std::move(outcome));
  }

 private:
  grpc::ClientContext context_;
  v1::AnswerRequest request_;
  v1::AnswerEvent event_;
  Outcome outcome_;
  double last_token_ = -1;
  NowFn now_;
  DoneFn done_;
  CallRegistry* registry_;
};

// One streaming chat.completions request, on the calling thread (a thread
// of its own: HttpClient blocks). The outcome's code is the absl status
// name for transport errors, "HTTP_<status>" for a non-2xx answer and
// STREAM_ERROR / BAD_STREAM for an error event or a stream that did not
// end with [DONE].
Outcome RunChatCall(const HttpClient& http, const HttpRequest& request,
                    Outcome o, absl::Duration deadline, const NowFn& now,
                    CallRegistry* registry) {
  HttpCancel cancel;
  registry->Add(&cancel);
  ChatStreamAccumulator stream;
  int http_status = 0;
  std::string error_body;
  auto head = http.Send(
      request, absl::Now() + deadline,
      [&http_status](const HttpResponseHead& h) { http_status = h.status; },
      [&](absl::string_view bytes) -> absl::Status {
        if (http_status / 100 != 2) {
          // An error answer: keep the start of its body for the message.
          const size_t room = 4096 - std::min<size_t>(4096, error_body.size());
          error_body.append(bytes.data(), std::min(bytes.size(), room));
          return absl::OkStatus();
        }
        return stream.Feed(bytes, now());
      },
      &cancel);
  registry->Remove(&cancel);
  o.completion = now();
  o.ok = false;
  if (!head.ok()) {
    o.code = std::string(StatusCodeName(head.status().code()));
    o.message = std::string(head.status().message().substr(0, 300));
  } else if (head->status / 100 != 2) {
    o.code = absl::StrCat("HTTP_", head->status);
    o.message = ErrorMessageFromBody(error_body);
  } else if (!stream.error().empty()) {
    o.code = "STREAM_ERROR";
    o.message = stream.error().substr(0, 300);
  } else if (!stream.done()) {
    o.code = "BAD_STREAM";
    o.message = "the response ended without 'data: [DONE]'";
  } else {
    o.ok = true;
    o.code = "OK";
  }
  if (!stream.token_times().empty()) o.first = stream.token_times().front();
  o.inter_token_gaps = InterTokenGaps(stream.token_times());
  o.generated = stream.completion_tokens();
  o.prompt_tokens = stream.prompt_tokens();
  if (stream.transfer().has_value()) {
    // kvwire-receiver's report: the KV bytes behind this answer, as
    // AnswerStream's final response gives them.
    const v1::TransferReport& t = *stream.transfer();
    o.payload = static_cast<int64_t>(t.payload_bytes());
    o.serialized = static_cast<int64_t>(t.serialized_bytes());
    o.wire = static_cast<int64_t>(t.wire_bytes());
    o.raw = static_cast<int64_t>(t.raw_kv_bytes());
    o.prompt_tokens = t.prompt_tokens();
    o.tokens_sent = t.tokens_sent();
  }
  o.fell_back = stream.fell_back();
  return o;
}

std::string Ms(double seconds) {
  return absl::StrFormat("%.1fms", seconds * 1e3);
}

// One load point.
class PointRun {
 public:
  PointRun(const RunnerOptions& options, v1::Sharer::Stub* sharer,
           v1::Receiver::Stub* receiver, uint32_t vocab_size, double load,
           int point_index, RunResult* totals, CallRegistry* registry,
           Clock::time_point run_deadline)
      : options_(options),
        config_(options.config),
        sharer_(sharer),
        receiver_(receiver),
        vocab_size_(vocab_size),
        open_(config_.mode == LoopMode::kOpen),
        load_(load),
        point_index_(point_index),
        totals_(totals),
        registry_(registry),
        run_deadline_(run_deadline),
        prompts_(options.questions, config_.seed * 7919 + point_index),
        pick_rng_(config_.seed * 104729 + point_index) {
    std::vector<double> weights;
    for (const Scenario& s : config_.scenarios) weights.push_back(s.weight);
    pick_ = std::discrete_distribution<int>(weights.begin(), weights.end());
    stats_.resize(config_.scenarios.size());
    warm_ = config_.warmup_seconds;
    end_ = warm_ + config_.duration_seconds;
  }

  PointResult Run() {
    start_ = Clock::now();
    chat_threads_ = std::make_shared<std::atomic<int64_t>>(0);
    std::thread progress;
    if (options_.progress) progress = std::thread([this] { ProgressLoop(); });
    if (open_) {
      RunOpen();
    } else {
      std::vector<std::pair<double, bool>> initial;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (int i = 0; i < static_cast<int>(load_); ++i) {
          initial.push_back(ReserveLocked(0));
        }
      }
      for (const auto& [t, measured] : initial) Launch(t, measured);
    }
    // Wait for the window to close, then for every call to finish.
    WaitUntil(end_);
    {
      std::unique_lock<std::mutex> lock(mu_);
      sending_closed_ = true;
      const auto drain_deadline = std::min(
          run_deadline_,
          Clock::now() +
              std::chrono::duration_cast<Clock::duration>(
                  std::chrono::duration<double>(config_.deadline_seconds + 5)));
      if (!cv_.wait_until(lock, drain_deadline, [this] {
            return in_flight_ == 0 && backlog_.empty();
          })) {
        // Past the drain bound: drop the backlog and cancel what runs.
        for (const auto& [t, measured] : backlog_) {
          RecordUnsentLocked(t, measured);
        }
        backlog_.clear();
        lock.unlock();
        registry_->CancelAll();
        lock.lock();
        cv_.wait(lock, [this] { return in_flight_ == 0; });
      }
      done_ = true;
    }
    cv_.notify_all();
    if (progress.joinable()) progress.join();
    // openai_chat threads have handed over their outcomes; wait until they
    // have also left this object before it goes away.
    while (chat_threads_->load() > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return Result();
  }

 private:
  double Now() const {
    return std::chrono::duration<double>(Clock::now() - start_).count();
  }

  void WaitUntil(double t) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto when = std::min(
        run_deadline_, start_ + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(t)));
    cv_.wait_until(lock, when, [this] { return window_closed_; });
    window_closed_ = true;
  }

  // Closed loop: may another call start now? Returns (intended, measured).
  std::pair<double, bool> ReserveLocked(double now) {
    const bool measured = now >= warm_;
    if (measured) ++measured_started_;
    ++in_flight_;
    return {now, measured};
  }

  bool MaySendLocked(double t) const {
    if (sending_closed_ || window_closed_) return false;
    if (t >= end_) return false;
    if (Clock::now() >= run_deadline_) return false;
    if (t >= warm_ && config_.max_requests > 0 &&
        measured_started_ >= config_.max_requests) {
      return false;
    }
    return true;
  }

  void RunOpen() {
    ArrivalSchedule schedule(load_, config_.seed * 31 + point_index_,
                             config_.uniform_arrivals);
    while (true) {
      const double t = schedule.Next();
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (!MaySendLocked(t)) break;
        const auto when = start_ + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(t));
        if (cv_.wait_until(lock, when, [this] { return window_closed_; })) {
          break;
        }
        const bool measured = t >= warm_;
        if (measured) ++measured_started_;
        if (in_flight_ >= config_.max_in_flight) {
          backlog_.emplace_back(t, measured);
          max_backlog_ = std::max<int64_t>(max_backlog_, backlog_.size());
          continue;
        }
        ++in_flight_;
      }
      Launch(t, t >= warm_);
      bool reached = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        reached = config_.max_requests > 0 &&
                  measured_started_ >= config_.max_requests;
      }
      if (reached) break;
    }
    // The schedule is over (or the request cap reached): close the window.
    std::lock_guard<std::mutex> lock(mu_);
    window_closed_ = true;
    cv_.notify_all();
  }

  Prepared Prepare() {
    std::lock_guard<std::mutex> lock(prompt_mu_);
    Prepared p;
    p.scenario = pick_(pick_rng_);
    const Scenario& s = config_.scenarios[p.scenario];
    const std::string id = absl::StrCat("load-", point_index_, "-", seq_++);
    if (config_.rpc == RpcKind::kShare) {
      p.share.set_request_id(id);
      for (uint32_t t : prompts_.TokenIds(s.prompt_tokens, vocab_size_)) {
        p.share.add_token_ids(t);
      }
      *p.share.mutable_spec() = s.spec;
    } else if (config_.rpc == RpcKind::kOpenAiChat) {
      ChatRequestOptions chat;
      chat.model = config_.model;
      chat.kvwire_extension = config_.kvwire_extension;
      chat.spec = s.spec;
      chat.mode = s.answer_mode;
      chat.request_id = id;
      chat.question =
          prompts_.Question(s.prompt_tokens, config_.chars_per_token);
      chat.max_tokens = s.max_new_tokens;
      p.chat_body = BuildChatCompletionRequest(chat);
    } else {
      p.answer.set_request_id(id);
      p.answer.set_question(
          prompts_.Question(s.prompt_tokens, config_.chars_per_token));
      p.answer.set_mode(s.answer_mode);
      *p.answer.mutable_spec() = s.spec;
      p.answer.mutable_generation()->set_max_new_tokens(s.max_new_tokens);
    }
    return p;
  }

  void Launch(double intended, bool measured) {
    Prepared p = Prepare();
    Outcome base;
    base.scenario = p.scenario;
    base.measured = measured;
    base.intended = intended;
    base.actual = Now();
    if (open_ && base.actual - intended > 1e-3) late_.fetch_add(1);
    const absl::Duration deadline = absl::Seconds(config_.deadline_seconds);
    NowFn now = [this] { return Now(); };
    DoneFn done = [this](Outcome o) { OnComplete(std::move(o)); };
    switch (config_.rpc) {
      case RpcKind::kShare:
        new ShareCall(sharer_, std::move(p.share), std::move(base), deadline,
                      options_.auth_token, std::move(now), std::move(done),
                      registry_);
        break;
      case RpcKind::kAnswer:
        AnswerCall::Start(receiver_, std::move(p.answer), std::move(base),
                          deadline, options_.auth_token, std::move(now),
                          std::move(done), registry_);
        break;
      case RpcKind::kAnswerStream:
        new AnswerStreamCall(receiver_, std::move(p.answer), std::move(base),
                             deadline, options_.auth_token, std::move(now),
                             std::move(done), registry_);
        break;
      case RpcKind::kOpenAiChat: {
        HttpRequest request;
        request.url = options_.chat_url;
        request.body = std::move(p.chat_body);
        if (!options_.auth_token.empty()) {
          request.headers.emplace_back(
              "Authorization", absl::StrCat("Bearer ", options_.auth_token));
        }
        // Kept for the case the thread cannot start.
        Outcome unsent = base;
        chat_threads_->fetch_add(1);
        try {
          std::thread([http = options_.http_client,
                       request = std::move(request), base = std::move(base),
                       deadline, now = std::move(now), done = std::move(done),
                       registry = registry_, alive = chat_threads_]() mutable {
            Outcome o = RunChatCall(*http, request, std::move(base), deadline,
                                    now, registry);
            done(std::move(o));
            // Last touch of the PointRun's state: Run() waits for this.
            alive->fetch_sub(1);
          }).detach();
        } catch (const std::system_error& e) {
          // Out of threads (RLIMIT_NPROC, memory): a failed call of the
          // generator, not a crash; lower --max_in_flight or concurrency.
          chat_threads_->fetch_sub(1);
          // Closed loop: the completion launches the next call, which may
          // fail the same way; the pause bounds that recursion's rate.
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
          unsent.completion = Now();
          unsent.code = "GENERATOR_THREADS";
          unsent.message = e.what();
          OnComplete(std::move(unsent));
        }
        break;
      }
    }
  }

  void RecordUnsentLocked(double intended, bool measured) {
    if (!measured) return;
    ScenarioStats& s = stats_[0];
    s.errors["GENERATOR_BACKLOG"]++;
    (void)intended;
  }

  void OnComplete(Outcome o) {
    std::vector<std::pair<double, bool>> next;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --in_flight_;
      Account(o);
      if (open_) {
        if (!backlog_.empty() && !done_) {
          next.push_back(backlog_.front());
          backlog_.pop_front();
          ++in_flight_;
        }
      } else {
        const double now = Now();
        if (MaySendLocked(now)) {
          next.push_back(ReserveLocked(now));
        } else if (!window_closed_ && in_flight_ == 0 &&
                   config_.max_requests > 0 &&
                   measured_started_ >= config_.max_requests) {
          window_closed_ = true;  // Count reached: end the point early.
        }
      }
      // Under the lock: once it is released, Run() may see the last call
      // done and destroy this object (and cv_).
      cv_.notify_all();
    }
    for (const auto& [t, measured] : next) Launch(t, measured);
  }

  void Account(const Outcome& o) {
    totals_->requests_including_warmup++;
    totals_->wire_bytes_including_warmup += o.wire;
    totals_->payload_bytes_including_warmup += o.ok ? o.payload : 0;
    totals_->serialized_bytes_including_warmup += o.serialized;
    if (o.ok) totals_->ok_including_warmup++;
    if (!o.measured) {
      ++warmup_requests_;
      return;
    }
    ScenarioStats& s = stats_[o.scenario];
    last_completion_ = std::max(last_completion_, o.completion);
    first_measured_send_ = std::min(first_measured_send_, o.intended);
    window_wire_ += o.wire;
    if (!o.ok) {
      s.errors[o.code]++;
      s.error_examples.emplace(o.code, o.message);
      ++window_errors_;
      return;
    }
    ++window_ok_;
    s.ok++;
    const double latency =
        CorrectedLatency(o.intended, o.actual, o.completion, open_);
    s.latency.Add(latency);
    s.service_time.Add(std::max(0.0, o.completion - o.actual));
    if (o.first >= 0) {
      s.ttft.Add(std::max(0.0, o.first - (open_ ? o.intended : o.actual)));
      s.stream_time.Add(std::max(0.0, o.completion - o.first));
    }
    for (double gap : o.inter_token_gaps) s.inter_token.Add(gap);
    s.payload_bytes += o.payload;
    s.serialized_bytes += o.serialized;
    s.wire_bytes += o.wire;
    s.raw_bytes += o.raw;
    s.prompt_tokens += o.prompt_tokens;
    s.tokens_sent += o.tokens_sent;
    s.generated_tokens += o.generated;
    if (o.fell_back) s.fallbacks++;
    recent_[recent_next_++ % recent_.size()] = latency;
    recent_count_ = std::min<int64_t>(recent_count_ + 1, recent_.size());
  }

  void ProgressLoop() {
    const bool tty = isatty(STDERR_FILENO) != 0;
    const auto period =
        tty ? std::chrono::milliseconds(500) : std::chrono::milliseconds(5000);
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, period, [this] { return done_; })) {
      const double now = Now();
      std::vector<double> recent(recent_.begin(),
                                 recent_.begin() + recent_count_);
      std::sort(recent.begin(), recent.end());
      auto pct = [&](double p) {
        return recent.empty() ? 0.0
                              : recent[NearestRankIndex(p, recent.size())];
      };
      const double window = std::max(1e-6, now - warm_);
      const std::string phase = now < warm_
                                    ? "warm-up"
                                    : absl::StrFormat("%.1f/%.0fs", now - warm_,
                                                      config_.duration_seconds);
      const std::string line = absl::StrFormat(
          "[%s %s] %s ok=%d err=%d in-flight=%d%s %.1f req/s p50=%s p99=%s "
          "wire=%.2f MB/s",
          RpcKindName(config_.rpc), Label(), phase, window_ok_, window_errors_,
          in_flight_,
          open_ ? absl::StrCat(" backlog=", backlog_.size()) : std::string(),
          now < warm_ ? 0.0 : window_ok_ / window, Ms(pct(50)), Ms(pct(99)),
          now < warm_ ? 0.0 : window_wire_ / window / 1e6);
      if (tty) {
        fprintf(stderr, "\r%-110s", line.c_str());
      } else {
        fprintf(stderr, "%s\n", line.c_str());
      }
      fflush(stderr);
    }
    if (tty) fprintf(stderr, "\n");
  }

  std::string Label() const {
    return open_ ? absl::StrFormat("rate=%g", load_)
                 : absl::StrFormat("concurrency=%g", load_);
  }

  PointResult Result() {
    std::lock_guard<std::mutex> lock(mu_);
    PointResult r;
    r.label = Label();
    r.load = load_;
    r.offered_rate = open_ ? load_ : 0;
    const double from =
        first_measured_send_ < 1e300 ? first_measured_send_ : warm_;
    r.measured_seconds =
        std::max(0.0, last_completion_ - std::min(from, warm_));
    if (open_ && r.measured_seconds > 0) {
      // The offered window, not just the completions' span.
      r.measured_seconds = std::max(r.measured_seconds,
                                    std::min(end_, last_completion_) - warm_);
    }
    r.scenarios = stats_;
    for (const ScenarioStats& s : stats_) r.all.Merge(s);
    r.max_backlog = max_backlog_;
    r.late_sends = late_.load();
    r.warmup_requests = warmup_requests_;
    return r;
  }

  const RunnerOptions& options_;
  const LoadConfig& config_;
  v1::Sharer::Stub* sharer_;
  v1::Receiver::Stub* receiver_;
  const uint32_t vocab_size_;
  const bool open_;
  const double load_;
  const int point_index_;
  RunResult* totals_;  // Guarded by mu_.
  CallRegistry* registry_;
  const Clock::time_point run_deadline_;
  Clock::time_point start_;
  double warm_ = 0;
  double end_ = 0;

  std::mutex prompt_mu_;
  PromptSource prompts_;
  std::mt19937_64 pick_rng_;
  std::discrete_distribution<int> pick_;
  int64_t seq_ = 0;

  // openai_chat threads still running (shared: they outlive their
  // outcome's hand-over by a few instructions).
  std::shared_ptr<std::atomic<int64_t>> chat_threads_;

  std::mutex mu_;
  std::condition_variable cv_;
  int64_t in_flight_ = 0;
  int64_t measured_started_ = 0;
  bool window_closed_ = false;
  bool sending_closed_ = false;
  bool done_ = false;
  std::deque<std::pair<double, bool>> backlog_;
  int64_t max_backlog_ = 0;
  std::atomic<int64_t> late_{0};
  int64_t warmup_requests_ = 0;
  std::vector<ScenarioStats> stats_;
  double last_completion_ = 0;
  double first_measured_send_ = 1e308;
  int64_t window_ok_ = 0;
  int64_t window_errors_ = 0;
  int64_t window_wire_ = 0;
  std::vector<double> recent_ = std::vector<double>(2048, 0.0);
  int64_t recent_next_ = 0;
  int64_t recent_count_ = 0;
};

}  // namespace

absl::StatusOr<RunResult> RunLoad(const RunnerOptions& options) {
  const LoadConfig& config = options.config;
  if (absl::Status st = ValidateLoadConfig(config); !st.ok()) return st;
  if (config.rpc == RpcKind::kOpenAiChat) {
    if (options.http_client == nullptr) {
      return absl::InvalidArgumentError("no HTTP client for openai_chat");
    }
    if (config.model.empty()) {
      return absl::InvalidArgumentError("openai_chat needs a model name");
    }
  } else if (options.channel == nullptr) {
    return absl::InvalidArgumentError("no channel");
  }
  RunResult result;
  const auto wall_start = Clock::now();
  const auto run_deadline =
      wall_start +
      std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(options.max_total_seconds));
  std::unique_ptr<v1::Sharer::Stub> sharer;
  std::unique_ptr<v1::Receiver::Stub> receiver;
  if (options.channel != nullptr) {
    sharer = v1::Sharer::NewStub(options.channel);
    receiver = v1::Receiver::NewStub(options.channel);
  }
  uint32_t vocab_size = 256;
  if (config.rpc == RpcKind::kShare) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    AttachBearerToken(&context, options.auth_token);
    v1::SharerInfo info;
    const grpc::Status status =
        sharer->GetInfo(&context, v1::GetInfoRequest(), &info);
    if (!status.ok()) {
      return absl::Status(FromGrpcStatus(status).code(),
                          absl::StrCat("GetInfo on ", config.target, ": ",
                                       status.error_message()));
    }
    result.sharer_info = info;
    vocab_size = std::max<uint32_t>(1, info.model().vocab_size());
    for (const Scenario& s : config.scenarios) {
      if (info.max_prompt_tokens() > 0 &&
          static_cast<uint32_t>(s.prompt_tokens) > info.max_prompt_tokens()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "scenario '", s.name, "': prompt_tokens ", s.prompt_tokens,
            " exceeds the sharer's max_prompt_tokens ",
            info.max_prompt_tokens()));
      }
    }
  }
  CallRegistry registry;
  std::vector<double> loads;
  if (config.mode == LoopMode::kOpen) {
    loads = config.rates;
  } else {
    for (int c : config.concurrency) loads.push_back(c);
  }
  for (size_t i = 0; i < loads.size(); ++i) {
    if (Clock::now() >= run_deadline) break;
    PointRun point(options, sharer.get(), receiver.get(), vocab_size, loads[i],
                   static_cast<int>(i), &result, &registry, run_deadline);
    result.points.push_back(point.Run());
  }
  result.wall_seconds =
      std::chrono::duration<double>(Clock::now() - wall_start).count();
  return result;
}

}  // namespace load
}  // namespace kvwire
