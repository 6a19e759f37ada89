#include "common/codec/layer_schedule.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/codec/scheme.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

std::string Where(const YAML::Node& node) {
  if (!node.IsDefined()) return "";  // Mark() throws on a missing node.
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return "";
  return absl::StrCat(" (line ", mark.line + 1, ")");
}

absl::Status YamlError(const YAML::Node& node, absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat("layer schedule: ", message, Where(node)));
}

absl::Status CheckKeys(const YAML::Node& map, absl::string_view what,
                       std::initializer_list<absl::string_view> allowed) {
  for (const auto& entry : map) {
    if (!entry.first.IsScalar())
      return YamlError(entry.first, "non-scalar key");
    const std::string key = entry.first.Scalar();
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      std::string known;
      for (absl::string_view k : allowed) {
        absl::StrAppend(&known, known.empty() ? "" : ", ", k);
      }
      return YamlError(entry.first,
                       absl::StrCat("unknown key '", key, "' in ", what,
                                    " (known: ", known, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Scheme> SchemeOf(const YAML::Node& node,
                                    absl::string_view what) {
  if (!node.IsDefined() || node.IsNull()) {
    return YamlError(node, absl::StrCat(what, " has no scheme"));
  }
  if (!node.IsScalar()) {
    return YamlError(node, absl::StrCat(what, ": scheme must be a name"));
  }
  absl::StatusOr<v1::Scheme> scheme = ParseScheme(node.Scalar());
  if (!scheme.ok()) {
    return YamlError(node, absl::StrCat(what, ": ", scheme.status().message()));
  }
  return *scheme;
}

absl::StatusOr<uint32_t> LayerOf(const YAML::Node& node,
                                 absl::string_view what) {
  if (!node.IsScalar()) {
    return YamlError(node, absl::StrCat(what, ": layer must be an integer"));
  }
  int64_t value = 0;
  if (!YAML::convert<int64_t>::decode(node, value)) {
    return YamlError(node, absl::StrCat(what, ": layer '", node.Scalar(),
                                        "' is not an integer"));
  }
  if (value < 0) {
    return YamlError(node, absl::StrCat(what, ": negative layer ", value));
  }
  if (value > UINT32_MAX) {
    return YamlError(node,
                     absl::StrCat(what, ": layer ", value, " out of range"));
  }
  return static_cast<uint32_t>(value);
}

absl::StatusOr<v1::LayerOverride> ParseOverride(const YAML::Node& node,
                                                size_t i) {
  const std::string what = absl::StrCat("override ", i);
  if (!node.IsMap()) {
    return YamlError(node, absl::StrCat(what, " must be a map"));
  }
  RETURN_IF_ERROR(CheckKeys(node, what, {"layers", "range", "scheme"}));
  if (!node["scheme"].IsDefined()) {
    return YamlError(node, absl::StrCat(what, " has no scheme"));
  }
  v1::LayerOverride out;
  ASSIGN_OR_RETURN(v1::Scheme scheme, SchemeOf(node["scheme"], what));
  out.set_scheme(scheme);
  const YAML::Node layers = node["layers"];
  if (layers.IsDefined() && !layers.IsNull()) {
    if (!layers.IsSequence()) {
      return YamlError(
          layers, absl::StrCat(what, ": layers must be a list of integers"));
    }
    for (const YAML::Node& layer : layers) {
      ASSIGN_OR_RETURN(uint32_t value, LayerOf(layer, what));
      out.add_layers(value);
    }
  }
  const YAML::Node range = node["range"];
  if (range.IsDefined() && !range.IsNull()) {
    if (!range.IsSequence() || range.size() != 2) {
      return YamlError(
          range,
          absl::StrCat(what, ": range must be [start, end] (inclusive)"));
    }
    ASSIGN_OR_RETURN(uint32_t first, LayerOf(range[0], what));
    ASSIGN_OR_RETURN(uint32_t last, LayerOf(range[1], what));
    if (first > last) {
      return YamlError(range, absl::StrCat(what, ": range start ", first,
                                           " is after its end ", last));
    }
    out.mutable_range()->set_first(first);
    out.mutable_range()->set_last(last);
  }
  if (out.layers().empty() && !out.has_range()) {
    return YamlError(node, absl::StrCat(what, " has neither layers nor range"));
  }
  return out;
}

absl::StatusOr<LayerSchedule> ParseScheduleNode(const YAML::Node& root) {
  if (!root.IsDefined() || root.IsNull()) {
    return absl::InvalidArgumentError("layer schedule: empty YAML document");
  }
  if (!root.IsMap()) {
    return YamlError(root,
                     "expected a map with `layer_schedule` or "
                     "`default`/`overrides`");
  }
  // Copy-construct (Node::operator= would assign into root's tree).
  const bool wrapped = root["layer_schedule"].IsDefined();
  const YAML::Node node = wrapped ? root["layer_schedule"] : root;
  if (wrapped) {
    if (!node.IsMap()) {
      return YamlError(node,
                       "`layer_schedule` must be a map of "
                       "`default`/`overrides`");
    }
  }
  RETURN_IF_ERROR(CheckKeys(node, "layer schedule", {"default", "overrides"}));
  LayerSchedule schedule;
  if (node["default"].IsDefined()) {
    ASSIGN_OR_RETURN(schedule.default_scheme,
                     SchemeOf(node["default"], "default"));
  }
  const YAML::Node overrides = node["overrides"];
  if (overrides.IsDefined() && !overrides.IsNull()) {
    if (!overrides.IsSequence()) {
      return YamlError(overrides, "`overrides` must be a list");
    }
    for (size_t i = 0; i < overrides.size(); ++i) {
      ASSIGN_OR_RETURN(v1::LayerOverride o, ParseOverride(overrides[i], i));
      schedule.overrides.push_back(std::move(o));
    }
  }
  return schedule;
}

bool Matches(const v1::LayerOverride& o, uint32_t layer) {
  if (o.has_range() && o.range().first() <= layer &&
      layer <= o.range().last()) {
    return true;
  }
  return std::find(o.layers().begin(), o.layers().end(), layer) !=
         o.layers().end();
}

v1::Scheme OrInt8(v1::Scheme scheme) {
  return scheme == v1::SCHEME_UNSPECIFIED ? v1::SCHEME_INT8 : scheme;
}

}  // namespace

absl::StatusOr<LayerSchedule> ParseLayerScheduleYaml(
    absl::string_view yaml_text) {
  try {
    const YAML::Node root = YAML::Load(std::string(yaml_text));
    return ParseScheduleNode(root);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer schedule: malformed YAML: ", e.what()));
  }
}

absl::StatusOr<LayerSchedule> LoadLayerScheduleFile(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  absl::StatusOr<LayerSchedule> schedule = ParseLayerScheduleYaml(text);
  if (!schedule.ok()) {
    return absl::Status(schedule.status().code(),
                        absl::StrCat(path, ": ", schedule.status().message()));
  }
  return schedule;
}

v1::Scheme ResolveScheme(const LayerSchedule& schedule, uint32_t layer) {
  v1::Scheme scheme = schedule.default_scheme;
  for (const v1::LayerOverride& o : schedule.overrides) {
    if (Matches(o, layer)) {
      scheme = o.scheme() == v1::SCHEME_UNSPECIFIED ? schedule.default_scheme
                                                    : o.scheme();
    }
  }
  return OrInt8(scheme);
}

LayerSchedule ScheduleFromSpec(const v1::TransferSpec& spec) {
  LayerSchedule schedule;
  schedule.default_scheme = OrInt8(spec.scheme());
  schedule.overrides.assign(spec.layer_overrides().begin(),
                            spec.layer_overrides().end());
  return schedule;
}

void ApplyScheduleToSpec(const LayerSchedule& schedule,
                         v1::TransferSpec* spec) {
  spec->set_scheme(schedule.default_scheme);
  spec->clear_layer_overrides();
  for (const v1::LayerOverride& o : schedule.overrides) {
    *spec->add_layer_overrides() = o;
  }
}

LayerSchedule LastLayersSchedule(v1::Scheme default_scheme, int last_n,
                                 v1::Scheme scheme, int num_layers) {
  LayerSchedule schedule;
  schedule.default_scheme = default_scheme;
  if (last_n <= 0 || num_layers <= 0) return schedule;
  v1::LayerOverride o;
  o.mutable_range()->set_first(
      static_cast<uint32_t>(std::max(0, num_layers - last_n)));
  o.mutable_range()->set_last(static_cast<uint32_t>(num_layers - 1));
  o.set_scheme(scheme);
  schedule.overrides.push_back(std::move(o));
  return schedule;
}

absl::StatusOr<LayerSchedule> ReceiverToSharerSchedule(
    const LayerSchedule& receiver_schedule, absl::Span<const int> layer_map,
    int num_sharer_layers) {
  if (num_sharer_layers <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "number of sharer layers must be positive, got ", num_sharer_layers));
  }
  // Resolved scheme of every sharer layer; UNSPECIFIED = read by no one.
  std::vector<v1::Scheme> sharer(static_cast<size_t>(num_sharer_layers),
                                 v1::SCHEME_UNSPECIFIED);
  for (size_t t = 0; t < layer_map.size(); ++t) {
    const int s = layer_map[t];
    if (s < 0 || s >= num_sharer_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("receiver layer ", t, " maps to sharer layer ", s,
                       ", outside [0, ", num_sharer_layers, ")"));
    }
    const v1::Scheme scheme =
        ResolveScheme(receiver_schedule, static_cast<uint32_t>(t));
    v1::Scheme& current = sharer[static_cast<size_t>(s)];
    // Receiver layers go up, so >= lets the highest one win a tie in bits.
    if (current == v1::SCHEME_UNSPECIFIED ||
        BitsPerValue(scheme) >= BitsPerValue(current)) {
      current = scheme;
    }
  }

  const v1::Scheme receiver_default = OrInt8(receiver_schedule.default_scheme);
  std::map<v1::Scheme, int> counts;  // Ordered: ties go to the smallest enum.
  for (v1::Scheme scheme : sharer) {
    if (scheme != v1::SCHEME_UNSPECIFIED) ++counts[scheme];
  }
  LayerSchedule out;
  out.default_scheme = receiver_default;
  int best = 0;
  for (const auto& [scheme, count] : counts) {
    if (count > best) {
      best = count;
      out.default_scheme = scheme;
    }
  }
  if (counts.count(receiver_default) != 0 && counts[receiver_default] == best) {
    out.default_scheme = receiver_default;
  }

  for (int s = 0; s < num_sharer_layers;) {
    const v1::Scheme scheme = sharer[static_cast<size_t>(s)];
    if (scheme == v1::SCHEME_UNSPECIFIED || scheme == out.default_scheme) {
      ++s;
      continue;
    }
    int end = s;
    while (end + 1 < num_sharer_layers &&
           sharer[static_cast<size_t>(end + 1)] == scheme) {
      ++end;
    }
    v1::LayerOverride o;
    o.set_scheme(scheme);
    if (end == s) {
      o.add_layers(static_cast<uint32_t>(s));
    } else {
      o.mutable_range()->set_first(static_cast<uint32_t>(s));
      o.mutable_range()->set_last(static_cast<uint32_t>(end));
    }
    out.overrides.push_back(std::move(o));
    s = end + 1;
  }
  return out;
}

absl::StatusOr<std::vector<int>> LastAlignedLayerMap(int receiver_layers,
                                                     int sharer_layers) {
  if (receiver_layers <= 0 || sharer_layers <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer counts must be positive, got receiver ",
                     receiver_layers, " and sharer ", sharer_layers));
  }
  std::vector<int> map(static_cast<size_t>(receiver_layers));
  for (int t = 0; t < receiver_layers; ++t) {
    map[static_cast<size_t>(t)] =
        std::clamp(sharer_layers - receiver_layers + t, 0, sharer_layers - 1);
  }
  return map;
}

}  // namespace kvwire
