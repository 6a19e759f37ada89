// ReceiverSession: the receiver's side of one C2C request, in the order
// C2C's inference flow requires (c2c-spec §1.4, §8; issue 4 §2). It is what
// the receiver service drives chunk by chunk, and what the in-process
// pipeline (pipeline.h) drives with a sharer in the same process.
//
// For a prompt of L token ids (already templated; the sharer gets the same
// ids and positions):
//
//   auto session = ReceiverSession::Create(receiver, fuser, prompt_ids,
//                                          max_new_tokens);
//   // Optional, receiver-guided selection: score the first L-1 positions
//   // from the receiver's own cache and send them as explicit indices.
//   RETURN_IF_ERROR((*session)->Prefill());        // own KV of ids[0, L-1)
//   ASSIGN_OR_RETURN(at::Tensor s, (*session)->GuidedScores(
//                                      ReceiverSignal::kAttention));
//   // Ask the sharer for ids[0, L-1) (session->share_token_ids()); then for
//   // every KvChunk of its stream, in stream order:
//   RETURN_IF_ERROR((*session)->AddChunk(chunk));  // decode; fuse each layer
//   RETURN_IF_ERROR((*session)->FinishStream());   // trailer seen, complete
//   // The last prompt token and every generated token run on the receiver
//   // alone, over the fused cache.
//   ASSIGN_OR_RETURN(GenerationResult r, (*session)->Generate(options));
//
// Fusion semantics: receiver layer t is fused in place from sharer layer
// map(t), over the positions the sharer sent (sparse fuse: the projector
// runs on those tokens only); every other position, and every layer that
// never arrives, keeps the receiver's own KV. Layers may arrive in any order
// (AddLayer), including before Prefill. When they are fused is the session's
// FusionSchedule: by default (kOnArrival) each layer as soon as it is
// present and the prefill is done (layers that arrive before the prefill
// ends are held until then); kWhenComplete holds every layer until the
// stream is complete (FinishStream) and fuses all of them in one
// layer-batched projector call, which costs about what fusing two layers one
// by one does.
// Hidden states of prompt positions are never recomputed: fusion changes only
// what the last prompt token and the generated tokens attend to.
//
// A token-aligned request (pairs whose tokenizers differ) is the same flow
// over a PromptPlan (prompt_plan.h): the sharer gets its own ids and
// positions (share_token_ids / share_positions), sharer token j fuses into
// receiver token plan().fuse_into[j], Prefill runs the first stage only, and
// Generate runs each later stage and fuses it (from the layers kept since
// they arrived) before the tokens after it; the stream must be complete by
// then.
//
// Threading: Prefill may run on one thread while AddChunk / AddLayer run on
// another (layers arriving meanwhile are held, and decoding chunks overlaps
// the prefill); every other call must not overlap. The decoder and fuser must
// outlive the session. Errors are absl::Status; c10::Error never escapes.
//
// This header is Torch-free: the Torch types of the in-process calls
// (GuidedScores, AddLayer, cache(), stream(), the GenerationOptions
// overload of Generate) are forward-declared, so the receiver service's
// request orchestration drives the session without including Torch, through
// the wire-typed calls (GuidedSelection, AddChunk, FinishStream, the
// GenerationParams overload of Generate).
#ifndef KVWIRE_COMMON_ENGINE_RECEIVER_SESSION_H_
#define KVWIRE_COMMON_ENGINE_RECEIVER_SESSION_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/engine/prompt_plan.h"
#include "common/trace.h"
#include "kvwire/v1/kvwire.pb.h"

namespace at {
class Tensor;
}  // namespace at

