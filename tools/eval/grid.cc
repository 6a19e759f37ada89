#include "tools/eval/grid.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/codec/layer_schedule.h"
#include "common/codec/scheme.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "tools/eval/dataset.h"

namespace kvwire {
namespace eval {
namespace {

namespace fs = std::filesystem;

std::string Where(const YAML::Node& node) {
  if (!node.IsDefined()) return "";
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return "";
  return absl::StrCat(" (line ", mark.line + 1, ")");
}

absl::Status Err(const YAML::Node& node, absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat("grid: ", message, Where(node)));
}

absl::Status CheckKeys(const YAML::Node& map, absl::string_view what,
                       const std::vector<std::string>& allowed) {
  for (const auto& entry : map) {
    if (!entry.first.IsScalar()) return Err(entry.first, "non-scalar key");
    const std::string key = entry.first.Scalar();
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return Err(entry.first,
                 absl::StrCat("unknown key '", key, "' in ", what,
                              " (known: ", absl::StrJoin(allowed, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

bool SafeName(absl::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' &&
        c != '-' && c != '.') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::string> ScalarString(const YAML::Node& node,
                                         absl::string_view key) {
  if (!node.IsScalar()) {
    return Err(node, absl::StrCat("`", key, "` must be a scalar"));
  }
  return node.Scalar();
}

template <typename T>
absl::StatusOr<T> ScalarAs(const YAML::Node& node, absl::string_view key,
                           absl::string_view expected) {
  T value{};
  if (!node.IsScalar() || !YAML::convert<T>::decode(node, value)) {
    return Err(node,
               absl::StrCat("`", key, "` must be ", expected, ", got '",
                            node.IsScalar() ? node.Scalar() : "<map>", "'"));
  }
  return value;
}

std::string ResolvePath(const std::string& base_dir, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute() || base_dir.empty()) {
    return path;
  }
  return (fs::path(base_dir) / path).lexically_normal().string();
}

// --------------------------------------------------------------- schedules

absl::StatusOr<ScheduleDef> ScheduleFromLayerScheduleNode(
    const YAML::Node& node, const std::string& name) {
  // The prototype's shape: `layer_schedule: {...}` or a bare
  // {default, overrides}.
  const YAML::Node inner = node.IsMap() && node["layer_schedule"].IsDefined()
                               ? node["layer_schedule"]
                               : node;
  YAML::Emitter emitter;
  emitter << inner;
  absl::StatusOr<LayerSchedule> parsed =
      ParseLayerScheduleYaml(emitter.c_str());
  if (!parsed.ok()) {
    return Err(node, absl::StrCat("schedule '", name,
                                  "': ", parsed.status().message()));
  }
  ScheduleDef def;
  def.name = name;
  def.overrides = parsed->overrides;
  if (inner.IsMap() && inner["default"].IsDefined()) {
    def.default_scheme = parsed->default_scheme;
  }
  return def;
}

absl::StatusOr<ScheduleDef> LoadScheduleFile(const std::string& path,
                                             const std::string& name,
                                             const YAML::Node& where) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    return Err(where, absl::StrCat("schedule '", name,
                                   "': ", text.status().message()));
  }
  try {
    return ScheduleFromLayerScheduleNode(YAML::Load(*text), name);
  } catch (const YAML::Exception& e) {
    return Err(where, absl::StrCat("schedule file ", path,
                                   ": malformed YAML: ", e.what()));
  }
}

absl::StatusOr<ScheduleDef> ParseScheduleDef(const YAML::Node& node,
                                             const std::string& name,
                                             const std::string& base_dir) {
  if (!SafeName(name)) {
    return Err(node, absl::StrCat("schedule name '", name,
                                  "' must be [A-Za-z0-9_.-]+"));
  }
  if (name == "none") return Err(node, "'none' is reserved");
  if (!node.IsMap())
    return Err(node, absl::StrCat("schedule '", name, "' must be a map"));
  RETURN_IF_ERROR(CheckKeys(node, absl::StrCat("schedule '", name, "'"),
                            {"layers_of", "last", "scheme", "layer_schedule",
                             "default", "overrides", "file"}));
  ScheduleDef def;
  const int forms =
      (node["last"].IsDefined() ? 1 : 0) + (node["file"].IsDefined() ? 1 : 0) +
      (node["layer_schedule"].IsDefined() || node["overrides"].IsDefined() ||
               node["default"].IsDefined()
           ? 1
           : 0);
  if (forms != 1) {
    return Err(node, absl::StrCat("schedule '", name,
                                  "' needs exactly one of `last` (+ "
                                  "`scheme`), `file`, or `layer_schedule` / "
                                  "`default` + `overrides`"));
  }
  if (node["last"].IsDefined()) {
    ASSIGN_OR_RETURN(int last,
                     ScalarAs<int>(node["last"], "last", "a positive integer"));
    if (last <= 0) return Err(node["last"], "`last` must be positive");
    def.name = name;
    def.last_n = last;
    if (node["scheme"].IsDefined()) {
      ASSIGN_OR_RETURN(std::string s, ScalarString(node["scheme"], "scheme"));
      absl::StatusOr<v1::Scheme> scheme = ParseScheme(s);
      if (!scheme.ok()) return Err(node["scheme"], scheme.status().message());
      def.last_scheme = *scheme;
    }
  } else {
    if (node["scheme"].IsDefined()) {
      return Err(node["scheme"], "`scheme` goes with `last`");
    }
    if (node["file"].IsDefined()) {
      ASSIGN_OR_RETURN(std::string file, ScalarString(node["file"], "file"));
      ASSIGN_OR_RETURN(def, LoadScheduleFile(ResolvePath(base_dir, file), name,
                                             node["file"]));
    } else if (node["layer_schedule"].IsDefined()) {
      ASSIGN_OR_RETURN(
          def, ScheduleFromLayerScheduleNode(node["layer_schedule"], name));
    } else {
      YAML::Node bare;
      if (node["default"].IsDefined()) bare["default"] = node["default"];
      if (node["overrides"].IsDefined()) bare["overrides"] = node["overrides"];
      ASSIGN_OR_RETURN(def, ScheduleFromLayerScheduleNode(bare, name));
    }
  }
  if (node["layers_of"].IsDefined()) {
    ASSIGN_OR_RETURN(std::string of,
                     ScalarString(node["layers_of"], "layers_of"));
    if (of == "receiver") {
      def.layers_of = ScheduleLayers::kReceiver;
    } else if (of == "sharer") {
      def.layers_of = ScheduleLayers::kSharer;
    } else {
      return Err(node["layers_of"], "`layers_of` is receiver or sharer");
    }
  }
  return def;
}

// ------------------------------------------------------------------ blocks

const std::vector<std::string>& BlockKeys() {
  static const auto* keys = new std::vector<std::string>{
      "name",        "method",           "scheme",
      "granularity", "group_size",       "asymmetric",
      "selection",   "proportion",       "min_tokens",
      "seed",        "shared_selection", "schedule",
      "zstd",        "budget_bytes",     "budget_mixed_precision",
      "layers",      "max_new_tokens",   "series",
      "sharer",      "token_alignment",  "alignment_strategy"};
  return *keys;
}

// ----------------------------------------------------------------- sharers

bool VariableName(absl::string_view name) {
  if (name.empty() || absl::ascii_isdigit(static_cast<unsigned char>(name[0])))
    return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_') {
      return false;
    }
  }
  return true;
}

// Replaces every ${NAME} in `text` (from `variables`, then the environment);
// the names found in neither go to `missing`.
absl::StatusOr<std::string> ExpandVariables(const YAML::Node& where,
                                            absl::string_view text,
                                            const GridVariables& variables,
                                            std::vector<std::string>* missing) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t start = text.find("${", pos);
    if (start == absl::string_view::npos) {
      absl::StrAppend(&out, text.substr(pos));
      break;
    }
    absl::StrAppend(&out, text.substr(pos, start - pos));
    const size_t end = text.find('}', start + 2);
    if (end == absl::string_view::npos) {
      return Err(where, absl::StrCat("unterminated ${ in '", text, "'"));
    }
    const std::string name(text.substr(start + 2, end - start - 2));
    if (!VariableName(name)) {
      return Err(where, absl::StrCat("bad variable name '", name, "' in '",
                                     text, "' ([A-Za-z_][A-Za-z0-9_]*)"));
    }
    if (auto it = variables.find(name); it != variables.end()) {
      out.append(it->second);
    } else if (const char* env = std::getenv(name.c_str());
               env != nullptr && env[0] != '\0') {
      out.append(env);
    } else {
      missing->push_back(name);
    }
    pos = end + 1;
  }
  return out;
}

