#include "common/engine/pipeline.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "common/clock.h"
#include "common/codec/kv_codec.h"
#include "common/engine/prompt_plan.h"
#include "common/file_util.h"
#include "common/fuser/fuser.h"
#include "common/protocol/request_validation.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {

// ----------------------------------------------------------------- names

const char* PipelineModeName(PipelineMode mode) {
  switch (mode) {
    case PipelineMode::kReceiverOnly:
      return "receiver-only";
    case PipelineMode::kSharerOnly:
      return "sharer-only";
    case PipelineMode::kC2C:
      return "c2c";
    case PipelineMode::kTextToText:
      return "text-to-text";
  }
  return "?";
}

absl::StatusOr<PipelineMode> ParsePipelineMode(absl::string_view name) {
  const std::string n = absl::StrReplaceAll(name, {{"_", "-"}});
  for (PipelineMode m : {PipelineMode::kReceiverOnly, PipelineMode::kSharerOnly,
                         PipelineMode::kC2C, PipelineMode::kTextToText}) {
    if (n == PipelineModeName(m)) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown mode '", name,
                   "' (receiver-only, sharer-only, c2c, text-to-text)"));
}

// ----------------------------------------------------------- conversions

v1::TransferReport ToTransferReport(const TransferSummary& s) {
  v1::TransferReport r;
  *r.mutable_spec() = s.spec;
  r.set_raw_kv_bytes(s.raw_kv_bytes);
  r.set_payload_bytes(s.payload_bytes);
  r.set_scale_bytes(s.scale_bytes);
  r.set_index_bytes(s.index_bytes);
  r.set_header_bytes(s.header_bytes);
  r.set_serialized_bytes(s.serialized_bytes);
  r.set_prompt_tokens(s.prompt_tokens);
  r.set_tokens_sent(s.tokens_sent);
  r.set_layers_sent(s.layers_sent);
  return r;
}

v1::StageTimings ToStageTimings(const PipelineTimings& t) {
  v1::StageTimings r;
  r.set_sharer_compute_seconds(t.sharer_prefill_seconds +
                               t.sharer_generation_seconds);
  r.set_encode_seconds(t.encode_seconds);
  r.set_decode_seconds(t.decode_seconds);
  r.set_fuse_seconds(t.fuse_seconds);
  r.set_receiver_prefill_seconds(t.receiver_prefill_seconds);
  r.set_time_to_first_token_seconds(t.time_to_first_token_seconds);
  r.set_generation_seconds(t.generation_seconds);
  r.set_total_seconds(t.total_seconds);
  return r;
}

// ---------------------------------------------------------------- loading

absl::StatusOr<std::unique_ptr<C2cPipeline>> C2cPipeline::Load(
    const PipelineOptions& options) {
  if (options.receiver.model.dir.empty()) {
    return absl::InvalidArgumentError(
        "the receiver's model directory is required");
  }
  if (!options.receiver.fuser_dir.empty() && options.sharer.model.dir.empty()) {
    return absl::InvalidArgumentError(
        "a fuser needs a sharer (its model directory)");
  }
  std::unique_ptr<C2cPipeline> p(new C2cPipeline());
  p->options_ = options;
  if (!options.sharer.model.dir.empty()) {
    ASSIGN_OR_RETURN(p->sharer_, SharerEngine::Load(options.sharer));
  }
  ReceiverEngineOptions receiver = options.receiver;
  receiver.require_tokenizer = false;
  if (p->sharer_ != nullptr) {
    receiver.sharer_layers =
        static_cast<int>(p->sharer_->info().model().num_layers());
    const std::string& dir = options.sharer.model.dir;
    if (receiver.sharer_tokenizer_dir.empty() &&
        (IsRegularFile(dir + "/tokenizer.json") ||
         IsRegularFile(dir + "/tokenizer_config.json"))) {
      receiver.sharer_tokenizer_dir = dir;
    }
  }
  ASSIGN_OR_RETURN(p->receiver_, ReceiverEngine::Load(receiver));
  if (p->sharer_ != nullptr) {
    RETURN_IF_ERROR(p->receiver_->CheckSharerModel(p->sharer_->info().model()));
  }
  return p;
}

