// Request orchestration of the receiver: prompt, transfer, fusion, fallback,
// generation, report and metrics.
#include "receiver_service/answer_runner.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/protocol/request_validation.h"
#include "common/service/grpc_status.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

// U+FFFD, what a decode of an incomplete UTF-8 sequence ends with.
constexpr absl::string_view kReplacementChar = "\xEF\xBF\xBD";

}  // namespace

// ------------------------------------------------------------ CallControl

void CallControl::Cancel(absl::Status why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!cancelled_.ok()) return;
  cancelled_ = why.ok() ? absl::CancelledError("cancelled") : std::move(why);
  // Under the lock: the hook's target (a Share call) is destroyed only
  // after ClearCancelHook, which takes the lock too. Hooks are
  // non-blocking (TryCancel).
  if (hook_) hook_();
}

absl::Status CallControl::Check() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!cancelled_.ok()) return cancelled_;
  }
  if (absl::Now() >= deadline_) {
    return absl::DeadlineExceededError("the call's deadline expired");
  }
  return absl::OkStatus();
}

void CallControl::SetCancelHook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  hook_ = std::move(hook);
  if (!cancelled_.ok() && hook_) hook_();
}

void CallControl::ClearCancelHook() {
  std::lock_guard<std::mutex> lock(mu_);
  hook_ = nullptr;
}

// ------------------------------------------------------------ AnswerRunner

struct AnswerRunner::Attempt {
  std::unique_ptr<ReceiverSession> session;
  ShareOutcome outcome;
  bool transferred = false;  // A complete stream was received.
  ReceivedStream received;
  // The error is the sharer path's (the fallback policy applies).
  bool sharer_failure = false;
  // The code the fallback metric and reason name (the sharer's own).
  absl::StatusCode reason_code = absl::StatusCode::kOk;
};

AnswerRunner::AnswerRunner(const ReceiverEngine* engine, SharerClient* sharer,
                           Metrics* metrics, const AnswerRunnerOptions& options)
    : engine_(engine),
      sharer_(sharer),
      metrics_(metrics),
      options_(options),
      transfer_(metrics->Transfer(ServiceRole::kReceiver)),
      transfer_stage_(metrics->Stage(ServiceRole::kReceiver, kStageTransfer)),
      decode_stage_(metrics->Stage(ServiceRole::kReceiver, kStageDecode)),
      fuse_stage_(metrics->Stage(ServiceRole::kReceiver, kStageFuse)),
      prefill_stage_(
          metrics->Stage(ServiceRole::kReceiver, kStageReceiverPrefill)),
      generation_stage_(
          metrics->Stage(ServiceRole::kReceiver, kStageGeneration)),
      ttft_(metrics->TimeToFirstToken(ServiceRole::kReceiver)),
      time_per_output_token_(
          metrics->TimePerOutputToken(ServiceRole::kReceiver)),
      generated_tokens_(metrics->GeneratedTokens(ServiceRole::kReceiver)),
      kv_slots_in_use_(metrics->KvSlotsInUse(ServiceRole::kReceiver)) {
  metrics->KvSlots(ServiceRole::kReceiver)
      .Set(static_cast<double>(engine_->kv_slots().slots));
}

void AnswerRunner::RecordKvSlots() const {
  kv_slots_in_use_.Set(static_cast<double>(engine_->kv_slots().in_use));
}

absl::Status AnswerRunner::Validate(const v1::AnswerRequest& request) const {
  return ValidateAnswerRequest(request, options_.limits);
}

void AnswerRunner::NoteSharerInfo(v1::SharerInfo info) {
  std::lock_guard<std::mutex> lock(sharer_info_mu_);
  sharer_info_ = std::move(info);
}

absl::StatusOr<std::optional<v1::SharerInfo>> AnswerRunner::SharerInfoFor(
    bool fetch, absl::Time deadline) const {
  {
    std::lock_guard<std::mutex> lock(sharer_info_mu_);
    if (sharer_info_.has_value() || !fetch) return sharer_info_;
  }
  ASSIGN_OR_RETURN(
      v1::SharerInfo info,
      sharer_->GetInfo(std::max(deadline - absl::Now(), absl::ZeroDuration())));
  std::lock_guard<std::mutex> lock(sharer_info_mu_);
  sharer_info_ = info;
  return sharer_info_;
}

