#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/model/decode_kernels.h"

namespace kvwire {
namespace decode_kernels {
namespace {

template <typename T>
struct Convert;
template <>
struct Convert<float> {
  static __device__ __forceinline__ float ToFloat(float v) { return v; }
  static __device__ __forceinline__ float FromFloat(float v) { return v; }
};
template <>
struct Convert<__nv_bfloat16> {
  static __device__ __forceinline__ float ToFloat(__nv_bfloat16 v) {
    return __bfloat162float(v);
  }
  static __device__ __forceinline__ __nv_bfloat16 FromFloat(float v) {
    return __float2bfloat16_rn(v);
  }
};
template <>
struct Convert<__half> {
  static __device__ __forceinline__ float ToFloat(__half v) {
    return __half2float(v);
  }
  static __device__ __forceinline__ __half FromFloat(float v) {
    return __float2half_rn(v);
  }
};

// Rounds a float through T (what storing a T tensor does).
template <typename T>
__device__ __forceinline__ float Round(float v) {
  return Convert<T>::ToFloat(Convert<T>::FromFloat(v));
}

// Sum over the block; every thread gets the result. blockDim.x is a
// multiple of 32, at most 1024.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[32];
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = lane < warps ? partial[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename T>
__global__ void RmsNormKernel(const T* __restrict__ x,
                              const T* __restrict__ weight, T* __restrict__ out,
                              int64_t cols, float eps) {
  const T* row = x + blockIdx.x * cols;
  T* dst = out + blockIdx.x * cols;
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = Convert<T>::ToFloat(row[i]);
    acc = __fadd_rn(acc, __fmul_rn(v, v));
  }
  const float variance = BlockSum(acc) / static_cast<float>(cols);
  const float inv = rsqrtf(variance + eps);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float normed = Round<T>(__fmul_rn(Convert<T>::ToFloat(row[i]), inv));
    dst[i] = Convert<T>::FromFloat(
        __fmul_rn(Convert<T>::ToFloat(weight[i]), normed));
  }
}

template <typename T>
__global__ void RopeKernel(const T* __restrict__ x, const T* __restrict__ cos,
                           const T* __restrict__ sin, T* __restrict__ out,
                           int64_t rows, int64_t dim, int64_t positions) {
  const int64_t total = rows * dim;
  const int64_t half = dim / 2;
  for (int64_t idx =
           blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       idx < total; idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % dim;
    const int64_t base = idx - i;
    // Row r takes cos/sin row r % positions.
    const int64_t c = ((idx / dim) % positions) * dim + i;
    const float v = Convert<T>::ToFloat(x[idx]);
    // rotate_half: [-x2, x1] (negation is exact).
    const float rot = i < half ? -Convert<T>::ToFloat(x[base + i + half])
                               : Convert<T>::ToFloat(x[base + i - half]);
    // _rn intrinsics: no fused multiply-add, each op rounded as ATen's.
    const float a = Round<T>(__fmul_rn(v, Convert<T>::ToFloat(cos[c])));
    const float b = Round<T>(__fmul_rn(rot, Convert<T>::ToFloat(sin[c])));
    out[idx] = Convert<T>::FromFloat(__fadd_rn(a, b));
  }
}

template <typename T>
__global__ void SiluMulKernel(const T* __restrict__ gate_up,
                              T* __restrict__ out, int64_t rows, int64_t n) {
  const int64_t total = rows * n;
  for (int64_t idx =
           blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       idx < total; idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / n;
    const int64_t i = idx - r * n;
    const float g = Convert<T>::ToFloat(gate_up[r * 2 * n + i]);
    const float u = Convert<T>::ToFloat(gate_up[r * 2 * n + n + i]);
    // As ATen's CUDA silu: x / (1 + exp(-x)) in fp32, then rounded.
    const float s = Round<T>(g / (1.0f + expf(-g)));
    out[idx] = Convert<T>::FromFloat(__fmul_rn(s, u));
  }
}

// One block per (token row, head slot): slots [0, H) are query heads,
// [H, H + Hkv) key heads, then value heads, laid out that way in each qkv
// row. Queries and keys get RMSNorm (when the weight is given; one value per
// thread, so the same reduction order as RmsNormKernel on a head row) and
// RoPE with the same roundings as RopeKernel; queries go to q_out
// [B, H, T, D], keys and values into the cache at the row's position.
template <typename T>
__global__ void QkvToCacheKernel(QkvToCacheArgs a) {
  extern __shared__ float normed[];
  const int slots = a.heads + 2 * a.kv_heads;
  const int slot = static_cast<int>(blockIdx.x % slots);
  const int64_t row = blockIdx.x / slots;  // b * tokens + t
  const int64_t b = row / a.tokens;
  const int64_t t = row % a.tokens;
  const int i = threadIdx.x;
  const int dim = a.dim;
  const T* src = static_cast<const T*>(a.qkv) + row * a.qkv_row_stride +
                 static_cast<int64_t>(slot) * dim;
  const int64_t pos = a.positions[row];
  if (slot >= a.heads + a.kv_heads) {  // Value head: copied as is.
    const int head = slot - a.heads - a.kv_heads;
    if (i < dim) {
      static_cast<T*>(
          a.v_cache)[b * a.cache_batch_stride + head * a.cache_head_stride +
                     pos * a.cache_pos_stride + i] = src[i];
    }
    return;
  }
  const bool is_query = slot < a.heads;
  const int head = is_query ? slot : slot - a.heads;
  const T* weight = static_cast<const T*>(is_query ? a.q_norm : a.k_norm);
  const float x = i < dim ? Convert<T>::ToFloat(src[i]) : 0.0f;
  float value = x;
  if (weight != nullptr) {
    const float variance =
        BlockSum(__fadd_rn(0.0f, __fmul_rn(x, x))) / static_cast<float>(dim);
    const float inv = rsqrtf(variance + a.eps);
    value = i < dim ? Round<T>(__fmul_rn(Convert<T>::ToFloat(weight[i]),
                                         Round<T>(__fmul_rn(x, inv))))
                    : 0.0f;
  }
  if (i < dim) normed[i] = value;
  __syncthreads();
  if (i >= dim) return;
  const int half = dim / 2;
  const float rot = i < half ? -normed[i + half] : normed[i - half];
  const int64_t c = ((a.cos_per_batch ? b : 0) * a.tokens + t) * dim + i;
  const float p = Round<T>(
      __fmul_rn(value, Convert<T>::ToFloat(static_cast<const T*>(a.cos)[c])));
  const float q = Round<T>(
      __fmul_rn(rot, Convert<T>::ToFloat(static_cast<const T*>(a.sin)[c])));
  const T out = Convert<T>::FromFloat(__fadd_rn(p, q));
  if (is_query) {
    static_cast<T*>(a.q_out)[((b * a.heads + head) * a.tokens + t) * dim + i] =
        out;
  } else {
    static_cast<T*>(
        a.k_cache)[b * a.cache_batch_stride + head * a.cache_head_stride +
                   pos * a.cache_pos_stride + i] = out;
  }
}

int ThreadsFor(int64_t cols) {
  int64_t t = (cols + 31) / 32 * 32;
  if (t > 1024) t = 1024;
  if (t < 32) t = 32;
  return static_cast<int>(t);
}

int BlocksFor(int64_t total, int threads) {
  int64_t b = (total + threads - 1) / threads;
  if (b > 65535) b = 65535;
  if (b < 1) b = 1;
  return static_cast<int>(b);
}

template <typename T>
cudaError_t LaunchRmsNorm(const void* x, const void* weight, void* out,
                          int64_t rows, int64_t cols, float eps,
                          cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  if (rows > 2147483647LL) return cudaErrorInvalidValue;
  RmsNormKernel<T>
      <<<static_cast<unsigned>(rows), ThreadsFor(cols), 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(weight),
          static_cast<T*>(out), cols, eps);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchRope(const void* x, const void* cos, const void* sin,
                       void* out, int64_t rows, int64_t dim, int64_t positions,
                       cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  if (dim % 2 != 0 || positions <= 0) return cudaErrorInvalidValue;
  constexpr int kThreads = 256;
  RopeKernel<T><<<BlocksFor(rows * dim, kThreads), kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(cos),
      static_cast<const T*>(sin), static_cast<T*>(out), rows, dim, positions);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchSiluMul(const void* gate_up, void* out, int64_t rows,
                          int64_t n, cudaStream_t stream) {
  if (rows <= 0 || n <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  SiluMulKernel<T><<<BlocksFor(rows * n, kThreads), kThreads, 0, stream>>>(
      static_cast<const T*>(gate_up), static_cast<T*>(out), rows, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchQkvToCache(const QkvToCacheArgs& a, cudaStream_t stream) {
  const int64_t blocks =
      a.batch * a.tokens * static_cast<int64_t>(a.heads + 2 * a.kv_heads);
  if (blocks <= 0) return cudaSuccess;
  if (blocks > 2147483647LL || a.dim <= 0 || a.dim % 2 != 0 || a.dim > 1024) {
    return cudaErrorInvalidValue;
  }
  QkvToCacheKernel<T><<<static_cast<unsigned>(blocks), ThreadsFor(a.dim),
                        a.dim * sizeof(float), stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t QkvToCache(const QkvToCacheArgs& args, Dtype dtype,
                       cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFp32:
      return LaunchQkvToCache<float>(args, stream);
    case Dtype::kBf16:
      return LaunchQkvToCache<__nv_bfloat16>(args, stream);
    case Dtype::kFp16:
      return LaunchQkvToCache<__half>(args, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t RmsNorm(const void* x, const void* weight, void* out, int64_t rows,
                    int64_t cols, float eps, Dtype dtype, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFp32:
      return LaunchRmsNorm<float>(x, weight, out, rows, cols, eps, stream);
    case Dtype::kBf16:
      return LaunchRmsNorm<__nv_bfloat16>(x, weight, out, rows, cols, eps,
                                          stream);
    case Dtype::kFp16:
      return LaunchRmsNorm<__half>(x, weight, out, rows, cols, eps, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t Rope(const void* x, const void* cos, const void* sin, void* out,
                 int64_t rows, int64_t dim, int64_t positions, Dtype dtype,
                 cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFp32:
      return LaunchRope<float>(x, cos, sin, out, rows, dim, positions, stream);
    case Dtype::kBf16:
      return LaunchRope<__nv_bfloat16>(x, cos, sin, out, rows, dim, positions,
                                       stream);
    case Dtype::kFp16:
      return LaunchRope<__half>(x, cos, sin, out, rows, dim, positions, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t SiluMul(const void* gate_up, void* out, int64_t rows, int64_t n,
                    Dtype dtype, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFp32:
      return LaunchSiluMul<float>(gate_up, out, rows, n, stream);
    case Dtype::kBf16:
      return LaunchSiluMul<__nv_bfloat16>(gate_up, out, rows, n, stream);
    case Dtype::kFp16:
      return LaunchSiluMul<__half>(gate_up, out, rows, n, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace decode_kernels
}  // namespace kvwire
