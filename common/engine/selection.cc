#include "common/engine/selection.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/codec/token_selection.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {

const char* SelectionStrategyName(SelectionStrategy strategy) {
  switch (strategy) {
    case SelectionStrategy::kSpec:
      return "spec";
    case SelectionStrategy::kProjVNormTopK:
      return "proj_vnorm_topk";
    case SelectionStrategy::kDeltaProjVNormTopK:
      return "delta_proj_vnorm_topk";
    case SelectionStrategy::kReceiverAttention:
      return "receiver_attention";
    case SelectionStrategy::kReceiverVNorm:
      return "receiver_vnorm";
  }
  return "?";
}

absl::StatusOr<SelectionStrategy> ParseSelectionStrategy(
    absl::string_view name) {
  for (SelectionStrategy s :
       {SelectionStrategy::kSpec, SelectionStrategy::kProjVNormTopK,
        SelectionStrategy::kDeltaProjVNormTopK,
        SelectionStrategy::kReceiverAttention,
        SelectionStrategy::kReceiverVNorm}) {
    if (name == SelectionStrategyName(s)) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown selection strategy '", name,
                   "' (spec, proj_vnorm_topk, delta_proj_vnorm_topk, "
                   "receiver_attention, receiver_vnorm)"));
}

absl::StatusOr<at::Tensor> ProjectorSelectionScores(const C2CFuser& fuser,
                                                    const LayerKvFn& sharer,
                                                    const LayerKvFn& receiver,
                                                    bool delta) {
  const std::vector<int> layers = fuser.FusedReceiverLayers();
  if (layers.empty()) {
    return absl::InvalidArgumentError("the fuser fuses no receiver layer");
  }
  at::Tensor sum;
  for (int t : layers) {
    const C2CProjector* p = fuser.ProjectorFor(t);
    const int s = *fuser.SharerLayerFor(t);
    ASSIGN_OR_RETURN(auto skv, sharer(s));
    ASSIGN_OR_RETURN(auto rkv, receiver(t));
    ASSIGN_OR_RETURN(auto pw, p->ProjectAndWeight(skv.second, rkv.second,
                                                  /*value=*/true));
    RETURN_IF_ERROR(Guarded(
        absl::StrCat("scoring receiver layer ", t), [&]() -> absl::Status {
          c10::InferenceMode guard;
          // delta = g * w * P, in fp32 as the fusion computes it.
          at::Tensor d = pw.second.to(at::kFloat) * pw.first.to(at::kFloat);
          if (!p->value_gate_open()) d = at::zeros_like(d);
          const at::Tensor x =
              delta ? d : rkv.second.to(d.device()).to(at::kFloat) + d;
          const at::Tensor score = TokenNormScores(x).to(at::kCPU);
          if (!score.defined()) {
            return absl::InvalidArgumentError(absl::StrCat(
                "receiver layer ", t, ": cannot score ", c10::str(x.sizes())));
          }
          if (sum.defined() && sum.size(0) != score.size(0)) {
            return absl::InvalidArgumentError(
                absl::StrCat("receiver layer ", t, " has ", score.size(0),
                             " tokens, earlier layers ", sum.size(0)));
          }
          sum = sum.defined() ? sum + score : score;
          return absl::OkStatus();
        }));
  }
  return sum / static_cast<double>(layers.size());
}

absl::StatusOr<v1::TokenSelection> ExplicitSelectionFromScores(
    const v1::TokenSelection& requested, uint32_t total_tokens,
    const at::Tensor& scores) {
  const int64_t k = SelectedTokenCount(total_tokens, requested.proportion(),
                                       requested.min_tokens());
  v1::TokenSelection out;
  if (k >= static_cast<int64_t>(total_tokens)) {
    out.set_mode(v1::SELECTION_ALL);
    return out;
  }
  ASSIGN_OR_RETURN(std::vector<uint32_t> picked,
                   SelectTokensByScores(requested, total_tokens, scores));
  out.set_mode(v1::SELECTION_EXPLICIT);
  out.set_proportion(requested.proportion());
  out.set_min_tokens(requested.min_tokens());
  for (uint32_t i : picked) out.add_indices(i);
  return out;
}

double Jaccard(absl::Span<const uint32_t> a, absl::Span<const uint32_t> b) {
  const std::set<uint32_t> sa(a.begin(), a.end()), sb(b.begin(), b.end());
  if (sa.empty() && sb.empty()) return 1.0;
  std::vector<uint32_t> both;
  std::set_intersection(sa.begin(), sa.end(), sb.begin(), sb.end(),
                        std::back_inserter(both));
  const double uni = static_cast<double>(sa.size() + sb.size() - both.size());
  return static_cast<double>(both.size()) / uni;
}

}  // namespace kvwire
