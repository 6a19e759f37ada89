#include "common/model/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/model/model_family.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

using Json = nlohmann::json;

constexpr int64_t kMaxDim = int64_t{1} << 24;

absl::Status FieldError(absl::string_view source, absl::string_view field,
                        absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": field '", field, "' ", what));
}

// The field's value; null when absent or null (both mean "use the
// default" in HF configs).
const Json* FindField(const Json& j, const char* field) {
  auto it = j.find(field);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

// Integer field; `fallback` when absent or null (nullopt: required).
absl::StatusOr<int64_t> GetInt(const Json& j, absl::string_view source,
                               const char* field,
                               std::optional<int64_t> fallback) {
  const Json* it = FindField(j, field);
  if (it == nullptr) {
    if (fallback.has_value()) return *fallback;
    return FieldError(source, field, "is missing");
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (std::floor(v) == v && std::fabs(v) < 9e15) return int64_t(v);
  }
  return FieldError(source, field, "is not an integer");
}

absl::StatusOr<double> GetDouble(const Json& j, absl::string_view source,
                                 const char* field,
                                 std::optional<double> fallback) {
  const Json* it = FindField(j, field);
  if (it == nullptr) {
    if (fallback.has_value()) return *fallback;
    return FieldError(source, field, "is missing");
  }
  if (it->is_number()) return it->get<double>();
  return FieldError(source, field, "is not a number");
}

absl::StatusOr<bool> GetBool(const Json& j, absl::string_view source,
                             const char* field, bool fallback) {
  const Json* it = FindField(j, field);
  if (it == nullptr) return fallback;
  if (it->is_boolean()) return it->get<bool>();
  return FieldError(source, field, "is not a boolean");
}

absl::StatusOr<std::string> GetString(const Json& j, absl::string_view source,
                                      const char* field,
                                      const std::string& fallback) {
  const Json* it = FindField(j, field);
  if (it == nullptr) return fallback;
  if (it->is_string()) return it->get<std::string>();
  return FieldError(source, field, "is not a string");
}

// An id field that may be absent, null, an int or a list of ints.
absl::StatusOr<std::vector<int64_t>> GetIdList(const Json& j,
                                               absl::string_view source,
                                               const char* field) {
  std::vector<int64_t> ids;
  const Json* it = FindField(j, field);
  if (it == nullptr) return ids;
  if (it->is_number_integer()) {
    ids.push_back(it->get<int64_t>());
    return ids;
  }
  if (it->is_array()) {
    for (const Json& v : *it) {
      if (!v.is_number_integer()) {
        return FieldError(source, field, "holds a non-integer");
      }
      ids.push_back(v.get<int64_t>());
    }
    return ids;
  }
  return FieldError(source, field, "is neither an integer nor a list");
}

// Parses one RoPE parameter object (a 4.x rope_scaling object, or a 5.x
// rope_parameters object which also carries rope_theta). `theta` is the
// fallback for objects without rope_theta.
absl::StatusOr<RopeConfig> ParseRope(const Json& j, absl::string_view source,
                                     absl::string_view what, double theta) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": '", what, "' is not an object"));
  }
  RopeConfig rope;
  ASSIGN_OR_RETURN(rope.theta, GetDouble(j, source, "rope_theta", theta));
  ASSIGN_OR_RETURN(std::string type, GetString(j, source, "rope_type", ""));
  if (type.empty()) {
    ASSIGN_OR_RETURN(type, GetString(j, source, "type", "default"));
  }
  ASSIGN_OR_RETURN(double partial,
                   GetDouble(j, source, "partial_rotary_factor", 1.0));
  if (partial != 1.0) {
    return absl::UnimplementedError(absl::StrCat(
        source, ": partial_rotary_factor ", partial, " is not supported"));
  }
  if (type == "default") {
    rope.type = RopeType::kDefault;
  } else if (type == "linear") {
    rope.type = RopeType::kLinear;
    ASSIGN_OR_RETURN(rope.factor, GetDouble(j, source, "factor", std::nullopt));
  } else if (type == "llama3") {
    rope.type = RopeType::kLlama3;
    ASSIGN_OR_RETURN(rope.factor, GetDouble(j, source, "factor", std::nullopt));
    ASSIGN_OR_RETURN(rope.low_freq_factor,
                     GetDouble(j, source, "low_freq_factor", std::nullopt));
    ASSIGN_OR_RETURN(rope.high_freq_factor,
                     GetDouble(j, source, "high_freq_factor", std::nullopt));
    ASSIGN_OR_RETURN(
        rope.original_max_position_embeddings,
        GetInt(j, source, "original_max_position_embeddings", std::nullopt));
    if (!(rope.high_freq_factor > rope.low_freq_factor) ||
        rope.low_freq_factor <= 0 ||
        rope.original_max_position_embeddings <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": inconsistent llama3 rope parameters"));
    }
  } else {
    return absl::UnimplementedError(absl::StrCat(
        source, ": RoPE type '", type,
        "' is not supported (supported: ", "default, linear, llama3)"));
  }
  if (!(rope.theta > 0) || !(rope.factor > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": rope_theta and factor must be positive"));
  }
  return rope;
}

