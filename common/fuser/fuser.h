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

// A faster way to run C2CFuser::FuseLayer / FuseLayerTokens with the same
// results (CudaGraphFuser replays CUDA graphs); FusionSession uses the one a
// C2CFuser carries. Implementations are thread-safe and fall back to the
// fuser's eager path for calls they cannot take.
class FusionAccelerator {
 public:
  virtual ~FusionAccelerator() = default;
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

  // What FusionSession runs instead of the eager calls above (null: none).
  // Set once, after loading and before any session (not synchronized).
  void SetAccelerator(std::shared_ptr<FusionAccelerator> accelerator) {
    accelerator_ = std::move(accelerator);
  }
  FusionAccelerator* accelerator() const { return accelerator_.get(); }

 private:
  C2CFuser(std::vector<C2CProjector> projectors, FuserLayerMap layer_map)
      : projectors_(std::move(projectors)), layer_map_(std::move(layer_map)) {}

  std::vector<C2CProjector> projectors_;
  FuserLayerMap layer_map_;
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
