#include "common/model/model_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

// Qwen3-0.6B's config.json as published (transformers 4.x layout).
constexpr char kQwen3Config[] = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

constexpr char kQwen3Generation[] = R"({
  "bos_token_id": 151643,
  "do_sample": true,
  "eos_token_id": [151645, 151643],
  "pad_token_id": 151643,
  "temperature": 0.6,
  "top_k": 20,
  "top_p": 0.95
})";

constexpr char kLlamaConfig[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "vocab_size": 128256
})";

TEST(ModelConfigTest, ParsesQwen3AsPublished) {
  auto c = ParseModelConfig(kQwen3Config, kQwen3Generation);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, ModelArch::kQwen3);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_NE(c->head_dim, c->hidden_size / c->num_attention_heads);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->num_query_groups(), 2);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c->rope.theta, 1e6);
  EXPECT_EQ(c->rope.type, RopeType::kDefault);
  ASSERT_EQ(c->layers.size(), 28u);
  EXPECT_EQ(c->layers[27].sliding_window, 0);
  // generation_config.json wins over config.json.
  EXPECT_THAT(c->eos_token_ids, ::testing::ElementsAre(151645, 151643));
  EXPECT_EQ(c->pad_token_id, 151643);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
}

TEST(ModelConfigTest, Qwen2AlwaysHasQkvBias) {
  const std::string json = R"({"architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "rope_theta": 1000000.0, "eos_token_id": 151645, "tie_word_embeddings": true,
    "use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 21})";
  auto c = ParseModelConfig(json, "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, ModelArch::kQwen2);
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->o_bias);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_THAT(c->eos_token_ids, ::testing::ElementsAre(151645));
  for (const LayerConfig& l : c->layers) EXPECT_EQ(l.sliding_window, 0);
}

TEST(ModelConfigTest, ParsesLlama3RopeScaling) {
  auto c = ParseModelConfig(kLlamaConfig, "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, ModelArch::kLlama);
  EXPECT_EQ(c->rope.type, RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope.factor, 32.0);
  EXPECT_DOUBLE_EQ(c->rope.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c->rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->layers[3].rope, c->rope);
  EXPECT_THAT(c->eos_token_ids, ::testing::ElementsAre(128001, 128008, 128009));
}

TEST(ModelConfigTest, ParsesTransformers5RopeParameters) {
  const std::string json = R"({"architectures": ["LlamaForCausalLM"],
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
    "dtype": "float32",
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0,
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 256}})";
  auto c = ParseModelConfig(json, "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.type, RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope.theta, 10000.0);
  EXPECT_EQ(c->rope.original_max_position_embeddings, 256);
  EXPECT_EQ(c->torch_dtype, "float32");
}

TEST(ModelConfigTest, PerLayerTypeRopeAndSlidingWindows) {
  // Gemma3-style layout: RoPE per layer type and explicit layer_types.
  const std::string json = R"({"architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
    "head_dim": 16, "sliding_window": 8,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "rope_parameters": {
      "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}})";
  auto c = ParseModelConfig(json, "");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->layers.size(), 3u);
  EXPECT_EQ(c->layers[0].sliding_window, 8);
  EXPECT_DOUBLE_EQ(c->layers[0].rope.theta, 10000.0);
  EXPECT_EQ(c->layers[2].sliding_window, 0);
  EXPECT_DOUBLE_EQ(c->layers[2].rope.theta, 1e6);
  EXPECT_DOUBLE_EQ(c->rope.theta, 1e6);
}

// google/gemma-3-1b-it's config.json (transformers 4.50 layout; c2c-spec
// §7): no layer_types, so HF derives them from sliding_window_pattern.
constexpr char kGemma3Config[] = R"({
  "architectures": ["Gemma3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": null,
  "bos_token_id": 2,
  "cache_implementation": "hybrid",
  "eos_token_id": [1, 106],
  "final_logit_softcapping": null,
  "head_dim": 256,
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 1152,
  "initializer_range": 0.02,
  "intermediate_size": 6912,
  "max_position_embeddings": 32768,
  "model_type": "gemma3_text",
  "num_attention_heads": 4,
  "num_hidden_layers": 26,
  "num_key_value_heads": 1,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06,
  "rope_local_base_freq": 10000,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": 512,
  "sliding_window_pattern": 6,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.50.0.dev0",
  "use_cache": true,
  "vocab_size": 262144
})";

