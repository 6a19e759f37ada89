// Over 700 lines on purpose: every quantizer path (FP8 and NF4 scalars, bit
// packing, each scheme x granularity, scales, errors) against its scalar
// reference, in one suite with shared fixtures and helpers.
#include "common/codec/quantizer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using v1::Granularity;
using v1::Scheme;

constexpr Scheme kAllSchemes[] = {
    v1::SCHEME_BF16, v1::SCHEME_FP16, v1::SCHEME_FP8_E4M3, v1::SCHEME_FP8_E5M2,
    v1::SCHEME_INT8, v1::SCHEME_INT4, v1::SCHEME_INT2,     v1::SCHEME_NF4};
constexpr Granularity kAllGranularities[] = {
    v1::GRANULARITY_PER_LAYER, v1::GRANULARITY_PER_HEAD,
    v1::GRANULARITY_PER_TOKEN, v1::GRANULARITY_PER_CHANNEL,
    v1::GRANULARITY_PER_GROUP};

// Odd sizes so that 4-bit and 2-bit streams end in a partial byte.
constexpr int64_t kHeads = 3;
constexpr int64_t kTokens = 37;
constexpr int64_t kHeadDim = 45;
constexpr int kGroupSize = 9;

QuantParams MakeParams(Scheme scheme, Granularity granularity,
                       bool asymmetric = false, int group_size = kGroupSize) {
  QuantParams p;
  p.scheme = scheme;
  p.granularity = granularity;
  p.asymmetric = asymmetric;
  p.group_size = group_size;
  return p;
}

at::Tensor RandomBlock(int64_t h, int64_t t, int64_t d, uint64_t seed,
                       double stddev = 3.0, double offset = 0.0) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn({h, t, d}, gen, at::TensorOptions().dtype(at::kFloat))
      .mul_(stddev)
      .add_(offset);
}

std::vector<float> ToFloatVector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU).to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(),
                            c.data_ptr<float>() + c.numel());
}

std::vector<uint8_t> ToBytes(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU).contiguous();
  return std::vector<uint8_t>(c.data_ptr<uint8_t>(),
                              c.data_ptr<uint8_t>() + c.numel());
}

// Index into the flattened scale tensor of element (h, t, d), written out
// from the granularity definitions independently of the implementation.
int64_t ScaleIndex(Granularity g, int64_t h, int64_t t, int64_t d,
                   int64_t tokens, int64_t head_dim, int group_size) {
  switch (g) {
    case v1::GRANULARITY_PER_LAYER:
      return 0;
    case v1::GRANULARITY_PER_HEAD:
      return h;
    case v1::GRANULARITY_PER_TOKEN:
      return h * tokens + t;
    case v1::GRANULARITY_PER_CHANNEL:
      return h * head_dim + d;
    default:
      return (h * tokens + t) * (head_dim / group_size) + d / group_size;
  }
}

std::vector<int64_t> ScaleShape(Granularity g, int64_t h, int64_t t, int64_t d,
                                int group_size) {
  switch (g) {
    case v1::GRANULARITY_PER_LAYER:
      return {1};
    case v1::GRANULARITY_PER_HEAD:
      return {h};
    case v1::GRANULARITY_PER_TOKEN:
      return {h, t};
    case v1::GRANULARITY_PER_CHANNEL:
      return {h, d};
    default:
      return {h, t, d / group_size};
  }
}

// The fp16 value just below / above a finite fp16 value (by bit pattern;
// only used for positive values and for zero points of either sign).
float HalfBits(uint16_t bits) {
  return at::tensor({static_cast<int16_t>(bits)}, at::kShort)
      .view(at::kHalf)
      .to(at::kFloat)
      .item<float>();
}
uint16_t BitsOfHalf(float value_exactly_half) {
  return static_cast<uint16_t>(at::tensor({value_exactly_half}, at::kFloat)
                                   .to(at::kHalf)
                                   .view(at::kShort)
                                   .item<int16_t>());
}
float NextHalfDown(float h) {
  const uint16_t b = BitsOfHalf(h);
  if (b == 0) return HalfBits(0x8001);
  return (b & 0x8000) ? HalfBits(b + 1) : HalfBits(b - 1);
}
float NextHalfUp(float h) {
  const uint16_t b = BitsOfHalf(h);
  if (b == 0x8000) return HalfBits(0x0001);
  return (b & 0x8000) ? HalfBits(b - 1) : HalfBits(b + 1);
}

// Reference FP8 value from the OCP definition: sign, exponent, mantissa.
double OcpFp8Value(uint8_t code, int exponent_bits, int mantissa_bits, int bias,
                   bool ieee_specials) {
  const int s = code >> 7;
  const int e = (code >> mantissa_bits) & ((1 << exponent_bits) - 1);
  const int m = code & ((1 << mantissa_bits) - 1);
  const int e_max = (1 << exponent_bits) - 1;
  double mag;
  if (ieee_specials && e == e_max) {
    mag = m == 0 ? std::numeric_limits<double>::infinity()
                 : std::numeric_limits<double>::quiet_NaN();
  } else if (!ieee_specials && e == e_max && m == (1 << mantissa_bits) - 1) {
    mag = std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    mag = std::pow(2.0, 1 - bias) * (m / std::pow(2.0, mantissa_bits));
  } else {
    mag = std::pow(2.0, e - bias) * (1.0 + m / std::pow(2.0, mantissa_bits));
  }
  return s ? -mag : mag;
}

