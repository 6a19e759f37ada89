// C2CFuser: a loaded set of C2C projectors plus the layer map, and
// FusionSession, the per-request state of C2C's fusion (c2c-spec §1.4, issue
// 4 §2): receiver layer t is fused in place from sharer layer map(t), over
// the positions the sharer sent, as soon as that sharer layer is present.
//
// How the pipeline / receiver service uses it:
//
//   auto fuser = C2CFuser::Load(dir, options);           // once
//   RETURN_IF_ERROR((*fuser)->CheckModels(receiver_cfg..., sharer_cfg...));
//   // per request, after the receiver's prefill of the first L-1 tokens:
//   FusionSession session(fuser.get(), [&](int t) {
//     return std::make_pair(cache.Keys(t), cache.Values(t));  // in-place views
//   });
//   // for each DecodedLayer d from KvStreamDecoder, in any order:
//   ASSIGN_OR_RETURN(auto fused, session.AddSharerLayer(
//       d.layer, d.token_indices, d.keys, d.values));
//   // then run the last prompt token on the (fused) receiver cache.
//
// When several sharer layers are at hand at once (e.g. held until the
// receiver's prefill ends), FusionSession::AddSharerLayers fuses all their
// receiver layers in one batched call (C2CFuser::FuseLayers): projectors of
// one shape are stacked (C2CProjectorStack) and run as one computation over
// a leading layer dimension instead of ~60 small kernels per layer.
//
// Positions are indices into the receiver's layer views (prompt positions
// when the views start at position 0). Layers or tokens that never arrive
// keep the receiver's own KV. Fusion adds a residual, so it is not
// idempotent: a session fuses each receiver layer at most once.
#ifndef KVWIRE_COMMON_FUSER_FUSER_H_
#define KVWIRE_COMMON_FUSER_FUSER_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/fuser/c2c_projector.h"
#include "common/fuser/checkpoint.h"
#include "common/fuser/fuser_config.h"

