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

// One layer's step from the QKV projection to the cache, fused (what
// RmsNorm on query and key heads, Rope on both and two cache writes do, with
// the same roundings): qkv holds B * T rows of [H query heads | Hkv key
// heads | Hkv value heads] x dim values, row r at qkv + r * qkv_row_stride.
struct QkvToCacheArgs {
  const void* qkv = nullptr;
  int64_t qkv_row_stride = 0;
  const void* q_norm = nullptr;  // [dim] or null: no RMSNorm.
  const void* k_norm = nullptr;
  float eps = 1e-6f;
  const void* cos = nullptr;  // [B or 1, T, dim] contiguous.
  const void* sin = nullptr;
  bool cos_per_batch = false;          // cos/sin have B rows (else one).
  const int64_t* positions = nullptr;  // [B, T] device int64.
  void* q_out = nullptr;               // [B, H, T, dim] contiguous.
  // Cache views [B, Hkv, capacity, dim] with unit stride in the last dim.
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t cache_batch_stride = 0;
  int64_t cache_head_stride = 0;
  int64_t cache_pos_stride = 0;
  int64_t batch = 0;
  int64_t tokens = 0;
  int heads = 0;
  int kv_heads = 0;
  int dim = 0;  // Even, at most 1024.
};
cudaError_t QkvToCache(const QkvToCacheArgs& args, Dtype dtype,
                       cudaStream_t stream);

}  // namespace decode_kernels
}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_DECODE_KERNELS_H_
