#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/codec/cuda_quantize.h"

// Every fp32 operation below is written with the correctly rounded
// intrinsics (__fadd_rn, __fsub_rn, __fmul_rn, __fdiv_rn) in the order
// cpu_quantize.cc performs them; the file is also compiled with -fmad=false.
// Integer-valued and exact steps (min, max, comparisons, conversions of
// small integers) are written plainly.

namespace kvwire {
namespace {

constexpr int kMaxChunk = 32;  // Values per thread, at most.
constexpr int kThreads = 256;
constexpr float kInf = __builtin_huge_valf();

__constant__ float kNf4Codebook[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// ------------------------------------------------------------ scalars

// Unsigned 32-bit division by a runtime constant through a multiply-high
// (Granlund-Montgomery), for numerators below 2^31: index math without the
// slow 64-bit (or 32-bit) integer division.
struct FastDiv {
  uint32_t d = 1, mul = 1, shift = 0;
};

FastDiv MakeFastDiv(uint32_t d) {
  FastDiv f;
  f.d = d;
  while ((uint64_t{1} << f.shift) < d) ++f.shift;
  f.mul = static_cast<uint32_t>(
      ((uint64_t{1} << 32) * ((uint64_t{1} << f.shift) - d)) / d + 1);
  return f;
}

__device__ __forceinline__ uint32_t Div(uint32_t n, const FastDiv& f) {
  return (__umulhi(n, f.mul) + n) >> f.shift;
}

__device__ __forceinline__ uint16_t FloatToHalf(float v) {
  return __half_as_ushort(__float2half_rn(v));
}

__device__ __forceinline__ float HalfToFloat(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}

__device__ __forceinline__ bool HalfFinite(uint16_t h) {
  return (h & 0x7C00) != 0x7C00;
}

__device__ __forceinline__ bool FloatNonFinite(float v) {
  return (__float_as_uint(v) & 0x7F800000u) == 0x7F800000u;
}

// c10's fp32 -> bf16 (round to nearest even; NaN -> 0x7FC0), as ATen's CPU
// conversion gives.
__device__ __forceinline__ uint16_t FloatToBf16(float v) {
  if (v != v) return 0x7FC0;
  const uint32_t u = __float_as_uint(v);
  return static_cast<uint16_t>((u + ((u >> 16) & 1) + 0x7FFFu) >> 16);
}

struct Scale {
  float scale, zero;
  uint16_t scale_h, zero_h;
  bool ok;
};

// cpu_quantize.cc's scale (and zero point) of one [mn, mx] range.
__device__ __forceinline__ Scale ComputeScale(float mn, float mx, CudaCode code,
                                              int bits) {
  const float eps = 1e-6f;  // static_cast<float>(kScaleEpsilon).
  Scale r;
  r.zero = 0.0f;
  r.zero_h = 0;
  r.ok = true;
  float v;
  if (code == CudaCode::kIntAsymmetric) {
    uint16_t z = FloatToHalf(mn);  // Rounded toward -inf.
    if (HalfToFloat(z) > mn) {
      z = static_cast<int16_t>(z) > 0 ? z - 1 : z + 1;
    }
    r.ok = HalfFinite(z);
    r.zero_h = z;
    r.zero = HalfToFloat(z);
    const float levels = static_cast<float>((1 << bits) - 1);
    v = __fdiv_rn(__fsub_rn(mx, r.zero), levels);
  } else {
    float qmax;
    if (code == CudaCode::kFp8E4M3) {
      qmax = 448.0f;
    } else if (code == CudaCode::kFp8E5M2) {
      qmax = 57344.0f;
    } else if (code == CudaCode::kNf4) {
      qmax = 1.0f;
    } else {
      qmax = static_cast<float>((1 << (bits - 1)) - 1);
    }
    const float neg = -mn;
    const float absmax = mx < neg ? neg : mx;  // std::max(mx, -mn).
    v = __fdiv_rn(absmax, qmax);
  }
  v = v < eps ? eps : v;        // std::max(v, eps).
  uint16_t s = FloatToHalf(v);  // Rounded up.
  if (HalfToFloat(s) < v) ++s;
  r.ok = r.ok && HalfFinite(s);
  r.scale_h = s;
  r.scale = HalfToFloat(s);
  return r;
}

__device__ __forceinline__ uint32_t ShiftRightRoundEven(uint32_t value,
                                                        int shift) {
  const uint32_t quotient = value >> shift;
  const uint32_t remainder = value & ((uint32_t{1} << shift) - 1);
  const uint32_t half = uint32_t{1} << (shift - 1);
  if (remainder > half || (remainder == half && (quotient & 1) != 0)) {
    return quotient + 1;
  }
  return quotient;
}

// number_formats.cc's EncodeFp8.
__device__ __forceinline__ uint32_t EncodeFp8(float value, bool e5m2) {
  const int mantissa_bits = e5m2 ? 2 : 3;
  const int bias = e5m2 ? 15 : 7;
  const uint32_t max_code = e5m2 ? 0x7B : 0x7E;
  const uint32_t bits = __float_as_uint(value);
  const uint32_t sign = (bits >> 24) & 0x80;
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7F;
  if (magnitude == 0x7F800000u) return sign | max_code;
  const int biased_exponent = static_cast<int>(magnitude >> 23);
  if (biased_exponent == 0) return sign;
  const int exponent = biased_exponent - 127;
  const uint32_t fraction = magnitude & 0x7FFFFFu;
  uint32_t code;
  if (exponent < 1 - bias) {
    const uint32_t significand = fraction | 0x800000u;
    const int shift = 23 + (1 - bias - mantissa_bits) - exponent;
    code = shift > 25 ? 0 : ShiftRightRoundEven(significand, shift);
  } else {
    const uint32_t rebiased =
        (static_cast<uint32_t>(exponent + bias) << 23) | fraction;
    code = ShiftRightRoundEven(rebiased, 23 - mantissa_bits);
  }
  if (code > max_code) code = max_code;
  return sign | code;
}

// 2^e as a float, for -126 <= e <= 127.
__device__ __forceinline__ float Pow2(int e) {
  return __uint_as_float(static_cast<uint32_t>(e + 127) << 23);
}

// number_formats.cc's DecodeFp8 (exact: small integers times powers of 2).
__device__ __forceinline__ float DecodeFp8(uint32_t code, bool e5m2) {
  const int mantissa_bits = e5m2 ? 2 : 3;
  const int bias = e5m2 ? 15 : 7;
  const int exponent_bits = 7 - mantissa_bits;
  const bool negative = (code & 0x80) != 0;
  const int mantissa = code & ((1 << mantissa_bits) - 1);
  const int exponent = (code >> mantissa_bits) & ((1 << exponent_bits) - 1);
  const int max_exponent = (1 << exponent_bits) - 1;
  float magnitude;
  if (e5m2 && exponent == max_exponent) {
    magnitude = mantissa == 0 ? kInf : __uint_as_float(0x7FC00000u);
  } else if (!e5m2 && exponent == max_exponent &&
             mantissa == (1 << mantissa_bits) - 1) {
    magnitude = __uint_as_float(0x7FC00000u);
  } else if (exponent == 0) {
    magnitude =
        __fmul_rn(static_cast<float>(mantissa), Pow2(1 - bias - mantissa_bits));
  } else {
    magnitude = __fmul_rn(static_cast<float>((1 << mantissa_bits) + mantissa),
                          Pow2(exponent - bias - mantissa_bits));
  }
  return negative ? -magnitude : magnitude;
}

// The code of one value (cpu_quantize.cc's EncodeIntRow / EncodeFp8 /
// Nf4CodeOf). `zero` is 0 for symmetric INT.
template <int kBits>
__device__ __forceinline__ uint32_t EncodeValue(float x, CudaCode code,
                                                float scale, float zero) {
  if (code == CudaCode::kIntSymmetric || code == CudaCode::kIntAsymmetric) {
    // x - 0 is x for every non-NaN x (signed zeros included), so the
    // symmetric case skips the subtraction.
    const bool asym = code == CudaCode::kIntAsymmetric;
    float y = __fdiv_rn(asym ? __fsub_rn(x, zero) : x, scale);
    // Round half to even: rintf equals cpu_quantize's (y + 1.5*2^23) -
    // 1.5*2^23 for |y| < 2^22, and |y| never exceeds 2^8 here.
    y = rintf(y);
    // fmaxf/fminf equal the CPU's compare-and-select clamp up to the sign
    // of a zero, which the integer conversion drops.
    int32_t q;
    if (asym) {
      q = __float2int_rn(
          fminf(fmaxf(y, 0.0f), static_cast<float>((1 << kBits) - 1)));
    } else {
      const float qmax = static_cast<float>((1 << (kBits - 1)) - 1);
      q = __float2int_rn(fminf(fmaxf(y, -qmax), qmax)) + (1 << (kBits - 1));
    }
    return static_cast<uint32_t>(q) & 0xFFu;
  }
  const float y = __fdiv_rn(x, scale);
  if (code == CudaCode::kNf4) {
    uint32_t c = 0;
#pragma unroll
    for (int i = 0; i < 15; ++i) {
      const float mid =
          __fmul_rn(__fadd_rn(kNf4Codebook[i], kNf4Codebook[i + 1]), 0.5f);
      c += mid < y;
    }
    return c;
  }
  return EncodeFp8(y, code == CudaCode::kFp8E5M2);
}

// ------------------------------------------------------------ memory

template <CudaDtype kIn>
struct InputTraits;
template <>
struct InputTraits<CudaDtype::kBf16> {
  using T = uint16_t;
  static __device__ __forceinline__ float ToFloat(uint32_t b) {
    return __uint_as_float(b << 16);
  }
};
template <>
struct InputTraits<CudaDtype::kFp16> {
  using T = uint16_t;
  static __device__ __forceinline__ float ToFloat(uint32_t b) {
    return HalfToFloat(static_cast<uint16_t>(b));
  }
};
template <>
struct InputTraits<CudaDtype::kFp32> {
  using T = float;
  static __device__ __forceinline__ float ToFloat(uint32_t b) {
    return __uint_as_float(b);
  }
};

// Loads `n` (<= kMaxChunk) consecutive values at element `offset` of `data`
// into x[0..n). `vec`: the address and n values are 16-byte aligned.
template <CudaDtype kIn, int kN>
__device__ __forceinline__ void LoadChunk(const void* data, int64_t offset,
                                          int n, bool vec, float (&x)[kN]) {
  using Tr = InputTraits<kIn>;
  using T = typename Tr::T;
  const T* p = static_cast<const T*>(data) + offset;
  if (vec) {
    constexpr int kPer = 16 / sizeof(T);
    const uint4* v = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < kN / kPer; ++i) {
      if (i * kPer < n) {
        const uint4 q = __ldg(v + i);
        const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (sizeof(T) == 2) {
            x[i * kPer + 2 * j] = Tr::ToFloat(w[j] & 0xFFFFu);
            x[i * kPer + 2 * j + 1] = Tr::ToFloat(w[j] >> 16);
          } else {
            x[i * kPer + j] = Tr::ToFloat(w[j]);
          }
        }
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < n) {
        if (sizeof(T) == 2) {
          x[j] = Tr::ToFloat(
              __ldg(reinterpret_cast<const unsigned short*>(p) + j));
        } else {
          x[j] = __ldg(reinterpret_cast<const float*>(p) + j);
        }
      }
    }
  }
}

// 32-bit words holding the codes of n values.
__host__ __device__ constexpr int Words(int n, int bits) {
  return (n * bits + 31) / 32;
}

// Stores the first `n` bytes of `w` at `dst`, as wide as alignment allows.
template <int kWords>
__device__ __forceinline__ void StoreBytes(uint8_t* dst,
                                           const uint32_t (&w)[kWords], int n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(dst);
  if (kWords >= 4 && (n & 15) == 0 && (a & 15) == 0) {
#pragma unroll
    for (int i = 0; i < kWords / 4; ++i) {
      if (i * 16 < n) {
        reinterpret_cast<uint4*>(dst)[i] =
            make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
      }
    }
  } else if (kWords >= 2 && (n & 7) == 0 && (a & 7) == 0) {
#pragma unroll
    for (int i = 0; i < kWords / 2; ++i) {
      if (i * 8 < n) {
        reinterpret_cast<uint2*>(dst)[i] = make_uint2(w[2 * i], w[2 * i + 1]);
      }
    }
  } else if ((n & 3) == 0 && (a & 3) == 0) {
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      if (i * 4 < n) reinterpret_cast<uint32_t*>(dst)[i] = w[i];
    }
  } else {
#pragma unroll
    for (int b = 0; b < kWords * 4; ++b) {
      if (b < n) dst[b] = static_cast<uint8_t>(w[b / 4] >> (8 * (b % 4)));
    }
  }
}

