#include "tools/eval/prompt.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"

namespace kvwire {
namespace eval {

const char kEvalPromptTemplate[] =
    "Accurately answer the following question:\n"
    "\n"
    "{{question}}\n"
    "\n"
    "Choices:\n"
    "{{choices}}\n"
    "\n"
    "Instructions:\n"
    "- Carefully read the question and all options.\n"
    "- Select the single most correct answer.\n"
    "- Respond ONLY in the following format: \"The correct answer is "
    "A/B/C/D\".\n"
    "- Do not include any explanations, additional text, or punctuation "
    "besides the answer.\n"
    "\n"
    "The correct answer is";

std::string FormatChoices(absl::Span<const std::string> choices) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i) {
    absl::StrAppend(&out, std::string(1, static_cast<char>('A' + i)), ". ",
                    choices[i], "\n");
  }
  return out;
}

std::string BuildEvalPrompt(absl::string_view question,
                            absl::Span<const std::string> choices) {
  const std::string with_question =
      absl::StrReplaceAll(kEvalPromptTemplate, {{"{{question}}", question}});
  return absl::StrReplaceAll(with_question,
                             {{"{{choices}}", FormatChoices(choices)}});
}

absl::StatusOr<std::string> RenderChatPrompt(const ChatTemplate& chat_template,
                                             absl::string_view user_prompt) {
  const ChatMessage message{"user", std::string(user_prompt), std::nullopt};
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  options.enable_thinking = false;
  return chat_template.Apply(absl::MakeConstSpan(&message, 1), options);
}

absl::StatusOr<std::unique_ptr<PromptRenderer>> PromptRenderer::FromDirectory(
    const std::string& dir) {
  std::unique_ptr<PromptRenderer> r(new PromptRenderer());
  ASSIGN_OR_RETURN(r->tokenizer_, Tokenizer::FromDirectory(dir));
  if (r->tokenizer_->chat_template().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, ": tokenizer_config.json has no chat_template"));
  }
  ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::FromTokenizer(*r->tokenizer_));
  r->template_ = std::move(t);
  return r;
}

absl::StatusOr<std::string> PromptRenderer::Render(
    absl::string_view user_prompt) const {
  return RenderChatPrompt(*template_, user_prompt);
}

absl::StatusOr<std::vector<uint32_t>> PromptRenderer::Tokenize(
    absl::string_view user_prompt) const {
  ASSIGN_OR_RETURN(std::string text, Render(user_prompt));
  return tokenizer_->Encode(text, /*add_special_tokens=*/false);
}

}  // namespace eval
}  // namespace kvwire
