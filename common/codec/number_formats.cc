#include "common/codec/number_formats.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace kvwire {
namespace {

struct Fp8Format {
  int mantissa_bits;
  int exponent_bias;
  uint8_t max_finite_code;  // Largest positive finite code.
  bool ieee_specials;       // E5M2: exponent 31 holds inf and NaN.
};

constexpr Fp8Format kE4M3 = {3, 7, 0x7E, false};
constexpr Fp8Format kE5M2 = {2, 15, 0x7B, true};

// Non-FP8 schemes are treated as E4M3 by the scalar helpers; callers inside
// this file only pass FP8 schemes.
const Fp8Format& FormatOf(v1::Scheme scheme) {
  return scheme == v1::SCHEME_FP8_E5M2 ? kE5M2 : kE4M3;
}

// Shifts `value` right by `shift` (1..31) bits, rounding to nearest even.
uint32_t ShiftRightRoundEven(uint32_t value, int shift) {
  const uint32_t quotient = value >> shift;
  const uint32_t remainder = value & ((uint32_t{1} << shift) - 1);
  const uint32_t half = uint32_t{1} << (shift - 1);
  if (remainder > half || (remainder == half && (quotient & 1) != 0)) {
    return quotient + 1;
  }
  return quotient;
}

}  // namespace

float DecodeFp8(uint8_t code, v1::Scheme fp8_scheme) {
  const Fp8Format& f = FormatOf(fp8_scheme);
  const int exponent_bits = 7 - f.mantissa_bits;
  const bool negative = (code & 0x80) != 0;
  const int mantissa = code & ((1 << f.mantissa_bits) - 1);
  const int exponent = (code >> f.mantissa_bits) & ((1 << exponent_bits) - 1);
  const int max_exponent = (1 << exponent_bits) - 1;
  float magnitude;
  if (f.ieee_specials && exponent == max_exponent) {
    magnitude = mantissa == 0 ? std::numeric_limits<float>::infinity()
                              : std::numeric_limits<float>::quiet_NaN();
  } else if (!f.ieee_specials && exponent == max_exponent &&
             mantissa == (1 << f.mantissa_bits) - 1) {
    magnitude = std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa),
                           1 - f.exponent_bias - f.mantissa_bits);
  } else {
    magnitude =
        std::ldexp(static_cast<float>((1 << f.mantissa_bits) + mantissa),
                   exponent - f.exponent_bias - f.mantissa_bits);
  }
  return negative ? -magnitude : magnitude;
}

uint8_t EncodeFp8(float value, v1::Scheme fp8_scheme) {
  const Fp8Format& f = FormatOf(fp8_scheme);
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7F;                // NaN.
  if (magnitude == 0x7F800000u) return sign | f.max_finite_code;  // Inf.
  const int biased_exponent = static_cast<int>(magnitude >> 23);
  if (biased_exponent == 0) return sign;  // fp32 zero or subnormal.
  const int exponent = biased_exponent - 127;
  const uint32_t fraction = magnitude & 0x7FFFFFu;
  uint32_t code;
  if (exponent < 1 - f.exponent_bias) {
    // Below the smallest normal: count multiples of the subnormal quantum
    // 2^(1 - bias - mantissa_bits). A carry into the exponent yields the
    // smallest normal's code, which is correct.
    const uint32_t significand = fraction | 0x800000u;
    const int shift = 23 + (1 - f.exponent_bias - f.mantissa_bits) - exponent;
    code = shift > 25 ? 0 : ShiftRightRoundEven(significand, shift);
  } else {
    // Re-bias the exponent and drop mantissa bits; a carry out of the
    // mantissa bumps the exponent.
    const uint32_t rebiased =
        (static_cast<uint32_t>(exponent + f.exponent_bias) << 23) | fraction;
    code = ShiftRightRoundEven(rebiased, 23 - f.mantissa_bits);
  }
  if (code > f.max_finite_code) code = f.max_finite_code;
  return sign | static_cast<uint8_t>(code);
}

float Fp8MaxFinite(v1::Scheme fp8_scheme) {
  return DecodeFp8(Fp8MaxFiniteCode(fp8_scheme), fp8_scheme);
}

uint8_t Fp8MaxFiniteCode(v1::Scheme fp8_scheme) {
  return FormatOf(fp8_scheme).max_finite_code;
}

const std::array<float, 16>& Nf4Codebook() { return kNf4Codebook; }

std::vector<float> CodebookMidpoints(const SchemeInfo& row) {
  std::vector<float> mid;
  if (row.codebook == nullptr) return mid;
  const int size = 1 << row.bits;
  mid.reserve(size - 1);
  for (int i = 0; i + 1 < size; ++i) {
    mid.push_back((row.codebook[i] + row.codebook[i + 1]) * 0.5f);
  }
  return mid;
}

const std::array<float, 15>& Nf4Midpoints() {
  static const std::array<float, 15> kMidpoints = [] {
    const std::vector<float> mid =
        CodebookMidpoints(*FindScheme(v1::SCHEME_NF4));
    std::array<float, 15> out;
    std::copy(mid.begin(), mid.end(), out.begin());
    return out;
  }();
  return kMidpoints;
}

uint8_t Nf4CodeOf(float y) {
  const std::array<float, 15>& mid = Nf4Midpoints();
  return CodebookCodeOf(y, mid.data(), static_cast<int>(mid.size()));
}

}  // namespace kvwire
