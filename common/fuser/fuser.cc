#include "common/fuser/fuser.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvwire {

absl::StatusOr<std::unique_ptr<C2CFuser>> C2CFuser::Load(
    const std::string& dir, const FuserOptions& options) {
  ASSIGN_OR_RETURN(FuserCheckpoint ckpt,
                   ReadFuserCheckpoint(dir, options.format));
  return FromCheckpoint(ckpt, options);
}

absl::StatusOr<std::unique_ptr<C2CFuser>> C2CFuser::FromCheckpoint(
    const FuserCheckpoint& ckpt, const FuserOptions& options) {
  if (ckpt.args.size() != ckpt.weights.size()) {
    return absl::InvalidArgumentError("checkpoint: args/weights mismatch");
  }
  FuserLayerMap map;
  const bool have_counts =
      options.receiver_layers > 0 && options.sharer_layers > 0;
  switch (options.layer_map) {
    case LayerMapSource::kFile:
      if (!ckpt.layer_map) {
        return absl::NotFoundError("checkpoint has no projector_config.json");
      }
      map = *ckpt.layer_map;
      break;
    case LayerMapSource::kLastAligned: {
      if (!have_counts) {
        return absl::InvalidArgumentError(
            "last_aligned layer map needs receiver_layers and sharer_layers");
      }
      ASSIGN_OR_RETURN(map, LastAlignedFuserLayerMap(options.receiver_layers,
                                                     options.sharer_layers));
      break;
    }
    case LayerMapSource::kAuto:
      if (ckpt.layer_map) {
        map = *ckpt.layer_map;
      } else if (have_counts) {
        ASSIGN_OR_RETURN(map, LastAlignedFuserLayerMap(options.receiver_layers,
                                                       options.sharer_layers));
      } else {
        return absl::FailedPreconditionError(
            "checkpoint has no projector_config.json: give receiver_layers "
            "and sharer_layers for the last_aligned map");
      }
      break;
  }
  if (options.receiver_layers > 0) {
    if (static_cast<int>(map.size()) > options.receiver_layers) {
      for (size_t t = options.receiver_layers; t < map.size(); ++t) {
        if (map[t]) {
          return absl::InvalidArgumentError(
              absl::StrCat("layer map fuses receiver layer ", t,
                           " but the receiver has ", options.receiver_layers));
        }
      }
    }
    map.resize(options.receiver_layers);
  }
  RETURN_IF_ERROR(
      ValidateFuserLayerMap(map, ckpt.num_projectors(), options.sharer_layers));

  std::vector<C2CProjector> projectors;
  projectors.reserve(ckpt.args.size());
  for (size_t i = 0; i < ckpt.args.size(); ++i) {
    const std::string name = absl::StrCat(
        "projector_", i,
        ckpt.format == FuserWeightFormat::kSafetensors ? ".safetensors"
                                                       : ".pt");
    ASSIGN_OR_RETURN(
        C2CProjector p,
        C2CProjector::Create(ckpt.args[i], ckpt.weights[i], options.projector,
                             options.strict, name));
    projectors.push_back(std::move(p));
  }
  return Create(std::move(projectors), std::move(map));
}

absl::StatusOr<std::unique_ptr<C2CFuser>> C2CFuser::Create(
    std::vector<C2CProjector> projectors, FuserLayerMap layer_map) {
  RETURN_IF_ERROR(
      ValidateFuserLayerMap(layer_map, static_cast<int>(projectors.size())));
  return std::unique_ptr<C2CFuser>(
      new C2CFuser(std::move(projectors), std::move(layer_map)));
}

absl::Status C2CFuser::CheckModels(int receiver_layers,
                                   int64_t receiver_kv_heads,
                                   int64_t receiver_head_dim, int sharer_layers,
                                   int64_t sharer_kv_heads,
                                   int64_t sharer_head_dim) const {
  for (size_t t = 0; t < layer_map_.size(); ++t) {
    if (!layer_map_[t]) continue;
    if (static_cast<int>(t) >= receiver_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("fuser: receiver layer ", t,
                       " is fused but the "
                       "receiver has ",
                       receiver_layers, " layers"));
    }
    if (layer_map_[t]->sharer_layer >= sharer_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("fuser: receiver layer ", t, " reads sharer layer ",
                       layer_map_[t]->sharer_layer, " but the sharer has ",
                       sharer_layers, " layers"));
    }
    const C2CProjectorArgs& a = projectors_[layer_map_[t]->projector].args();
    if (a.source_num_heads != sharer_kv_heads ||
        a.source_dim != sharer_head_dim ||
        a.target_num_heads != receiver_kv_heads ||
        a.target_dim != receiver_head_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "fuser: projector ", layer_map_[t]->projector, " maps ",
          a.source_num_heads, "x", a.source_dim, " -> ", a.target_num_heads,
          "x", a.target_dim, ", but the models have sharer ", sharer_kv_heads,
          "x", sharer_head_dim, " and receiver ", receiver_kv_heads, "x",
          receiver_head_dim));
    }
  }
  return absl::OkStatus();
}

const C2CProjector* C2CFuser::ProjectorFor(int receiver_layer) const {
  if (receiver_layer < 0 ||
      receiver_layer >= static_cast<int>(layer_map_.size()) ||
      !layer_map_[receiver_layer]) {
    return nullptr;
  }
  return &projectors_[layer_map_[receiver_layer]->projector];
}

