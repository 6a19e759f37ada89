#include "common/pipeline/pipeline.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstdio>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "common/file_util.h"
#include "common/model/model_fingerprint.h"
#include "common/model/safetensors.h"
#include "common/status_macros.h"

#ifdef KVWIRE_WITH_CUDA
#include "common/fuser/cuda_graph_fuser.h"
#include "common/model/cuda_graph_decoder.h"
#endif

namespace kvwire {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string Basename(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  const size_t slash = d.rfind('/');
  return slash == std::string::npos ? d : d.substr(slash + 1);
}

v1::DType WireDType(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return v1::DTYPE_BF16;
    case at::kHalf:
      return v1::DTYPE_FP16;
    case at::kFloat:
      return v1::DTYPE_FP32;
    default:
      return v1::DTYPE_UNSPECIFIED;
  }
}

// Drives a KvStreamEncoder: `produce` feeds every layer (as a prefill
// callback or from a cache) through `add_layer`.
absl::StatusOr<ShareStats> RunShare(
    const v1::ModelInfo& model, uint32_t total_tokens,
    const v1::TransferSpec& spec, const std::string& request_id,
    const ChunkSink& sink,
    const std::function<absl::Status(
        const std::function<absl::Status(uint32_t, const at::Tensor&,
                                         const at::Tensor&)>& add_layer,
        double* compute_seconds)>& produce) {
  if (total_tokens == 0) return absl::InvalidArgumentError("empty prompt");
  ASSIGN_OR_RETURN(auto encoder, KvStreamEncoder::Create(model, total_tokens,
                                                         spec, request_id));
  ShareStats stats;
  stats.plan = encoder->plan();
  std::vector<v1::KvChunk> out;
  auto flush = [&]() -> absl::Status {
    for (v1::KvChunk& chunk : out) {
      stats.stream_bytes += static_cast<int64_t>(chunk.ByteSizeLong());
      ++stats.chunks;
      const auto start = Clock::now();
      absl::Status s = sink(std::move(chunk));
      stats.sink_seconds += SecondsSince(start);
      RETURN_IF_ERROR(s);
    }
    out.clear();
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(encoder->Start(&out));
  RETURN_IF_ERROR(flush());
  double callback_seconds = 0;
  auto add_layer = [&](uint32_t layer, const at::Tensor& k,
                       const at::Tensor& v) -> absl::Status {
    const auto start = Clock::now();
    absl::Status s = encoder->AddLayer(layer, k, v, &out);
    if (s.ok()) s = flush();
    callback_seconds += SecondsSince(start);
    return s;
  };
  double compute = 0;
  RETURN_IF_ERROR(produce(add_layer, &compute));
  stats.prefill_seconds = std::max(0.0, compute - callback_seconds);
  ASSIGN_OR_RETURN(v1::KvChunk trailer, encoder->Finish(stats.prefill_seconds));
  out.push_back(std::move(trailer));
  RETURN_IF_ERROR(flush());
  stats.encode_seconds = encoder->encode_seconds();
  return stats;
}

std::string StripNewlines(std::string s) {
  const size_t b = s.find_first_not_of('\n');
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of('\n');
  return s.substr(b, e - b + 1);
}

}  // namespace

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

// ------------------------------------------------------------ sharer half

v1::ModelInfo DescribeModel(const Decoder& decoder,
                            const std::string& model_dir) {
  const ModelConfig& c = decoder.config();
  v1::ModelInfo m;
  m.set_architecture(c.architecture.empty() ? ArchitectureName(c.arch)
                                            : c.architecture);
  m.set_name(model_dir.empty() ? c.model_type : Basename(model_dir));
  m.set_num_layers(static_cast<uint32_t>(c.num_hidden_layers));
  m.set_num_kv_heads(static_cast<uint32_t>(c.num_key_value_heads));
  m.set_head_dim(static_cast<uint32_t>(c.head_dim));
  m.set_dtype(WireDType(decoder.dtype()));
  m.set_vocab_size(static_cast<uint32_t>(c.vocab_size));
  m.set_max_position_embeddings(
      static_cast<uint32_t>(c.max_position_embeddings));
  // The sharer service's definition, so in-process and networked streams of
  // one checkpoint carry the same fingerprint.
  auto fingerprint = model_dir.empty()
                         ? absl::StatusOr<std::string>(absl::NotFoundError(""))
                         : CheckpointFingerprint(model_dir);
  m.set_fingerprint(fingerprint.ok()
                        ? *fingerprint
                        : ModelFingerprint(ModelConfigToJson(c), {}));
  return m;
}

