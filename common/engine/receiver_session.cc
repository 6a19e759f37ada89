#include "common/engine/receiver_session.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/codec/kv_codec.h"
#include "common/codec/token_selection.h"
#include "common/engine/selection.h"
#include "common/fuser/fuser.h"
#include "common/model/decoder.h"
#include "common/protocol/generation_params.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {

const char* ReceiverSignalName(ReceiverSignal signal) {
  return signal == ReceiverSignal::kAttention ? "attention" : "vnorm";
}

absl::StatusOr<ReceiverSignal> ParseReceiverSignal(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "attention") return ReceiverSignal::kAttention;
  if (n == "vnorm" || n == "value_norm") return ReceiverSignal::kValueNorm;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown receiver signal '", name, "' (attention, vnorm)"));
}

absl::StatusOr<FusionSchedule> ParseFusionSchedule(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "when_complete") return FusionSchedule::kWhenComplete;
  if (n == "on_arrival") return FusionSchedule::kOnArrival;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown fusion schedule '", name, "' (when_complete, on_arrival)"));
}

absl::Status CheckFuserFitsReceiver(const C2CFuser& fuser,
                                    const Decoder& receiver) {
  const ModelConfig& c = receiver.config();
  for (int t : fuser.FusedReceiverLayers()) {
    const C2CProjectorArgs& a = fuser.ProjectorFor(t)->args();
    if (t >= c.num_hidden_layers ||
        a.target_num_heads != c.num_key_value_heads ||
        a.target_dim != c.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "fuser: receiver layer ", t, " writes ", a.target_num_heads, "x",
          a.target_dim, " but the receiver has ", c.num_hidden_layers,
          " layers of ", c.num_key_value_heads, "x", c.head_dim));
    }
  }
  return absl::OkStatus();
}

void ReceiverSession::Trace(const char* track, std::string name,
                            Clock::time_point start) const {
  if (trace_ == nullptr) return;
  const at::Tensor& storage = cache_->storage();
  if (storage.defined() && storage.is_cuda()) {
    // A one-element copy to the host waits for the stream's work so far (the
    // storage may be a strided slot of a pool: no view(-1)). Tracing is best
    // effort: a failure leaves the event unsynchronized.
    (void)Guarded("trace sync", [&]() -> absl::Status {
      (void)storage.as_strided({1}, {1}).to(at::kCPU);
      return absl::OkStatus();
    });
  }
  trace_->Add(track, std::move(name), start, Clock::now());
}

ReceiverSession::ReceiverSession(const Decoder* receiver, const C2CFuser* fuser,
                                 PromptPlan plan,
                                 std::unique_ptr<KvCache> cache,
                                 SharerModelCheck check_sharer)
    : receiver_(receiver),
      fuser_(fuser),
      plan_(std::move(plan)),
      fused_length_(static_cast<int64_t>(plan_.sharer_ids.size())),
      cache_(std::move(cache)),
      check_sharer_(std::move(check_sharer)),
      stream_(std::make_unique<KvStreamDecoder>(receiver->dtype(),
                                                receiver->device())) {
  // SameVocabularyPlan's shape: one stage of L - 1 tokens, j fused into j.
  same_vocabulary_ =
      plan_.receiver_positions.empty() && plan_.sharer_positions.empty() &&
      plan_.stage_ends.size() == 1 && plan_.stage_ends[0] == fused_length_ &&
      fused_length_ ==
          std::max<int64_t>(static_cast<int64_t>(plan_.receiver_ids.size()) - 1,
                            0);
  for (int64_t j = 0; same_vocabulary_ && j < fused_length_; ++j) {
    same_vocabulary_ =
        plan_.fuse_into[j] == j && plan_.sharer_ids[j] == plan_.receiver_ids[j];
  }
}

ReceiverSession::~ReceiverSession() = default;

absl::StatusOr<std::unique_ptr<ReceiverSession>> ReceiverSession::Create(
    const Decoder* receiver, const C2CFuser* fuser,
    std::vector<int64_t> prompt_ids, int64_t max_new_tokens,
    SharerModelCheck check_sharer) {
  if (prompt_ids.empty()) {
    return absl::InvalidArgumentError("empty prompt");
  }
  return Create(receiver, fuser, SameVocabularyPlan(std::move(prompt_ids)),
                max_new_tokens, std::move(check_sharer));
}

