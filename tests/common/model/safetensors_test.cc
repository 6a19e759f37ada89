#include "common/model/safetensors.h"

#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/kvwire_st_", ::getpid(), "_",
                      name);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A file whose header is `header` (raw JSON) followed by `data_bytes` zeros.
std::string RawFile(const std::string& header, size_t data_bytes) {
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += header;
  out.append(data_bytes, '\0');
  return out;
}

TEST(SafetensorsTest, RoundTripsAllDtypesAndMetadata) {
  const std::string path = TempPath("roundtrip.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32", at::randn({3, 5})},
      {"bf16", at::randn({4, 2}).to(at::kBFloat16)},
      {"f16", at::randn({7}).to(at::kHalf)},
      {"i64", at::arange(6, at::kLong).view({2, 3})},
      {"i32", at::arange(5, at::kInt)},
      {"u8", at::arange(9, at::kByte)},
      {"scalar", at::randn({})},
      {"empty", at::randn({0, 4})},
      // Non-contiguous input is written contiguously.
      {"transposed", at::randn({3, 4}).t()},
  };
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->tensors().size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    auto t = (*file)->GetTensor(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->scalar_type(), expected.scalar_type()) << name;
    EXPECT_EQ(t->sizes(), expected.sizes()) << name;
    EXPECT_TRUE(at::equal(*t, expected)) << name;
  }
  // Writes to a returned tensor never reach the file (copy on write).
  at::Tensor f32 = *(*file)->GetTensor("f32");
  f32.fill_(42.0);
  auto reopened = SafetensorsFile::Open(path);
  ASSERT_TRUE(reopened.ok());
  EXPECT_TRUE(at::equal(*(*reopened)->GetTensor("f32"), tensors[0].second));
  // Tensors keep the mapping alive after the file object is gone.
  at::Tensor survivor = *(*reopened)->GetTensor("bf16");
  reopened->reset();
  EXPECT_TRUE(at::equal(survivor, tensors[1].second));
  std::remove(path.c_str());
}

TEST(SafetensorsTest, HeaderIsPaddedAndDataAligned) {
  std::vector<SafetensorsEntry> entries;
  const uint8_t bytes[3] = {1, 2, 3};
  entries.push_back({"x", SafetensorsDtype::kU8, {3}, bytes});
  auto data = SerializeSafetensors(entries);
  ASSERT_TRUE(data.ok());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>((*data)[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(data->size(), 8 + n + 3);
  auto file = SafetensorsFile::FromBuffer(*data);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Bytes(*(*file)->Find("x"))[2], 3);
}

TEST(SafetensorsTest, TruncatedFilesNameFileAndTensor) {
  const std::string path = TempPath("trunc.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(path, {{"layer.weight", at::randn({16, 16})}}).ok());
  const std::string full = ReadAll(path);

  WriteAll(path, full.substr(0, 5));
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(f.status().message(), HasSubstr(path));

  WriteAll(path, full.substr(0, 20));  // Inside the header.
  f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(f.status().message(), HasSubstr("truncated"));

  WriteAll(path, full.substr(0, full.size() - 1));  // One data byte short.
  f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(f.status().message(), HasSubstr("layer.weight"));
  EXPECT_THAT(f.status().message(), HasSubstr(path));

  WriteAll(path, "");
  EXPECT_FALSE(SafetensorsFile::Open(path).ok());
  std::remove(path.c_str());
  f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, RejectsHugeHeaderLength) {
  std::string bytes(16, '\0');
  bytes[6] = 0x10;  // ~4.5e15 bytes.
  auto f = SafetensorsFile::FromBuffer(bytes, "huge");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(f.status().message(), HasSubstr("exceeds the limit"));
}

TEST(SafetensorsTest, RejectsInconsistentHeaders) {
  struct Case {
    std::string header;
    size_t data;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"{not json", 0, "not valid JSON"},
      {"[1, 2]", 0, "not a JSON object"},
      {R"({"a": 3})", 0, "'a'"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", 8,
       "needs 8"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8,
       "reversed"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 8,
       "beyond the end"},
      {R"({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})",
       2, "F8_E4M3"},
      {R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8,
       "shape"},
      {R"({"a": {"dtype": "F32", "shape": [2]}})", 8, "data_offsets"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       12, "overlap"},
      {R"({"__metadata__": {"k": 1}})", 0, "__metadata__"},
      {R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296],
           "data_offsets": [0, 8]}})",
       8, "'a'"},
  };
  for (const Case& c : cases) {
    auto f = SafetensorsFile::FromBuffer(RawFile(c.header, c.data), "case.st");
    ASSERT_FALSE(f.ok()) << c.header;
    EXPECT_THAT(f.status().message(), HasSubstr(c.expected)) << c.header;
    EXPECT_THAT(f.status().message(), HasSubstr("case.st")) << c.header;
  }
}

TEST(SafetensorsTest, MissingTensorIsNotFound) {
  auto data = SerializeSafetensors({});
  ASSERT_TRUE(data.ok());
  auto f = SafetensorsFile::FromBuffer(*data, "empty.st");
  ASSERT_TRUE(f.ok()) << f.status();
  auto t = (*f)->GetTensor("nope");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), HasSubstr("nope"));
}

TEST(SafetensorsTest, WriterRejectsBadEntries) {
  const uint8_t bytes[4] = {};
  EXPECT_FALSE(
      SerializeSafetensors({{"a", SafetensorsDtype::kF32, {2}, bytes}}).ok());
  EXPECT_FALSE(SerializeSafetensors({{"a", SafetensorsDtype::kU8, {4}, bytes},
                                     {"a", SafetensorsDtype::kU8, {4}, bytes}})
                   .ok());
}

TEST(SafetensorsTest, ShardedCheckpointsLoadThroughTheIndex) {
  const std::string dir = TempPath("sharded");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  std::vector<at::Tensor> values;
  std::vector<SafetensorsEntry> entries;
  for (int i = 0; i < 5; ++i) values.push_back(at::randn({8, 4}));
  for (int i = 0; i < 5; ++i) {
    entries.push_back({absl::StrCat("w", i),
                       SafetensorsDtype::kF32,
                       {8, 4},
                       absl::Span<const uint8_t>(
                           static_cast<const uint8_t*>(values[i].data_ptr()),
                           values[i].nbytes())});
  }
  ASSERT_TRUE(WriteCheckpointWeights(dir, entries, 3).ok());
  auto reader = CheckpointReader::Open(dir);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->num_files(), 3u);
  EXPECT_EQ(reader->Names().size(), 5u);
  for (int i = 0; i < 5; ++i) {
    auto t = reader->Get(absl::StrCat("w", i));
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_TRUE(at::equal(*t, values[i]));
  }
  EXPECT_FALSE(reader->Get("w9").ok());

  // An index naming a tensor that its shard lacks.
  const std::string index_path = dir + "/model.safetensors.index.json";
  nlohmann::json index = nlohmann::json::parse(ReadAll(index_path));
  index["weight_map"]["ghost"] = "model-00001-of-00003.safetensors";
  WriteAll(index_path, index.dump());
  auto bad = CheckpointReader::Open(dir);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("ghost"));

  // An index naming a missing shard, or a path outside the directory.
  index["weight_map"]["ghost"] = "model-00009-of-00009.safetensors";
  WriteAll(index_path, index.dump());
  bad = CheckpointReader::Open(dir);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kNotFound);
  index["weight_map"]["ghost"] = "../etc/passwd";
  WriteAll(index_path, index.dump());
  EXPECT_FALSE(CheckpointReader::Open(dir).ok());

  auto none = CheckpointReader::Open(dir + "/nowhere");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvwire
