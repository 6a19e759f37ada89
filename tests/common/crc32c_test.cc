#include "common/crc32c.h"

#include <random>
#include <string>

#include "gtest/gtest.h"

namespace kvwire {
namespace {

TEST(Crc32cTest, MatchesKnownCheckValue) {
  // The standard CRC-32C check value (RFC 3720 B.4 / "123456789").
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  // RFC 3720 B.4: 32 bytes of zeros.
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
}

TEST(Crc32cTest, HardwareAndPortablePathsAgreeOnEveryLength) {
  std::mt19937 rng(7);
  std::string data(1000, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t n = 0; n < data.size(); n += 37) {
    EXPECT_EQ(Crc32cExtend(0, data.data(), n),
              Crc32cExtendPortable(0, data.data(), n))
        << n;
  }
}

TEST(Crc32cTest, ExtendEqualsOneShot) {
  const std::string a = "kvwire block ", b = "payload bytes";
  EXPECT_EQ(Crc32cExtend(Crc32c(a), b.data(), b.size()), Crc32c(a + b));
}

TEST(Crc32cTest, DetectsSingleBitFlip) {
  std::string data(256, 'x');
  const uint32_t crc = Crc32c(data);
  data[100] ^= 0x04;
  EXPECT_NE(Crc32c(data), crc);
}

}  // namespace
}  // namespace kvwire
