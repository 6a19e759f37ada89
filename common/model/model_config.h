// Hugging Face decoder-only model configuration: parsed from a model
// directory's config.json (+ generation_config.json) and written back in the
// same format. Pure C++ (no Torch).
//
// Supported architectures: Qwen2ForCausalLM (q/k/v bias), Qwen3ForCausalLM
// (per-head q/k RMSNorm before RoPE, explicit head_dim), LlamaForCausalLM
// (optional "llama3" RoPE scaling, attention_bias, mlp_bias),
// MistralForCausalLM (Llama-shaped, optional sliding window on every layer)
// and Gemma3ForCausalLM (text-only Gemma 3: (1 + weight) RMSNorm, scaled
// embeddings, sandwich norms, q/k norm, gelu_pytorch_tanh, interleaved
// sliding / full layers with a RoPE each, logit soft-capping); each family's
// quirks live in models/<family>.cc (model_family.h). Both the
// transformers 4.x layout ("rope_theta" + "rope_scaling") and the 5.x layout
// ("rope_parameters", possibly keyed by layer type) are read.
//
// Attention settings live per layer (LayerConfig): sliding-window layers and
// a different RoPE per layer type (Gemma3). The decoder builds one RoPE
// table per distinct RopeConfig and one mask per sliding window.
#ifndef KVWIRE_COMMON_MODEL_MODEL_CONFIG_H_
#define KVWIRE_COMMON_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {

enum class ModelArch { kQwen2, kQwen3, kLlama, kMistral, kGemma3 };

enum class RopeType {
  kDefault,  // inv_freq = theta^(-2i/d).
  kLinear,   // inv_freq / factor.
  kLlama3,   // Llama 3.1 frequency-dependent scaling.
};

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  // kLinear and kLlama3.
  double factor = 1.0;
  // kLlama3 only.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;

  bool operator==(const RopeConfig& other) const;
  bool operator!=(const RopeConfig& other) const { return !(*this == other); }
};

// Attention settings of one decoder layer.
struct LayerConfig {
  // "full_attention" or "sliding_attention" (the HF layer_types names).
  std::string attention_type = "full_attention";
  // Keys further back than this many positions are masked (HF semantics: a
  // query at position i sees keys j with i - window < j <= i). 0: no window.
  int64_t sliding_window = 0;
  RopeConfig rope;
};

struct ModelConfig {
  ModelArch arch = ModelArch::kQwen3;
  std::string
      architecture;  // As written in config.json, e.g. "Qwen3ForCausalLM".
  std::string model_type;  // "qwen2", "qwen3", "llama".

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // Explicit or hidden_size / num_attention_heads.
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  // The gated MLP's activation: "silu" or "gelu_pytorch_tanh" (Gemma3's
  // hidden_activation).
  std::string hidden_act = "silu";

  // Linear-layer biases. Qwen2: q/k/v yes, o no. Llama/Qwen3: attention_bias
  // for all four. Llama: mlp_bias for gate/up/down.
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool qk_norm = false;  // Qwen3: q_norm / k_norm weights of size head_dim.

  // Gemma-style parts (Gemma3); the defaults are the Llama-style layer.
  // Every RMSNorm computes (x_fp32 * rsqrt(...)) * (1 + weight_fp32) and
  // casts the product back (HF Gemma3RMSNorm), instead of weight * cast(x).
  bool norm_plus_one = false;
  // Embeddings multiplied by sqrt(hidden_size), rounded to the model dtype
  // (HF Gemma3TextScaledWordEmbedding).
  bool scale_embeddings = false;
  // post_attention_layernorm on the attention output and
  // pre/post_feedforward_layernorm around the MLP (Gemma's sandwich).
  bool sandwich_norms = false;
  // Attention scale query_pre_attn_scalar^-0.5; 0: head_dim^-0.5.
  double query_pre_attn_scalar = 0;
  // cap * tanh(x / cap) on attention scores / final logits; 0: off.
  double attn_logit_softcapping = 0;
  double final_logit_softcapping = 0;

  RopeConfig rope;                  // The default (full-attention) RoPE.
  std::vector<LayerConfig> layers;  // num_hidden_layers entries.

  std::string torch_dtype;  // "bfloat16", ... as stored; informational.

  // From generation_config.json, else config.json. Empty if none.
  std::vector<int64_t> eos_token_ids;
  int64_t bos_token_id = -1;  // -1: none.
  int64_t pad_token_id = -1;

  int64_t num_query_groups() const {
    return num_key_value_heads > 0 ? num_attention_heads / num_key_value_heads
                                   : 0;
  }
};

// Parses config.json text (and generation_config.json text, which may be
// empty). `source` names the file in error messages. INVALID_ARGUMENT for
// malformed JSON, missing or inconsistent fields; UNIMPLEMENTED for an
// unsupported architecture, activation or RoPE type (the message names it).
absl::StatusOr<ModelConfig> ParseModelConfig(
    absl::string_view config_json, absl::string_view generation_config_json,
    absl::string_view source = "config.json");

// Reads <model_dir>/config.json and, when present,
// <model_dir>/generation_config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// Checks internal consistency (sizes positive, heads divisible, one
// LayerConfig per layer, ...).
absl::Status ValidateModelConfig(const ModelConfig& config);

// Fills `layers` with num_hidden_layers full-attention layers using `rope`.
void SetUniformLayers(ModelConfig& config);

// Returns a config with HF defaults for `arch` and the given sizes (layers
// uniform; head_dim 0 means hidden / heads).
ModelConfig MakeModelConfig(ModelArch arch, int64_t vocab_size,
                            int64_t hidden_size, int64_t intermediate_size,
                            int64_t num_layers, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim);

// Presets with the real models' shapes (config.json values of the
// released checkpoints) for every model of the released C2C pairs
// (c2c-spec §7): receivers "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b",
// "qwen3-8b"; sharers "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b" (the
// -Instruct variants have the same shapes; "-instruct" names are accepted),
// "qwen3-4b", "llama-3.2-1b", "gemma-3-1b"; plus "mistral-7b-v0.3".
// NOT_FOUND (listing them) otherwise.
absl::StatusOr<ModelConfig> PresetModelConfig(absl::string_view name);

// HF config.json / generation_config.json text (transformers 4.x layout, as on
// the Hub, which 5.x also reads).
std::string ModelConfigToJson(const ModelConfig& config);
std::string GenerationConfigToJson(const ModelConfig& config);

// "Qwen2ForCausalLM" / "qwen2" / "Qwen2" style names -> arch.
absl::StatusOr<ModelArch> ParseModelArch(absl::string_view name);
std::string ArchitectureName(ModelArch arch);  // "Qwen2ForCausalLM", ...
std::string ModelTypeName(ModelArch arch);     // "qwen2", ...

// One weight the decoder expects in the checkpoint.
struct WeightSpec {
  enum class Kind { kEmbedding, kLinear, kBias, kNorm };
  // Where the decoder keeps the tensor. Consecutive specs of one layer and
  // slot are concatenated along dim 0 in list order (q|k|v, gate|up), so the
  // decoder runs one projection where the checkpoint has several.
  enum class Slot {
    kEmbedding,
    kFinalNorm,
    kLmHead,
    kInputNorm,
    kPostNorm,
    kQkv,
    kQkvBias,
    kOut,
    kOutBias,
    kQNorm,
    kKNorm,
    kGateUp,
    kGateUpBias,
    kDown,
    kDownBias,
    kAttnOutNorm,  // Gemma's post_attention_layernorm (on the attention out).
    kMlpOutNorm,   // Gemma's post_feedforward_layernorm.
  };
  std::string name;  // HF name, e.g. "model.layers.0.self_attn.q_proj.weight".
  std::vector<int64_t> shape;
  Kind kind;
  Slot slot = Slot::kEmbedding;
  int64_t layer = -1;  // -1: not a decoder layer's.
};

// Every tensor a checkpoint of `config` must hold (lm_head.weight only when
// embeddings are not tied), in a stable order (the family's weight list,
// model_family.h).
std::vector<WeightSpec> ExpectedWeights(const ModelConfig& config);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_MODEL_CONFIG_H_
