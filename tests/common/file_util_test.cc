#include "common/file_util.h"

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace kvwire {
namespace {

class FileUtilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvwire_file_util_XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::string dir_;
};

TEST_F(FileUtilTest, WritesAndReadsBackBinaryBytes) {
  const std::string data("a\0b\xff", 4);
  ASSERT_TRUE(WriteStringToFile(dir_ + "/f", data).ok());
  auto back = ReadFileToString(dir_ + "/f");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, data);
  EXPECT_TRUE(IsRegularFile(dir_ + "/f"));
  EXPECT_FALSE(IsRegularFile(dir_));
}

TEST_F(FileUtilTest, ReportsMissingFilesAndDirectoriesPrecisely) {
  EXPECT_EQ(ReadFileToString(dir_ + "/missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadFileToString(dir_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteStringToFile(dir_ + "/no/such/dir/f", "x").code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace kvwire
