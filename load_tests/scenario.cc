#include "load_tests/scenario.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/codec/scheme_table.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace load {
namespace {

using nlohmann::json;

std::string Where(const YAML::Node& node) {
  if (!node.IsDefined()) return "";
  const YAML::Mark mark = node.Mark();
  if (mark.line < 0) return "";
  return absl::StrCat(" (line ", mark.line + 1, ")");
}

absl::Status Error(const YAML::Node& node, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(message, Where(node)));
}

absl::Status CheckKeys(const YAML::Node& map, absl::string_view what,
                       const std::set<std::string>& allowed) {
  if (!map.IsMap()) return Error(map, absl::StrCat(what, " must be a map"));
  for (const auto& kv : map) {
    const std::string key = kv.first.as<std::string>();
    if (allowed.count(key) == 0) {
      return Error(kv.first, absl::StrCat("unknown key '", key, "' in ", what,
                                          " (expected one of: ",
                                          absl::StrJoin(allowed, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<T> Scalar(const YAML::Node& node, absl::string_view key) {
  if (!node.IsScalar()) {
    return Error(node, absl::StrCat("'", key, "' must be a scalar"));
  }
  T value{};
  if (!YAML::convert<T>::decode(node, value)) {
    return Error(
        node, absl::StrCat("bad value '", node.Scalar(), "' for '", key, "'"));
  }
  return value;
}

// The enum type a spec key names, as its value prefix.
std::string EnumPrefix(absl::string_view key) {
  if (key == "scheme") return "SCHEME_";
  if (key == "granularity") return "GRANULARITY_";
  if (key == "mode") return "SELECTION_";
  if (key == "coder") return "ENTROPY_CODER_";
  return "";
}

std::string ExpandEnum(absl::string_view key, const std::string& value) {
  const std::string prefix = EnumPrefix(key);
  std::string upper = absl::AsciiStrToUpper(value);
  if (prefix.empty() || absl::StartsWith(upper, prefix)) return upper;
  // The codec's short names and aliases (the scheme table's; a row's name is
  // its enumerator's without the prefix).
  if (prefix == "SCHEME_") {
    if (const SchemeInfo* row = FindSchemeByName(value)) {
      upper = absl::AsciiStrToUpper(row->name);
    }
  }
  if (prefix == "GRANULARITY_" &&
      (upper == "LAYER" || upper == "HEAD" || upper == "TOKEN" ||
       upper == "CHANNEL" || upper == "GROUP")) {
    upper = "PER_" + upper;
  }
  return prefix + upper;
}

// YAML -> JSON for the protobuf JSON parser: scalars become booleans,
// integers, doubles or (enum names expanded) strings.
json ToJson(const YAML::Node& node, absl::string_view key) {
  if (node.IsMap()) {
    json object = json::object();
    for (const auto& kv : node) {
      const std::string k = kv.first.as<std::string>();
      object[k] = ToJson(kv.second, k);
    }
    return object;
  }
  if (node.IsSequence()) {
    json array = json::array();
    for (const YAML::Node& item : node) array.push_back(ToJson(item, key));
    return array;
  }
  if (!node.IsScalar()) return nullptr;
  const std::string s = node.Scalar();
  if (!EnumPrefix(key).empty()) return ExpandEnum(key, s);
  if (s == "true" || s == "false") return s == "true";
  int64_t i = 0;
  if (absl::SimpleAtoi(s, &i)) return i;
  double d = 0;
  if (absl::SimpleAtod(s, &d)) return d;
  return s;
}

absl::StatusOr<v1::TransferSpec> SpecFromNode(const YAML::Node& node) {
  v1::TransferSpec spec;
  if (!node.IsDefined() || node.IsNull()) return spec;
  json j;
  if (node.IsScalar()) {
    j = json::object({{"scheme", ExpandEnum("scheme", node.Scalar())}});
  } else if (node.IsMap()) {
    j = ToJson(node, "");
  } else {
    return Error(node, "a spec must be a scheme name or a map");
  }
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  // Invalid UTF-8 in a scalar must not make dump() throw (found by
  // fuzz/scenario_fuzzer.cc); it becomes U+FFFD and the spec is refused.
  const std::string text =
      j.dump(-1, ' ', false, json::error_handler_t::replace);
  const auto status =
      google::protobuf::util::JsonStringToMessage(text, &spec, options);
  if (!status.ok()) {
    return Error(node, absl::StrCat("bad transfer spec ", text, ": ",
                                    std::string(status.message())));
  }
  return spec;
}

std::string SpecLabel(const YAML::Node& node, const v1::TransferSpec& spec) {
  if (node.IsScalar()) return absl::AsciiStrToLower(node.Scalar());
  return kvwire::load::SpecLabel(spec);
}

}  // namespace

std::string SpecLabel(const v1::TransferSpec& spec) {
  std::string label = absl::AsciiStrToLower(absl::StripPrefix(
      v1::Scheme_Name(spec.scheme() == v1::SCHEME_UNSPECIFIED ? v1::SCHEME_INT8
                                                              : spec.scheme()),
      "SCHEME_"));
  if (spec.layer_overrides_size() > 0) absl::StrAppend(&label, "+mixed");
  if (spec.granularity() != v1::GRANULARITY_UNSPECIFIED) {
    absl::StrAppend(
        &label, "/",
        absl::AsciiStrToLower(absl::StripPrefix(
            v1::Granularity_Name(spec.granularity()), "GRANULARITY_")));
  }
  if (spec.has_selection() && spec.selection().proportion() > 0 &&
      spec.selection().proportion() < 1) {
    absl::StrAppend(&label, "@", spec.selection().proportion());
  }
  if (spec.entropy().coder() == v1::ENTROPY_CODER_ZSTD) {
    absl::StrAppend(&label, "+zstd");
  }
  if (spec.max_payload_bytes() > 0) {
    absl::StrAppend(&label, "<=", spec.max_payload_bytes(), "B");
  }
  return label;
}

std::vector<std::string> SplitSpecList(absl::string_view text) {
  std::vector<std::string> out;
  std::string current;
  int depth = 0;
  for (char c : text) {
    if (c == '{' || c == '[') ++depth;
    if (c == '}' || c == ']') --depth;
    if (c == ',' && depth == 0) {
      if (!absl::StripAsciiWhitespace(current).empty()) {
        out.emplace_back(absl::StripAsciiWhitespace(current));
      }
      current.clear();
      continue;
    }
    current.push_back(c);
  }
  if (!absl::StripAsciiWhitespace(current).empty()) {
    out.emplace_back(absl::StripAsciiWhitespace(current));
  }
  return out;
}

namespace {

absl::StatusOr<Scenario> ParseScenario(const YAML::Node& node, int index) {
  if (absl::Status st = CheckKeys(node, "a scenario",
                                  {"name", "weight", "spec", "prompt_tokens",
                                   "answer_mode", "max_new_tokens"});
      !st.ok()) {
    return st;
  }
  Scenario s;
  const YAML::Node spec = node["spec"];
  auto parsed = SpecFromNode(spec);
  if (!parsed.ok()) return parsed.status();
  s.spec = *parsed;
  s.spec_label = spec.IsDefined() ? SpecLabel(spec, s.spec) : "int8";
  if (node["prompt_tokens"]) {
    auto v = Scalar<int>(node["prompt_tokens"], "prompt_tokens");
    if (!v.ok()) return v.status();
    s.prompt_tokens = *v;
  }
  s.name = node["name"] ? node["name"].as<std::string>()
                        : absl::StrCat(s.spec_label, "-", s.prompt_tokens);
  if (node["weight"]) {
    auto v = Scalar<double>(node["weight"], "weight");
    if (!v.ok()) return v.status();
    s.weight = *v;
  }
  if (node["answer_mode"]) {
    const std::string mode = absl::AsciiStrToUpper(
        absl::StrCat("ANSWER_MODE_", node["answer_mode"].as<std::string>()));
    if (!v1::AnswerMode_Parse(mode, &s.answer_mode)) {
      return Error(node["answer_mode"],
                   "answer_mode must be c2c, receiver_only or text_to_text");
    }
  }
  if (node["max_new_tokens"]) {
    auto v = Scalar<uint32_t>(node["max_new_tokens"], "max_new_tokens");
    if (!v.ok()) return v.status();
    s.max_new_tokens = *v;
  }
  (void)index;
  return s;
}

template <typename T>
absl::StatusOr<std::vector<T>> ScalarOrList(const YAML::Node& node,
                                            absl::string_view key) {
  std::vector<T> out;
  if (node.IsSequence()) {
    for (const YAML::Node& item : node) {
      auto v = Scalar<T>(item, key);
      if (!v.ok()) return v.status();
      out.push_back(*v);
    }
  } else {
    auto v = Scalar<T>(node, key);
    if (!v.ok()) return v.status();
    out.push_back(*v);
  }
  return out;
}

absl::StatusOr<LoadConfig> ParseRoot(const YAML::Node& root) {
  if (absl::Status st = CheckKeys(
          root, "the scenario file",
          {"name", "target", "rpc", "mode", "concurrency", "rate", "arrivals",
           "warmup_seconds", "duration_seconds", "requests", "max_in_flight",
           "deadline_seconds", "seed", "question_file", "chars_per_token",
           "model", "kvwire_extension", "scenarios"});
      !st.ok()) {
    return st;
  }
  LoadConfig c;
  if (root["name"]) c.name = root["name"].as<std::string>();
  if (root["target"]) c.target = root["target"].as<std::string>();
  if (root["model"]) c.model = root["model"].as<std::string>();
  if (root["kvwire_extension"]) {
    auto v = Scalar<bool>(root["kvwire_extension"], "kvwire_extension");
    if (!v.ok()) return v.status();
    c.kvwire_extension = *v;
  }
  if (root["rpc"]) {
    auto rpc = ParseRpcKind(root["rpc"].as<std::string>());
    if (!rpc.ok()) return Error(root["rpc"], rpc.status().message());
    c.rpc = *rpc;
  }
  if (root["mode"]) {
    const std::string mode = root["mode"].as<std::string>();
    if (mode == "closed") {
      c.mode = LoopMode::kClosed;
    } else if (mode == "open") {
      c.mode = LoopMode::kOpen;
    } else {
      return Error(root["mode"], "mode must be 'closed' or 'open'");
    }
  }
  if (root["concurrency"]) {
    auto v = ScalarOrList<int>(root["concurrency"], "concurrency");
    if (!v.ok()) return v.status();
    c.concurrency = *v;
  }
  if (root["rate"]) {
    auto v = ScalarOrList<double>(root["rate"], "rate");
    if (!v.ok()) return v.status();
    c.rates = *v;
  }
  if (root["arrivals"]) {
    const std::string a = root["arrivals"].as<std::string>();
    if (a != "poisson" && a != "uniform") {
      return Error(root["arrivals"], "arrivals must be poisson or uniform");
    }
    c.uniform_arrivals = a == "uniform";
  }
#define KVWIRE_LOAD_SCALAR(key, field, type) \
  if (root[key]) {                           \
    auto v = Scalar<type>(root[key], key);   \
    if (!v.ok()) return v.status();          \
    c.field = *v;                            \
  }
  KVWIRE_LOAD_SCALAR("warmup_seconds", warmup_seconds, double)
  KVWIRE_LOAD_SCALAR("duration_seconds", duration_seconds, double)
  KVWIRE_LOAD_SCALAR("requests", max_requests, int64_t)
  KVWIRE_LOAD_SCALAR("max_in_flight", max_in_flight, int)
  KVWIRE_LOAD_SCALAR("deadline_seconds", deadline_seconds, double)
  KVWIRE_LOAD_SCALAR("seed", seed, uint64_t)
  KVWIRE_LOAD_SCALAR("chars_per_token", chars_per_token, double)
#undef KVWIRE_LOAD_SCALAR
  if (root["question_file"]) {
    c.question_file = root["question_file"].as<std::string>();
  }
  const YAML::Node scenarios = root["scenarios"];
  if (scenarios.IsDefined()) {
    if (!scenarios.IsSequence()) {
      return Error(scenarios, "'scenarios' must be a list");
    }
    int i = 0;
    for (const YAML::Node& node : scenarios) {
      auto s = ParseScenario(node, i++);
      if (!s.ok()) return s.status();
      c.scenarios.push_back(*std::move(s));
    }
  }
  if (c.rpc == RpcKind::kOpenAiChat && !c.kvwire_extension) {
    // No transfer spec travels over the plain OpenAI API: label none.
    for (Scenario& s : c.scenarios) s.spec_label = "chat";
  }
  return c;
}

}  // namespace

absl::StatusOr<RpcKind> ParseRpcKind(absl::string_view name) {
  if (name == "share") return RpcKind::kShare;
  if (name == "answer") return RpcKind::kAnswer;
  if (name == "answer_stream") return RpcKind::kAnswerStream;
  if (name == "openai_chat") return RpcKind::kOpenAiChat;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown rpc '", name,
                   "' (share, answer, answer_stream or openai_chat)"));
}

std::string RpcKindName(RpcKind rpc) {
  switch (rpc) {
    case RpcKind::kShare:
      return "share";
    case RpcKind::kAnswer:
      return "answer";
    case RpcKind::kAnswerStream:
      return "answer_stream";
    case RpcKind::kOpenAiChat:
      return "openai_chat";
  }
  return "unknown";
}

absl::StatusOr<v1::TransferSpec> ParseSpecYaml(absl::string_view yaml_text) {
  try {
    return SpecFromNode(YAML::Load(std::string(yaml_text)));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad YAML: ", e.what()));
  }
}

absl::StatusOr<LoadConfig> ParseLoadConfigYaml(absl::string_view yaml_text) {
  try {
    const YAML::Node root = YAML::Load(std::string(yaml_text));
    if (!root.IsDefined() || root.IsNull()) {
      return absl::InvalidArgumentError("empty scenario file");
    }
    return ParseRoot(root);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad YAML: ", e.what()));
  }
}

absl::StatusOr<LoadConfig> LoadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  auto config = ParseLoadConfigYaml(buffer.str());
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", config.status().message()));
  }
  // A relative question file is relative to the scenario file.
  if (!config->question_file.empty() &&
      std::filesystem::path(config->question_file).is_relative()) {
    config->question_file =
        (std::filesystem::path(path).parent_path() / config->question_file)
            .lexically_normal()
            .string();
  }
  return config;
}

absl::Status ValidateLoadConfig(const LoadConfig& c) {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  if (c.target.empty()) return bad("no target (--target or 'target:')");
  const bool url_target = absl::StartsWith(c.target, "http://") ||
                          absl::StartsWith(c.target, "https://");
  if (c.rpc == RpcKind::kOpenAiChat && !url_target) {
    return bad("rpc openai_chat needs an http:// or https:// target URL, not '",
               c.target, "'");
  }
  if (c.rpc != RpcKind::kOpenAiChat && url_target) {
    return bad("target '", c.target,
               "' is a URL: only rpc openai_chat takes "
               "one (gRPC targets are host:port)");
  }
  if (c.scenarios.empty()) return bad("no scenarios");
  if (c.mode == LoopMode::kClosed) {
    if (c.concurrency.empty()) return bad("closed loop needs concurrency");
    if (static_cast<int>(c.concurrency.size()) > kMaxLoadPoints) {
      return bad("at most ", kMaxLoadPoints, " load points");
    }
    for (int n : c.concurrency) {
      if (n < 1 || n > kMaxConcurrency) {
        return bad("concurrency ", n, " outside [1, ", kMaxConcurrency, "]");
      }
    }
  } else {
    if (c.rates.empty()) return bad("open loop needs a rate");
    if (static_cast<int>(c.rates.size()) > kMaxLoadPoints) {
      return bad("at most ", kMaxLoadPoints, " load points");
    }
    for (double r : c.rates) {
      if (!(r > 0) || r > kMaxRate) {
        return bad("rate ", r, " outside (0, ", kMaxRate, "] per second");
      }
    }
    if (c.max_in_flight < 1 || c.max_in_flight > kMaxInFlight) {
      return bad("max_in_flight outside [1, ", kMaxInFlight, "]");
    }
  }
  if (!(c.duration_seconds > 0) || c.duration_seconds > kMaxPointSeconds) {
    return bad("duration_seconds outside (0, ", kMaxPointSeconds, "]");
  }
  if (c.warmup_seconds < 0 || c.warmup_seconds > kMaxWarmupSeconds) {
    return bad("warmup_seconds outside [0, ", kMaxWarmupSeconds, "]");
  }
  if (c.max_requests < 0 || c.max_requests > kMaxRequestsPerPoint) {
    return bad("requests outside [0, ", kMaxRequestsPerPoint, "]");
  }
  if (!(c.deadline_seconds > 0) || c.deadline_seconds > 3600) {
    return bad("deadline_seconds outside (0, 3600]");
  }
  if (!(c.chars_per_token > 0)) return bad("chars_per_token must be > 0");
  std::set<std::string> names;
  for (const Scenario& s : c.scenarios) {
    if (!names.insert(s.name).second) {
      return bad("duplicate scenario name '", s.name, "'");
    }
    if (!(s.weight > 0)) return bad("scenario '", s.name, "': weight <= 0");
    if (s.prompt_tokens < 1 || s.prompt_tokens > kMaxPromptTokens) {
      return bad("scenario '", s.name, "': prompt_tokens outside [1, ",
                 kMaxPromptTokens, "]");
    }
    if (s.max_new_tokens > 4096) {
      return bad("scenario '", s.name, "': max_new_tokens > 4096");
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> ParseQuestions(absl::string_view text) {
  std::vector<std::string> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    if (absl::StartsWith(line, "{")) {
      const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) continue;
      std::string q;
      if (j.contains("question") && j["question"].is_string()) {
        q = j["question"].get<std::string>();
      } else if (j.contains("question") && j["question"].is_object() &&
                 j["question"].contains("stem") &&
                 j["question"]["stem"].is_string()) {
        q = j["question"]["stem"].get<std::string>();
      } else if (j.contains("question_stem") &&
                 j["question_stem"].is_string()) {
        q = j["question_stem"].get<std::string>();
      }
      if (!q.empty()) out.push_back(q);
      continue;
    }
    out.emplace_back(line);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> LoadQuestions(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::vector<std::string> questions = ParseQuestions(buffer.str());
  if (questions.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no questions in it"));
  }
  return questions;
}

PromptSource::PromptSource(std::vector<std::string> questions, uint64_t seed)
    : questions_(std::move(questions)), rng_(seed) {
  if (questions_.empty()) {
    questions_.push_back("What is the capital of France?");
  }
}

const std::string& PromptSource::Draw() {
  std::uniform_int_distribution<size_t> pick(0, questions_.size() - 1);
  return questions_[pick(rng_)];
}

std::vector<uint32_t> PromptSource::TokenIds(int tokens, uint32_t vocab_size) {
  if (vocab_size == 0) vocab_size = 256;
  std::vector<uint32_t> ids;
  ids.reserve(tokens);
  while (static_cast<int>(ids.size()) < tokens) {
    const std::string& q = Draw();
    for (unsigned char c : q) {
      if (static_cast<int>(ids.size()) == tokens) break;
      ids.push_back(c % vocab_size);
    }
    if (static_cast<int>(ids.size()) < tokens) ids.push_back('\n' % vocab_size);
  }
  return ids;
}

std::string PromptSource::Question(int tokens, double chars_per_token) {
  const std::string& question = Draw();
  const size_t target =
      static_cast<size_t>(std::max(1.0, tokens * chars_per_token));
  if (question.size() + 16 >= target) return question;
  std::string context = "Context:\n";
  while (context.size() + question.size() + 12 < target) {
    absl::StrAppend(&context, Draw(), "\n");
  }
  return absl::StrCat(context, "\nQuestion: ", question);
}

}  // namespace load
}  // namespace kvwire