Json RopeToJson(const RopeConfig& rope) {
  Json j = Json::object();
  switch (rope.type) {
    case RopeType::kDefault:
      return Json();  // null
    case RopeType::kLinear:
      j["rope_type"] = "linear";
      j["factor"] = rope.factor;
      return j;
    case RopeType::kLlama3:
      j["rope_type"] = "llama3";
      j["factor"] = rope.factor;
      j["low_freq_factor"] = rope.low_freq_factor;
      j["high_freq_factor"] = rope.high_freq_factor;
      j["original_max_position_embeddings"] =
          rope.original_max_position_embeddings;
      return j;
  }
  return Json();
}

}  // namespace

bool RopeConfig::operator==(const RopeConfig& o) const {
  return type == o.type && theta == o.theta && factor == o.factor &&
         low_freq_factor == o.low_freq_factor &&
         high_freq_factor == o.high_freq_factor &&
         original_max_position_embeddings == o.original_max_position_embeddings;
}

absl::StatusOr<ModelArch> ParseModelArch(absl::string_view name) {
  ASSIGN_OR_RETURN(const ModelFamily* family, FindModelFamily(name));
  return family->arch;
}

std::string ArchitectureName(ModelArch arch) {
  return GetModelFamily(arch).architecture;
}

std::string ModelTypeName(ModelArch arch) {
  return GetModelFamily(arch).model_type;
}

absl::StatusOr<bool> ReadConfigBool(const Json& j, absl::string_view source,
                                    const char* field, bool fallback) {
  return GetBool(j, source, field, fallback);
}

absl::StatusOr<int64_t> ReadConfigInt(const Json& j, absl::string_view source,
                                      const char* field, int64_t fallback) {
  return GetInt(j, source, field, fallback);
}

absl::StatusOr<double> ReadConfigDouble(const Json& j, absl::string_view source,
                                        const char* field, double fallback) {
  return GetDouble(j, source, field, fallback);
}

absl::StatusOr<std::string> ReadConfigString(const Json& j,
                                             absl::string_view source,
                                             const char* field,
                                             const std::string& fallback) {
  return GetString(j, source, field, fallback);
}

bool HasPerLayerTypeRope(const Json& j) {
  const Json* rp = FindField(j, "rope_parameters");
  return rp != nullptr && rp->is_object() && !rp->empty() &&
         std::all_of(rp->begin(), rp->end(),
                     [](const Json& v) { return v.is_object(); });
}

void SetLayerTypes(const std::vector<std::string>& types, int64_t window,
                   ModelConfig& c) {
  c.layers.resize(types.size(), LayerConfig{"full_attention", 0, c.rope});
  for (size_t i = 0; i < types.size(); ++i) {
    c.layers[i].attention_type = types[i];
    c.layers[i].sliding_window = types[i] == "sliding_attention" ? window : 0;
  }
}

absl::Status ReadAttentionBias(const Json& j, absl::string_view source,
                               ModelConfig& c) {
  ASSIGN_OR_RETURN(const bool bias,
                   GetBool(j, source, "attention_bias", false));
  c.qkv_bias = c.o_bias = bias;
  return absl::OkStatus();
}

void WriteSlidingWindowConfig(const ModelConfig& c, Json& j) {
  bool any_sliding = false;
  int64_t window = 0;
  Json layer_types = Json::array();
  for (const LayerConfig& layer : c.layers) {
    layer_types.push_back(layer.attention_type);
    if (layer.sliding_window > 0) {
      any_sliding = true;
      window = layer.sliding_window;
    }
  }
  j["use_sliding_window"] = any_sliding;
  j["sliding_window"] = any_sliding ? Json(window) : Json();
  j["max_window_layers"] = c.num_hidden_layers;
  j["layer_types"] = layer_types;
}