// Loads `n` bytes at `src` into w (zero beyond n).
template <int kWords>
__device__ __forceinline__ void LoadBytes(const uint8_t* src,
                                          uint32_t (&w)[kWords], int n) {
#pragma unroll
  for (int i = 0; i < kWords; ++i) w[i] = 0;
  const uintptr_t a = reinterpret_cast<uintptr_t>(src);
  if (kWords >= 4 && (n & 15) == 0 && (a & 15) == 0) {
#pragma unroll
    for (int i = 0; i < kWords / 4; ++i) {
      if (i * 16 < n) {
        const uint4 q = __ldg(reinterpret_cast<const uint4*>(src) + i);
        w[4 * i] = q.x;
        w[4 * i + 1] = q.y;
        w[4 * i + 2] = q.z;
        w[4 * i + 3] = q.w;
      }
    }
  } else if ((n & 3) == 0 && (a & 3) == 0) {
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      if (i * 4 < n) w[i] = __ldg(reinterpret_cast<const uint32_t*>(src) + i);
    }
  } else {
#pragma unroll
    for (int b = 0; b < kWords * 4; ++b) {
      if (b < n) w[b / 4] |= static_cast<uint32_t>(src[b]) << (8 * (b % 4));
    }
  }
}

// Codes of x[0..n) with one scale, packed and stored at `dst`.
template <int kBits, int kN>
__device__ __forceinline__ void EncodeStore(const float (&x)[kN], int n,
                                            CudaCode code, float scale,
                                            float zero, uint8_t* dst) {
  uint32_t w[Words(kN, kBits)];
#pragma unroll
  for (int i = 0; i < Words(kN, kBits); ++i) w[i] = 0;
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    if (j < n) {
      w[(j * kBits) / 32] |= EncodeValue<kBits>(x[j], code, scale, zero)
                             << ((j * kBits) % 32);
    }
  }
  StoreBytes(dst, w, n * kBits / 8);
}

