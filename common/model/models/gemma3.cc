// Gemma3ForCausalLM (model_type "gemma3_text": Gemma 3 1B and the text
// stack of the larger Gemma 3 models), following HF's Gemma3TextConfig and
// modeling_gemma3.py:
//   - every RMSNorm is Gemma3RMSNorm: x_fp32 * rsqrt(mean(x^2) + eps) *
//     (1 + weight_fp32), cast back once (ModelConfig::norm_plus_one);
//   - embeddings times sqrt(hidden_size), the scale rounded to the model
//     dtype first (Gemma3TextScaledWordEmbedding);
//   - the sandwich layer: input_layernorm, attention with per-head q_norm /
//     k_norm before RoPE, post_attention_layernorm on the attention output,
//     pre_feedforward_layernorm, gated MLP with gelu_pytorch_tanh
//     (hidden_activation), post_feedforward_layernorm;
//   - attention scale query_pre_attn_scalar^-0.5 (default 256), optional
//     attn_logit_softcapping / final_logit_softcapping (null in Gemma 3);
//   - layer_types from config.json or, as the config class derives them,
//     sliding_window_pattern (default 6): layer i slides unless (i + 1) is a
//     multiple of the pattern; sliding_window defaults to 4096;
//   - sliding layers use RoPE theta rope_local_base_freq (default 10000, no
//     scaling), full layers rope_theta (default 1e6) with rope_scaling; the
//     5.x layout (rope_parameters keyed by layer type) is read by the shared
//     parser;
//   - tie_word_embeddings defaults to true, head_dim to 256.
#include "absl/strings/str_cat.h"
#include "common/model/model_family.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

constexpr int64_t kDefaultSlidingWindow = 4096;
constexpr int64_t kDefaultSlidingWindowPattern = 6;
constexpr double kDefaultGlobalTheta = 1000000.0;
constexpr double kDefaultLocalTheta = 10000.0;
constexpr double kDefaultQueryPreAttnScalar = 256.0;

void SetGemmaLayerFlags(ModelConfig& c) {
  c.qk_norm = true;
  c.norm_plus_one = true;
  c.scale_embeddings = true;
  c.sandwich_norms = true;
}

// HF's derivation of layer_types from sliding_window_pattern.
std::vector<std::string> PatternLayerTypes(int64_t layers, int64_t pattern) {
  std::vector<std::string> types;
  for (int64_t i = 0; i < layers; ++i) {
    types.push_back((i + 1) % pattern != 0 ? "sliding_attention"
                                           : "full_attention");
  }
  return types;
}

// Sliding layers get the local RoPE (no scaling), full layers the global.
void SetLayerRopes(double local_theta, ModelConfig& c) {
  RopeConfig local;
  local.theta = local_theta;
  for (LayerConfig& layer : c.layers) {
    layer.rope = layer.attention_type == "sliding_attention" ? local : c.rope;
  }
}

absl::Status ParseConfig(const nlohmann::json& j, absl::string_view source,
                         ModelConfig& c) {
  RETURN_IF_ERROR(ReadAttentionBias(j, source, c));
  SetGemmaLayerFlags(c);
  // Gemma3's MLP reads hidden_activation; a hidden_act field is ignored by
  // the config class, so it is here too.
  ASSIGN_OR_RETURN(
      c.hidden_act,
      ReadConfigString(j, source, "hidden_activation", "gelu_pytorch_tanh"));
  ASSIGN_OR_RETURN(c.query_pre_attn_scalar,
                   ReadConfigDouble(j, source, "query_pre_attn_scalar",
                                    kDefaultQueryPreAttnScalar));
  ASSIGN_OR_RETURN(c.attn_logit_softcapping,
                   ReadConfigDouble(j, source, "attn_logit_softcapping", 0));
  ASSIGN_OR_RETURN(c.final_logit_softcapping,
                   ReadConfigDouble(j, source, "final_logit_softcapping", 0));
  ASSIGN_OR_RETURN(c.tie_word_embeddings,
                   ReadConfigBool(j, source, "tie_word_embeddings", true));
  ASSIGN_OR_RETURN(
      const bool bidirectional,
      ReadConfigBool(j, source, "use_bidirectional_attention", false));
  if (bidirectional) {
    return absl::UnimplementedError(
        absl::StrCat(source,
                     ": use_bidirectional_attention (EmbeddingGemma) is not "
                     "supported by a causal decoder"));
  }
  return absl::OkStatus();
}

