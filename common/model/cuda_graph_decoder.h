// CUDA-graph replay of batch-1 decode steps and of prompt prefills (built
// only with KVWIRE_WITH_CUDA, as the kvwire_model_cuda library).
//
// An eager decode step of a small model is ~1000+ tiny kernels, so it is
// bound by launch overhead, not by the GPU. CudaGraphDecoder captures
// Decoder::StaticDecodeStep (whose shapes do not depend on the position)
// once per (KV cache storage, key span bucket) as a CUDA graph and replays
// it: per step it writes the token id, position and RoPE offset into device
// scalars,
// replays, and copies the logits out. With fused_kernels, RMSNorm, RoPE and
// SiLU*up run as single fused kernels (decode_kernels.h) inside the graph.
// Sampling stays in Decoder::Sample, on the returned logits.
//
// A graph bakes in the addresses of the cache storage, so graphs are keyed by
// the storage's address and shape (a cache freed and another allocated at
// the same address with the same shape reuses the graph correctly: only the
// address and shape are baked in). At most max_graphs graphs are kept (least
// recently used evicted). All graphs share one memory pool and run on one
// private stream, ordered after the caller's current stream with events, so
// replays never overlap. Thread-safe: a call that finds the decoder busy on
// another thread declines (the decoder then runs that step eagerly).
//
// Results: the same as the eager DecodeStep up to the order of floating-point
// reductions (masked attention over the span bucket instead of exactly the
// valid keys, fused fp32 reductions); greedy tokens match unless two logits
// are within that noise.
#ifndef KVWIRE_COMMON_MODEL_CUDA_GRAPH_DECODER_H_
#define KVWIRE_COMMON_MODEL_CUDA_GRAPH_DECODER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model/batched_decode.h"
#include "common/model/batched_prefill.h"
#include "common/model/decoder.h"

namespace kvwire {

struct CudaGraphDecoderOptions {
  // Smallest key span captured (spans are powers of two up to capacity).
  int64_t min_span = 64;
  // Graphs kept (one per cache storage and span bucket).
  int max_graphs = 16;
  // Fused RMSNorm / RoPE / SiLU*up kernels instead of ATen op chains.
  bool fused_kernels = true;
};

class CudaGraphDecoder : public DecodeAccelerator {
 public:
  // `decoder` must outlive this object and run on a CUDA device.
  explicit CudaGraphDecoder(const Decoder* decoder,
                            CudaGraphDecoderOptions options = {});
  ~CudaGraphDecoder() override;
  CudaGraphDecoder(const CudaGraphDecoder&) = delete;
  CudaGraphDecoder& operator=(const CudaGraphDecoder&) = delete;

  absl::StatusOr<at::Tensor> DecodeStep(const Decoder& decoder,
                                        int64_t token_id,
                                        const KvCache& cache) override;

  const CudaGraphDecoderOptions& options() const { return options_; }
  // Counters (for tests and benchmarks).
  int64_t replays() const;
  int64_t captures() const;
  int64_t declined() const;  // Busy, unsupported cache or failed capture.
  int64_t cached_graphs() const;

