#include "common/tokenizer/chat_template.h"

#include <ctime>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

// Fragments that every supported revision of a family contains verbatim
// (Jinja source, so "\n" below is the two characters of a Jinja escape).
// Together they pin down the logic the native renderers implement.
constexpr absl::string_view kQwen3Fragments[] = {
    R"({%- for message in messages[::-1] %})",
    R"(message.role == "user")",
    R"(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>'))",
    R"((message.role == "user") or (message.role == "system" and not loop.first))",
    R"('<|im_end|>' + '\n')",
    R"(.split('</think>')[-1].lstrip('\n'))",
    R"(.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n'))",
    R"(loop.index0 > ns.last_query_index)",
    R"(loop.last or (not loop.last and reasoning_content))",
    R"('\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n'))",
    R"({{- '<|im_start|>' + message.role + '\n' + content }})",
    R"({{- '<|im_end|>\n' }})",
    R"({{- '<|im_start|>assistant\n' }})",
    R"(enable_thinking is defined and enable_thinking is false)",
    R"({{- '<think>\n\n</think>\n\n' }})",
};

constexpr absl::string_view kQwen25Fragments[] = {
    R"({{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }})",
    R"({{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }})",
    R"((message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls))",
    R"({{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }})",
    R"({%- if add_generation_prompt %})",
    R"({{- '<|im_start|>assistant\n' }})",
};

// Meta-Llama-3-*-Instruct, with real newlines as the JSON file decodes them.
constexpr absl::string_view kLlama3Body =
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}";
constexpr absl::string_view kLlama3AlwaysPrompt =
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}";
constexpr absl::string_view kLlama3OptionalPrompt =
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

// Llama-3.1 / Llama-3.2 Instruct (Llama-3.3 ships the 3.1 template). The
// fragments pin every statement that produces output when no tools are
// given: the bos_token, the system-message extraction, the date header, the
// message loop's plain branch and the generation prompt. The tool branches
// are only reachable with `tools`, `custom_tools`, `builtin_tools`, the
// tool/ipython roles or `tool_calls`, none of which Apply accepts.
constexpr absl::string_view kLlama3xFragments[] = {
    "{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}",
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}",
    R"({{- "<|start_header_id|>system<|end_header_id|>\n\n" }})",
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{%- if tools is not none and not tools_in_user_message %}",
    "{{- system_message }}\n{{- \"<|eot_id|>\" }}",
    "{%- if tools_in_user_message and not tools is none %}",
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or "
    "'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}",
};
// The template's last statement (after Jinja drops the final newline).
constexpr absl::string_view kLlama3xGenerationPrompt =
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}";
// 3.1: the date defaults to a constant; the system header says
// "Environment: ipython" only with tools or builtin_tools.
constexpr absl::string_view kLlama31Fragments[] = {
    "{%- if not date_string is defined %}\n"
    "    {%- set date_string = \"26 Jul 2024\" %}\n"
    "{%- endif %}",
    "{%- if builtin_tools is defined or tools is not none %}\n"
    "    {{- \"Environment: ipython\\n\" }}\n"
    "{%- endif %}\n"
    "{%- if builtin_tools is defined %}\n",
};
// 3.2: the date defaults to strftime_now("%d %b %Y"), which transformers
// always defines; "Environment: ipython" only with tools.
constexpr absl::string_view kLlama32Fragments[] = {
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
    "    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n"
    "    {%- endif %}\n"
    "{%- endif %}",
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{%- if tools is not none %}\n"
    "    {{- \"Environment: ipython\\n\" }}\n"
    "{%- endif %}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}",
};

// Gemma-3 (gemma-3-*-it), the revision that accepts a string system
// message; newlines inside its string literals are real newlines.
constexpr absl::string_view kGemma3Start = "{{ bos_token }}\n";
constexpr absl::string_view kGemma3Fragments[] = {
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}",
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate "
    "user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if "
    "loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n",
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}",
};
constexpr absl::string_view kGemma3RoleError =
    "Conversation roles must alternate user/assistant/user/assistant/...";