absl::Status AnswerRunner::RunC2C(const v1::AnswerRequest& request,
                                  absl::Span<const ChatMessage> messages,
                                  const v1::GenerationParams& generation,
                                  CallControl& control,
                                  Attempt& attempt) const {
  const uint32_t max_new = generation.max_new_tokens();
  if (!engine_->info().has_fuser) {
    attempt.sharer_failure = true;
    attempt.reason_code = absl::StatusCode::kFailedPrecondition;
    return absl::FailedPreconditionError(
        "C2C is not available: the receiver has no fuser (--fuser_dir)");
  }
  if (sharer_ == nullptr) {
    attempt.sharer_failure = true;
    attempt.reason_code = absl::StatusCode::kFailedPrecondition;
    return absl::FailedPreconditionError(
        "C2C is not available: no sharer is configured (--sharer_target)");
  }
  // Token alignment failing on this conversation is the C2C path's failure
  // (the fallback policy applies), as is a sharer that cannot serve it.
  auto path_failure = [&attempt](absl::Status st) {
    attempt.sharer_failure = true;
    attempt.reason_code = st.code();
    return st;
  };
  auto plan = engine_->PlanC2C(messages);
  if (!plan.ok()) return path_failure(plan.status());
  ASSIGN_OR_RETURN(attempt.session,
                   engine_->NewSession(*std::move(plan), max_new,
                                       /*fuse=*/true));
  ReceiverSession* session = attempt.session.get();
  session->set_trace(control.trace());
  if (session->fused_length() == 0)
    return absl::OkStatus();  // Nothing to fuse.

  // Before anything is sent: a sharer of another vocabulary (without
  // alignment) or one that ignores positions (with it) is refused here,
  // naming both models.
  const bool positioned = !session->share_positions().empty();
  auto info = SharerInfoFor(
      positioned,
      std::min(control.deadline(), absl::Now() + options_.sharer_timeout));
  if (!info.ok()) {
    return path_failure(absl::Status(
        info.status().code(),
        absl::StrCat("sharer GetInfo (needed for token alignment) ",
                     StatusCodeName(info.status().code()), ": ",
                     info.status().message())));
  }
  if (info->has_value()) {
    absl::Status fits = engine_->CheckSharerModel((*info)->model());
    if (fits.ok() && positioned && !(*info)->accepts_positions()) {
      fits = absl::FailedPreconditionError(absl::StrCat(
          "the sharer (kvwire ", (*info)->version(),
          ") does not take token positions, which token alignment needs: "
          "upgrade it"));
    }
    if (!fits.ok()) return path_failure(fits);
  }

  v1::ShareRequest share;
  share.set_request_id(request.request_id());
  for (int64_t id : session->share_token_ids()) {
    share.add_token_ids(static_cast<uint32_t>(id));
  }
  for (int64_t p : session->share_positions()) {
    share.add_positions(static_cast<uint32_t>(p));
  }
  *share.mutable_spec() = request.spec();
  RestrictSelectionToFusedTokens(session->plan(), *share.mutable_spec());
  if (!options_.expected_sharer_fingerprint.empty()) {
    share.set_expected_model_fingerprint(options_.expected_sharer_fingerprint);
  }
  const bool guided = IsReceiverGuided(request.spec());
  if (guided) {
    // The receiver picks the tokens from its own cache before anything is
    // sent; the prefill cannot overlap the transfer then.
    RETURN_IF_ERROR(session->Prefill([&control] { return control.Check(); }));
    ASSIGN_OR_RETURN(*share.mutable_spec()->mutable_selection(),
                     session->GuidedSelection(request.spec().selection(),
                                              options_.guided_signal));
  }

  const absl::Time deadline =
      std::min(control.deadline(), absl::Now() + options_.sharer_timeout);
  const auto share_start = Clock::now();
  std::unique_ptr<ShareStream> stream = sharer_->StartShare(
      share, deadline,
      [session](const v1::KvChunk& chunk) { return session->AddChunk(chunk); });
  control.SetCancelHook([s = stream.get()] { s->Cancel(); });
  // The receiver's own prefill runs here while the reader thread decodes
  // the arriving layers (held until the prefill ends, then fused).
  absl::Status prefill =
      guided ? absl::OkStatus()
             : session->Prefill([&control] { return control.Check(); });
  if (!prefill.ok()) stream->Cancel();
  attempt.outcome = stream->Wait();
  control.ClearCancelHook();
  stream.reset();
  if (RequestTrace* trace = control.trace(); trace != nullptr) {
    trace->Add("sharer call", "Sharer.Share (call start to trailer)",
               share_start,
               share_start +
                   std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(attempt.outcome.seconds)));
  }
  RETURN_IF_ERROR(prefill);
  RETURN_IF_ERROR(control.Check());

  const ShareOutcome& out = attempt.outcome;
  if (!out.status.ok()) {
    const absl::StatusCode code = out.status.code();
    const std::string after = absl::StrCat(" (after ", out.chunks, " chunks, ",
                                           out.serialized_bytes, " bytes)");
    if (!out.consumer_error) {
      if (code == absl::StatusCode::kInvalidArgument ||
          (code == absl::StatusCode::kResourceExhausted &&
           absl::StrContains(out.status.message(), "max_payload_bytes"))) {
        // The request's own transfer spec or budget: no fallback hides it.
        return absl::Status(code, absl::StrCat("the sharer refused the "
                                               "transfer spec: ",
                                               out.status.message()));
      }
    }
    attempt.sharer_failure = true;
    attempt.reason_code = code;
    std::string message(out.status.message());
    if (out.consumer_error) {
      message = absl::StrCat("the sharer's stream was rejected: ", message);
    } else if (code == absl::StatusCode::kDeadlineExceeded) {
      message = absl::StrCat("the sharer did not finish within ",
                             absl::FormatDuration(options_.sharer_timeout),
                             ": ", message);
    } else {
      message = absl::StrCat("sharer ", StatusCodeName(code), ": ", message);
    }
    return absl::Status(code, absl::StrCat(message, after));
  }
  auto received = session->FinishStream();
  if (!received.ok()) {
    attempt.sharer_failure = true;
    attempt.reason_code = received.status().code();
    return absl::Status(received.status().code(),
                        absl::StrCat("the sharer's stream is incomplete: ",
                                     received.status().message(), " (after ",
                                     out.chunks, " chunks)"));
  }
  attempt.received = *std::move(received);
  attempt.transferred = true;
  return absl::OkStatus();
}