template <int kN>
__device__ __forceinline__ void MinMaxChunk(const float (&x)[kN], int n,
                                            float* lo, float* hi, bool* bad) {
  bool b = false;
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    if (j < n) {
      const float v = x[j];
      b |= FloatNonFinite(v);
      *lo = v < *lo ? v : *lo;
      *hi = v > *hi ? v : *hi;
    }
  }
  *bad |= b;
}

// Float min/max through integer atomics (-0 orders below +0).
__device__ __forceinline__ void AtomicMinFloat(float* addr, float v) {
  if (!(__float_as_uint(v) >> 31)) {
    atomicMin(reinterpret_cast<int*>(addr), __float_as_int(v));
  } else {
    atomicMax(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
  }
}

__device__ __forceinline__ void AtomicMaxFloat(float* addr, float v) {
  if (!(__float_as_uint(v) >> 31)) {
    atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
  } else {
    atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
  }
}

__device__ __forceinline__ int64_t SourceOffsetHT(const CudaBlockView& in,
                                                  uint32_t h, uint32_t t) {
  const int64_t src_t = in.token_index != nullptr ? in.token_index[t] : t;
  return static_cast<int64_t>(h) * in.head_stride + src_t * in.token_stride;
}

// Source offset of row (h * tokens + t) of the block.
__device__ __forceinline__ int64_t SourceOffset(const CudaBlockView& in,
                                                const FastDiv& tokens,
                                                uint32_t row) {
  const uint32_t h = Div(row, tokens);
  return SourceOffsetHT(in, h, row - h * tokens.d);
}

// ------------------------------------------------------------ kernels

// PER_TOKEN / PER_GROUP in one pass: `1 << lanes_log2` neighbouring lanes
// share one scale of `chunk << lanes_log2` values.
// kC: the chunk size when known at compile time (32 here, 8 in the chunked
// kernels below: what measured fastest on an H200), else 0 (runtime
// `chunk` <= kMaxChunk). The same holds for the kernels below.
template <CudaDtype kIn, int kBits, int kC>
__global__ void __launch_bounds__(kThreads)
    RowQuantizeKernel(CudaBlockView in, CudaCode code, int runtime_chunk,
                      int lanes_log2, uint32_t units, FastDiv units_per_row,
                      FastDiv tokens, bool vec, CudaQuantizeOutput out,
                      int32_t* flag) {
  constexpr int kN = kC > 0 ? kC : kMaxChunk;
  const int chunk = kC > 0 ? kC : runtime_chunk;
  const uint32_t g = blockIdx.x * blockDim.x + threadIdx.x;
  const int lanes = 1 << lanes_log2;
  const uint32_t unit = g >> lanes_log2;
  const int k = static_cast<int>(g & (lanes - 1));
  const bool active = unit < units;
  float x[kN];
  float lo = kInf, hi = -kInf;
  bool bad = false;
  int64_t first = 0;
  if (active) {
    const uint32_t row = Div(unit, units_per_row);
    const int d0 =
        static_cast<int>(unit - row * units_per_row.d) * (chunk << lanes_log2) +
        k * chunk;
    LoadChunk<kIn>(in.data, SourceOffset(in, tokens, row) + d0, chunk, vec, x);
    MinMaxChunk(x, chunk, &lo, &hi, &bad);
    first = static_cast<int64_t>(row) * in.head_dim + d0;
  }
  for (int off = 1; off < lanes; off <<= 1) {
    const float olo = __shfl_xor_sync(0xFFFFFFFFu, lo, off);
    const float ohi = __shfl_xor_sync(0xFFFFFFFFu, hi, off);
    lo = olo < lo ? olo : lo;
    hi = ohi > hi ? ohi : hi;
  }
  if (!active) return;
  if (bad) atomicOr(flag, 1);
  const Scale s = ComputeScale(lo, hi, code, kBits);
  if (k == 0) {
    out.scales[unit] = s.scale_h;
    if (code == CudaCode::kIntAsymmetric) out.zero_points[unit] = s.zero_h;
    if (!s.ok) atomicOr(flag, 2);
  }
  EncodeStore<kBits, kN>(x, chunk, code, s.scale, s.zero,
                         out.packed + first * kBits / 8);
}

__global__ void InitMinMaxKernel(float* mn, float* mx, int64_t n, float init) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    mn[i] = init;
    mx[i] = -init;
  }
}