std::vector<absl::string_view> MissingFragments(
    absl::string_view source, absl::Span<const absl::string_view> fragments) {
  std::vector<absl::string_view> missing;
  for (absl::string_view f : fragments) {
    if (!absl::StrContains(source, f)) missing.push_back(f);
  }
  return missing;
}

absl::Status UnknownRevision(absl::string_view family,
                             const std::vector<absl::string_view>& missing) {
  return absl::UnimplementedError(
      absl::StrCat("chat template looks like ", family,
                   " but is not a revision kvwire renders natively; missing: ",
                   absl::StrJoin(missing, " | ")));
}

// Jinja drops one trailing newline of the template source.
absl::string_view WithoutTrailingNewline(absl::string_view s) {
  if (absl::EndsWith(s, "\r\n")) return s.substr(0, s.size() - 2);
  if (absl::EndsWith(s, "\n")) return s.substr(0, s.size() - 1);
  return s;
}

// Python's str.isspace() for one code point.
bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) ||
         cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Decodes the code point starting at s[i] (valid UTF-8 assumed; invalid
// bytes decode as themselves and are never spaces).
uint32_t CodePointAt(absl::string_view s, size_t i, size_t* len) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  if (i + n > s.size()) n = 1;
  uint32_t cp = n == 1   ? c
                : n == 2 ? (c & 0x1F)
                : n == 3 ? (c & 0x0F)
                         : (c & 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (b(i + k) & 0x3F);
  *len = n;
  return cp;
}

// Python's str.strip() with no arguments (Jinja's `trim` filter).
absl::string_view PythonStrip(absl::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    size_t len;
    if (!IsPythonSpace(CodePointAt(s, begin, &len))) break;
    begin += len;
  }
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) {
      --start;
    }
    size_t len;
    if (!IsPythonSpace(CodePointAt(s, start, &len))) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

absl::string_view LStripNewlines(absl::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
absl::string_view RStripNewlines(absl::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}
absl::string_view StripNewlines(absl::string_view s) {
  return RStripNewlines(LStripNewlines(s));
}

// Python: s.split(sep)[-1] and s.split(sep)[0].
absl::string_view AfterLast(absl::string_view s, absl::string_view sep) {
  const size_t pos = s.rfind(sep);
  return pos == absl::string_view::npos ? s : s.substr(pos + sep.size());
}
absl::string_view BeforeFirst(absl::string_view s, absl::string_view sep) {
  const size_t pos = s.find(sep);
  return pos == absl::string_view::npos ? s : s.substr(0, pos);
}

// transformers' strftime_now("%d %b %Y"): Python's
// datetime.now().strftime(), i.e. local time in the C locale (Python never
// switches LC_TIME on its own), e.g. "07 Dec 2026". Written out rather than
// with std::strftime so that a host program's setlocale() cannot change it.
std::string StrftimeNowDayMonthYear() {
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr",
                                            "May", "Jun", "Jul", "Aug",
                                            "Sep", "Oct", "Nov", "Dec"};
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  const int day = local.tm_mday;
  return absl::StrCat(day < 10 ? "0" : "", day, " ", kMonths[local.tm_mon], " ",
                      local.tm_year + 1900);
}

}  // namespace

const char* ChatTemplateFamilyName(ChatTemplateFamily family) {
  switch (family) {
    case ChatTemplateFamily::kQwen3:
      return "Qwen3";
    case ChatTemplateFamily::kQwen2_5:
      return "Qwen2.5";
    case ChatTemplateFamily::kLlama3:
      return "Llama-3";
    case ChatTemplateFamily::kLlama3_1:
      return "Llama-3.1";
    case ChatTemplateFamily::kLlama3_2:
      return "Llama-3.2";
    case ChatTemplateFamily::kGemma3:
      return "Gemma-3";
  }
  return "unknown";
}