absl::Status AnswerRunner::RunTextToText(
    const std::vector<ChatMessage>& messages, const v1::AnswerRequest& request,
    CallControl& control, Attempt& attempt, std::vector<int64_t>& prompt,
    v1::AnswerResponse& response) const {
  std::string question;
  for (auto it = messages.rbegin(); it != messages.rend(); ++it) {
    if (it->role == "user") {
      question = it->content;
      break;
    }
  }
  const std::string background_prompt = absl::StrReplaceAll(
      options_.text_to_text_prompt, {{"{question}", question}});
  const std::vector<ChatMessage> sharer_messages = {
      ChatMessage{"user", background_prompt, std::nullopt}};
  v1::GenerationParams params;
  params.set_max_new_tokens(options_.text_to_text_max_new_tokens);
  ASSIGN_OR_RETURN(std::vector<int64_t> ids,
                   SharerGenerate("text-to-text", sharer_messages, params,
                                  request, control, attempt, response));
  const std::string text = engine_->DecodeSharerText(ids);
  response.set_background_text(text);
  response.mutable_background_token_ids()->Add(ids.begin(), ids.end());

  std::vector<ChatMessage> conversation = {
      ChatMessage{"user", background_prompt, std::nullopt},
      ChatMessage{"assistant", text, std::nullopt}};
  conversation.insert(conversation.end(), messages.begin(), messages.end());
  ASSIGN_OR_RETURN(prompt, engine_->RenderPrompt(conversation));
  if (static_cast<int64_t>(prompt.size()) > engine_->info().max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the text-to-text prompt (question and the sharer's background) has ",
        prompt.size(), " tokens; at most ", engine_->info().max_prompt_tokens));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int64_t>> AnswerRunner::SharerGenerate(
    absl::string_view mode, absl::Span<const ChatMessage> messages,
    const v1::GenerationParams& params, const v1::AnswerRequest& request,
    CallControl& control, Attempt& attempt,
    v1::AnswerResponse& response) const {
  if (sharer_ == nullptr) {
    attempt.sharer_failure = true;
    attempt.reason_code = absl::StatusCode::kFailedPrecondition;
    return absl::FailedPreconditionError(absl::StrCat(
        mode, " is not available: no sharer is configured (--sharer_target)"));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> sharer_prompt,
                   engine_->RenderSharerPrompt(messages));
  v1::GenerateRequest generate;
  generate.set_request_id(request.request_id());
  for (int64_t id : sharer_prompt) {
    generate.add_token_ids(static_cast<uint32_t>(id));
  }
  *generate.mutable_generation() = params;
  if (!options_.expected_sharer_fingerprint.empty()) {
    generate.set_expected_model_fingerprint(
        options_.expected_sharer_fingerprint);
  }
  const absl::Time deadline =
      std::min(control.deadline(), absl::Now() + options_.sharer_timeout);
  const auto call_start = Clock::now();
  auto background = sharer_->Generate(
      generate, deadline, [&control](std::function<void()> cancel) {
        control.SetCancelHook(std::move(cancel));
      });
  control.ClearCancelHook();
  const double call_seconds = SecondsSince(call_start);
  if (RequestTrace* trace = control.trace(); trace != nullptr) {
    trace->Add("sharer call", "Sharer.Generate", call_start, Clock::now());
  }
  response.mutable_timings()->set_sharer_generation_seconds(call_seconds);
  RETURN_IF_ERROR(control.Check());
  if (!background.ok()) {
    const absl::StatusCode code = background.status().code();
    attempt.sharer_failure = true;
    attempt.reason_code = code;
    return absl::Status(
        code, absl::StrCat("sharer Generate ", StatusCodeName(code), ": ",
                           background.status().message()));
  }
  response.mutable_timings()->set_sharer_compute_seconds(
      background->prefill_seconds() + background->generation_seconds());
  const uint64_t bytes = background->ByteSizeLong();
  response.mutable_transfer()->set_serialized_bytes(bytes);
  response.mutable_transfer()->set_wire_bytes(bytes + kGrpcMessagePrefixBytes);
  return std::vector<int64_t>(background->token_ids().begin(),
                              background->token_ids().end());
}

absl::Status AnswerRunner::Generate(ReceiverSession& session,
                                    const v1::GenerationParams& generation,
                                    CallControl& control,
                                    Clock::time_point start,
                                    const TokenEventSink& on_token,
                                    v1::AnswerResponse& response) const {
  RETURN_IF_ERROR(control.Check());
  RecordKvSlots();
  double ttft = 0;
  std::vector<int64_t> ids;
  std::string emitted;
  TokenCallback sink = [&](int64_t index, int64_t token) {
    if (index == 0) ttft = SecondsSince(start);
    ids.push_back(token);
    if (!on_token) return;
    v1::TokenEvent event;
    event.set_index(static_cast<uint32_t>(index));
    event.set_token_id(static_cast<uint32_t>(token));
    std::string text = engine_->DecodeText(ids, /*strip_newlines=*/false);
    // Mid-character (an incomplete UTF-8 sequence): wait for the rest.
    if (!absl::EndsWith(text, kReplacementChar)) {
      if (absl::StartsWith(text, emitted)) {
        event.set_text(text.substr(emitted.size()));
      } else {
        event.set_text(text);
      }
      emitted = std::move(text);
    }
    on_token(event);
  };
  ASSIGN_OR_RETURN(std::vector<int64_t> tokens,
                   session.Generate(generation, sink,
                                    [&control] { return control.Check(); }));
  response.set_text(engine_->DecodeText(tokens, /*strip_newlines=*/true));
  for (int64_t t : tokens) response.add_token_ids(static_cast<uint32_t>(t));
  const ReceiverTimings t = session.timings();
  v1::StageTimings* timings = response.mutable_timings();
  timings->set_time_to_first_token_seconds(ttft);
  timings->set_generation_seconds(t.generation_seconds);
  if (!tokens.empty()) {
    ttft_.Observe(ttft);
    generation_stage_.Observe(t.generation_seconds);
    generated_tokens_.Increment(static_cast<double>(tokens.size()));
    if (tokens.size() > 1 && t.generation_seconds > 0) {
      // Seconds per token after the first (the first is in the TTFT).
      time_per_output_token_.Observe(t.generation_seconds /
                                     static_cast<double>(tokens.size() - 1));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::AnswerResponse> AnswerRunner::Run(
    const v1::AnswerRequest& request, CallControl& control,
    Clock::time_point start, const TokenEventSink& on_token) const {
  // After the request's sessions are gone.
  absl::Cleanup record_slots = [this] { RecordKvSlots(); };
  RETURN_IF_ERROR(Validate(request));
  if (request.trace() && control.trace() == nullptr) control.EnableTrace(start);
  std::vector<ChatMessage> messages;
  if (!request.question().empty()) {
    messages.push_back(ChatMessage{"user", request.question(), std::nullopt});
  } else {
    for (const v1::ChatMessage& m : request.messages()) {
      messages.push_back(ChatMessage{m.role(), m.content(), std::nullopt});
    }
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> prompt,
                   engine_->RenderPrompt(messages));
  const ReceiverModelInfo& info = engine_->info();
  if (prompt.empty()) {
    return absl::InvalidArgumentError("the templated prompt is empty");
  }
  if (static_cast<int64_t>(prompt.size()) > info.max_prompt_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("the templated prompt has ", prompt.size(),
                     " tokens; at most ", info.max_prompt_tokens));
  }
  v1::GenerationParams generation = request.generation();
  if (generation.max_new_tokens() == 0) {
    generation.set_max_new_tokens(kDefaultMaxNewTokens);
  }
  const uint32_t max_positions = info.model.max_position_embeddings();
  if (max_positions > 0 &&
      prompt.size() + generation.max_new_tokens() > max_positions) {
    return absl::InvalidArgumentError(
        absl::StrCat("the templated prompt (", prompt.size(), " tokens) plus ",
                     generation.max_new_tokens(),
                     " new tokens exceed the model's max_position_embeddings ",
                     max_positions));
  }
  RETURN_IF_ERROR(control.Check());

  v1::AnswerResponse response;
  response.set_request_id(request.request_id());
  v1::StageTimings* timings = response.mutable_timings();
  const v1::AnswerMode mode = EffectiveMode(request);
  const v1::FallbackPolicy policy =
      request.fallback() == v1::FALLBACK_POLICY_UNSPECIFIED
          ? options_.default_fallback
          : request.fallback();

  auto answer_alone = [&](const std::vector<int64_t>& ids,
                          v1::AnswerMode answered_mode) -> absl::Status {
    ASSIGN_OR_RETURN(auto session,
                     engine_->NewSession(ids, generation.max_new_tokens(),
                                         /*fuse=*/false));
    session->set_trace(control.trace());
    RETURN_IF_ERROR(session->Prefill([&control] { return control.Check(); }));
    const double prefill = session->timings().prefill_seconds;
    timings->set_receiver_prefill_seconds(prefill);
    prefill_stage_.Observe(prefill);
    response.set_mode(answered_mode);
    return Generate(*session, generation, control, start, on_token, response);
  };
  // A failed sharer path: fail, or answer alone and say why.
  auto fall_back = [&](const absl::Status& st,
                       const Attempt& attempt) -> absl::Status {
    if (!attempt.sharer_failure) return st;
    RETURN_IF_ERROR(control.Check());
    const absl::StatusCode reason = attempt.reason_code;
    metrics_->Fallbacks(ServiceRole::kReceiver, StatusCodeName(reason))
        .Increment();
    if (policy == v1::FALLBACK_POLICY_FAIL) {
      // The sharer refusing the receiver's credentials is not the client's
      // authentication problem.
      const absl::StatusCode code =
          reason == absl::StatusCode::kUnauthenticated ||
                  reason == absl::StatusCode::kPermissionDenied
              ? absl::StatusCode::kFailedPrecondition
              : st.code();
      return absl::Status(code, st.message());
    }
    response.set_fell_back(true);
    response.set_fallback_reason(
        absl::StrCat(StatusCodeName(st.code()), ": ", st.message()));
    return answer_alone(prompt, v1::ANSWER_MODE_RECEIVER_ONLY);
  };

  if (mode == v1::ANSWER_MODE_RECEIVER_ONLY) {
    RETURN_IF_ERROR(answer_alone(prompt, v1::ANSWER_MODE_RECEIVER_ONLY));
  } else if (mode == v1::ANSWER_MODE_SHARER_ONLY) {
    Attempt attempt;
    auto ids = SharerGenerate("sharer-only", messages, generation, request,
                              control, attempt, response);
    if (ids.ok()) {
      response.set_mode(v1::ANSWER_MODE_SHARER_ONLY);
      response.set_text(engine_->DecodeSharerText(*ids));
      response.mutable_token_ids()->Add(ids->begin(), ids->end());
    } else {
      RETURN_IF_ERROR(fall_back(ids.status(), attempt));
    }
  } else if (mode == v1::ANSWER_MODE_TEXT_TO_TEXT) {
    Attempt attempt;
    std::vector<int64_t> conversation;
    const absl::Status st = RunTextToText(messages, request, control, attempt,
                                          conversation, response);
    if (st.ok()) {
      RETURN_IF_ERROR(answer_alone(conversation, v1::ANSWER_MODE_TEXT_TO_TEXT));
    } else {
      RETURN_IF_ERROR(fall_back(st, attempt));
    }
  } else {
    Attempt attempt;
    const absl::Status st =
        RunC2C(request, messages, generation, control, attempt);
    timings->set_transfer_seconds(attempt.outcome.seconds);
    if (st.ok()) {
      ReceiverSession& session = *attempt.session;
      const ReceiverTimings t = session.timings();
      timings->set_receiver_prefill_seconds(t.prefill_seconds);
      timings->set_decode_seconds(t.decode_seconds);
      timings->set_fuse_seconds(t.fuse_seconds);
      prefill_stage_.Observe(t.prefill_seconds);
      if (attempt.transferred) {
        const v1::KvHeader& header = attempt.received.header;
        const v1::TransferStats& stats = attempt.received.trailer;
        timings->set_sharer_compute_seconds(stats.compute_seconds());
        timings->set_encode_seconds(stats.encode_seconds());
        v1::TransferReport* r = response.mutable_transfer();
        *r->mutable_spec() = header.spec();
        r->set_raw_kv_bytes(stats.raw_bytes());
        r->set_payload_bytes(stats.payload_bytes());
        r->set_scale_bytes(stats.scale_bytes());
        r->set_index_bytes(stats.index_bytes());
        r->set_header_bytes(stats.header_bytes());
        r->set_serialized_bytes(
            static_cast<uint64_t>(attempt.outcome.serialized_bytes));
        r->set_wire_bytes(static_cast<uint64_t>(attempt.outcome.wire_bytes));
        r->set_prompt_tokens(header.token_count());
        r->set_tokens_sent(stats.selected_tokens());
        r->set_layers_sent(static_cast<uint32_t>(header.layers_size()));
        TransferRecord record;
        record.scheme = SchemeLabel(header);
        record.raw_bytes = static_cast<int64_t>(stats.raw_bytes());
        record.payload_bytes = static_cast<int64_t>(stats.payload_bytes());
        record.serialized_bytes = attempt.outcome.serialized_bytes;
        record.wire_bytes = attempt.outcome.wire_bytes;
        record.prompt_tokens = header.token_count();
        record.selected_tokens =
            header.layers_size() > 0
                ? static_cast<int64_t>(stats.selected_tokens()) /
                      header.layers_size()
                : 0;
        transfer_.Record(record);
        transfer_stage_.Observe(attempt.outcome.seconds);
        decode_stage_.Observe(t.decode_seconds);
        fuse_stage_.Observe(t.fuse_seconds);
      }
      response.set_mode(v1::ANSWER_MODE_C2C);
      RETURN_IF_ERROR(
          Generate(session, generation, control, start, on_token, response));
    } else {
      // A fresh session: whatever the attempt fused is dropped with it.
      attempt.session.reset();
      // Only what arrived before the failure.
      response.mutable_transfer()->set_serialized_bytes(
          static_cast<uint64_t>(attempt.outcome.serialized_bytes));
      response.mutable_transfer()->set_wire_bytes(
          static_cast<uint64_t>(attempt.outcome.wire_bytes));
      RETURN_IF_ERROR(fall_back(st, attempt));
    }
  }
  timings->set_total_seconds(SecondsSince(start));
  if (const RequestTrace* trace = control.trace(); trace != nullptr) {
    for (const RequestTrace::Event& e : trace->Events()) {
      v1::TraceEvent* out = response.add_trace();
      out->set_track(e.track);
      out->set_name(e.name);
      out->set_start_seconds(e.start_seconds);
      out->set_end_seconds(e.end_seconds);
    }
  }
  return response;
}

}  // namespace kvwire