struct SharerDef {
  PairOverride pair;        // sharer, sharer_dir, tokenizer, fuser.
  std::string unavailable;  // Why its runs are left out ("": usable).
};

absl::StatusOr<SharerDef> ParseSharerDef(const YAML::Node& node,
                                         const std::string& name,
                                         const std::string& base_dir,
                                         const GridVariables& variables) {
  if (!SafeName(name) || name == "default") {
    return Err(node, absl::StrCat("sharer name '", name,
                                  "' must be [A-Za-z0-9_.-]+ and not "
                                  "'default'"));
  }
  if (!node.IsMap()) {
    return Err(node, absl::StrCat("sharer '", name,
                                  "' must be a map with sharer_dir"));
  }
  RETURN_IF_ERROR(
      CheckKeys(node, absl::StrCat("sharer '", name, "'"),
                {"sharer_dir", "sharer_tokenizer_dir", "fuser_dir"}));
  if (!node["sharer_dir"].IsDefined()) {
    return Err(node, absl::StrCat("sharer '", name, "' needs sharer_dir"));
  }
  SharerDef def;
  def.pair.sharer = name;
  std::vector<std::string> missing;
  const std::pair<const char*, std::string*> fields[] = {
      {"sharer_dir", &def.pair.sharer_dir},
      {"sharer_tokenizer_dir", &def.pair.sharer_tokenizer_dir},
      {"fuser_dir", &def.pair.fuser_dir}};
  for (const auto& [key, field] : fields) {
    if (!node[key].IsDefined() || node[key].IsNull()) continue;
    ASSIGN_OR_RETURN(std::string raw, ScalarString(node[key], key));
    ASSIGN_OR_RETURN(std::string value,
                     ExpandVariables(node[key], raw, variables, &missing));
    *field = ResolvePath(base_dir, value);
  }
  if (!missing.empty()) {
    std::sort(missing.begin(), missing.end());
    missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
    std::vector<std::string> flags;
    for (const std::string& m : missing) flags.push_back(m + "=...");
    def.unavailable = absl::StrCat(
        "sharer '", name, "' needs ${", absl::StrJoin(missing, "}, ${"),
        "} (--grid_var=", absl::StrJoin(flags, ","), " or the environment)");
  } else if (def.pair.sharer_dir.empty()) {
    return Err(node, absl::StrCat("sharer '", name, "': empty sharer_dir"));
  }
  return def;
}