absl::StatusOr<ShareStats> ShareKv(const Decoder& sharer,
                                   const v1::ModelInfo& model,
                                   absl::Span<const int64_t> token_ids,
                                   const v1::TransferSpec& spec,
                                   const std::string& request_id,
                                   const ChunkSink& sink) {
  const uint32_t total = static_cast<uint32_t>(token_ids.size());
  return RunShare(
      model, total, spec, request_id, sink,
      [&](const auto& add_layer, double* compute) -> absl::Status {
        ASSIGN_OR_RETURN(KvCache cache, sharer.NewCache(total));
        LayerCallback on_layer = [&](const LayerKv& kv) -> absl::Status {
          return add_layer(static_cast<uint32_t>(kv.layer), kv.keys, kv.values);
        };
        const auto start = Clock::now();
        auto logits =
            sharer.Prefill(token_ids, cache, on_layer, LogitsMode::kNone);
        *compute = SecondsSince(start);
        return logits.status();
      });
}

absl::StatusOr<ShareStats> ShareKvFromCache(const KvCache& cache,
                                            const v1::ModelInfo& model,
                                            uint32_t total_tokens,
                                            const v1::TransferSpec& spec,
                                            const std::string& request_id,
                                            const ChunkSink& sink) {
  return RunShare(model, total_tokens, spec, request_id, sink,
                  [&](const auto& add_layer, double* compute) -> absl::Status {
                    for (int64_t l = 0; l < cache.num_layers(); ++l) {
                      ASSIGN_OR_RETURN(auto kv, cache.Read(l, 0, total_tokens));
                      RETURN_IF_ERROR(add_layer(static_cast<uint32_t>(l),
                                                kv.first, kv.second));
                    }
                    *compute = 0;
                    return absl::OkStatus();
                  });
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
  if (options.receiver_dir.empty()) {
    return absl::InvalidArgumentError("receiver_dir is required");
  }
  if (!options.fuser_dir.empty() && options.sharer_dir.empty()) {
    return absl::InvalidArgumentError("a fuser needs a sharer (sharer_dir)");
  }
  std::unique_ptr<C2cPipeline> p(new C2cPipeline());
  p->options_ = options;
  ASSIGN_OR_RETURN(p->receiver_,
                   Decoder::Load(options.receiver_dir, options.receiver));
#ifdef KVWIRE_WITH_CUDA
  // Prompt prefills and batch-1 decode steps replay CUDA graphs
  // (KVWIRE_CUDA_GRAPH_PREFILL=0 / KVWIRE_CUDA_GRAPH_DECODE=0: off).
  RETURN_IF_ERROR(InstallCudaGraphAccelerators(*p->receiver_));
#endif
  if (!options.sharer_dir.empty()) {
    ASSIGN_OR_RETURN(p->sharer_,
                     Decoder::Load(options.sharer_dir, options.sharer));
#ifdef KVWIRE_WITH_CUDA
    RETURN_IF_ERROR(InstallCudaGraphAccelerators(*p->sharer_));
#endif
    p->sharer_info_ = DescribeModel(*p->sharer_, options.sharer_dir);
  }
  if (!options.fuser_dir.empty()) {
    const ModelConfig& rc = p->receiver_->config();
    const ModelConfig& sc = p->sharer_->config();
    FuserOptions fo = options.fuser;
    fo.projector.dtype = options.fuser_dtype == at::ScalarType::Undefined
                             ? p->receiver_->dtype()
                             : options.fuser_dtype;
    fo.projector.device = p->receiver_->device();
    fo.receiver_layers = static_cast<int>(rc.num_hidden_layers);
    fo.sharer_layers = static_cast<int>(sc.num_hidden_layers);
    ASSIGN_OR_RETURN(p->fuser_, C2CFuser::Load(options.fuser_dir, fo));
#ifdef KVWIRE_WITH_CUDA
    // Fusion replays CUDA graphs (KVWIRE_CUDA_GRAPH_FUSE=0: off).
    InstallCudaGraphFuser(*p->fuser_);
#endif
    RETURN_IF_ERROR(p->fuser_->CheckModels(
        fo.receiver_layers, rc.num_key_value_heads, rc.head_dim,
        fo.sharer_layers, sc.num_key_value_heads, sc.head_dim));
  }
  // Tokenizers and chat templates.
  const std::string tok_dir = options.tokenizer_dir.empty()
                                  ? options.receiver_dir
                                  : options.tokenizer_dir;
  if (IsRegularFile(tok_dir + "/tokenizer.json")) {
    ASSIGN_OR_RETURN(p->tokenizer_, Tokenizer::FromDirectory(tok_dir));
    p->receiver_text_.tokenizer = p->tokenizer_.get();
    if (!p->tokenizer_->chat_template().empty()) {
      ASSIGN_OR_RETURN(ChatTemplate t,
                       ChatTemplate::FromTokenizer(*p->tokenizer_));
      p->receiver_text_.chat_template = std::move(t);
    }
  } else if (!options.tokenizer_dir.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no tokenizer.json in ", options.tokenizer_dir));
  }
  p->sharer_text_ = p->receiver_text_;
  const std::string sharer_tok_dir = options.sharer_tokenizer_dir.empty()
                                         ? options.sharer_dir
                                         : options.sharer_tokenizer_dir;
  if (!sharer_tok_dir.empty()) {
    if (IsRegularFile(sharer_tok_dir + "/tokenizer.json")) {
      ASSIGN_OR_RETURN(p->sharer_tokenizer_,
                       Tokenizer::FromDirectory(sharer_tok_dir));
      p->sharer_text_.tokenizer = p->sharer_tokenizer_.get();
      if (!p->sharer_tokenizer_->chat_template().empty()) {
        ASSIGN_OR_RETURN(ChatTemplate t,
                         ChatTemplate::FromTokenizer(*p->sharer_tokenizer_));
        p->sharer_text_.chat_template = std::move(t);
      }
    } else if (IsRegularFile(sharer_tok_dir + "/tokenizer_config.json")) {
      // Same vocabulary (C2C's pairs share it), the sharer's own template.
      auto t = ChatTemplate::FromTokenizerConfigFile(sharer_tok_dir +
                                                     "/tokenizer_config.json");
      if (t.ok()) p->sharer_text_.chat_template = *std::move(t);
    } else if (!options.sharer_tokenizer_dir.empty()) {
      return absl::NotFoundError(
          absl::StrCat("no tokenizer.json in ", options.sharer_tokenizer_dir));
    }
  }
  return p;
}

