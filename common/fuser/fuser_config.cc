#include "common/fuser/fuser_config.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/codec/layer_schedule.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

using Json = nlohmann::json;

absl::Status Bad(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

absl::StatusOr<Json> ParseJson(absl::string_view text,
                               absl::string_view source) {
  Json j = Json::parse(text.begin(), text.end(), nullptr,
                       /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad(source, "malformed JSON");
  return j;
}

// An integer-valued JSON number (3 or 3.0).
absl::StatusOr<int64_t> GetInt(const Json& v, absl::string_view source,
                               absl::string_view name) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) {
      return static_cast<int64_t>(d);
    }
  }
  return Bad(source,
             absl::StrCat("\"", name, "\" must be an integer, got ", v.dump()));
}

absl::StatusOr<double> GetDouble(const Json& v, absl::string_view source,
                                 absl::string_view name) {
  if (v.is_number()) return v.get<double>();
  return Bad(source,
             absl::StrCat("\"", name, "\" must be a number, got ", v.dump()));
}

// "torch.bfloat16" / "bfloat16" / {"__type__": "torch.dtype", "value": ...}.
absl::StatusOr<std::string> GetDtypeName(const Json& v,
                                         absl::string_view source) {
  std::string name;
  if (v.is_string()) {
    name = v.get<std::string>();
  } else if (v.is_object() && v.contains("value") && v["value"].is_string()) {
    name = v["value"].get<std::string>();
  } else {
    return Bad(source, absl::StrCat("unreadable dtype ", v.dump()));
  }
  absl::string_view n = name;
  absl::ConsumePrefix(&n, "torch.");
  static const std::map<std::string, std::string>* const kCanonical =
      new std::map<std::string, std::string>{
          {"bfloat16", "bfloat16"}, {"float32", "float32"},
          {"float", "float32"},     {"float16", "float16"},
          {"half", "float16"},      {"float64", "float64"},
          {"double", "float64"}};
  auto it = kCanonical->find(std::string(n));
  if (it == kCanonical->end()) {
    return Bad(source, absl::StrCat("unsupported dtype \"", name, "\""));
  }
  return it->second;
}

absl::StatusOr<int> ParseLayerNumber(absl::string_view key,
                                     absl::string_view source) {
  int value = 0;
  if (!absl::SimpleAtoi(key, &value) || value < 0) {
    return Bad(source, absl::StrCat("layer key \"", key,
                                    "\" is not a non-negative integer"));
  }
  return value;
}

}  // namespace

bool C2CProjectorArgs::operator==(const C2CProjectorArgs& o) const {
  return source_dim == o.source_dim && target_dim == o.target_dim &&
         source_num_heads == o.source_num_heads &&
         target_num_heads == o.target_num_heads &&
         intermediate_dim == o.intermediate_dim && hidden_dim == o.hidden_dim &&
         num_layers == o.num_layers && dropout == o.dropout &&
         initial_temperature == o.initial_temperature &&
         final_temperature == o.final_temperature &&
         anneal_steps == o.anneal_steps && dtype == o.dtype;
}

C2CProjectorArgs ReleasedQwen3Qwen25Args() {
  C2CProjectorArgs a;
  a.source_dim = 64;
  a.target_dim = 128;
  a.source_num_heads = 2;
  a.target_num_heads = 8;
  a.hidden_dim = 1024;
  a.intermediate_dim = 1024;
  a.num_layers = 3;
  a.dropout = 0.1;
  a.initial_temperature = 1.0;
  a.final_temperature = 0.001;
  a.anneal_steps = 1929;
  a.dtype = "bfloat16";
  return a;
}

absl::StatusOr<std::string> PresetHuggingFaceId(absl::string_view preset) {
  // The same names (and -instruct / -it spellings) PresetModelConfig takes.
  static constexpr std::pair<const char*, const char*> kIds[] = {
      {"qwen3-0.6b", "Qwen/Qwen3-0.6B"},
      {"qwen3-1.7b", "Qwen/Qwen3-1.7B"},
      {"qwen3-4b", "Qwen/Qwen3-4B"},
      {"qwen3-8b", "Qwen/Qwen3-8B"},
      {"qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct"},
      {"qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct"},
      {"qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct"},
      {"llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct"},
      {"gemma-3-1b", "google/gemma-3-1b-it"},
      {"mistral-7b-v0.3", "mistralai/Mistral-7B-Instruct-v0.3"},
  };
  std::string lower = absl::AsciiStrToLower(preset);
  absl::string_view name = lower;
  if (absl::StartsWith(name, "qwen2.5-")) {
    absl::ConsumeSuffix(&name, "-instruct");
  } else if (absl::StartsWith(name, "gemma-")) {
    absl::ConsumeSuffix(&name, "-it");
  }
  std::vector<std::string> known;
  for (const auto& [key, id] : kIds) {
    if (name == key) return std::string(id);
    known.push_back(key);
  }
  return absl::NotFoundError(
      absl::StrCat("unknown model preset '", preset,
                   "' (known: ", absl::StrJoin(known, ", "), ")"));
}