struct Context {
  std::string base_dir;
  std::map<std::string, ScheduleDef> schedules;
  std::map<std::string, SharerDef> sharers;
};

absl::Status ApplyKey(const std::string& key, const YAML::Node& v,
                      const Context& ctx, RunSpec* run,
                      std::string* unavailable) {
  if (key == "sharer") {
    ASSIGN_OR_RETURN(std::string s, ScalarString(v, key));
    PairOverride& p = run->pair;
    p.sharer.clear();
    p.sharer_dir.clear();
    p.sharer_tokenizer_dir.clear();
    p.fuser_dir.clear();
    if (s == "default") return absl::OkStatus();
    auto it = ctx.sharers.find(s);
    if (it == ctx.sharers.end()) {
      std::vector<std::string> known = {"default"};
      for (const auto& [n, d] : ctx.sharers) known.push_back(n);
      return Err(v, absl::StrCat("unknown sharer '", s,
                                 "' (known: ", absl::StrJoin(known, ", "),
                                 "; define it under `sharers:`)"));
    }
    if (!it->second.unavailable.empty()) {
      *unavailable = it->second.unavailable;
    }
    p.sharer = it->second.pair.sharer;
    p.sharer_dir = it->second.pair.sharer_dir;
    p.sharer_tokenizer_dir = it->second.pair.sharer_tokenizer_dir;
    p.fuser_dir = it->second.pair.fuser_dir;
  } else if (key == "token_alignment") {
    ASSIGN_OR_RETURN(std::string s, ScalarString(v, key));
    s = absl::AsciiStrToLower(s);
    // YAML 1.1 reads a bare on/off as a boolean; take its spellings too.
    if (s == "true" || s == "yes") s = "on";
    if (s == "false" || s == "no") s = "off";
    if (s != "auto" && s != "on" && s != "off") {
      return Err(v, absl::StrCat("`token_alignment` is auto, on or off, got '",
                                 s, "'"));
    }
    run->pair.token_alignment = s;
  } else if (key == "alignment_strategy") {
    ASSIGN_OR_RETURN(std::string s, ScalarString(v, key));
    s = absl::AsciiStrToLower(s);
    if (s != "first" && s != "longest") {
      return Err(
          v, absl::StrCat("`alignment_strategy` is first or longest, got '", s,
                          "'"));
    }
    run->pair.alignment_strategy = s;
  } else if (key == "method") {
    ASSIGN_OR_RETURN(std::string s, ScalarString(v, key));
    absl::StatusOr<EvalMethod> m = ParseEvalMethod(s);
    if (!m.ok()) return Err(v, m.status().message());
    run->method = *m;
  } else if (key == "scheme") {
    ASSIGN_OR_RETURN(std::string s, ScalarString(v, key));
    absl::StatusOr<v1::Scheme> scheme = ParseScheme(s);
    if (!scheme.ok()) return Err(v, scheme.status().message());
    run->scheme = *scheme;
  } else if (key == "granularity") {
    ASSIGN_OR_RETURN(std::string s, ScalarString(v, key));
    absl::StatusOr<v1::Granularity> g = ParseGranularity(s);
    if (!g.ok()) return Err(v, g.status().message());
    run->granularity = *g;
  } else if (key == "group_size") {
    ASSIGN_OR_RETURN(run->group_size,
                     ScalarAs<uint32_t>(v, key, "a non-negative integer"));
  } else if (key == "asymmetric") {
    ASSIGN_OR_RETURN(run->asymmetric, ScalarAs<bool>(v, key, "a boolean"));
  } else if (key == "selection") {
    ASSIGN_OR_RETURN(std::string s, ScalarString(v, key));
    s = absl::AsciiStrToLower(s);
    if (!IsInProcessSelectionStrategy(s)) {
      absl::StatusOr<v1::SelectionMode> mode = ParseSelectionMode(s);
      if (!mode.ok()) {
        return Err(v, absl::StrCat(mode.status().message(),
                                   "; or an in-process strategy: "
                                   "proj_vnorm_topk, delta_proj_vnorm_topk, "
                                   "receiver_attention, receiver_vnorm"));
      }
      if (*mode == v1::SELECTION_EXPLICIT) {
        return Err(v, "selection 'explicit' needs indices; not a grid axis");
      }
      s = SelectionModeName(*mode);
    }
    run->selection = s;
  } else if (key == "proportion") {
    ASSIGN_OR_RETURN(run->proportion,
                     ScalarAs<double>(v, key, "a number in (0, 1]"));
    if (!(run->proportion > 0)) {
      return Err(v, "`proportion` must be positive");
    }
  } else if (key == "min_tokens") {
    ASSIGN_OR_RETURN(run->min_tokens,
                     ScalarAs<uint32_t>(v, key, "a non-negative integer"));
  } else if (key == "seed") {
    ASSIGN_OR_RETURN(run->seed,
                     ScalarAs<uint64_t>(v, key, "a non-negative integer"));
  } else if (key == "shared_selection") {
    ASSIGN_OR_RETURN(run->shared_selection,
                     ScalarAs<bool>(v, key, "a boolean"));
  } else if (key == "schedule") {
    if (v.IsNull()) {
      run->schedule.reset();
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(std::string s, ScalarString(v, key));
    if (s.empty() || s == "none") {
      run->schedule.reset();
    } else if (auto it = ctx.schedules.find(s); it != ctx.schedules.end()) {
      run->schedule = it->second;
    } else if (absl::EndsWith(s, ".yaml") || absl::EndsWith(s, ".yml")) {
      const std::string stem = fs::path(s).stem().string();
      if (!SafeName(stem)) {
        return Err(v, absl::StrCat("schedule file name '", stem,
                                   "' must be [A-Za-z0-9_.-]+"));
      }
      ASSIGN_OR_RETURN(ScheduleDef def,
                       LoadScheduleFile(ResolvePath(ctx.base_dir, s), stem, v));
      run->schedule = std::move(def);
    } else {
      return Err(v, absl::StrCat("unknown schedule '", s,
                                 "' (define it under `schedules:`, or give a "
                                 ".yaml path, or none)"));
    }
  } else if (key == "zstd") {
    if (!v.IsScalar()) return Err(v, "`zstd` must be false, true or a level");
    bool on = false;
    int level = 0;
    const std::string s = absl::AsciiStrToLower(v.Scalar());
    if (s == "off" || s == "none") {
      run->zstd_level = 0;
    } else if (YAML::convert<int>::decode(v, level)) {
      if (level < 0 || level > 22) {
        return Err(v, "zstd level must be 0 (off) to 22");
      }
      run->zstd_level = level;
    } else if (YAML::convert<bool>::decode(v, on)) {
      run->zstd_level = on ? 3 : 0;
    } else {
      return Err(v, "`zstd` must be false, true or a level");
    }
  } else if (key == "budget_bytes") {
    ASSIGN_OR_RETURN(run->budget_bytes,
                     ScalarAs<uint64_t>(v, key, "a non-negative integer"));
  } else if (key == "budget_mixed_precision") {
    ASSIGN_OR_RETURN(run->budget_mixed_precision,
                     ScalarAs<bool>(v, key, "a boolean"));
  } else if (key == "max_new_tokens") {
    ASSIGN_OR_RETURN(run->max_new_tokens,
                     ScalarAs<int>(v, key, "a positive integer"));
    if (run->max_new_tokens <= 0) {
      return Err(v, "`max_new_tokens` must be positive");
    }
  } else {
    return Err(v, absl::StrCat("internal: unhandled key ", key));
  }
  return absl::OkStatus();
}

// Clears what does not apply and folds equivalent settings together.
absl::Status Normalize(const YAML::Node& where, RunSpec* run) {
  if (run->method != EvalMethod::kC2C) {
    RunSpec clean;
    clean.method = run->method;
    clean.max_new_tokens = run->max_new_tokens;
    clean.blocks = std::move(run->blocks);
    clean.series = std::move(run->series);
    // The receiver answers alone: no pair. The other methods keep the
    // sharer (no fuser, no alignment: nothing is fused).
    if (run->method != EvalMethod::kReceiverOnly && !run->pair.sharer.empty()) {
      clean.pair.sharer = run->pair.sharer;
      clean.pair.sharer_dir = run->pair.sharer_dir;
      clean.pair.sharer_tokenizer_dir = run->pair.sharer_tokenizer_dir;
      clean.pair.no_fuser = true;
    }
    *run = std::move(clean);
    return absl::OkStatus();
  }
  if (run->proportion >= 1.0 || run->selection == "all") {
    run->selection = "all";
    run->proportion = 1.0;
    run->min_tokens = 0;
    run->shared_selection = false;
  }
  if (run->selection != "random") run->seed = 0;
  if (run->granularity != v1::GRANULARITY_PER_GROUP) run->group_size = 0;
  if (!IsIntScheme(run->scheme)) run->asymmetric = false;
  if (run->budget_bytes == 0) run->budget_mixed_precision = false;
  if (run->schedule.has_value() && run->schedule->default_scheme.has_value() &&
      *run->schedule->default_scheme != run->scheme) {
    return Err(where, absl::StrCat(
                          "schedule '", run->schedule->name, "' has default ",
                          SchemeName(*run->schedule->default_scheme),
                          " but the run's scheme is ", SchemeName(run->scheme),
                          " (the scheme axis is the schedule's default)"));
  }
  return absl::OkStatus();
}

std::string FormatNumber(double v) { return absl::StrFormat("%g", v); }

}  // namespace

