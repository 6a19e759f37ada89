// OpenAI chat-completions JSON <-> kvwire.v1.
#include "receiver_service/openai_mapping.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/optional.h"
#include "common/codec/scheme.h"
#include "common/protocol/answer_validation.h"
#include "common/protocol/generation_params.h"

namespace kvwire {
namespace {

using nlohmann::json;

constexpr char kParamPayload[] = "type.kvwire.dev/openai.param";
constexpr char kCodePayload[] = "type.kvwire.dev/openai.code";
constexpr size_t kMaxStopSequences = 4;
constexpr size_t kMaxErrorMessageBytes = 1024;

absl::Status Invalid(absl::string_view param, absl::string_view message) {
  return WithOpenAiError(absl::InvalidArgumentError(message), param);
}

absl::Status WrongType(absl::string_view param, absl::string_view expected) {
  return Invalid(param, absl::StrCat("'", param, "' must be ", expected, "."));
}

// Fields of the OpenAI API that the receiver accepts only at their default
// (anything else asks for something it cannot do): name -> whether `value`
// is that default.
bool IsHarmlessDefault(absl::string_view name, const json& value) {
  if (value.is_null()) return true;
  if (name == "n")
    return value.is_number_integer() && value.get<int64_t>() == 1;
  if (name == "frequency_penalty" || name == "presence_penalty") {
    return value.is_number() && value.get<double>() == 0;
  }
  if (name == "logprobs" || name == "parallel_tool_calls") {
    return value.is_boolean() && !value.get<bool>();
  }
  if (name == "response_format") {
    return value.is_object() && value.size() == 1 && value.contains("type") &&
           value["type"] == "text";
  }
  return false;
}

absl::StatusOr<std::string> ParseContent(const json& content,
                                         const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) {
    return WrongType(param, "a string or an array of text parts");
  }
  // Text parts are joined as the OpenAI API does for text-only models.
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string part_param = absl::StrCat(param, "[", i, "]");
    if (!part.is_object() || !part.contains("type") || part["type"] != "text" ||
        !part.contains("text") || !part["text"].is_string()) {
      return Invalid(part_param,
                     absl::StrCat("'", part_param,
                                  "' must be {\"type\": \"text\", \"text\": "
                                  "...}; this model reads text only."));
    }
    for (const auto& [key, unused] : part.items()) {
      if (key != "type" && key != "text") {
        return Invalid(absl::StrCat(part_param, ".", key),
                       absl::StrCat("Unrecognized field '", key, "' in '",
                                    part_param, "'."));
      }
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

absl::Status ParseMessages(const json& messages, v1::AnswerRequest& answer) {
  if (!messages.is_array()) return WrongType("messages", "an array");
  if (messages.empty()) {
    return Invalid("messages", "'messages' must contain at least 1 message.");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return WrongType(param, "an object");
    for (const auto& [key, unused] : m.items()) {
      if (key != "role" && key != "content" && key != "name") {
        return Invalid(absl::StrCat(param, ".", key),
                       absl::StrCat("Unsupported field '", key, "' in '", param,
                                    "' (text messages only)."));
      }
    }
    if (!m.contains("role") || !m["role"].is_string()) {
      return WrongType(absl::StrCat(param, ".role"), "a string");
    }
    std::string role = m["role"].get<std::string>();
    // The receiver's templates know system / user / assistant; OpenAI's
    // newer "developer" role is the system prompt.
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant") {
      return Invalid(absl::StrCat(param, ".role"),
                     absl::StrCat("Unsupported role '", role, "' in '", param,
                                  "': system, developer, user or assistant."));
    }
    if (!m.contains("content")) {
      return WrongType(absl::StrCat(param, ".content"), "present");
    }
    absl::StatusOr<std::string> content =
        ParseContent(m["content"], absl::StrCat(param, ".content"));
    if (!content.ok()) return content.status();
    v1::ChatMessage* message = answer.add_messages();
    message->set_role(role);
    message->set_content(*std::move(content));
  }
  return absl::OkStatus();
}

// A non-negative integer that fits `max`, or an error naming `param`.
absl::StatusOr<uint64_t> UnsignedField(const json& value,
                                       absl::string_view param, uint64_t min,
                                       uint64_t max) {
  const bool in_range =
      (value.is_number_unsigned() && value.get<uint64_t>() >= min &&
       value.get<uint64_t>() <= max) ||
      (value.is_number_integer() && !value.is_number_unsigned() &&
       value.get<int64_t>() >= 0 &&
       static_cast<uint64_t>(value.get<int64_t>()) >= min &&
       static_cast<uint64_t>(value.get<int64_t>()) <= max);
  if (!in_range) {
    return WrongType(param,
                     absl::StrCat("an integer in [", min, ", ", max, "]"));
  }
  return value.is_number_unsigned()
             ? value.get<uint64_t>()
             : static_cast<uint64_t>(value.get<int64_t>());
}

absl::StatusOr<double> NumberField(const json& value, absl::string_view param,
                                   double min, double max) {
  if (!value.is_number() || value.get<double>() < min ||
      value.get<double>() > max) {
    return WrongType(param, absl::StrCat("a number in [", min, ", ", max, "]"));
  }
  return value.get<double>();
}

absl::Status ParseStop(const json& stop, std::vector<std::string>& out) {
  if (stop.is_string()) {
    out.push_back(stop.get<std::string>());
  } else if (stop.is_array()) {
    if (stop.size() > kMaxStopSequences) {
      return Invalid("stop", "'stop' takes at most 4 sequences.");
    }
    for (const json& s : stop) {
      if (!s.is_string()) return WrongType("stop", "a string or strings");
      out.push_back(s.get<std::string>());
    }
  } else {
    return WrongType("stop", "a string or an array of strings");
  }
  for (const std::string& s : out) {
    if (s.empty())
      return Invalid("stop", "'stop' sequences must not be empty.");
  }
  return absl::OkStatus();
}

// Short names ("int4", "head", "back") for the enum fields people write by
// hand; proto3 JSON's own names (SCHEME_INT4, ...) pass unchanged.
absl::Status ExpandSpecShortNames(json& spec) {
  auto expand = [](json& field, auto parse, auto name_of,
                   absl::string_view prefix) -> absl::Status {
    if (!field.is_string()) return absl::OkStatus();
    const std::string value = field.get<std::string>();
    if (absl::StartsWith(value, prefix)) return absl::OkStatus();
    auto parsed = parse(value);
    if (!parsed.ok()) return parsed.status();
    field = name_of(*parsed);
    return absl::OkStatus();
  };
  auto scheme = [&](json& field) {
    return expand(
        field, [](absl::string_view v) { return ParseScheme(v); },
        [](v1::Scheme s) { return v1::Scheme_Name(s); }, "SCHEME_");
  };
  if (!spec.is_object()) return absl::OkStatus();
  if (spec.contains("scheme")) {
    if (absl::Status st = scheme(spec["scheme"]); !st.ok()) {
      return Invalid("kvwire.spec.scheme", st.message());
    }
  }
  if (spec.contains("layer_overrides") && spec["layer_overrides"].is_array()) {
    for (json& o : spec["layer_overrides"]) {
      if (o.is_object() && o.contains("scheme")) {
        if (absl::Status st = scheme(o["scheme"]); !st.ok()) {
          return Invalid("kvwire.spec.layer_overrides.scheme", st.message());
        }
      }
    }
  }
  if (spec.contains("granularity")) {
    if (absl::Status st = expand(
            spec["granularity"],
            [](absl::string_view v) { return ParseGranularity(v); },
            [](v1::Granularity g) { return v1::Granularity_Name(g); },
            "GRANULARITY_");
        !st.ok()) {
      return Invalid("kvwire.spec.granularity", st.message());
    }
  }
  if (spec.contains("selection") && spec["selection"].is_object() &&
      spec["selection"].contains("mode")) {
    if (absl::Status st = expand(
            spec["selection"]["mode"],
            [](absl::string_view v) { return ParseSelectionMode(v); },
            [](v1::SelectionMode m) { return v1::SelectionMode_Name(m); },
            "SELECTION_");
        !st.ok()) {
      return Invalid("kvwire.spec.selection.mode", st.message());
    }
  }
  return absl::OkStatus();
}

absl::Status ParseKvwire(const json& kvwire, v1::AnswerRequest& answer) {
  if (!kvwire.is_object()) return WrongType("kvwire", "an object");
  for (const auto& [key, value] : kvwire.items()) {
    const std::string param = absl::StrCat("kvwire.", key);
    if (value.is_null()) continue;
    if (key == "mode") {
      if (!value.is_string()) return WrongType(param, "a string");
      v1::AnswerMode mode;
      if (absl::Status st = ParseAnswerMode(value.get<std::string>(), &mode);
          !st.ok()) {
        return Invalid(param, st.message());
      }
      answer.set_mode(mode);
    } else if (key == "fallback") {
      if (!value.is_string()) return WrongType(param, "a string");
      v1::FallbackPolicy policy;
      if (absl::Status st =
              ParseFallbackPolicy(value.get<std::string>(), &policy);
          !st.ok()) {
        return Invalid(param, st.message());
      }
      answer.set_fallback(policy);
    } else if (key == "spec") {
      json spec = value;
      if (!spec.is_object()) return WrongType(param, "an object");
      if (absl::Status st = ExpandSpecShortNames(spec); !st.ok()) return st;
      google::protobuf::util::JsonParseOptions options;
      options.ignore_unknown_fields = false;
      const auto st = google::protobuf::util::JsonStringToMessage(
          spec.dump(), answer.mutable_spec(), options);
      if (!st.ok()) {
        return Invalid(param, absl::StrCat("Invalid 'kvwire.spec' (a "
                                           "kvwire.v1.TransferSpec): ",
                                           st.message().as_string()));
      }
    } else if (key == "request_id") {
      if (!value.is_string()) return WrongType(param, "a string");
      answer.set_request_id(value.get<std::string>());
    } else if (key == "trace") {
      if (!value.is_boolean()) return WrongType(param, "a boolean");
      answer.set_trace(value.get<bool>());
    } else if (key == "top_k") {
      absl::StatusOr<uint64_t> top_k =
          UnsignedField(value, param, 0, std::numeric_limits<uint32_t>::max());
      if (!top_k.ok()) return top_k.status();
      answer.mutable_generation()->set_top_k(static_cast<uint32_t>(*top_k));
    } else {
      return Invalid(param, absl::StrCat("Unrecognized field '", param,
                                         "': mode, spec, fallback, "
                                         "request_id, trace or top_k."));
    }
  }
  return absl::OkStatus();
}

std::string ErrorType(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kResourceExhausted:
      return "rate_limit_error";
    case absl::StatusCode::kPermissionDenied:
      return "permission_error";
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kAlreadyExists:
      return "invalid_request_error";
    default:
      return "server_error";
  }
}

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAlreadyExists:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;  // nginx's "client closed request": nobody reads it.
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

// The `code` when the status carries none.
std::string DefaultErrorCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnauthenticated:
      return "invalid_api_key";
    case absl::StatusCode::kResourceExhausted:
      return "rate_limit_exceeded";
    case absl::StatusCode::kUnavailable:
      return "service_unavailable";
    case absl::StatusCode::kDeadlineExceeded:
      return "timeout";
    case absl::StatusCode::kCancelled:
      return "cancelled";
    default:
      return "";
  }
}