TEST(ModelConfigTest, ParsesGemma3AsPublished) {
  auto c = ParseModelConfig(kGemma3Config, "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, ModelArch::kGemma3);
  EXPECT_EQ(c->architecture, "Gemma3ForCausalLM");
  EXPECT_EQ(c->head_dim, 256);
  EXPECT_EQ(c->hidden_act, "gelu_pytorch_tanh");
  EXPECT_TRUE(c->norm_plus_one && c->scale_embeddings && c->sandwich_norms);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_DOUBLE_EQ(c->query_pre_attn_scalar, 256);
  EXPECT_DOUBLE_EQ(c->attn_logit_softcapping, 0);
  EXPECT_DOUBLE_EQ(c->final_logit_softcapping, 0);
  EXPECT_TRUE(c->tie_word_embeddings);  // Gemma3TextConfig's default.
  ASSERT_EQ(c->layers.size(), 26u);
  for (int i = 0; i < 26; ++i) {
    const bool full = (i + 1) % 6 == 0;  // Layers 5, 11, 17, 23.
    SCOPED_TRACE(i);
    EXPECT_EQ(c->layers[i].attention_type,
              full ? "full_attention" : "sliding_attention");
    EXPECT_EQ(c->layers[i].sliding_window, full ? 0 : 512);
    EXPECT_DOUBLE_EQ(c->layers[i].rope.theta, full ? 1e6 : 1e4);
    EXPECT_EQ(c->layers[i].rope.type, RopeType::kDefault);
  }
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{1, 106}));

  // What the preset says is what the checkpoint says.
  auto preset = PresetModelConfig("gemma-3-1b");
  ASSERT_TRUE(preset.ok());
  EXPECT_EQ(preset->hidden_size, c->hidden_size);
  EXPECT_EQ(preset->intermediate_size, c->intermediate_size);
  EXPECT_EQ(preset->num_key_value_heads, c->num_key_value_heads);
  ASSERT_EQ(preset->layers.size(), c->layers.size());
  for (size_t i = 0; i < c->layers.size(); ++i) {
    EXPECT_EQ(preset->layers[i].sliding_window, c->layers[i].sliding_window);
    EXPECT_EQ(preset->layers[i].rope, c->layers[i].rope);
  }
  EXPECT_DOUBLE_EQ(preset->query_pre_attn_scalar, 256);

  // A round trip through the writer (the tiny-checkpoint tool's config).
  auto again = ParseModelConfig(ModelConfigToJson(*c), "");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->hidden_act, "gelu_pytorch_tanh");
  for (size_t i = 0; i < c->layers.size(); ++i) {
    EXPECT_EQ(again->layers[i].attention_type, c->layers[i].attention_type);
    EXPECT_EQ(again->layers[i].sliding_window, c->layers[i].sliding_window);
    EXPECT_EQ(again->layers[i].rope, c->layers[i].rope);
  }
}

TEST(ModelConfigTest, Gemma3Transformers5LayoutAndDefaults) {
  // 5.x: layer_types written out, RoPE per layer type (linear scaling on
  // the full layers, as Gemma-3-4B has), soft-capping on.
  const std::string json = R"({"architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 512, "sliding_window": 6, "final_logit_softcapping": 30.0,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    "rope_parameters": {
      "full_attention": {"rope_type": "linear", "factor": 8.0,
                         "rope_theta": 1000000.0},
      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}})";
  auto c = ParseModelConfig(json, "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 256);  // Gemma3TextConfig's default head_dim.
  EXPECT_DOUBLE_EQ(c->final_logit_softcapping, 30.0);
  EXPECT_EQ(c->layers[1].attention_type, "full_attention");
  EXPECT_EQ(c->layers[1].sliding_window, 0);
  EXPECT_EQ(c->layers[1].rope.type, RopeType::kLinear);
  EXPECT_DOUBLE_EQ(c->layers[1].rope.factor, 8.0);
  EXPECT_EQ(c->layers[2].sliding_window, 6);
  EXPECT_EQ(c->layers[2].rope.type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(c->layers[2].rope.theta, 10000.0);

  // Only the required fields: HF's defaults (window 4096, pattern 6, theta
  // 1e6 / 1e4, query_pre_attn_scalar 256).
  auto bare = ParseModelConfig(R"({"model_type": "gemma3_text",
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 7,
    "num_attention_heads": 4, "vocab_size": 512})",
                               "");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->layers[0].sliding_window, 4096);
  EXPECT_EQ(bare->layers[5].sliding_window, 0);
  EXPECT_EQ(bare->layers[6].sliding_window, 4096);
  EXPECT_DOUBLE_EQ(bare->layers[5].rope.theta, 1e6);
  EXPECT_DOUBLE_EQ(bare->layers[0].rope.theta, 1e4);
  EXPECT_DOUBLE_EQ(bare->query_pre_attn_scalar, 256);

  auto bidirectional = ParseModelConfig(R"({"model_type": "gemma3_text",
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "vocab_size": 512,
    "use_bidirectional_attention": true})",
                                        "");
  EXPECT_EQ(bidirectional.status().code(), absl::StatusCode::kUnimplemented);
}

