// Division-free arithmetic of the CUDA codec kernels (cuda_quantize.cu),
// host and device: the correctly rounded quotient by an fp16 scale from the
// scale's reciprocal, and the codes computed from it (INT rounding, the NF4
// cell table, a branch-free EncodeFp8). Each equals the CPU path's
// (cpu_quantize.cc, number_formats.cc) where the kernels use it; the CPU-only
// exact_quotient_test checks that. Plain C++ and CUDA: no Torch, no
// protobuf.
#ifndef KVWIRE_COMMON_CODEC_EXACT_QUOTIENT_H_
#define KVWIRE_COMMON_CODEC_EXACT_QUOTIENT_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVWIRE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KVWIRE_HOST_DEVICE inline
#endif

namespace kvwire {
namespace exact_quotient {

KVWIRE_HOST_DEVICE uint32_t Bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

KVWIRE_HOST_DEVICE float FromBits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

// fma with a single rounding, on either side.
KVWIRE_HOST_DEVICE float Fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// RN(a / scale) for a scale that fp16 represents (s > 0) and rcp =
// RN(1 / scale), whenever 2^-90 < |a / scale| < 2^126; a = -0 gives +0.
// y0 = RN(a rcp) is within two ulps of a / scale; the FMA residual a - s y0
// is exact, and y0 + (a - s y0) rcp lies within 2^-22 ulps of a / scale,
// while a / scale, s having 11 significant bits, is never a rounding
// midpoint and always more than 2^-12 ulps from one: it rounds correctly.
// (cuda_quantize.cu spells the proof out.)
KVWIRE_HOST_DEVICE float Quotient(float a, float scale, float rcp) {
  const float y0 = a * rcp;
  return Fma(Fma(-scale, y0, a), rcp, y0);
}

// The INT code of a quotient q in the low byte: clamp to [lo, hi] (integer
// bounds; fmax first maps NaN to lo) and add 1.5 * 2^23 + offset, which
// rounds half to even like the CPU's (y + 1.5 * 2^23) - 1.5 * 2^23.
KVWIRE_HOST_DEVICE uint32_t IntCodeBits(float q, float lo, float hi,
                                        float offset) {
  return Bits(fminf(fmaxf(q, lo), hi) + (12582912.0f + offset));
}

// NF4: q's cell k = rint(16 q + 16) (one exactly rounded fma; k & 63 is the
// table index) holds at most one codebook midpoint (cells are 1/16 wide,
// midpoints at least 0.08 apart). Entry k: that midpoint (or +Inf) and the
// number of midpoints below the cell, [(2k - 33) / 32, (2k - 31) / 32] for k
// in [0, 32]; 33..47 hold all 15, 49..63 none. The code equals
// Nf4CodeOf(q) for every |q| < 2 - 1/32 (valid scales give |q| <= 1).
struct Nf4Cell {
  float inside;
  uint32_t below;
};

KVWIRE_HOST_DEVICE uint32_t Nf4CellIndex(float q) {
  return Bits(Fma(q, 16.0f, 12582928.0f)) & 63;
}

// Entry k (0..63) of the table for the 15 ascending midpoints `mid`.
KVWIRE_HOST_DEVICE Nf4Cell MakeNf4Cell(int k, const float* mid) {
  const float lo = static_cast<float>(2 * k - 33) * 0.03125f;
  const float hi = static_cast<float>(2 * k - 31) * 0.03125f;
  Nf4Cell c;
  c.inside = FromBits(0x7F800000u);
  c.below = k > 32 && k <= 48 ? 15 : 0;
  if (k <= 32) {
    for (int i = 0; i < 15; ++i) {
      if (mid[i] < lo) {
        ++c.below;
      } else if (mid[i] <= hi) {
        c.inside = mid[i];
      }
    }
  }
  return c;
}

KVWIRE_HOST_DEVICE uint32_t Nf4CodeFromCell(float q, Nf4Cell c) {
  return c.below + (c.inside < q ? 1u : 0u);
}

// number_formats.cc's EncodeFp8 of a finite q, without branches; `sign` is 0
// or 0x80 (the caller passes the numerator's: RN(x / s) has x's sign).
template <bool kE5m2>
KVWIRE_HOST_DEVICE uint32_t Fp8Code(float q, uint32_t sign) {
  constexpr int kM = kE5m2 ? 2 : 3;  // Mantissa bits.
  constexpr int kBias = kE5m2 ? 15 : 7;
  constexpr uint32_t kMax = kE5m2 ? 0x7B : 0x7E;
  const uint32_t mag = Bits(q) & 0x7FFFFFFFu;
  // Normal range: the re-biased fp32 bits rounded to kM mantissa bits,
  // nearest even (a carry bumps the exponent, as in EncodeFp8).
  const uint32_t lsb = (mag >> (23 - kM)) & 1;
  const uint32_t normal =
      (mag - ((127u - kBias) << 23) + ((1u << (22 - kM)) - 1) + lsb) >>
      (23 - kM);
  // Subnormal range: adding 2^(24 - bias - kM), whose ulp is the subnormal
  // quantum, rounds |q| to a count of quanta (nearest even).
  constexpr float kSub = static_cast<float>(1 << (24 - kBias - kM));
  const uint32_t sub = Bits(fabsf(q) + kSub) - Bits(kSub);
  const uint32_t code = mag < ((128u - kBias) << 23) ? sub : normal;
  return sign | (code < kMax ? code : kMax);
}

}  // namespace exact_quotient
}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_EXACT_QUOTIENT_H_
