// The C2C reference evaluator's prompt (c2c-spec §5;
// rosetta/utils/evaluate.py::build_prompt with use_cot=False,
// use_template=True, as unified_evaluator.py uses it for OpenBookQA and
// ARC-Challenge), and its rendering through the receiver's chat template with
// thinking disabled.
#ifndef KVWIRE_TOOLS_EVAL_PROMPT_H_
#define KVWIRE_TOOLS_EVAL_PROMPT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"

namespace kvwire {
namespace eval {

// The non-CoT template, with the reference's {{question}} / {{choices}}
// placeholders.
extern const char kEvalPromptTemplate[];

// "A. text\nB. text\n..." with every line ending in '\n' (so the prompt has
// three newlines between the last choice and "Instructions:").
std::string FormatChoices(absl::Span<const std::string> choices);

// The user message: the template with {{question}} replaced first and
// {{choices}} second, exactly as the reference's two str.replace calls.
std::string BuildEvalPrompt(absl::string_view question,
                            absl::Span<const std::string> choices);

// `tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
// tokenize=False, add_generation_prompt=True, enable_thinking=False)`.
absl::StatusOr<std::string> RenderChatPrompt(const ChatTemplate& chat_template,
                                             absl::string_view user_prompt);

// A receiver-side renderer: tokenizer + chat template from a directory with
// tokenizer.json and tokenizer_config.json (the receiver model's directory,
// or --tokenizer_dir). Used to record prompt lengths and to dump prompts; the
// backends render on their own side.
class PromptRenderer {
 public:
  static absl::StatusOr<std::unique_ptr<PromptRenderer>> FromDirectory(
      const std::string& dir);

  // Rendered text and its token ids (no special tokens added: the template
  // carries them).
  absl::StatusOr<std::string> Render(absl::string_view user_prompt) const;
  absl::StatusOr<std::vector<uint32_t>> Tokenize(
      absl::string_view user_prompt) const;

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ChatTemplate& chat_template() const { return *template_; }

 private:
  PromptRenderer() = default;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> template_;
};

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_PROMPT_H_