double OcpValue(uint8_t code, Scheme scheme) {
  return scheme == v1::SCHEME_FP8_E4M3 ? OcpFp8Value(code, 4, 3, 7, false)
                                       : OcpFp8Value(code, 5, 2, 15, true);
}

// Brute-force FP8 encoder: nearest finite value, ties to the even code,
// saturating.
uint8_t BruteForceFp8(float v, Scheme scheme) {
  const uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
  const double a = std::fabs(static_cast<double>(v));
  if (a >= Fp8MaxFinite(scheme)) {
    return sign | (scheme == v1::SCHEME_FP8_E4M3 ? 0x7E : 0x7B);
  }
  int best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (int c = 0; c < 128; ++c) {
    const double val = OcpValue(static_cast<uint8_t>(c), scheme);
    if (!std::isfinite(val)) continue;
    const double d = std::fabs(a - val);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best_d = d;
      best = c;
    }
  }
  return sign | static_cast<uint8_t>(best);
}

// Scalar reference bit packer.
std::vector<uint8_t> ScalarPack(const std::vector<uint8_t>& codes, int bits) {
  std::vector<uint8_t> out((codes.size() * bits + 7) / 8, 0);
  const size_t per_byte = 8 / bits;
  for (size_t i = 0; i < codes.size(); ++i) {
    out[i / per_byte] |=
        static_cast<uint8_t>(codes[i] << ((i % per_byte) * bits));
  }
  return out;
}

// ------------------------------------------------------------ FP8 scalars

TEST(QuantizerTest, DecodeFp8MatchesOcpDefinitionForAllCodes) {
  for (Scheme s : {v1::SCHEME_FP8_E4M3, v1::SCHEME_FP8_E5M2}) {
    for (int c = 0; c < 256; ++c) {
      const double expected = OcpValue(static_cast<uint8_t>(c), s);
      const float got = DecodeFp8(static_cast<uint8_t>(c), s);
      if (std::isnan(expected)) {
        EXPECT_TRUE(std::isnan(got)) << SchemeName(s) << " code " << c;
      } else {
        EXPECT_EQ(static_cast<double>(got), expected)
            << SchemeName(s) << " code " << c;
        EXPECT_EQ(std::signbit(got), (c & 0x80) != 0) << c;
      }
    }
  }
  // Spot checks of the specials and extremes.
  EXPECT_TRUE(std::isnan(DecodeFp8(0x7F, v1::SCHEME_FP8_E4M3)));
  EXPECT_TRUE(std::isnan(DecodeFp8(0xFF, v1::SCHEME_FP8_E4M3)));
  EXPECT_EQ(DecodeFp8(0x7E, v1::SCHEME_FP8_E4M3), 448.0f);
  EXPECT_EQ(DecodeFp8(0x01, v1::SCHEME_FP8_E4M3), std::ldexp(1.0f, -9));
  EXPECT_EQ(DecodeFp8(0x7C, v1::SCHEME_FP8_E5M2),
            std::numeric_limits<float>::infinity());
  EXPECT_EQ(DecodeFp8(0xFC, v1::SCHEME_FP8_E5M2),
            -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(DecodeFp8(0x7D, v1::SCHEME_FP8_E5M2)));
  EXPECT_EQ(DecodeFp8(0x7B, v1::SCHEME_FP8_E5M2), 57344.0f);
  EXPECT_EQ(DecodeFp8(0x01, v1::SCHEME_FP8_E5M2), std::ldexp(1.0f, -16));
  EXPECT_EQ(Fp8MaxFinite(v1::SCHEME_FP8_E4M3), 448.0f);
  EXPECT_EQ(Fp8MaxFinite(v1::SCHEME_FP8_E5M2), 57344.0f);
}

TEST(QuantizerTest, EncodeFp8InvertsDecodeForEveryFiniteCode) {
  for (Scheme s : {v1::SCHEME_FP8_E4M3, v1::SCHEME_FP8_E5M2}) {
    for (int c = 0; c < 256; ++c) {
      const float v = DecodeFp8(static_cast<uint8_t>(c), s);
      if (!std::isfinite(v)) continue;
      EXPECT_EQ(EncodeFp8(v, s), c) << SchemeName(s) << " value " << v;
    }
  }
}

