// Over 700 lines on purpose: the fused quantize (+gather) + pack and unpack +
// dequantize kernels of every scheme kind share the scalar coding, memory
// and reduction helpers of one translation unit, so nvcc inlines them;
// sections: scalars, coding, memory, kernels, host side.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <cstring>

#include "common/codec/cuda_quantize.h"
#include "common/codec/exact_quotient.h"

// Bit-identical to cpu_quantize.cc. Scales, zero points and every fp32
// operation that the CPU path performs are written with the correctly
// rounded intrinsics (__fadd_rn, __fsub_rn, __fmul_rn, __fdiv_rn) in its
// order, or computed exactly otherwise (below); the file is also compiled
// with -fmad=false. Integer-valued and exact steps (min, max, comparisons,
// conversions of small integers) are written plainly.
//
// Division-free coding. Every code is a function of q = RN(a / s), a = x (or
// x - zero, asymmetric INT), s the fp16 scale: INT clamp(rint(q)), NF4 the
// number of codebook midpoints below q, FP8 EncodeFp8(q). A correctly
// rounded division per value (MUFU reciprocal, four FMAs, a range check and
// a slow-path branch) made the kernels instruction-bound. Instead each scale
// gets r = RN(1 / s) once, and each value one multiply and one FMA
// (Quotient()): y0 = RN(a r), q = RN(y0 + (a - s y0) r). q is exactly
// RN(a / s) because s is short (11 significant bits):
//  * Let 2^e <= a/s < 2^(e+1), and m a midpoint between two floats there,
//    an odd multiple of 2^(e-24). a/s is never m: a = m s would need 25
//    significant bits. a - m s is a multiple of 2^(e+es-34) (s a multiple of
//    2^(es-10), s < 2^(es+1), a a multiple of 2^(ea-23), ea >= e + es), so
//    |a/s - m| > 2^(e-35).
//  * |y0 - a/s| <= |a/s| (2^-23 + 2^-48) (r and the product round once
//    each), so a - s y0 is a multiple of 2^(es+e-34) below 2^(es+e-20) in
//    magnitude: exact, and the FMA computes it exactly. Then y0 + (a - s y0)
//    r = a/s + (a/s - y0) (r s - 1) is within 2^(e-46) of a/s: on the same
//    side of every midpoint, so it rounds to RN(a / s).
//  * This needs no underflow and no overflow: 2^-90 < |a/s| < 2^126. Valid
//    blocks have |a/s| <= 2^8 (s >= absmax / qmax, s in [2^-24, 65504]);
//    below 2^-90 every code is that of 0 (all code boundaries exceed 2^-17),
//    and a = -0 (for which q is +0) only matters to FP8, which takes the
//    sign from x.
//  * Checked on the CPU with the same operations: q == a / s bit for bit for
//    every positive finite bf16 and every positive finite fp16 numerator
//    against every positive finite fp16 scale (2 * 10^9 pairs), and for
//    2 * 10^8 random and near-tie fp32 numerators, except where the quotient
//    is below 2^-102 or infinite; codes equal the CPU's on 9 * 10^8 random
//    and near-boundary pairs over all schemes.
// From q (exact_quotient.h): INT clamps and adds 1.5 * 2^23 + offset, whose
// low byte is the code (round half to even, like the CPU's magic-number
// rounding). NF4 looks the cell k = rint(16 q + 16) (one exactly rounded FMA)
// up in a shared table of the midpoint inside the cell (cells are 1/16 wide,
// midpoints at least 0.08 apart: one at most) and the number below it. FP8
// uses a branch-free EncodeFp8. exact_quotient_test checks all of it on the
// CPU (sampled; the table was also checked on every float below 2 - 1/32,
// the FP8 encoder on all 2^32 floats). Blocks with NaN or Inf, or a scale that
// overflows fp16, are rejected by the CPU (the kernels raise the error
// flag); their codes are never used, but the kernels still compute them with
// the CPU's formulas verbatim (the exact division), per chunk in the
// one-pass kernel and per block in the two-pass one.
//
// Dequantization multiplies, as Dequantize's ATen path does, with small
// integers turned into floats exactly through the bits of 2^23 + q, and
// stores bf16/fp16 through the hardware's round-to-nearest-even pair
// conversions (equal to c10's for the finite values INT and NF4 produce).

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

// Minimum and maximum that propagate NaN (one instruction on sm_80+).
__device__ __forceinline__ float MinNaN(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a != a || b != b ? __int_as_float(0x7FFFFFFF) : fminf(a, b);
#endif
}

__device__ __forceinline__ float MaxNaN(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a != a || b != b ? __int_as_float(0x7FFFFFFF) : fmaxf(a, b);
#endif
}

// Whether neither bound is NaN or infinite.
__device__ __forceinline__ bool FiniteRange(float lo, float hi) {
  return fabsf(lo) <= FLT_MAX && fabsf(hi) <= FLT_MAX;
}

// ------------------------------------------------------------ coding