const v1::ModelInfo& C2cPipeline::sharer_info() const {
  return sharer_ == nullptr ? v1::ModelInfo::default_instance()
                            : sharer_->info().model();
}

absl::StatusOr<std::vector<int64_t>> C2cPipeline::ReceiverPrompt(
    absl::Span<const ChatMessage> messages) const {
  return receiver_->RenderPrompt(messages);
}

absl::StatusOr<std::vector<int64_t>> C2cPipeline::PromptFor(
    bool sharer_template, const PipelineRequest& request) const {
  if (!request.prompt_ids.empty()) return request.prompt_ids;
  if (request.messages.empty()) {
    return absl::InvalidArgumentError("request has no messages or prompt_ids");
  }
  return sharer_template ? receiver_->RenderSharerPrompt(request.messages)
                         : receiver_->RenderPrompt(request.messages);
}

// ----------------------------------------------------------------- sharing

v1::ShareRequest C2cPipeline::ShareRequestFor(
    absl::Span<const int64_t> token_ids, const v1::TransferSpec& spec,
    const std::string& request_id, absl::Span<const int64_t> positions) const {
  v1::ShareRequest request;
  request.set_request_id(request_id);
  for (int64_t id : token_ids) request.add_token_ids(static_cast<uint32_t>(id));
  for (int64_t p : positions) request.add_positions(static_cast<uint32_t>(p));
  *request.mutable_spec() = spec;
  return request;
}

absl::StatusOr<ShareReport> C2cPipeline::Share(
    absl::Span<const int64_t> token_ids, const v1::TransferSpec& spec,
    const std::string& request_id,
    const std::function<absl::Status(v1::KvChunk)>& sink,
    absl::Span<const int64_t> positions) const {
  if (sharer_ == nullptr) {
    return absl::FailedPreconditionError("no sharer model is loaded");
  }
  const v1::ShareRequest request =
      ShareRequestFor(token_ids, spec, request_id, positions);
  RETURN_IF_ERROR(ValidateShareRequest(request, sharer_->info()));
  CallbackChunkSink chunks(sink);
  ShareReport report;
  RETURN_IF_ERROR(sharer_->Share(request, chunks, &report));
  return report;
}

// ---------------------------------------------------------------- answers

absl::StatusOr<PipelineResult> C2cPipeline::Answer(
    const PipelineRequest& request) const {
  const auto start = Clock::now();
  PipelineResult result;
  result.mode = request.mode;
  switch (request.mode) {
    case PipelineMode::kReceiverOnly:
      RETURN_IF_ERROR(AnswerAlone(request, /*sharer=*/false, start, result));
      break;
    case PipelineMode::kSharerOnly:
      RETURN_IF_ERROR(AnswerAlone(request, /*sharer=*/true, start, result));
      break;
    case PipelineMode::kC2C:
      RETURN_IF_ERROR(AnswerC2C(request, start, result));
      break;
    case PipelineMode::kTextToText:
      RETURN_IF_ERROR(AnswerTextToText(request, start, result));
      break;
  }
  result.timings.total_seconds = SecondsSince(start);
  return result;
}

absl::Status C2cPipeline::Finish(ReceiverSession& session, bool sharer_text,
                                 const PipelineRequest& request,
                                 TimePoint start,
                                 PipelineResult& result) const {
  if (!session.prefilled()) RETURN_IF_ERROR(session.Prefill());
  for (int t : session.fused_length() > 0 ? request.capture_layers
                                          : std::vector<int>()) {
    ASSIGN_OR_RETURN(auto kv,
                     session.cache().Read(t, 0, session.fused_length()));
    RETURN_IF_ERROR(Guarded("capture", [&]() -> absl::Status {
      result.captured[t] = {kv.first.clone(), kv.second.clone()};
      return absl::OkStatus();
    }));
  }
  TokenCallback on_token = [&](int64_t index, int64_t token) {
    if (index == 0) {
      result.timings.time_to_first_token_seconds = SecondsSince(start);
    }
    if (request.on_token) request.on_token(index, token);
  };
  ASSIGN_OR_RETURN(GenerationResult g,
                   session.Generate(request.generation, on_token));
  result.token_ids = std::move(g.tokens);
  result.finish_reason = g.finish_reason;
  result.text = sharer_text ? receiver_->DecodeSharerText(result.token_ids)
                            : receiver_->DecodeText(result.token_ids,
                                                    /*strip_newlines=*/true);
  result.timings.generation_seconds = session.timings().generation_seconds;
  return absl::OkStatus();
}

