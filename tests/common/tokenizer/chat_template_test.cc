// The native chat templates against Hugging Face transformers' renderings,
// recorded by tools/gen_chat_template_goldens.py in
// tests/data/chat_template_goldens.json.
#include "common/tokenizer/chat_template.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

std::string SourceDir() {
  const char* dir = std::getenv("KVWIRE_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

json LoadGoldens() {
  const std::string path =
      SourceDir() + "/tests/data/chat_template_goldens.json";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path
                         << " (set KVWIRE_SOURCE_DIR to the repository root)";
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

std::vector<ChatMessage> Messages(const json& list) {
  std::vector<ChatMessage> messages;
  for (const json& m : list) {
    ChatMessage message;
    message.role = m.at("role").get<std::string>();
    message.content = m.at("content").get<std::string>();
    if (m.contains("reasoning_content")) {
      message.reasoning_content = m["reasoning_content"].get<std::string>();
    }
    messages.push_back(std::move(message));
  }
  return messages;
}

std::string BosOf(const json& spec) {
  return spec["bos_token"].is_string() ? spec["bos_token"].get<std::string>()
                                       : "";
}

void CheckTemplate(const std::string& key, ChatTemplateFamily family) {
  const json goldens = LoadGoldens();
  ASSERT_TRUE(goldens["templates"].contains(key));
  const json& spec = goldens["templates"][key];
  auto tmpl = ChatTemplate::FromString(spec["chat_template"].get<std::string>(),
                                       BosOf(spec));
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  EXPECT_EQ(tmpl->family(), family);
  int checked = 0;
  for (const json& render : spec["renders"]) {
    const std::string name = render["conversation"].get<std::string>();
    ChatTemplateOptions options;
    options.add_generation_prompt = render["add_generation_prompt"].get<bool>();
    if (!render["enable_thinking"].is_null()) {
      options.enable_thinking = render["enable_thinking"].get<bool>();
    }
    auto text = tmpl->Apply(Messages(goldens["conversations"][name]), options);
    ASSERT_TRUE(text.ok()) << name << ": " << text.status();
    EXPECT_EQ(*text, render["text"].get<std::string>())
        << key << " / " << name
        << " add_generation_prompt=" << options.add_generation_prompt
        << " enable_thinking=" << render["enable_thinking"].dump();
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST(ChatTemplateTest, Qwen3MatchesTransformers) {
  CheckTemplate("qwen3", ChatTemplateFamily::kQwen3);
}

TEST(ChatTemplateTest, Qwen25MatchesTransformers) {
  CheckTemplate("qwen2_5", ChatTemplateFamily::kQwen2_5);
}

TEST(ChatTemplateTest, Llama3MatchesTransformers) {
  CheckTemplate("llama3", ChatTemplateFamily::kLlama3);
}

TEST(ChatTemplateTest, C2CPromptIsExact) {
  const json goldens = LoadGoldens();
  auto tmpl = ChatTemplate::FromString(
      goldens["templates"]["qwen3"]["chat_template"].get<std::string>());
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  options.enable_thinking = false;
  auto text =
      tmpl->Apply(Messages(goldens["conversations"]["c2c_mc_prompt"]), options);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, goldens["qwen3_c2c_prompt"]["text"].get<std::string>());
  EXPECT_THAT(*text,
              HasSubstr("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
}

TEST(ChatTemplateTest, Llama3LaterRevisionHonoursGenerationPrompt) {
  const json goldens = LoadGoldens();
  std::string source =
      goldens["templates"]["llama3"]["chat_template"].get<std::string>();
  const std::string always =
      "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}";
  ASSERT_EQ(source.substr(source.size() - always.size()), always);
  source = source.substr(0, source.size() - always.size()) +
           "{% if add_generation_prompt %}" + always + "{% endif %}";
  auto tmpl = ChatTemplate::FromString(source, "<|begin_of_text|>");
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  const std::vector<ChatMessage> messages = {{"user", " hi ", std::nullopt}};
  ChatTemplateOptions options;
  EXPECT_EQ(*tmpl->Apply(messages, options),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi"
            "<|eot_id|>");
  options.add_generation_prompt = true;
  EXPECT_EQ(*tmpl->Apply(messages, options),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi"
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  // The Llama-3 template needs a bos_token.
  EXPECT_EQ(ChatTemplate::FromString(source).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(ChatTemplateTest, RefusesWhatItCannotRender) {
  const json goldens = LoadGoldens();
  auto tmpl = ChatTemplate::FromString(
      goldens["templates"]["qwen3"]["chat_template"].get<std::string>());
  ASSERT_TRUE(tmpl.ok());
  ChatTemplateOptions options;
  auto tool = tmpl->Apply(
      {{"user", "q", std::nullopt}, {"tool", "42", std::nullopt}}, options);
  EXPECT_EQ(tool.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(tool.status().message()), HasSubstr("'tool'"));
  EXPECT_EQ(tmpl->Apply({}, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, RefusesUnknownTemplates) {
  const auto code = [](const std::string& source) {
    return ChatTemplate::FromString(source, "<s>").status().code();
  };
  EXPECT_EQ(code(""), absl::StatusCode::kNotFound);
  EXPECT_EQ(code("{{ messages }}"), absl::StatusCode::kUnimplemented);
  // Plain ChatML (e.g. Qwen2's first template) is not a supported family.
  EXPECT_EQ(code("{% for message in messages %}{{'<|im_start|>' + "
                 "message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n'}}{% endfor %}"),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(code("{{- bos_token }}<|start_header_id|>system<|end_header_id|>"
                 "Cutting Knowledge Date: December 2023"),
            absl::StatusCode::kUnimplemented);
  // A Qwen3 template whose thinking logic was edited is refused, naming
  // what is missing.
  const json goldens = LoadGoldens();
  std::string edited =
      goldens["templates"]["qwen3"]["chat_template"].get<std::string>();
  const std::string needle = "loop.index0 > ns.last_query_index";
  edited.replace(edited.find(needle), needle.size(), "loop.index0 >= 0");
  auto status = ChatTemplate::FromString(edited).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr(needle));
  EXPECT_THAT(std::string(status.message()), HasSubstr("Qwen3"));
}

TEST(ChatTemplateTest, FromTokenizerConfigFile) {
  const json goldens = LoadGoldens();
  const std::string path = ::testing::TempDir() + "/tokenizer_config.json";
  {
    std::ofstream out(path);
    out << json{{"chat_template",
                 goldens["templates"]["llama3"]["chat_template"]},
                {"bos_token", {{"content", "<|begin_of_text|>"}}}}
               .dump();
  }
  auto tmpl = ChatTemplate::FromTokenizerConfigFile(path);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  EXPECT_EQ(tmpl->family(), ChatTemplateFamily::kLlama3);
  EXPECT_FALSE(
      ChatTemplate::FromTokenizerConfigFile("/nonexistent/config.json").ok());
}

}  // namespace
}  // namespace kvwire