std::string RunId(const RunSpec& r) {
  std::vector<std::string> parts;
  parts.push_back(EvalMethodName(r.method));
  if (r.method == EvalMethod::kC2C) {
    parts.push_back(SchemeName(r.scheme));
    parts.push_back(GranularityName(r.granularity));
    if (r.group_size > 0) parts.push_back(absl::StrCat("g", r.group_size));
    if (r.asymmetric) parts.push_back("asym");
    parts.push_back(r.selection);
    if (r.selection != "all") {
      parts.push_back(absl::StrCat("p", FormatNumber(r.proportion)));
      if (r.min_tokens > 0) parts.push_back(absl::StrCat("min", r.min_tokens));
      if (r.seed != 0) parts.push_back(absl::StrCat("seed", r.seed));
      if (r.shared_selection) parts.push_back("shared");
    }
    if (r.schedule.has_value()) parts.push_back(r.schedule->name);
    if (r.zstd_level > 0) parts.push_back(absl::StrCat("zstd", r.zstd_level));
    if (r.budget_bytes > 0) {
      parts.push_back(absl::StrCat("budget", r.budget_bytes,
                                   r.budget_mixed_precision ? "mp" : ""));
    }
    if (!r.layers.empty()) {
      parts.push_back(absl::StrCat("layers", absl::StrJoin(r.layers, "_")));
    }
  }
  if (!r.pair.sharer.empty()) parts.push_back("sharer_" + r.pair.sharer);
  if (!r.pair.token_alignment.empty() || !r.pair.alignment_strategy.empty()) {
    parts.push_back(absl::StrCat(
        "align_",
        r.pair.token_alignment.empty() ? "auto" : r.pair.token_alignment,
        r.pair.alignment_strategy.empty() ? "" : "_",
        r.pair.alignment_strategy));
  }
  if (r.max_new_tokens != 64) {
    parts.push_back(absl::StrCat("max", r.max_new_tokens));
  }
  return absl::StrJoin(parts, "-");
}

