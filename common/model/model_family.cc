// The model family registry (architecture name -> family) and the weight
// blocks families build their weight lists from. Each family's own choices
// live in models/<family>.cc.
#include "common/model/model_family.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvwire {
namespace {

// Registry order is the order error messages list architectures in.
absl::Span<const ModelFamily* const> Families() {
  static const ModelFamily* const kFamilies[] = {
      &Qwen2Family(),   &Qwen3Family(),  &LlamaFamily(),
      &MistralFamily(), &Gemma3Family(),
  };
  return kFamilies;
}

std::string LayerPrefix(int64_t layer) {
  return absl::StrCat("model.layers.", layer, ".");
}

}  // namespace

const ModelFamily& GetModelFamily(ModelArch arch) {
  for (const ModelFamily* family : Families()) {
    if (family->arch == arch) return *family;
  }
  // Every ModelArch value is registered; reaching here is a build mistake.
  return *Families().front();
}

absl::StatusOr<const ModelFamily*> FindModelFamily(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const ModelFamily* family : Families()) {
    if (lower == absl::AsciiStrToLower(family->architecture) ||
        lower == family->model_type) {
      return family;
    }
  }
  return absl::UnimplementedError(absl::StrCat(
      "unsupported architecture '", name, "' (supported: ",
      absl::StrJoin(Families(), ", ",
                    [](std::string* out, const ModelFamily* family) {
                      out->append(family->architecture);
                    }),
      ")"));
}

bool ReadSameTokenIds(const ModelFamily& a, int64_t a_vocab_size,
                      const ModelFamily& b, int64_t b_vocab_size) {
  if (a_vocab_size == b_vocab_size) return true;
  return a.shared_tokenizer != nullptr && b.shared_tokenizer != nullptr &&
         absl::string_view(a.shared_tokenizer) == b.shared_tokenizer;
}

void AppendAttentionWeights(const ModelConfig& c, int64_t layer,
                            const AttentionWeightOptions& options,
                            std::vector<WeightSpec>& out) {
  using Kind = WeightSpec::Kind;
  using Slot = WeightSpec::Slot;
  const std::string p = LayerPrefix(layer) + "self_attn.";
  const int64_t h = c.hidden_size;
  const int64_t q_out = c.num_attention_heads * c.head_dim;
  const int64_t kv_out = c.num_key_value_heads * c.head_dim;
  out.push_back(
      {p + "q_proj.weight", {q_out, h}, Kind::kLinear, Slot::kQkv, layer});
  out.push_back(
      {p + "k_proj.weight", {kv_out, h}, Kind::kLinear, Slot::kQkv, layer});
  out.push_back(
      {p + "v_proj.weight", {kv_out, h}, Kind::kLinear, Slot::kQkv, layer});
  if (options.qkv_bias) {
    out.push_back(
        {p + "q_proj.bias", {q_out}, Kind::kBias, Slot::kQkvBias, layer});
    out.push_back(
        {p + "k_proj.bias", {kv_out}, Kind::kBias, Slot::kQkvBias, layer});
    out.push_back(
        {p + "v_proj.bias", {kv_out}, Kind::kBias, Slot::kQkvBias, layer});
  }
  out.push_back(
      {p + "o_proj.weight", {h, q_out}, Kind::kLinear, Slot::kOut, layer});
  if (options.o_bias) {
    out.push_back({p + "o_proj.bias", {h}, Kind::kBias, Slot::kOutBias, layer});
  }
  if (options.qk_norm) {
    out.push_back(
        {p + "q_norm.weight", {c.head_dim}, Kind::kNorm, Slot::kQNorm, layer});
    out.push_back(
        {p + "k_norm.weight", {c.head_dim}, Kind::kNorm, Slot::kKNorm, layer});
  }
}

void AppendGatedMlpWeights(const ModelConfig& c, int64_t layer, bool bias,
                           std::vector<WeightSpec>& out) {
  using Kind = WeightSpec::Kind;
  using Slot = WeightSpec::Slot;
  const std::string p = LayerPrefix(layer) + "mlp.";
  const int64_t h = c.hidden_size;
  const int64_t inter = c.intermediate_size;
  out.push_back({p + "gate_proj.weight",
                 {inter, h},
                 Kind::kLinear,
                 Slot::kGateUp,
                 layer});
  out.push_back(
      {p + "up_proj.weight", {inter, h}, Kind::kLinear, Slot::kGateUp, layer});
  out.push_back(
      {p + "down_proj.weight", {h, inter}, Kind::kLinear, Slot::kDown, layer});
  if (bias) {
    out.push_back(
        {p + "gate_proj.bias", {inter}, Kind::kBias, Slot::kGateUpBias, layer});
    out.push_back(
        {p + "up_proj.bias", {inter}, Kind::kBias, Slot::kGateUpBias, layer});
    out.push_back(
        {p + "down_proj.bias", {h}, Kind::kBias, Slot::kDownBias, layer});
  }
}

void AppendPreNormLayerWeights(const ModelConfig& c, int64_t layer,
                               std::vector<WeightSpec>& out) {
  using Kind = WeightSpec::Kind;
  using Slot = WeightSpec::Slot;
  const std::string p = LayerPrefix(layer);
  out.push_back({p + "input_layernorm.weight",
                 {c.hidden_size},
                 Kind::kNorm,
                 Slot::kInputNorm,
                 layer});
  AppendAttentionWeights(
      c, layer, AttentionWeightOptions{c.qkv_bias, c.o_bias, c.qk_norm}, out);
  out.push_back({p + "post_attention_layernorm.weight",
                 {c.hidden_size},
                 Kind::kNorm,
                 Slot::kPostNorm,
                 layer});
  AppendGatedMlpWeights(c, layer, c.mlp_bias, out);
}

void AppendSandwichLayerWeights(const ModelConfig& c, int64_t layer,
                                std::vector<WeightSpec>& out) {
  using Kind = WeightSpec::Kind;
  using Slot = WeightSpec::Slot;
  const std::string p = LayerPrefix(layer);
  auto norm = [&](const char* name, Slot slot) {
    out.push_back(
        {p + name + ".weight", {c.hidden_size}, Kind::kNorm, slot, layer});
  };
  norm("input_layernorm", Slot::kInputNorm);
  AppendAttentionWeights(
      c, layer, AttentionWeightOptions{c.qkv_bias, c.o_bias, c.qk_norm}, out);
  norm("post_attention_layernorm", Slot::kAttnOutNorm);
  // The norm in front of the MLP: the slot Llama's post_attention_layernorm
  // fills.
  norm("pre_feedforward_layernorm", Slot::kPostNorm);
  norm("post_feedforward_layernorm", Slot::kMlpOutNorm);
  AppendGatedMlpWeights(c, layer, c.mlp_bias, out);
}

std::vector<WeightSpec> ExpectedWeights(const ModelConfig& c) {
  using Kind = WeightSpec::Kind;
  using Slot = WeightSpec::Slot;
  const ModelFamily& family = GetModelFamily(c.arch);
  std::vector<WeightSpec> specs;
  specs.push_back({"model.embed_tokens.weight",
                   {c.vocab_size, c.hidden_size},
                   Kind::kEmbedding,
                   Slot::kEmbedding});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    family.layer_weights(c, i, specs);
  }
  specs.push_back(
      {"model.norm.weight", {c.hidden_size}, Kind::kNorm, Slot::kFinalNorm});
  if (!c.tie_word_embeddings) {
    specs.push_back({"lm_head.weight",
                     {c.vocab_size, c.hidden_size},
                     Kind::kLinear,
                     Slot::kLmHead});
  }
  return specs;
}

}  // namespace kvwire