absl::Status ValidateProjectorArgs(const C2CProjectorArgs& a) {
  constexpr int64_t kMax = int64_t{1} << 24;
  const std::pair<const char*, int64_t> sizes[] = {
      {"source_dim", a.source_dim},
      {"target_dim", a.target_dim},
      {"source_num_heads", a.source_num_heads},
      {"target_num_heads", a.target_num_heads},
      {"hidden_dim", a.hidden_dim},
      {"intermediate_dim", a.intermediate_dim}};
  for (const auto& [name, value] : sizes) {
    if (value <= 0 || value > kMax) {
      return absl::InvalidArgumentError(absl::StrCat(
          "C2CProjector: ", name, " must be in [1, ", kMax, "], got ", value));
    }
  }
  if (a.in_dim() > kMax || a.out_dim() > kMax) {
    return absl::InvalidArgumentError("C2CProjector: heads * dim too large");
  }
  if (a.num_layers < 3 || a.num_layers > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "C2CProjector: num_layers must be in [3, 1024], got ", a.num_layers));
  }
  return absl::OkStatus();
}

absl::StatusOr<C2CProjectorArgs> ParseProjectorJson(absl::string_view text,
                                                    absl::string_view source) {
  ASSIGN_OR_RETURN(Json j, ParseJson(text, source));
  if (!j.is_object()) return Bad(source, "expected a JSON object");
  auto cls = j.find("class");
  if (cls == j.end() || !cls->is_string()) {
    return Bad(source, "missing \"class\"");
  }
  if (absl::AsciiStrToLower(cls->get<std::string>()) != "c2cprojector") {
    return absl::UnimplementedError(
        absl::StrCat(source, ": projector class \"", cls->get<std::string>(),
                     "\" is not supported (only C2CProjector)"));
  }
  auto init = j.find("init_args");
  if (init == j.end() || !init->is_object()) {
    return Bad(source, "missing \"init_args\" object");
  }
  C2CProjectorArgs a;
  bool has_source = false, has_target = false;
  for (auto it = init->begin(); it != init->end(); ++it) {
    const std::string& k = it.key();
    const Json& v = it.value();
    if (k == "source_dim") {
      ASSIGN_OR_RETURN(a.source_dim, GetInt(v, source, k));
      has_source = true;
    } else if (k == "target_dim") {
      ASSIGN_OR_RETURN(a.target_dim, GetInt(v, source, k));
      has_target = true;
    } else if (k == "source_num_heads") {
      ASSIGN_OR_RETURN(a.source_num_heads, GetInt(v, source, k));
    } else if (k == "target_num_heads") {
      ASSIGN_OR_RETURN(a.target_num_heads, GetInt(v, source, k));
    } else if (k == "intermediate_dim") {
      ASSIGN_OR_RETURN(a.intermediate_dim, GetInt(v, source, k));
    } else if (k == "hidden_dim") {
      ASSIGN_OR_RETURN(a.hidden_dim, GetInt(v, source, k));
    } else if (k == "num_layers") {
      ASSIGN_OR_RETURN(a.num_layers, GetInt(v, source, k));
    } else if (k == "dropout") {
      ASSIGN_OR_RETURN(a.dropout, GetDouble(v, source, k));
    } else if (k == "initial_temperature") {
      ASSIGN_OR_RETURN(a.initial_temperature, GetDouble(v, source, k));
    } else if (k == "final_temperature") {
      ASSIGN_OR_RETURN(a.final_temperature, GetDouble(v, source, k));
    } else if (k == "anneal_steps") {
      ASSIGN_OR_RETURN(a.anneal_steps, GetInt(v, source, k));
    } else if (k == "dtype") {
      ASSIGN_OR_RETURN(a.dtype, GetDtypeName(v, source));
    } else {
      return Bad(source,
                 absl::StrCat("unknown C2CProjector argument \"", k, "\""));
    }
  }
  if (!has_source || !has_target) {
    return Bad(source, "init_args needs source_dim and target_dim");
  }
  absl::Status valid = ValidateProjectorArgs(a);
  if (!valid.ok()) return Bad(source, valid.message());
  return a;
}