absl::Status FinishConfig(const nlohmann::json& j, absl::string_view source,
                          ModelConfig& c) {
  ASSIGN_OR_RETURN(
      const int64_t window,
      ReadConfigInt(j, source, "sliding_window", kDefaultSlidingWindow));
  ASSIGN_OR_RETURN(const int64_t pattern,
                   ReadConfigInt(j, source, "sliding_window_pattern",
                                 kDefaultSlidingWindowPattern));
  if (window <= 0 || pattern <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        source,
        ": sliding_window and sliding_window_pattern must be positive"));
  }
  std::vector<std::string> types;
  auto lt = j.find("layer_types");
  if (lt != j.end() && !lt->is_null()) {
    for (const LayerConfig& layer : c.layers) {
      types.push_back(layer.attention_type);
    }
  } else {
    types = PatternLayerTypes(c.num_hidden_layers, pattern);
  }
  double local_theta = kDefaultLocalTheta;
  if (HasPerLayerTypeRope(j)) {
    // 5.x: the shared parser took the full layers' RoPE (c.rope) from
    // rope_parameters.full_attention; the sliding layers' is a plain RoPE.
    auto sliding = j["rope_parameters"].find("sliding_attention");
    if (sliding != j["rope_parameters"].end()) {
      ASSIGN_OR_RETURN(
          const std::string type,
          ReadConfigString(*sliding, source, "rope_type", "default"));
      if (type != "default") {
        return absl::UnimplementedError(absl::StrCat(
            source, ": RoPE type '", type,
            "' on sliding layers is not supported (Gemma3 uses default)"));
      }
      ASSIGN_OR_RETURN(
          local_theta,
          ReadConfigDouble(*sliding, source, "rope_theta", kDefaultLocalTheta));
    }
  } else {
    // 4.x (or a flat rope_parameters): rope_theta (+ rope_scaling) for
    // full layers, rope_local_base_freq for sliding ones.
    // The shared parser's fallback theta is Llama's 10000; Gemma3's is 1e6.
    auto theta = j.find("rope_theta");
    auto params = j.find("rope_parameters");
    if ((theta == j.end() || theta->is_null()) &&
        (params == j.end() || !params->is_object() ||
         !params->contains("rope_theta"))) {
      c.rope.theta = kDefaultGlobalTheta;
    }
    ASSIGN_OR_RETURN(local_theta,
                     ReadConfigDouble(j, source, "rope_local_base_freq",
                                      kDefaultLocalTheta));
  }
  SetLayerTypes(types, window, c);
  SetLayerRopes(local_theta, c);
  return absl::OkStatus();
}

void SetDefaults(ModelConfig& c) {
  SetGemmaLayerFlags(c);
  c.hidden_act = "gelu_pytorch_tanh";
  c.query_pre_attn_scalar = kDefaultQueryPreAttnScalar;
  c.tie_word_embeddings = true;
  c.rope.theta = kDefaultGlobalTheta;
  c.rms_norm_eps = 1e-6;
  SetLayerTypes(
      PatternLayerTypes(c.num_hidden_layers, kDefaultSlidingWindowPattern),
      kDefaultSlidingWindow, c);
  SetLayerRopes(kDefaultLocalTheta, c);
}

void WriteConfig(const ModelConfig& c, nlohmann::json& j) {
  j.erase("hidden_act");
  j["hidden_activation"] = c.hidden_act;
  j["attention_bias"] = c.qkv_bias;
  j["query_pre_attn_scalar"] = c.query_pre_attn_scalar;
  j["attn_logit_softcapping"] = c.attn_logit_softcapping > 0
                                    ? nlohmann::json(c.attn_logit_softcapping)
                                    : nlohmann::json();
  j["final_logit_softcapping"] = c.final_logit_softcapping > 0
                                     ? nlohmann::json(c.final_logit_softcapping)
                                     : nlohmann::json();
  int64_t window = kDefaultSlidingWindow;
  double local_theta = kDefaultLocalTheta;
  nlohmann::json layer_types = nlohmann::json::array();
  for (const LayerConfig& layer : c.layers) {
    layer_types.push_back(layer.attention_type);
    if (layer.sliding_window > 0) {
      window = layer.sliding_window;
      local_theta = layer.rope.theta;
    }
  }
  j["sliding_window"] = window;
  j["layer_types"] = layer_types;
  j["rope_local_base_freq"] = local_theta;
}

}  // namespace

const ModelFamily& Gemma3Family() {
  static const ModelFamily family{ModelArch::kGemma3,
                                  "Gemma3ForCausalLM",
                                  "gemma3_text",
                                  /*default_head_dim=*/256,
                                  ParseConfig,
                                  SetDefaults,
                                  WriteConfig,
                                  AppendSandwichLayerWeights,
                                  FinishConfig};
  return family;
}

}  // namespace kvwire