absl::StatusOr<std::unique_ptr<ReceiverSession>> ReceiverSession::Create(
    const Decoder* receiver, const C2CFuser* fuser, PromptPlan plan,
    int64_t max_new_tokens, SharerModelCheck check_sharer) {
  if (receiver == nullptr) {
    return absl::InvalidArgumentError("ReceiverSession needs a receiver");
  }
  RETURN_IF_ERROR(ValidatePromptPlan(plan));
  if (max_new_tokens < 0) {
    return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  }
  if (fuser != nullptr)
    RETURN_IF_ERROR(CheckFuserFitsReceiver(*fuser, *receiver));
  int64_t capacity = static_cast<int64_t>(plan.receiver_ids.size()) +
                     std::max<int64_t>(max_new_tokens, 1);
  if (receiver->device().is_cuda()) {
    // CUDA-graph decode steps bake in the cache's address and shape: caches
    // of a few shared capacities let the allocator hand the same storage to
    // later requests, so their steps replay graphs instead of capturing.
    constexpr int64_t kCapacityBucket = 256;
    capacity =
        (capacity + kCapacityBucket - 1) / kCapacityBucket * kCapacityBucket;
  }
  ASSIGN_OR_RETURN(KvCache cache, receiver->NewCache(capacity));
  return std::unique_ptr<ReceiverSession>(new ReceiverSession(
      receiver, fuser, std::move(plan),
      std::make_unique<KvCache>(std::move(cache)), std::move(check_sharer)));
}

absl::StatusOr<at::Tensor> ReceiverSession::PrefillRange(
    int64_t begin, int64_t end, bool logits, const StopCheck& should_stop) {
  if (begin >= end) return at::Tensor();
  LayerCallback check;
  if (should_stop) check = [&](const LayerKv&) { return should_stop(); };
  const auto ids =
      absl::MakeConstSpan(plan_.receiver_ids).subspan(begin, end - begin);
  const LogitsMode mode = logits ? LogitsMode::kLast : LogitsMode::kNone;
  if (plan_.receiver_positions.empty()) {
    return receiver_->Prefill(ids, *cache_, check, mode);
  }
  return receiver_->PrefillAt(
      ids,
      absl::MakeConstSpan(plan_.receiver_positions).subspan(begin, end - begin),
      *cache_, check, mode);
}

void ReceiverSession::StartStageFusionLocked() {
  if (fuser_ == nullptr) return;
  fusion_ = std::make_unique<FusionSession>(
      fuser_,
      [this](int t) -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
        const at::Tensor k = cache_->Keys(t), v = cache_->Values(t);
        if (!k.defined()) {
          return absl::InvalidArgumentError(
              absl::StrCat("receiver has no layer ", t));
        }
        return std::make_pair(k, v);
      });
}

DecodedLayer ReceiverSession::StagePart(const DecodedLayer& layer) const {
  if (same_vocabulary_) return layer;  // One stage; j fuses into j.
  DecodedLayer part;
  part.layer = layer.layer;
  std::vector<int64_t> columns;
  for (size_t c = 0; c < layer.token_indices.size(); ++c) {
    const int64_t r = plan_.fuse_into[layer.token_indices[c]];
    if (r >= stage_begin_ && r < stage_end_) {
      columns.push_back(static_cast<int64_t>(c));
      part.token_indices.push_back(static_cast<uint32_t>(r));
    }
  }
  if (columns.empty()) return part;
  const at::Tensor index =
      at::tensor(columns, at::TensorOptions().dtype(at::kLong))
          .to(layer.keys.device());
  part.keys = layer.keys.index_select(1, index);
  part.values = layer.values.index_select(1, index);
  return part;
}

absl::Status ReceiverSession::Prefill(const StopCheck& should_stop) {
  {
    absl::MutexLock lock(&mu_);
    if (prefill_started_) {
      return absl::FailedPreconditionError("Prefill called twice");
    }
    prefill_started_ = true;
  }
  const auto start = Clock::now();
  const int64_t end = plan_.stage_ends.front();
  RETURN_IF_ERROR(PrefillRange(0, end, /*logits=*/false, should_stop).status());
  Trace("receiver model", absl::StrCat("prefill (", end, " tokens)"), start);
  absl::MutexLock lock(&mu_);
  timings_.prefill_seconds = SecondsSince(start);
  stage_begin_ = 0;
  stage_end_ = end;
  StartStageFusionLocked();
  prefilled_ = true;
  // kWhenComplete decodes and fuses a stream in one call each: not before
  // it has ended.
  if (schedule_ == FusionSchedule::kWhenComplete && stream_->has_header()) {
    if (!stream_->Finish().ok()) return absl::OkStatus();
    RETURN_IF_ERROR(DecodeKeptBlocksLocked());
  }
  return FuseAllHeldLocked();
}

