// The division-free arithmetic of the CUDA codec kernels (exact_quotient.h),
// checked on the CPU against the CPU path's formulas: the quotient by an
// fp16 scale equals the correctly rounded division, and the INT, NF4 and FP8
// codes taken from it equal cpu_quantize.cc's and number_formats.cc's. No
// GPU needed.
#include "common/codec/exact_quotient.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/codec/cpu_quantize.h"
#include "common/codec/number_formats.h"

namespace kvwire {
namespace exact_quotient {
namespace {

// Every positive finite fp16 value: the possible scales.
std::vector<float> AllHalfScales() {
  std::vector<float> s;
  for (uint32_t h = 1; h < 0x7C00; ++h) {
    s.push_back(HalfBitsToFloat(static_cast<uint16_t>(h)));
  }
  return s;
}

float Nudge(float v, int ulps) {
  return FromBits(Bits(v) + static_cast<uint32_t>(ulps));
}

// Counts mismatches, keeping the first one's description.
struct Mismatches {
  int64_t checked = 0, count = 0;
  std::string first;
  void Check(bool equal, const char* what, float a, float s, double got,
             double want) {
    ++checked;
    if (equal || count++ > 0) return;
    char buf[160];
    std::snprintf(buf, sizeof(buf), "%s: a=%a s=%a got %a want %a", what, a, s,
                  got, want);
    first = buf;
  }
};

// Quotients that matter: valid blocks have |a/s| <= 2^8, and below 2^-90
// every code is that of 0.
bool InRange(float q) {
  return std::fabs(q) > 0x1p-90f && std::fabs(q) < 0x1p126f;
}

TEST(ExactQuotientTest, EqualsDivisionForBf16AndFp16Numerators) {
  Mismatches m;
  for (float s : AllHalfScales()) {
    const float r = 1.0f / s;
    for (uint32_t b = 1; b < 0x7F80; b += 53) {  // bf16 numerators.
      for (float a : {FromBits(b << 16), -FromBits(b << 16)}) {
        const float want = a / s;
        if (!InRange(want)) continue;
        const float got = Quotient(a, s, r);
        m.Check(Bits(got) == Bits(want), "bf16", a, s, got, want);
      }
    }
    for (uint32_t h = 1; h < 0x7C00; h += 47) {  // fp16 numerators.
      const float a = HalfBitsToFloat(static_cast<uint16_t>(h));
      const float want = a / s;
      if (!InRange(want)) continue;
      const float got = Quotient(a, s, r);
      m.Check(Bits(got) == Bits(want), "fp16", a, s, got, want);
    }
  }
  EXPECT_EQ(m.count, 0) << m.first;
  EXPECT_GT(m.checked, 20000000);
}

// fp32 numerators (x - zero, or fp32 inputs) whose quotients sit next to a
// rounding midpoint of the quotient, or anywhere.
TEST(ExactQuotientTest, EqualsDivisionForFp32Numerators) {
  std::mt19937_64 rng(1);
  Mismatches m;
  for (int i = 0; i < 4000000; ++i) {
    const float s = HalfBitsToFloat(static_cast<uint16_t>(1 + rng() % 0x7BFF));
    const float r = 1.0f / s;
    float a;
    if (i % 2 == 0) {
      // q0 * s for a float q0 in [2^-20, 2^9), nudged: a / s then lies
      // near q0, or near a midpoint next to it.
      const float q0 =
          std::ldexp(1.0f + static_cast<float>(rng() & 0x7FFFFF) * 0x1p-23f,
                     static_cast<int>(rng() % 29) - 20);
      a = Nudge(q0 * s, static_cast<int>(rng() % 9) - 4);
    } else {
      a = FromBits(static_cast<uint32_t>(rng()) & 0x7FFFFFFFu);
    }
    if (rng() & 1) a = -a;
    const float want = a / s;
    if (!std::isfinite(a) || !InRange(want)) continue;
    const float got = Quotient(a, s, r);
    m.Check(Bits(got) == Bits(want), "fp32", a, s, got, want);
  }
  EXPECT_EQ(m.count, 0) << m.first;
}

// cpu_quantize.cc's EncodeIntSpan of one value.
uint32_t CpuIntCode(float x, float scale, float zero, float lo, float hi,
                    float offset) {
  float y = (x - zero) / scale;
  y = (y + 12582912.0f) - 12582912.0f;
  y = y < lo ? lo : y;
  y = y > hi ? hi : y;
  return static_cast<uint8_t>(static_cast<int32_t>(y + offset));
}

// Values of a valid block (|x - zero| <= qmax * scale) next to every
// rounding half-integer, on it, and anywhere; fp32 and bf16.
TEST(ExactQuotientTest, IntCodesMatchTheCpu) {
  std::mt19937_64 rng(2);
  std::uniform_real_distribution<float> u01(0, 1);
  for (int bits : {8, 4, 2}) {
    for (bool asym : {false, true}) {
      const float hi = asym ? static_cast<float>((1 << bits) - 1)
                            : static_cast<float>((1 << (bits - 1)) - 1);
      const float lo = asym ? 0.0f : -hi;
      const float offset = asym ? 0.0f : static_cast<float>(1 << (bits - 1));
      Mismatches m;
      for (int i = 0; i < 1000000; ++i) {
        const float s =
            HalfBitsToFloat(static_cast<uint16_t>(1 + rng() % 0x7BFF));
        const float r = 1.0f / s;
        const float zero =
            asym && rng() % 2
                ? -HalfBitsToFloat(static_cast<uint16_t>(rng() % 0x7C00))
                : 0.0f;
        const float k = lo + static_cast<float>(rng() % (1 << bits)) + 0.5f;
        float x;
        switch (rng() % 4) {
          case 0:
            x = Nudge(k * s + zero, static_cast<int>(rng() % 9) - 4);
            break;
          case 1:
            x = k * s + zero;
            break;
          case 2:  // bf16, RNE.
            x = FromBits((Bits(k * s + zero) + 0x8000u) & 0xFFFF0000u);
            break;
          default:
            x = (lo + (hi - lo) * u01(rng)) * s + zero;
        }
        const float a = asym ? x - zero : x;
        if (!std::isfinite(x) || a < lo * s || a > hi * s) continue;
        const uint32_t got =
            IntCodeBits(Quotient(a, s, r), lo, hi, offset) & 0xFF;
        const uint32_t want = CpuIntCode(x, s, zero, lo, hi, offset);
        m.Check(got == want, asym ? "asym" : "sym", x, s, got, want);
      }
      EXPECT_EQ(m.count, 0) << "INT" << bits << " " << m.first;
      EXPECT_GT(m.checked, 500000);
    }
  }
}

std::vector<Nf4Cell> Nf4Table() {
  std::vector<Nf4Cell> t;
  for (int k = 0; k < 64; ++k)
    t.push_back(MakeNf4Cell(k, Nf4Midpoints().data()));
  return t;
}

// The cell table gives Nf4CodeOf(q) for every |q| < 2 - 1/32 (every 61st
// float here, and every float near a midpoint or a cell edge).
TEST(ExactQuotientTest, Nf4CellTableMatchesNf4CodeOf) {
  const std::vector<Nf4Cell> table = Nf4Table();
  Mismatches m;
  auto check = [&](float q) {
    const uint32_t got = Nf4CodeFromCell(q, table[Nf4CellIndex(q)]);
    m.Check(got == Nf4CodeOf(q), "nf4", q, 1, got, Nf4CodeOf(q));
  };
  for (uint32_t u = 0; u < 0x3FFC0000u; u += 61) {
    check(FromBits(u));
    check(FromBits(u | 0x80000000u));
  }
  std::vector<float> marks(Nf4Midpoints().begin(), Nf4Midpoints().end());
  for (int e = -33; e <= 33; e += 2) marks.push_back(e / 32.0f);
  for (float v : marks) {
    for (int d = -64; d <= 64; ++d) check(Nudge(v, d));
  }
  EXPECT_EQ(m.count, 0) << m.first;
}

// NF4 codes of quotients next to the midpoints, scaled: the kernels' path
// (Quotient, then the table) against Nf4CodeOf(x / s).
TEST(ExactQuotientTest, Nf4CodesMatchTheCpu) {
  const std::vector<Nf4Cell> table = Nf4Table();
  std::mt19937_64 rng(3);
  Mismatches m;
  for (int i = 0; i < 1000000; ++i) {
    const float s = HalfBitsToFloat(static_cast<uint16_t>(1 + rng() % 0x7BFF));
    const float mid = Nf4Midpoints()[rng() % 15];
    float x = Nudge(mid * s, static_cast<int>(rng() % 9) - 4);
    if (rng() & 1) x = FromBits((Bits(x) + 0x8000u) & 0xFFFF0000u);
    if (std::fabs(x) > s) continue;
    const float q = Quotient(x, s, 1.0f / s);
    const uint32_t got = Nf4CodeFromCell(q, table[Nf4CellIndex(q)]);
    m.Check(got == Nf4CodeOf(x / s), "nf4", x, s, got, Nf4CodeOf(x / s));
  }
  EXPECT_EQ(m.count, 0) << m.first;
}

template <bool kE5m2>
void CheckFp8(Mismatches* m, float v) {
  if (std::isnan(v)) return;
  const v1::Scheme scheme = kE5m2 ? v1::SCHEME_FP8_E5M2 : v1::SCHEME_FP8_E4M3;
  const uint32_t got = Fp8Code<kE5m2>(v, (Bits(v) >> 24) & 0x80);
  const uint32_t want = EncodeFp8(v, scheme);
  m->Check(got == want, kE5m2 ? "e5m2" : "e4m3", v, 1, got, want);
}

// The branch-free encoder equals EncodeFp8 on every non-NaN float (every
// 257th bit pattern here, and every float near an FP8 value or midpoint).
TEST(ExactQuotientTest, Fp8CodeMatchesEncodeFp8) {
  Mismatches m;
  for (uint64_t u = 0; u <= 0xFFFFFFFFu; u += 257) {
    CheckFp8<false>(&m, FromBits(static_cast<uint32_t>(u)));
    CheckFp8<true>(&m, FromBits(static_cast<uint32_t>(u)));
  }
  for (v1::Scheme scheme : {v1::SCHEME_FP8_E4M3, v1::SCHEME_FP8_E5M2}) {
    std::vector<float> values;
    for (int c = 0; c < 0x80; ++c) {
      const float v = DecodeFp8(static_cast<uint8_t>(c), scheme);
      if (std::isfinite(v)) values.push_back(v);
    }
    const size_t n = values.size();
    for (size_t i = 0; i + 1 < n; ++i) {
      values.push_back((values[i] + values[i + 1]) / 2);
    }
    for (float v : values) {
      for (int d = -64; d <= 64; ++d) {
        for (float w : {Nudge(v, d), -Nudge(v, d)}) {
          if (scheme == v1::SCHEME_FP8_E4M3) {
            CheckFp8<false>(&m, w);
          } else {
            CheckFp8<true>(&m, w);
          }
        }
      }
    }
  }
  EXPECT_EQ(m.count, 0) << m.first;
}

}  // namespace
}  // namespace exact_quotient
}  // namespace kvwire