void SetUniformLayers(ModelConfig& config) {
  config.layers.assign(std::max<int64_t>(config.num_hidden_layers, 0),
                       LayerConfig{"full_attention", 0, config.rope});
}

absl::Status ValidateModelConfig(const ModelConfig& c) {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat(c.architecture, " config: ", what));
  };
  auto in_range = [](int64_t v) { return v > 0 && v <= kMaxDim; };
  if (!in_range(c.vocab_size)) return bad("vocab_size out of range");
  if (!in_range(c.hidden_size)) return bad("hidden_size out of range");
  if (!in_range(c.intermediate_size)) {
    return bad("intermediate_size out of range");
  }
  if (!in_range(c.num_hidden_layers) || c.num_hidden_layers > 4096) {
    return bad("num_hidden_layers out of range");
  }
  if (!in_range(c.num_attention_heads)) {
    return bad("num_attention_heads out of range");
  }
  if (!in_range(c.num_key_value_heads)) {
    return bad("num_key_value_heads out of range");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return bad(absl::StrCat("num_attention_heads ", c.num_attention_heads,
                            " is not a multiple of num_key_value_heads ",
                            c.num_key_value_heads));
  }
  if (!in_range(c.head_dim) || c.head_dim % 2 != 0) {
    return bad("head_dim must be positive and even");
  }
  if (!(c.rms_norm_eps > 0)) return bad("rms_norm_eps must be positive");
  if (c.hidden_act != "silu" && c.hidden_act != "gelu_pytorch_tanh") {
    return absl::UnimplementedError(absl::StrCat(
        c.architecture, " config: hidden_act '", c.hidden_act,
        "' is not supported (supported: silu, gelu_pytorch_tanh)"));
  }
  if (c.query_pre_attn_scalar < 0 || c.attn_logit_softcapping < 0 ||
      c.final_logit_softcapping < 0) {
    return bad("negative query_pre_attn_scalar or logit soft-capping");
  }
  if (static_cast<int64_t>(c.layers.size()) != c.num_hidden_layers) {
    return bad(absl::StrCat("has ", c.layers.size(), " layer entries for ",
                            c.num_hidden_layers, " layers"));
  }
  for (const LayerConfig& layer : c.layers) {
    if (layer.sliding_window < 0) return bad("negative sliding_window");
    if (layer.attention_type != "full_attention" &&
        layer.attention_type != "sliding_attention") {
      return absl::UnimplementedError(
          absl::StrCat(c.architecture, " config: layer type '",
                       layer.attention_type, "' is not supported"));
    }
  }
  for (int64_t id : c.eos_token_ids) {
    if (id < 0) return bad("negative eos_token_id");
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(
    absl::string_view config_json, absl::string_view generation_config_json,
    absl::string_view source) {
  const Json j = Json::parse(config_json.begin(), config_json.end(), nullptr,
                             /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not a JSON object"));
  }
  ModelConfig c;
  std::string arch_name;
  auto archs = j.find("architectures");
  if (archs != j.end() && archs->is_array() && !archs->empty()) {
    if (!(*archs)[0].is_string()) {
      return FieldError(source, "architectures", "holds a non-string");
    }
    arch_name = (*archs)[0].get<std::string>();
  }
  ASSIGN_OR_RETURN(c.model_type, GetString(j, source, "model_type", ""));
  if (arch_name.empty()) {
    if (c.model_type.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": neither 'architectures' nor 'model_type' is set"));
    }
    arch_name = c.model_type;
  }
  {
    auto arch = ParseModelArch(arch_name);
    if (!arch.ok()) {
      return absl::Status(arch.status().code(),
                          absl::StrCat(source, ": ", arch.status().message()));
    }
    c.arch = *arch;
  }
  c.architecture = ArchitectureName(c.arch);
  if (c.model_type.empty()) c.model_type = ModelTypeName(c.arch);

  ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, source, "vocab_size", std::nullopt));
  ASSIGN_OR_RETURN(c.hidden_size,
                   GetInt(j, source, "hidden_size", std::nullopt));
  ASSIGN_OR_RETURN(c.intermediate_size,
                   GetInt(j, source, "intermediate_size", std::nullopt));
  ASSIGN_OR_RETURN(c.num_hidden_layers,
                   GetInt(j, source, "num_hidden_layers", std::nullopt));
  ASSIGN_OR_RETURN(c.num_attention_heads,
                   GetInt(j, source, "num_attention_heads", std::nullopt));
  ASSIGN_OR_RETURN(
      c.num_key_value_heads,
      GetInt(j, source, "num_key_value_heads", c.num_attention_heads));
  const ModelFamily& family = GetModelFamily(c.arch);
  const int64_t default_head_dim =
      family.default_head_dim > 0 ? family.default_head_dim
      : c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads
                                  : 0;
  ASSIGN_OR_RETURN(c.head_dim, GetInt(j, source, "head_dim", default_head_dim));
  ASSIGN_OR_RETURN(c.rms_norm_eps, GetDouble(j, source, "rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(c.max_position_embeddings,
                   GetInt(j, source, "max_position_embeddings", 0));
  ASSIGN_OR_RETURN(c.tie_word_embeddings,
                   GetBool(j, source, "tie_word_embeddings", false));
  ASSIGN_OR_RETURN(c.hidden_act, GetString(j, source, "hidden_act", "silu"));
  ASSIGN_OR_RETURN(c.torch_dtype, GetString(j, source, "torch_dtype", ""));
  if (c.torch_dtype.empty()) {
    ASSIGN_OR_RETURN(c.torch_dtype, GetString(j, source, "dtype", ""));
  }

  RETURN_IF_ERROR(family.parse_config(j, source, c));

  // RoPE: 5.x "rope_parameters" (flat, or keyed by layer type), else 4.x
  // "rope_theta" + "rope_scaling".
  ASSIGN_OR_RETURN(double theta, GetDouble(j, source, "rope_theta", 10000.0));
  std::vector<std::pair<std::string, RopeConfig>> per_type_rope;
  auto rp = j.find("rope_parameters");
  if (rp != j.end() && !rp->is_null()) {
    if (!rp->is_object()) {
      return FieldError(source, "rope_parameters", "is not an object");
    }
    const bool keyed_by_type =
        !rp->empty() && std::all_of(rp->begin(), rp->end(), [](const Json& v) {
          return v.is_object();
        });
    if (keyed_by_type) {
      for (auto it = rp->begin(); it != rp->end(); ++it) {
        ASSIGN_OR_RETURN(
            RopeConfig r,
            ParseRope(it.value(), source,
                      absl::StrCat("rope_parameters.", it.key()), theta));
        per_type_rope.emplace_back(it.key(), r);
      }
      c.rope = per_type_rope.front().second;
      for (const auto& [type, r] : per_type_rope) {
        if (type == "full_attention") c.rope = r;
      }
    } else {
      ASSIGN_OR_RETURN(c.rope,
                       ParseRope(*rp, source, "rope_parameters", theta));
    }
  } else {
    auto rs = j.find("rope_scaling");
    if (rs != j.end() && !rs->is_null()) {
      ASSIGN_OR_RETURN(c.rope, ParseRope(*rs, source, "rope_scaling", theta));
    } else {
      c.rope.theta = theta;
    }
  }

  // Per-layer attention types.
  ASSIGN_OR_RETURN(bool use_sliding,
                   GetBool(j, source, "use_sliding_window", false));
  ASSIGN_OR_RETURN(int64_t sliding_window,
                   GetInt(j, source, "sliding_window", 0));
  ASSIGN_OR_RETURN(int64_t max_window_layers,
                   GetInt(j, source, "max_window_layers", c.num_hidden_layers));
  std::vector<std::string> layer_types;
  auto lt = j.find("layer_types");
  if (lt != j.end() && !lt->is_null()) {
    if (!lt->is_array()) {
      return FieldError(source, "layer_types", "is not a list");
    }
    for (const Json& v : *lt) {
      if (!v.is_string()) {
        return FieldError(source, "layer_types", "holds a non-string");
      }
      layer_types.push_back(v.get<std::string>());
    }
    if (static_cast<int64_t>(layer_types.size()) != c.num_hidden_layers) {
      return FieldError(source, "layer_types",
                        "does not have num_hidden_layers entries");
    }
  } else if (c.num_hidden_layers > 0 && c.num_hidden_layers <= kMaxDim) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layer_types.push_back(use_sliding && sliding_window > 0 &&
                                    i >= max_window_layers
                                ? "sliding_attention"
                                : "full_attention");
    }
  }
  c.layers.clear();
  for (const std::string& type : layer_types) {
    LayerConfig layer;
    layer.attention_type = type;
    layer.rope = c.rope;
    for (const auto& [rope_type, r] : per_type_rope) {
      if (rope_type == type) layer.rope = r;
    }
    if (type == "sliding_attention") {
      if (sliding_window <= 0) {
        return FieldError(source, "sliding_window",
                          "must be positive for sliding_attention layers");
      }
      layer.sliding_window = sliding_window;
    }
    c.layers.push_back(layer);
  }
  if (family.finish_config != nullptr) {
    RETURN_IF_ERROR(family.finish_config(j, source, c));
  }

  // Special tokens: generation_config.json wins over config.json.
  ASSIGN_OR_RETURN(c.eos_token_ids, GetIdList(j, source, "eos_token_id"));
  ASSIGN_OR_RETURN(c.bos_token_id, GetInt(j, source, "bos_token_id", -1));
  ASSIGN_OR_RETURN(c.pad_token_id, GetInt(j, source, "pad_token_id", -1));
  if (!generation_config_json.empty()) {
    const std::string gsource = "generation_config.json";
    const Json g = Json::parse(generation_config_json.begin(),
                               generation_config_json.end(), nullptr, false);
    if (g.is_discarded() || !g.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(gsource, ": not a JSON object"));
    }
    ASSIGN_OR_RETURN(std::vector<int64_t> eos,
                     GetIdList(g, gsource, "eos_token_id"));
    if (g.contains("eos_token_id")) c.eos_token_ids = eos;
    ASSIGN_OR_RETURN(c.bos_token_id,
                     GetInt(g, gsource, "bos_token_id", c.bos_token_id));
    ASSIGN_OR_RETURN(c.pad_token_id,
                     GetInt(g, gsource, "pad_token_id", c.pad_token_id));
  }

  absl::Status valid = ValidateModelConfig(c);
  if (!valid.ok()) {
    return absl::Status(valid.code(),
                        absl::StrCat(source, ": ", valid.message()));
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string config_path = model_dir + "/config.json";
  ASSIGN_OR_RETURN(std::string config_text, ReadFileToString(config_path));
  std::string gen_text;
  auto gen = ReadFileToString(model_dir + "/generation_config.json");
  if (gen.ok()) gen_text = std::move(*gen);
  return ParseModelConfig(config_text, gen_text, config_path);
}