absl::StatusOr<ChatTemplateFamily> ChatTemplate::DetectFamily(
    absl::string_view chat_template) {
  if (chat_template.empty()) {
    return absl::NotFoundError(
        "no chat_template (tokenizer_config.json has none)");
  }
  const absl::string_view source = WithoutTrailingNewline(chat_template);
  if (absl::StrContains(source, "<|start_header_id|>")) {
    if (source == absl::StrCat(kLlama3Body, kLlama3AlwaysPrompt) ||
        source == absl::StrCat(kLlama3Body, kLlama3OptionalPrompt)) {
      return ChatTemplateFamily::kLlama3;
    }
    if (absl::StrContains(source, "Cutting Knowledge Date")) {
      const bool is_3_2 = absl::StrContains(source, "strftime_now");
      const absl::string_view name = is_3_2 ? "Llama-3.2" : "Llama-3.1";
      std::vector<absl::string_view> missing =
          MissingFragments(source, kLlama3xFragments);
      for (absl::string_view f : MissingFragments(
               source, is_3_2 ? absl::MakeConstSpan(kLlama32Fragments)
                              : absl::MakeConstSpan(kLlama31Fragments))) {
        missing.push_back(f);
      }
      if (!absl::StartsWith(source, "{{- bos_token }}\n")) {
        missing.push_back("{{- bos_token }} (first)");
      }
      if (!absl::EndsWith(source, kLlama3xGenerationPrompt)) {
        missing.push_back(kLlama3xGenerationPrompt);
      }
      if (!missing.empty()) return UnknownRevision(name, missing);
      return is_3_2 ? ChatTemplateFamily::kLlama3_2
                    : ChatTemplateFamily::kLlama3_1;
    }
    return absl::UnimplementedError(
        "chat template looks like Llama-3 but is not one of the Llama-3 "
        "revisions kvwire renders natively");
  }
  if (absl::StrContains(source, "<|im_start|>")) {
    if (absl::StrContains(source, "enable_thinking") ||
        absl::StrContains(source, "<think>")) {
      const auto missing = MissingFragments(source, kQwen3Fragments);
      if (!missing.empty()) return UnknownRevision("Qwen3", missing);
      return ChatTemplateFamily::kQwen3;
    }
    if (absl::StrContains(source, "You are Qwen, created by Alibaba Cloud.")) {
      const auto missing = MissingFragments(source, kQwen25Fragments);
      if (!missing.empty()) return UnknownRevision("Qwen2.5", missing);
      return ChatTemplateFamily::kQwen2_5;
    }
    return absl::UnimplementedError(
        "ChatML chat template of an unsupported family (supported: Qwen3, "
        "Qwen2.5, Llama-3, Llama-3.1, Llama-3.2, Gemma-3)");
  }
  if (absl::StrContains(source, "<start_of_turn>")) {
    std::vector<absl::string_view> missing =
        MissingFragments(source, kGemma3Fragments);
    if (!absl::StartsWith(source, kGemma3Start)) {
      missing.push_back(kGemma3Start);
    }
    if (!missing.empty()) return UnknownRevision("Gemma-3", missing);
    return ChatTemplateFamily::kGemma3;
  }
  return absl::UnimplementedError(absl::StrCat(
      "unknown chat template family (supported: Qwen3, Qwen2.5, Llama-3, "
      "Llama-3.1, Llama-3.2, Gemma-3); "
      "template starts with: ",
      chat_template.substr(0, 80)));
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromString(
    absl::string_view chat_template, std::string bos_token) {
  absl::StatusOr<ChatTemplateFamily> family = DetectFamily(chat_template);
  if (!family.ok()) return family.status();
  const bool needs_bos = *family == ChatTemplateFamily::kLlama3 ||
                         *family == ChatTemplateFamily::kLlama3_1 ||
                         *family == ChatTemplateFamily::kLlama3_2 ||
                         *family == ChatTemplateFamily::kGemma3;
  if (needs_bos && bos_token.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the ", ChatTemplateFamilyName(*family),
        " chat template needs bos_token (tokenizer_config.json names none)"));
  }
  const bool always = *family == ChatTemplateFamily::kLlama3 &&
                      WithoutTrailingNewline(chat_template) ==
                          absl::StrCat(kLlama3Body, kLlama3AlwaysPrompt);
  return ChatTemplate(*family, std::move(bos_token), always);
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromTokenizer(
    const Tokenizer& tokenizer) {
  return FromString(tokenizer.chat_template(), tokenizer.bos_token());
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromTokenizerConfigFile(
    const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  const nlohmann::json config =
      nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a JSON object"));
  }
  std::string chat_template;
  auto it = config.find("chat_template");
  if (it != config.end() && it->is_string()) {
    chat_template = it->get<std::string>();
  } else if (it != config.end() && it->is_array()) {
    for (const auto& entry : *it) {
      if (entry.is_object() &&
          entry.value("name", std::string()) == "default" &&
          entry.contains("template") && entry["template"].is_string()) {
        chat_template = entry["template"].get<std::string>();
      }
    }
  }
  std::string bos;
  auto bos_it = config.find("bos_token");
  if (bos_it != config.end() && bos_it->is_string()) {
    bos = bos_it->get<std::string>();
  } else if (bos_it != config.end() && bos_it->is_object() &&
             bos_it->contains("content") && (*bos_it)["content"].is_string()) {
    bos = (*bos_it)["content"].get<std::string>();
  }
  absl::StatusOr<ChatTemplate> result = FromString(chat_template, bos);
  if (!result.ok()) {
    return absl::Status(result.status().code(),
                        absl::StrCat(path, ": ", result.status().message()));
  }
  return result;
}