namespace kvwire {

class C2CFuser;
class Decoder;
class FusionSession;
class KvCache;
class KvStreamDecoder;
struct DecodedLayer;
struct GenerationOptions;
struct GenerationResult;

// Receiver-side signals for receiver-guided token selection.
enum class ReceiverSignal {
  // Attention of the last prompt token over positions [0, L-1): softmax of
  // q_last . K^T / sqrt(head_dim) over [0, L) (the receiver's own, unfused
  // cache), averaged over query heads and layers.
  kAttention,
  // Mean over KV heads of ||V[h, t, :]||_2 of the receiver's own cache,
  // averaged over layers.
  kValueNorm,
};
// "attention" / "vnorm" (the parser also takes "value_norm").
const char* ReceiverSignalName(ReceiverSignal signal);
absl::StatusOr<ReceiverSignal> ParseReceiverSignal(absl::string_view name);

// Called with each generated token as soon as it is sampled.
using TokenCallback = std::function<void(int64_t index, int64_t token_id)>;
// Polled before each decode step of Generate; a non-OK status (the call was
// cancelled or its deadline passed) ends generation with that status.
using StopCheck = std::function<absl::Status()>;
// Checks the model a stream's header names before anything of the stream is
// used (ReceiverEngine::CheckSharerModel); its error fails AddChunk.
using SharerModelCheck = std::function<absl::Status(const v1::ModelInfo&)>;

// A request's GenerationParams as decoder options: max_new_tokens 0 ->
// kDefaultMaxNewTokens; top_p 0 -> 1 (off); the rest as given (temperature
// 0: greedy). Stop tokens: the model's generation_config.json. Both
// services use it, so the in-process reference samples exactly as they do.
GenerationOptions ToGenerationOptions(const v1::GenerationParams& params);

// INVALID_ARGUMENT unless every receiver layer `fuser` writes exists in
// `receiver` with the KV heads and head_dim its projector produces.
absl::Status CheckFuserFitsReceiver(const C2CFuser& fuser,
                                    const Decoder& receiver);

// When a session fuses the sharer layers it has received.
enum class FusionSchedule {
  // All of them at once when the stream is complete (FinishStream; or when
  // the prefill ends, if that is later): one layer-batched projector call.
  kWhenComplete,
  // Each as soon as it is present and the prefill is done: fusion overlaps
  // a slow stream, at one projector call per layer.
  kOnArrival,
};
// "when_complete" / "on_arrival"; INVALID_ARGUMENT otherwise.
absl::StatusOr<FusionSchedule> ParseFusionSchedule(absl::string_view name);

// Per-request timings of the receiver side (seconds).
struct ReceiverTimings {
  double prefill_seconds = 0;     // Own prefill of ids[0, L-1).
  double scores_seconds = 0;      // GuidedScores.
  double decode_seconds = 0;      // KvStreamDecoder: chunks -> tensors.
  double fuse_seconds = 0;        // Projector calls.
  double ttft_seconds = 0;        // Generate start -> first token sampled.
  double generation_seconds = 0;  // First token -> last token.
};

// What a complete stream told (FinishStream).
struct ReceivedStream {
  v1::KvHeader header;
  v1::TransferStats trailer;  // The trailer's stats.
  std::vector<int> fused_receiver_layers;
};

class ReceiverSession {
 public:
  // `prompt_ids` holds L >= 1 ids; the cache is sized for L +
  // max_new_tokens. `fuser` may be null (nothing is fused: receiver-only).
  // With a fuser, the receiver must have the shapes its projectors write
  // (CheckFuserFitsReceiver). `check_sharer` (may be empty) vets the
  // stream's model.
  static absl::StatusOr<std::unique_ptr<ReceiverSession>> Create(
      const Decoder* receiver, const C2CFuser* fuser,
      std::vector<int64_t> prompt_ids, int64_t max_new_tokens,
      SharerModelCheck check_sharer = nullptr);
  // The same for any plan (ValidatePromptPlan's errors).
  static absl::StatusOr<std::unique_ptr<ReceiverSession>> Create(
      const Decoder* receiver, const C2CFuser* fuser, PromptPlan plan,
      int64_t max_new_tokens, SharerModelCheck check_sharer = nullptr);

  ~ReceiverSession();
  ReceiverSession(const ReceiverSession&) = delete;
  ReceiverSession& operator=(const ReceiverSession&) = delete;