TEST(QuantizerTest, EncodeFp8RoundsToNearestEvenAndSaturates) {
  std::mt19937 rng(7);
  for (Scheme s : {v1::SCHEME_FP8_E4M3, v1::SCHEME_FP8_E5M2}) {
    const float max = Fp8MaxFinite(s);
    std::vector<float> values = {0.0f,       -0.0f,  1e-30f, -1e-30f,
                                 1e-45f,     max,    -max,   max * 1.03f,
                                 max * 4.0f, -1e30f, 3.4e38f};
    // Every midpoint between adjacent finite codes (exact in fp32) and its
    // neighbours.
    for (int c = 0; c < 127; ++c) {
      const float a = DecodeFp8(static_cast<uint8_t>(c), s);
      const float b = DecodeFp8(static_cast<uint8_t>(c + 1), s);
      if (!std::isfinite(a) || !std::isfinite(b)) continue;
      const float mid = (a + b) / 2;
      for (float v :
           {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
        values.push_back(v);
        values.push_back(-v);
      }
    }
    std::uniform_real_distribution<float> exponent(-24.0f, 18.0f);
    for (int i = 0; i < 20000; ++i) {
      const float v = std::exp2(exponent(rng)) * (i % 2 ? -1.0f : 1.0f);
      values.push_back(v);
    }
    for (float v : values) {
      EXPECT_EQ(EncodeFp8(v, s), BruteForceFp8(v, s))
          << SchemeName(s) << " value " << v;
    }
    const uint8_t max_code = s == v1::SCHEME_FP8_E4M3 ? 0x7E : 0x7B;
    EXPECT_EQ(EncodeFp8(std::numeric_limits<float>::infinity(), s), max_code);
    EXPECT_EQ(EncodeFp8(-std::numeric_limits<float>::infinity(), s),
              0x80 | max_code);
    EXPECT_TRUE(std::isnan(
        DecodeFp8(EncodeFp8(std::numeric_limits<float>::quiet_NaN(), s), s)));
  }
  // Ties: 1.0625 is halfway between 1.0 (0x38, even) and 1.125 (0x39).
  EXPECT_EQ(EncodeFp8(1.0625f, v1::SCHEME_FP8_E4M3), 0x38);
  // 1.1875 is halfway between 1.125 (0x39) and 1.25 (0x3A, even).
  EXPECT_EQ(EncodeFp8(1.1875f, v1::SCHEME_FP8_E4M3), 0x3A);
  EXPECT_EQ(EncodeFp8(-0.0f, v1::SCHEME_FP8_E4M3), 0x80);
}

// The ATen encoder (bucketize) against the scalar one. A block whose absmax
// is exactly the format's max gets scale 1, so the packed bytes are the FP8
// codes of the inputs themselves.
TEST(QuantizerTest, TensorFp8EncoderMatchesScalarEncoderWhenScaleIsOne) {
  std::mt19937 rng(11);
  for (Scheme s : {v1::SCHEME_FP8_E4M3, v1::SCHEME_FP8_E5M2}) {
    const float max = Fp8MaxFinite(s);
    std::vector<float> values = {max, -max, 0.0f, -0.0f, 1e-30f, -1e-30f};
    for (int c = 0; c < 127; ++c) {
      const float a = DecodeFp8(static_cast<uint8_t>(c), s);
      const float b = DecodeFp8(static_cast<uint8_t>(c + 1), s);
      if (!std::isfinite(b)) break;
      const float mid = (a + b) / 2;
      for (float v :
           {a, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
        values.push_back(v);
        values.push_back(-v);
      }
    }
    std::uniform_real_distribution<float> exponent(-22.0f,
                                                   std::log2(max) - 0.01f);
    for (int i = 0; i < 50000; ++i) {
      values.push_back(std::exp2(exponent(rng)) * (i % 2 ? -1.0f : 1.0f));
    }
    const int64_t n = static_cast<int64_t>(values.size());
    const at::Tensor x =
        at::from_blob(values.data(), {1, 1, n}, at::kFloat).clone();
    auto q = Quantize(x, MakeParams(s, v1::GRANULARITY_PER_LAYER));
    ASSERT_TRUE(q.ok()) << q.status();
    ASSERT_EQ(q->scales.to(at::kFloat).item<float>(), 1.0f);
    const std::vector<uint8_t> codes = ToBytes(q->packed);
    ASSERT_EQ(codes.size(), values.size());
    int mismatches = 0;
    for (size_t i = 0; i < values.size() && mismatches < 10; ++i) {
      if (codes[i] != EncodeFp8(values[i], s)) {
        ++mismatches;
        ADD_FAILURE() << SchemeName(s) << " value " << values[i] << " tensor "
                      << int{codes[i]} << " scalar "
                      << int{EncodeFp8(values[i], s)};
      }
    }
  }
}

// ------------------------------------------------------------ NF4

TEST(QuantizerTest, Nf4CodebookIsTheQloraCodebook) {
  const std::array<float, 16> expected = {-1.0f,
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
                                          1.0f};
  EXPECT_EQ(Nf4Codebook(), expected);
  EXPECT_TRUE(std::is_sorted(Nf4Codebook().begin(), Nf4Codebook().end()));
}

TEST(QuantizerTest, Nf4PicksNearestValueWithTiesToLowerIndexWhenScaleIsOne) {
  const auto& cb = Nf4Codebook();
  std::vector<float> values = {1.0f};
  std::vector<int> expected = {15};
  for (int i = 0; i < 16; ++i) {
    values.push_back(cb[i]);
    expected.push_back(i);
  }
  for (int i = 0; i < 15; ++i) {
    const float mid = (cb[i] + cb[i + 1]) * 0.5f;
    values.push_back(mid);  // A tie: the lower index.
    expected.push_back(i);
    values.push_back(std::nextafter(mid, 2.0f));
    expected.push_back(i + 1);
    values.push_back(std::nextafter(mid, -2.0f));
    expected.push_back(i);
  }
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (int i = 0; i < 5000; ++i) {
    const float v = uni(rng);
    values.push_back(v);
    int best = 0;
    for (int j = 1; j < 16; ++j) {
      if (std::fabs(static_cast<double>(v) - cb[j]) <
          std::fabs(static_cast<double>(v) - cb[best])) {
        best = j;
      }
    }
    expected.push_back(best);
  }
  const int64_t n = static_cast<int64_t>(values.size());
  const at::Tensor x =
      at::from_blob(values.data(), {1, 1, n}, at::kFloat).clone();
  auto q = Quantize(x, MakeParams(v1::SCHEME_NF4, v1::GRANULARITY_PER_LAYER));
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->scales.to(at::kFloat).item<float>(), 1.0f);
  const std::vector<uint8_t> codes = ToBytes(UnpackCodes(q->packed, 4, n));
  ASSERT_EQ(codes.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(int{codes[i]}, expected[i]) << "value " << values[i];
  }
}

// ------------------------------------------------------------ bit packing

TEST(QuantizerTest, PackCodesMatchesScalarPackerOnOddLengths) {
  std::mt19937 rng(5);
  for (int bits : {8, 4, 2}) {
    for (int64_t n : {0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 1001, 4099}) {
      std::vector<uint8_t> codes(n);
      for (auto& c : codes) c = static_cast<uint8_t>(rng() % (1u << bits));
      const at::Tensor t = at::from_blob(codes.data(), {n}, at::kByte).clone();
      const at::Tensor packed = PackCodes(t, bits);
      ASSERT_TRUE(packed.defined());
      EXPECT_EQ(packed.scalar_type(), at::kByte);
      EXPECT_EQ(ToBytes(packed), ScalarPack(codes, bits))
          << "bits " << bits << " n " << n;
      const at::Tensor unpacked = UnpackCodes(packed, bits, n);
      ASSERT_TRUE(unpacked.defined());
      EXPECT_EQ(ToBytes(unpacked), codes) << "bits " << bits << " n " << n;
    }
  }
}

TEST(QuantizerTest, PackCodesPutsFirstElementInLowBits) {
  std::vector<uint8_t> four = {0x1, 0x2, 0x3};
  EXPECT_EQ(ToBytes(PackCodes(at::from_blob(four.data(), {3}, at::kByte), 4)),
            (std::vector<uint8_t>{0x21, 0x03}));
  std::vector<uint8_t> two = {1, 2, 3, 0, 1};
  EXPECT_EQ(ToBytes(PackCodes(at::from_blob(two.data(), {5}, at::kByte), 2)),
            (std::vector<uint8_t>{0x39, 0x01}));
}

TEST(QuantizerTest, PackAndUnpackReturnUndefinedWhenArgumentsAreInvalid) {
  const at::Tensor codes = at::zeros({6}, at::kByte);
  EXPECT_FALSE(PackCodes(codes, 3).defined());
  EXPECT_FALSE(PackCodes(codes.to(at::kInt), 4).defined());
  EXPECT_FALSE(PackCodes(at::Tensor(), 4).defined());
  EXPECT_FALSE(UnpackCodes(at::zeros({3}, at::kByte), 4, 7).defined());
  EXPECT_FALSE(UnpackCodes(at::zeros({3}, at::kByte), 4, 4).defined());
  EXPECT_FALSE(UnpackCodes(at::zeros({3}, at::kByte), 4, -1).defined());
  EXPECT_TRUE(UnpackCodes(at::zeros({3}, at::kByte), 4, 5).defined());
}

// ------------------------------------------------------------ round trips

struct Case {
  Scheme scheme;
  Granularity granularity;
  bool asymmetric;
  at::ScalarType dtype;
};

std::string CaseName(const Case& c) {
  std::string dtype = c.dtype == at::kBFloat16 ? "bf16"
                      : c.dtype == at::kHalf   ? "fp16"
                                               : "fp32";
  return absl::StrCat(
      SchemeName(c.scheme), "_",
      IsPassthrough(c.scheme) ? "none" : GranularityName(c.granularity),
      c.asymmetric ? "_asym" : "", "_", dtype);
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kFloat}) {
    for (Scheme s : kAllSchemes) {
      for (Granularity g : kAllGranularities) {
        if (IsPassthrough(s) && g != v1::GRANULARITY_PER_HEAD) continue;
        cases.push_back({s, g, false, dtype});
        if (IsIntScheme(s)) cases.push_back({s, g, true, dtype});
      }
    }
  }
  return cases;
}