namespace kvwire {

enum class LayerMapSource {
  // projector_config.json when the checkpoint has one, else last_aligned from
  // the layer counts in FuserOptions.
  kAuto,
  kFile,         // projector_config.json (NOT_FOUND if absent).
  kLastAligned,  // Terminal alignment from receiver_layers / sharer_layers.
};

struct FuserOptions {
  ProjectorOptions projector;  // dtype (bf16 default) and device.
  FuserWeightFormat format = FuserWeightFormat::kAuto;
  bool strict = false;  // Reject unexpected state-dict entries.
  LayerMapSource layer_map = LayerMapSource::kAuto;
  // The two models' layer counts (0: unknown). Needed for kLastAligned;
  // when given, the map is checked against them.
  int receiver_layers = 0;
  int sharer_layers = 0;
};

// One receiver layer's part of a batched C2CFuser::FuseLayers call: what
// FuseLayer (dense) or FuseLayerTokens (`positions` set) take for it.
struct LayerFusionInput {
  int receiver_layer = -1;
  at::Tensor sharer_keys, sharer_values;  // [Hs, n, Ds] or [B, Hs, n, Ds].
  // In-place-writable views [Ht, T, Dt] or [B, Ht, T, Dt] of the layer.
  at::Tensor receiver_keys, receiver_values;
  int64_t start = 0;  // Dense: the sharer tokens are rows [start, start + n).
  // Sparse: the sharer tokens are these rows (start is ignored). The span
  // must stay valid during the call.
  std::optional<absl::Span<const uint32_t>> positions;
};

// One batched computation of a FuseLayers call: one path (keys or values)
// of the stack members [first, first + inputs.size()), i.e. of the inputs
// whose projectors are those members, in member order, all with `tokens`
// sharer tokens and a receiver of `receiver_dtype`.
struct FusionRun {
  int stack = 0;       // C2CFuser::stack(stack).
  bool value = false;  // The value path (else the key path).
  int64_t first = 0;
  int64_t tokens = 0;
  at::ScalarType receiver_dtype = at::kFloat;
  std::vector<int> inputs;  // Indices into the call's inputs.
  int64_t count() const { return static_cast<int64_t>(inputs.size()); }
};

// How a FuseLayers call splits (C2CFuser::PlanFusion). Inputs whose gate is
// closed on a path take no run of that path (their receiver stays as is).
struct FusionPlan {
  std::vector<FusionRun> runs;
  // Inputs with a batch > 1, fused one by one (FuseLayer /
  // FuseLayerTokens).
  std::vector<int> one_by_one;
  // Per input: the receiver rows its tokens go to, as a first row (dense or
  // a contiguous run of positions) or, when `index[i]` is defined, int64
  // row indices on the receiver's device.
  std::vector<int64_t> start;
  std::vector<at::Tensor> index;
};

// A faster way to run C2CFuser::FuseLayer / FuseLayerTokens / FuseLayers
// with the same results (CudaGraphFuser replays CUDA graphs); FusionSession
// uses the one a C2CFuser carries. Implementations are thread-safe and fall
// back to the fuser's eager path for calls they cannot take.
class FusionAccelerator {
 public:
  virtual ~FusionAccelerator() = default;
  // As C2CFuser::FuseLayers. Optional: the default is UNIMPLEMENTED, on
  // which FusionSession fuses the layers one by one through FuseLayer /
  // FuseLayerTokens.
  virtual absl::Status FuseLayers(absl::Span<const LayerFusionInput> inputs) {
    (void)inputs;
    return absl::UnimplementedError("no batched fusion");
  }
  virtual absl::Status FuseLayer(int receiver_layer,
                                 const at::Tensor& sharer_keys,
                                 const at::Tensor& sharer_values,
                                 const at::Tensor& receiver_keys,
                                 const at::Tensor& receiver_values,
                                 int64_t start) = 0;
  virtual absl::Status FuseLayerTokens(int receiver_layer,
                                       const at::Tensor& sharer_keys,
                                       const at::Tensor& sharer_values,
                                       absl::Span<const uint32_t> positions,
                                       const at::Tensor& receiver_keys,
                                       const at::Tensor& receiver_values) = 0;
};

class C2CFuser {
 public:
  // Reads a checkpoint directory (checkpoint.h) and builds the projectors.
  static absl::StatusOr<std::unique_ptr<C2CFuser>> Load(
      const std::string& dir, const FuserOptions& options = {});
  static absl::StatusOr<std::unique_ptr<C2CFuser>> FromCheckpoint(
      const FuserCheckpoint& checkpoint, const FuserOptions& options = {});
  // From built projectors and a map (entries must name existing projectors).
  // Stacks the projectors the map uses (C2CProjectorStack), which briefly
  // needs their weights' memory twice (on a GPU the freed copy stays
  // in the caching allocator for later tensors).
  static absl::StatusOr<std::unique_ptr<C2CFuser>> Create(
      std::vector<C2CProjector> projectors, FuserLayerMap layer_map);

  // Checks that the projectors fit the two models: every projector used by
  // the map reads sharer_kv_heads x sharer_head_dim and writes
  // receiver_kv_heads x receiver_head_dim, the map covers no receiver layer
  // >= receiver_layers and reads no sharer layer >= sharer_layers.
  // INVALID_ARGUMENT naming the projector / layer otherwise.
  absl::Status CheckModels(int receiver_layers, int64_t receiver_kv_heads,
                           int64_t receiver_head_dim, int sharer_layers,
                           int64_t sharer_kv_heads,
                           int64_t sharer_head_dim) const;

  const FuserLayerMap& layer_map() const { return layer_map_; }
  // The checkpoint's training recipe (config.json), if it had one.
  const std::optional<FuserRecipe>& recipe() const { return recipe_; }
  int num_projectors() const { return static_cast<int>(projectors_.size()); }
  const C2CProjector& projector(int i) const { return projectors_[i]; }
  // The projector of receiver layer t, or nullptr if t is not fused.
  const C2CProjector* ProjectorFor(int receiver_layer) const;
  // The sharer layer receiver layer t reads, if it is fused.
  std::optional<int> SharerLayerFor(int receiver_layer) const;
  // Receiver layers that read `sharer_layer`, ascending.
  std::vector<int> ReceiverLayersReading(int sharer_layer) const;
  // The distinct sharer layers some receiver layer reads, ascending: what
  // the sharer needs to send.
  std::vector<int> SharerLayersNeeded() const;
  // Receiver layers with a projector, ascending.
  std::vector<int> FusedReceiverLayers() const;

