// Token-selection strategies beyond what the sharer computes on its own
// (token_selection.h), all ending as an explicit index list
// (SELECTION_EXPLICIT) in the TransferSpec, so none needs a new wire value:
//
//  * Projector-aware (quantized-c2c-prototype.md §4.1; seed M8/M9). They need
//    the sharer's and the receiver's caches at once, so they exist only in
//    the in-process pipeline:
//      proj_vnorm_topk        score(t) = mean over receiver KV heads of
//                             ||V_fused[h, t, :]||_2, V_fused = V_recv +
//                             g * w * P the projector's output from the
//                             *unquantized* sharer V;
//      delta_proj_vnorm_topk  score(t) = mean over heads of
//                             ||V_fused[h, t, :] - V_recv[h, t, :]||_2 with
//                             the sharer V quantized by the requested scheme
//                             first (scales over the whole prompt).
//    The prototype selects per (sharer, receiver) layer pair; the v1 wire
//    carries one explicit list for all layers, so kvwire averages the
//    per-token scores over the fused receiver layers and sends one shared
//    selection.
//  * Receiver-guided (ReceiverSignal in receiver_session.h): the receiver
//    scores prompt tokens from its own cache before anything is sent (the
//    attention of its last prompt token over the prompt, or its V norms), and
//    the services send the top-k as explicit indices in the ShareRequest.
//
// k follows the requested TokenSelection (proportion, min_tokens) exactly as
// for the wire's own modes (SelectedTokenCount).
#ifndef KVWIRE_COMMON_ENGINE_SELECTION_H_
#define KVWIRE_COMMON_ENGINE_SELECTION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/fuser/fuser.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

enum class SelectionStrategy {
  kSpec,                // spec.selection as given (computed by the sharer).
  kProjVNormTopK,       // proj_vnorm_topk (in-process only).
  kDeltaProjVNormTopK,  // delta_proj_vnorm_topk (in-process only).
  kReceiverAttention,   // Receiver-guided: last-token attention.
  kReceiverVNorm,       // Receiver-guided: receiver V norms.
};

// "spec", "proj_vnorm_topk", "delta_proj_vnorm_topk", "receiver_attention",
// "receiver_vnorm".
const char* SelectionStrategyName(SelectionStrategy strategy);
absl::StatusOr<SelectionStrategy> ParseSelectionStrategy(
    absl::string_view name);

// (keys, values) of one layer, [heads, T, head_dim].
using LayerKvFn =
    std::function<absl::StatusOr<std::pair<at::Tensor, at::Tensor>>(int layer)>;

// Projector-aware scores [T] (fp32, CPU) averaged over the receiver layers
// the fuser fuses: `sharer(s)` gives sharer layer s ([Hs, T, Ds]; pass the
// quantized-dequantized layer for the delta mode), `receiver(t)` the
// receiver's own layer t ([Ht, T, Dt]). `delta` picks
// delta_proj_vnorm_topk, else proj_vnorm_topk. INVALID_ARGUMENT if the
// fuser fuses no layer or shapes disagree.
absl::StatusOr<at::Tensor> ProjectorSelectionScores(const C2CFuser& fuser,
                                                    const LayerKvFn& sharer,
                                                    const LayerKvFn& receiver,
                                                    bool delta);

// The selection to put in the TransferSpec for `scores` ([T]) under the
// requested proportion / min_tokens: SELECTION_ALL when every token is kept,
// else SELECTION_EXPLICIT with the top-k indices (ties to the lower index),
// ascending.
absl::StatusOr<v1::TokenSelection> ExplicitSelectionFromScores(
    const v1::TokenSelection& requested, uint32_t total_tokens,
    const at::Tensor& scores);

// |a ∩ b| / |a ∪ b| of two index sets (1 when both are empty).
double Jaccard(absl::Span<const uint32_t> a, absl::Span<const uint32_t> b);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_ENGINE_SELECTION_H_
