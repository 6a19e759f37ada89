// Qwen3ForCausalLM: the pre-norm Llama layer plus a per-head RMSNorm on
// queries and keys (q_norm / k_norm of head_dim, applied before RoPE), an
// explicit head_dim (128 when config.json omits it, as Qwen3Config does),
// optional attention_bias on all four projections, and the Qwen
// sliding-window layer settings.
#include "common/model/model_family.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

absl::Status ParseConfig(const nlohmann::json& j, absl::string_view source,
                         ModelConfig& c) {
  RETURN_IF_ERROR(ReadAttentionBias(j, source, c));
  c.qk_norm = true;
  return absl::OkStatus();
}

void SetDefaults(ModelConfig& c) {
  c.qk_norm = true;
  c.rope.theta = 1000000.0;
  c.rms_norm_eps = 1e-6;
}

void WriteConfig(const ModelConfig& c, nlohmann::json& j) {
  j["attention_bias"] = c.qkv_bias;
  WriteSlidingWindowConfig(c, j);
}

}  // namespace

const ModelFamily& Qwen3Family() {
  static const ModelFamily family{ModelArch::kQwen3,
                                  "Qwen3ForCausalLM",
                                  "qwen3",
                                  /*default_head_dim=*/128,
                                  ParseConfig,
                                  SetDefaults,
                                  WriteConfig,
                                  AppendPreNormLayerWeights,
                                  /*finish_config=*/nullptr,
                                  /*shared_tokenizer=*/"qwen"};
  return family;
}

}  // namespace kvwire