json StringOrNull(const absl::optional<absl::Cord>& value) {
  if (!value.has_value() || value->empty()) return nullptr;
  return std::string(*value);
}

}  // namespace

absl::Status WithOpenAiError(absl::Status status, absl::string_view param,
                             absl::string_view code) {
  if (!param.empty()) status.SetPayload(kParamPayload, absl::Cord(param));
  if (!code.empty()) status.SetPayload(kCodePayload, absl::Cord(code));
  return status;
}

absl::StatusOr<ChatCompletionRequest> ParseChatCompletionRequest(
    absl::string_view body, absl::string_view served_model_name) {
  const json request = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded()) {
    return Invalid("", "The request body is not valid JSON.");
  }
  if (!request.is_object()) {
    return Invalid("", "The request body must be a JSON object.");
  }
  ChatCompletionRequest out;
  v1::GenerationParams& generation = *out.answer.mutable_generation();
  std::optional<uint64_t> max_tokens;
  bool has_model = false;
  for (const auto& [key, value] : request.items()) {
    if (key == "model") {
      if (!value.is_string()) return WrongType("model", "a string");
      if (value.get<std::string>() != served_model_name) {
        return WithOpenAiError(absl::NotFoundError(absl::StrCat(
                                   "The model '", value.get<std::string>(),
                                   "' does not exist; this receiver serves '",
                                   served_model_name, "' (GET /v1/models).")),
                               "model", "model_not_found");
      }
      has_model = true;
    } else if (key == "messages") {
      if (absl::Status st = ParseMessages(value, out.answer); !st.ok()) {
        return st;
      }
    } else if (value.is_null()) {
      continue;  // Every other field is optional; null means absent.
    } else if (key == "stream") {
      if (!value.is_boolean()) return WrongType(key, "a boolean");
      out.stream = value.get<bool>();
    } else if (key == "stream_options") {
      if (!value.is_object()) return WrongType(key, "an object");
      for (const auto& [option, setting] : value.items()) {
        if (option != "include_usage" || !setting.is_boolean()) {
          return Invalid(absl::StrCat(key, ".", option),
                         "'stream_options' takes include_usage (a boolean).");
        }
        out.include_usage = setting.get<bool>();
      }
    } else if (key == "max_tokens" || key == "max_completion_tokens") {
      absl::StatusOr<uint64_t> n =
          UnsignedField(value, key, 1, std::numeric_limits<uint32_t>::max());
      if (!n.ok()) return n.status();
      if (max_tokens.has_value() && *max_tokens != *n) {
        return Invalid(key,
                       "'max_tokens' and 'max_completion_tokens' differ; "
                       "give one.");
      }
      max_tokens = *n;
    } else if (key == "temperature") {
      absl::StatusOr<double> t = NumberField(value, key, 0, 2);
      if (!t.ok()) return t.status();
      generation.set_temperature(static_cast<float>(*t));
    } else if (key == "top_p") {
      absl::StatusOr<double> p = NumberField(value, key, 0, 1);
      if (!p.ok()) return p.status();
      generation.set_top_p(static_cast<float>(*p));
    } else if (key == "seed") {
      absl::StatusOr<uint64_t> seed =
          UnsignedField(value, key, 0, std::numeric_limits<uint64_t>::max());
      if (!seed.ok()) return seed.status();
      generation.set_seed(*seed);
    } else if (key == "stop") {
      if (absl::Status st = ParseStop(value, out.stop); !st.ok()) return st;
    } else if (key == "user") {
      if (!value.is_string()) return WrongType(key, "a string");
      // An end-user id for abuse monitoring upstream: nothing to do here.
    } else if (key == "kvwire") {
      if (absl::Status st = ParseKvwire(value, out.answer); !st.ok()) {
        return st;
      }
    } else if (key == "n" || key == "frequency_penalty" ||
               key == "presence_penalty" || key == "logprobs" ||
               key == "parallel_tool_calls" || key == "response_format") {
      if (!IsHarmlessDefault(key, value)) {
        return Invalid(key, absl::StrCat("'", key,
                                         "' is not supported "
                                         "by this server except at its "
                                         "default",
                                         key == "n" ? " (n=1)" : "", "."));
      }
    } else {
      return Invalid(key, absl::StrCat("Unrecognized request argument "
                                       "supplied: ",
                                       key));
    }
  }
  if (!has_model) return Invalid("model", "'model' is required.");
  if (out.answer.messages_size() == 0) {
    return Invalid("messages", "'messages' is required.");
  }
  if (max_tokens.has_value()) {
    generation.set_max_new_tokens(static_cast<uint32_t>(*max_tokens));
  }
  if (!out.stream && out.include_usage) {
    return Invalid("stream_options",
                   "'stream_options' is only allowed when 'stream' is true.");
  }
  return out;
}

