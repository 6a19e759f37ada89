#include "common/codec/entropy.h"

#include <string>

#include "gtest/gtest.h"

namespace kvwire {
namespace {

TEST(EntropyTest, RoundTripsAndShrinksRedundantData) {
  std::string data;
  for (int i = 0; i < 4096; ++i) data.push_back(static_cast<char>(i % 7));
  auto frame = ZstdCompress(data, 3);
  ASSERT_TRUE(frame.ok());
  EXPECT_LT(frame->size(), data.size() / 10);
  auto back = ZstdDecompress(*frame, data.size());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, data);
}

TEST(EntropyTest, RejectsWrongExpectedSizeAndCorruptFrames) {
  const std::string data(1000, 'k');
  auto frame = ZstdCompress(data, 1);
  ASSERT_TRUE(frame.ok());
  EXPECT_EQ(ZstdDecompress(*frame, 999).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ZstdDecompress(*frame, 1001).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ZstdDecompress("not a zstd frame", 10).status().code(),
            absl::StatusCode::kDataLoss);
  std::string truncated = frame->substr(0, frame->size() - 2);
  EXPECT_EQ(ZstdDecompress(truncated, 1000).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(EntropyTest, RejectsLevelOutsideZstdRange) {
  EXPECT_EQ(ZstdCompress("x", 99).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvwire
