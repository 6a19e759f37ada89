#include "common/fuser/fuser.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

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
  ASSIGN_OR_RETURN(std::unique_ptr<C2CFuser> fuser,
                   Create(std::move(projectors), std::move(map)));
  fuser->recipe_ = ckpt.recipe;
  return fuser;
}

absl::StatusOr<std::unique_ptr<C2CFuser>> C2CFuser::Create(
    std::vector<C2CProjector> projectors, FuserLayerMap layer_map) {
  RETURN_IF_ERROR(
      ValidateFuserLayerMap(layer_map, static_cast<int>(projectors.size())));
  std::unique_ptr<C2CFuser> fuser(
      new C2CFuser(std::move(projectors), std::move(layer_map)));
  RETURN_IF_ERROR(fuser->BuildStacks());
  return fuser;
}

absl::Status C2CFuser::BuildStacks() {
  slots_.assign(projectors_.size(), StackSlot{-1, 0});
  std::vector<int> order;  // Used projectors, by first receiver layer.
  std::vector<bool> used(projectors_.size(), false);
  for (const auto& e : layer_map_) {
    if (e && !used[e->projector]) {
      used[e->projector] = true;
      order.push_back(e->projector);
    }
  }
  std::vector<std::vector<C2CProjector*>> groups;
  for (int i : order) {
    size_t g = 0;
    while (g < groups.size() &&
           !C2CProjectorStack::Compatible(*groups[g][0], projectors_[i])) {
      ++g;
    }
    if (g == groups.size()) groups.emplace_back();
    slots_[i] =
        StackSlot{static_cast<int>(g), static_cast<int64_t>(groups[g].size())};
    groups[g].push_back(&projectors_[i]);
  }
  for (const auto& members : groups) {
    ASSIGN_OR_RETURN(C2CProjectorStack stack,
                     C2CProjectorStack::Build(members));
    stacks_.push_back(std::move(stack));
  }
  return absl::OkStatus();
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

namespace {

// `status` naming the receiver layer it is about.
absl::Status InReceiverLayer(int receiver_layer, absl::Status status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat("fusing receiver layer ", receiver_layer,
                                   ": ", status.message()));
}

}  // namespace

absl::Status C2CFuser::FuseLayer(int receiver_layer,
                                 const at::Tensor& sharer_keys,
                                 const at::Tensor& sharer_values,
                                 const at::Tensor& receiver_keys,
                                 const at::Tensor& receiver_values,
                                 int64_t start) const {
  const C2CProjector* p = ProjectorFor(receiver_layer);
  if (p == nullptr) return absl::OkStatus();
  return InReceiverLayer(receiver_layer,
                         p->FuseRange(sharer_keys, sharer_values, start,
                                      receiver_keys, receiver_values));
}

absl::Status C2CFuser::FuseLayerTokens(
    int receiver_layer, const at::Tensor& sharer_keys,
    const at::Tensor& sharer_values, absl::Span<const uint32_t> positions,
    const at::Tensor& receiver_keys, const at::Tensor& receiver_values) const {
  const C2CProjector* p = ProjectorFor(receiver_layer);
  if (p == nullptr) return absl::OkStatus();
  return InReceiverLayer(receiver_layer,
                         p->FuseTokens(sharer_keys, sharer_values, positions,
                                       receiver_keys, receiver_values));
}

namespace {

// [H, n, D] of an unbatched or batch-1 tensor.
at::Tensor Unbatched(const at::Tensor& t) {
  return t.dim() == 4 ? t.select(0, 0) : t;
}

// The receiver rows input i fuses into, of an unbatched receiver view.
at::Tensor ReceiverRows(const FusionPlan& plan, int i, const at::Tensor& r,
                        int64_t n) {
  const at::Tensor& index = plan.index[i];
  return index.defined() ? r.index_select(1, index)
                         : r.narrow(1, plan.start[i], n);
}

}  // namespace