absl::StatusOr<at::Tensor> ReceiverSession::GuidedScores(
    ReceiverSignal signal) {
  absl::MutexLock lock(&mu_);
  if (!prefilled_) {
    return absl::FailedPreconditionError("GuidedScores needs Prefill first");
  }
  if ((fusion_ != nullptr && fusion_->num_fused() > 0) || generating_) {
    return absl::FailedPreconditionError(
        "GuidedScores must come before any fusion or generation");
  }
  if (!same_vocabulary_) {
    return absl::FailedPreconditionError(
        "receiver-guided selection is not available with token alignment "
        "(the receiver's own cache covers only its first section then)");
  }
  if (fused_length_ <= 0) {
    return at::Tensor();
  }
  const auto start = Clock::now();
  const int64_t layers = receiver_->config().num_hidden_layers;
  const int64_t positions = fused_length_;
  at::Tensor sum;
  if (signal == ReceiverSignal::kValueNorm) {
    RETURN_IF_ERROR(Guarded("value-norm scores", [&]() -> absl::Status {
      c10::InferenceMode guard;
      for (int64_t l = 0; l < layers; ++l) {
        const at::Tensor s = TokenNormScores(cache_->Values(l));
        sum = sum.defined() ? sum + s : s;
      }
      return absl::OkStatus();
    }));
  } else {
    // The last prompt token's queries, layer by layer; its own K/V are
    // discarded afterwards (the cache goes back to L-1 positions).
    const int64_t groups = receiver_->config().num_query_groups();
    const double scale =
        1.0 / std::sqrt(static_cast<double>(receiver_->config().head_dim));
    const KvCache& cache = *cache_;
    LayerCallback on_layer = [&](const LayerKv& kv) -> absl::Status {
      return Guarded("attention scores", [&]() -> absl::Status {
        if (!kv.queries.defined()) {
          return absl::InternalError("decoder did not report queries");
        }
        const at::Tensor q = kv.queries.to(at::kFloat);  // [H, 1, D]
        const at::Tensor keys =
            at::cat({cache.Keys(kv.layer), kv.keys}, 1).to(at::kFloat);
        const int64_t heads = q.size(0);
        const at::Tensor k = keys.repeat_interleave(groups, 0);  // [H, L, D]
        const at::Tensor probs =
            (at::matmul(q, k.transpose(1, 2)) * scale).softmax(-1);  // [H,1,L]
        const at::Tensor s =
            probs.narrow(2, 0, positions).reshape({heads, positions}).mean(0);
        sum = sum.defined() ? sum + s : s;
        return absl::OkStatus();
      });
    };
    const std::vector<int64_t> last = {plan_.receiver_ids.back()};
    auto logits =
        receiver_->Prefill(last, *cache_, on_layer, LogitsMode::kNone);
    if (!logits.ok()) return logits.status();
    RETURN_IF_ERROR(cache_->SetLength(0, fused_length_));
  }
  at::Tensor scores;
  RETURN_IF_ERROR(Guarded("scores", [&]() -> absl::Status {
    scores = (sum / static_cast<double>(layers)).to(at::kCPU).contiguous();
    return absl::OkStatus();
  }));
  timings_.scores_seconds += SecondsSince(start);
  return scores;
}