ModelConfig MakeModelConfig(ModelArch arch, int64_t vocab_size,
                            int64_t hidden_size, int64_t intermediate_size,
                            int64_t num_layers, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim) {
  ModelConfig c;
  c.arch = arch;
  c.architecture = ArchitectureName(arch);
  c.model_type = ModelTypeName(arch);
  c.vocab_size = vocab_size;
  c.hidden_size = hidden_size;
  c.intermediate_size = intermediate_size;
  c.num_hidden_layers = num_layers;
  c.num_attention_heads = num_heads;
  c.num_key_value_heads = num_kv_heads;
  c.head_dim =
      head_dim > 0 ? head_dim : (num_heads > 0 ? hidden_size / num_heads : 0);
  c.max_position_embeddings = 32768;
  c.torch_dtype = "bfloat16";
  c.layers.clear();
  GetModelFamily(arch).set_defaults(c);
  // Families with per-layer defaults (Gemma3's layer types) set the layers
  // themselves.
  if (static_cast<int64_t>(c.layers.size()) != num_layers) SetUniformLayers(c);
  return c;
}

absl::StatusOr<ModelConfig> PresetModelConfig(absl::string_view name) {
  // Shapes of the released checkpoints' config.json files (c2c-spec §7 and
  // the HF config copies named in docs/MODELS.md). Qwen 2.5 "-Instruct"
  // checkpoints have the base models' shapes.
  std::string lower = absl::AsciiStrToLower(name);
  absl::string_view lower_view = lower;
  if (absl::StartsWith(lower_view, "qwen2.5-")) {
    absl::ConsumeSuffix(&lower_view, "-instruct");
  }
  lower = std::string(lower_view);
  auto qwen3 = [](int64_t hidden, int64_t inter, int64_t layers, int64_t heads,
                  bool tied) {
    ModelConfig c = MakeModelConfig(ModelArch::kQwen3, 151936, hidden, inter,
                                    layers, heads, 8, 128);
    c.max_position_embeddings = 40960;
    c.tie_word_embeddings = tied;
    c.bos_token_id = 151643;
    c.eos_token_ids = {151645, 151643};
    return c;
  };
  auto qwen25 = [](int64_t vocab, int64_t hidden, int64_t inter, int64_t layers,
                   int64_t heads, int64_t kv_heads, bool tied) {
    ModelConfig c = MakeModelConfig(ModelArch::kQwen2, vocab, hidden, inter,
                                    layers, heads, kv_heads, 0);
    c.max_position_embeddings = 32768;
    c.tie_word_embeddings = tied;
    c.bos_token_id = 151643;
    c.eos_token_ids = {151645, 151643};
    return c;
  };
  ModelConfig c;
  if (lower == "qwen3-0.6b") {
    c = qwen3(1024, 3072, 28, 16, true);
  } else if (lower == "qwen3-1.7b") {
    c = qwen3(2048, 6144, 28, 16, true);
  } else if (lower == "qwen3-4b") {
    c = qwen3(2560, 9728, 36, 32, true);
  } else if (lower == "qwen3-8b") {
    c = qwen3(4096, 12288, 36, 32, false);
  } else if (lower == "qwen2.5-0.5b") {
    c = qwen25(151936, 896, 4864, 24, 14, 2, true);
  } else if (lower == "qwen2.5-1.5b") {
    c = qwen25(151936, 1536, 8960, 28, 12, 2, true);
  } else if (lower == "qwen2.5-7b") {
    c = qwen25(152064, 3584, 18944, 28, 28, 4, false);
  } else if (lower == "llama-3.2-1b") {
    c = MakeModelConfig(ModelArch::kLlama, 128256, 2048, 8192, 16, 32, 8, 64);
    c.max_position_embeddings = 131072;
    c.tie_word_embeddings = true;
    c.rope = RopeConfig{RopeType::kLlama3, 500000.0, 32.0, 1.0, 4.0, 8192};
    SetUniformLayers(c);
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001, 128008, 128009};
  } else if (lower == "gemma-3-1b" || lower == "gemma-3-1b-it") {
    // Layer types (5 sliding : 1 full), windows and RoPEs: Gemma3's
    // defaults (models/gemma3.cc) for sliding_window 512.
    c = MakeModelConfig(ModelArch::kGemma3, 262144, 1152, 6912, 26, 4, 1, 256);
    c.max_position_embeddings = 32768;
    for (LayerConfig& layer : c.layers) {
      if (layer.sliding_window > 0) layer.sliding_window = 512;
    }
    c.bos_token_id = 2;
    c.eos_token_ids = {1, 106};
    c.pad_token_id = 0;
  } else if (lower == "mistral-7b-v0.3") {
    c = MakeModelConfig(ModelArch::kMistral, 32768, 4096, 14336, 32, 32, 8,
                        128);
    c.max_position_embeddings = 32768;
    c.rope.theta = 1000000.0;
    c.rms_norm_eps = 1e-5;
    SetUniformLayers(c);  // sliding_window null: no window.
    c.bos_token_id = 1;
    c.eos_token_ids = {2};
  } else {
    return absl::NotFoundError(absl::StrCat(
        "unknown preset '", name,
        "' (known: qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, qwen2.5-0.5b, "
        "qwen2.5-1.5b, qwen2.5-7b (also -instruct), llama-3.2-1b, gemma-3-1b, "
        "mistral-7b-v0.3)"));
  }
  return c;
}