namespace {

std::string PairLabel(const RunSpec& r) {
  std::string label;
  if (!r.pair.sharer.empty()) absl::StrAppend(&label, " ", r.pair.sharer);
  if (!r.pair.token_alignment.empty() || !r.pair.alignment_strategy.empty()) {
    absl::StrAppend(
        &label, " align ",
        r.pair.token_alignment.empty() ? "auto" : r.pair.token_alignment,
        r.pair.alignment_strategy.empty() ? "" : "/",
        r.pair.alignment_strategy);
  }
  return label;
}

std::string TransferLabel(const RunSpec& r) {
  std::string label = absl::StrCat(r.budget_bytes > 0 ? "budget" : r.selection,
                                   " ", SchemeName(r.scheme));
  if (r.granularity != v1::GRANULARITY_PER_HEAD) {
    absl::StrAppend(&label, "/", GranularityName(r.granularity));
    if (r.group_size > 0) absl::StrAppend(&label, r.group_size);
  }
  if (r.asymmetric) absl::StrAppend(&label, " asym");
  if (r.min_tokens > 0) absl::StrAppend(&label, " min", r.min_tokens);
  if (r.shared_selection) absl::StrAppend(&label, " shared");
  if (r.schedule.has_value()) absl::StrAppend(&label, " +", r.schedule->name);
  if (r.zstd_level > 0) absl::StrAppend(&label, " zstd", r.zstd_level);
  if (r.budget_mixed_precision) absl::StrAppend(&label, " mixed");
  if (!r.layers.empty()) absl::StrAppend(&label, " layers");
  return label;
}

}  // namespace