absl::Status ReceiverSession::AddChunk(const v1::KvChunk& chunk) {
  absl::MutexLock lock(&mu_);
  if (generating_) {
    return absl::FailedPreconditionError("chunk after Generate started");
  }
  if (chunk.has_header() && check_sharer_ && !stream_->has_header()) {
    // Before anything of the stream is used: a sharer whose shapes the
    // fuser cannot read is refused here, not half-way through a cache.
    RETURN_IF_ERROR(check_sharer_(chunk.header().model()));
  }
  const bool had_header = stream_->has_header();
  const auto start = Clock::now();
  // A batch of blocks (KvChunk.blocks) may complete several layers.
  auto decoded = stream_->ConsumeAll(chunk);
  timings_.decode_seconds += SecondsSince(start);
  if (!decoded.ok()) return decoded.status();
  if (trace_ != nullptr) {
    std::string what = chunk.has_header()    ? "header"
                       : chunk.has_trailer() ? "trailer"
                                             : "chunk";
    if (chunk.has_block()) {
      absl::StrAppend(&what, " (layer ", chunk.block().layer(), ")");
    } else if (chunk.blocks_size() > 0) {
      absl::StrAppend(&what, " (", chunk.blocks_size(), " blocks, layers ",
                      chunk.blocks(0).layer(), "..",
                      chunk.blocks(chunk.blocks_size() - 1).layer(), ")");
    }
    Trace("receiver stream", absl::StrCat("decode ", what), start);
  }
  if (!had_header && stream_->has_header() &&
      static_cast<int64_t>(stream_->header().token_count()) != fused_length_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the sharer's stream covers ", stream_->header().token_count(),
        " tokens; C2C fuses the first ", fused_length_,
        " (prompt length - 1)"));
  }
  for (DecodedLayer& layer : *decoded) {
    RETURN_IF_ERROR(AddLayerLocked(std::move(layer)).status());
  }
  return absl::OkStatus();
}

absl::StatusOr<ReceivedStream> ReceiverSession::FinishStream() {
  ReceivedStream r;
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(stream_->Finish());
    r.header = stream_->header();
    if (stream_->stats().has_value()) r.trailer = *stream_->stats();
    RETURN_IF_ERROR(DecodeKeptBlocksLocked());
    if (prefilled_) RETURN_IF_ERROR(FuseAllHeldLocked());
  }
  r.fused_receiver_layers = FusedLayers();
  return r;
}

absl::StatusOr<v1::TokenSelection> ReceiverSession::GuidedSelection(
    const v1::TokenSelection& requested, ReceiverSignal signal) {
  ASSIGN_OR_RETURN(at::Tensor scores, GuidedScores(signal));
  // Only the size of the request counts: the scores decide which tokens.
  v1::TokenSelection size;
  size.set_proportion(requested.proportion());
  size.set_min_tokens(requested.min_tokens());
  return ExplicitSelectionFromScores(size, static_cast<uint32_t>(fused_length_),
                                     scores);
}

absl::StatusOr<std::vector<int>> ReceiverSession::AddLayer(DecodedLayer layer) {
  absl::MutexLock lock(&mu_);
  return AddLayerLocked(std::move(layer));
}

absl::StatusOr<std::vector<int>> ReceiverSession::AddLayerLocked(
    DecodedLayer layer) {
  if (generating_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sharer layer ", layer.layer, " arrived after Generate started"));
  }
  if (received_.count(layer.layer) > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("sharer layer ", layer.layer, " added twice"));
  }
  std::set<uint32_t> seen;
  for (uint32_t p : layer.token_indices) {
    if (static_cast<int64_t>(p) >= fused_length_ || !seen.insert(p).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sharer layer ", layer.layer, ": position ", p,
          " is repeated or outside the fused prompt [0, ", fused_length_, ")"));
    }
  }
  const int64_t n = static_cast<int64_t>(layer.token_indices.size());
  if (!layer.keys.defined() || !layer.values.defined() ||
      layer.keys.dim() != 3 || layer.values.dim() != 3 ||
      layer.keys.size(1) != n || layer.values.size(1) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("sharer layer ", layer.layer,
                     ": keys/values must be [heads, ", n, ", head_dim]"));
  }
  received_[layer.layer] = layer.token_indices;
  if (plan_.stage_ends.size() > 1) kept_.push_back(layer);  // Shallow.
  if (!prefilled_ || schedule_ == FusionSchedule::kWhenComplete) {
    held_.push_back(std::move(layer));
    return std::vector<int>();
  }
  return FuseLocked(layer);
}

absl::StatusOr<std::vector<int>> ReceiverSession::FuseLocked(
    const DecodedLayer& layer) {
  if (fusion_ == nullptr) return std::vector<int>();
  DecodedLayer part;
  RETURN_IF_ERROR(Guarded("fusion", [&]() -> absl::Status {
    part = StagePart(layer);
    return absl::OkStatus();
  }));
  return FusePartLocked(part);
}