absl::StatusOr<std::string> ChatTemplate::Apply(
    absl::Span<const ChatMessage> messages,
    const ChatTemplateOptions& options) const {
  if (messages.empty()) {
    return absl::InvalidArgumentError("no messages to render");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::UnimplementedError(absl::StrCat(
          "message ", i, " has role '", role, "'; the native ",
          ChatTemplateFamilyName(family_),
          " template renders only system, user and assistant turns (tool "
          "calling, the 'tool' and 'ipython' roles and tools are not "
          "implemented)"));
    }
  }
  switch (family_) {
    case ChatTemplateFamily::kQwen3:
      return RenderQwen3(messages, options);
    case ChatTemplateFamily::kQwen2_5:
      return RenderQwen2_5(messages, options);
    case ChatTemplateFamily::kLlama3:
      return RenderLlama3(messages, options);
    case ChatTemplateFamily::kLlama3_1:
    case ChatTemplateFamily::kLlama3_2:
      return RenderLlama3_x(messages, options);
    case ChatTemplateFamily::kGemma3:
      return RenderGemma3(messages, options);
  }
  return absl::InternalError("unknown chat template family");
}

std::string ChatTemplate::RenderQwen3(
    absl::Span<const ChatMessage> messages,
    const ChatTemplateOptions& options) const {
  std::string out;
  if (messages[0].role == "system") {
    absl::StrAppend(&out, "<|im_start|>system\n", messages[0].content,
                    "<|im_end|>\n");
  }
  // The last user message that is not a wrapped tool response.
  const size_t n = messages.size();
  size_t last_query_index = n - 1;
  for (size_t k = n; k-- > 0;) {
    const ChatMessage& m = messages[k];
    if (m.role == "user" && !(absl::StartsWith(m.content, "<tool_response>") &&
                              absl::EndsWith(m.content, "</tool_response>"))) {
      last_query_index = k;
      break;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content,
                      "<|im_end|>\n");
    } else if (m.role == "assistant") {
      absl::string_view content = m.content;
      absl::string_view reasoning;
      if (m.reasoning_content.has_value()) {
        reasoning = *m.reasoning_content;
      } else if (absl::StrContains(m.content, "</think>")) {
        content = LStripNewlines(AfterLast(m.content, "</think>"));
        reasoning = LStripNewlines(AfterLast(
            RStripNewlines(BeforeFirst(m.content, "</think>")), "<think>"));
      }
      const bool last = i + 1 == n;
      if (i > last_query_index && (last || !reasoning.empty())) {
        absl::StrAppend(&out, "<|im_start|>assistant\n<think>\n",
                        StripNewlines(reasoning), "\n</think>\n\n",
                        LStripNewlines(content));
      } else {
        absl::StrAppend(&out, "<|im_start|>assistant\n", content);
      }
      out += "<|im_end|>\n";
    }
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (options.enable_thinking.has_value() && !*options.enable_thinking) {
      out += "<think>\n\n</think>\n\n";
    }
  }
  return out;
}

