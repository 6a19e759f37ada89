#include "common/fuser/torch_pickle.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/tensor.h>
#include <caffe2/serialize/inline_container.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

std::string DataDir() {
  const char* env = std::getenv("KVWIRE_SOURCE_DIR");
  const std::string root = env != nullptr ? env : KVWIRE_SOURCE_DIR_DEFAULT;
  return root + "/tests/data/fuser";
}

std::map<std::string, at::Tensor> ToMap(const TensorList& list) {
  std::map<std::string, at::Tensor> m;
  for (const auto& [n, t] : list) m[n] = t;
  return m;
}

// A string literal with its embedded NULs.
template <size_t N>
std::string Bytes(const char (&s)[N]) {
  return std::string(s, N - 1);
}

// A zip archive holding `pickle` as data.pkl (and no storages).
std::string Archive(const std::string& pickle) {
  std::string out;
  {
    caffe2::serialize::PyTorchStreamWriter writer(
        [&out](const void* data, size_t size) -> size_t {
          out.append(static_cast<const char*>(data), size);
          return size;
        });
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeEndOfFile();
  }
  return out;
}

TEST(TorchPickleTest, RoundTripsDtypesShapesAndOrder) {
  TensorList in = {
      {"z.bf16", at::randn({3, 5}).to(at::kBFloat16)},
      {"a.fp32", at::randn({2, 3, 4})},
      {"scalar", at::scalar_tensor(-0.25, at::kBFloat16)},
      {"half", at::randn({7}).to(at::kHalf)},
      {"long", at::arange(-3, 300000, 1000, at::kLong)},
      {"bool", at::tensor({1, 0, 1}, at::kInt).to(at::kBool)},
      {"empty", at::randn({0, 4})},
      // Non-contiguous input is written compactly.
      {"transposed", at::randn({4, 6}).t()},
  };
  auto bytes = SerializeTorchStateDict(in);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto out = ParseTorchStateDict(*bytes);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ((*out)[i].first, in[i].first);
    const at::Tensor& a = in[i].second;
    const at::Tensor& b = (*out)[i].second;
    EXPECT_EQ(b.scalar_type(), a.scalar_type()) << in[i].first;
    EXPECT_EQ(b.sizes(), a.sizes()) << in[i].first;
    EXPECT_TRUE(at::equal(a, b)) << in[i].first;
  }
}

TEST(TorchPickleTest, WritesAndReadsFiles) {
  const std::string path = ::testing::TempDir() + "/pickle_rt.pt";
  ASSERT_TRUE(WriteTorchStateDict(path, {{"w", at::randn({3})}}).ok());
  auto back = ReadTorchStateDict(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->at(0).first, "w");
  EXPECT_EQ(ReadTorchStateDict(path + ".missing").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(TorchPickleTest, RejectsBadInputs) {
  EXPECT_EQ(
      SerializeTorchStateDict({{"a", at::randn({1})}, {"a", at::randn({1})}})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SerializeTorchStateDict({{"a", at::Tensor()}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTorchStateDict("not a zip").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto bytes = SerializeTorchStateDict({{"a", at::randn({64})}});
  ASSERT_TRUE(bytes.ok());
  auto truncated = ParseTorchStateDict(bytes->substr(0, bytes->size() / 2));
  EXPECT_FALSE(truncated.ok());
  // Every prefix and a few corruptions fail cleanly.
  for (size_t n = 0; n < bytes->size(); n += 37) {
    EXPECT_FALSE(ParseTorchStateDict(bytes->substr(0, n)).ok()) << n;
  }
}

TEST(TorchPickleTest, NeverCallsOtherGlobals) {
  // pickle: PROTO 2, GLOBAL 'os system', (BINUNICODE 'echo'), TUPLE, REDUCE.
  auto r =
      ParseTorchStateDict(Archive(Bytes("\x80\x02"
                                        "cos\nsystem\n(X\x04\x00\x00\x00"
                                        "echotR.")));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("os.system"));
}

TEST(TorchPickleTest, RejectsNonTensorValuesAndOddPickles) {
  // {'a': 1}
  auto r =
      ParseTorchStateDict(Archive(Bytes("\x80\x02}X\x01\x00\x00\x00"
                                        "aK\x01s.")));
  EXPECT_THAT(r.status().message(), HasSubstr("\"a\" is a int"));
  // A list at the top.
  r = ParseTorchStateDict(Archive("\x80\x02]."));
  EXPECT_THAT(r.status().message(), HasSubstr("list"));
  // Stack underflow, unknown opcode, memo miss.
  EXPECT_EQ(ParseTorchStateDict(Archive("\x80\x02s.")).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseTorchStateDict(Archive("\x80\x02\xff.")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      ParseTorchStateDict(Archive(Bytes("\x80\x02h\x05."))).status().code(),
      absl::StatusCode::kDataLoss);
  // A storage reference to a record that is not there.
  const std::string missing = Bytes(
      "\x80\x02}X\x01\x00\x00\x00"
      "actorch._utils\n_rebuild_tensor_v2\n"
      "((X\x07\x00\x00\x00"
      "storagectorch\nFloatStorage\n"
      "X\x01\x00\x00\x00"
      "0X\x03\x00\x00\x00"
      "cpuK\x04tQK\x00(K\x04t(K\x01t"
      "\x89}tRs.");
  r = ParseTorchStateDict(Archive(missing));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), HasSubstr("data/0"));
}

// Files written by Python's torch.save (tools/gen_fuser_goldens.py --tiny).
TEST(TorchPickleTest, ReadsPythonSharedStoragesAndStrides) {
  auto r = ReadTorchStateDict(DataDir() + "/strided.pt");
  ASSERT_TRUE(r.ok()) << r.status();
  auto m = ToMap(*r);
  const at::Tensor base = at::arange(24, at::kFloat).view({4, 6});
  EXPECT_TRUE(at::equal(m.at("base"), base));
  EXPECT_TRUE(at::equal(m.at("transposed"), base.t()));
  EXPECT_EQ(m.at("transposed").strides(), base.t().strides());
  EXPECT_TRUE(at::equal(m.at("column"), base.select(1, 2)));
  EXPECT_EQ(m.at("scalar").dim(), 0);
  EXPECT_EQ(m.at("scalar").scalar_type(), at::kBFloat16);
  EXPECT_EQ(m.at("scalar").item<float>(), 2.5f);
  EXPECT_TRUE(at::equal(m.at("ints"), at::tensor({1, -2, 3}, at::kLong)));
  EXPECT_EQ(m.at("half").scalar_type(), at::kHalf);
}

TEST(TorchPickleTest, RejectsTheLegacyFormat) {
  auto r = ReadTorchStateDict(DataDir() + "/legacy.pt");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("legacy"));
}

}  // namespace
}  // namespace kvwire