absl::StatusOr<std::vector<int>> ReceiverSession::FusePartLocked(
    const DecodedLayer& part) {
  if (fusion_ == nullptr || part.token_indices.empty()) {
    return std::vector<int>();
  }
  const auto start = Clock::now();
  ASSIGN_OR_RETURN(
      std::vector<int> fused,
      fusion_->AddSharerLayer(static_cast<int>(part.layer), part.token_indices,
                              part.keys, part.values));
  fused_layers_.insert(fused.begin(), fused.end());
  timings_.fuse_seconds += SecondsSince(start);
  Trace("receiver fusion", absl::StrCat("fuse sharer layer ", part.layer),
        start);
  return fused;
}

void ReceiverSession::set_fusion_schedule(FusionSchedule schedule) {
  absl::MutexLock lock(&mu_);
  schedule_ = schedule;
  stream_ = std::make_unique<KvStreamDecoder>(
      receiver_->dtype(), receiver_->device(),
      /*defer_decode=*/schedule == FusionSchedule::kWhenComplete);
}

absl::Status ReceiverSession::DecodeKeptBlocksLocked() {
  const auto start = Clock::now();
  ASSIGN_OR_RETURN(std::vector<DecodedLayer> layers, stream_->DecodeHeld());
  if (layers.empty()) return absl::OkStatus();
  timings_.decode_seconds += SecondsSince(start);
  Trace("receiver stream",
        absl::StrCat("decode ", layers.size(), " sharer layers (batched)"),
        start);
  for (DecodedLayer& layer : layers) {
    RETURN_IF_ERROR(AddLayerLocked(std::move(layer)).status());
  }
  return absl::OkStatus();
}

absl::Status ReceiverSession::FuseAllHeldLocked() {
  if (held_.empty()) return absl::OkStatus();
  std::vector<DecodedLayer> held = std::move(held_);
  held_.clear();
  return FuseHeldLocked(held);
}

absl::Status ReceiverSession::FuseHeldLocked(
    const std::vector<DecodedLayer>& held_layers) {
  std::vector<DecodedLayer> held;  // This stage's parts.
  RETURN_IF_ERROR(Guarded("fusion", [&]() -> absl::Status {
    for (const DecodedLayer& layer : held_layers) {
      held.push_back(StagePart(layer));
    }
    return absl::OkStatus();
  }));
  std::vector<const DecodedLayer*> pending;  // As FuseLocked: tokens only.
  for (const DecodedLayer& layer : held) {
    if (!layer.token_indices.empty()) pending.push_back(&layer);
  }
  if (fusion_ == nullptr || pending.empty()) return absl::OkStatus();
  if (pending.size() == 1) return FusePartLocked(*pending[0]).status();
  // Every held layer's receiver layers in one batched call: one stacked
  // projector computation instead of one per receiver layer.
  std::vector<FusionSession::SharerLayerInput> layers;
  for (const DecodedLayer* layer : pending) {
    FusionSession::SharerLayerInput in;
    in.sharer_layer = static_cast<int>(layer->layer);
    in.keys = layer->keys;
    in.values = layer->values;
    in.positions = absl::MakeConstSpan(layer->token_indices);
    layers.push_back(std::move(in));
  }
  const auto start = Clock::now();
  auto fused = fusion_->AddSharerLayers(layers);
  timings_.fuse_seconds += SecondsSince(start);
  Trace("receiver fusion",
        absl::StrCat("fuse ", layers.size(), " sharer layers (batched)"),
        start);
  if (fused.ok()) fused_layers_.insert(fused->begin(), fused->end());
  return fused.status();
}

GenerationOptions ToGenerationOptions(const v1::GenerationParams& params) {
  GenerationOptions o;
  o.max_new_tokens = params.max_new_tokens() == 0 ? kDefaultMaxNewTokens
                                                  : params.max_new_tokens();
  o.sampling.temperature = params.temperature();
  o.sampling.top_k = params.top_k();
  o.sampling.top_p = params.top_p() == 0 ? 1.0 : params.top_p();
  o.sampling.seed = params.seed();
  return o;
}