absl::StatusOr<FusionPlan> C2CFuser::PlanFusion(
    absl::Span<const LayerFusionInput> inputs) const {
  const int count = static_cast<int>(inputs.size());
  std::vector<bool> seen(layer_map_.size(), false);
  for (const LayerFusionInput& in : inputs) {
    const int t = in.receiver_layer;
    const C2CProjector* p = ProjectorFor(t);
    if (p == nullptr) continue;
    if (seen[t]) {
      return absl::InvalidArgumentError(
          absl::StrCat("receiver layer ", t, " is given twice"));
    }
    seen[t] = true;
    absl::Status s =
        p->CheckFuse(in.sharer_keys, in.sharer_values, in.receiver_keys,
                     in.receiver_values, in.start, in.positions);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("fusing receiver layer ", t,
                                                 ": ", s.message()));
    }
  }
  FusionPlan plan;
  plan.start.assign(count, 0);
  plan.index.resize(count);
  // (stack, value path, tokens, receiver dtype) -> (member, input).
  std::map<std::tuple<int, bool, int64_t, at::ScalarType>,
           std::vector<std::pair<int64_t, int>>>
      groups;
  RETURN_IF_ERROR(Guarded("planning fusion", [&]() -> absl::Status {
    c10::InferenceMode guard;
    // Row indices by content, so one token selection shared by every layer
    // is copied to the device once.
    std::vector<std::pair<std::vector<int64_t>, at::Tensor>> indices;
    for (int i = 0; i < count; ++i) {
      const LayerFusionInput& in = inputs[i];
      const C2CProjector* p = ProjectorFor(in.receiver_layer);
      if (p == nullptr) continue;
      const int64_t n = in.sharer_keys.size(-2);
      if (n == 0) continue;
      if (in.sharer_keys.dim() == 4 && in.sharer_keys.size(0) != 1) {
        plan.one_by_one.push_back(i);
        continue;
      }
      if (!in.positions.has_value()) {
        plan.start[i] = in.start;
      } else {
        std::vector<int64_t> idx(in.positions->begin(), in.positions->end());
        bool contiguous = true;
        for (int64_t k = 1; k < n && contiguous; ++k) {
          contiguous = idx[k] == idx[k - 1] + 1;
        }
        if (contiguous) {
          plan.start[i] = idx[0];
        } else {
          const c10::Device device = in.receiver_keys.device();
          for (const auto& [values, tensor] : indices) {
            if (values == idx && tensor.device() == device) {
              plan.index[i] = tensor;
              break;
            }
          }
          if (!plan.index[i].defined()) {
            plan.index[i] = at::from_blob(idx.data(), {n},
                                          at::TensorOptions().dtype(at::kLong))
                                .to(device, at::kLong, /*non_blocking=*/false,
                                    /*copy=*/true);
            indices.emplace_back(std::move(idx), plan.index[i]);
          }
        }
      }
      const StackSlot slot = slots_[layer_map_[in.receiver_layer]->projector];
      for (bool value : {false, true}) {
        if (!(value ? p->value_gate_open() : p->key_gate_open())) continue;
        const at::ScalarType dtype = value ? in.receiver_values.scalar_type()
                                           : in.receiver_keys.scalar_type();
        groups[{slot.stack, value, n, dtype}].emplace_back(slot.member, i);
      }
    }
    return absl::OkStatus();
  }));
  for (auto& [key, items] : groups) {
    std::stable_sort(
        items.begin(), items.end(),
        [](const auto& a, const auto& b) { return a.first < b.first; });
    // Runs of consecutive members; a member given again (a projector shared
    // by two receiver layers) waits for a later run.
    while (!items.empty()) {
      FusionRun run;
      run.stack = std::get<0>(key);
      run.value = std::get<1>(key);
      run.tokens = std::get<2>(key);
      run.receiver_dtype = std::get<3>(key);
      run.first = items[0].first;
      std::vector<std::pair<int64_t, int>> rest;
      for (const auto& item : items) {
        if (item.first == run.first + run.count()) {
          run.inputs.push_back(item.second);
        } else {
          rest.push_back(item);
        }
      }
      plan.runs.push_back(std::move(run));
      items = std::move(rest);
    }
  }
  return plan;
}

absl::Status C2CFuser::GatherRun(const FusionPlan& plan, const FusionRun& run,
                                 absl::Span<const LayerFusionInput> inputs,
                                 const at::Tensor& sharer,
                                 const at::Tensor& receiver) const {
  return Guarded("gathering fusion inputs", [&]() -> absl::Status {
    c10::InferenceMode guard;
    for (int64_t j = 0; j < run.count(); ++j) {
      const int i = run.inputs[j];
      const LayerFusionInput& in = inputs[i];
      const at::Tensor s =
          Unbatched(run.value ? in.sharer_values : in.sharer_keys);
      const at::Tensor r =
          Unbatched(run.value ? in.receiver_values : in.receiver_keys);
      sharer.select(0, j).narrow(1, 0, run.tokens).copy_(s);
      receiver.select(0, j)
          .narrow(1, 0, run.tokens)
          .copy_(ReceiverRows(plan, i, r, run.tokens));
    }
    return absl::OkStatus();
  });
}