class QuantizerRoundTripTest : public testing::TestWithParam<Case> {
 protected:
  QuantParams Params() const {
    return MakeParams(GetParam().scheme, GetParam().granularity,
                      GetParam().asymmetric);
  }
  // A block in the case's dtype; offset so asymmetric ranges are lopsided.
  at::Tensor Input(uint64_t seed = 1) const {
    return RandomBlock(kHeads, kTokens, kHeadDim, seed, 3.0, 0.7)
        .to(GetParam().dtype);
  }
};

TEST_P(QuantizerRoundTripTest, KeepsShapeAndDtypeWhenRoundTripped) {
  const Case& c = GetParam();
  const at::Tensor x = Input();
  auto q = Quantize(x, Params());
  ASSERT_TRUE(q.ok()) << q.status();
  const int64_t n = kHeads * kTokens * kHeadDim;
  EXPECT_EQ(q->packed.scalar_type(), at::kByte);
  EXPECT_EQ(q->packed.dim(), 1);
  EXPECT_EQ(q->packed.numel(), PackedValueBytes(c.scheme, n));
  EXPECT_EQ(q->packed.device(), x.device());
  if (HasScales(c.scheme)) {
    ASSERT_TRUE(q->scales.defined());
    EXPECT_EQ(q->scales.scalar_type(), at::kHalf);
    EXPECT_EQ(q->scales.sizes().vec(),
              ScaleShape(c.granularity, kHeads, kTokens, kHeadDim, kGroupSize));
    EXPECT_EQ(q->scales.numel(),
              ScaleCount(Params(), kHeads, kTokens, kHeadDim));
  } else {
    EXPECT_FALSE(q->scales.defined());
  }
  EXPECT_EQ(q->zero_points.defined(), HasZeroPoints(Params()));
  if (q->zero_points.defined()) {
    EXPECT_EQ(q->zero_points.scalar_type(), at::kHalf);
    EXPECT_EQ(q->zero_points.sizes(), q->scales.sizes());
  }
  for (at::ScalarType out : {c.dtype, at::kFloat, at::kBFloat16}) {
    auto y = Dequantize(*q, Params(), kHeads, kTokens, kHeadDim, out);
    ASSERT_TRUE(y.ok()) << y.status();
    EXPECT_EQ(y->sizes(), x.sizes());
    EXPECT_EQ(y->scalar_type(), out);
  }
}

