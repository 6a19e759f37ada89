#include "common/codec/scheme.h"

#include "gtest/gtest.h"

namespace kvwire {
namespace {

TEST(SchemeTest, BitsPerValueCoversEveryScheme) {
  EXPECT_EQ(BitsPerValue(v1::SCHEME_BF16), 16);
  EXPECT_EQ(BitsPerValue(v1::SCHEME_FP16), 16);
  EXPECT_EQ(BitsPerValue(v1::SCHEME_FP8_E4M3), 8);
  EXPECT_EQ(BitsPerValue(v1::SCHEME_FP8_E5M2), 8);
  EXPECT_EQ(BitsPerValue(v1::SCHEME_INT8), 8);
  EXPECT_EQ(BitsPerValue(v1::SCHEME_INT4), 4);
  EXPECT_EQ(BitsPerValue(v1::SCHEME_NF4), 4);
  EXPECT_EQ(BitsPerValue(v1::SCHEME_INT2), 2);
  EXPECT_EQ(BitsPerValue(v1::SCHEME_UNSPECIFIED), 0);
}

TEST(SchemeTest, PackedBytesRoundUpPartialBytes) {
  EXPECT_EQ(PackedValueBytes(v1::SCHEME_INT4, 3), 2);
  EXPECT_EQ(PackedValueBytes(v1::SCHEME_INT2, 5), 2);
  EXPECT_EQ(PackedValueBytes(v1::SCHEME_INT2, 8), 2);
  EXPECT_EQ(PackedValueBytes(v1::SCHEME_BF16, 3), 6);
}

TEST(SchemeTest, KiviResolvesKeysPerChannelAndValuesPerToken) {
  EXPECT_EQ(ResolveGranularity(v1::GRANULARITY_KIVI, v1::KV_PART_KEY),
            v1::GRANULARITY_PER_CHANNEL);
  EXPECT_EQ(ResolveGranularity(v1::GRANULARITY_KIVI, v1::KV_PART_VALUE),
            v1::GRANULARITY_PER_TOKEN);
  EXPECT_EQ(ResolveGranularity(v1::GRANULARITY_UNSPECIFIED, v1::KV_PART_KEY),
            v1::GRANULARITY_PER_HEAD);
}

TEST(SchemeTest, ScaleCountFollowsGranularity) {
  QuantParams p;
  p.scheme = v1::SCHEME_INT8;
  const int64_t h = 2, t = 10, d = 64;
  p.granularity = v1::GRANULARITY_PER_LAYER;
  EXPECT_EQ(ScaleCount(p, h, t, d), 1);
  p.granularity = v1::GRANULARITY_PER_HEAD;
  EXPECT_EQ(ScaleCount(p, h, t, d), 2);
  p.granularity = v1::GRANULARITY_PER_TOKEN;
  EXPECT_EQ(ScaleCount(p, h, t, d), 20);
  p.granularity = v1::GRANULARITY_PER_CHANNEL;
  EXPECT_EQ(ScaleCount(p, h, t, d), 128);
  p.granularity = v1::GRANULARITY_PER_GROUP;
  p.group_size = 16;
  EXPECT_EQ(ScaleCount(p, h, t, d), 80);
  p.scheme = v1::SCHEME_BF16;
  EXPECT_EQ(ScaleCount(p, h, t, d), 0);
}

TEST(SchemeTest, RejectsGroupSizeThatDoesNotDivideHeadDim) {
  QuantParams p;
  p.granularity = v1::GRANULARITY_PER_GROUP;
  p.group_size = 24;
  EXPECT_EQ(ValidateQuantParams(p, 2, 8, 64).code(),
            absl::StatusCode::kInvalidArgument);
  p.group_size = 16;
  EXPECT_TRUE(ValidateQuantParams(p, 2, 8, 64).ok());
}

TEST(SchemeTest, RejectsUnknownSchemeAndKiviAsBlockGranularity) {
  QuantParams p;
  p.scheme = static_cast<v1::Scheme>(99);
  EXPECT_EQ(ValidateQuantParams(p, 2, 8, 64).code(),
            absl::StatusCode::kInvalidArgument);
  p.scheme = v1::SCHEME_INT4;
  p.granularity = v1::GRANULARITY_KIVI;
  EXPECT_EQ(ValidateQuantParams(p, 2, 8, 64).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SchemeTest, NamesRoundTripAndUnknownNamesFail) {
  for (v1::Scheme s : {v1::SCHEME_BF16, v1::SCHEME_FP16, v1::SCHEME_FP8_E4M3,
                       v1::SCHEME_FP8_E5M2, v1::SCHEME_INT8, v1::SCHEME_INT4,
                       v1::SCHEME_INT2, v1::SCHEME_NF4}) {
    auto parsed = ParseScheme(SchemeName(s));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_EQ(*ParseScheme("INT8"), v1::SCHEME_INT8);
  EXPECT_EQ(ParseScheme("int3").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseGranularity("kivi"), v1::GRANULARITY_KIVI);
  EXPECT_EQ(*ParseSelectionMode("vnorm_topk"), v1::SELECTION_VNORM_TOPK);
}

}  // namespace
}  // namespace kvwire