// Block-wide min/max; the result is valid in thread 0.
__device__ __forceinline__ void BlockMinMax(float* lo, float* hi) {
  __shared__ float s_lo[kThreads / 32], s_hi[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) {
    const float olo = __shfl_xor_sync(0xFFFFFFFFu, *lo, off);
    const float ohi = __shfl_xor_sync(0xFFFFFFFFu, *hi, off);
    *lo = olo < *lo ? olo : *lo;
    *hi = ohi > *hi ? ohi : *hi;
  }
  const int warp = threadIdx.x / 32;
  if ((threadIdx.x & 31) == 0) {
    s_lo[warp] = *lo;
    s_hi[warp] = *hi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < static_cast<int>(blockDim.x / 32); ++i) {
      *lo = s_lo[i] < *lo ? s_lo[i] : *lo;
      *hi = s_hi[i] > *hi ? s_hi[i] : *hi;
    }
  }
}

// PER_LAYER (one span: every row) and PER_HEAD (span = head, blockIdx.y):
// min/max of `chunks_per_span` chunks of `chunk` values each.
template <CudaDtype kIn, int kC>
__global__ void __launch_bounds__(kThreads)
    SpanReduceKernel(CudaBlockView in, int runtime_chunk, bool vec,
                     uint32_t rows_per_span, FastDiv chunks_per_row,
                     FastDiv tokens, float* mn, float* mx, int32_t* flag) {
  constexpr int kN = kC > 0 ? kC : kMaxChunk;
  const int chunk = kC > 0 ? kC : runtime_chunk;
  const uint32_t chunks = rows_per_span * chunks_per_row.d;
  const uint32_t row0 = blockIdx.y * rows_per_span;
  float lo = kInf, hi = -kInf;
  bool bad = false;
  float x[kN];
  for (uint32_t c = blockIdx.x * blockDim.x + threadIdx.x; c < chunks;
       c += gridDim.x * blockDim.x) {
    const uint32_t r = Div(c, chunks_per_row);
    const int64_t d0 = static_cast<int64_t>(c - r * chunks_per_row.d) * chunk;
    LoadChunk<kIn>(in.data, SourceOffset(in, tokens, row0 + r) + d0, chunk, vec,
                   x);
    MinMaxChunk(x, chunk, &lo, &hi, &bad);
  }
  if (bad) atomicOr(flag, 1);
  BlockMinMax(&lo, &hi);
  if (threadIdx.x == 0 && lo <= hi) {
    AtomicMinFloat(mn + blockIdx.y, lo);
    AtomicMaxFloat(mx + blockIdx.y, hi);
  }
}