  // Fuses receiver layer t in place: the sharer tensors ([Hs, n, Ds] or
  // [B, Hs, n, Ds]) are the tokens at receiver positions [start, start + n).
  // A receiver layer without a projector is left alone (OK).
  absl::Status FuseLayer(int receiver_layer, const at::Tensor& sharer_keys,
                         const at::Tensor& sharer_values,
                         const at::Tensor& receiver_keys,
                         const at::Tensor& receiver_values,
                         int64_t start = 0) const;
  // Sparse: the sharer tensors are the tokens at `positions`.
  absl::Status FuseLayerTokens(int receiver_layer,
                               const at::Tensor& sharer_keys,
                               const at::Tensor& sharer_values,
                               absl::Span<const uint32_t> positions,
                               const at::Tensor& receiver_keys,
                               const at::Tensor& receiver_values) const;

  // Fuses several receiver layers in place, as FuseLayer / FuseLayerTokens
  // would one by one, but batched: inputs whose projectors share a stack
  // (same shapes, dtype, device), token count and receiver dtype run as one
  // computation per path (FusionRun); results equal the per-layer path's up
  // to the GEMMs' accumulation order. Inputs of receiver layers without a
  // projector are ignored. Every input is checked before anything is
  // written: INVALID_ARGUMENT (naming the receiver layer) for what
  // FuseLayer / FuseLayerTokens would reject or a receiver layer given
  // twice, and then no layer is touched. All results are computed before
  // any is written back, so an INTERNAL error (torch failed, e.g. out of
  // memory) also leaves every layer untouched, unless the write-back itself
  // fails. Inputs with a batch > 1 are fused one by one afterwards.
  absl::Status FuseLayers(absl::Span<const LayerFusionInput> inputs) const;

  // Building blocks of FuseLayers, for accelerators. PlanFusion checks the
  // inputs (errors as FuseLayers) and splits them into runs: per stack,
  // path, token count and receiver dtype, the inputs in member order, cut
  // where members are not consecutive (a projector used by two receiver
  // layers in one call gives two runs).
  absl::StatusOr<FusionPlan> PlanFusion(
      absl::Span<const LayerFusionInput> inputs) const;
  // Copies the run's sharer tokens into rows [0, tokens) of `sharer`
  // ([count, Hs, >= tokens, Ds]) and the receiver's rows they fuse into
  // rows [0, tokens) of `receiver` ([count, Ht, >= tokens, Dt]); converts
  // dtype and device as copy_ does. INTERNAL if torch fails.
  absl::Status GatherRun(const FusionPlan& plan, const FusionRun& run,
                         absl::Span<const LayerFusionInput> inputs,
                         const at::Tensor& sharer,
                         const at::Tensor& receiver) const;
  // Writes rows [0, tokens) of `fused` ([count, Ht, >= tokens, Dt]) back
  // into the run's receiver views, rounding once into their dtype, skipping
  // members whose gate on the run's path is closed. INTERNAL if torch fails.
  absl::Status ScatterRun(const FusionPlan& plan, const FusionRun& run,
                          absl::Span<const LayerFusionInput> inputs,
                          const at::Tensor& fused) const;
  // Computes a run eagerly: fp32 [count, Ht, tokens, Dt] (r + w*P, gates
  // not applied) on the projectors' device.
  absl::StatusOr<at::Tensor> ComputeRun(
      const FusionPlan& plan, const FusionRun& run,
      absl::Span<const LayerFusionInput> inputs) const;

  // The projector stacks: the projectors the map uses, grouped by what can
  // share a stack (same shapes, dtype, device) at Create, each in the order
  // of the receiver layers first using them (so a call over consecutive
  // layers is one run); those projectors' weights are views of their stack.
  int num_stacks() const { return static_cast<int>(stacks_.size()); }
  const C2CProjectorStack& stack(int i) const { return stacks_[i]; }

  // What FusionSession runs instead of the eager calls above (null: none).
  // Set once, after loading and before any session (not synchronized).
  void SetAccelerator(std::shared_ptr<FusionAccelerator> accelerator) {
    accelerator_ = std::move(accelerator);
  }
  FusionAccelerator* accelerator() const { return accelerator_.get(); }
  std::shared_ptr<FusionAccelerator> shared_accelerator() const {
    return accelerator_;
  }

