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
// eager C2CFuser path. Not thread-safe; the C2CFuser must outlive it.
#ifndef KVWIRE_COMMON_FUSER_CUDA_GRAPH_FUSER_H_
#define KVWIRE_COMMON_FUSER_CUDA_GRAPH_FUSER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/fuser/fuser.h"

namespace kvwire {

class CudaGraphFuser {
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
                         const at::Tensor& receiver_values, int64_t start = 0);
  absl::Status FuseLayerTokens(int receiver_layer,
                               const at::Tensor& sharer_keys,
                               const at::Tensor& sharer_values,
                               absl::Span<const uint32_t> positions,
                               const at::Tensor& receiver_keys,
                               const at::Tensor& receiver_values);

  // Replays so far (for tests and benchmarks).
  int64_t replays() const;

 private:
  struct Impl;
  const C2CFuser* fuser_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FUSER_CUDA_GRAPH_FUSER_H_