// PER_CHANNEL: head blockIdx.y; thread (column chunk cx, row slot ry).
template <CudaDtype kIn, int kC>
__global__ void __launch_bounds__(kThreads)
    ChannelReduceKernel(CudaBlockView in, int runtime_chunk, bool vec,
                        float* mn, float* mx, int32_t* flag) {
  constexpr int kN = kC > 0 ? kC : kMaxChunk;
  const int chunk = kC > 0 ? kC : runtime_chunk;
  __shared__ float s_lo[kThreads], s_hi[kThreads];
  const int cols = static_cast<int>(in.head_dim / chunk);
  const int slots = kThreads / cols;
  const int cx = threadIdx.x % cols;
  const int ry = threadIdx.x / cols;
  const uint32_t h = blockIdx.y;
  float lo[kN], hi[kN];
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    lo[j] = kInf;
    hi[j] = -kInf;
  }
  bool bad = false;
  float x[kN];
  if (ry < slots) {
    for (uint32_t t = blockIdx.x * slots + ry; t < in.tokens;
         t += gridDim.x * slots) {
      LoadChunk<kIn>(
          in.data, SourceOffsetHT(in, h, t) + static_cast<int64_t>(cx) * chunk,
          chunk, vec, x);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        if (j < chunk) {
          const float v = x[j];
          bad |= FloatNonFinite(v);
          lo[j] = v < lo[j] ? v : lo[j];
          hi[j] = v > hi[j] ? v : hi[j];
        }
      }
    }
  }
  if (bad) atomicOr(flag, 1);
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    if (j < chunk) {
      s_lo[threadIdx.x] = lo[j];
      s_hi[threadIdx.x] = hi[j];
      __syncthreads();
      if (ry == 0) {
        float a = lo[j], b = hi[j];
        for (int r = 1; r < slots; ++r) {
          const float u = s_lo[r * cols + cx], w = s_hi[r * cols + cx];
          a = u < a ? u : a;
          b = w > b ? w : b;
        }
        if (a <= b) {
          const int64_t s = static_cast<int64_t>(h) * in.head_dim +
                            static_cast<int64_t>(cx) * chunk + j;
          AtomicMinFloat(mn + s, a);
          AtomicMaxFloat(mx + s, b);
        }
      }
      __syncthreads();
    }
  }
}

// Minima and maxima (in place) -> fp32 scale and zero, and the fp16 outputs.
__global__ void FinalizeScalesKernel(float* mn_scale, float* mx_zero, int64_t n,
                                     CudaCode code, int bits,
                                     CudaQuantizeOutput out, int32_t* flag) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const Scale s = ComputeScale(mn_scale[i], mx_zero[i], code, bits);
  if (!s.ok) atomicOr(flag, 2);
  out.scales[i] = s.scale_h;
  if (code == CudaCode::kIntAsymmetric) out.zero_points[i] = s.zero_h;
  mn_scale[i] = s.scale;
  mx_zero[i] = s.zero;
}

// Second pass of PER_LAYER / PER_HEAD / PER_CHANNEL: codes of one chunk.
template <CudaDtype kIn, int kBits, int kC>
__global__ void __launch_bounds__(kThreads)
    EncodeKernel(CudaBlockView in, CudaCode code, CudaGranularity granularity,
                 int runtime_chunk, bool vec, uint32_t chunks,
                 FastDiv chunks_per_row, FastDiv tokens, const float* scale,
                 const float* zero, CudaQuantizeOutput out) {
  constexpr int kN = kC > 0 ? kC : kMaxChunk;
  const int chunk = kC > 0 ? kC : runtime_chunk;
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  const uint32_t row = Div(c, chunks_per_row);
  const int64_t d0 = static_cast<int64_t>(c - row * chunks_per_row.d) * chunk;
  const uint32_t h = Div(row, tokens);
  float x[kN];
  LoadChunk<kIn>(in.data, SourceOffsetHT(in, h, row - h * tokens.d) + d0, chunk,
                 vec, x);
  uint8_t* dst =
      out.packed + (static_cast<int64_t>(row) * in.head_dim + d0) * kBits / 8;
  if (granularity != CudaGranularity::kChannel) {
    const int64_t s = granularity == CudaGranularity::kHead ? h : 0;
    EncodeStore<kBits, kN>(x, chunk, code, scale[s], zero[s], dst);
    return;
  }
  uint32_t w[Words(kN, kBits)];
#pragma unroll
  for (int i = 0; i < Words(kN, kBits); ++i) w[i] = 0;
  const int64_t s0 = static_cast<int64_t>(h) * in.head_dim + d0;
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    if (j < chunk) {
      w[(j * kBits) / 32] |=
          EncodeValue<kBits>(x[j], code, scale[s0 + j], zero[s0 + j])
          << ((j * kBits) % 32);
    }
  }
  StoreBytes(dst, w, chunk * kBits / 8);
}

template <CudaDtype kOut, int kN>
__device__ __forceinline__ void StoreChunk(void* data, int64_t offset,
                                           const float (&v)[kN], int n) {
  if constexpr (kOut == CudaDtype::kFp32) {
    float* p = static_cast<float*>(data) + offset;
    const bool vec = (reinterpret_cast<uintptr_t>(p) & 15) == 0 && (n & 3) == 0;
    if (vec) {
#pragma unroll
      for (int i = 0; i < kN / 4; ++i) {
        if (i * 4 < n) {
          reinterpret_cast<float4*>(p)[i] =
              make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        if (j < n) p[j] = v[j];
      }
    }
  } else {
    uint32_t w[kN / 2];
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) {
      const uint32_t a = kOut == CudaDtype::kBf16 ? FloatToBf16(v[2 * i])
                                                  : FloatToHalf(v[2 * i]);
      const uint32_t b = kOut == CudaDtype::kBf16 ? FloatToBf16(v[2 * i + 1])
                                                  : FloatToHalf(v[2 * i + 1]);
      w[i] = a | (b << 16);
    }
    StoreBytes(
        reinterpret_cast<uint8_t*>(static_cast<uint16_t*>(data) + offset), w,
        2 * n);
  }
}