absl::Status C2CFuser::ScatterRun(const FusionPlan& plan, const FusionRun& run,
                                  absl::Span<const LayerFusionInput> inputs,
                                  const at::Tensor& fused) const {
  const C2CProjectorStack& stack = stacks_[run.stack];
  return Guarded("writing fused layers", [&]() -> absl::Status {
    c10::InferenceMode guard;
    for (int64_t j = 0; j < run.count(); ++j) {
      if (!stack.gate_open(run.first + j, run.value)) continue;
      const int i = run.inputs[j];
      const LayerFusionInput& in = inputs[i];
      const at::Tensor r =
          Unbatched(run.value ? in.receiver_values : in.receiver_keys);
      const at::Tensor src = fused.select(0, j).narrow(1, 0, run.tokens);
      if (plan.index[i].defined()) {
        r.index_copy_(1, plan.index[i], src.to(r.device(), r.scalar_type()));
      } else {
        r.narrow(1, plan.start[i], run.tokens).copy_(src);
      }
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<at::Tensor> C2CFuser::ComputeRun(
    const FusionPlan& plan, const FusionRun& run,
    absl::Span<const LayerFusionInput> inputs) const {
  const C2CProjectorStack& stack = stacks_[run.stack];
  const C2CProjectorArgs& a = stack.args();
  at::Tensor sharer, receiver;
  RETURN_IF_ERROR(Guarded("fusion buffers", [&]() -> absl::Status {
    c10::InferenceMode guard;
    const auto options = at::TensorOptions().device(stack.device());
    sharer =
        at::empty({run.count(), a.source_num_heads, run.tokens, a.source_dim},
                  options.dtype(stack.dtype()));
    receiver =
        at::empty({run.count(), a.target_num_heads, run.tokens, a.target_dim},
                  options.dtype(run.receiver_dtype));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(GatherRun(plan, run, inputs, sharer, receiver));
  return stack.FusePath(run.value, run.first, run.count(), sharer, receiver);
}

absl::Status C2CFuser::FuseLayers(
    absl::Span<const LayerFusionInput> inputs) const {
  ASSIGN_OR_RETURN(FusionPlan plan, PlanFusion(inputs));
  // Compute everything before writing anything (see the header).
  std::vector<at::Tensor> fused;
  fused.reserve(plan.runs.size());
  for (const FusionRun& run : plan.runs) {
    ASSIGN_OR_RETURN(at::Tensor f, ComputeRun(plan, run, inputs));
    fused.push_back(std::move(f));
  }
  for (size_t k = 0; k < plan.runs.size(); ++k) {
    RETURN_IF_ERROR(ScatterRun(plan, plan.runs[k], inputs, fused[k]));
  }
  for (int i : plan.one_by_one) {
    const LayerFusionInput& in = inputs[i];
    RETURN_IF_ERROR(in.positions.has_value()
                        ? FuseLayerTokens(in.receiver_layer, in.sharer_keys,
                                          in.sharer_values, *in.positions,
                                          in.receiver_keys, in.receiver_values)
                        : FuseLayer(in.receiver_layer, in.sharer_keys,
                                    in.sharer_values, in.receiver_keys,
                                    in.receiver_values, in.start));
  }
  return absl::OkStatus();
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

absl::StatusOr<std::vector<int>> FusionSession::AddSharerLayers(
    absl::Span<const SharerLayerInput> layers) {
  std::set<int> in_call;
  for (const SharerLayerInput& l : layers) {
    if (l.sharer_layer < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sharer layer ", l.sharer_layer));
    }
    if (static_cast<size_t>(l.sharer_layer) < sharer_seen_.size() &&
        sharer_seen_[l.sharer_layer]) {
      return absl::FailedPreconditionError(
          absl::StrCat("sharer layer ", l.sharer_layer, " was already fused"));
    }
    if (!in_call.insert(l.sharer_layer).second) {
      return absl::FailedPreconditionError(
          absl::StrCat("sharer layer ", l.sharer_layer, " is given twice"));
    }
  }
  std::vector<LayerFusionInput> inputs;
  for (const SharerLayerInput& l : layers) {
    for (int t : fuser_->ReceiverLayersReading(l.sharer_layer)) {
      if (fused_[t]) continue;
      if (!receiver_) {
        return absl::FailedPreconditionError("no receiver cache accessor");
      }
      ASSIGN_OR_RETURN(auto kv, receiver_(t));
      LayerFusionInput in;
      in.receiver_layer = t;
      in.sharer_keys = l.keys;
      in.sharer_values = l.values;
      in.receiver_keys = std::move(kv.first);
      in.receiver_values = std::move(kv.second);
      in.start = l.start;
      in.positions = l.positions;
      inputs.push_back(std::move(in));
    }
  }
  FusionAccelerator* fast = fuser_->accelerator();
  const absl::Status batched =
      fast != nullptr ? fast->FuseLayers(inputs) : fuser_->FuseLayers(inputs);
  if (fast != nullptr && batched.code() == absl::StatusCode::kUnimplemented) {
    // No batched fusion: one layer at a time, as AddSharerLayer does.
    for (const LayerFusionInput& in : inputs) {
      RETURN_IF_ERROR(
          in.positions.has_value()
              ? fast->FuseLayerTokens(in.receiver_layer, in.sharer_keys,
                                      in.sharer_values, *in.positions,
                                      in.receiver_keys, in.receiver_values)
              : fast->FuseLayer(in.receiver_layer, in.sharer_keys,
                                in.sharer_values, in.receiver_keys,
                                in.receiver_values, in.start));
      fused_[in.receiver_layer] = true;
    }
  } else {
    RETURN_IF_ERROR(batched);
  }
  std::vector<int> done;
  for (const LayerFusionInput& in : inputs) {
    fused_[in.receiver_layer] = true;
    done.push_back(in.receiver_layer);
  }
  for (const SharerLayerInput& l : layers) {
    if (static_cast<size_t>(l.sharer_layer) >= sharer_seen_.size()) {
      sharer_seen_.resize(l.sharer_layer + 1, false);
    }
    sharer_seen_[l.sharer_layer] = true;
  }
  std::sort(done.begin(), done.end());
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