OpenAiError OpenAiErrorFromStatus(const absl::Status& status) {
  OpenAiError error;
  error.http_status = HttpStatusOf(status.code());
  std::string message(status.message());
  if (message.size() > kMaxErrorMessageBytes) {
    message.resize(kMaxErrorMessageBytes);
    message += "...";
  }
  json code = StringOrNull(status.GetPayload(kCodePayload));
  if (code.is_null()) {
    const std::string fallback = DefaultErrorCode(status.code());
    if (!fallback.empty()) code = fallback;
  }
  error.body = {{"error",
                 {{"message", message},
                  {"type", ErrorType(status.code())},
                  {"param", StringOrNull(status.GetPayload(kParamPayload))},
                  {"code", code}}}};
  return error;
}

std::string ServedModelNameFor(absl::string_view model_dir_flag,
                               bool is_local_directory) {
  absl::string_view name = model_dir_flag;
  if (is_local_directory) {
    while (name.size() > 1 && name.back() == '/') name.remove_suffix(1);
    const size_t slash = name.rfind('/');
    if (slash != absl::string_view::npos) name.remove_prefix(slash + 1);
  } else {
    // OWNER/NAME[/SUBFOLDER][@REVISION]: the revision is not part of the
    // model's name.
    const size_t at = name.rfind('@');
    if (at != absl::string_view::npos) name = name.substr(0, at);
  }
  return std::string(name);
}