TEST_P(QuantizerRoundTripTest, StaysWithinTheSchemeErrorBound) {
  const Case& c = GetParam();
  const at::Tensor x = Input(2);
  auto q = Quantize(x, Params());
  ASSERT_TRUE(q.ok()) << q.status();
  auto y = Dequantize(*q, Params(), kHeads, kTokens, kHeadDim, at::kFloat);
  ASSERT_TRUE(y.ok()) << y.status();
  const std::vector<float> xs = ToFloatVector(x);
  const std::vector<float> ys = ToFloatVector(*y);

  if (IsPassthrough(c.scheme)) {
    const at::ScalarType wire =
        c.scheme == v1::SCHEME_BF16 ? at::kBFloat16 : at::kHalf;
    EXPECT_TRUE(at::equal(*y, x.to(wire).to(at::kFloat)));
    if (wire == c.dtype) {
      auto same = Dequantize(*q, Params(), kHeads, kTokens, kHeadDim, c.dtype);
      ASSERT_TRUE(same.ok());
      EXPECT_TRUE(at::equal(*same, x));
    }
    return;
  }

  const std::vector<float> scales = ToFloatVector(q->scales);
  const std::vector<float> zeros = q->zero_points.defined()
                                       ? ToFloatVector(q->zero_points)
                                       : std::vector<float>();
  // Per-scale min and max of the input, computed here from the definitions.
  std::vector<double> lo(scales.size(), 0.0), hi(scales.size(), 0.0);
  std::vector<bool> seen(scales.size(), false);
  auto index = [&](int64_t h, int64_t t, int64_t d) {
    return ScaleIndex(c.granularity, h, t, d, kTokens, kHeadDim, kGroupSize);
  };
  for (int64_t h = 0; h < kHeads; ++h) {
    for (int64_t t = 0; t < kTokens; ++t) {
      for (int64_t d = 0; d < kHeadDim; ++d) {
        const int64_t k = index(h, t, d);
        const double v = xs[(h * kTokens + t) * kHeadDim + d];
        lo[k] = seen[k] ? std::min(lo[k], v) : v;
        hi[k] = seen[k] ? std::max(hi[k], v) : v;
        seen[k] = true;
      }
    }
  }
  // Each scale is the smallest fp16 at or above the fp32 scale formula.
  const int bits = BitsPerValue(c.scheme);
  for (size_t k = 0; k < scales.size(); ++k) {
    float target;
    if (c.asymmetric) {
      EXPECT_LE(zeros[k], lo[k]) << "zero point above the minimum, k=" << k;
      EXPECT_GT(NextHalfUp(zeros[k]), lo[k]) << "zero point not tight, k=" << k;
      target = static_cast<float>(hi[k] - zeros[k]) / ((1 << bits) - 1);
    } else {
      const float absmax =
          static_cast<float>(std::max(std::fabs(lo[k]), std::fabs(hi[k])));
      const float qmax = IsFp8Scheme(c.scheme) ? Fp8MaxFinite(c.scheme)
                         : c.scheme == v1::SCHEME_NF4
                             ? 1.0f
                             : static_cast<float>((1 << (bits - 1)) - 1);
      target = absmax / qmax;
    }
    target = std::max(target, 1e-6f);
    EXPECT_GE(scales[k], target) << "k=" << k;
    EXPECT_LT(NextHalfDown(scales[k]), target) << "k=" << k;
  }

  int failures = 0;
  const auto& cb = Nf4Codebook();
  for (int64_t h = 0; h < kHeads && failures < 5; ++h) {
    for (int64_t t = 0; t < kTokens && failures < 5; ++t) {
      for (int64_t d = 0; d < kHeadDim && failures < 5; ++d) {
        const int64_t i = (h * kTokens + t) * kHeadDim + d;
        const int64_t k = index(h, t, d);
        const double xv = xs[i], yv = ys[i], s = scales[k];
        const double err = std::fabs(xv - yv);
        double bound;
        if (IsIntScheme(c.scheme)) {
          // Half a step, plus fp32 rounding of the arithmetic.
          const double z = c.asymmetric ? zeros[k] : 0.0;
          bound = 0.5 * s + (std::fabs(xv) + std::fabs(z)) * std::ldexp(1, -21);
          if (!c.asymmetric) {
            const int qmax = (1 << (bits - 1)) - 1;
            EXPECT_LE(std::fabs(xv), s * qmax * (1 + std::ldexp(1, -22)));
          }
        } else if (IsFp8Scheme(c.scheme)) {
          const int m = c.scheme == v1::SCHEME_FP8_E4M3 ? 3 : 2;
          const int bias = c.scheme == v1::SCHEME_FP8_E4M3 ? 7 : 15;
          const double rel = std::ldexp(1, -(m + 1));
          const double sub_half_step = std::ldexp(1, 1 - bias - m) / 2;
          bound = s * std::max(rel * std::fabs(xv / s), sub_half_step) +
                  std::fabs(xv) * std::ldexp(1, -21);
        } else {  // NF4: x^ is codebook * scale for the nearest entry.
          const double yn = xv / s;
          int best = 0;
          for (int j = 1; j < 16; ++j) {
            if (std::fabs(yn - cb[j]) < std::fabs(yn - cb[best])) best = j;
          }
          bool on_codebook = false;
          int got = -1;
          for (int j = 0; j < 16; ++j) {
            if (static_cast<float>(cb[j] * static_cast<float>(s)) ==
                static_cast<float>(yv)) {
              on_codebook = true;
              got = j;
            }
          }
          EXPECT_TRUE(on_codebook) << "x^=" << yv << " s=" << s;
          if (got >= 0) {
            EXPECT_LE(std::fabs(yn - cb[got]), std::fabs(yn - cb[best]) + 1e-6)
                << "x=" << xv << " s=" << s;
          }
          bound = s * 0.5 * (cb[1] - cb[0]) + 1e-6;
        }
        if (!(err <= bound)) {
          ++failures;
          ADD_FAILURE() << "element " << i << " x=" << xv << " x^=" << yv
                        << " scale=" << s << " err=" << err
                        << " bound=" << bound;
        }
      }
    }
  }
}