std::string ModelConfigToJson(const ModelConfig& c) {
  Json j = Json::object();
  j["architectures"] = Json::array(
      {c.architecture.empty() ? ArchitectureName(c.arch) : c.architecture});
  j["model_type"] = c.model_type.empty() ? ModelTypeName(c.arch) : c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["hidden_act"] = c.hidden_act;
  j["rope_theta"] = c.rope.theta;
  j["rope_scaling"] = RopeToJson(c.rope);
  j["torch_dtype"] = c.torch_dtype.empty() ? "bfloat16" : c.torch_dtype;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  j["attention_dropout"] = 0.0;
  GetModelFamily(c.arch).write_config(c, j);
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else if (!c.eos_token_ids.empty()) {
    j["eos_token_id"] = c.eos_token_ids;
  }
  if (c.pad_token_id >= 0) j["pad_token_id"] = c.pad_token_id;
  return j.dump(2) + "\n";
}

std::string GenerationConfigToJson(const ModelConfig& c) {
  Json j = Json::object();
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else if (!c.eos_token_ids.empty()) {
    j["eos_token_id"] = c.eos_token_ids;
  }
  if (c.pad_token_id >= 0) j["pad_token_id"] = c.pad_token_id;
  j["do_sample"] = false;
  return j.dump(2) + "\n";
}

}  // namespace kvwire
