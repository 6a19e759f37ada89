// Fused CUDA kernels for the CUDA-graph decode step (cuda_graph_decoder.h):
// each replaces a chain of small ATen kernels of Decoder::StaticDecodeStep
// and rounds exactly where the ATen reference rounds (fp32 math, one
// rounding to the tensor dtype per reference op), so results match up to the
// order of fp32 reductions. Pure CUDA runtime on raw device pointers: no
// Torch; built only with KVWIRE_WITH_CUDA, in kvwire_model_cuda.
#ifndef KVWIRE_COMMON_MODEL_DECODE_KERNELS_H_
#define KVWIRE_COMMON_MODEL_DECODE_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kvwire {
namespace decode_kernels {

enum class Dtype { kFp32, kBf16, kFp16 };

// HF RMSNorm of `rows` contiguous rows of `cols` values: out = weight *
// cast(x * rsqrt(mean(x^2) + eps)), statistics in fp32. x, weight and out
// share `dtype`; out may not alias x.
cudaError_t RmsNorm(const void* x, const void* weight, void* out, int64_t rows,
                    int64_t cols, float eps, Dtype dtype, cudaStream_t stream);

// HF rotate-half RoPE of `rows` contiguous rows of `dim` (even) values with
// `positions` cos/sin rows [positions, dim], row r using row r % positions
// (x laid out [..., positions, dim]): out = x * cos + rotate_half(x) * sin,
// each product and the sum rounded to `dtype`.
cudaError_t Rope(const void* x, const void* cos, const void* sin, void* out,
                 int64_t rows, int64_t dim, int64_t positions, Dtype dtype,
                 cudaStream_t stream);

// SwiGLU: for `rows` contiguous rows of 2n values [gate | up],
// out[r, i] = cast(cast(silu(gate[i])) * up[i]) (out: rows x n).
cudaError_t SiluMul(const void* gate_up, void* out, int64_t rows, int64_t n,
                    Dtype dtype, cudaStream_t stream);

}  // namespace decode_kernels
}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_DECODE_KERNELS_H_