std::optional<int> C2CFuser::SharerLayerFor(int receiver_layer) const {
  if (ProjectorFor(receiver_layer) == nullptr) return std::nullopt;
  return layer_map_[receiver_layer]->sharer_layer;
}

std::vector<int> C2CFuser::ReceiverLayersReading(int sharer_layer) const {
  std::vector<int> out;
  for (size_t t = 0; t < layer_map_.size(); ++t) {
    if (layer_map_[t] && layer_map_[t]->sharer_layer == sharer_layer) {
      out.push_back(static_cast<int>(t));
    }
  }
  return out;
}

std::vector<int> C2CFuser::SharerLayersNeeded() const {
  std::set<int> s;
  for (const auto& e : layer_map_) {
    if (e) s.insert(e->sharer_layer);
  }
  return std::vector<int>(s.begin(), s.end());
}

std::vector<int> C2CFuser::FusedReceiverLayers() const {
  std::vector<int> out;
  for (size_t t = 0; t < layer_map_.size(); ++t) {
    if (layer_map_[t]) out.push_back(static_cast<int>(t));
  }
  return out;
}

absl::Status C2CFuser::FuseLayer(int receiver_layer,
                                 const at::Tensor& sharer_keys,
                                 const at::Tensor& sharer_values,
                                 const at::Tensor& receiver_keys,
                                 const at::Tensor& receiver_values,
                                 int64_t start) const {
  const C2CProjector* p = ProjectorFor(receiver_layer);
  if (p == nullptr) return absl::OkStatus();
  absl::Status s = p->FuseRange(sharer_keys, sharer_values, start,
                                receiver_keys, receiver_values);
  if (!s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat("fusing receiver layer ", receiver_layer, ": ",
                               s.message()));
  }
  return s;
}

absl::Status C2CFuser::FuseLayerTokens(
    int receiver_layer, const at::Tensor& sharer_keys,
    const at::Tensor& sharer_values, absl::Span<const uint32_t> positions,
    const at::Tensor& receiver_keys, const at::Tensor& receiver_values) const {
  const C2CProjector* p = ProjectorFor(receiver_layer);
  if (p == nullptr) return absl::OkStatus();
  absl::Status s = p->FuseTokens(sharer_keys, sharer_values, positions,
                                 receiver_keys, receiver_values);
  if (!s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat("fusing receiver layer ", receiver_layer, ": ",
                               s.message()));
  }
  return s;
}

FusionSession::FusionSession(const C2CFuser* fuser, ReceiverKv receiver)
    : fuser_(fuser),
      receiver_(std::move(receiver)),
      fused_(fuser->layer_map().size(), false) {}

absl::StatusOr<std::vector<int>> FusionSession::AddSharerLayer(
    int sharer_layer, absl::Span<const uint32_t> positions,
    const at::Tensor& keys, const at::Tensor& values) {
  return Add(sharer_layer, keys, values, &positions, 0);
}

absl::StatusOr<std::vector<int>> FusionSession::AddSharerLayerRange(
    int sharer_layer, int64_t start, const at::Tensor& keys,
    const at::Tensor& values) {
  return Add(sharer_layer, keys, values, nullptr, start);
}

absl::StatusOr<std::vector<int>> FusionSession::Add(
    int sharer_layer, const at::Tensor& keys, const at::Tensor& values,
    const absl::Span<const uint32_t>* positions, int64_t start) {
  if (sharer_layer < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sharer layer ", sharer_layer));
  }
  if (static_cast<size_t>(sharer_layer) >= sharer_seen_.size()) {
    sharer_seen_.resize(sharer_layer + 1, false);
  }
  if (sharer_seen_[sharer_layer]) {
    return absl::FailedPreconditionError(
        absl::StrCat("sharer layer ", sharer_layer, " was already fused"));
  }
  std::vector<int> done;
  for (int t : fuser_->ReceiverLayersReading(sharer_layer)) {
    if (fused_[t]) continue;
    if (!receiver_) {
      return absl::FailedPreconditionError("no receiver cache accessor");
    }
    ASSIGN_OR_RETURN(auto kv, receiver_(t));
    FusionAccelerator* fast = fuser_->accelerator();
    if (positions != nullptr) {
      RETURN_IF_ERROR(fast != nullptr
                          ? fast->FuseLayerTokens(t, keys, values, *positions,
                                                  kv.first, kv.second)
                          : fuser_->FuseLayerTokens(t, keys, values, *positions,
                                                    kv.first, kv.second));
    } else {
      RETURN_IF_ERROR(
          fast != nullptr
              ? fast->FuseLayer(t, keys, values, kv.first, kv.second, start)
              : fuser_->FuseLayer(t, keys, values, kv.first, kv.second, start));
    }
    fused_[t] = true;
    done.push_back(t);
  }
  sharer_seen_[sharer_layer] = true;
  return done;
}

bool FusionSession::fused(int receiver_layer) const {
  return receiver_layer >= 0 &&
         receiver_layer < static_cast<int>(fused_.size()) &&
         fused_[receiver_layer];
}

std::vector<int> FusionSession::PendingReceiverLayers() const {
  std::vector<int> out;
  for (int t : fuser_->FusedReceiverLayers()) {
    if (!fused_[t]) out.push_back(t);
  }
  return out;
}

int FusionSession::num_fused() const {
  return static_cast<int>(std::count(fused_.begin(), fused_.end(), true));
}

}  // namespace kvwire