  const std::vector<int64_t>& prompt_ids() const { return plan_.receiver_ids; }
  const PromptPlan& plan() const { return plan_; }
  // The tokens the sharer's stream must cover (L - 1 without alignment).
  int64_t fused_length() const { return fused_length_; }
  // The ids the sharer prefills (ids[0, L-1) without alignment) and their
  // positions (empty: contiguous from 0).
  absl::Span<const int64_t> share_token_ids() const { return plan_.sharer_ids; }
  absl::Span<const int64_t> share_positions() const {
    return plan_.sharer_positions;
  }

  // The receiver's own prefill of the plan's first stage (ids[0, L-1)
  // without alignment); then fuses every layer that arrived meanwhile
  // (kWhenComplete: only once the whole stream has arrived).
  // FAILED_PRECONDITION if called twice. `should_stop` (optional) is asked
  // after every layer: a long prompt's prefill ends with its status as soon as
  // the call is cancelled or out of time (the session is then unusable).
  absl::Status Prefill(const StopCheck& should_stop = nullptr);

  // Receiver-guided selection scores, [L-1] fp32 on the CPU (higher = more
  // useful to fuse), from the receiver's own cache. Needs Prefill and must
  // come before any fusion, and the plan must be a same-vocabulary one
  // (FAILED_PRECONDITION otherwise). kAttention runs
  // the last prompt token once (its K/V are discarded again).
  absl::StatusOr<at::Tensor> GuidedScores(ReceiverSignal signal);
  // The explicit top-k selection those scores give for the size `requested`
  // asks (its proportion and min_tokens only; ExplicitSelectionFromScores),
  // or SELECTION_ALL when every token is kept. Same preconditions.
  absl::StatusOr<v1::TokenSelection> GuidedSelection(
      const v1::TokenSelection& requested, ReceiverSignal signal);

  // One KvChunk of the sharer's stream, in stream order. The header must
  // cover fused_length() tokens and pass `check_sharer`; each layer is
  // decoded as both its blocks are complete and handed to AddLayer.
  // DATA_LOSS / INVALID_ARGUMENT from the codec; FAILED_PRECONDITION for a
  // sharer model the check refuses, or after Generate started.
  absl::Status AddChunk(const v1::KvChunk& chunk);
  // DATA_LOSS unless a complete stream (trailer included) was consumed;
  // then fuses the layers still held if the prefill is done, and returns the
  // header, the trailer's stats and the receiver layers fused. Fusion's
  // errors (INVALID_ARGUMENT, INTERNAL).
  absl::StatusOr<ReceivedStream> FinishStream();

  // One decoded sharer layer (positions index [0, L-1), ascending or not),
  // in any order. kOnArrival: fuses every receiver layer reading it if the
  // prefill is done; otherwise holds it. Returns the receiver layers fused
  // now (empty when held or when no receiver layer reads it).
  // FAILED_PRECONDITION for a layer added twice or after Generate started;
  // INVALID_ARGUMENT for positions out of range or mis-shaped tensors.
  absl::StatusOr<std::vector<int>> AddLayer(DecodedLayer layer);

  // Runs the plan's later stages (each followed by its fusion; the stream
  // must be complete by then) and the prompt tokens after the last stage
  // (the last one without alignment) over the fused cache, and generates.
  // Layers still held are fused first. May be called once.
  absl::StatusOr<GenerationResult> Generate(
      const GenerationOptions& options, const TokenCallback& on_token = nullptr,
      const StopCheck& should_stop = nullptr);
  // The same for a request's (validated) GenerationParams
  // (ToGenerationOptions); the generated ids.
  absl::StatusOr<std::vector<int64_t>> Generate(
      const v1::GenerationParams& params,
      const TokenCallback& on_token = nullptr,
      const StopCheck& should_stop = nullptr);

