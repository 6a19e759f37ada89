#include "common/fuser/fuser_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

// projector_{i}.json as the reference's save_object writes it (c2c-spec §3).
constexpr char kReleasedJson[] = R"({"class": "C2CProjector", "init_args": {
  "source_dim": 64, "target_dim": 128, "source_num_heads": 2,
  "target_num_heads": 8, "hidden_dim": 1024, "intermediate_dim": 1024,
  "num_layers": 3, "dropout": 0.1, "initial_temperature": 1.0,
  "final_temperature": 0.001, "anneal_steps": 1929,
  "dtype": {"__type__": "torch.dtype", "value": "bfloat16"}}})";

TEST(ProjectorJsonTest, ParsesTheReleasedForm) {
  auto args = ParseProjectorJson(kReleasedJson);
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(*args, ReleasedQwen3Qwen25Args());
  EXPECT_EQ(args->in_dim(), 128);
  EXPECT_EQ(args->out_dim(), 1024);
}

TEST(ProjectorJsonTest, RoundTrips) {
  C2CProjectorArgs a = ReleasedQwen3Qwen25Args();
  a.num_layers = 5;
  a.hidden_dim = 96;
  auto back = ParseProjectorJson(ProjectorJson(a));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, a);
}

TEST(ProjectorJsonTest, MissingArgumentsTakeTheClassDefaults) {
  auto args = ParseProjectorJson(
      R"({"class": "c2cprojector", "init_args": {"source_dim": 64,
          "target_dim": 128, "dtype": "torch.float16"}})");
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->source_num_heads, 1);
  EXPECT_EQ(args->target_num_heads, 1);
  EXPECT_EQ(args->hidden_dim, 1024);
  EXPECT_EQ(args->intermediate_dim, 1024);
  EXPECT_EQ(args->num_layers, 3);
  EXPECT_EQ(args->dtype, "float16");
}

TEST(ProjectorJsonTest, RejectsBadFiles) {
  EXPECT_EQ(ParseProjectorJson("{").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseProjectorJson(R"({"class": "AllInOneProjector",
                                   "init_args": {}})")
                .status()
                .code(),
            absl::StatusCode::kUnimplemented);
  auto missing = ParseProjectorJson(
      R"({"class": "C2CProjector", "init_args": {"source_dim": 64}})");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  auto unknown = ParseProjectorJson(
      R"({"class": "C2CProjector", "init_args": {"source_dim": 64,
          "target_dim": 128, "frobnicate": 1}})");
  EXPECT_THAT(unknown.status().message(), HasSubstr("frobnicate"));
  auto two_layers = ParseProjectorJson(
      R"({"class": "C2CProjector", "init_args": {"source_dim": 64,
          "target_dim": 128, "num_layers": 2}})");
  EXPECT_THAT(two_layers.status().message(), HasSubstr("num_layers"));
  auto bad_dtype = ParseProjectorJson(
      R"({"class": "C2CProjector", "init_args": {"source_dim": 64,
          "target_dim": 128, "dtype": "int8"}})");
  EXPECT_THAT(bad_dtype.status().message(), HasSubstr("int8"));
  auto fractional = ParseProjectorJson(
      R"({"class": "C2CProjector", "init_args": {"source_dim": 64.5,
          "target_dim": 128}})");
  EXPECT_THAT(fractional.status().message(), HasSubstr("source_dim"));
}

TEST(LayerMapTest, LastAlignedForQwen3FromQwen25) {
  auto map = LastAlignedFuserLayerMap(28, 24);
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_EQ(map->size(), 28u);
  for (int t = 0; t < 28; ++t) {
    ASSERT_TRUE((*map)[t].has_value());
    EXPECT_EQ((*map)[t]->sharer_layer, t <= 4 ? 0 : t - 4) << t;
    EXPECT_EQ((*map)[t]->projector, t);
  }
  EXPECT_FALSE(LastAlignedFuserLayerMap(0, 24).ok());
}

TEST(LayerMapTest, ParsesProjectorConfigJson) {
  // The released file's shape, first pair used, unlisted layers unfused.
  auto map = ParseProjectorConfigJson(
      R"({"0": {"1": {"0": [[0, 0]], "1": [[0, 1], [7, 7]], "10": [[6, 2]]}}})");
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_EQ(map->size(), 11u);
  EXPECT_EQ((*map)[0], (FuserLayerMapEntry{0, 0}));
  EXPECT_EQ((*map)[1], (FuserLayerMapEntry{0, 1}));
  EXPECT_FALSE((*map)[2].has_value());
  EXPECT_EQ((*map)[10], (FuserLayerMapEntry{6, 2}));

  auto padded = ParseProjectorConfigJson(R"({"0": {"1": {"0": [[0, 0]]}}})", 4);
  ASSERT_TRUE(padded.ok());
  EXPECT_EQ(padded->size(), 4u);
  EXPECT_FALSE(
      ParseProjectorConfigJson(R"({"0": {"1": {"9": [[0, 0]]}}})", 4).ok());
}

TEST(LayerMapTest, RoundTripsAndRejects) {
  auto map = LastAlignedFuserLayerMap(6, 4);
  ASSERT_TRUE(map.ok());
  (*map)[3].reset();
  auto back = ParseProjectorConfigJson(ProjectorConfigJson(*map), 6);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, *map);

  EXPECT_EQ(ParseProjectorConfigJson(
                R"({"0": {"1": {"0": [[0, 0]]}, "2": {"0": [[0, 1]]}}})")
                .status()
                .code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(
      ParseProjectorConfigJson(R"({"0": {"1": {"0": []}}})").status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseProjectorConfigJson(R"({"0": {"1": {"x": [[0, 0]]}}})")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseProjectorConfigJson(R"({"0": {"1": {"0": [[-1, 0]]}}})")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LayerMapTest, Validates) {
  auto map = LastAlignedFuserLayerMap(4, 3);
  ASSERT_TRUE(map.ok());
  EXPECT_TRUE(ValidateFuserLayerMap(*map, 4, 3).ok());
  EXPECT_THAT(ValidateFuserLayerMap(*map, 3).message(),
              HasSubstr("projector 3"));
  EXPECT_THAT(ValidateFuserLayerMap(*map, 4, 2).message(),
              HasSubstr("sharer layer 2"));
}

TEST(RecipeTest, ParsesTheTrainingRecipe) {
  auto recipe = ParseFuserRecipe(R"({"model": {
      "base_model": "Qwen/Qwen3-0.6B", "teacher_model": "Qwen/Qwen2.5-0.5B",
      "include_response": false, "is_do_alignment": false,
      "projector": {"type": "C2CProjector", "params": {"hidden_dim": 1024}},
      "mapping": "last_aligned"}, "training": {"seed": 42}})");
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  EXPECT_EQ(recipe->base_model, "Qwen/Qwen3-0.6B");
  EXPECT_EQ(recipe->teacher_model, "Qwen/Qwen2.5-0.5B");
  EXPECT_EQ(recipe->projector_type, "C2CProjector");
  EXPECT_EQ(recipe->mapping, "last_aligned");
  EXPECT_FALSE(ParseFuserRecipe(R"({"model": {"mapping": 3}})").ok());

  auto written =
      ParseFuserRecipe(FuserRecipeJson(*recipe, ReleasedQwen3Qwen25Args()));
  ASSERT_TRUE(written.ok());
  EXPECT_EQ(written->mapping, "last_aligned");
  EXPECT_EQ(written->base_model, recipe->base_model);
}

}  // namespace
}  // namespace kvwire
