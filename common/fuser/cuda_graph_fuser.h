// CUDA-graph replay of C2C fusion (built only with KVWIRE_WITH_CUDA, as the
// kvwire_fuser_cuda library).
//
// Fusing one receiver layer is ~60 small kernels (two paths of linears,
// RMSNorms, GELUs and element-wise ops) on ~100 tokens, so eager execution is
// bound by kernel-launch overhead, not by the GPU. CudaGraphFuser captures,
// per fused receiver layer and per token count n, one CUDA graph of
// C2CProjector::ForwardInto over static input/output buffers; FuseLayer then
// copies the inputs in, replays the graph and copies the result into the
// receiver's cache (same kernels, same results as eager up to cuBLAS's
// choices under capture). Graphs of all layers share one memory pool.
//
// Requirements for the graph path: the projector and every tensor on one
// CUDA device, unbatched [H, n, D] or batch-1 [1, H, n, D] inputs, and a
// token count that Prepare() captured; anything else falls back to the
// eager C2CFuser path. Thread-safe (calls are serialized: the GPU runs them
// one after another anyway); the C2CFuser must outlive it.
#ifndef KVWIRE_COMMON_FUSER_CUDA_GRAPH_FUSER_H_
#define KVWIRE_COMMON_FUSER_CUDA_GRAPH_FUSER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/fuser/fuser.h"

namespace kvwire {

class CudaGraphFuser final : public FusionAccelerator {
 public:
  explicit CudaGraphFuser(const C2CFuser* fuser);
  ~CudaGraphFuser();
  CudaGraphFuser(const CudaGraphFuser&) = delete;
  CudaGraphFuser& operator=(const CudaGraphFuser&) = delete;

  // Captures the graphs of every fused receiver layer for `tokens` tokens
  // with sharer K/V of `sharer_dtype` and a receiver cache of
  // `receiver_dtype` (no-op if already captured). FAILED_PRECONDITION if the
  // projectors are not on a CUDA device; INTERNAL if capture fails (the
  // eager path stays usable).
  absl::Status Prepare(int64_t tokens, at::ScalarType sharer_dtype,
                       at::ScalarType receiver_dtype);
  bool prepared(int64_t tokens) const;

  // As C2CFuser::FuseLayer / FuseLayerTokens, replaying a graph when one
  // fits (see above) and running eagerly otherwise.
  absl::Status FuseLayer(int receiver_layer, const at::Tensor& sharer_keys,
                         const at::Tensor& sharer_values,
                         const at::Tensor& receiver_keys,
                         const at::Tensor& receiver_values,
                         int64_t start = 0) override;
  absl::Status FuseLayerTokens(int receiver_layer,
                               const at::Tensor& sharer_keys,
                               const at::Tensor& sharer_values,
                               absl::Span<const uint32_t> positions,
                               const at::Tensor& receiver_keys,
                               const at::Tensor& receiver_values) override;

  // A call whose token count has no graphs yet captures them first (the
  // first request of each prompt length pays ~50 ms at the real shapes),
  // for up to `max_token_counts` distinct counts; beyond that, eager.
  void set_auto_prepare(int max_token_counts);

  // Replays so far (for tests and benchmarks).
  int64_t replays() const;

 private:
  struct Impl;
  absl::Status PrepareLocked(int64_t tokens, at::ScalarType sharer_dtype,
                             at::ScalarType receiver_dtype);
  // With Impl::mu held: captures the graphs this call needs (auto-prepare).
  void MaybeAutoPrepareLocked(const at::Tensor& sharer_keys,
                              const at::Tensor& receiver_keys);

  const C2CFuser* fuser_;
  std::unique_ptr<Impl> impl_;
};

// Gives `fuser` a CudaGraphFuser (auto-preparing up to 32 token counts) as
// its FusionAccelerator when its projectors are on a CUDA device and the
// environment does not say KVWIRE_CUDA_GRAPH_FUSE=0. Returns it, or null
// when not installed.
std::shared_ptr<CudaGraphFuser> InstallCudaGraphFuser(C2CFuser& fuser);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FUSER_CUDA_GRAPH_FUSER_H_
