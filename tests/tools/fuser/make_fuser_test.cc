// kvwire-make-fuser --preset=RECEIVER+SHARER: the checkpoint it writes for a
// pair loads with the fuser loader, with one projector per receiver layer
// from the sharer's KV width to the receiver's, both models' Hugging Face
// ids in the recipe and token alignment exactly when the tokenizers differ.
// Small projector widths (--hidden / --intermediate) keep it fast; the
// widths of a preset are checked on the json without weights.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/fuser/checkpoint.h"
#include "common/fuser/fuser_config.h"
#include "common/model/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

std::string TempDir(const std::string& name) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/kvwire_mkf_", ::getpid(), "_", name);
  std::filesystem::remove_all(dir);
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

// Runs kvwire-make-fuser with `flags`; returns its exit status and leaves
// stdout + stderr in *output.
int RunTool(const std::string& flags, std::string* output) {
  const std::string log = TempDir("log.txt");
  const std::string cmd =
      absl::StrCat(KVWIRE_MAKE_FUSER, " ", flags, " > ", log, " 2>&1");
  const int rc = std::system(cmd.c_str());
  *output = ReadFile(log);
  std::filesystem::remove(log);
  return rc;
}

struct PairCase {
  std::string receiver;
  std::string sharer;
  std::string extra_flags;
  std::string base_model;
  std::string teacher_model;
  bool align;
  std::string strategy;
};

TEST(MakeFuserToolTest, PresetPairsLoadWithTheirShapesAndRecipe) {
  const PairCase cases[] = {
      // Another tokenizer: alignment on, strategy longest.
      {"qwen3-0.6b", "llama-3.2-1b", "", "Qwen/Qwen3-0.6B",
       "meta-llama/Llama-3.2-1B-Instruct", true, "longest"},
      // Qwen2.5-7B's vocab_size differs, its tokenizer does not.
      {"qwen3-8b", "qwen2.5-7b", "", "Qwen/Qwen3-8B",
       "Qwen/Qwen2.5-7B-Instruct", false, ""},
      // Explicit flags win over the preset's alignment defaults.
      {"qwen3-1.7b", "gemma-3-1b", " --alignment_strategy=first",
       "Qwen/Qwen3-1.7B", "google/gemma-3-1b-it", true, "first"},
      {"qwen3-0.6b", "gemma-3-1b", " --is_do_alignment=false",
       "Qwen/Qwen3-0.6B", "google/gemma-3-1b-it", false, ""},
  };
  for (const PairCase& c : cases) {
    const std::string preset = c.receiver + "+" + c.sharer;
    SCOPED_TRACE(preset + c.extra_flags);
    auto receiver = PresetModelConfig(c.receiver);
    auto sharer = PresetModelConfig(c.sharer);
    ASSERT_TRUE(receiver.ok() && sharer.ok());
    const std::string out = TempDir("pair");
    std::string log;
    ASSERT_EQ(RunTool(absl::StrCat("--out=", out, " --preset=", preset,
                                   " --hidden=16 --intermediate=16 --seed=1",
                                   c.extra_flags),
                      &log),
              0)
        << log;
    auto ckpt = ReadFuserCheckpoint(out);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ASSERT_EQ(ckpt->num_projectors(), receiver->num_hidden_layers);
    for (const C2CProjectorArgs& args : ckpt->args) {
      EXPECT_EQ(args.source_dim, sharer->head_dim);
      EXPECT_EQ(args.source_num_heads, sharer->num_key_value_heads);
      EXPECT_EQ(args.target_dim, receiver->head_dim);
      EXPECT_EQ(args.target_num_heads, receiver->num_key_value_heads);
      EXPECT_EQ(args.hidden_dim, 16);
      EXPECT_EQ(args.intermediate_dim, 16);
      EXPECT_EQ(args.num_layers, ReleasedQwen3Qwen25Args().num_layers);
    }
    ASSERT_TRUE(ckpt->layer_map.has_value());
    EXPECT_EQ(
        *ckpt->layer_map,
        *LastAlignedFuserLayerMap(static_cast<int>(receiver->num_hidden_layers),
                                  static_cast<int>(sharer->num_hidden_layers)));
    ASSERT_TRUE(ckpt->recipe.has_value());
    EXPECT_EQ(ckpt->recipe->base_model, c.base_model);
    EXPECT_EQ(ckpt->recipe->teacher_model, c.teacher_model);
    EXPECT_EQ(ckpt->recipe->is_do_alignment, c.align);
    EXPECT_EQ(ckpt->recipe->alignment_strategy, c.strategy);
    std::filesystem::remove_all(out);
  }
}