// The INT codes' bounds and offset.
template <CudaCode kCode, int kBits>
struct IntCode {
  static constexpr bool kAsym = kCode == CudaCode::kIntAsymmetric;
  static constexpr float kLo =
      kAsym ? 0.0f : -static_cast<float>((1 << (kBits - 1)) - 1);
  static constexpr float kHi = kAsym
                                   ? static_cast<float>((1 << kBits) - 1)
                                   : static_cast<float>((1 << (kBits - 1)) - 1);
  static constexpr float kOffset =
      kAsym ? 0.0f : static_cast<float>(1 << (kBits - 1));
};

// NF4 midpoints (as number_formats.cc computes them) and the cell table of
// the division-free path (exact_quotient.h), in shared memory.
struct Nf4Table {
  exact_quotient::Nf4Cell cell[64];
  float mid[16];  // The 15 midpoints, ascending.
};

__device__ __forceinline__ float Nf4Mid(int i) {
  return __fmul_rn(__fadd_rn(kNf4Codebook[i], kNf4Codebook[i + 1]), 0.5f);
}

// Fills `t` (threads 0..63); the caller synchronizes the block afterwards.
__device__ __forceinline__ void InitNf4Table(Nf4Table* t) {
  const int k = static_cast<int>(threadIdx.x);
  if (k < 64) {
    float mid[15];
#pragma unroll
    for (int i = 0; i < 15; ++i) mid[i] = Nf4Mid(i);
    if (k < 15) t->mid[k] = Nf4Mid(k);
    t->cell[k] = exact_quotient::MakeNf4Cell(k, mid);
  }
}

// Codes of one scale. Fast(): from the division-free quotient, for finite
// inputs and a finite scale; Exact(): cpu_quantize.cc's formulas verbatim
// (correctly rounded division), for blocks with NaN or Inf, which the CPU
// rejects (their codes are never used; they stay equal all the same). Codes
// are in the low bits (garbage above bit 7 for INT).
template <CudaCode kCode, int kBits>
struct Coder {
  float scale, rcp, zero;
  const Nf4Table* nf4;

  static constexpr bool kInt =
      kCode == CudaCode::kIntSymmetric || kCode == CudaCode::kIntAsymmetric;

  __device__ __forceinline__ float Numerator(float x) const {
    // x - 0 is x for every non-NaN x (signed zeros included), so the
    // symmetric case skips the subtraction.
    return kCode == CudaCode::kIntAsymmetric ? __fsub_rn(x, zero) : x;
  }

  __device__ __forceinline__ uint32_t Fast(float x) const {
    const float q = exact_quotient::Quotient(Numerator(x), scale, rcp);
    if constexpr (kInt) {
      using K = IntCode<kCode, kBits>;
      return exact_quotient::IntCodeBits(q, K::kLo, K::kHi, K::kOffset);
    } else if constexpr (kCode == CudaCode::kNf4) {
      return exact_quotient::Nf4CodeFromCell(
          q, nf4->cell[exact_quotient::Nf4CellIndex(q)]);
    } else {
      // RN(x / s) has x's sign (s > 0), signed zeros included.
      return exact_quotient::Fp8Code<kCode == CudaCode::kFp8E5M2>(
          q, (__float_as_uint(x) >> 24) & 0x80);
    }
  }

  __device__ __forceinline__ uint32_t Exact(float x) const {
    const float q = __fdiv_rn(Numerator(x), scale);
    if constexpr (kInt) {
      // rint then clamp, as the CPU does, equals clamp then rint (integer
      // bounds); fmaxf first maps NaN to the low bound, as rintf + fmaxf
      // would.
      using K = IntCode<kCode, kBits>;
      return exact_quotient::IntCodeBits(q, K::kLo, K::kHi, K::kOffset);
    } else if constexpr (kCode == CudaCode::kNf4) {
      uint32_t c = 0;
#pragma unroll
      for (int i = 0; i < 15; ++i) c += nf4->mid[i] < q ? 1u : 0u;
      return c;
    } else {
      return EncodeFp8(q, kCode == CudaCode::kFp8E5M2);
    }
  }
};

template <CudaCode kCode, int kBits>
__device__ __forceinline__ Coder<kCode, kBits> MakeCoder(float scale, float rcp,
                                                         float zero,
                                                         const Nf4Table* nf4) {
  Coder<kCode, kBits> c;
  c.scale = scale;
  c.rcp = rcp;
  c.zero = zero;
  c.nf4 = nf4;
  return c;
}

// ------------------------------------------------------------ memory

template <CudaDtype kIn>
constexpr int kElementBytes = kIn == CudaDtype::kFp32 ? 4 : 2;

// 32-bit words holding kN input values.
template <CudaDtype kIn, int kN>
constexpr int kRawWords = (kN * kElementBytes<kIn>) / 4;

// Value j of a chunk of raw input words.
template <CudaDtype kIn, int kW>
__device__ __forceinline__ float RawValue(const uint32_t (&raw)[kW], int j) {
  if constexpr (kIn == CudaDtype::kFp32) {
    return __uint_as_float(raw[j]);
  } else {
    const uint32_t w = raw[j / 2];
    if constexpr (kIn == CudaDtype::kBf16) {
      return __uint_as_float(j % 2 == 0 ? w << 16 : w & 0xFFFF0000u);
    } else {
      return HalfToFloat(static_cast<uint16_t>(j % 2 == 0 ? w : w >> 16));
    }
  }
}

