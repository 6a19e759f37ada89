#include "common/log_text.h"

#include <string>

#include "gtest/gtest.h"

namespace kvwire {
namespace {

TEST(ForLogTest, EscapesControlBytesSoTextStaysOnOneLine) {
  EXPECT_EQ(ForLog("req-1"), "req-1");
  EXPECT_EQ(ForLog("a\nE1207 forged"), "a\\nE1207 forged");
  EXPECT_EQ(ForLog("\x1b[31mred"), "\\x1b[31mred");
  EXPECT_EQ(ForLog(std::string("nul\0zero", 8)), "nul\\x00zero");
  EXPECT_EQ(ForLog("say \"hi\" \\"), "say \\\"hi\\\" \\\\");
}

TEST(ForLogTest, CutsLongTextAndSaysHowLongItWas) {
  const std::string big(1 << 20, 'A');
  const std::string out = ForLog(big, 16);
  EXPECT_EQ(out, std::string(16, 'A') + "...(1048576 bytes)");
  EXPECT_EQ(ForLog(std::string(16, 'B'), 16), std::string(16, 'B'));
}

}  // namespace
}  // namespace kvwire
