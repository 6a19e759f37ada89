#include "common/codec/index_coding.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::absl::StatusCode;

// A random strictly ascending subset of [0, total) of random density.
std::vector<uint32_t> RandomSubset(std::mt19937_64& rng, uint32_t total) {
  std::uniform_real_distribution<double> density(0.0, 1.0);
  const double p = density(rng);
  std::bernoulli_distribution keep(p);
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < total; ++i) {
    if (keep(rng)) out.push_back(i);
  }
  return out;
}

int64_t VarintBytes(const std::vector<uint32_t>& indices) {
  int64_t total = 0;
  for (size_t i = 0; i < indices.size(); ++i) {
    uint32_t v = i == 0 ? indices[0] : indices[i] - indices[i - 1] - 1;
    int size = 1;
    while (v >= 0x80) {
      v >>= 7;
      ++size;
    }
    total += size;
  }
  return total;
}

std::vector<uint32_t> Iota(uint32_t n) {
  std::vector<uint32_t> out(n);
  for (uint32_t i = 0; i < n; ++i) out[i] = i;
  return out;
}

TEST(IndexCodingTest, RoundTripsRandomSets) {
  std::mt19937_64 rng(1234);
  for (uint32_t total : {1u, 7u, 8u, 9u, 118u, 8192u}) {
    const int trials = total > 1000 ? 60 : 300;
    for (int trial = 0; trial < trials; ++trial) {
      std::vector<uint32_t> indices = RandomSubset(rng, total);
      if (trial == 0) indices.clear();
      if (trial == 1) indices = Iota(total);
      auto encoded = EncodeTokenIndices(indices, total);
      ASSERT_TRUE(encoded.ok()) << encoded.status();
      auto decoded =
          DecodeTokenIndices(encoded->encoding, encoded->bytes, total,
                             static_cast<uint32_t>(indices.size()));
      ASSERT_TRUE(decoded.ok())
          << decoded.status() << " T=" << total << " n=" << indices.size();
      EXPECT_EQ(*decoded, indices) << "T=" << total;
      EXPECT_LE(static_cast<int64_t>(encoded->bytes.size()),
                EncodedIndexBytesUpperBound(
                    static_cast<uint32_t>(indices.size()), total));
    }
  }
}

TEST(IndexCodingTest, ChoosesTheSmallerEncoding) {
  std::mt19937_64 rng(99);
  for (uint32_t total : {1u, 7u, 8u, 9u, 118u, 8192u}) {
    for (int trial = 0; trial < 100; ++trial) {
      const std::vector<uint32_t> indices = RandomSubset(rng, total);
      auto encoded = EncodeTokenIndices(indices, total);
      ASSERT_TRUE(encoded.ok());
      if (indices.size() == total) {
        EXPECT_EQ(encoded->encoding, v1::INDEX_ENCODING_ALL);
        EXPECT_TRUE(encoded->bytes.empty());
        continue;
      }
      const int64_t bitmap = (total + 7) / 8;
      const int64_t varint = VarintBytes(indices);
      if (bitmap <= varint) {
        EXPECT_EQ(encoded->encoding, v1::INDEX_ENCODING_BITMAP);
        EXPECT_EQ(static_cast<int64_t>(encoded->bytes.size()), bitmap);
      } else {
        EXPECT_EQ(encoded->encoding, v1::INDEX_ENCODING_DELTA_VARINT);
        EXPECT_EQ(static_cast<int64_t>(encoded->bytes.size()), varint);
      }
    }
  }
}

TEST(IndexCodingTest, AllTokensUseAllEncoding) {
  for (uint32_t total : {0u, 1u, 9u, 8192u}) {
    auto encoded = EncodeTokenIndices(Iota(total), total);
    ASSERT_TRUE(encoded.ok());
    EXPECT_EQ(encoded->encoding, v1::INDEX_ENCODING_ALL);
    EXPECT_TRUE(encoded->bytes.empty());
    auto decoded = DecodeTokenIndices(v1::INDEX_ENCODING_ALL, "", total, total);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, Iota(total));
  }
}

TEST(IndexCodingTest, PicksBitmapWhenDenser) {
  // Every other token of 16: varint is 8 bytes, bitmap 2.
  const std::vector<uint32_t> indices = {0, 2, 4, 6, 8, 10, 12, 14};
  auto encoded = EncodeTokenIndices(indices, 16);
  ASSERT_TRUE(encoded.ok());
  EXPECT_EQ(encoded->encoding, v1::INDEX_ENCODING_BITMAP);
  EXPECT_EQ(encoded->bytes, std::string("\x55\x55", 2));
}

TEST(IndexCodingTest, PicksDeltaVarintWhenSparser) {
  // 3 indices of 8192: bitmap is 1024 bytes; varints 0, 199 (2 bytes), 0.
  const std::vector<uint32_t> indices = {0, 200, 201};
  auto encoded = EncodeTokenIndices(indices, 8192);
  ASSERT_TRUE(encoded.ok());
  EXPECT_EQ(encoded->encoding, v1::INDEX_ENCODING_DELTA_VARINT);
  EXPECT_EQ(encoded->bytes, std::string("\x00\xC7\x01\x00", 4));
}

