// The native chat templates against Hugging Face transformers' renderings,
// recorded by tools/gen_chat_template_goldens.py in
// tests/data/chat_template_goldens.json.
#include "common/tokenizer/chat_template.h"

#include <cstdlib>
#include <ctime>
#include <fstream>
#include <ostream>
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

absl::StatusOr<ChatTemplate> FromSpec(const json& spec) {
  return ChatTemplate::FromString(spec["chat_template"].get<std::string>(),
                                  BosOf(spec));
}

absl::StatusOr<ChatTemplate> FromGoldens(const std::string& key) {
  return FromSpec(LoadGoldens()["templates"][key]);
}

// A template of the goldens and the family it must be recognised as.
struct GoldenTemplate {
  std::string key;
  ChatTemplateFamily family;
};

void PrintTo(const GoldenTemplate& t, std::ostream* os) { *os << t.key; }

class ChatTemplateGoldenTest : public ::testing::TestWithParam<GoldenTemplate> {
};

// Every recorded render: Qwen renders carry enable_thinking, Llama-3.1/3.2
// and Gemma-3 renders date_string (either null: not passed), and each
// either the text or the template's exception.
TEST_P(ChatTemplateGoldenTest, MatchesTransformers) {
  const std::string& key = GetParam().key;
  const json goldens = LoadGoldens();
  ASSERT_TRUE(goldens["templates"].contains(key));
  const json& spec = goldens["templates"][key];
  auto tmpl = FromSpec(spec);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  EXPECT_EQ(tmpl->family(), GetParam().family);
  int checked = 0;
  for (const json& render : spec["renders"]) {
    const std::string name = render["conversation"].get<std::string>();
    ChatTemplateOptions options;
    options.add_generation_prompt = render["add_generation_prompt"].get<bool>();
    std::string context = key + " / " + name + " add_generation_prompt=" +
                          (options.add_generation_prompt ? "1" : "0");
    if (render.contains("enable_thinking")) {
      if (!render["enable_thinking"].is_null()) {
        options.enable_thinking = render["enable_thinking"].get<bool>();
      }
      context += " enable_thinking=" + render["enable_thinking"].dump();
    }
    if (render.contains("date_string")) {
      if (render["date_string"].is_string()) {
        options.date_string = render["date_string"].get<std::string>();
      }
      context += " date_string=" + render["date_string"].dump();
    }
    auto text = tmpl->Apply(Messages(goldens["conversations"][name]), options);
    if (render.contains("error")) {
      EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument)
          << context;
      EXPECT_THAT(std::string(text.status().message()),
                  HasSubstr(render["error"].get<std::string>()))
          << context;
    } else {
      ASSERT_TRUE(text.ok()) << context << ": " << text.status();
      EXPECT_EQ(*text, render["text"].get<std::string>()) << context;
    }
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Goldens, ChatTemplateGoldenTest,
    ::testing::Values(GoldenTemplate{"qwen3", ChatTemplateFamily::kQwen3},
                      GoldenTemplate{"qwen2_5", ChatTemplateFamily::kQwen2_5},
                      GoldenTemplate{"llama3", ChatTemplateFamily::kLlama3},
                      GoldenTemplate{"llama3_1", ChatTemplateFamily::kLlama3_1},
                      GoldenTemplate{"llama3_2", ChatTemplateFamily::kLlama3_2},
                      GoldenTemplate{"gemma3", ChatTemplateFamily::kGemma3}),
    [](const ::testing::TestParamInfo<GoldenTemplate>& info) {
      return info.param.key;
    });

