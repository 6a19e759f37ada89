// One Answer request from start to finish, on a worker thread: render and
// tokenize the prompt, and for C2C start the sharer's Share call, run the
// receiver's own prefill while the sharer's layers arrive (each KvChunk is
// decoded and its layer fused as it lands, on the stream's reader thread),
// then generate; for text-to-text, ask the sharer for background text
// (Sharer.Generate) and answer the conversation that includes it. Fills the
// AnswerResponse (text, ids, transfer report,
// stage timings) and records the receiver's metrics. Torch-free: the model
// work is behind ReceiverEngine.
//
// Failure policy. A failure of the sharer path (sharer down, slow beyond
// --sharer_timeout_seconds, refusing the receiver, corrupt or truncated
// stream, a model the fuser cannot read) either fails the request or is
// answered receiver-only with fell_back / fallback_reason set, per the
// request's FallbackPolicy (UNSPECIFIED: the server's default). A fallback
// always starts a fresh session: a partly fused cache is never used. Errors
// that are the request's own (an invalid transfer spec, a byte budget that
// cannot be met) and the end of the call itself (client cancellation, the
// call's deadline) are returned as they are, without a fallback.
#ifndef KVWIRE_RECEIVER_SERVICE_ANSWER_RUNNER_H_
#define KVWIRE_RECEIVER_SERVICE_ANSWER_RUNNER_H_

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/engine/receiver_engine.h"
#include "common/protocol/answer_validation.h"
#include "common/protocol/generation_params.h"
#include "common/service/metrics.h"
#include "common/trace.h"
#include "kvwire/v1/kvwire.pb.h"
#include "receiver_service/sharer_client.h"

namespace kvwire {

struct AnswerRunnerOptions {
  AnswerLimits limits;
  // The policy of requests that leave FallbackPolicy UNSPECIFIED.
  v1::FallbackPolicy default_fallback = v1::FALLBACK_POLICY_RECEIVER_ONLY;
  // A Share call that takes longer is abandoned (a sharer-path failure).
  absl::Duration sharer_timeout = absl::Seconds(60);
  ReceiverSignal guided_signal = ReceiverSignal::kAttention;
  // Sent as ShareRequest / GenerateRequest.expected_model_fingerprint when
  // not empty.
  std::string expected_sharer_fingerprint;
  // Text-to-text: the sharer's greedy tokens of background (the paper: 256)
  // and its prompt ({question}: the request's last user message).
  uint32_t text_to_text_max_new_tokens = 256;
  std::string text_to_text_prompt = kTextToTextPrompt;
};

// Cancellation and deadline of one call, shared between the transport
// (OnCancel) and the worker running it. Thread-safe.
class CallControl {
 public:
  explicit CallControl(absl::Time deadline) : deadline_(deadline) {}

  absl::Time deadline() const { return deadline_; }
  // Marks the call over (`why`: CANCELLED or DEADLINE_EXCEEDED) and runs the
  // cancel hook, if any (e.g. cancelling the Share call in flight).
  void Cancel(absl::Status why);
  // OK while the call is alive; otherwise why it ended.
  absl::Status Check() const;
  // `hook` runs on Cancel (at once if already cancelled). One at a time.
  void SetCancelHook(std::function<void()> hook);
  void ClearCancelHook();

  // The request's timeline when it asked for one (AnswerRequest.trace; Run
  // enables it), with its origin at `start`; null otherwise.
  void EnableTrace(std::chrono::steady_clock::time_point start) {
    trace_ = std::make_unique<RequestTrace>(start);
  }
  RequestTrace* trace() const { return trace_.get(); }

 private:
  const absl::Time deadline_;
  std::unique_ptr<RequestTrace> trace_;
  mutable std::mutex mu_;
  absl::Status cancelled_;
  std::function<void()> hook_;
};

// Called with each generated token's event (AnswerStream).
using TokenEventSink = std::function<void(const v1::TokenEvent& event)>;

class AnswerRunner {
 public:
  // `sharer` may be null (no sharer configured: C2C requests are sharer-path
  // failures). Nothing is owned; everything must outlive the runner.
  AnswerRunner(const ReceiverEngine* engine, SharerClient* sharer,
               Metrics* metrics, const AnswerRunnerOptions& options);