TEST(ModelConfigTest, MistralSlidingWindowOnEveryLayer) {
  // Mistral-7B-v0.1 (window 4096) and v0.3 (null: none) shapes.
  const std::string v01 = R"({"architectures": ["MistralForCausalLM"],
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": false})";
  auto c = ParseModelConfig(v01, "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, ModelArch::kMistral);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_FALSE(c->qkv_bias);
  for (const LayerConfig& layer : c->layers) {
    EXPECT_EQ(layer.sliding_window, 4096);
  }
  std::string v03 = v01;
  const std::string window = "\"sliding_window\": 4096";
  v03.replace(v03.find(window), window.size(), "\"sliding_window\": null");
  c = ParseModelConfig(v03, "");
  ASSERT_TRUE(c.ok()) << c.status();
  for (const LayerConfig& layer : c->layers) {
    EXPECT_EQ(layer.sliding_window, 0);
  }
  auto preset = PresetModelConfig("mistral-7b-v0.3");
  ASSERT_TRUE(preset.ok());
  EXPECT_EQ(preset->vocab_size, 32768);
  EXPECT_EQ(preset->layers[0].sliding_window, 0);
  auto again = ParseModelConfig(ModelConfigToJson(*preset), "");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->layers[0].sliding_window, 0);
  EXPECT_DOUBLE_EQ(again->rope.theta, 1e6);
}

TEST(ModelConfigTest, PresetsOfTheReleasedC2CPairs) {
  struct Shape {
    const char* name;
    ModelArch arch;
    int64_t vocab, hidden, inter, layers, heads, kv_heads, head_dim;
    bool tied;
  };
  const Shape shapes[] = {
      {"qwen3-0.6b", ModelArch::kQwen3, 151936, 1024, 3072, 28, 16, 8, 128,
       true},
      {"qwen3-1.7b", ModelArch::kQwen3, 151936, 2048, 6144, 28, 16, 8, 128,
       true},
      {"qwen3-4b", ModelArch::kQwen3, 151936, 2560, 9728, 36, 32, 8, 128, true},
      {"qwen3-8b", ModelArch::kQwen3, 151936, 4096, 12288, 36, 32, 8, 128,
       false},
      {"qwen2.5-0.5b-instruct", ModelArch::kQwen2, 151936, 896, 4864, 24, 14, 2,
       64, true},
      {"qwen2.5-1.5b", ModelArch::kQwen2, 151936, 1536, 8960, 28, 12, 2, 128,
       true},
      {"qwen2.5-7b-instruct", ModelArch::kQwen2, 152064, 3584, 18944, 28, 28, 4,
       128, false},
      {"llama-3.2-1b", ModelArch::kLlama, 128256, 2048, 8192, 16, 32, 8, 64,
       true},
      {"gemma-3-1b", ModelArch::kGemma3, 262144, 1152, 6912, 26, 4, 1, 256,
       true},
      {"mistral-7b-v0.3", ModelArch::kMistral, 32768, 4096, 14336, 32, 32, 8,
       128, false},
  };
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.name);
    auto c = PresetModelConfig(s.name);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->arch, s.arch);
    EXPECT_EQ(c->vocab_size, s.vocab);
    EXPECT_EQ(c->hidden_size, s.hidden);
    EXPECT_EQ(c->intermediate_size, s.inter);
    EXPECT_EQ(c->num_hidden_layers, s.layers);
    EXPECT_EQ(c->num_attention_heads, s.heads);
    EXPECT_EQ(c->num_key_value_heads, s.kv_heads);
    EXPECT_EQ(c->head_dim, s.head_dim);
    EXPECT_EQ(c->tie_word_embeddings, s.tied);
    EXPECT_TRUE(ValidateModelConfig(*c).ok());
  }
  auto llama = PresetModelConfig("llama-3.2-1b");
  EXPECT_EQ(llama->rope.type, RopeType::kLlama3);
  EXPECT_EQ(llama->layers[0].rope, llama->rope);
  auto unknown = PresetModelConfig("gpt-2");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("gemma-3-1b"));
}