absl::Status C2cPipeline::AnswerAlone(const PipelineRequest& request,
                                      bool sharer, TimePoint start,
                                      PipelineResult& result) const {
  if (sharer && sharer_ == nullptr) {
    return absl::FailedPreconditionError("no sharer model is loaded");
  }
  const Decoder* model = sharer ? &sharer_->model() : &receiver_->model();
  auto t0 = Clock::now();
  ASSIGN_OR_RETURN(result.prompt_ids, PromptFor(sharer, request));
  result.timings.tokenize_seconds = SecondsSince(t0);
  ASSIGN_OR_RETURN(auto session,
                   ReceiverSession::Create(model, nullptr, result.prompt_ids,
                                           request.generation.max_new_tokens));
  RETURN_IF_ERROR(session->Prefill());
  (sharer ? result.timings.sharer_prefill_seconds
          : result.timings.receiver_prefill_seconds) =
      session->timings().prefill_seconds;
  return Finish(*session, sharer, request, start, result);
}

absl::Status C2cPipeline::AnswerC2C(const PipelineRequest& request,
                                    TimePoint start,
                                    PipelineResult& result) const {
  if (sharer_ == nullptr || fuser() == nullptr) {
    return absl::FailedPreconditionError(
        "C2C needs a sharer and a fuser (sharer_dir, fuser_dir)");
  }
  auto t0 = Clock::now();
  PromptPlan plan;
  if (!request.prompt_ids.empty() || !receiver_->info().token_alignment) {
    if (!request.prompt_ids.empty() && receiver_->info().token_alignment) {
      return absl::InvalidArgumentError(
          "token alignment needs chat messages, not prompt_ids");
    }
    ASSIGN_OR_RETURN(std::vector<int64_t> ids, PromptFor(false, request));
    plan = SameVocabularyPlan(std::move(ids));
  } else {
    ASSIGN_OR_RETURN(plan, receiver_->PlanC2C(request.messages));
  }
  result.prompt_ids = plan.receiver_ids;
  result.timings.tokenize_seconds = SecondsSince(t0);
  PipelineTimings& times = result.timings;
  ASSIGN_OR_RETURN(
      auto session,
      receiver_->NewSession(std::move(plan), request.generation.max_new_tokens,
                            /*fuse=*/true));
  if (!session->share_positions().empty() &&
      request.selection != SelectionStrategy::kSpec) {
    return absl::InvalidArgumentError(
        "token alignment: the guided selection strategies read the "
        "receiver's cache at the sharer's indices; use the spec's selection");
  }
  RETURN_IF_ERROR(session->Prefill());
  times.receiver_prefill_seconds = session->timings().prefill_seconds;
  const int64_t total = session->fused_length();
  if (total == 0) {  // A one-token prompt: nothing to fuse.
    return Finish(*session, false, request, start, result);
  }
  const uint32_t T = static_cast<uint32_t>(total);

  // The sharer's cache, when something needs it before streaming.
  KvCache sharer_cache;
  auto prefill_sharer = [&]() -> absl::Status {
    if (sharer_cache.defined()) return absl::OkStatus();
    const auto s0 = Clock::now();
    ASSIGN_OR_RETURN(sharer_cache, sharer_->model().NewCache(total));
    auto logits =
        session->share_positions().empty()
            ? sharer_->model().Prefill(session->share_token_ids(), sharer_cache,
                                       nullptr, LogitsMode::kNone)
            : sharer_->model().PrefillAt(
                  session->share_token_ids(), session->share_positions(),
                  sharer_cache, nullptr, LogitsMode::kNone);
    times.sharer_prefill_seconds += SecondsSince(s0);
    return logits.status();
  };
  auto receiver_kv =
      [&](int t) -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
    return session->cache().Read(t, 0, total);
  };

  v1::TransferSpec spec = request.spec;
  const auto sel0 = Clock::now();
  switch (request.selection) {
    case SelectionStrategy::kSpec:
      break;
    case SelectionStrategy::kReceiverAttention:
    case SelectionStrategy::kReceiverVNorm: {
      ASSIGN_OR_RETURN(
          *spec.mutable_selection(),
          session->GuidedSelection(
              spec.selection(),
              request.selection == SelectionStrategy::kReceiverAttention
                  ? ReceiverSignal::kAttention
                  : ReceiverSignal::kValueNorm));
      break;
    }
    case SelectionStrategy::kProjVNormTopK:
    case SelectionStrategy::kDeltaProjVNormTopK: {
      const bool delta =
          request.selection == SelectionStrategy::kDeltaProjVNormTopK;
      RETURN_IF_ERROR(prefill_sharer());
      std::map<int, std::pair<at::Tensor, at::Tensor>> quantized;
      if (delta) {
        // The sharer's KV as the requested scheme delivers it, every token
        // and layer (scales over the whole prompt, as the prototype).
        v1::TransferSpec full = spec;
        full.clear_selection();
        full.clear_layers();
        full.clear_max_payload_bytes();
        KvStreamDecoder dec(receiver().dtype(), receiver().device());
        CallbackChunkSink sink([&](v1::KvChunk chunk) -> absl::Status {
          ASSIGN_OR_RETURN(auto d, dec.Consume(chunk));
          if (d.has_value()) {
            quantized[static_cast<int>(d->layer)] = {d->keys, d->values};
          }
          return absl::OkStatus();
        });
        RETURN_IF_ERROR(sharer_->ShareFromCache(
            sharer_cache,
            ShareRequestFor(session->share_token_ids(), full,
                            request.request_id + "-scores"),
            sink));
      }
      auto sharer_kv =
          [&](int s) -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
        if (delta) {
          auto it = quantized.find(s);
          if (it == quantized.end()) {
            return absl::InternalError(
                absl::StrCat("sharer layer ", s, " was not quantized"));
          }
          return it->second;
        }
        return sharer_cache.Read(s, 0, total);
      };
      ASSIGN_OR_RETURN(
          at::Tensor scores,
          ProjectorSelectionScores(*fuser(), sharer_kv, receiver_kv, delta));
      ASSIGN_OR_RETURN(
          *spec.mutable_selection(),
          ExplicitSelectionFromScores(spec.selection(), T, scores));
      break;
    }
  }
  times.selection_seconds =
      request.selection == SelectionStrategy::kSpec ? 0.0 : SecondsSince(sel0);

  if (request.direct_transfer) {
    RETURN_IF_ERROR(prefill_sharer());
    std::vector<uint32_t> all(T);
    std::iota(all.begin(), all.end(), 0u);
    for (int s : fuser()->SharerLayersNeeded()) {
      ASSIGN_OR_RETURN(auto kv, sharer_cache.Read(s, 0, total));
      DecodedLayer layer;
      layer.layer = static_cast<uint32_t>(s);
      layer.token_indices = all;
      layer.keys = kv.first;
      layer.values = kv.second;
      RETURN_IF_ERROR(session->AddLayer(std::move(layer)).status());
    }
  } else {
    // The local chunk sink: the sharer engine's chunks straight into the
    // receiver's session (decoded and fused there, as over the network).
    CallbackChunkSink sink([&](v1::KvChunk chunk) -> absl::Status {
      return session->AddChunk(chunk);
    });
    RestrictSelectionToFusedTokens(session->plan(), spec);
    const v1::ShareRequest share =
        ShareRequestFor(session->share_token_ids(), spec, request.request_id,
                        session->share_positions());
    RETURN_IF_ERROR(ValidateShareRequest(share, sharer_->info()));
    ShareReport report;
    if (sharer_cache.defined()) {
      RETURN_IF_ERROR(
          sharer_->ShareFromCache(sharer_cache, share, sink, &report));
    } else {
      RETURN_IF_ERROR(sharer_->Share(share, sink, &report));
      times.sharer_prefill_seconds += report.compute_seconds;
    }
    ASSIGN_OR_RETURN(ReceivedStream stream, session->FinishStream());
    times.encode_seconds = report.encode_seconds;
    TransferSummary summary;
    summary.spec = stream.header.spec();
    const v1::TransferStats& ts = stream.trailer;
    summary.raw_kv_bytes = ts.raw_bytes();
    summary.payload_bytes = ts.payload_bytes();
    summary.scale_bytes = ts.scale_bytes();
    summary.index_bytes = ts.index_bytes();
    summary.header_bytes = ts.header_bytes();
    summary.tokens_sent = ts.selected_tokens();
    summary.trailer_bytes =
        static_cast<uint64_t>(report.serialized_bytes) - ts.serialized_bytes();
    summary.serialized_bytes = static_cast<uint64_t>(report.serialized_bytes);
    summary.chunks = static_cast<uint64_t>(report.messages);
    summary.prompt_tokens = stream.header.token_count();
    summary.layers_sent = static_cast<uint32_t>(stream.header.layers_size());
    summary.selected = session->received();
    result.transfer = std::move(summary);
  }
  times.decode_seconds = session->timings().decode_seconds;
  times.fuse_seconds = session->timings().fuse_seconds;
  result.fused_layers = session->FusedLayers();
  return Finish(*session, false, request, start, result);
}