std::string ChatTemplate::RenderQwen2_5(
    absl::Span<const ChatMessage> messages,
    const ChatTemplateOptions& options) const {
  std::string out;
  if (messages[0].role == "system") {
    absl::StrAppend(&out, "<|im_start|>system\n", messages[0].content,
                    "<|im_end|>\n");
  } else {
    out +=
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are "
        "a helpful assistant.<|im_end|>\n";
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "system" && i == 0) continue;
    absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content,
                    "<|im_end|>\n");
  }
  if (options.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string ChatTemplate::RenderLlama3(
    absl::Span<const ChatMessage> messages,
    const ChatTemplateOptions& options) const {
  std::string out = bos_token_;
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, "<|start_header_id|>", m.role,
                    "<|end_header_id|>\n\n", PythonStrip(m.content),
                    "<|eot_id|>");
  }
  if (always_generation_prompt_ || options.add_generation_prompt) {
    out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  return out;
}

std::string ChatTemplate::RenderLlama3_x(
    absl::Span<const ChatMessage> messages,
    const ChatTemplateOptions& options) const {
  std::string date;
  if (options.date_string.has_value()) {
    date = *options.date_string;
  } else if (family_ == ChatTemplateFamily::kLlama3_2) {
    date = StrftimeNowDayMonthYear();
  } else {
    date = "26 Jul 2024";
  }
  // The system header is always there; the first message goes into it when
  // it is a system message and is then no longer part of the loop.
  std::string out = absl::StrCat(
      bos_token_, "<|start_header_id|>system<|end_header_id|>\n\n",
      "Cutting Knowledge Date: December 2023\nToday Date: ", date, "\n\n");
  size_t first = 0;
  if (messages[0].role == "system") {
    absl::StrAppend(&out, PythonStrip(messages[0].content));
    first = 1;
  }
  out += "<|eot_id|>";
  for (size_t i = first; i < messages.size(); ++i) {
    absl::StrAppend(&out, "<|start_header_id|>", messages[i].role,
                    "<|end_header_id|>\n\n", PythonStrip(messages[i].content),
                    "<|eot_id|>");
  }
  if (options.add_generation_prompt) {
    out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  return out;
}

absl::StatusOr<std::string> ChatTemplate::RenderGemma3(
    absl::Span<const ChatMessage> messages,
    const ChatTemplateOptions& options) const {
  std::string out = bos_token_;
  // The first system message is not a turn of its own: its content, as is,
  // prefixes the first remaining message.
  std::string first_prefix;
  size_t first = 0;
  if (messages[0].role == "system") {
    first_prefix = absl::StrCat(messages[0].content, "\n\n");
    first = 1;
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const size_t index = i - first;  // loop.index0 of the template.
    const ChatMessage& m = messages[i];
    // The template's own check: user at even positions, anything but user
    // at odd ones (so a later system message at an odd position passes and
    // is rendered as a "system" turn).
    if ((m.role == "user") != (index % 2 == 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          kGemma3RoleError, " (message ", i, " has role '", m.role, "')"));
    }
    absl::StrAppend(&out, "<start_of_turn>",
                    m.role == "assistant" ? "model" : absl::string_view(m.role),
                    "\n", index == 0 ? absl::string_view(first_prefix) : "",
                    PythonStrip(m.content), "<end_of_turn>\n");
  }
  if (options.add_generation_prompt) out += "<start_of_turn>model\n";
  return out;
}

}  // namespace kvwire