json ModelListJson(absl::string_view model, int64_t created) {
  return {{"object", "list"},
          {"data", json::array({{{"id", std::string(model)},
                                 {"object", "model"},
                                 {"created", created},
                                 {"owned_by", "kvwire"}}})}};
}

std::string FinishReasonFor(const v1::AnswerResponse& response,
                            uint32_t max_new_tokens, bool stop_sequence_hit) {
  if (stop_sequence_hit) return "stop";
  const uint32_t limit =
      max_new_tokens == 0 ? kDefaultMaxNewTokens : max_new_tokens;
  return static_cast<uint32_t>(response.token_ids_size()) >= limit ? "length"
                                                                   : "stop";
}

json UsageJson(const CompletionInfo& info) {
  return {{"prompt_tokens", info.prompt_tokens},
          {"completion_tokens", info.completion_tokens},
          {"total_tokens", info.prompt_tokens + info.completion_tokens}};
}

json KvwireReportJson(const v1::AnswerResponse& response) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  auto to_json = [&](const google::protobuf::Message& message) {
    std::string text;
    if (!google::protobuf::util::MessageToJsonString(message, &text, options)
             .ok()) {
      return json(nullptr);
    }
    return json::parse(text, nullptr, /*allow_exceptions=*/false);
  };
  json report = {{"request_id", response.request_id()},
                 {"mode", AnswerModeName(response.mode())},
                 {"fell_back", response.fell_back()},
                 {"fallback_reason", response.fallback_reason()},
                 {"transfer", to_json(response.transfer())},
                 {"timings", to_json(response.timings())}};
  report["token_ids"] = json(std::vector<uint32_t>(response.token_ids().begin(),
                                                   response.token_ids().end()));
  if (!response.background_text().empty()) {
    report["background_text"] = response.background_text();
  }
  if (response.trace_size() > 0) {
    json trace = json::array();
    for (const v1::TraceEvent& event : response.trace()) {
      trace.push_back(to_json(event));
    }
    report["trace"] = std::move(trace);
  }
  return report;
}

