// CUDA-graph replay of C2C fusion (built only with KVWIRE_WITH_CUDA, as the
// kvwire_fuser_cuda library).
//
// Fusing one receiver layer is ~60 small kernels (two paths of linears,
// RMSNorms, GELUs and element-wise ops) on ~100 tokens, so eager execution is
// bound by kernel-launch overhead, not by the GPU. CudaGraphFuser replays
// captured CUDA graphs instead, of two kinds:
//
//  - Per layer (FuseLayer / FuseLayerTokens): one graph of
//    C2CProjector::ForwardInto per fused receiver layer and token bucket.
//  - Batched (FuseLayers): one graph of C2CProjectorStack::FusePathInto per
//    FusionRun shape (stack, path, members, token bucket, receiver dtype),
//    i.e. usually two graphs (keys, values) for all the fused layers.
//
// Token buckets: a call with n tokens replays the graph of the bucket
// nb = n rounded up to a multiple of Options::bucket (up to
// Options::max_tokens; beyond, eager), with its inputs in rows [0, n) of the
// graph's static buffers; only rows [0, n) are written back. Projector rows
// (tokens) are independent (RMSNorm, linears, GELU, the gate work per
// token), so the padding rows change the real ones only through the GEMM
// kernels cuBLAS picks for nb rows. A new prompt length thus reuses its
// bucket's graphs instead of capturing (~50 ms at the real shapes). Static
// buffers are shared by all buckets of one shape (views of their first nb
// rows), so a bucket costs no new buffers unless it is the largest so far.
//
// Calls the graphs cannot take run eagerly through the C2CFuser: the
// projectors not on a CUDA device, a batch > 1, a token count above
// max_tokens, a bucket not captured (and no auto-prepare budget left), or
// (per layer) tensors off the projectors' device. Results equal the eager
// path's up to cuBLAS's choices under capture and for nb rows.
//
// Thread-safe: calls are serialized (the GPU runs them one after another
// anyway), and each graph call first waits for the previous one's GPU work,
// so callers on different streams do not race on the shared static buffers
// and graph memory pool. The C2CFuser must outlive it. Errors: those of the
// eager path for inputs it rejects (checked before anything is written);
// INTERNAL if torch fails during a replay (some layers may then be written).
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
  struct Options {
    int64_t bucket = 16;       // Token buckets are multiples of this.
    int64_t max_tokens = 512;  // Token counts above run eagerly.
  };

  explicit CudaGraphFuser(const C2CFuser* fuser);
  CudaGraphFuser(const C2CFuser* fuser, const Options& options);
  ~CudaGraphFuser();
  CudaGraphFuser(const CudaGraphFuser&) = delete;
  CudaGraphFuser& operator=(const CudaGraphFuser&) = delete;

  // The bucket whose graphs serve `tokens` tokens; 0 when none may (tokens
  // <= 0 or > max_tokens).
  int64_t TokenBucket(int64_t tokens) const;

  // Captures the per-layer graphs of every fused receiver layer for the
  // bucket of `tokens`, with sharer K/V of `sharer_dtype` and a receiver
  // cache of `receiver_dtype` (no-op if already captured).
  // FAILED_PRECONDITION if the projectors are not on a CUDA device;
  // INVALID_ARGUMENT if `tokens` has no bucket; INTERNAL if capture fails
  // (the eager path stays usable).
  absl::Status Prepare(int64_t tokens, at::ScalarType sharer_dtype,
                       at::ScalarType receiver_dtype);
  // Whether per-layer graphs for the bucket of `tokens` exist.
  bool prepared(int64_t tokens) const;

  // Captures the batched graphs a FuseLayers call over every fused receiver
  // layer with `tokens` tokens (one selection for all, a receiver cache of
  // `receiver_dtype`) replays (no-op for those already captured). Errors as
  // Prepare.
  absl::Status PrepareBatched(int64_t tokens, at::ScalarType receiver_dtype);
  // Whether some batched graph for the bucket of `tokens` exists.
  bool prepared_batched(int64_t tokens) const;

  // As C2CFuser::FuseLayer / FuseLayerTokens, replaying a per-layer graph
  // when one fits (see above) and running eagerly otherwise.
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
  // As C2CFuser::FuseLayers (same checks, same plan), replaying a batched
  // graph for each run that has one and computing the others eagerly;
  // inputs with a batch > 1 go through FuseLayer / FuseLayerTokens.
  absl::Status FuseLayers(absl::Span<const LayerFusionInput> inputs) override;

  // A call whose bucket has no graphs yet captures them first: per-layer
  // graphs for up to `max_buckets` distinct (bucket, dtypes), batched graphs
  // for up to `max_batched_graphs` distinct runs; beyond that, eager. A
  // failed capture turns that kind of auto-prepare off.
  void set_auto_prepare(int max_buckets, int max_batched_graphs = 64);

  // Replays and captures so far (for tests and benchmarks): one per graph,
  // per-layer and batched alike.
  int64_t replays() const;
  int64_t captures() const;

 private:
  struct Impl;
  absl::Status PrepareLocked(int64_t bucket, at::ScalarType sharer_dtype,
                             at::ScalarType receiver_dtype);
  // With Impl::mu held: captures the per-layer graphs this call needs
  // (auto-prepare).
  void MaybeAutoPrepareLocked(int64_t bucket, const at::Tensor& sharer_keys,
                              const at::Tensor& receiver_keys);
  // With Impl::mu held: captures the batched graph of `run`'s shape for
  // `bucket` (no-op if captured).
  absl::Status CaptureRunLocked(const FusionRun& run, int64_t bucket);
  absl::Status FuseLayerLocked(int receiver_layer, const at::Tensor& sk,
                               const at::Tensor& sv, const at::Tensor& rk,
                               const at::Tensor& rv, int64_t start);
  absl::Status FuseLayerTokensLocked(int receiver_layer, const at::Tensor& sk,
                                     const at::Tensor& sv,
                                     absl::Span<const uint32_t> positions,
                                     const at::Tensor& rk,
                                     const at::Tensor& rv);

  const C2CFuser* fuser_;
  Options options_;
  std::unique_ptr<Impl> impl_;
};

// Gives `fuser` a CudaGraphFuser (auto-preparing up to 32 token buckets of
// per-layer graphs and 64 batched graphs) as its FusionAccelerator when its
// projectors are on a CUDA device and the environment does not say
// KVWIRE_CUDA_GRAPH_FUSE=0 (then FusionSession runs the eager paths,
// batched included). Returns it, or null when not installed.
std::shared_ptr<CudaGraphFuser> InstallCudaGraphFuser(C2CFuser& fuser);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FUSER_CUDA_GRAPH_FUSER_H_