absl::StatusOr<GenerationResult> ReceiverSession::Generate(
    const GenerationOptions& options, const TokenCallback& on_token,
    const StopCheck& should_stop) {
  bool need_prefill = false;
  {
    absl::MutexLock lock(&mu_);
    need_prefill = !prefill_started_;
  }
  // Generate alone (receiver-only) prefills first.
  if (need_prefill) RETURN_IF_ERROR(Prefill(should_stop));
  absl::MutexLock lock(&mu_);
  if (generating_) {
    return absl::FailedPreconditionError("Generate called twice");
  }
  if (!prefilled_) {
    return absl::FailedPreconditionError("Generate while Prefill runs");
  }
  generating_ = true;
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  }
  GenerationResult result;
  if (options.max_new_tokens == 0) return result;
  if (cache_->length() + options.max_new_tokens > cache_->capacity()) {
    return absl::OutOfRangeError(absl::StrCat(
        "the session's cache holds ", cache_->capacity(), " positions; ",
        cache_->length(), " + ", options.max_new_tokens, " needed"));
  }
  const std::vector<int64_t>& eos = options.eos_token_ids.has_value()
                                        ? *options.eos_token_ids
                                        : receiver_->config().eos_token_ids;
  const std::set<int64_t> stop(eos.begin(), eos.end());
  // Layers added since the prefill (kWhenComplete, without FinishStream).
  RETURN_IF_ERROR(FuseAllHeldLocked());
  // The later stages of an aligned plan: each runs over the cache fused so
  // far, then its own message tokens are fused.
  for (size_t k = 1; k < plan_.stage_ends.size(); ++k) {
    const auto stage_start = Clock::now();
    stage_begin_ = plan_.stage_ends[k - 1];
    stage_end_ = plan_.stage_ends[k];
    RETURN_IF_ERROR(
        PrefillRange(stage_begin_, stage_end_, /*logits=*/false, should_stop)
            .status());
    Trace("receiver model",
          absl::StrCat("prefill stage ", k, " (", stage_end_ - stage_begin_,
                       " tokens)"),
          stage_start);
    timings_.prefill_seconds += SecondsSince(stage_start);
    StartStageFusionLocked();
    RETURN_IF_ERROR(FuseHeldLocked(kept_));
  }
  const auto start = Clock::now();
  ASSIGN_OR_RETURN(at::Tensor logits,
                   PrefillRange(plan_.stage_ends.back(),
                                static_cast<int64_t>(plan_.receiver_ids.size()),
                                /*logits=*/true, nullptr));
  Clock::time_point first;
  Clock::time_point step_start = start;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    ASSIGN_OR_RETURN(std::vector<int64_t> next,
                     receiver_->Sample(logits, options.sampling, step));
    const int64_t token = next[0];
    // Sampling reads the logits on the host: the step is complete here.
    if (trace_ != nullptr) {
      trace_->Add("receiver model",
                  step == 0 ? "last prompt token + token 0"
                            : absl::StrCat("token ", step),
                  step_start, Clock::now());
    }
    result.tokens.push_back(token);
    if (step == 0) {
      first = Clock::now();
      timings_.ttft_seconds = SecondsSince(start);
    }
    if (on_token) on_token(step, token);
    if (stop.count(token) > 0) {
      result.finish_reason = FinishReason::kEos;
      break;
    }
    if (step + 1 == options.max_new_tokens) break;
    if (should_stop) RETURN_IF_ERROR(should_stop());
    step_start = Clock::now();
    ASSIGN_OR_RETURN(logits, receiver_->DecodeStep(token, *cache_));
  }
  timings_.generation_seconds = SecondsSince(first);
  return result;
}

absl::StatusOr<std::vector<int64_t>> ReceiverSession::Generate(
    const v1::GenerationParams& params, const TokenCallback& on_token,
    const StopCheck& should_stop) {
  ASSIGN_OR_RETURN(
      GenerationResult result,
      Generate(ToGenerationOptions(params), on_token, should_stop));
  return std::move(result.tokens);
}

bool ReceiverSession::prefilled() const {
  absl::MutexLock lock(&mu_);
  return prefilled_;
}

bool ReceiverSession::fused(int receiver_layer) const {
  absl::MutexLock lock(&mu_);
  return fused_layers_.count(receiver_layer) > 0;
}

std::vector<int> ReceiverSession::FusedLayers() const {
  absl::MutexLock lock(&mu_);
  return std::vector<int>(fused_layers_.begin(), fused_layers_.end());
}

}  // namespace kvwire
