#include "load_tests/openai_chat.h"

#include <google/protobuf/util/json_util.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace load {
namespace {

using nlohmann::json;

// A JSON string field, or "" when absent or null; INVALID_ARGUMENT for
// another type.
absl::StatusOr<std::string> OptionalString(const json& object,
                                           const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::string();
  if (!it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", key, "' is not a string"));
  }
  return it->get<std::string>();
}

absl::StatusOr<std::optional<int64_t>> OptionalInt(const json& object,
                                                   const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::optional<int64_t>();
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", key, "' is not an integer"));
  }
  return std::optional<int64_t>(it->get<int64_t>());
}

// The names kvwire-receiver's ParseAnswerMode takes.
const char* AnswerModeWireName(v1::AnswerMode mode) {
  switch (mode) {
    case v1::ANSWER_MODE_RECEIVER_ONLY:
      return "receiver-only";
    case v1::ANSWER_MODE_TEXT_TO_TEXT:
      return "text-to-text";
    case v1::ANSWER_MODE_SHARER_ONLY:
      return "sharer-only";
    default:
      return "c2c";
  }
}

}  // namespace

std::string BuildChatCompletionRequest(const ChatRequestOptions& options) {
  json messages = json::array();
  if (!options.system.empty()) {
    messages.push_back({{"role", "system"}, {"content", options.system}});
  }
  messages.push_back({{"role", "user"}, {"content", options.question}});
  json body = {{"model", options.model},
               {"messages", messages},
               {"max_tokens", options.max_tokens},
               {"temperature", options.temperature},
               {"stream", true}};
  if (options.include_usage) {
    body["stream_options"] = {{"include_usage", true}};
  }
  if (options.kvwire_extension) {
    json kvwire = {{"mode", AnswerModeWireName(options.mode)}};
    if (!options.request_id.empty()) kvwire["request_id"] = options.request_id;
    google::protobuf::util::JsonPrintOptions print;
    print.preserve_proto_field_names = true;
    std::string spec;
    if (options.mode != v1::ANSWER_MODE_RECEIVER_ONLY &&
        google::protobuf::util::MessageToJsonString(options.spec, &spec, print)
            .ok()) {
      kvwire["spec"] = json::parse(spec, nullptr, /*allow_exceptions=*/false);
    }
    body["kvwire"] = kvwire;
  }
  // Invalid UTF-8 in a question file must not abort the generator.
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::Status SseParser::Line(absl::string_view line,
                             std::vector<SseEvent>* events) {
  if (line.empty()) {
    if (has_data_) events->push_back(std::move(pending_));
    pending_ = SseEvent();
    has_data_ = false;
    return absl::OkStatus();
  }
  if (line[0] == ':') return absl::OkStatus();  // Comment (keep-alive).
  const size_t colon = line.find(':');
  absl::string_view field = line.substr(0, colon);
  absl::string_view value;
  if (colon != absl::string_view::npos) {
    value = line.substr(colon + 1);
    absl::ConsumePrefix(&value, " ");
  }
  if (field == "data") {
    if (pending_.data.size() + value.size() + 1 > kMaxEventBytes) {
      return absl::InvalidArgumentError("SSE event over 4 MiB");
    }
    if (has_data_) pending_.data.push_back('\n');
    pending_.data.append(value.data(), value.size());
    has_data_ = true;
  } else if (field == "event") {
    pending_.event = std::string(value);
  }
  // "id", "retry" and unknown fields are ignored, as the standard says.
  return absl::OkStatus();
}

absl::Status SseParser::Feed(absl::string_view bytes,
                             std::vector<SseEvent>* events) {
  for (char c : bytes) {
    if (c == '\n' && last_was_cr_) {
      last_was_cr_ = false;  // The LF of a CRLF.
      continue;
    }
    last_was_cr_ = c == '\r';
    if (c == '\r' || c == '\n') {
      if (absl::Status st = Line(line_, events); !st.ok()) return st;
      line_.clear();
      continue;
    }
    if (line_.size() >= kMaxEventBytes) {
      return absl::InvalidArgumentError("SSE line over 4 MiB");
    }
    line_.push_back(c);
  }
  return absl::OkStatus();
}

absl::StatusOr<ChatChunk> ParseChatCompletionChunk(absl::string_view data) {
  const json j = json::parse(data.begin(), data.end(), nullptr,
                             /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SSE data is not a JSON object: '", data.substr(0, 80), "'"));
  }
  ChatChunk chunk;
  if (auto it = j.find("error"); it != j.end() && !it->is_null()) {
    if (it->is_object()) {
      auto message = OptionalString(*it, "message");
      if (!message.ok()) return message.status();
      auto type = OptionalString(*it, "type");
      if (!type.ok()) return type.status();
      chunk.error =
          type->empty() ? *message : absl::StrCat(*type, ": ", *message);
    } else if (it->is_string()) {
      chunk.error = it->get<std::string>();
    } else {
      chunk.error = it->dump();
    }
    if (chunk.error.empty()) chunk.error = "error";
    return chunk;
  }
  if (auto it = j.find("choices"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) {
      return absl::InvalidArgumentError("'choices' is not an array");
    }
    // One choice is requested (n = 1); the first is the answer.
    if (!it->empty()) {
      const json& choice = (*it)[0];
      if (!choice.is_object()) {
        return absl::InvalidArgumentError("a choice is not an object");
      }
      if (auto delta = choice.find("delta");
          delta != choice.end() && !delta->is_null()) {
        if (!delta->is_object()) {
          return absl::InvalidArgumentError("'delta' is not an object");
        }
        auto content = OptionalString(*delta, "content");
        if (!content.ok()) return content.status();
        chunk.content = *std::move(content);
      }
      auto finish = OptionalString(choice, "finish_reason");
      if (!finish.ok()) return finish.status();
      chunk.finish_reason = *std::move(finish);
    }
  }
  if (auto it = j.find("kvwire"); it != j.end() && it->is_object()) {
    if (auto fell = it->find("fell_back");
        fell != it->end() && fell->is_boolean()) {
      chunk.fell_back = fell->get<bool>();
    }
    if (auto transfer = it->find("transfer");
        transfer != it->end() && transfer->is_object()) {
      google::protobuf::util::JsonParseOptions parse;
      parse.ignore_unknown_fields = true;  // A newer server's fields.
      v1::TransferReport report;
      if (!google::protobuf::util::JsonStringToMessage(transfer->dump(),
                                                       &report, parse)
               .ok()) {
        return absl::InvalidArgumentError(
            "'kvwire.transfer' is not a kvwire.v1.TransferReport");
      }
      chunk.transfer = std::move(report);
    }
  }
  if (auto it = j.find("usage"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) {
      return absl::InvalidArgumentError("'usage' is not an object");
    }
    auto completion = OptionalInt(*it, "completion_tokens");
    if (!completion.ok()) return completion.status();
    auto prompt = OptionalInt(*it, "prompt_tokens");
    if (!prompt.ok()) return prompt.status();
    chunk.completion_tokens = *completion;
    chunk.prompt_tokens = *prompt;
  }
  return chunk;
}

absl::StatusOr<std::string> FirstModelId(absl::string_view body) {
  const json j = json::parse(body.begin(), body.end(), nullptr,
                             /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("data") ||
      !j["data"].is_array()) {
    return absl::InvalidArgumentError(
        "GET /v1/models did not answer {\"data\": [...]}");
  }
  for (const json& model : j["data"]) {
    if (model.is_object() && model.contains("id") && model["id"].is_string()) {
      return model["id"].get<std::string>();
    }
  }
  return absl::NotFoundError("GET /v1/models lists no model");
}

std::string ErrorMessageFromBody(absl::string_view body) {
  const json j = json::parse(body.begin(), body.end(), nullptr,
                             /*allow_exceptions=*/false);
  if (!j.is_discarded() && j.is_object()) {
    auto it = j.find("error");
    if (it != j.end()) {
      if (it->is_object()) {
        auto message = it->find("message");
        if (message != it->end() && message->is_string()) {
          return message->get<std::string>().substr(0, 300);
        }
      } else if (it->is_string()) {
        return it->get<std::string>().substr(0, 300);
      }
    }
  }
  return std::string(absl::StripAsciiWhitespace(body.substr(0, 200)));
}

absl::Status ChatStreamAccumulator::Feed(absl::string_view bytes, double now) {
  events_.clear();
  if (absl::Status st = parser_.Feed(bytes, &events_); !st.ok()) return st;
  for (const SseEvent& event : events_) {
    if (done_) {
      return absl::InvalidArgumentError("SSE data after [DONE]");
    }
    if (event.data == "[DONE]") {
      done_ = true;
      continue;
    }
    auto chunk = ParseChatCompletionChunk(event.data);
    if (!chunk.ok()) return chunk.status();
    if (!chunk->error.empty()) {
      if (error_.empty()) error_ = chunk->error;
      continue;
    }
    if (!chunk->content.empty()) {
      token_times_.push_back(now);
      text_ += chunk->content;
    }
    if (!chunk->finish_reason.empty()) finish_reason_ = chunk->finish_reason;
    if (chunk->completion_tokens.has_value()) {
      usage_completion_tokens_ = chunk->completion_tokens;
    }
    if (chunk->prompt_tokens.has_value()) {
      prompt_tokens_ = *chunk->prompt_tokens;
    }
    if (chunk->transfer.has_value()) transfer_ = chunk->transfer;
    if (chunk->fell_back) fell_back_ = true;
  }
  return absl::OkStatus();
}

int64_t ChatStreamAccumulator::completion_tokens() const {
  return usage_completion_tokens_.value_or(
      static_cast<int64_t>(token_times_.size()));
}

std::vector<double> InterTokenGaps(const std::vector<double>& token_times) {
  std::vector<double> gaps;
  for (size_t i = 1; i < token_times.size(); ++i) {
    gaps.push_back(std::max(0.0, token_times[i] - token_times[i - 1]));
  }
  return gaps;
}

}  // namespace load
}  // namespace kvwire
