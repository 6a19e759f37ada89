// The model family registry (model_family.h): architecture names map to
// families and back, and each family's weight list groups the tensors the
// decoder fuses (q|k|v, gate|up) into consecutive specs of one slot.
#include "common/model/model_family.h"

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace kvwire {
namespace {

using Slot = WeightSpec::Slot;

TEST(ModelFamilyTest, NamesMapToFamiliesAndBack) {
  for (ModelArch arch :
       {ModelArch::kQwen2, ModelArch::kQwen3, ModelArch::kLlama,
        ModelArch::kMistral, ModelArch::kGemma3}) {
    const ModelFamily& family = GetModelFamily(arch);
    EXPECT_EQ(family.arch, arch);
    for (const std::string& name :
         {std::string(family.architecture), std::string(family.model_type),
          ArchitectureName(arch), ModelTypeName(arch)}) {
      auto found = FindModelFamily(name);
      ASSERT_TRUE(found.ok()) << name;
      EXPECT_EQ(*found, &family);
    }
  }
  auto lower = FindModelFamily("qwen2forcausallm");
  ASSERT_TRUE(lower.ok());
  EXPECT_EQ((*lower)->arch, ModelArch::kQwen2);
  auto unknown = FindModelFamily("GPT2LMHeadModel");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnimplemented);
  for (const char* name :
       {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
        "MistralForCausalLM", "Gemma3ForCausalLM"}) {
    EXPECT_NE(unknown.status().message().find(name), std::string::npos) << name;
  }
  auto gemma = FindModelFamily("gemma3_text");
  ASSERT_TRUE(gemma.ok());
  EXPECT_EQ((*gemma)->arch, ModelArch::kGemma3);
}

TEST(ModelFamilyTest, WeightListsGroupFusedTensorsBySlot) {
  for (ModelArch arch :
       {ModelArch::kQwen2, ModelArch::kQwen3, ModelArch::kLlama,
        ModelArch::kMistral, ModelArch::kGemma3}) {
    ModelConfig c = MakeModelConfig(arch, 32, 16, 24, 2, 4, 2, 0);
    if (arch == ModelArch::kLlama) c.mlp_bias = true;
    SCOPED_TRACE(c.architecture);
    const std::vector<WeightSpec> specs = ExpectedWeights(c);
    // Each (layer, slot) is one run of consecutive specs.
    std::map<std::pair<int64_t, Slot>, int> parts;
    std::set<std::pair<int64_t, Slot>> closed;
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto key = std::make_pair(specs[i].layer, specs[i].slot);
      EXPECT_EQ(closed.count(key), 0u) << specs[i].name;
      ++parts[key];
      if (i + 1 == specs.size() || specs[i + 1].layer != specs[i].layer ||
          specs[i + 1].slot != specs[i].slot) {
        closed.insert(key);
      }
    }
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      EXPECT_EQ((parts[{l, Slot::kQkv}]), 3);
      EXPECT_EQ((parts[{l, Slot::kGateUp}]), 2);
      EXPECT_EQ((parts[{l, Slot::kQkvBias}]), c.qkv_bias ? 3 : 0);
      EXPECT_EQ((parts[{l, Slot::kQNorm}]), c.qk_norm ? 1 : 0);
      EXPECT_EQ((parts[{l, Slot::kGateUpBias}]), c.mlp_bias ? 2 : 0);
      // Gemma's sandwich norms.
      EXPECT_EQ((parts[{l, Slot::kAttnOutNorm}]), c.sandwich_norms ? 1 : 0);
      EXPECT_EQ((parts[{l, Slot::kMlpOutNorm}]), c.sandwich_norms ? 1 : 0);
      EXPECT_EQ((parts[{l, Slot::kPostNorm}]), 1);
    }
    EXPECT_EQ((parts[{-1, Slot::kEmbedding}]), 1);
    EXPECT_EQ((parts[{-1, Slot::kFinalNorm}]), 1);
  }
}

}  // namespace
}  // namespace kvwire