TEST(IndexCodingTest, TieGoesToBitmap) {
  // T = 16 (2 bitmap bytes), two indices with small gaps (2 varint bytes).
  const std::vector<uint32_t> indices = {3, 9};
  auto encoded = EncodeTokenIndices(indices, 16);
  ASSERT_TRUE(encoded.ok());
  EXPECT_EQ(encoded->encoding, v1::INDEX_ENCODING_BITMAP);
  EXPECT_EQ(encoded->bytes, std::string("\x08\x02", 2));
}

TEST(IndexCodingTest, EmptySelectionIsEmptyDeltaVarint) {
  auto encoded = EncodeTokenIndices({}, 100);
  ASSERT_TRUE(encoded.ok());
  EXPECT_EQ(encoded->encoding, v1::INDEX_ENCODING_DELTA_VARINT);
  EXPECT_TRUE(encoded->bytes.empty());
  auto decoded =
      DecodeTokenIndices(v1::INDEX_ENCODING_DELTA_VARINT, "", 100, 0);
  ASSERT_TRUE(decoded.ok());
  EXPECT_TRUE(decoded->empty());
}

TEST(IndexCodingTest, EncodeRejectsUnsortedDuplicateAndOutOfRange) {
  const std::vector<uint32_t> unsorted = {3, 1};
  const std::vector<uint32_t> duplicate = {1, 1};
  const std::vector<uint32_t> out_of_range = {1, 10};
  EXPECT_EQ(EncodeTokenIndices(unsorted, 10).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeTokenIndices(duplicate, 10).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeTokenIndices(out_of_range, 10).status().code(),
            StatusCode::kInvalidArgument);
  const std::vector<uint32_t> one = {0};
  EXPECT_EQ(EncodeTokenIndices(one, 0).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeTokenIndices(one, kMaxIndexTokens + 1).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(IndexCodingTest, UpperBound) {
  EXPECT_EQ(EncodedIndexBytesUpperBound(10, 10), 0);
  EXPECT_EQ(EncodedIndexBytesUpperBound(0, 10), 2);
  EXPECT_EQ(EncodedIndexBytesUpperBound(5, 8), 1);
  EXPECT_EQ(EncodedIndexBytesUpperBound(5, 9), 2);
  EXPECT_EQ(EncodedIndexBytesUpperBound(1, 8192), 1024);
}

TEST(IndexCodingTest, RejectsUnknownAndSharedEncodings) {
  EXPECT_EQ(
      DecodeTokenIndices(v1::INDEX_ENCODING_SHARED, "", 10, 3).status().code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeTokenIndices(v1::INDEX_ENCODING_UNSPECIFIED, "", 10, 3)
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeTokenIndices(static_cast<v1::IndexEncoding>(77), "", 10, 3)
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeTokenIndices(v1::INDEX_ENCODING_ALL, "", kMaxIndexTokens + 1,
                               kMaxIndexTokens + 1)
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

TEST(IndexCodingTest, AllEncodingValidation) {
  EXPECT_EQ(
      DecodeTokenIndices(v1::INDEX_ENCODING_ALL, "x", 10, 10).status().code(),
      StatusCode::kDataLoss);
  EXPECT_EQ(
      DecodeTokenIndices(v1::INDEX_ENCODING_ALL, "", 10, 9).status().code(),
      StatusCode::kDataLoss);
  EXPECT_EQ(
      DecodeTokenIndices(v1::INDEX_ENCODING_ALL, "", 10, 11).status().code(),
      StatusCode::kDataLoss);
}

TEST(IndexCodingTest, BitmapValidation) {
  // Wrong length.
  EXPECT_EQ(DecodeTokenIndices(v1::INDEX_ENCODING_BITMAP,
                               std::string("\x01", 1), 9, 1)
                .status()
                .code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(DecodeTokenIndices(v1::INDEX_ENCODING_BITMAP,
                               std::string("\x01\x00\x00", 3), 9, 1)
                .status()
                .code(),
            StatusCode::kDataLoss);
  // Padding bit 9 set with T = 9.
  EXPECT_EQ(DecodeTokenIndices(v1::INDEX_ENCODING_BITMAP,
                               std::string("\x01\x02", 2), 9, 2)
                .status()
                .code(),
            StatusCode::kDataLoss);
  // Count mismatch.
  EXPECT_EQ(DecodeTokenIndices(v1::INDEX_ENCODING_BITMAP,
                               std::string("\x03\x00", 2), 9, 1)
                .status()
                .code(),
            StatusCode::kDataLoss);
  // Bit 8 is the last valid token of T = 9.
  auto ok = DecodeTokenIndices(v1::INDEX_ENCODING_BITMAP,
                               std::string("\x81\x01", 2), 9, 3);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, (std::vector<uint32_t>{0, 7, 8}));
}

TEST(IndexCodingTest, DeltaVarintValidation) {
  const auto code = [](const std::string& bytes, uint32_t total,
                       uint32_t count) {
    return DecodeTokenIndices(v1::INDEX_ENCODING_DELTA_VARINT, bytes, total,
                              count)
        .status()
        .code();
  };
  // Truncated varint.
  EXPECT_EQ(code(std::string("\x80", 1), 1000, 1), StatusCode::kDataLoss);
  // Overlong: six bytes.
  EXPECT_EQ(code(std::string("\x80\x80\x80\x80\x80\x00", 6), 1000, 1),
            StatusCode::kDataLoss);
  // Five bytes overflowing 32 bits.
  EXPECT_EQ(code(std::string("\xFF\xFF\xFF\xFF\x1F", 5), kMaxIndexTokens, 1),
            StatusCode::kDataLoss);
  // Index out of range: 5 then 5 + 1 + 4 = 10 with T = 10.
  EXPECT_EQ(code(std::string("\x05\x04", 2), 10, 2), StatusCode::kDataLoss);
  // Too many and too few indices.
  EXPECT_EQ(code(std::string("\x01\x01\x01", 3), 10, 2), StatusCode::kDataLoss);
  EXPECT_EQ(code(std::string("\x01", 1), 10, 2), StatusCode::kDataLoss);
  // More expected than tokens.
  EXPECT_EQ(code("", 3, 4), StatusCode::kDataLoss);
  // A non-minimal (but at most 5-byte) varint is accepted.
  auto ok = DecodeTokenIndices(v1::INDEX_ENCODING_DELTA_VARINT,
                               std::string("\x85\x00\x02", 3), 10, 2);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, (std::vector<uint32_t>{5, 8}));
}

// Every truncation and random corruption of valid encodings either decodes
// to a valid set of the expected size or fails with DATA_LOSS; never crashes.
TEST(IndexCodingTest, CorruptedBytesGiveDataLossNeverCrash) {
  std::mt19937_64 rng(7);
  int data_loss = 0;
  for (uint32_t total : {1u, 7u, 8u, 9u, 118u, 8192u}) {
    for (int trial = 0; trial < 20; ++trial) {
      const std::vector<uint32_t> indices = RandomSubset(rng, total);
      auto encoded = EncodeTokenIndices(indices, total);
      ASSERT_TRUE(encoded.ok());
      const std::string& bytes = encoded->bytes;
      const auto count = static_cast<uint32_t>(indices.size());
      const auto check = [&](v1::IndexEncoding encoding,
                             const std::string& corrupt) {
        auto decoded = DecodeTokenIndices(encoding, corrupt, total, count);
        if (decoded.ok()) {
          ASSERT_EQ(decoded->size(), count);
          for (size_t i = 0; i < decoded->size(); ++i) {
            ASSERT_LT((*decoded)[i], total);
            if (i > 0) {
              ASSERT_GT((*decoded)[i], (*decoded)[i - 1]);
            }
          }
        } else {
          ASSERT_EQ(decoded.status().code(), StatusCode::kDataLoss)
              << decoded.status();
          ++data_loss;
        }
      };
      for (size_t len = 0; len < bytes.size(); ++len) {
        check(encoded->encoding, bytes.substr(0, len));
      }
      for (int flip = 0; flip < 50 && !bytes.empty(); ++flip) {
        std::string corrupt = bytes;
        corrupt[rng() % corrupt.size()] ^= static_cast<char>(1u << (rng() % 8));
        check(encoded->encoding, corrupt);
      }
      // Random garbage of random length under each decodable encoding.
      for (int junk = 0; junk < 20; ++junk) {
        std::string garbage(rng() % 16, '\0');
        for (char& c : garbage) c = static_cast<char>(rng());
        for (v1::IndexEncoding e :
             {v1::INDEX_ENCODING_ALL, v1::INDEX_ENCODING_BITMAP,
              v1::INDEX_ENCODING_DELTA_VARINT}) {
          check(e, garbage);
        }
      }
    }
  }
  EXPECT_GT(data_loss, 0);
}

TEST(IndexCodingTest, TruncationsOfBitmapAndVarintAreDataLoss) {
  std::vector<uint32_t> dense;
  for (uint32_t i = 0; i < 118; i += 3) dense.push_back(i);
  std::vector<uint32_t> sparse = {5, 300, 4000, 8000};
  for (const auto& [indices, total] :
       {std::make_pair(dense, 118u), std::make_pair(sparse, 8192u)}) {
    auto encoded = EncodeTokenIndices(indices, total);
    ASSERT_TRUE(encoded.ok());
    for (size_t len = 0; len < encoded->bytes.size(); ++len) {
      EXPECT_EQ(
          DecodeTokenIndices(encoded->encoding, encoded->bytes.substr(0, len),
                             total, static_cast<uint32_t>(indices.size()))
              .status()
              .code(),
          StatusCode::kDataLoss)
          << "len " << len;
    }
  }
}

}  // namespace
}  // namespace kvwire