  const AnswerRunnerOptions& options() const { return options_; }

  // What the sharer's GetInfo said (the start-up probe). C2C requests check
  // the sharer against it before sending anything; token-aligned requests
  // fetch it first when it is not known yet.
  void NoteSharerInfo(v1::SharerInfo info);

  // The cheap checks (ValidateAnswerRequest); run before queueing.
  absl::Status Validate(const v1::AnswerRequest& request) const;

  // Runs `request` on the calling thread. `start` is when the call arrived
  // (TTFT and total are measured from it). Errors: INVALID_ARGUMENT (prompt
  // too long, a spec the sharer rejects, ...), RESOURCE_EXHAUSTED (byte
  // budget), CANCELLED / DEADLINE_EXCEEDED (the call ended), the sharer
  // path's status under FALLBACK_POLICY_FAIL (UNAVAILABLE, DEADLINE_EXCEEDED,
  // DATA_LOSS, FAILED_PRECONDITION, ...), INTERNAL for model failures.
  absl::StatusOr<v1::AnswerResponse> Run(
      const v1::AnswerRequest& request, CallControl& control,
      std::chrono::steady_clock::time_point start,
      const TokenEventSink& on_token = nullptr) const;

 private:
  struct Attempt;
  absl::Status RunC2C(const v1::AnswerRequest& request,
                      absl::Span<const ChatMessage> messages,
                      const v1::GenerationParams& generation,
                      CallControl& control, Attempt& attempt) const;
  // The sharer's info as noted, or fetched now when `fetch` (deadline
  // permitting); nullopt when unknown and not fetched.
  absl::StatusOr<std::optional<v1::SharerInfo>> SharerInfoFor(
      bool fetch, absl::Time deadline) const;
  // Text-to-text: the sharer writes background (Sharer.Generate) for the
  // question in `messages`; on success `prompt` becomes the receiver's
  // prompt [user: background prompt, assistant: background, messages...]
  // and `response` carries the background and the call's bytes and time.
  absl::Status RunTextToText(const std::vector<ChatMessage>& messages,
                             const v1::AnswerRequest& request,
                             CallControl& control, Attempt& attempt,
                             std::vector<int64_t>& prompt,
                             v1::AnswerResponse& response) const;
  // Sharer.Generate on `messages` rendered with the sharer's template
  // (`mode` names the answer mode in errors): the sharer's ids; the
  // response gets the call's bytes and times. A failure is the sharer
  // path's (the fallback policy applies).
  absl::StatusOr<std::vector<int64_t>> SharerGenerate(
      absl::string_view mode, absl::Span<const ChatMessage> messages,
      const v1::GenerationParams& params, const v1::AnswerRequest& request,
      CallControl& control, Attempt& attempt,
      v1::AnswerResponse& response) const;
  // kvwire_kv_slots_in_use now.
  void RecordKvSlots() const;
  absl::Status Generate(ReceiverSession& session,
                        const v1::GenerationParams& generation,
                        CallControl& control,
                        std::chrono::steady_clock::time_point start,
                        const TokenEventSink& on_token,
                        v1::AnswerResponse& response) const;

  const ReceiverEngine* const engine_;
  SharerClient* const sharer_;
  Metrics* const metrics_;
  const AnswerRunnerOptions options_;
  mutable std::mutex sharer_info_mu_;
  mutable std::optional<v1::SharerInfo> sharer_info_;
  TransferMetrics& transfer_;
  prometheus::Histogram& transfer_stage_;
  prometheus::Histogram& decode_stage_;
  prometheus::Histogram& fuse_stage_;
  prometheus::Histogram& prefill_stage_;
  prometheus::Histogram& generation_stage_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& time_per_output_token_;
  prometheus::Counter& generated_tokens_;
  prometheus::Gauge& kv_slots_in_use_;
};

}  // namespace kvwire

#endif  // KVWIRE_RECEIVER_SERVICE_ANSWER_RUNNER_H_