// Loads `n` (<= kN) consecutive values at element `offset` of `data` as raw
// words; values past n repeat value 0 (so that minima, maxima and codes need
// no bounds). `vec`: the address and n values are 16-byte aligned.
template <CudaDtype kIn, int kN>
__device__ __forceinline__ void LoadChunk(const void* data, int64_t offset,
                                          int n, bool vec,
                                          uint32_t (&raw)[kRawWords<kIn, kN>]) {
  constexpr int kW = kRawWords<kIn, kN>;
  constexpr int kEs = kElementBytes<kIn>;
  const char* p = static_cast<const char*>(data) + offset * kEs;
  if (vec) {
    const uint4* v = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < kW / 4; ++i) {
      if (i == 0 || i * 16 < n * kEs) {
        const uint4 q = __ldg(v + i);
        raw[4 * i] = q.x;
        raw[4 * i + 1] = q.y;
        raw[4 * i + 2] = q.z;
        raw[4 * i + 3] = q.w;
      } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) raw[4 * i + k] = raw[k];
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      const int e = j < n ? j : 0;
      if constexpr (kEs == 2) {
        const uint32_t b =
            __ldg(reinterpret_cast<const unsigned short*>(p) + e);
        raw[j / 2] = j % 2 == 0 ? b : raw[j / 2] | (b << 16);
      } else {
        raw[j] = __ldg(reinterpret_cast<const unsigned int*>(p) + e);
      }
    }
  }
}

__host__ __device__ constexpr int Log2(int n) {
  return n <= 1 ? 0 : 1 + Log2(n / 2);
}

template <CudaDtype kIn>
struct Pair;
template <>
struct Pair<CudaDtype::kBf16> {
  using T = __nv_bfloat162;
};
template <>
struct Pair<CudaDtype::kFp16> {
  using T = __half2;
};

template <typename T>
__device__ __forceinline__ T BitCast(uint32_t u) {
  T t;
  memcpy(&t, &u, sizeof(t));
  return t;
}

template <typename T>
__device__ __forceinline__ uint32_t BitsOf(T t) {
  uint32_t u;
  memcpy(&u, &t, sizeof(u));
  return u;
}

// Minimum and maximum of the raw words (NaN propagates, so !FiniteRange
// flags NaN and Inf). 16-bit values are compared in pairs: equal to
// comparing their exact fp32 values.
template <CudaDtype kIn, int kW>
__device__ __forceinline__ void MinMaxRaw(const uint32_t (&raw)[kW], float* lo,
                                          float* hi) {
  if constexpr (kIn == CudaDtype::kFp32) {
    float l[kW], h[kW];
#pragma unroll
    for (int i = 0; i < kW; ++i) l[i] = h[i] = __uint_as_float(raw[i]);
#pragma unroll
    for (int step = 1; step <= Log2(kW); ++step) {
      const int s = kW >> step;
#pragma unroll
      for (int i = 0; i < kW / 2; ++i) {
        if (i < s) {
          l[i] = MinNaN(l[i], l[i + s]);
          h[i] = MaxNaN(h[i], h[i + s]);
        }
      }
    }
    *lo = l[0];
    *hi = h[0];
  } else {
    using P = typename Pair<kIn>::T;
    P l[kW], h[kW];
#pragma unroll
    for (int i = 0; i < kW; ++i) l[i] = h[i] = BitCast<P>(raw[i]);
#pragma unroll
    for (int step = 1; step <= Log2(kW); ++step) {
      const int s = kW >> step;
#pragma unroll
      for (int i = 0; i < kW / 2; ++i) {
        if (i < s) {
          l[i] = __hmin2_nan(l[i], l[i + s]);
          h[i] = __hmax2_nan(h[i], h[i + s]);
        }
      }
    }
    const uint32_t lw = BitsOf(l[0]), hw = BitsOf(h[0]);
    uint32_t lb[1] = {lw}, hb[1] = {hw};
    *lo = MinNaN(RawValue<kIn>(lb, 0), RawValue<kIn>(lb, 1));
    *hi = MaxNaN(RawValue<kIn>(hb, 0), RawValue<kIn>(hb, 1));
  }
}

// 32-bit words holding the codes of n values.
__host__ __device__ constexpr int Words(int n, int bits) {
  return (n * bits + 31) / 32;
}

