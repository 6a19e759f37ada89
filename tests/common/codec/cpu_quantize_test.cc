#include "common/codec/cpu_quantize.h"

#include <ATen/ATen.h>

#include <cstring>
#include <tuple>

#include "common/codec/quantizer.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

TEST(CpuQuantizeTest, HalfConversionsMatchAten) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const at::Half half(static_cast<uint16_t>(h), at::Half::from_bits());
    const float expected = static_cast<float>(half);
    const float actual = HalfBitsToFloat(static_cast<uint16_t>(h));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(actual));
    } else {
      EXPECT_EQ(std::memcmp(&expected, &actual, 4), 0) << h;
    }
  }
  at::Tensor x = at::randn({200000}) * 1000;
  x = at::cat({x, at::randn({100000}) * 1e-6, at::randn({10000}) * 1e5});
  const at::Tensor h = x.to(at::kHalf).view(at::kShort);
  const float* xs = x.data_ptr<float>();
  const int16_t* hs = h.data_ptr<int16_t>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_EQ(FloatToHalfBits(xs[i]), static_cast<uint16_t>(hs[i])) << xs[i];
  }
}

using Case = std::tuple<v1::Scheme, v1::Granularity, bool, at::ScalarType>;

class CpuQuantizeMatchTest : public ::testing::TestWithParam<Case> {};

// The fused kernel is an optimisation only: its bytes must be the ATen
// reference's, on shapes with partial bytes and on data with outliers.
TEST_P(CpuQuantizeMatchTest, ProducesTheReferenceBytes) {
  const auto [scheme, granularity, asymmetric, dtype] = GetParam();
  QuantParams p;
  p.scheme = scheme;
  p.granularity = granularity;
  p.asymmetric = asymmetric;
  p.group_size = 16;
  at::manual_seed(5);
  for (auto shape :
       {std::vector<int64_t>{2, 37, 48}, {3, 5, 16}, {1, 1, 32}, {2, 0, 16}}) {
    at::Tensor x = at::randn(shape) * at::rand({shape[0], 1, shape[2]}) * 8;
    x = x.to(dtype);
    auto fast = Quantize(x, p);
    auto ref = QuantizeReference(x, p);
    ASSERT_TRUE(fast.ok()) << fast.status();
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_TRUE(at::equal(fast->packed, ref->packed))
        << SchemeName(scheme) << " " << GranularityName(granularity);
    EXPECT_TRUE(
        at::equal(fast->scales.view(at::kShort), ref->scales.view(at::kShort)));
    EXPECT_EQ(fast->scales.sizes(), ref->scales.sizes());
    if (HasZeroPoints(p)) {
      EXPECT_TRUE(at::equal(fast->zero_points.view(at::kShort),
                            ref->zero_points.view(at::kShort)));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllSchemes, CpuQuantizeMatchTest,
    ::testing::Combine(
        ::testing::Values(v1::SCHEME_INT8, v1::SCHEME_INT4, v1::SCHEME_INT2,
                          v1::SCHEME_NF4, v1::SCHEME_FP8_E4M3,
                          v1::SCHEME_FP8_E5M2),
        ::testing::Values(v1::GRANULARITY_PER_LAYER, v1::GRANULARITY_PER_HEAD,
                          v1::GRANULARITY_PER_TOKEN,
                          v1::GRANULARITY_PER_CHANNEL,
                          v1::GRANULARITY_PER_GROUP),
        ::testing::Bool(), ::testing::Values(at::kBFloat16, at::kFloat)));

TEST(CpuQuantizeTest, DeclinesNonFiniteInputSoTheReferenceReportsIt) {
  at::Tensor x = at::randn({2, 4, 16}).to(at::kBFloat16);
  x[1][2][3] = std::numeric_limits<float>::quiet_NaN();
  QuantParams p;
  auto q = Quantize(x, p);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  x[1][2][3] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(Quantize(x, p).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvwire
