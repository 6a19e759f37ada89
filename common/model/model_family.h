// Model families: what tells one decoder-only architecture from another
// (its config.json quirks, its config class's HF defaults, the weights its
// checkpoints hold), one file per family under models/, in the manner of
// llama.cpp's src/models/*.cpp, plus the registry that maps architecture
// names to families. The compute is shared: every family runs the one
// transformer layer of layers.h, whose optional parts (linear biases, q/k
// RMSNorm, the RoPE variant) follow from the config and from the weights the
// family lists. Pure C++ (no Torch); internal to kvwire_model.
//
// A new family is a ModelArch value, a models/<name>.cc defining
// <Name>Family() from the shared blocks below, and one line in the registry
// (model_family.cc).
#ifndef KVWIRE_COMMON_MODEL_MODEL_FAMILY_H_
#define KVWIRE_COMMON_MODEL_MODEL_FAMILY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/model/model_config.h"
#include "nlohmann/json_fwd.hpp"

namespace kvwire {

// One architecture. Plain function pointers: a family is a constant table.
struct ModelFamily {
  ModelArch arch;
  const char* architecture;  // config.json "architectures"[0].
  const char* model_type;    // config.json "model_type".
  // head_dim when config.json has none; 0: hidden_size / num_attention_heads.
  int64_t default_head_dim;
  // Reads the family's own config.json fields into `c` (linear biases, q/k
  // norm, ...). INVALID_ARGUMENT naming `source` and the field.
  absl::Status (*parse_config)(const nlohmann::json& j,
                               absl::string_view source, ModelConfig& c);
  // The family config class's defaults (MakeModelConfig).
  void (*set_defaults)(ModelConfig& c);
  // Writes the family's own config.json fields.
  void (*write_config)(const ModelConfig& c, nlohmann::json& j);
  // Appends the weights of decoder layer `layer`, in checkpoint order.
  void (*layer_weights)(const ModelConfig& c, int64_t layer,
                        std::vector<WeightSpec>& out);
  // Optional (null: none): runs after the shared parser has built the
  // per-layer settings (layer_types, sliding windows, RoPE per layer type),
  // for families whose config class derives them differently (Gemma3's
  // sliding_window_pattern and rope_local_base_freq, Mistral's window on
  // every layer). INVALID_ARGUMENT naming `source` and the field.
  absl::Status (*finish_config)(const nlohmann::json& j,
                                absl::string_view source, ModelConfig& c);
  // Families that share one tokenizer under embeddings padded to different
  // sizes name it alike (Qwen2 and Qwen3: "qwen"; Qwen2.5-7B has 152064 rows,
  // Qwen3 151936, over the same 151,669 tokens). Null: a vocabulary is known
  // to be shared only when the sizes are equal.
  const char* shared_tokenizer = nullptr;
};

// Whether a model of family `a` with `a_vocab_size` embedding rows and one of
// family `b` with `b_vocab_size` rows read the same token ids.
bool ReadSameTokenIds(const ModelFamily& a, int64_t a_vocab_size,
                      const ModelFamily& b, int64_t b_vocab_size);

// Every ModelArch has a family.
const ModelFamily& GetModelFamily(ModelArch arch);
// By architecture ("Qwen2ForCausalLM") or model type ("qwen2"), ignoring
// case. UNIMPLEMENTED naming the supported architectures otherwise.
absl::StatusOr<const ModelFamily*> FindModelFamily(absl::string_view name);

// The families (models/*.cc).
const ModelFamily& Qwen2Family();
const ModelFamily& Qwen3Family();
const ModelFamily& LlamaFamily();
const ModelFamily& MistralFamily();
const ModelFamily& Gemma3Family();

// Shared blocks of the weight lists. HF names; `prefix` is the layer's
// ("model.layers.3.").
struct AttentionWeightOptions {
  bool qkv_bias = false;
  bool o_bias = false;
  bool qk_norm = false;  // Per-head q_norm / k_norm of head_dim.
};
// self_attn.{q,k,v}_proj (fused into one QKV projection when loaded),
// o_proj and the optional biases and q/k norms.
void AppendAttentionWeights(const ModelConfig& c, int64_t layer,
                            const AttentionWeightOptions& options,
                            std::vector<WeightSpec>& out);
// mlp.{gate,up}_proj (fused when loaded) and mlp.down_proj, optional biases.
void AppendGatedMlpWeights(const ModelConfig& c, int64_t layer, bool bias,
                           std::vector<WeightSpec>& out);
// The pre-norm layer of Llama-style models: input_layernorm, attention,
// post_attention_layernorm, gated MLP, the biases and norms as the config's
// flags say.
void AppendPreNormLayerWeights(const ModelConfig& c, int64_t layer,
                               std::vector<WeightSpec>& out);

// Gemma3's layer: input_layernorm, attention with q/k norms,
// post_attention_layernorm (attention output), pre_feedforward_layernorm,
// gated MLP, post_feedforward_layernorm.
void AppendSandwichLayerWeights(const ModelConfig& c, int64_t layer,
                                std::vector<WeightSpec>& out);

// config.json helpers for families (defined in model_config.cc).
// An integer field; `fallback` when absent or null.
absl::StatusOr<int64_t> ReadConfigInt(const nlohmann::json& j,
                                      absl::string_view source,
                                      const char* field, int64_t fallback);
// A number field; `fallback` when absent or null.
absl::StatusOr<double> ReadConfigDouble(const nlohmann::json& j,
                                        absl::string_view source,
                                        const char* field, double fallback);
// A string field; `fallback` when absent or null.
absl::StatusOr<std::string> ReadConfigString(const nlohmann::json& j,
                                             absl::string_view source,
                                             const char* field,
                                             const std::string& fallback);
// Whether config.json has rope_parameters keyed by layer type (5.x), whose
// per-type RoPE the shared parser has already applied to the layers.
bool HasPerLayerTypeRope(const nlohmann::json& j);
// Sets layer i's type to types[i] (sliding layers get `window`, others 0).
void SetLayerTypes(const std::vector<std::string>& types, int64_t window,
                   ModelConfig& c);
// A boolean field; `fallback` when absent or null.
absl::StatusOr<bool> ReadConfigBool(const nlohmann::json& j,
                                    absl::string_view source, const char* field,
                                    bool fallback);
// attention_bias, one switch for the biases of q/k/v and o_proj (Llama-style
// configs), into qkv_bias and o_bias.
absl::Status ReadAttentionBias(const nlohmann::json& j,
                               absl::string_view source, ModelConfig& c);
// use_sliding_window, sliding_window, max_window_layers and layer_types, as
// Qwen2/Qwen3 configs carry them.
void WriteSlidingWindowConfig(const ModelConfig& c, nlohmann::json& j);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_MODEL_FAMILY_H_