// Packs codes (each in the low kBits bits of c[j]; higher bits are ignored)
// into little-endian words: bytes by shifts and adds, words by byte
// permutes.
template <int kBits, int kN>
__device__ __forceinline__ void PackCodes(const uint32_t (&c)[kN],
                                          uint32_t (&w)[Words(kN, kBits)]) {
  constexpr int kWords = Words(kN, kBits);
  constexpr int kPer = 8 / kBits;  // Codes per byte.
  constexpr int kBytes = (kN * kBits + 7) / 8;
  uint32_t b[4 * kWords];  // Byte i in the low 8 bits of b[i].
#pragma unroll
  for (int i = 0; i < 4 * kWords; ++i) {
    b[i] = 0;
    if (i < kBytes) {
#pragma unroll
      for (int t = 0; t < kPer; ++t) {
        if (i * kPer + t < kN) b[i] += c[i * kPer + t] << (t * kBits);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    w[i] = __byte_perm(__byte_perm(b[4 * i], b[4 * i + 1], 0x0040),
                       __byte_perm(b[4 * i + 2], b[4 * i + 3], 0x0040), 0x5410);
  }
}

// Codes of a chunk, packed. `coder_of(j)` gives value j's Coder; `exact`:
// the chunk (or block) holds NaN or Inf, or its scale overflowed.
template <CudaDtype kIn, CudaCode kCode, int kBits, int kN, typename CoderOf>
__device__ __forceinline__ void EncodeChunk(
    const uint32_t (&raw)[kRawWords<kIn, kN>], CoderOf coder_of, bool exact,
    uint32_t (&w)[Words(kN, kBits)]) {
  uint32_t c[kN];
  if (!exact) {
#pragma unroll
    for (int j = 0; j < kN; ++j) c[j] = coder_of(j).Fast(RawValue<kIn>(raw, j));
  } else {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      c[j] = coder_of(j).Exact(RawValue<kIn>(raw, j));
    }
  }
  PackCodes<kBits, kN>(c, w);
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
  } else if (kWords >= 2 && (n & 7) == 0 && (a & 7) == 0) {
#pragma unroll
    for (int i = 0; i < kWords / 2; ++i) {
      if (i * 8 < n) {
        const uint2 q = __ldg(reinterpret_cast<const uint2*>(src) + i);
        w[2 * i] = q.x;
        w[2 * i + 1] = q.y;
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
// kC: the chunk size when known at compile time (32 here, 16 in the chunked
// kernels below, 8 in the PER_CHANNEL reduction), else 0 (runtime `chunk`
// <= kMaxChunk). The same holds for the kernels below.
template <CudaDtype kIn, CudaCode kCode, int kBits, int kC>
__global__ void __launch_bounds__(kThreads)
    RowQuantizeKernel(CudaBlockView in, int runtime_chunk, int lanes_log2,
                      uint32_t units, FastDiv units_per_row, FastDiv tokens,
                      bool vec, CudaQuantizeOutput out, int32_t* flag) {
  constexpr int kN = kC > 0 ? kC : kMaxChunk;
  const int chunk = kC > 0 ? kC : runtime_chunk;
  __shared__ Nf4Table nf4;
  if (kCode == CudaCode::kNf4) {
    InitNf4Table(&nf4);
    __syncthreads();
  }
  const uint32_t g = blockIdx.x * blockDim.x + threadIdx.x;
  const int lanes = 1 << lanes_log2;
  const uint32_t unit = g >> lanes_log2;
  const int k = static_cast<int>(g & (lanes - 1));
  const bool active = unit < units;
  uint32_t raw[kRawWords<kIn, kN>];
  float lo = kInf, hi = -kInf;
  int64_t first = 0;
  if (active) {
    const uint32_t row = Div(unit, units_per_row);
    const int d0 =
        static_cast<int>(unit - row * units_per_row.d) * (chunk << lanes_log2) +
        k * chunk;
    LoadChunk<kIn, kN>(in.data, SourceOffset(in, tokens, row) + d0, chunk, vec,
                       raw);
    MinMaxRaw<kIn>(raw, &lo, &hi);
    first = static_cast<int64_t>(row) * in.head_dim + d0;
  }
  const bool bad = active && !FiniteRange(lo, hi);
  for (int off = 1; off < lanes; off <<= 1) {
    lo = MinNaN(lo, __shfl_xor_sync(0xFFFFFFFFu, lo, off));
    hi = MaxNaN(hi, __shfl_xor_sync(0xFFFFFFFFu, hi, off));
  }
  if (!active) return;
  if (bad) atomicOr(flag, 1);
  const Scale s = ComputeScale(lo, hi, kCode, kBits);
  if (k == 0) {
    out.scales[unit] = s.scale_h;
    if (kCode == CudaCode::kIntAsymmetric) out.zero_points[unit] = s.zero_h;
    if (!s.ok) atomicOr(flag, 2);
  }
  const Coder<kCode, kBits> coder =
      MakeCoder<kCode, kBits>(s.scale, __frcp_rn(s.scale), s.zero, &nf4);
  uint32_t w[Words(kN, kBits)];
  EncodeChunk<kIn, kCode, kBits, kN>(
      raw, [&](int) { return coder; }, bad || !s.ok, w);
  StoreBytes(out.packed + first * kBits / 8, w, chunk * kBits / 8);
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
  uint32_t raw[kRawWords<kIn, kN>];
  for (uint32_t c = blockIdx.x * blockDim.x + threadIdx.x; c < chunks;
       c += gridDim.x * blockDim.x) {
    const uint32_t r = Div(c, chunks_per_row);
    const int64_t d0 = static_cast<int64_t>(c - r * chunks_per_row.d) * chunk;
    LoadChunk<kIn, kN>(in.data, SourceOffset(in, tokens, row0 + r) + d0, chunk,
                       vec, raw);
    float l, h;
    MinMaxRaw<kIn>(raw, &l, &h);
    bad |= !FiniteRange(l, h);
    lo = MinNaN(lo, l);
    hi = MaxNaN(hi, h);
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
  constexpr int kW = kRawWords<kIn, kN>;
  const int chunk = kC > 0 ? kC : runtime_chunk;
  __shared__ float s_lo[kThreads], s_hi[kThreads];
  const int cols = static_cast<int>(in.head_dim / chunk);
  const int slots = kThreads / cols;
  const int cx = threadIdx.x % cols;
  const int ry = threadIdx.x / cols;
  const uint32_t h = blockIdx.y;
  // Running minima and maxima of each column, as raw words (pairs of
  // 16-bit values, or fp32).
  uint32_t lo_raw[kW], hi_raw[kW];
  bool touched = false;
  uint32_t raw[kW];
  if (ry < slots) {
    for (uint32_t t = blockIdx.x * slots + ry; t < in.tokens;
         t += gridDim.x * slots) {
      LoadChunk<kIn, kN>(
          in.data, SourceOffsetHT(in, h, t) + static_cast<int64_t>(cx) * chunk,
          chunk, vec, raw);
#pragma unroll
      for (int i = 0; i < kW; ++i) {
        if (!touched) {
          lo_raw[i] = hi_raw[i] = raw[i];
        } else if constexpr (kIn == CudaDtype::kFp32) {
          lo_raw[i] = __float_as_uint(
              MinNaN(__uint_as_float(lo_raw[i]), __uint_as_float(raw[i])));
          hi_raw[i] = __float_as_uint(
              MaxNaN(__uint_as_float(hi_raw[i]), __uint_as_float(raw[i])));
        } else {
          using P = typename Pair<kIn>::T;
          lo_raw[i] =
              BitsOf(__hmin2_nan(BitCast<P>(lo_raw[i]), BitCast<P>(raw[i])));
          hi_raw[i] =
              BitsOf(__hmax2_nan(BitCast<P>(hi_raw[i]), BitCast<P>(raw[i])));
        }
      }
      touched = true;
    }
  }
  bool bad = false;
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    if (touched && j < chunk) {
      bad |= !FiniteRange(RawValue<kIn>(lo_raw, j), RawValue<kIn>(hi_raw, j));
    }
  }
  if (bad) atomicOr(flag, 1);
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    if (j < chunk) {
      s_lo[threadIdx.x] = touched ? RawValue<kIn>(lo_raw, j) : kInf;
      s_hi[threadIdx.x] = touched ? RawValue<kIn>(hi_raw, j) : -kInf;
      __syncthreads();
      if (ry == 0) {
        float a = s_lo[cx], b = s_hi[cx];
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

// Minima and maxima (in place) -> fp32 scale and zero, the reciprocal of the
// scale, and the fp16 outputs.
__global__ void FinalizeScalesKernel(float* mn_scale, float* mx_zero,
                                     float* rcp, int64_t n, CudaCode code,
                                     int bits, CudaQuantizeOutput out,
                                     int32_t* flag) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const Scale s = ComputeScale(mn_scale[i], mx_zero[i], code, bits);
  if (!s.ok) atomicOr(flag, 2);
  out.scales[i] = s.scale_h;
  if (code == CudaCode::kIntAsymmetric) out.zero_points[i] = s.zero_h;
  mn_scale[i] = s.scale;
  mx_zero[i] = s.zero;
  rcp[i] = __frcp_rn(s.scale);
}

// Second pass of PER_LAYER / PER_HEAD / PER_CHANNEL: codes of one chunk.
template <CudaDtype kIn, CudaCode kCode, int kBits, int kC>
__global__ void __launch_bounds__(kThreads)
    EncodeKernel(CudaBlockView in, CudaGranularity granularity,
                 int runtime_chunk, bool vec, uint32_t chunks,
                 FastDiv chunks_per_row, FastDiv tokens, const float* scale,
                 const float* zero, const float* rcp, CudaQuantizeOutput out,
                 const int32_t* flag) {
  constexpr int kN = kC > 0 ? kC : kMaxChunk;
  const int chunk = kC > 0 ? kC : runtime_chunk;
  __shared__ Nf4Table nf4;
  if (kCode == CudaCode::kNf4) {
    InitNf4Table(&nf4);
    __syncthreads();
  }
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  const uint32_t row = Div(c, chunks_per_row);
  const int64_t d0 = static_cast<int64_t>(c - row * chunks_per_row.d) * chunk;
  const uint32_t h = Div(row, tokens);
  uint32_t raw[kRawWords<kIn, kN>];
  LoadChunk<kIn, kN>(in.data, SourceOffsetHT(in, h, row - h * tokens.d) + d0,
                     chunk, vec, raw);
  uint8_t* dst =
      out.packed + (static_cast<int64_t>(row) * in.head_dim + d0) * kBits / 8;
  // The first pass flagged NaN/Inf inputs (and Finalize overflowed scales).
  const bool exact = *flag != 0;
  uint32_t w[Words(kN, kBits)];
  if (granularity != CudaGranularity::kChannel) {
    const int64_t s = granularity == CudaGranularity::kHead ? h : 0;
    const Coder<kCode, kBits> coder =
        MakeCoder<kCode, kBits>(scale[s], rcp[s], zero[s], &nf4);
    EncodeChunk<kIn, kCode, kBits, kN>(
        raw, [&](int) { return coder; }, exact, w);
  } else {
    const int64_t s0 = static_cast<int64_t>(h) * in.head_dim + d0;
    EncodeChunk<kIn, kCode, kBits, kN>(
        raw,
        [&](int j) {
          const int64_t s = s0 + (j < chunk ? j : 0);
          return MakeCoder<kCode, kBits>(scale[s], rcp[s], zero[s], &nf4);
        },
        exact, w);
  }
  StoreBytes(dst, w, chunk * kBits / 8);
}

// Value of code q (Dequantize's formulas). `cb`: the NF4 codebook, or the
// 256 FP8 values (DecodeFp8), in shared memory.
template <CudaCode kCode, int kBits>
__device__ __forceinline__ float DecodeValue(uint32_t q, float scale,
                                             float zero, const float* cb) {
  if constexpr (kCode == CudaCode::kIntSymmetric) {
    return __fmul_rn(
        __fsub_rn(static_cast<float>(q), static_cast<float>(1 << (kBits - 1))),
        scale);
  } else if constexpr (kCode == CudaCode::kIntAsymmetric) {
    return __fadd_rn(__fmul_rn(static_cast<float>(q), scale), zero);
  } else if constexpr (kCode == CudaCode::kNf4) {
    return __fmul_rn(cb[q & 15], scale);
  } else {
    return __fmul_rn(cb[q & 0xFF], scale);
  }
}

// Values of a chunk of codes with one scale. INT: the code field of bits
// [p, p + kBits) (p < 16, within a 16-bit half) or'ed into 2^23's bits is
// exactly 2^23 + q 2^p; subtracting 2^23 + offset 2^p is exact, and
// multiplying by scale 2^-p (exact: |scale| >= 2^-24 or 0) rounds the same
// real product as (q - offset) * scale.
template <CudaCode kCode, int kBits, int kN>
__device__ __forceinline__ void DecodeUniform(
    const uint32_t (&w)[Words(kN, kBits)], float scale, float zero,
    const float* cb, float (&v)[kN]) {
  constexpr bool kInt =
      kCode == CudaCode::kIntSymmetric || kCode == CudaCode::kIntAsymmetric;
  constexpr bool kAsym = kCode == CudaCode::kIntAsymmetric;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  constexpr float kTwo23 = 8388608.0f;
  if constexpr (kInt && kBits == 8) {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      const float f =
          __uint_as_float(__byte_perm(w[j / 4], 0x4B000000u, 0x7440 + j % 4));
      v[j] = kAsym ? __fadd_rn(__fmul_rn(__fsub_rn(f, kTwo23), scale), zero)
                   : __fmul_rn(__fsub_rn(f, kTwo23 + 128.0f), scale);
    }
  } else if constexpr (kInt) {
    constexpr int kFields = 16 / kBits;  // Per 16-bit half.
    float sc[kFields];
#pragma unroll
    for (int t = 0; t < kFields; ++t) {
      sc[t] = __fmul_rn(scale, __uint_as_float((127u - t * kBits) << 23));
    }
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      const int bit = (j * kBits) % 32;
      const uint32_t half =
          bit >= 16 ? w[j * kBits / 32] >> 16 : w[j * kBits / 32];
      const int t = (bit % 16) / kBits;
      const int p = t * kBits;
      const float f = __uint_as_float(0x4B000000u | (half & (kMask << p)));
      v[j] =
          kAsym ? __fadd_rn(__fmul_rn(__fsub_rn(f, kTwo23), sc[t]), zero)
                : __fmul_rn(__fsub_rn(f, kTwo23 + static_cast<float>(
                                                      (1 << (kBits - 1)) << p)),
                            sc[t]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      const uint32_t q = (w[(j * kBits) / 32] >> ((j * kBits) % 32)) & kMask;
      v[j] = DecodeValue<kCode, kBits>(q, scale, zero, cb);
    }
  }
}

template <CudaDtype kOut, CudaCode kCode, int kN>
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
    // FP8 codes can decode to NaN, which c10 turns into 0x7FC0 (bf16); the
    // other codes decode to finite values, where the hardware's pair
    // conversions round to nearest even exactly as c10 and ATen do.
    constexpr bool kMayBeNaN =
        kCode == CudaCode::kFp8E4M3 || kCode == CudaCode::kFp8E5M2;
    uint32_t w[kN / 2];
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) {
      if constexpr (kMayBeNaN) {
        const uint32_t a = kOut == CudaDtype::kBf16 ? FloatToBf16(v[2 * i])
                                                    : FloatToHalf(v[2 * i]);
        const uint32_t b = kOut == CudaDtype::kBf16 ? FloatToBf16(v[2 * i + 1])
                                                    : FloatToHalf(v[2 * i + 1]);
        w[i] = a | (b << 16);
      } else if constexpr (kOut == CudaDtype::kBf16) {
        w[i] = BitsOf(__floats2bfloat162_rn(v[2 * i], v[2 * i + 1]));
      } else {
        w[i] = BitsOf(__floats2half2_rn(v[2 * i], v[2 * i + 1]));
      }
    }
    StoreBytes(
        reinterpret_cast<uint8_t*>(static_cast<uint16_t*>(data) + offset), w,
        2 * n);
  }
}

// Unpacks and dequantizes one chunk of `chunk` values of a row.
template <CudaDtype kOut, CudaCode kCode, int kBits, int kC>
__global__ void __launch_bounds__(kThreads)
    DequantizeKernel(CudaDequantizeInput in, CudaGranularity granularity,
                     FastDiv group, uint32_t groups_per_row, FastDiv tokens,
                     int64_t head_dim, int runtime_chunk, uint32_t chunks,
                     FastDiv chunks_per_row, void* out) {
  constexpr int kN = kC > 0 ? kC : kMaxChunk;
  const int chunk = kC > 0 ? kC : runtime_chunk;
  // Code values (NF4 codebook, FP8 decode table): per-thread indices.
  constexpr bool kFp8 =
      kCode == CudaCode::kFp8E4M3 || kCode == CudaCode::kFp8E5M2;
  __shared__ float cb[kFp8 ? 256 : 16];
  if (kCode == CudaCode::kNf4) {
    if (threadIdx.x < 16) cb[threadIdx.x] = kNf4Codebook[threadIdx.x];
    __syncthreads();
  } else if (kFp8) {
    static_assert(kThreads == 256, "one FP8 code per thread");
    cb[threadIdx.x] = DecodeFp8(threadIdx.x, kCode == CudaCode::kFp8E5M2);
    __syncthreads();
  }
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= chunks) return;
  const uint32_t row = Div(c, chunks_per_row);
  const uint32_t d0 = (c - row * chunks_per_row.d) * chunk;
  const uint32_t h = Div(row, tokens);
  const int64_t first = static_cast<int64_t>(row) * head_dim + d0;
  // One scale for the whole chunk (s0), except PER_CHANNEL and groups that
  // the chunk straddles.
  int64_t s0 = -1;
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
      break;
    default: {
      const uint32_t g0 = Div(d0, group);
      if (Div(d0 + chunk - 1, group) == g0) {
        s0 = static_cast<int64_t>(row) * groups_per_row + g0;
      }
      break;
    }
  }
  uint32_t w[Words(kN, kBits)];
  LoadBytes(in.packed + first * kBits / 8, w, chunk * kBits / 8);
  float v[kN];
  if (s0 >= 0) {
    const float zero = kCode == CudaCode::kIntAsymmetric
                           ? HalfToFloat(in.zero_points[s0])
                           : 0.0f;
    DecodeUniform<kCode, kBits, kN>(w, HalfToFloat(in.scales[s0]), zero, cb, v);
  } else {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      const uint32_t dj = d0 + (j < chunk ? j : 0);
      const int64_t s =
          granularity == CudaGranularity::kChannel
              ? static_cast<int64_t>(h) * head_dim + dj
              : static_cast<int64_t>(row) * groups_per_row + Div(dj, group);
      const uint32_t q =
          (w[(j * kBits) / 32] >> ((j * kBits) % 32)) & ((1u << kBits) - 1);
      v[j] = DecodeValue<kCode, kBits>(q, HalfToFloat(in.scales[s]),
                                       kCode == CudaCode::kIntAsymmetric
                                           ? HalfToFloat(in.zero_points[s])
                                           : 0.0f,
                                       cb);
    }
  }
  StoreChunk<kOut, kCode, kN>(out, first, v, chunk);
}

