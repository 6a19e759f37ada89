// MistralForCausalLM (Mistral 7B v0.1-v0.3, Mistral-Nemo-style explicit
// head_dim): the Llama pre-norm layer without biases, with HF
// MistralConfig's defaults (rope_theta 10000, rms_norm_eps 1e-6, untied
// embeddings) and its sliding window: an integer sliding_window applies to
// every layer (MistralAttention passes config.sliding_window to each layer
// and the model builds a sliding-window causal mask), null means full
// attention (v0.2 / v0.3), an absent field the class default 4096 (v0.1).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/model/model_family.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

constexpr int64_t kDefaultSlidingWindow = 4096;

absl::Status ParseConfig(const nlohmann::json& j, absl::string_view source,
                         ModelConfig& c) {
  c.qkv_bias = c.o_bias = c.mlp_bias = false;
  return absl::OkStatus();
}

absl::Status FinishConfig(const nlohmann::json& j, absl::string_view source,
                          ModelConfig& c) {
  auto field = j.find("sliding_window");
  int64_t window = 0;
  if (field == j.end()) {
    window = kDefaultSlidingWindow;
  } else if (!field->is_null()) {
    ASSIGN_OR_RETURN(window, ReadConfigInt(j, source, "sliding_window", 0));
  }
  if (window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": field 'sliding_window' is negative"));
  }
  auto lt = j.find("layer_types");
  if (lt != j.end() && !lt->is_null()) return absl::OkStatus();
  SetLayerTypes(std::vector<std::string>(
                    c.num_hidden_layers,
                    window > 0 ? "sliding_attention" : "full_attention"),
                window, c);
  return absl::OkStatus();
}

void SetDefaults(ModelConfig& c) {
  c.rope.theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = false;
  // The class default window (v0.1); presets of later versions clear it.
  c.layers.assign(
      c.num_hidden_layers,
      LayerConfig{"sliding_attention", kDefaultSlidingWindow, c.rope});
}

void WriteConfig(const ModelConfig& c, nlohmann::json& j) {
  int64_t window = 0;
  for (const LayerConfig& layer : c.layers) {
    window = std::max(window, layer.sliding_window);
  }
  j["sliding_window"] = window > 0 ? nlohmann::json(window) : nlohmann::json();
}

}  // namespace

const ModelFamily& MistralFamily() {
  static const ModelFamily family{
      ModelArch::kMistral,       "MistralForCausalLM", "mistral",
      /*default_head_dim=*/0,    ParseConfig,          SetDefaults, WriteConfig,
      AppendPreNormLayerWeights, FinishConfig};
  return family;
}

}  // namespace kvwire
