#include "common/fuser/checkpoint.h"

#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/fuser/c2c_projector.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

RandomFuserOptions Tiny() {
  RandomFuserOptions o;
  o.args.source_dim = 4;
  o.args.source_num_heads = 2;
  o.args.target_dim = 8;
  o.args.target_num_heads = 2;
  o.args.hidden_dim = 12;
  o.args.intermediate_dim = 20;
  o.args.num_layers = 3;
  o.receiver_layers = 5;
  o.sharer_layers = 3;
  o.seed = 17;
  o.open_gate_fraction = 0.7;
  return o;
}

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/fuser_ckpt_" + name;
  fs::remove_all(dir);
  return dir;
}

void ExpectSameWeights(const FuserCheckpoint& a, const FuserCheckpoint& b) {
  ASSERT_EQ(a.num_projectors(), b.num_projectors());
  for (int i = 0; i < a.num_projectors(); ++i) {
    EXPECT_EQ(a.args[i], b.args[i]);
    ASSERT_EQ(a.weights[i].size(), b.weights[i].size());
    for (size_t j = 0; j < a.weights[i].size(); ++j) {
      EXPECT_EQ(a.weights[i][j].first, b.weights[i][j].first);
      EXPECT_TRUE(at::equal(a.weights[i][j].second, b.weights[i][j].second))
          << a.weights[i][j].first;
    }
  }
}

TEST(FuserCheckpointTest, RandomHasTheReleasedLayout) {
  auto ckpt = MakeRandomFuserCheckpoint(Tiny());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const std::string dir = FreshDir("layout");
  ASSERT_TRUE(WriteFuserCheckpoint(dir, *ckpt).ok());
  for (const char* f :
       {"config.json", "final/projector_0.pt", "final/projector_0.json",
        "final/projector_4.pt", "final/projector_4.json",
        "final/projector_config.json"}) {
    EXPECT_TRUE(fs::exists(dir + "/" + f)) << f;
  }
  auto back = ReadFuserCheckpoint(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->format, FuserWeightFormat::kTorch);
  ExpectSameWeights(*ckpt, *back);
  ASSERT_TRUE(back->layer_map.has_value());
  EXPECT_EQ(*back->layer_map, *ckpt->layer_map);
  ASSERT_TRUE(back->recipe.has_value());
  EXPECT_EQ(back->recipe->mapping, "last_aligned");
  EXPECT_EQ(back->args[0].dtype, "bfloat16");
  EXPECT_EQ(back->weights[0][0].second.scalar_type(), at::kBFloat16);
  // The final/ folder itself works too.
  auto from_final = ReadFuserCheckpoint(dir + "/final");
  ASSERT_TRUE(from_final.ok()) << from_final.status();
  EXPECT_TRUE(from_final->recipe.has_value());
}

TEST(FuserCheckpointTest, ConvertsToSafetensorsAndBack) {
  auto ckpt = MakeRandomFuserCheckpoint(Tiny());
  ASSERT_TRUE(ckpt.ok());
  const std::string st = FreshDir("st");
  ASSERT_TRUE(
      WriteFuserCheckpoint(st, *ckpt, FuserWeightFormat::kSafetensors).ok());
  EXPECT_TRUE(fs::exists(st + "/final/projector_3.safetensors"));
  EXPECT_FALSE(fs::exists(st + "/final/projector_3.pt"));
  auto from_st = ReadFuserCheckpoint(st);
  ASSERT_TRUE(from_st.ok()) << from_st.status();
  EXPECT_EQ(from_st->format, FuserWeightFormat::kSafetensors);
  ExpectSameWeights(*ckpt, *from_st);

  const std::string pt = FreshDir("pt_again");
  ASSERT_TRUE(
      WriteFuserCheckpoint(pt, *from_st, FuserWeightFormat::kTorch).ok());
  auto from_pt = ReadFuserCheckpoint(pt, FuserWeightFormat::kTorch);
  ASSERT_TRUE(from_pt.ok()) << from_pt.status();
  ExpectSameWeights(*ckpt, *from_pt);
  EXPECT_EQ(
      ReadFuserCheckpoint(pt, FuserWeightFormat::kSafetensors).status().code(),
      absl::StatusCode::kNotFound);
}

TEST(FuserCheckpointTest, ReportsMissingFiles) {
  auto ckpt = MakeRandomFuserCheckpoint(Tiny());
  ASSERT_TRUE(ckpt.ok());
  const std::string dir = FreshDir("missing");
  ASSERT_TRUE(WriteFuserCheckpoint(dir, *ckpt).ok());
  fs::remove(dir + "/final/projector_2.json");
  auto r = ReadFuserCheckpoint(dir);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("projector_2.json"));

  ASSERT_TRUE(WriteFuserCheckpoint(dir, *ckpt).ok());
  fs::remove(dir + "/final/projector_1.pt");
  r = ReadFuserCheckpoint(dir);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("projector_1.pt"));

  EXPECT_EQ(ReadFuserCheckpoint(dir + "/nope").status().code(),
            absl::StatusCode::kNotFound);
  const std::string empty = FreshDir("empty");
  fs::create_directories(empty);
  EXPECT_EQ(ReadFuserCheckpoint(empty).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(FuserCheckpointTest, LayerMapMustNameExistingProjectors) {
  auto ckpt = MakeRandomFuserCheckpoint(Tiny());
  ASSERT_TRUE(ckpt.ok());
  const std::string dir = FreshDir("badmap");
  ASSERT_TRUE(WriteFuserCheckpoint(dir, *ckpt).ok());
  std::ofstream(dir + "/final/projector_config.json")
      << R"({"0": {"1": {"0": [[0, 9]]}}})";
  auto r = ReadFuserCheckpoint(dir);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("projector 9"));
}

TEST(FuserCheckpointTest, MismatchedTensorIsNamedWhenBuilt) {
  auto ckpt = MakeRandomFuserCheckpoint(Tiny());
  ASSERT_TRUE(ckpt.ok());
  // The json says hidden 12; make one file's args disagree.
  ckpt->args[3].hidden_dim = 14;
  const std::string dir = FreshDir("mismatch");
  ASSERT_TRUE(WriteFuserCheckpoint(dir, *ckpt).ok());
  auto back = ReadFuserCheckpoint(dir);
  ASSERT_TRUE(back.ok());
  ProjectorOptions o;
  auto p = C2CProjector::Create(back->args[3], back->weights[3], o, false,
                                "projector_3.pt");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("projector_3.pt"));
  EXPECT_THAT(p.status().message(), HasSubstr("expected [14"));
}

TEST(FuserCheckpointTest, ParsesFormats) {
  EXPECT_EQ(*ParseFuserWeightFormat("pt"), FuserWeightFormat::kTorch);
  EXPECT_EQ(*ParseFuserWeightFormat("SafeTensors"),
            FuserWeightFormat::kSafetensors);
  EXPECT_EQ(*ParseFuserWeightFormat("auto"), FuserWeightFormat::kAuto);
  EXPECT_FALSE(ParseFuserWeightFormat("onnx").ok());
}

}  // namespace
}  // namespace kvwire