std::string SeriesLabel(const RunSpec& r) {
  if (!r.series.empty()) return r.series;
  if (r.method != EvalMethod::kC2C) {
    return absl::StrCat(EvalMethodName(r.method), PairLabel(r));
  }
  return absl::StrCat(TransferLabel(r), PairLabel(r));
}

absl::StatusOr<GridVariables> ParseGridVariables(absl::string_view text) {
  GridVariables out;
  for (absl::string_view entry : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) continue;
    const size_t eq = entry.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--grid_var entry '", entry, "' is not NAME=VALUE"));
    }
    const std::string name(entry.substr(0, eq));
    if (!VariableName(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--grid_var name '", name, "' must be [A-Za-z_][A-Za-z0-9_]*"));
    }
    out[name] = std::string(entry.substr(eq + 1));
  }
  return out;
}

absl::StatusOr<Grid> ParseGridYaml(absl::string_view yaml,
                                   const std::string& base_dir,
                                   const GridVariables& variables) {
  YAML::Node loaded;
  try {
    loaded = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("grid: malformed YAML: ", e.what()));
  }
  const YAML::Node root(loaded);
  if (!root.IsMap()) return Err(root, "expected a map with `runs`");
  RETURN_IF_ERROR(CheckKeys(root, "the grid",
                            {"name", "description", "datasets", "defaults",
                             "schedules", "sharers", "runs"}));
  Grid grid;
  Context ctx;
  ctx.base_dir = base_dir;
  if (root["name"].IsDefined()) {
    ASSIGN_OR_RETURN(grid.name, ScalarString(root["name"], "name"));
  }
  if (const YAML::Node ds = root["datasets"]; ds.IsDefined() && !ds.IsNull()) {
    if (!ds.IsMap()) return Err(ds, "`datasets` maps a dataset to a file");
    for (const auto& entry : ds) {
      const std::string kind_name = entry.first.Scalar();
      absl::StatusOr<DatasetKind> kind = ParseDatasetKind(kind_name);
      if (!kind.ok()) return Err(entry.first, kind.status().message());
      ASSIGN_OR_RETURN(std::string path, ScalarString(entry.second, kind_name));
      grid.datasets.emplace_back(DatasetKindName(*kind),
                                 ResolvePath(base_dir, path));
    }
  }
  if (const YAML::Node s = root["schedules"]; s.IsDefined() && !s.IsNull()) {
    if (!s.IsMap())
      return Err(s, "`schedules` must be a map of name: schedule");
    for (const auto& entry : s) {
      const std::string name = entry.first.Scalar();
      ASSIGN_OR_RETURN(ScheduleDef def,
                       ParseScheduleDef(entry.second, name, base_dir));
      ctx.schedules[name] = std::move(def);
    }
  }
  if (const YAML::Node s = root["sharers"]; s.IsDefined() && !s.IsNull()) {
    if (!s.IsMap()) return Err(s, "`sharers` must be a map of name: sharer");
    for (const auto& entry : s) {
      const std::string name = entry.first.Scalar();
      ASSIGN_OR_RETURN(SharerDef def,
                       ParseSharerDef(entry.second, name, base_dir, variables));
      ctx.sharers[name] = std::move(def);
    }
  }
  std::set<std::string> noted;
  const YAML::Node defaults = root["defaults"];
  const bool has_defaults = defaults.IsDefined() && !defaults.IsNull();
  if (has_defaults) {
    if (!defaults.IsMap()) return Err(defaults, "`defaults` must be a map");
    RETURN_IF_ERROR(CheckKeys(defaults, "defaults", BlockKeys()));
    if (defaults["name"].IsDefined()) {
      return Err(defaults["name"], "`name` cannot be a default");
    }
  }
  const YAML::Node runs = root["runs"];
  if (!runs.IsDefined() || !runs.IsSequence() || runs.size() == 0) {
    return Err(root, "`runs` must be a non-empty list of blocks");
  }
  absl::flat_hash_map<std::string, size_t> index;  // id -> grid.runs index
  std::set<std::string> block_names;
  for (const YAML::Node& block : runs) {
    if (!block.IsMap()) return Err(block, "a run block must be a map");
    RETURN_IF_ERROR(CheckKeys(block, "a run block", BlockKeys()));
    if (!block["name"].IsDefined()) return Err(block, "a block needs a name");
    ASSIGN_OR_RETURN(std::string name, ScalarString(block["name"], "name"));
    if (!SafeName(name)) {
      return Err(block["name"], absl::StrCat("block name '", name,
                                             "' must be [A-Za-z0-9_.-]+"));
    }
    if (!block_names.insert(name).second) {
      return Err(block["name"], absl::StrCat("duplicate block '", name, "'"));
    }
    // Merged settings: the block over the defaults, in BlockKeys order.
    // (Nodes are only copy-constructed: Node::operator= writes through.)
    std::vector<std::pair<std::string, std::vector<YAML::Node>>> axes;
    RunSpec base;
    base.blocks = {name};
    for (const std::string& key : BlockKeys()) {
      if (key == "name") continue;
      std::optional<YAML::Node> found;
      if (block[key].IsDefined()) {
        found.emplace(block[key]);
      } else if (has_defaults && defaults[key].IsDefined()) {
        found.emplace(defaults[key]);
      }
      if (!found.has_value()) continue;
      const YAML::Node& v = *found;
      if (key == "series") {
        ASSIGN_OR_RETURN(base.series, ScalarString(v, key));
      } else if (key == "layers") {
        if (!v.IsSequence()) return Err(v, "`layers` must be a list");
        for (const YAML::Node& l : v) {
          ASSIGN_OR_RETURN(uint32_t layer,
                           ScalarAs<uint32_t>(l, "layers", "a layer number"));
          base.layers.push_back(layer);
        }
        std::sort(base.layers.begin(), base.layers.end());
        base.layers.erase(std::unique(base.layers.begin(), base.layers.end()),
                          base.layers.end());
      } else if (v.IsSequence()) {
        if (v.size() == 0) {
          return Err(v, absl::StrCat("`", key, "` is an empty list"));
        }
        std::vector<YAML::Node> values;
        for (const YAML::Node& e : v) values.emplace_back(e);
        axes.emplace_back(key, std::move(values));
      } else {
        axes.emplace_back(key, std::vector<YAML::Node>{v});
      }
    }
    // Odometer over the axes.
    std::vector<size_t> at(axes.size(), 0);
    while (true) {
      RunSpec run = base;
      std::string unavailable;
      for (size_t a = 0; a < axes.size(); ++a) {
        RETURN_IF_ERROR(ApplyKey(axes[a].first, axes[a].second[at[a]], ctx,
                                 &run, &unavailable));
      }
      RETURN_IF_ERROR(Normalize(block, &run));
      run.id = RunId(run);
      if (!unavailable.empty() && !run.pair.sharer.empty()) {
        const std::string note = absl::StrCat(
            "block ", name, ": left out the runs with ", unavailable);
        if (noted.insert(note).second) grid.notes.push_back(note);
        size_t a = 0;
        for (; a < axes.size(); ++a) {
          if (++at[a] < axes[a].second.size()) break;
          at[a] = 0;
        }
        if (a == axes.size()) break;
        continue;
      }
      if (run.method == EvalMethod::kC2C && run.selection != "all" &&
          run.budget_bytes == 0) {
        RunSpec full = run;
        full.selection = "all";
        full.proportion = 1.0;
        full.min_tokens = 0;
        full.seed = 0;
        full.shared_selection = false;
        run.anchor_id = RunId(full);
      }
      run.series = SeriesLabel(run);
      auto [it, inserted] = index.emplace(run.id, grid.runs.size());
      if (inserted) {
        grid.runs.push_back(std::move(run));
      } else {
        std::vector<std::string>& blocks = grid.runs[it->second].blocks;
        if (std::find(blocks.begin(), blocks.end(), name) == blocks.end()) {
          blocks.push_back(name);
        }
      }
      size_t a = 0;
      for (; a < axes.size(); ++a) {
        if (++at[a] < axes[a].second.size()) break;
        at[a] = 0;
      }
      if (a == axes.size()) break;
    }
  }
  return grid;
}