TEST_P(QuantizerRoundTripTest, EncodesAnAllZeroBlockWithTheEpsilonScale) {
  const Case& c = GetParam();
  const at::Tensor x = at::zeros({kHeads, kTokens, kHeadDim}, c.dtype);
  auto q = Quantize(x, Params());
  ASSERT_TRUE(q.ok()) << q.status();
  if (HasScales(c.scheme)) {
    const at::Tensor s = q->scales.to(at::kFloat);
    EXPECT_TRUE(s.ge(1e-6f).all().item<bool>());
    EXPECT_TRUE(s.lt(1.1e-6f).all().item<bool>());
  }
  auto y = Dequantize(*q, Params(), kHeads, kTokens, kHeadDim, c.dtype);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_TRUE(at::equal(*y, x));
}

TEST_P(QuantizerRoundTripTest, RejectsNonFiniteInputs) {
  const Case& c = GetParam();
  for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (int64_t pos :
         {int64_t{0}, int64_t{77}, kHeads * kTokens * kHeadDim - 1}) {
      at::Tensor x = Input(3).view({-1}).clone();
      x[pos] = bad;
      auto q = Quantize(x.view({kHeads, kTokens, kHeadDim}), Params());
      EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument)
          << CaseName(c) << " value " << bad << " at " << pos;
    }
  }
}

TEST_P(QuantizerRoundTripTest, RejectsCorruptedSizesWhenDequantizing) {
  const Case& c = GetParam();
  auto q = Quantize(Input(), Params());
  ASSERT_TRUE(q.ok()) << q.status();
  auto expect_invalid = [&](const QuantizedTensor& bad, const char* what) {
    auto y = Dequantize(bad, Params(), kHeads, kTokens, kHeadDim, c.dtype);
    EXPECT_EQ(y.status().code(), absl::StatusCode::kInvalidArgument)
        << CaseName(c) << ": " << what << " -> " << y.status();
  };
  QuantizedTensor bad = *q;
  bad.packed = q->packed.narrow(0, 0, q->packed.numel() - 1);
  expect_invalid(bad, "short packed");
  bad.packed = at::cat({q->packed, at::zeros({1}, at::kByte)});
  expect_invalid(bad, "long packed");
  bad.packed = q->packed.to(at::kInt);
  expect_invalid(bad, "int packed");
  bad.packed = at::Tensor();
  expect_invalid(bad, "undefined packed");
  if (HasScales(c.scheme)) {
    bad = *q;
    bad.scales = at::cat({q->scales.view({-1}), q->scales.view({-1})});
    expect_invalid(bad, "too many scales");
    bad.scales = q->scales.view({-1}).narrow(0, 0, q->scales.numel() - 1);
    expect_invalid(bad, "too few scales");
    bad.scales = q->scales.to(at::kFloat);
    expect_invalid(bad, "fp32 scales");
    bad.scales = at::Tensor();
    expect_invalid(bad, "missing scales");
    bad.scales = q->scales.clone();
    bad.scales.view({-1})[0] = std::numeric_limits<float>::quiet_NaN();
    expect_invalid(bad, "NaN scale");
  } else {
    bad = *q;
    bad.scales = at::ones({kHeads}, at::kHalf);
    expect_invalid(bad, "unexpected scales");
  }
  if (HasZeroPoints(Params())) {
    bad = *q;
    bad.zero_points = at::Tensor();
    expect_invalid(bad, "missing zero points");
    bad.zero_points = q->zero_points.view({-1}).narrow(0, 0, 1);
    if (q->zero_points.numel() != 1) expect_invalid(bad, "few zero points");
  }
  // Dimensions that do not match the packed size.
  auto y = Dequantize(*q, Params(), kHeads, kTokens + 1, kHeadDim, c.dtype);
  EXPECT_EQ(y.status().code(), absl::StatusCode::kInvalidArgument);
  y = Dequantize(*q, Params(), kHeads, kTokens, kHeadDim, at::kInt);
  EXPECT_EQ(y.status().code(), absl::StatusCode::kInvalidArgument);
}

