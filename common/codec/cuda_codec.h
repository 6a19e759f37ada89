// Torch-facing adapter of the fused CUDA codec kernels (cuda_quantize.h):
// what Quantize, Dequantize, EncodeBlock and DecodeBlockValues call for CUDA
// tensors. Only compiled with KVWIRE_WITH_CUDA.
//
// Each function returns true when the kernels did the work, false when the
// caller must take the ATen path instead: the tensor is not on a CUDA
// device, or its dtype, scheme (passthrough), granularity or shape is one the
// kernels do not handle, or the input holds NaN/Inf or a scale overflows fp16
// (the ATen path then produces the precise INVALID_ARGUMENT). An error status
// is a CUDA failure. Results are bit-identical to the CPU path.
#ifndef KVWIRE_COMMON_CODEC_CUDA_CODEC_H_
#define KVWIRE_COMMON_CODEC_CUDA_CODEC_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/codec/cuda_quantize.h"
#include "common/codec/quantizer.h"
#include "common/codec/scheme.h"

namespace kvwire {

// Quantizes the CUDA tensor `x` ([heads, T, head_dim], bf16/fp16/fp32, unit
// stride along head_dim or it is made contiguous) into device tensors, as
// Quantize does. When `token_index` is defined (int64, on x's device, every
// entry in [0, T)), the block is x's tokens at those positions, gathered in
// the same pass.
// The kernels' parameters for `params`; nullopt for what they do not encode
// (passthrough schemes, unknown granularities).
std::optional<CudaQuantParams> ToCudaQuantParams(const QuantParams& params);

absl::StatusOr<bool> CudaQuantizeTensor(const at::Tensor& x,
                                        const at::Tensor& token_index,
                                        const QuantParams& params,
                                        QuantizedTensor* out);

// The host bytes of a quantized block, as the wire carries them.
struct HostQuantizedBlock {
  std::string values;  // Packed codes.
  std::string scales;  // fp16, little-endian.
  std::string zero_points;
};

// As CudaQuantizeTensor, then copies only the packed codes, scales and zero
// points to `out` through one pinned staging buffer (one device-to-host copy
// and one stream synchronization per block).
absl::StatusOr<bool> CudaQuantizeToHost(const at::Tensor& x,
                                        const at::Tensor& token_index,
                                        const QuantParams& params,
                                        HostQuantizedBlock* out);

// One block of a batch: CudaQuantizeToHost's arguments.
struct CudaBlockToEncode {
  at::Tensor x;
  at::Tensor token_index;
  QuantParams params;
};
// CudaQuantizeToHost for several blocks at once: every kernel is enqueued
// into one device arena, then all their bytes come to the host with one
// device-to-host copy into pinned memory and one stream synchronization.
// Entry i is nullopt where the kernels do not apply to block i (as
// CudaQuantizeToHost's false: the caller's ATen path), including blocks on
// another device than the first applicable one. INTERNAL for CUDA errors.
absl::StatusOr<std::vector<std::optional<HostQuantizedBlock>>>
CudaQuantizeBlocksToHost(absl::Span<const CudaBlockToEncode> blocks);

// Dequantize for `q.packed` on a CUDA device (scales on any device; they
// must be finite and of the right shapes, as Dequantize checks first).
absl::StatusOr<bool> CudaDequantizeTensor(
    const QuantizedTensor& q, const QuantParams& params, int64_t heads,
    int64_t tokens, int64_t head_dim, at::ScalarType dtype, at::Tensor* out);

// Decodes a block's host bytes (sizes already validated by the caller) onto
// the CUDA `device`: one host-to-device copy of codes, scales and zero points
// from a pinned staging buffer, then the unpack + dequantize kernel. False
// (ATen path) also for non-finite scales or zero points.
absl::StatusOr<bool> CudaDequantizeFromHost(
    const std::string& values, const std::string& scales,
    const std::string& zero_points, const QuantParams& params, int64_t heads,
    int64_t tokens, int64_t head_dim, at::ScalarType dtype, at::Device device,
    at::Tensor* out);

// One block of a decode batch: CudaDequantizeFromHost's arguments (the
// strings are not owned and must outlive the call).
struct CudaBlockToDecode {
  const std::string* values = nullptr;
  const std::string* scales = nullptr;
  const std::string* zero_points = nullptr;
  QuantParams params;
  int64_t heads = 0, tokens = 0, head_dim = 0;
};
// CudaDequantizeFromHost for several blocks at once: one pinned staging
// buffer (one wait for its previous copy), one host-to-device copy, then a
// kernel per block. Entry i is nullopt where the kernels do not apply to
// block i (the caller's ATen path). INTERNAL for CUDA errors.
absl::StatusOr<std::vector<std::optional<at::Tensor>>>
CudaDequantizeBlocksFromHost(absl::Span<const CudaBlockToDecode> blocks,
                             at::ScalarType dtype, at::Device device);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_CUDA_CODEC_H_