// Unpacks and dequantizes one chunk of `chunk` values of a row.
template <CudaDtype kOut, int kBits, int kC>
__global__ void __launch_bounds__(kThreads)
    DequantizeKernel(CudaDequantizeInput in, CudaCode code,
                     CudaGranularity granularity, FastDiv group, FastDiv tokens,
                     int64_t head_dim, int runtime_chunk, uint32_t chunks,
                     FastDiv chunks_per_row, void* out) {
  constexpr int kN = kC > 0 ? kC : kMaxChunk;
  const int chunk = kC > 0 ? kC : runtime_chunk;
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  const uint32_t row = Div(c, chunks_per_row);
  const uint32_t d0 = (c - row * chunks_per_row.d) * chunk;
  const uint32_t h = Div(row, tokens);
  const int64_t first = static_cast<int64_t>(row) * head_dim + d0;
  // The scale of value j is s0 + (per_value ? j : 0), except for groups
  // that a chunk straddles (s0 < 0: computed per value).
  int64_t s0;
  bool per_value = false;
  switch (granularity) {
    case CudaGranularity::kLayer:
      s0 = 0;
      break;
    case CudaGranularity::kHead:
      s0 = h;
      break;
    case CudaGranularity::kToken:
      s0 = row;
      break;
    case CudaGranularity::kChannel:
      s0 = static_cast<int64_t>(h) * head_dim + d0;
      per_value = true;
      break;
    default: {
      const uint32_t g0 = Div(d0, group);
      s0 = Div(d0 + chunk - 1, group) == g0
               ? static_cast<int64_t>(row) * (head_dim / group.d) + g0
               : -1;
      break;
    }
  }
  uint32_t w[Words(kN, kBits)];
  LoadBytes(in.packed + first * kBits / 8, w, chunk * kBits / 8);
  float v[kN];
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    v[j] = 0.0f;
    if (j < chunk) {
      const uint32_t q =
          (w[(j * kBits) / 32] >> ((j * kBits) % 32)) & ((1u << kBits) - 1);
      const int64_t s = s0 >= 0
                            ? s0 + (per_value ? j : 0)
                            : static_cast<int64_t>(row) * (head_dim / group.d) +
                                  Div(d0 + j, group);
      const float scale = HalfToFloat(in.scales[s]);
      float value;
      if (code == CudaCode::kIntSymmetric) {
        value = __fmul_rn(__fsub_rn(static_cast<float>(q),
                                    static_cast<float>(1 << (kBits - 1))),
                          scale);
      } else if (code == CudaCode::kIntAsymmetric) {
        value = __fadd_rn(__fmul_rn(static_cast<float>(q), scale),
                          HalfToFloat(in.zero_points[s]));
      } else if (code == CudaCode::kNf4) {
        value = __fmul_rn(kNf4Codebook[q & 15], scale);
      } else {
        value = __fmul_rn(DecodeFp8(q, code == CudaCode::kFp8E5M2), scale);
      }
      v[j] = value;
    }
  }
  StoreChunk<kOut, kN>(out, first, v, chunk);
}

// ------------------------------------------------------------ host side

// Values per thread along head_dim for the chunked kernels: divides `len`,
// at most kMaxChunk, whole bytes of codes; 8 preferred. 0 if none.
int ChooseChunk(int64_t len, int bits) {
  for (int c : {8, 16, 32, 4}) {
    if (len % c == 0 && (c * bits) % 8 == 0) return c;
  }
  for (int c = kMaxChunk; c >= 1; --c) {
    if (len % c == 0 && (c * bits) % 8 == 0) return c;
  }
  return 0;
}

struct RowPlan {
  int chunk = 0;
  int lanes_log2 = 0;
};

// PER_TOKEN / PER_GROUP: a scale of `unit` values over 2^k lanes of `chunk`
// values each: the largest chunk that works, so that each thread keeps
// several 16-byte loads in flight (what saturates HBM).
RowPlan ChooseRowPlan(int64_t unit, int bits) {
  RowPlan plan;
  for (int l = 0; l <= 5; ++l) {
    const int64_t lanes = int64_t{1} << l;
    if (unit % lanes != 0) continue;
    const int64_t c = unit / lanes;
    if (c > kMaxChunk || (c * bits) % 8 != 0) continue;
    plan.chunk = static_cast<int>(c);
    plan.lanes_log2 = l;
    return plan;
  }
  return plan;
}

bool IsRowGranularity(CudaGranularity g) {
  return g == CudaGranularity::kToken || g == CudaGranularity::kGroup;
}

int64_t ElementSize(CudaDtype d) { return d == CudaDtype::kFp32 ? 4 : 2; }

unsigned int Blocks(int64_t threads) {
  return static_cast<unsigned int>((threads + kThreads - 1) / kThreads);
}