 private:
  C2CFuser(std::vector<C2CProjector> projectors, FuserLayerMap layer_map)
      : projectors_(std::move(projectors)), layer_map_(std::move(layer_map)) {}

  // Stacks the projectors the layer map uses, in the order of the receiver
  // layers using them first, grouping those C2CProjectorStack::Compatible.
  absl::Status BuildStacks();

  // Where projector i sits: stacks_[stack].member `member` (stack -1: used
  // by no receiver layer, not stacked).
  struct StackSlot {
    int stack = 0;
    int64_t member = 0;
  };

  std::vector<C2CProjector> projectors_;
  FuserLayerMap layer_map_;
  std::optional<FuserRecipe> recipe_;
  std::vector<C2CProjectorStack> stacks_;
  std::vector<StackSlot> slots_;  // Per projector.
  std::shared_ptr<FusionAccelerator> accelerator_;
};

// One request's fusion state. Not thread-safe; the fuser must outlive it.
class FusionSession {
 public:
  // Returns in-place-writable views [kv_heads, T, head_dim] (or with a
  // leading batch dim) of receiver layer t's keys and values.
  using ReceiverKv =
      std::function<absl::StatusOr<std::pair<at::Tensor, at::Tensor>>(
          int receiver_layer)>;

  FusionSession(const C2CFuser* fuser, ReceiverKv receiver);

  // Fuses every receiver layer that reads `sharer_layer` with the sharer's
  // tokens at `positions` (e.g. DecodedLayer::token_indices) and returns
  // those receiver layers (ascending; empty if none reads it).
  // FAILED_PRECONDITION if this sharer layer was already added (its
  // receiver layers are fused); errors of the projector otherwise (the
  // session then stays usable; the failed receiver layer is not marked).
  absl::StatusOr<std::vector<int>> AddSharerLayer(
      int sharer_layer, absl::Span<const uint32_t> positions,
      const at::Tensor& keys, const at::Tensor& values);
  // Dense: the sharer tokens are positions [start, start + n).
  absl::StatusOr<std::vector<int>> AddSharerLayerRange(
      int sharer_layer, int64_t start, const at::Tensor& keys,
      const at::Tensor& values);

  // One sharer layer of AddSharerLayers.
  struct SharerLayerInput {
    int sharer_layer = -1;
    at::Tensor keys, values;  // [Hs, n, Ds] (or with a leading batch dim).
    int64_t start = 0;        // Dense: positions [start, start + n).
    // Sparse: the tokens at these positions (start is ignored); the span
    // must stay valid during the call.
    std::optional<absl::Span<const uint32_t>> positions;
  };
  // Several sharer layers at once: fuses every receiver layer reading one of
  // them in one batched call (C2CFuser::FuseLayers, or the accelerator's)
  // and returns those receiver layers (ascending). All or nothing: nothing
  // is fused (and no sharer layer marked) on FAILED_PRECONDITION (a sharer
  // layer already added, or given twice), INVALID_ARGUMENT (a negative
  // layer; inputs the projectors reject) or an error of the receiver
  // accessor; the session then stays usable. (An accelerator without
  // batched fusion fuses one layer at a time; its errors then leave the
  // layers before the failing one fused and marked, as AddSharerLayer does.)
  absl::StatusOr<std::vector<int>> AddSharerLayers(
      absl::Span<const SharerLayerInput> layers);

  // Whether receiver layer t has been fused.
  bool fused(int receiver_layer) const;
  // Receiver layers with a projector that are not fused yet.
  std::vector<int> PendingReceiverLayers() const;
  bool done() const { return PendingReceiverLayers().empty(); }
  int num_fused() const;

 private:
  absl::StatusOr<std::vector<int>> Add(
      int sharer_layer, const at::Tensor& keys, const at::Tensor& values,
      const absl::Span<const uint32_t>* positions, int64_t start);

  const C2CFuser* fuser_;
  ReceiverKv receiver_;
  std::vector<bool> fused_;
  std::vector<bool> sharer_seen_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FUSER_FUSER_H_