json ChatCompletionJson(const CompletionInfo& info, const std::string& text,
                        const v1::AnswerResponse& response) {
  return {
      {"id", info.id},
      {"object", "chat.completion"},
      {"created", info.created},
      {"model", info.model},
      {"choices",
       json::array(
           {{{"index", 0},
             {"message",
              {{"role", "assistant"}, {"content", text}, {"refusal", nullptr}}},
             {"logprobs", nullptr},
             {"finish_reason", info.finish_reason}}})},
      {"usage", UsageJson(info)},
      {"kvwire", KvwireReportJson(response)}};
}

json ChatCompletionChunkJson(const CompletionInfo& info,
                             const std::string& content, bool first,
                             const std::string& finish_reason) {
  json delta = json::object();
  if (first) delta["role"] = "assistant";
  if (!content.empty()) delta["content"] = content;
  return {{"id", info.id},
          {"object", "chat.completion.chunk"},
          {"created", info.created},
          {"model", info.model},
          {"choices",
           json::array({{{"index", 0},
                         {"delta", std::move(delta)},
                         {"logprobs", nullptr},
                         {"finish_reason", finish_reason.empty()
                                               ? json(nullptr)
                                               : json(finish_reason)}}})}};
}

json UsageChunkJson(const CompletionInfo& info) {
  return {{"id", info.id},
          {"object", "chat.completion.chunk"},
          {"created", info.created},
          {"model", info.model},
          {"choices", json::array()},
          {"usage", UsageJson(info)}};
}