// CUDA tensors give bit-identical bytes, scales and values to CPU ones.
TEST_P(QuantizerRoundTripTest, MatchesCpuBitForBitOnCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const Case& c = GetParam();
  const at::Tensor x = Input(4);
  auto cpu = Quantize(x, Params());
  auto gpu = Quantize(x.to(at::kCUDA), Params());
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_TRUE(gpu->packed.is_cuda());
  EXPECT_EQ(ToBytes(gpu->packed), ToBytes(cpu->packed));
  if (cpu->scales.defined()) {
    EXPECT_TRUE(at::equal(gpu->scales.cpu(), cpu->scales));
  }
  if (cpu->zero_points.defined()) {
    EXPECT_TRUE(at::equal(gpu->zero_points.cpu(), cpu->zero_points));
  }
  auto y_cpu = Dequantize(*cpu, Params(), kHeads, kTokens, kHeadDim, c.dtype);
  auto y_gpu = Dequantize(*gpu, Params(), kHeads, kTokens, kHeadDim, c.dtype);
  ASSERT_TRUE(y_cpu.ok()) << y_cpu.status();
  ASSERT_TRUE(y_gpu.ok()) << y_gpu.status();
  EXPECT_TRUE(y_gpu->is_cuda());
  EXPECT_TRUE(at::equal(y_gpu->cpu(), *y_cpu));
  // Decoding CPU-made bytes on CUDA (mixed devices: scales on CPU).
  QuantizedTensor mixed = *cpu;
  mixed.packed = cpu->packed.to(at::kCUDA);
  auto y_mixed =
      Dequantize(mixed, Params(), kHeads, kTokens, kHeadDim, c.dtype);
  ASSERT_TRUE(y_mixed.ok()) << y_mixed.status();
  EXPECT_TRUE(at::equal(y_mixed->cpu(), *y_cpu));
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, QuantizerRoundTripTest,
                         testing::ValuesIn(AllCases()),
                         [](const testing::TestParamInfo<Case>& info) {
                           return CaseName(info.param);
                         });

// ------------------------------------------------------------ edge cases

TEST(QuantizerTest, RejectsGroupSizeThatDoesNotDivideHeadDim) {
  const at::Tensor x = RandomBlock(2, 4, 64, 1);
  for (int g : {24, 0, -8, 128}) {
    auto q = Quantize(
        x, MakeParams(v1::SCHEME_INT4, v1::GRANULARITY_PER_GROUP, false, g));
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << g;
  }
  EXPECT_TRUE(Quantize(x, MakeParams(v1::SCHEME_INT4, v1::GRANULARITY_PER_GROUP,
                                     false, 16))
                  .ok());
}