// ------------------------------------------------------------ host side

// Values per thread along head_dim for the chunked kernels: divides `len`,
// at most kMaxChunk, whole bytes of codes; `preferred` first (the kernels
// are specialized for it): 16, or 8 for the PER_CHANNEL reduction (whose
// epilogue is serial in the chunk). 0 if none.
int ChooseChunk(int64_t len, int bits, int preferred = 16) {
  for (int c : {preferred, 16, 8, 32, 4}) {
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

template <CudaCode C, int B>
struct CodeTag {
  static constexpr CudaCode kCode = C;
  static constexpr int kBits = B;
};

// Calls fn(CodeTag<code, bits>()) for the valid (code, bits) pairs of `p`.
template <typename Fn>
cudaError_t WithCode(const CudaQuantParams& p, Fn&& fn) {
  using C = CudaCode;
  switch (p.code) {
    case C::kIntSymmetric:
      if (p.bits == 8) return fn(CodeTag<C::kIntSymmetric, 8>());
      if (p.bits == 4) return fn(CodeTag<C::kIntSymmetric, 4>());
      if (p.bits == 2) return fn(CodeTag<C::kIntSymmetric, 2>());
      break;
    case C::kIntAsymmetric:
      if (p.bits == 8) return fn(CodeTag<C::kIntAsymmetric, 8>());
      if (p.bits == 4) return fn(CodeTag<C::kIntAsymmetric, 4>());
      if (p.bits == 2) return fn(CodeTag<C::kIntAsymmetric, 2>());
      break;
    case C::kNf4:
      if (p.bits == 4) return fn(CodeTag<C::kNf4, 4>());
      break;
    case C::kFp8E4M3:
      if (p.bits == 8) return fn(CodeTag<C::kFp8E4M3, 8>());
      break;
    case C::kFp8E5M2:
      if (p.bits == 8) return fn(CodeTag<C::kFp8E5M2, 8>());
      break;
  }
  return cudaErrorInvalidValue;
}

// Workspace of the two-pass granularities: minima (then scales), maxima
// (then zero points) and reciprocals of the scales, n floats each.
int64_t WorkspaceFloats(int64_t n_scales) { return 3 * n_scales; }

template <CudaCode kCode, int kBits>
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
#define KVWIRE_ROW(D)                                                     \
  (plan.chunk == 32                                                       \
       ? RowQuantizeKernel<D, kCode, kBits, 32>                           \
       : RowQuantizeKernel<D, kCode, kBits,                               \
                           0>)<<<Blocks(threads), kThreads, 0, stream>>>( \
      in, plan.chunk, plan.lanes_log2, static_cast<uint32_t>(units),      \
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
  float* rcp = mx + n_scales;
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
      const int rchunk = ChooseChunk(in.head_dim, kBits, 8);
      const bool rvec = aligned(rchunk);
      const int slots = kThreads / static_cast<int>(in.head_dim / rchunk);
      // About 4 blocks per SM in total over the heads.
      int64_t gx = (1024 + in.heads - 1) / in.heads;
      const int64_t need = (in.tokens + slots - 1) / slots;
      if (gx > need) gx = need;
      const dim3 grid(static_cast<unsigned int>(gx),
                      static_cast<unsigned int>(in.heads));
#define KVWIRE_CHANNEL(D)                                                   \
  (rchunk == 8 ? ChannelReduceKernel<D, 8>                                  \
               : ChannelReduceKernel<D, 0>)<<<grid, kThreads, 0, stream>>>( \
      in, rchunk, rvec, mn, mx, flag)
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
  (chunk == 16 ? SpanReduceKernel<D, 16>                                    \
               : SpanReduceKernel<D, 0>)<<<grid, kThreads, 0, stream>>>(    \
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
      mn, mx, rcp, n_scales, kCode, kBits, out, flag);
  if (rows > 0) {
    const int64_t chunks = rows * (in.head_dim / chunk);
#define KVWIRE_ENCODE(D)                                                    \
  (chunk == 16 ? EncodeKernel<D, kCode, kBits, 16>                          \
               : EncodeKernel<D, kCode, kBits,                              \
                              0>)<<<Blocks(chunks), kThreads, 0, stream>>>( \
      in, p.granularity, chunk, vec, static_cast<uint32_t>(chunks),         \
      chunks_per_row, tokens, mn, mx, rcp, out, flag)
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

template <CudaCode kCode, int kBits>
cudaError_t LaunchDequantize(const CudaDequantizeInput& in,
                             const CudaQuantParams& p, int64_t heads,
                             int64_t tokens, int64_t head_dim,
                             CudaDtype out_dtype, void* out,
                             cudaStream_t stream) {
  const int chunk = ChooseChunk(head_dim, kBits);
  const int64_t chunks = heads * tokens * (head_dim / chunk);
  if (chunks == 0) return cudaSuccess;
  const int64_t group =
      p.granularity == CudaGranularity::kGroup ? p.group_size : 1;
#define KVWIRE_DEQUANT(D)                                               \
  (chunk == 16                                                          \
       ? DequantizeKernel<D, kCode, kBits, 16>                          \
       : DequantizeKernel<D, kCode, kBits,                              \
                          0>)<<<Blocks(chunks), kThreads, 0, stream>>>( \
      in, p.granularity, MakeFastDiv(static_cast<uint32_t>(group)),     \
      static_cast<uint32_t>(head_dim / group),                          \
      MakeFastDiv(static_cast<uint32_t>(tokens)), head_dim, chunk,      \
      static_cast<uint32_t>(chunks),                                    \
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
      return head_dim / ChooseChunk(head_dim, params.bits, 8) <= kThreads;
    case CudaGranularity::kLayer:
    case CudaGranularity::kHead:
      return true;
  }
  return false;
}

int64_t CudaQuantizeWorkspaceBytes(const CudaQuantParams& params, int64_t heads,
                                   int64_t tokens, int64_t head_dim) {
  if (IsRowGranularity(params.granularity)) return 0;
  return sizeof(float) *
         WorkspaceFloats(CudaScaleCount(params, heads, tokens, head_dim));
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
  return WithCode(params, [&](auto tag) {
    using Tag = decltype(tag);
    return LaunchQuantize<Tag::kCode, Tag::kBits>(input, params, out, workspace,
                                                  error_flag, stream);
  });
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
  return WithCode(params, [&](auto tag) {
    using Tag = decltype(tag);
    return LaunchDequantize<Tag::kCode, Tag::kBits>(
        input, params, heads, tokens, head_dim, out_dtype, out, stream);
  });
}

}  // namespace kvwire