TEST(ChatTemplateTest, Llama3xDates) {
  const std::vector<ChatMessage> messages = {
      {"system", "  Be brief.\n", std::nullopt}, {"user", "Hi", std::nullopt}};
  const auto header = [](const std::string& date) {
    return "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
           "Cutting Knowledge Date: December 2023\nToday Date: " +
           date +
           "\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>"
           "\n\nHi<|eot_id|>";
  };
  auto llama31 = FromGoldens("llama3_1");
  ASSERT_TRUE(llama31.ok()) << llama31.status();
  ChatTemplateOptions options;
  EXPECT_EQ(*llama31->Apply(messages, options), header("26 Jul 2024"));
  options.date_string = "01 Jan 2025";
  EXPECT_EQ(*llama31->Apply(messages, options), header("01 Jan 2025"));

  // Llama-3.2's default is transformers' strftime_now("%d %b %Y"):
  // Python's datetime.now().strftime in the C locale. This test never calls
  // setlocale, so std::strftime computes the same thing independently.
  auto llama32 = FromGoldens("llama3_2");
  ASSERT_TRUE(llama32.ok()) << llama32.status();
  options.date_string.reset();
  const auto today = [] {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buffer[32];
    return std::string(
        buffer, std::strftime(buffer, sizeof(buffer), "%d %b %Y", &local));
  };
  const std::string before = today();
  auto text = llama32->Apply(messages, options);
  const std::string after = today();
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_TRUE(*text == header(before) || *text == header(after)) << *text;
  options.date_string = "";
  EXPECT_EQ(*llama32->Apply(messages, options), header(""));
}

TEST(ChatTemplateTest, Gemma3RoleAlternation) {
  auto gemma = FromGoldens("gemma3");
  ASSERT_TRUE(gemma.ok()) << gemma.status();
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  auto folded = gemma->Apply({{"system", " Sys ", std::nullopt},
                              {"user", " Q ", std::nullopt},
                              {"assistant", " A ", std::nullopt},
                              {"user", "Q2", std::nullopt}},
                             options);
  ASSERT_TRUE(folded.ok()) << folded.status();
  EXPECT_EQ(*folded,
            "<bos><start_of_turn>user\n Sys \n\nQ<end_of_turn>\n"
            "<start_of_turn>model\nA<end_of_turn>\n"
            "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n");
  auto two_users = gemma->Apply(
      {{"user", "a", std::nullopt}, {"user", "b", std::nullopt}}, options);
  EXPECT_EQ(two_users.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(two_users.status().message()),
              HasSubstr("Conversation roles must alternate "
                        "user/assistant/user/assistant/..."));
  EXPECT_EQ(gemma
                ->Apply({{"system", "s", std::nullopt},
                         {"assistant", "a", std::nullopt}},
                        options)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, Llama3xAndGemma3RefuseTools) {
  for (const std::string key : {"llama3_1", "llama3_2", "gemma3"}) {
    auto tmpl = FromGoldens(key);
    ASSERT_TRUE(tmpl.ok()) << key << ": " << tmpl.status();
    for (const std::string role : {"ipython", "tool"}) {
      auto status = tmpl->Apply({{"user", "q", std::nullopt},
                                 {"assistant", "call", std::nullopt},
                                 {role, "42", std::nullopt}},
                                ChatTemplateOptions())
                        .status();
      EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << key;
      EXPECT_THAT(std::string(status.message()), HasSubstr("'" + role + "'"));
      EXPECT_THAT(std::string(status.message()), HasSubstr("tool calling"));
    }
    // These templates need bos_token.
    const json goldens = LoadGoldens();
    EXPECT_EQ(ChatTemplate::FromString(
                  goldens["templates"][key]["chat_template"].get<std::string>())
                  .status()
                  .code(),
              absl::StatusCode::kFailedPrecondition)
        << key;
  }
}

TEST(ChatTemplateTest, RefusesOtherLlama3xAndGemma3Revisions) {
  const json goldens = LoadGoldens();
  const auto edit = [&](const std::string& key, const std::string& from,
                        const std::string& to) {
    std::string source =
        goldens["templates"][key]["chat_template"].get<std::string>();
    const size_t pos = source.find(from);
    EXPECT_NE(pos, std::string::npos) << key << ": " << from;
    if (pos != std::string::npos) source.replace(pos, from.size(), to);
    return ChatTemplate::FromString(source, "<bos>").status();
  };
  // A Llama-3.2 template that no longer trims the system message.
  absl::Status status =
      edit("llama3_2", "messages[0]['content']|trim", "messages[0]['content']");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("Llama-3.2"));
  // A Llama-3.1 template with a different knowledge cutoff.
  status = edit("llama3_1", "December 2023", "December 2024");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("Llama-3.1"));
  // Gemma-3's first revision read a system message only as a list of parts.
  status = edit("gemma3", "{%- if messages[0]['content'] is string -%}",
                "{%- if false -%}");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("Gemma-3"));
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
