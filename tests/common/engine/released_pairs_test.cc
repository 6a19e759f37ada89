// The shapes of every model pair C2C released a fuser for (c2c-spec §3):
// each preset has exactly the parameter count its published checkpoint has
// (so no field of a preset is off), and a fuser in the released layout
// built for a pair's shapes (last-aligned map, the projector's input the
// sharer's KV width and its output the receiver's) loads for those models
// and refuses any other sharer of the list, naming the mismatch.
#include <cstdint>
#include <string>
#include <vector>

#include "common/fuser/checkpoint.h"
#include "common/fuser/fuser.h"
#include "common/model/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

// Parameter counts of the published checkpoints (the totals the Hugging
// Face model pages list). Qwen3-0.6B's and 1.7B's files also store a copy
// of the tied lm_head (751,632,384 and 2,031,739,904 on the Hub); their
// model cards' 0.6B (0.44B non-embedding) and 1.7B (1.4B) are the counts
// without it, which these are.
TEST(ReleasedPairsTest, PresetsHaveThePublishedParameterCounts) {
  const std::vector<std::pair<std::string, int64_t>> published = {
      {"qwen3-0.6b", 596049920},   {"qwen3-1.7b", 1720574976},
      {"qwen3-4b", 4022468096},    {"qwen3-8b", 8190735360},
      {"qwen2.5-0.5b", 494032768}, {"qwen2.5-1.5b", 1543714304},
      {"qwen2.5-7b", 7615616512},  {"llama-3.2-1b", 1235814400},
      {"gemma-3-1b", 999885952},   {"mistral-7b-v0.3", 7248023552},
  };
  for (const auto& [name, count] : published) {
    SCOPED_TRACE(name);
    auto config = PresetModelConfig(name);
    ASSERT_TRUE(config.ok()) << config.status();
    ASSERT_TRUE(ValidateModelConfig(*config).ok());
    int64_t params = 0;
    for (const WeightSpec& w : ExpectedWeights(*config)) {
      int64_t n = 1;
      for (int64_t d : w.shape) n *= d;
      params += n;
    }
    EXPECT_EQ(params, count);
  }
}

struct Pair {
  const char* receiver;
  const char* sharer;
};

// The released fusers (c2c-spec §3), named by their models.
const std::vector<Pair>& ReleasedPairs() {
  static const auto* pairs = new std::vector<Pair>{
      {"qwen3-0.6b", "qwen2.5-0.5b"}, {"qwen3-0.6b", "llama-3.2-1b"},
      {"qwen3-0.6b", "qwen2.5-1.5b"}, {"qwen3-0.6b", "qwen3-4b"},
      {"qwen3-1.7b", "qwen2.5-1.5b"}, {"qwen3-8b", "qwen2.5-7b"},
      {"qwen3-0.6b", "gemma-3-1b"},
  };
  return *pairs;
}

TEST(ReleasedPairsTest, AFuserForEachPairFitsItsModelsAndNoOtherSharer) {
  for (const Pair& pair : ReleasedPairs()) {
    SCOPED_TRACE(std::string(pair.receiver) + " <- " + pair.sharer);
    auto receiver = PresetModelConfig(pair.receiver);
    auto sharer = PresetModelConfig(pair.sharer);
    ASSERT_TRUE(receiver.ok() && sharer.ok());
    RandomFuserOptions o;
    o.args.source_dim = sharer->head_dim;
    o.args.source_num_heads = sharer->num_key_value_heads;
    o.args.target_dim = receiver->head_dim;
    o.args.target_num_heads = receiver->num_key_value_heads;
    // The projector's inner widths do not depend on the pair; small ones
    // keep the test fast.
    o.args.hidden_dim = 16;
    o.args.intermediate_dim = 16;
    o.receiver_layers = static_cast<int>(receiver->num_hidden_layers);
    o.sharer_layers = static_cast<int>(sharer->num_hidden_layers);
    auto checkpoint = MakeRandomFuserCheckpoint(o);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    FuserOptions fo;
    fo.receiver_layers = o.receiver_layers;
    fo.sharer_layers = o.sharer_layers;
    auto fuser = C2CFuser::FromCheckpoint(*checkpoint, fo);
    ASSERT_TRUE(fuser.ok()) << fuser.status();
    EXPECT_EQ(static_cast<int64_t>((*fuser)->FusedReceiverLayers().size()),
              receiver->num_hidden_layers);
    EXPECT_TRUE((*fuser)
                    ->CheckModels(o.receiver_layers,
                                  receiver->num_key_value_heads,
                                  receiver->head_dim, o.sharer_layers,
                                  sharer->num_key_value_heads, sharer->head_dim)
                    .ok());
    for (const Pair& other : ReleasedPairs()) {
      auto s = PresetModelConfig(other.sharer);
      ASSERT_TRUE(s.ok());
      if (s->num_key_value_heads * s->head_dim ==
              sharer->num_key_value_heads * sharer->head_dim &&
          s->num_key_value_heads == sharer->num_key_value_heads) {
        continue;  // Same KV shape: the fuser cannot tell them apart.
      }
      const absl::Status st = (*fuser)->CheckModels(
          o.receiver_layers, receiver->num_key_value_heads, receiver->head_dim,
          static_cast<int>(s->num_hidden_layers), s->num_key_value_heads,
          s->head_dim);
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument)
          << "sharer " << other.sharer;
    }
  }
}

}  // namespace
}  // namespace kvwire