TEST(ModelConfigTest, UnknownArchitectureIsNamed) {
  const std::string json = R"({"architectures": ["MambaForCausalLM"],
    "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 10})";
  auto c = ParseModelConfig(json, "", "/models/mamba/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(c.status().message(), HasSubstr("MambaForCausalLM"));
  EXPECT_THAT(c.status().message(), HasSubstr("/models/mamba/config.json"));
}

TEST(ModelConfigTest, RejectsUnsupportedFeatures) {
  std::string json = kLlamaConfig;
  json.replace(json.find("\"llama3\""), 8, "\"yarn\"");
  auto c = ParseModelConfig(json, "");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("yarn"));

  std::string gelu = kQwen3Config;
  gelu.replace(gelu.find("\"silu\""), 6, "\"gelu\"");
  c = ParseModelConfig(gelu, "");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("gelu"));
}

TEST(ModelConfigTest, RejectsMalformedInput) {
  EXPECT_FALSE(ParseModelConfig("{not json", "").ok());
  EXPECT_FALSE(ParseModelConfig("[]", "").ok());
  auto c = ParseModelConfig(R"({"architectures": ["Qwen3ForCausalLM"]})", "");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("vocab_size"));
  c = ParseModelConfig(R"({"architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 16})",
                       "");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("num_key_value_heads"));
  c = ParseModelConfig(kQwen3Config, "{\"eos_token_id\": \"x\"}");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("eos_token_id"));
}

TEST(ModelConfigTest, JsonRoundTrip) {
  for (const char* preset : {"qwen3-0.6b", "qwen2.5-0.5b", "llama-3.2-1b"}) {
    auto c = PresetModelConfig(preset);
    ASSERT_TRUE(c.ok()) << c.status();
    auto back =
        ParseModelConfig(ModelConfigToJson(*c), GenerationConfigToJson(*c));
    ASSERT_TRUE(back.ok()) << preset << ": " << back.status();
    EXPECT_EQ(back->arch, c->arch);
    EXPECT_EQ(back->hidden_size, c->hidden_size);
    EXPECT_EQ(back->head_dim, c->head_dim);
    EXPECT_EQ(back->num_key_value_heads, c->num_key_value_heads);
    EXPECT_EQ(back->qkv_bias, c->qkv_bias);
    EXPECT_EQ(back->qk_norm, c->qk_norm);
    EXPECT_EQ(back->tie_word_embeddings, c->tie_word_embeddings);
    EXPECT_EQ(back->rope, c->rope);
    EXPECT_EQ(back->eos_token_ids, c->eos_token_ids);
    EXPECT_EQ(back->bos_token_id, c->bos_token_id);
    EXPECT_EQ(back->layers.size(), c->layers.size());
  }
}

TEST(ModelConfigTest, ExpectedWeightsFollowArchitecture) {
  auto qwen2 = MakeModelConfig(ModelArch::kQwen2, 32, 16, 32, 2, 4, 2, 0);
  qwen2.tie_word_embeddings = true;
  auto qwen3 = MakeModelConfig(ModelArch::kQwen3, 32, 16, 32, 2, 4, 2, 8);
  auto llama = MakeModelConfig(ModelArch::kLlama, 32, 16, 32, 2, 4, 2, 0);
  llama.tie_word_embeddings = false;
  auto names = [](const ModelConfig& c) {
    std::vector<std::string> out;
    for (const WeightSpec& s : ExpectedWeights(c)) out.push_back(s.name);
    return out;
  };
  using ::testing::Contains;
  using ::testing::Not;
  EXPECT_THAT(names(qwen2), Contains("model.layers.1.self_attn.k_proj.bias"));
  EXPECT_THAT(names(qwen2),
              Not(Contains("model.layers.1.self_attn.o_proj.bias")));
  EXPECT_THAT(names(qwen2), Not(Contains("lm_head.weight")));
  EXPECT_THAT(names(qwen3), Contains("model.layers.0.self_attn.q_norm.weight"));
  EXPECT_THAT(names(llama), Contains("lm_head.weight"));
  for (const WeightSpec& s : ExpectedWeights(qwen3)) {
    if (s.name == "model.layers.0.self_attn.q_proj.weight") {
      EXPECT_EQ(s.shape, (std::vector<int64_t>{32, 16}));  // 4 heads x 8.
    }
  }
}

}  // namespace
}  // namespace kvwire
