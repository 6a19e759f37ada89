// Native renderings of the chat templates kvwire's models ship, producing
// byte for byte what Hugging Face's
// `tokenizer.apply_chat_template(messages, tokenize=False, ...)` renders.
// Qwen3, Qwen2.5 and Llama-3 are checked against goldens from transformers
// (tests/data/chat_template_goldens.json); Llama-3 (later revision),
// Llama-3.1, Llama-3.2 and Gemma-3 against the reference Jinja renderer
// @huggingface/jinja over generated conversations at test time
// (tests/common/tokenizer/chat_template_parity_test.cc). There is no Jinja
// engine: the template string from tokenizer_config.json is only used to
// recognise the family, and templates that are not a known revision of a
// supported family are refused.
//
// Families and what is covered:
//  - Qwen3 (the template of Qwen3-0.6B and the other hybrid-thinking Qwen3
//    checkpoints): string `content`; roles system/user/assistant (a system
//    message after the first is rendered as its own turn, as the template
//    does); the first system message as the system turn; assistant turns
//    with an inline "<think>...</think>" block or a separate
//    `reasoning_content`, including the template's rule that only assistant
//    turns after the last real user query keep their reasoning; user
//    messages wrapped in <tool_response>...</tool_response> count as tool
//    output for that rule; `add_generation_prompt`; `enable_thinking`
//    (false adds the empty "<think>\n\n</think>\n\n" block; true and unset
//    add nothing).
//  - Qwen2.5 (Qwen2.5-*-Instruct): string content, roles
//    system/user/assistant, the default system prompt "You are Qwen, created
//    by Alibaba Cloud. You are a helpful assistant." when the first message
//    is not a system message, `add_generation_prompt`. `enable_thinking` and
//    `reasoning_content` are ignored, as the template ignores them.
//  - Llama-3 (Meta-Llama-3-*-Instruct, both revisions: the first one always
//    appends the assistant header, the later one only with
//    `add_generation_prompt`): bos_token before the first message, content
//    trimmed like Python's str.strip().
//  - Llama-3.1 and Llama-3.2 (Llama-3.1-*-Instruct, Llama-3.2-1B/3B-Instruct;
//    Llama-3.3 ships the 3.1 template): bos_token, then the system header
//    "Cutting Knowledge Date: December 2023\nToday Date: <date>\n\n"
//    followed by the first message's content (trimmed) when that message is
//    a system message, then every other message as its own header (a later
//    system message too), content trimmed, and `add_generation_prompt`.
//    <date> is `date_string` when set; unset, it is the template's default:
//    "26 Jul 2024" for 3.1, and for 3.2 today's local date as transformers'
//    strftime_now("%d %b %Y") gives it (datetime.now() in the C locale,
//    e.g. "07 Dec 2026").
//  - Gemma-3 (gemma-3-*-it, the revision that accepts string system
//    content): bos_token; the first message, if a system message, is folded
//    into the first turn as "<content>\n\n" (untrimmed); the remaining
//    messages must alternate user/assistant starting with user (a message
//    at an odd position may also be a system message, rendered as its own
//    "system" turn, as the template allows), else Apply returns
//    INVALID_ARGUMENT with the template's message; "assistant" is rendered
//    as "model"; <start_of_turn>role\n ... <end_of_turn>\n; content trimmed;
//    `add_generation_prompt` adds "<start_of_turn>model\n".
//
// Not covered (Apply returns UNIMPLEMENTED): tools / tool calls / the "tool"
// and "ipython" roles (including Llama-3.1's builtin_tools and the Llama-3.x
// tool-calling prompts), any other role, non-text (multi-modal) content, and
// documents. An empty message list is INVALID_ARGUMENT (transformers raises
// too).
#ifndef KVWIRE_COMMON_TOKENIZER_CHAT_TEMPLATE_H_
#define KVWIRE_COMMON_TOKENIZER_CHAT_TEMPLATE_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/tokenizer/tokenizer.h"

namespace kvwire {

enum class ChatTemplateFamily {
  kQwen3,
  kQwen2_5,
  kLlama3,
  kLlama3_1,
  kLlama3_2,
  kGemma3,
};

const char* ChatTemplateFamilyName(ChatTemplateFamily family);

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant".
  std::string content;
  // Qwen3 only: the assistant's reasoning, rendered inside <think></think>.
  std::optional<std::string> reasoning_content;
};

struct ChatTemplateOptions {
  bool add_generation_prompt = false;
  // Unset means the keyword is not passed to apply_chat_template at all.
  std::optional<bool> enable_thinking;
  // Llama-3.1/3.2 only: the "Today Date: " of the system header. Unset means
  // the keyword is not passed, so the template's default applies ("26 Jul
  // 2024" for 3.1, today's local date for 3.2).
  std::optional<std::string> date_string;
};

// A recognised chat template. Owns only the family, the bos_token and the
// revision flag it needs; cheap to copy; Apply is const and thread-safe.
class ChatTemplate {
 public:
  // Recognises `chat_template` (the Jinja source from
  // tokenizer_config.json). `bos_token` is needed by the Llama-3.x and
  // Gemma-3 templates. Errors: NOT_FOUND for an empty template,
  // UNIMPLEMENTED for a family or revision this renderer does not know
  // (the message names what is missing), FAILED_PRECONDITION when a
  // template that needs bos_token gets none.
  static absl::StatusOr<ChatTemplate> FromString(
      absl::string_view chat_template, std::string bos_token = "");
  // Uses the tokenizer's chat_template and bos_token from
  // tokenizer_config.json.
  static absl::StatusOr<ChatTemplate> FromTokenizer(const Tokenizer& tokenizer);
  // Reads `chat_template` and `bos_token` from a tokenizer_config.json file.
  static absl::StatusOr<ChatTemplate> FromTokenizerConfigFile(
      const std::string& path);

  // The family of `chat_template`, or an error naming why it is not one
  // this renderer knows.
  static absl::StatusOr<ChatTemplateFamily> DetectFamily(
      absl::string_view chat_template);

  // Renders `messages` as transformers' apply_chat_template(tokenize=False).
  // Errors: INVALID_ARGUMENT for no messages and for what the template
  // itself rejects (Gemma-3's role alternation, with the template's
  // message); UNIMPLEMENTED for roles other than system/user/assistant.
  absl::StatusOr<std::string> Apply(absl::Span<const ChatMessage> messages,
                                    const ChatTemplateOptions& options) const;

  ChatTemplateFamily family() const { return family_; }

 private:
  ChatTemplate(ChatTemplateFamily family, std::string bos_token,
               bool always_generation_prompt)
      : family_(family),
        bos_token_(std::move(bos_token)),
        always_generation_prompt_(always_generation_prompt) {}

  std::string RenderQwen3(absl::Span<const ChatMessage> messages,
                          const ChatTemplateOptions& options) const;
  std::string RenderQwen2_5(absl::Span<const ChatMessage> messages,
                            const ChatTemplateOptions& options) const;
  std::string RenderLlama3(absl::Span<const ChatMessage> messages,
                           const ChatTemplateOptions& options) const;
  std::string RenderLlama3_x(absl::Span<const ChatMessage> messages,
                             const ChatTemplateOptions& options) const;
  absl::StatusOr<std::string> RenderGemma3(
      absl::Span<const ChatMessage> messages,
      const ChatTemplateOptions& options) const;

  ChatTemplateFamily family_;
  std::string bos_token_;
  bool always_generation_prompt_ = false;  // Llama-3's first revision.
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_TOKENIZER_CHAT_TEMPLATE_H_