absl::Status C2cPipeline::AnswerTextToText(const PipelineRequest& request,
                                           TimePoint start,
                                           PipelineResult& result) const {
  if (sharer_ == nullptr) {
    return absl::FailedPreconditionError("text-to-text needs a sharer");
  }
  if (request.messages.empty()) {
    return absl::InvalidArgumentError(
        "text-to-text needs chat messages (not prompt_ids)");
  }
  std::string question = request.background_question;
  if (question.empty()) {
    for (auto it = request.messages.rbegin(); it != request.messages.rend();
         ++it) {
      if (it->role == "user") {
        question = it->content;
        break;
      }
    }
  }
  if (question.empty()) {
    return absl::InvalidArgumentError("text-to-text: no user message");
  }
  const std::string background_prompt = absl::StrReplaceAll(
      options_.text_to_text_prompt, {{"{question}", question}});
  const std::vector<ChatMessage> sharer_messages = {
      ChatMessage{"user", background_prompt, std::nullopt}};
  auto t0 = Clock::now();
  ASSIGN_OR_RETURN(std::vector<int64_t> sharer_ids,
                   receiver_->RenderSharerPrompt(sharer_messages));
  result.timings.tokenize_seconds += SecondsSince(t0);
  // The sharer service's Generate, in process: greedy background tokens.
  v1::GenerateRequest background;
  background.set_request_id(request.request_id);
  for (int64_t id : sharer_ids) {
    background.add_token_ids(static_cast<uint32_t>(id));
  }
  background.mutable_generation()->set_max_new_tokens(
      static_cast<uint32_t>(options_.text_to_text_max_new_tokens));
  const auto g0 = Clock::now();
  ASSIGN_OR_RETURN(v1::GenerateResponse bg, sharer_->Generate(background, [] {
    return absl::OkStatus();
  }));
  result.timings.sharer_prefill_seconds = bg.prefill_seconds();
  result.timings.sharer_generation_seconds = SecondsSince(g0);
  result.background_ids.assign(bg.token_ids().begin(), bg.token_ids().end());
  result.background_text = receiver_->DecodeSharerText(result.background_ids);

  std::vector<ChatMessage> messages = {
      ChatMessage{"user", background_prompt, std::nullopt},
      ChatMessage{"assistant", result.background_text, std::nullopt}};
  messages.insert(messages.end(), request.messages.begin(),
                  request.messages.end());
  t0 = Clock::now();
  ASSIGN_OR_RETURN(result.prompt_ids, receiver_->RenderPrompt(messages));
  result.timings.tokenize_seconds += SecondsSince(t0);
  ASSIGN_OR_RETURN(auto session,
                   receiver_->NewSession(result.prompt_ids,
                                         request.generation.max_new_tokens,
                                         /*fuse=*/false));
  RETURN_IF_ERROR(session->Prefill());
  result.timings.receiver_prefill_seconds = session->timings().prefill_seconds;
  return Finish(*session, false, request, start, result);
}

}  // namespace kvwire