std::string ProjectorJson(const C2CProjectorArgs& a) {
  Json init = Json::object();
  init["source_dim"] = a.source_dim;
  init["target_dim"] = a.target_dim;
  init["source_num_heads"] = a.source_num_heads;
  init["target_num_heads"] = a.target_num_heads;
  init["hidden_dim"] = a.hidden_dim;
  init["intermediate_dim"] = a.intermediate_dim;
  init["num_layers"] = a.num_layers;
  init["dropout"] = a.dropout;
  init["initial_temperature"] = a.initial_temperature;
  init["final_temperature"] = a.final_temperature;
  init["anneal_steps"] = a.anneal_steps;
  init["dtype"] = Json{{"__type__", "torch.dtype"}, {"value", a.dtype}};
  Json j = Json::object();
  j["class"] = "C2CProjector";
  j["init_args"] = std::move(init);
  return j.dump(2);
}

absl::StatusOr<FuserLayerMap> ParseProjectorConfigJson(
    absl::string_view text, int num_receiver_layers, absl::string_view source) {
  ASSIGN_OR_RETURN(Json j, ParseJson(text, source));
  if (!j.is_object()) return Bad(source, "expected a JSON object");
  auto target = j.find("0");
  if (target == j.end()) {
    if (j.empty()) return FuserLayerMap(std::max(num_receiver_layers, 0));
    return Bad(source, "no entry for the receiver (model \"0\")");
  }
  if (j.size() != 1) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": projectors into several target models"));
  }
  if (!target->is_object()) return Bad(source, "model \"0\" is not an object");
  if (target->size() > 1) {
    return absl::UnimplementedError(absl::StrCat(
        source, ": ", target->size(), " sharers (only one is supported)"));
  }
  FuserLayerMap map(std::max(num_receiver_layers, 0));
  if (target->empty()) return map;
  const auto first = target->begin();
  const Json& layers = first.value();
  ASSIGN_OR_RETURN(int sharer_model, ParseLayerNumber(first.key(), source));
  if (sharer_model == 0) return Bad(source, "sharer model index 0");
  if (!layers.is_object()) return Bad(source, "layer map is not an object");
  for (auto it = layers.begin(); it != layers.end(); ++it) {
    ASSIGN_OR_RETURN(int t, ParseLayerNumber(it.key(), source));
    if (num_receiver_layers > 0 && t >= num_receiver_layers) {
      return Bad(source, absl::StrCat("receiver layer ", t,
                                      " >= ", num_receiver_layers));
    }
    if (t > 1 << 20) return Bad(source, "receiver layer number too large");
    const Json& pairs = it.value();
    if (!pairs.is_array() || pairs.empty()) {
      return Bad(source, absl::StrCat("layer ", t,
                                      ": expected a non-empty list of "
                                      "[source_layer, projector] pairs"));
    }
    const Json& first = pairs[0];  // "Use first projector result".
    if (!first.is_array() || first.size() != 2) {
      return Bad(source,
                 absl::StrCat("layer ", t, ": malformed pair ", first.dump()));
    }
    ASSIGN_OR_RETURN(int64_t s, GetInt(first[0], source, "source_layer"));
    ASSIGN_OR_RETURN(int64_t p, GetInt(first[1], source, "projector"));
    if (s < 0 || p < 0 || s > (1 << 20) || p > (1 << 20)) {
      return Bad(source,
                 absl::StrCat("layer ", t, ": bad pair ", first.dump()));
    }
    if (static_cast<size_t>(t) >= map.size()) map.resize(t + 1);
    map[t] = FuserLayerMapEntry{static_cast<int>(s), static_cast<int>(p)};
  }
  return map;
}

std::string ProjectorConfigJson(const FuserLayerMap& map) {
  Json layers = Json::object();
  for (size_t t = 0; t < map.size(); ++t) {
    if (!map[t]) continue;
    layers[std::to_string(t)] =
        Json::array({Json::array({map[t]->sharer_layer, map[t]->projector})});
  }
  Json j = Json::object();
  j["0"] = Json{{"1", std::move(layers)}};
  return j.dump();
}