 private:
  struct Impl;
  const Decoder* decoder_;
  CudaGraphDecoderOptions options_;
  std::unique_ptr<Impl> impl_;
};

struct CudaGraphPrefillOptions {
  // Prompt lengths are padded up to a multiple of this (one graph serves a
  // bucket of lengths).
  int64_t bucket = 32;
  // Longer prompts run eagerly: their kernels are large enough that launch
  // overhead no longer dominates. Also the staging cache's capacity.
  int64_t max_tokens = 512;
  int max_graphs = 16;  // (bucket, with-logits) graphs kept, LRU.
  bool fused_kernels = true;
};

// CUDA-graph replay of prompt prefills (a PrefillAccelerator). An eager
// prefill of a small model is ~40 kernels per layer, launch-bound on the
// CPU (19 ms for 117 tokens of Qwen3-0.6B on an H200). CudaGraphPrefill
// captures Decoder::StaticDecodeStep over a whole bucket of T tokens (the
// prompt right-padded with its last token) into a private staging cache,
// once per bucket, and per call uploads the tokens, replays, and copies the
// n real positions of every layer into the caller's cache with one copy
// kernel. Because the graph writes only its own staging cache, it does not
// depend on the caller's cache address: one graph serves every request of
// the bucket. Causal attention makes the real tokens' K/V and logits
// independent of the padding; results equal the eager prefill up to the
// order of floating-point reductions (masked attention over the bucket,
// GEMMs over padded rows, fused kernels).
//
// Thread-safe: calls are serialized on one private stream (ordered after the
// caller's stream with events); a busy accelerator makes callers wait, as
// replays are short. Declines (eager prefill) prompts longer than max_tokens,
// other decoders, CPU caches, and buckets whose capture failed.
class CudaGraphPrefill : public PrefillAccelerator {
 public:
  // `decoder` must outlive this object and run on a CUDA device.
  explicit CudaGraphPrefill(const Decoder* decoder,
                            CudaGraphPrefillOptions options = {});
  ~CudaGraphPrefill() override;
  CudaGraphPrefill(const CudaGraphPrefill&) = delete;
  CudaGraphPrefill& operator=(const CudaGraphPrefill&) = delete;

  absl::StatusOr<AcceleratedPrefill> Prefill(
      const Decoder& decoder, absl::Span<const int64_t> token_ids,
      const KvCache& cache, bool want_logits) override;

  const CudaGraphPrefillOptions& options() const { return options_; }
  int64_t replays() const;
  int64_t captures() const;
  int64_t declined() const;

 private:
  struct Impl;
  const Decoder* decoder_;
  CudaGraphPrefillOptions options_;
  DecodeStepKernels kernels_;
  std::unique_ptr<Impl> impl_;
};

// The fused kernels (decode_kernels.h) as DecodeStepKernels, for CUDA
// tensors; each falls back to ATen ops for inputs it does not handle.
DecodeStepKernels FusedDecodeKernels();

// Installs a CudaGraphDecoder on `decoder` when it runs on CUDA, unless the
// environment variable KVWIRE_CUDA_GRAPH_DECODE is "0" (and with
// KVWIRE_CUDA_GRAPH_FUSED_KERNELS=0, without the fused kernels). Returns it,
// or nullptr when nothing was installed. Call before sharing the decoder.
std::shared_ptr<CudaGraphDecoder> InstallCudaGraphDecoder(
    Decoder& decoder, CudaGraphDecoderOptions options = {});

// Installs a CudaGraphPrefill on `decoder` when it runs on CUDA, unless
// KVWIRE_CUDA_GRAPH_PREFILL is "0" (KVWIRE_CUDA_GRAPH_FUSED_KERNELS=0 drops
// the fused kernels). Returns it, or nullptr. Call before sharing the decoder.
std::shared_ptr<CudaGraphPrefill> InstallCudaGraphPrefill(
    Decoder& decoder, CudaGraphPrefillOptions options = {});

// A BatchedDecodeAccelerator::StepRunner that replays batched static steps
// (decode steps, or batched prefills' padded rows) as CUDA graphs, one per
// (storage, rows, tokens per row, span), with options' fused kernels and up
// to 4 * max_graphs graphs; eager on CPU or when a capture fails.
BatchedDecodeAccelerator::StepRunner CudaGraphStepRunner(
    CudaGraphDecoderOptions options = {});

// What the services and the pipeline install on every model on CUDA: the
// graph prefill and the graph decoder (each with its off switch), plus the
// request batching `batching` asks for (InstallRequestBatching) with graph
// runners, in front of them. Errors: allocating the pool. No-op on CPU.
absl::Status InstallCudaGraphAccelerators(
    Decoder& decoder, const RequestBatchingOptions& batching = {});

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_CUDA_GRAPH_DECODER_H_