absl::StatusOr<Grid> LoadGridFile(const std::string& path,
                                  const GridVariables& variables) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  absl::StatusOr<Grid> grid =
      ParseGridYaml(text, fs::path(path).parent_path().string(), variables);
  if (!grid.ok()) {
    return absl::Status(grid.status().code(),
                        absl::StrCat(path, ": ", grid.status().message()));
  }
  grid->path = path;
  if (grid->name.empty()) grid->name = fs::path(path).stem().string();
  return grid;
}

// ---------------------------------------------------------------- resolve

namespace {

uint32_t MaxLayer(const std::vector<v1::LayerOverride>& overrides) {
  uint32_t max_layer = 0;
  for (const v1::LayerOverride& o : overrides) {
    for (uint32_t l : o.layers()) max_layer = std::max(max_layer, l);
    if (o.has_range()) max_layer = std::max(max_layer, o.range().last());
  }
  return max_layer;
}

absl::StatusOr<LayerSchedule> ResolveSchedule(const RunSpec& run,
                                              const BackendLayout& layout) {
  const ScheduleDef& def = *run.schedule;
  const bool receiver = def.layers_of == ScheduleLayers::kReceiver;
  const int count = receiver ? layout.receiver_layers : layout.sharer_layers;
  const char* side = receiver ? "receiver" : "sharer";
  if (count <= 0 && (def.last_n > 0 || receiver)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "schedule '", def.name, "' needs the ", side,
        "'s layer count, which the backend does not know (gRPC: pass "
        "--receiver_layers and --sharer_layers)"));
  }
  LayerSchedule schedule;
  if (def.last_n > 0) {
    schedule =
        LastLayersSchedule(run.scheme, def.last_n, def.last_scheme, count);
  } else {
    schedule.default_scheme = def.default_scheme.value_or(run.scheme);
    schedule.overrides = def.overrides;
    if (count > 0 && !def.overrides.empty() &&
        MaxLayer(def.overrides) >= static_cast<uint32_t>(count)) {
      return absl::InvalidArgumentError(
          absl::StrCat("schedule '", def.name, "' names ", side, " layer ",
                       MaxLayer(def.overrides), " but the ", side, " has ",
                       count, " layers"));
    }
  }
  if (!receiver) return schedule;
  std::vector<int> map = layout.layer_map;
  if (map.empty()) {
    if (layout.sharer_layers <= 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "schedule '", def.name,
          "' is indexed by receiver layer and needs the sharer's layer "
          "count to translate it"));
    }
    ASSIGN_OR_RETURN(
        map, LastAlignedLayerMap(layout.receiver_layers, layout.sharer_layers));
  }
  return ReceiverToSharerSchedule(schedule, map, layout.sharer_layers);
}

}  // namespace