absl::StatusOr<FuserLayerMap> LastAlignedFuserLayerMap(int receiver_layers,
                                                       int sharer_layers) {
  ASSIGN_OR_RETURN(std::vector<int> sources,
                   LastAlignedLayerMap(receiver_layers, sharer_layers));
  FuserLayerMap map(sources.size());
  for (size_t t = 0; t < sources.size(); ++t) {
    map[t] = FuserLayerMapEntry{sources[t], static_cast<int>(t)};
  }
  return map;
}

absl::Status ValidateFuserLayerMap(const FuserLayerMap& map, int num_projectors,
                                   int sharer_layers) {
  for (size_t t = 0; t < map.size(); ++t) {
    if (!map[t]) continue;
    if (map[t]->projector < 0 || map[t]->projector >= num_projectors) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer map: receiver layer ", t, " uses projector ",
                       map[t]->projector, " but there are ", num_projectors));
    }
    if (map[t]->sharer_layer < 0 ||
        (sharer_layers > 0 && map[t]->sharer_layer >= sharer_layers)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer map: receiver layer ", t, " reads sharer layer ",
          map[t]->sharer_layer, " but the sharer has ", sharer_layers));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<FuserRecipe> ParseFuserRecipe(absl::string_view text,
                                             absl::string_view source) {
  ASSIGN_OR_RETURN(Json j, ParseJson(text, source));
  if (!j.is_object()) return Bad(source, "expected a JSON object");
  FuserRecipe r;
  r.raw_json = std::string(text);
  auto model = j.find("model");
  if (model == j.end()) return r;
  if (!model->is_object()) return Bad(source, "\"model\" is not an object");
  auto get_string = [&](const Json& obj, const char* key,
                        std::string* out) -> absl::Status {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_string()) {
      return Bad(source, absl::StrCat("\"", key, "\" must be a string"));
    }
    *out = it->get<std::string>();
    return absl::OkStatus();
  };
  auto get_bool = [&](const Json& obj, const char* key,
                      bool* out) -> absl::Status {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_boolean()) {
      return Bad(source, absl::StrCat("\"", key, "\" must be a boolean"));
    }
    *out = it->get<bool>();
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(get_string(*model, "base_model", &r.base_model));
  RETURN_IF_ERROR(get_string(*model, "teacher_model", &r.teacher_model));
  RETURN_IF_ERROR(get_string(*model, "mapping", &r.mapping));
  RETURN_IF_ERROR(get_bool(*model, "include_response", &r.include_response));
  RETURN_IF_ERROR(get_bool(*model, "is_do_alignment", &r.is_do_alignment));
  RETURN_IF_ERROR(
      get_string(*model, "alignment_strategy", &r.alignment_strategy));
  auto projector = model->find("projector");
  if (projector != model->end() && projector->is_object()) {
    RETURN_IF_ERROR(get_string(*projector, "type", &r.projector_type));
  }
  return r;
}

std::string FuserRecipeJson(const FuserRecipe& recipe,
                            const C2CProjectorArgs& a) {
  Json params = Json::object();
  params["hidden_dim"] = a.hidden_dim;
  params["intermediate_dim"] = a.intermediate_dim;
  params["num_layers"] = a.num_layers;
  params["dropout"] = a.dropout;
  params["initial_temperature"] = a.initial_temperature;
  params["final_temperature"] = a.final_temperature;
  params["anneal_steps"] = a.anneal_steps;
  Json model = Json::object();
  model["base_model"] = recipe.base_model;
  model["teacher_model"] = recipe.teacher_model;
  model["include_response"] = recipe.include_response;
  model["is_do_alignment"] = recipe.is_do_alignment;
  if (!recipe.alignment_strategy.empty()) {
    model["alignment_strategy"] = recipe.alignment_strategy;
  }
  model["projector"] =
      Json{{"type", recipe.projector_type.empty() ? std::string("C2CProjector")
                                                  : recipe.projector_type},
           {"params", std::move(params)}};
  model["mapping"] =
      recipe.mapping.empty() ? std::string("last_aligned") : recipe.mapping;
  Json j = Json::object();
  j["model"] = std::move(model);
  return j.dump(4);
}

}  // namespace kvwire