TEST(QuantizerTest, RejectsBadShapesAndDtypes) {
  const QuantParams p = MakeParams(v1::SCHEME_INT8, v1::GRANULARITY_PER_HEAD);
  EXPECT_EQ(Quantize(at::Tensor(), p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(at::zeros({4, 8}), p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(at::zeros({1, 4, 8, 2}), p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(at::zeros({2, 4, 8}, at::kInt), p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(at::zeros({2, 4, 8}, at::kDouble), p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(at::zeros({0, 4, 8}), p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(at::zeros({2, 4, 8}), MakeParams(v1::SCHEME_UNSPECIFIED,
                                                      v1::GRANULARITY_PER_HEAD))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(at::zeros({2, 4, 8}),
                     MakeParams(v1::SCHEME_INT8, v1::GRANULARITY_KIVI))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(QuantizerTest, RejectsScalesThatOverflowFp16) {
  at::Tensor x = RandomBlock(2, 4, 8, 1);
  x[1][2][3] = 1e7f;  // INT8: 1e7 / 127 > 65504.
  auto q = Quantize(x, MakeParams(v1::SCHEME_INT8, v1::GRANULARITY_PER_HEAD));
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(q.status().message().find("fp16"), std::string::npos) << q.status();
  // Just above the largest scale fp16 holds: 65504 * 127 rounds up to inf.
  x[1][2][3] = 65504.0f * 127.0f * 1.0001f;
  EXPECT_EQ(Quantize(x, MakeParams(v1::SCHEME_INT8, v1::GRANULARITY_PER_HEAD))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // FP8 scales have more headroom: 1e7 / 448 fits.
  x[1][2][3] = 1e7f;
  EXPECT_TRUE(
      Quantize(x, MakeParams(v1::SCHEME_FP8_E4M3, v1::GRANULARITY_PER_HEAD))
          .ok());
  // Asymmetric: a minimum below -65504 has no fp16 zero point.
  x[1][2][3] = -1e5f;
  q = Quantize(x, MakeParams(v1::SCHEME_INT8, v1::GRANULARITY_PER_HEAD, true));
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  // Passthrough FP16 of a value beyond fp16's range.
  q = Quantize(x, MakeParams(v1::SCHEME_FP16, v1::GRANULARITY_PER_HEAD));
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      Quantize(x, MakeParams(v1::SCHEME_BF16, v1::GRANULARITY_PER_HEAD)).ok());
}

TEST(QuantizerTest, RoundTripsBlocksWithNoTokens) {
  const at::Tensor x = at::zeros({2, 0, 16}, at::kBFloat16);
  for (Scheme s : kAllSchemes) {
    for (Granularity g : kAllGranularities) {
      const QuantParams p = MakeParams(s, g, IsIntScheme(s), 8);
      auto q = Quantize(x, p);
      ASSERT_TRUE(q.ok()) << SchemeName(s) << " " << q.status();
      EXPECT_EQ(q->packed.numel(), 0);
      if (HasScales(s)) {
        EXPECT_EQ(q->scales.numel(), ScaleCount(p, 2, 0, 16));
      }
      auto y = Dequantize(*q, p, 2, 0, 16, at::kBFloat16);
      ASSERT_TRUE(y.ok()) << y.status();
      EXPECT_EQ(y->sizes(), x.sizes());
    }
  }
}

TEST(QuantizerTest, PassthroughCopiesRatherThanAliasingTheInput) {
  at::Tensor x = RandomBlock(2, 3, 8, 9).to(at::kBFloat16);
  const QuantParams p = MakeParams(v1::SCHEME_BF16, v1::GRANULARITY_PER_HEAD);
  auto q = Quantize(x, p);
  ASSERT_TRUE(q.ok());
  const at::Tensor original = x.clone();
  x.zero_();
  auto y = Dequantize(*q, p, 2, 3, 8, at::kBFloat16);
  ASSERT_TRUE(y.ok());
  EXPECT_TRUE(at::equal(*y, original));
  // Little-endian raw bytes.
  const std::vector<uint8_t> bytes = ToBytes(q->packed);
  uint16_t first;
  std::memcpy(&first, original.data_ptr(), 2);
  EXPECT_EQ(bytes[0], first & 0xFF);
  EXPECT_EQ(bytes[1], first >> 8);
}

// Keys of real models have a few channels with large magnitude; a per-channel
// scale confines them, a per-head scale spends its range on them.
TEST(QuantizerTest, PerChannelBeatsPerHeadWhenKeysHaveOutlierChannels) {
  at::Tensor keys = RandomBlock(8, 256, 64, 21, 1.0);
  for (int64_t ch : {3, 17, 40}) {
    keys.select(2, ch).mul_(25.0f).add_(8.0f);
  }
  keys = keys.to(at::kBFloat16);
  auto mse = [&](Granularity g, Scheme s) {
    const QuantParams p = MakeParams(s, g);
    auto q = Quantize(keys, p);
    EXPECT_TRUE(q.ok()) << q.status();
    auto y = Dequantize(*q, p, 8, 256, 64, at::kFloat);
    EXPECT_TRUE(y.ok()) << y.status();
    return y->sub(keys.to(at::kFloat)).pow(2).mean().item<double>();
  };
  // (INT2 has too few levels, and FP8 too much dynamic range, for the scale
  // granularity to matter much.)
  for (Scheme s : {v1::SCHEME_INT8, v1::SCHEME_INT4, v1::SCHEME_NF4}) {
    const double per_channel = mse(v1::GRANULARITY_PER_CHANNEL, s);
    const double per_head = mse(v1::GRANULARITY_PER_HEAD, s);
    EXPECT_LT(per_channel * 2, per_head)
        << SchemeName(s) << " per-channel " << per_channel << " per-head "
        << per_head;
  }
}

TEST(QuantizerTest, InputThatRequiresGradIsAccepted) {
  at::Tensor x = RandomBlock(2, 3, 8, 4);
  x.set_requires_grad(true);
  const QuantParams p = MakeParams(v1::SCHEME_INT4, v1::GRANULARITY_PER_TOKEN);
  auto q = Quantize(x, p);
  ASSERT_TRUE(q.ok()) << q.status();
  auto y = Dequantize(*q, p, 2, 3, 8, at::kFloat);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_FALSE(y->requires_grad());
}

TEST(QuantizerTest, NonContiguousInputEncodesLikeItsContiguousCopy) {
  const at::Tensor base = RandomBlock(5, 3, 16, 8);
  const at::Tensor x = base.transpose(0, 1);  // [3, 5, 16], strided.
  ASSERT_FALSE(x.is_contiguous());
  const QuantParams p = MakeParams(v1::SCHEME_INT4, v1::GRANULARITY_PER_TOKEN);
  auto a = Quantize(x, p);
  auto b = Quantize(x.contiguous(), p);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(a->packed, b->packed));
  EXPECT_TRUE(at::equal(a->scales, b->scales));
}

}  // namespace
}  // namespace kvwire