// -------------------------------------------------------------- text side

absl::StatusOr<std::vector<int64_t>> C2cPipeline::Render(
    const TextModel& model, absl::Span<const ChatMessage> messages) const {
  if (model.tokenizer == nullptr || !model.chat_template.has_value()) {
    return absl::FailedPreconditionError(
        "no tokenizer with a chat template is loaded: give prompt_ids");
  }
  ChatTemplateOptions o;
  o.add_generation_prompt = true;
  o.enable_thinking = false;
  ASSIGN_OR_RETURN(std::string text, model.chat_template->Apply(messages, o));
  // The template carries any BOS itself.
  const std::vector<uint32_t> ids =
      model.tokenizer->Encode(text, /*add_special_tokens=*/false);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::string C2cPipeline::DecodeText(const TextModel& model,
                                    absl::Span<const int64_t> ids) const {
  if (model.tokenizer == nullptr) return "";
  std::vector<uint32_t> u;
  u.reserve(ids.size());
  for (int64_t id : ids) {
    if (id >= 0) u.push_back(static_cast<uint32_t>(id));
  }
  return StripNewlines(
      model.tokenizer->Decode(u, /*skip_special_tokens=*/true));
}

absl::StatusOr<std::vector<int64_t>> C2cPipeline::ReceiverPrompt(
    absl::Span<const ChatMessage> messages) const {
  return Render(receiver_text_, messages);
}

absl::StatusOr<std::vector<int64_t>> C2cPipeline::PromptFor(
    const TextModel& model, const PipelineRequest& request) const {
  if (!request.prompt_ids.empty()) return request.prompt_ids;
  if (request.messages.empty()) {
    return absl::InvalidArgumentError("request has no messages or prompt_ids");
  }
  return Render(model, request.messages);
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

absl::Status C2cPipeline::Finish(ReceiverSession& session,
                                 const TextModel& text,
                                 const PipelineRequest& request,
                                 TimePoint start,
                                 PipelineResult& result) const {
  if (!session.prefilled()) RETURN_IF_ERROR(session.Prefill());
  for (int t : session.fused_length() > 0 ? request.capture_layers
                                          : std::vector<int>()) {
    ASSIGN_OR_RETURN(auto kv,
                     session.cache().Read(t, 0, session.fused_length()));
    try {
      result.captured[t] = {kv.first.clone(), kv.second.clone()};
    } catch (const c10::Error& e) {
      return absl::InternalError(e.what_without_backtrace());
    }
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
  result.text = DecodeText(text, result.token_ids);
  result.timings.generation_seconds = session.timings().generation_seconds;
  return absl::OkStatus();
}

absl::Status C2cPipeline::AnswerAlone(const PipelineRequest& request,
                                      bool sharer, TimePoint start,
                                      PipelineResult& result) const {
  if (sharer && sharer_ == nullptr) {
    return absl::FailedPreconditionError("no sharer model is loaded");
  }
  const TextModel& text = sharer ? sharer_text_ : receiver_text_;
  const Decoder* model = sharer ? sharer_.get() : receiver_.get();
  auto t0 = Clock::now();
  ASSIGN_OR_RETURN(result.prompt_ids, PromptFor(text, request));
  result.timings.tokenize_seconds = SecondsSince(t0);
  ASSIGN_OR_RETURN(auto session,
                   ReceiverSession::Create(model, nullptr, result.prompt_ids,
                                           request.generation.max_new_tokens));
  RETURN_IF_ERROR(session->Prefill());
  (sharer ? result.timings.sharer_prefill_seconds
          : result.timings.receiver_prefill_seconds) =
      session->timings().prefill_seconds;
  return Finish(*session, text, request, start, result);
}

absl::Status C2cPipeline::AnswerC2C(const PipelineRequest& request,
                                    TimePoint start,
                                    PipelineResult& result) const {
  if (sharer_ == nullptr || fuser_ == nullptr) {
    return absl::FailedPreconditionError(
        "C2C needs a sharer and a fuser (sharer_dir, fuser_dir)");
  }
  auto t0 = Clock::now();
  ASSIGN_OR_RETURN(result.prompt_ids, PromptFor(receiver_text_, request));
  result.timings.tokenize_seconds = SecondsSince(t0);
  PipelineTimings& times = result.timings;
  ASSIGN_OR_RETURN(
      auto session,
      ReceiverSession::Create(receiver_.get(), fuser_.get(), result.prompt_ids,
                              request.generation.max_new_tokens));
  RETURN_IF_ERROR(session->Prefill());
  times.receiver_prefill_seconds = session->timings().prefill_seconds;
  const int64_t total = session->fused_length();
  if (total == 0) {  // A one-token prompt: nothing to fuse.
    return Finish(*session, receiver_text_, request, start, result);
  }
  const uint32_t T = static_cast<uint32_t>(total);

  // The sharer's cache, when something needs it before streaming.
  KvCache sharer_cache;
  auto prefill_sharer = [&]() -> absl::Status {
    if (sharer_cache.defined()) return absl::OkStatus();
    const auto s0 = Clock::now();
    ASSIGN_OR_RETURN(sharer_cache, sharer_->NewCache(total));
    auto logits = sharer_->Prefill(session->share_token_ids(), sharer_cache,
                                   nullptr, LogitsMode::kNone);
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
          at::Tensor scores,
          session->GuidedScores(request.selection ==
                                        SelectionStrategy::kReceiverAttention
                                    ? ReceiverSignal::kAttention
                                    : ReceiverSignal::kValueNorm));
      ASSIGN_OR_RETURN(
          *spec.mutable_selection(),
          ExplicitSelectionFromScores(spec.selection(), T, scores));
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
        KvStreamDecoder dec(receiver_->dtype(), receiver_->device());
        ChunkSink sink = [&](v1::KvChunk chunk) -> absl::Status {
          ASSIGN_OR_RETURN(auto d, dec.Consume(chunk));
          if (d.has_value()) {
            quantized[static_cast<int>(d->layer)] = {d->keys, d->values};
          }
          return absl::OkStatus();
        };
        RETURN_IF_ERROR(ShareKvFromCache(sharer_cache, sharer_info_, T, full,
                                         request.request_id + "-scores", sink)
                            .status());
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
          ProjectorSelectionScores(*fuser_, sharer_kv, receiver_kv, delta));
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
    for (int s : fuser_->SharerLayersNeeded()) {
      ASSIGN_OR_RETURN(auto kv, sharer_cache.Read(s, 0, total));
      DecodedLayer layer;
      layer.layer = static_cast<uint32_t>(s);
      layer.token_indices = all;
      layer.keys = kv.first;
      layer.values = kv.second;
      RETURN_IF_ERROR(session->AddLayer(std::move(layer)).status());
    }
  } else {
    ChunkSink sink = [&](v1::KvChunk chunk) -> absl::Status {
      return session->AddChunk(chunk);
    };
    ShareStats stats;
    if (sharer_cache.defined()) {
      ASSIGN_OR_RETURN(stats, ShareKvFromCache(sharer_cache, sharer_info_, T,
                                               spec, request.request_id, sink));
    } else {
      ASSIGN_OR_RETURN(
          stats, ShareKv(*sharer_, sharer_info_, session->share_token_ids(),
                         spec, request.request_id, sink));
      times.sharer_prefill_seconds += stats.prefill_seconds;
    }
    RETURN_IF_ERROR(session->FinishStream());
    times.encode_seconds = stats.encode_seconds;
    const KvStreamDecoder& stream = session->stream();
    TransferSummary summary;
    summary.spec = stream.header().spec();
    if (stream.stats().has_value()) {
      const v1::TransferStats& ts = *stream.stats();
      summary.raw_kv_bytes = ts.raw_bytes();
      summary.payload_bytes = ts.payload_bytes();
      summary.scale_bytes = ts.scale_bytes();
      summary.index_bytes = ts.index_bytes();
      summary.header_bytes = ts.header_bytes();
      summary.tokens_sent = ts.selected_tokens();
      summary.trailer_bytes =
          static_cast<uint64_t>(stats.stream_bytes) - ts.serialized_bytes();
    }
    summary.serialized_bytes = static_cast<uint64_t>(stats.stream_bytes);
    summary.chunks = static_cast<uint64_t>(stats.chunks);
    summary.prompt_tokens = stream.header().token_count();
    summary.layers_sent = static_cast<uint32_t>(stream.header().layers_size());
    summary.selected = session->received();
    result.transfer = std::move(summary);
  }
  times.decode_seconds = session->timings().decode_seconds;
  times.fuse_seconds = session->timings().fuse_seconds;
  result.fused_layers = session->FusedLayers();
  return Finish(*session, receiver_text_, request, start, result);
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
                   Render(sharer_text_, sharer_messages));
  result.timings.tokenize_seconds += SecondsSince(t0);
  ASSIGN_OR_RETURN(
      auto sharer_session,
      ReceiverSession::Create(sharer_.get(), nullptr, sharer_ids,
                              options_.text_to_text_max_new_tokens));
  RETURN_IF_ERROR(sharer_session->Prefill());
  GenerationOptions background;
  background.max_new_tokens = options_.text_to_text_max_new_tokens;
  const auto g0 = Clock::now();
  ASSIGN_OR_RETURN(GenerationResult bg, sharer_session->Generate(background));
  result.timings.sharer_prefill_seconds =
      sharer_session->timings().prefill_seconds;
  result.timings.sharer_generation_seconds = SecondsSince(g0);
  result.background_ids = bg.tokens;
  result.background_text = DecodeText(sharer_text_, bg.tokens);

  std::vector<ChatMessage> messages = {
      ChatMessage{"user", background_prompt, std::nullopt},
      ChatMessage{"assistant", result.background_text, std::nullopt}};
  messages.insert(messages.end(), request.messages.begin(),
                  request.messages.end());
  t0 = Clock::now();
  ASSIGN_OR_RETURN(result.prompt_ids, Render(receiver_text_, messages));
  result.timings.tokenize_seconds += SecondsSince(t0);
  ASSIGN_OR_RETURN(
      auto session,
      ReceiverSession::Create(receiver_.get(), nullptr, result.prompt_ids,
                              request.generation.max_new_tokens));
  RETURN_IF_ERROR(session->Prefill());
  result.timings.receiver_prefill_seconds = session->timings().prefill_seconds;
  return Finish(*session, receiver_text_, request, start, result);
}

}  // namespace kvwire