template <int kBits>
cudaError_t LaunchQuantize(const CudaBlockView& in, const CudaQuantParams& p,
                           const CudaQuantizeOutput& out, void* workspace,
                           int32_t* flag, cudaStream_t stream) {
  const int64_t rows = in.heads * in.tokens;
  const int64_t es = ElementSize(in.dtype);
  auto aligned = [&](int chunk) {
    return reinterpret_cast<uintptr_t>(in.data) % 16 == 0 &&
           (in.head_stride * es) % 16 == 0 &&
           (in.token_stride * es) % 16 == 0 && (chunk * es) % 16 == 0;
  };
  if (IsRowGranularity(p.granularity)) {
    const int64_t unit =
        p.granularity == CudaGranularity::kToken ? in.head_dim : p.group_size;
    const RowPlan plan = ChooseRowPlan(unit, kBits);
    const int64_t units = rows * (in.head_dim / unit);
    if (units == 0) return cudaSuccess;
    const int64_t threads = units << plan.lanes_log2;
    const bool vec = aligned(plan.chunk);
    const FastDiv units_per_row =
        MakeFastDiv(static_cast<uint32_t>(in.head_dim / unit));
    const FastDiv tokens = MakeFastDiv(static_cast<uint32_t>(in.tokens));
#define KVWIRE_ROW(D)                                                        \
  (plan.chunk == 32                                                          \
       ? RowQuantizeKernel<D, kBits, 32>                                     \
       : RowQuantizeKernel<D, kBits,                                         \
                           0>)<<<Blocks(threads), kThreads, 0, stream>>>(    \
      in, p.code, plan.chunk, plan.lanes_log2, static_cast<uint32_t>(units), \
      units_per_row, tokens, vec, out, flag)
    switch (in.dtype) {
      case CudaDtype::kBf16:
        KVWIRE_ROW(CudaDtype::kBf16);
        break;
      case CudaDtype::kFp16:
        KVWIRE_ROW(CudaDtype::kFp16);
        break;
      case CudaDtype::kFp32:
        KVWIRE_ROW(CudaDtype::kFp32);
        break;
    }
#undef KVWIRE_ROW
    return cudaGetLastError();
  }

  const int64_t n_scales = CudaScaleCount(p, in.heads, in.tokens, in.head_dim);
  float* mn = static_cast<float*>(workspace);
  float* mx = mn + n_scales;
  InitMinMaxKernel<<<Blocks(n_scales), kThreads, 0, stream>>>(
      mn, mx, n_scales, rows == 0 ? 0.0f : kInf);
  const int chunk = ChooseChunk(in.head_dim, kBits);
  const bool vec = aligned(chunk);
  const FastDiv chunks_per_row =
      MakeFastDiv(static_cast<uint32_t>(in.head_dim / chunk));
  const FastDiv tokens =
      MakeFastDiv(static_cast<uint32_t>(in.tokens > 0 ? in.tokens : 1));
  if (rows > 0) {
    if (p.granularity == CudaGranularity::kChannel) {
      const int slots = kThreads / static_cast<int>(in.head_dim / chunk);
      // About 4 blocks per SM in total over the heads.
      int64_t gx = (1024 + in.heads - 1) / in.heads;
      const int64_t need = (in.tokens + slots - 1) / slots;
      if (gx > need) gx = need;
      const dim3 grid(static_cast<unsigned int>(gx),
                      static_cast<unsigned int>(in.heads));
#define KVWIRE_CHANNEL(D)                                                  \
  (chunk == 8 ? ChannelReduceKernel<D, 8>                                  \
              : ChannelReduceKernel<D, 0>)<<<grid, kThreads, 0, stream>>>( \
      in, chunk, vec, mn, mx, flag)
      switch (in.dtype) {
        case CudaDtype::kBf16:
          KVWIRE_CHANNEL(CudaDtype::kBf16);
          break;
        case CudaDtype::kFp16:
          KVWIRE_CHANNEL(CudaDtype::kFp16);
          break;
        case CudaDtype::kFp32:
          KVWIRE_CHANNEL(CudaDtype::kFp32);
          break;
      }
#undef KVWIRE_CHANNEL
    } else {
      const int64_t spans =
          p.granularity == CudaGranularity::kHead ? in.heads : 1;
      const int64_t rows_per_span = rows / spans;
      const int64_t chunks = rows_per_span * (in.head_dim / chunk);
      int64_t gx = (1024 + spans - 1) / spans;
      const int64_t need = (chunks + kThreads - 1) / kThreads;
      if (gx > need) gx = need;
      const dim3 grid(static_cast<unsigned int>(gx),
                      static_cast<unsigned int>(spans));
#define KVWIRE_SPAN(D)                                                      \
  (chunk == 8 ? SpanReduceKernel<D, 8>                                      \
              : SpanReduceKernel<D, 0>)<<<grid, kThreads, 0, stream>>>(     \
      in, chunk, vec, static_cast<uint32_t>(rows_per_span), chunks_per_row, \
      tokens, mn, mx, flag)
      switch (in.dtype) {
        case CudaDtype::kBf16:
          KVWIRE_SPAN(CudaDtype::kBf16);
          break;
        case CudaDtype::kFp16:
          KVWIRE_SPAN(CudaDtype::kFp16);
          break;
        case CudaDtype::kFp32:
          KVWIRE_SPAN(CudaDtype::kFp32);
          break;
      }
#undef KVWIRE_SPAN
    }
  }
  FinalizeScalesKernel<<<Blocks(n_scales), kThreads, 0, stream>>>(
      mn, mx, n_scales, p.code, kBits, out, flag);
  if (rows > 0) {
    const int64_t chunks = rows * (in.head_dim / chunk);
#define KVWIRE_ENCODE(D)                                                      \
  (chunk == 8                                                                 \
       ? EncodeKernel<D, kBits, 8>                                            \
       : EncodeKernel<D, kBits, 0>)<<<Blocks(chunks), kThreads, 0, stream>>>( \
      in, p.code, p.granularity, chunk, vec, static_cast<uint32_t>(chunks),   \
      chunks_per_row, tokens, mn, mx, out)
    switch (in.dtype) {
      case CudaDtype::kBf16:
        KVWIRE_ENCODE(CudaDtype::kBf16);
        break;
      case CudaDtype::kFp16:
        KVWIRE_ENCODE(CudaDtype::kFp16);
        break;
      case CudaDtype::kFp32:
        KVWIRE_ENCODE(CudaDtype::kFp32);
        break;
    }
#undef KVWIRE_ENCODE
  }
  return cudaGetLastError();
}