StopSequenceFilter::StopSequenceFilter(std::vector<std::string> stop)
    : stop_(std::move(stop)) {
  for (const std::string& s : stop_) longest_ = std::max(longest_, s.size());
}

std::string StopSequenceFilter::Push(absl::string_view delta) {
  if (stopped_) return "";
  pending_.append(delta.data(), delta.size());
  size_t first_match = std::string::npos;
  for (const std::string& s : stop_) {
    first_match = std::min(first_match, pending_.find(s));
  }
  if (first_match != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first_match);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that is the start of some stop sequence; a
  // stop sequence is valid UTF-8, so the cut never splits a character.
  size_t hold = 0;
  const size_t most = std::min(pending_.size(), longest_ - (longest_ > 0));
  for (size_t k = most; k > 0 && hold == 0; --k) {
    const absl::string_view tail =
        absl::string_view(pending_).substr(pending_.size() - k);
    for (const std::string& s : stop_) {
      if (absl::StartsWith(s, tail)) {
        hold = k;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopSequenceFilter::Flush() {
  if (stopped_) return "";
  std::string out = std::move(pending_);
  pending_.clear();
  return out;
}

std::string NewlineTrimmer::Push(absl::string_view delta) {
  if (!started_) {
    while (!delta.empty() && delta.front() == '\n') delta.remove_prefix(1);
    if (delta.empty()) return "";
    started_ = true;
  }
  size_t body = delta.size();
  while (body > 0 && delta[body - 1] == '\n') --body;
  if (body == 0) {
    held_newlines_.append(delta.data(), delta.size());
    return "";
  }
  std::string out = std::move(held_newlines_);
  held_newlines_.clear();
  out.append(delta.data(), delta.size());
  // The trailing newlines wait: the answer may end here.
  held_newlines_.assign(out.end() - (delta.size() - body), out.end());
  out.resize(out.size() - (delta.size() - body));
  return out;
}

}  // namespace kvwire
