// Fusion batched across requests: concurrent requests' whole-stream fusions
// (FusionSession::AddSharerLayers, the receiver's when_complete schedule)
// run as one computation per projector stack and path.
//
// A projector's rows (tokens) are independent (C2CProjectorStack), so the
// same receiver layers of several requests can run as one stacked forward
// over their tokens concatenated, instead of one small forward per request.
// RequestFusionBatcher, a FusionAccelerator, queues each FuseLayers call
// (StepBatcher); the caller that finds the fuser idle takes every queued
// call (up to max_requests), groups their FusionRuns by shape (stack, path,
// layers, receiver dtype), gathers each group's tokens side by side, runs
// C2CProjectorStack::FusePath once per group, and writes each request's
// rows back into its own cache. A call alone goes to `inner` (e.g. the
// CUDA-graph fuser) or the fuser's eager path, as do per-layer calls.
//
// Results equal each request fused alone up to the GEMMs' accumulation
// order. As C2CFuser::FuseLayers: inputs are checked before anything is
// written, and every group is computed before any request is written.
// Thread-safe. Errors: absl::Status (INVALID_ARGUMENT for bad inputs,
// INTERNAL when Torch fails, then for every request of that batch);
// c10::Error never escapes.
#ifndef KVWIRE_COMMON_FUSER_REQUEST_FUSION_BATCHER_H_
#define KVWIRE_COMMON_FUSER_REQUEST_FUSION_BATCHER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/fuser/fuser.h"
#include "common/model/step_batcher.h"

namespace kvwire {

struct RequestFusionBatcherOptions {
  // Requests fused together at most.
  int64_t max_requests = 8;
  StepGathering gathering;
};

class RequestFusionBatcher : public FusionAccelerator {
 public:
  // `fuser` must outlive this object; `inner` may be null.
  RequestFusionBatcher(const C2CFuser* fuser,
                       std::shared_ptr<FusionAccelerator> inner,
                       RequestFusionBatcherOptions options = {});

  absl::Status FuseLayers(absl::Span<const LayerFusionInput> inputs) override;
  absl::Status FuseLayer(int receiver_layer, const at::Tensor& sharer_keys,
                         const at::Tensor& sharer_values,
                         const at::Tensor& receiver_keys,
                         const at::Tensor& receiver_values,
                         int64_t start) override;
  absl::Status FuseLayerTokens(int receiver_layer,
                               const at::Tensor& sharer_keys,
                               const at::Tensor& sharer_values,
                               absl::Span<const uint32_t> positions,
                               const at::Tensor& receiver_keys,
                               const at::Tensor& receiver_values) override;

  // Counters: FuseLayers calls served, batches run, the largest batch.
  int64_t calls() const { return batcher_.steps(); }
  int64_t batches() const { return batcher_.batches(); }
  int64_t max_batch() const { return batcher_.max_batch(); }

 private:
  struct Pending;
  // FuseLayers of one request: `inner`'s, else the fuser's.
  absl::Status FuseAlone(absl::Span<const LayerFusionInput> inputs);
  absl::Status FuseTogether(const std::vector<Pending*>& batch);

  const C2CFuser* const fuser_;
  const std::shared_ptr<FusionAccelerator> inner_;
  StepBatcher batcher_;
};

// Puts a RequestFusionBatcher of `max_requests` (> 1) in front of the
// accelerator `fuser` has (the CUDA-graph fuser, if installed); 0 or 1
// leaves it as it is. Call after loading, before any session.
void InstallRequestFusionBatcher(C2CFuser& fuser, int64_t max_requests,
                                 StepBatchObserver observer = nullptr);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FUSER_REQUEST_FUSION_BATCHER_H_