template <int kBits>
cudaError_t LaunchDequantize(const CudaDequantizeInput& in,
                             const CudaQuantParams& p, int64_t heads,
                             int64_t tokens, int64_t head_dim,
                             CudaDtype out_dtype, void* out,
                             cudaStream_t stream) {
  const int chunk = ChooseChunk(head_dim, kBits);
  const int64_t chunks = heads * tokens * (head_dim / chunk);
  if (chunks == 0) return cudaSuccess;
#define KVWIRE_DEQUANT(D)                                                      \
  (chunk == 8 ? DequantizeKernel<D, kBits, 8>                                  \
              : DequantizeKernel<D, kBits,                                     \
                                 0>)<<<Blocks(chunks), kThreads, 0, stream>>>( \
      in, p.code, p.granularity,                                               \
      MakeFastDiv(p.granularity == CudaGranularity::kGroup ? p.group_size      \
                                                           : 1),               \
      MakeFastDiv(static_cast<uint32_t>(tokens)), head_dim, chunk,             \
      static_cast<uint32_t>(chunks),                                           \
      MakeFastDiv(static_cast<uint32_t>(head_dim / chunk)), out)
  switch (out_dtype) {
    case CudaDtype::kBf16:
      KVWIRE_DEQUANT(CudaDtype::kBf16);
      break;
    case CudaDtype::kFp16:
      KVWIRE_DEQUANT(CudaDtype::kFp16);
      break;
    case CudaDtype::kFp32:
      KVWIRE_DEQUANT(CudaDtype::kFp32);
      break;
  }
#undef KVWIRE_DEQUANT
  return cudaGetLastError();
}

bool ValidBits(int bits) { return bits == 8 || bits == 4 || bits == 2; }

}  // namespace

bool CudaBlockFits(int64_t heads, int64_t tokens, int64_t head_dim) {
  constexpr int64_t kLimit = int64_t{1} << 31;
  return heads < kLimit && tokens < kLimit && head_dim < kLimit &&
         (tokens == 0 || heads * tokens < kLimit / head_dim);
}

int64_t CudaScaleCount(const CudaQuantParams& params, int64_t heads,
                       int64_t tokens, int64_t head_dim) {
  switch (params.granularity) {
    case CudaGranularity::kLayer:
      return 1;
    case CudaGranularity::kHead:
      return heads;
    case CudaGranularity::kToken:
      return heads * tokens;
    case CudaGranularity::kChannel:
      return heads * head_dim;
    case CudaGranularity::kGroup:
      return params.group_size > 0
                 ? heads * tokens * (head_dim / params.group_size)
                 : 0;
  }
  return 0;
}

bool CudaQuantizeSupports(const CudaQuantParams& params, int64_t head_dim) {
  if (!ValidBits(params.bits) || head_dim <= 0) return false;
  if ((params.code == CudaCode::kNf4 && params.bits != 4) ||
      ((params.code == CudaCode::kFp8E4M3 ||
        params.code == CudaCode::kFp8E5M2) &&
       params.bits != 8)) {
    return false;
  }
  const int chunk = ChooseChunk(head_dim, params.bits);
  if (chunk == 0) return false;  // Also what the decoder needs.
  switch (params.granularity) {
    case CudaGranularity::kToken:
      return ChooseRowPlan(head_dim, params.bits).chunk > 0;
    case CudaGranularity::kGroup:
      return params.group_size > 0 && head_dim % params.group_size == 0 &&
             ChooseRowPlan(params.group_size, params.bits).chunk > 0;
    case CudaGranularity::kChannel:
      return head_dim / chunk <= kThreads;
    case CudaGranularity::kLayer:
    case CudaGranularity::kHead:
      return true;
  }
  return false;
}

int64_t CudaQuantizeWorkspaceBytes(const CudaQuantParams& params, int64_t heads,
                                   int64_t tokens, int64_t head_dim) {
  if (IsRowGranularity(params.granularity)) return 0;
  return 2 * sizeof(float) * CudaScaleCount(params, heads, tokens, head_dim);
}

cudaError_t CudaQuantize(const CudaBlockView& input,
                         const CudaQuantParams& params,
                         const CudaQuantizeOutput& out, void* workspace,
                         int32_t* error_flag, cudaStream_t stream) {
  if (!CudaQuantizeSupports(params, input.head_dim) || input.heads < 0 ||
      input.tokens < 0 ||
      !CudaBlockFits(input.heads, input.tokens, input.head_dim)) {
    return cudaErrorInvalidValue;
  }
  cudaError_t e = cudaMemsetAsync(error_flag, 0, sizeof(int32_t), stream);
  if (e != cudaSuccess) return e;
  switch (params.bits) {
    case 8:
      return LaunchQuantize<8>(input, params, out, workspace, error_flag,
                               stream);
    case 4:
      return LaunchQuantize<4>(input, params, out, workspace, error_flag,
                               stream);
    default:
      return LaunchQuantize<2>(input, params, out, workspace, error_flag,
                               stream);
  }
}

cudaError_t CudaDequantize(const CudaDequantizeInput& input,
                           const CudaQuantParams& params, int64_t heads,
                           int64_t tokens, int64_t head_dim,
                           CudaDtype out_dtype, void* out,
                           cudaStream_t stream) {
  if (!ValidBits(params.bits) || ChooseChunk(head_dim, params.bits) == 0 ||
      heads < 0 || tokens < 0 || !CudaBlockFits(heads, tokens, head_dim) ||
      (params.granularity == CudaGranularity::kGroup &&
       (params.group_size <= 0 || head_dim % params.group_size != 0))) {
    return cudaErrorInvalidValue;
  }
  switch (params.bits) {
    case 8:
      return LaunchDequantize<8>(input, params, heads, tokens, head_dim,
                                 out_dtype, out, stream);
    case 4:
      return LaunchDequantize<4>(input, params, heads, tokens, head_dim,
                                 out_dtype, out, stream);
    default:
      return LaunchDequantize<2>(input, params, heads, tokens, head_dim,
                                 out_dtype, out, stream);
  }
}

}  // namespace kvwire