absl::StatusOr<ResolvedRun> ResolveRun(const RunSpec& run,
                                       const BackendLayout& layout) {
  ResolvedRun out;
  out.spec = run;
  if (run.method != EvalMethod::kC2C) return out;
  v1::TransferSpec& t = out.transfer;
  t.set_scheme(run.scheme);
  t.set_granularity(run.granularity);
  if (run.group_size > 0) t.set_group_size(run.group_size);
  t.set_asymmetric(run.asymmetric);
  v1::TokenSelection* sel = t.mutable_selection();
  if (run.selection == "all") {
    sel->set_mode(v1::SELECTION_ALL);
  } else {
    if (IsInProcessSelectionStrategy(run.selection)) {
      out.selection_strategy = run.selection;
    } else {
      ASSIGN_OR_RETURN(v1::SelectionMode mode,
                       ParseSelectionMode(run.selection));
      sel->set_mode(mode);
      sel->set_seed(run.seed);
    }
    sel->set_proportion(run.proportion);
    sel->set_min_tokens(run.min_tokens);
    sel->set_shared_across_layers(run.shared_selection);
  }
  if (run.zstd_level > 0) {
    t.mutable_entropy()->set_coder(v1::ENTROPY_CODER_ZSTD);
    t.mutable_entropy()->set_level(run.zstd_level);
  }
  if (run.budget_bytes > 0) {
    t.set_max_payload_bytes(run.budget_bytes);
    t.set_budget_allow_mixed_precision(run.budget_mixed_precision);
  }
  for (uint32_t l : run.layers) t.add_layers(l);
  if (run.schedule.has_value()) {
    absl::StatusOr<LayerSchedule> schedule = ResolveSchedule(run, layout);
    if (!schedule.ok()) {
      return absl::Status(
          schedule.status().code(),
          absl::StrCat("run ", run.id, ": ", schedule.status().message()));
    }
    ApplyScheduleToSpec(*schedule, &t);
  }
  return out;
}

}  // namespace eval
}  // namespace kvwire