// The released pair keeps exactly the shapes it had before presets were
// generalized: ReleasedQwen3Qwen25Args (checked here without weights: the
// full-width checkpoint is ~900 MB), 28 <- 24 layers, the Qwen ids and no
// alignment.
TEST(MakeFuserToolTest, ReleasedPairKeepsTheReleasedFuser) {
  const std::string out = TempDir("released");
  std::string log;
  ASSERT_EQ(RunTool(absl::StrCat("--out=", out,
                                 " --preset=qwen3-0.6b+qwen2.5-0.5b"
                                 " --hidden=16 --intermediate=16"),
                    &log),
            0)
      << log;
  auto ckpt = ReadFuserCheckpoint(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ(ckpt->num_projectors(), 28);
  C2CProjectorArgs expected = ReleasedQwen3Qwen25Args();
  expected.hidden_dim = 16;
  expected.intermediate_dim = 16;
  EXPECT_EQ(ckpt->args[0], expected);
  EXPECT_EQ(*ckpt->layer_map, *LastAlignedFuserLayerMap(28, 24));
  EXPECT_EQ(ckpt->recipe->base_model, "Qwen/Qwen3-0.6B");
  EXPECT_EQ(ckpt->recipe->teacher_model, "Qwen/Qwen2.5-0.5B-Instruct");
  EXPECT_FALSE(ckpt->recipe->is_do_alignment);
  EXPECT_EQ(ckpt->recipe->alignment_strategy, "");
  std::filesystem::remove_all(out);
}

TEST(MakeFuserToolTest, UnknownPresetNamesTheKnownOnes) {
  std::string log;
  EXPECT_NE(RunTool(absl::StrCat("--out=", TempDir("unknown"),
                                 " --preset=qwen3-0.6b+qwen9-1b"),
                    &log),
            0);
  EXPECT_THAT(log, ::testing::HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(log, ::testing::HasSubstr("qwen9-1b"));
  EXPECT_THAT(log, ::testing::HasSubstr("llama-3.2-1b"));
  EXPECT_NE(
      RunTool(absl::StrCat("--out=", TempDir("single"), " --preset=qwen3-8b"),
              &log),
      0);
  EXPECT_THAT(log, ::testing::HasSubstr("RECEIVER+SHARER"));
  EXPECT_THAT(log, ::testing::HasSubstr("gemma-3-1b"));
}

TEST(PresetHuggingFaceIdTest, MapsEveryPresetName) {
  EXPECT_EQ(*PresetHuggingFaceId("qwen3-8b"), "Qwen/Qwen3-8B");
  EXPECT_EQ(*PresetHuggingFaceId("Qwen3-0.6B"), "Qwen/Qwen3-0.6B");
  EXPECT_EQ(*PresetHuggingFaceId("qwen2.5-7b"), "Qwen/Qwen2.5-7B-Instruct");
  EXPECT_EQ(*PresetHuggingFaceId("qwen2.5-0.5b-instruct"),
            "Qwen/Qwen2.5-0.5B-Instruct");
  EXPECT_EQ(*PresetHuggingFaceId("llama-3.2-1b"),
            "meta-llama/Llama-3.2-1B-Instruct");
  EXPECT_EQ(*PresetHuggingFaceId("gemma-3-1b-it"), "google/gemma-3-1b-it");
  for (const char* name : {"qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b",
                           "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b",
                           "llama-3.2-1b", "gemma-3-1b", "mistral-7b-v0.3"}) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(PresetModelConfig(name).ok());
    EXPECT_TRUE(PresetHuggingFaceId(name).ok());
  }
  const auto unknown = PresetHuggingFaceId("qwen9-1b");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), ::testing::HasSubstr("qwen3-0.6b"));
}

}  // namespace
}  // namespace kvwire