  bool prefilled() const;
  // Receiver layer t has been fused.
  bool fused(int receiver_layer) const;
  // Receiver layers fused so far, ascending.
  std::vector<int> FusedLayers() const;
  // Sharer layers received (fused or held), with the positions they carried.
  const std::map<uint32_t, std::vector<uint32_t>>& received() const {
    return received_;
  }
  // The stream decoder (header, trailer stats, byte accounting).
  const KvStreamDecoder& stream() const { return *stream_; }
  const ReceiverTimings& timings() const { return timings_; }
  // The receiver's cache (positions [0, L-1) after Prefill: own or fused
  // KV). Read it only while no other call runs.
  const KvCache& cache() const { return *cache_; }
  const Decoder& receiver() const { return *receiver_; }

  // Records the session's stages into `trace` (not owned; null: off). On a
  // GPU each traced stage then waits for the device before its end time.
  // Call before anything else.
  void set_trace(RequestTrace* trace) { trace_ = trace; }
  // When received layers are fused (default kOnArrival); kWhenComplete
  // also defers decoding the stream's blocks to its end (one batch, one
  // host-to-device copy). Call before anything else.
  void set_fusion_schedule(FusionSchedule schedule);

 private:
  // With a trace: waits for the device (GPU work is asynchronous) and adds
  // [start, now] to `track`.
  void Trace(const char* track, std::string name,
             std::chrono::steady_clock::time_point start) const;

  ReceiverSession(const Decoder* receiver, const C2CFuser* fuser,
                  PromptPlan plan, std::unique_ptr<KvCache> cache,
                  SharerModelCheck check_sharer);

  // Receiver tokens [begin, end) into the cache, at the plan's positions.
  // `logits`: whether to return the last token's logits.
  absl::StatusOr<at::Tensor> PrefillRange(int64_t begin, int64_t end,
                                          bool logits,
                                          const StopCheck& should_stop);
  // A new FusionSession for the receiver tokens [stage_begin_, stage_end_).
  void StartStageFusionLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The part of a sharer layer fused in the current stage: its tokens that
  // the plan fuses into [stage_begin_, stage_end_), at receiver positions.
  // An empty `token_indices` when none.
  DecodedLayer StagePart(const DecodedLayer& layer) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Fuses the current stage's part of a sharer layer.
  absl::StatusOr<std::vector<int>> FuseLocked(const DecodedLayer& layer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fuses a part StagePart made.
  absl::StatusOr<std::vector<int>> FusePartLocked(const DecodedLayer& part)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fuses the current stage's parts of `held` (the layers held until the
  // prefill ended, or kept for a later stage), all in one batched
  // FusionSession::AddSharerLayers call (one trace event, one fuse timing).
  absl::Status FuseHeldLocked(const std::vector<DecodedLayer>& held)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // FuseHeldLocked(held_), emptying held_.
  absl::Status FuseAllHeldLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Decodes the blocks the stream decoder kept (kWhenComplete) and adds
  // their layers (held).
  absl::Status DecodeKeptBlocksLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<int>> AddLayerLocked(DecodedLayer layer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Decoder* receiver_;
  const C2CFuser* fuser_;
  PromptPlan plan_;
  // Sharer token j fuses into receiver token j, in one stage of L - 1.
  bool same_vocabulary_ = true;
  int64_t fused_length_ = 0;
  std::unique_ptr<KvCache> cache_;
  SharerModelCheck check_sharer_;

  mutable absl::Mutex mu_;
  bool prefill_started_ = false;
  bool prefilled_ = false;
  bool generating_ = false;
  // The current stage's fusion: receiver tokens [stage_begin_, stage_end_).
  std::unique_ptr<FusionSession> fusion_;
  int64_t stage_begin_ = 0;
  int64_t stage_end_ = 0;
  std::set<int> fused_layers_;  // Over all stages.
  std::vector<DecodedLayer> held_;
  // Every decoded layer, kept for the later stages of a multi-stage plan.
  std::vector<DecodedLayer> kept_;
  std::map<uint32_t, std::vector<uint32_t>> received_;
  std::unique_ptr<KvStreamDecoder> stream_;
  ReceiverTimings timings_;
  RequestTrace* trace_ = nullptr;
  FusionSchedule schedule_ = FusionSchedule::kOnArrival;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_ENGINE_RECEIVER_SESSION_H_
