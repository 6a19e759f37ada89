// Qwen2ForCausalLM (Qwen2, Qwen2.5): the pre-norm Llama layer with biased
// q/k/v projections. HF's Qwen2Attention hard-codes those biases (and an
// unbiased o_proj), so config.json has no switch for them. Sliding-window
// layers come from use_sliding_window / max_window_layers / layer_types
// (parsed for every family in model_config.cc).
#include "common/model/model_family.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

absl::Status ParseConfig(const nlohmann::json& j, absl::string_view source,
                         ModelConfig& c) {
  // attention_bias does not apply to Qwen2, but a malformed one is still an
  // error, as for any field.
  RETURN_IF_ERROR(ReadConfigBool(j, source, "attention_bias", false).status());
  c.qkv_bias = true;
  c.o_bias = false;
  return absl::OkStatus();
}

void SetDefaults(ModelConfig& c) {
  c.qkv_bias = true;
  c.rope.theta = 1000000.0;
  c.rms_norm_eps = 1e-6;
}

void WriteConfig(const ModelConfig& c, nlohmann::json& j) {
  WriteSlidingWindowConfig(c, j);
}

}  // namespace

const ModelFamily& Qwen2Family() {
  static const ModelFamily family{ModelArch::kQwen2,
                                  "Qwen2ForCausalLM",
                                  "qwen2",
                                  /*default_head_dim=*/0,
                                  ParseConfig,
                                  SetDefaults,
                                  WriteConfig,
                                  AppendPreNormLayerWeights,
                                  /*finish_config=*/nullptr,
                                  /*shared_tokenizer=*/"qwen"};
  return family;
}

}  // namespace kvwire
