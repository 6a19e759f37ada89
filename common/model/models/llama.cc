// LlamaForCausalLM (Llama 2/3.x): the reference pre-norm layer. Quirks:
// attention_bias on all four attention projections and mlp_bias on
// gate/up/down (both off by default), the Llama 3.1 "llama3" RoPE scaling
// (rope_scaling / rope_parameters; layers.cc InvFreq applies it), RoPE theta
// 500000 and rms_norm_eps 1e-5 in the defaults, no sliding-window layers.
#include "common/model/model_family.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

absl::Status ParseConfig(const nlohmann::json& j, absl::string_view source,
                         ModelConfig& c) {
  RETURN_IF_ERROR(ReadAttentionBias(j, source, c));
  ASSIGN_OR_RETURN(c.mlp_bias, ReadConfigBool(j, source, "mlp_bias", false));
  return absl::OkStatus();
}

void SetDefaults(ModelConfig& c) {
  c.rope.theta = 500000.0;
  c.rms_norm_eps = 1e-5;
}

void WriteConfig(const ModelConfig& c, nlohmann::json& j) {
  j["attention_bias"] = c.qkv_bias;
  j["mlp_bias"] = c.mlp_bias;
}

}  // namespace

const ModelFamily& LlamaFamily() {
  static const ModelFamily family{
      ModelArch::kLlama,         "LlamaForCausalLM", "llama",
      /*default_head_dim=*/0,    ParseConfig,        SetDefaults, WriteConfig,
      AppendPreNormLayerWeights,
      /*finish_config=*/nullptr};
  return family;
}

}  // namespace kvwire
