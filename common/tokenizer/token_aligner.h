// C2C's token alignment (c2c-spec §4; rosetta/model/aligner.py::TokenAligner
// of thu-nics/C2C): how a receiver ("SLM") and a sharer ("LLM") with
// different tokenizers read one conversation as two sequences of equal
// length whose message tokens correspond one to one.
//
//  1. The messages are rendered with each side's chat template
//     (add_generation_prompt, enable_thinking=false) and tokenized with
//     offsets (no special tokens added).
//  2. Each message's content is found in both texts (in order; a match
//     followed by '<' or at the end of the text is preferred), splitting both
//     sequences into alternating template and message sections; the section
//     counts and kinds must agree.
//  3. Template sections keep each side's own tokens, the shorter one padded
//     with its pad id (padding masks mark the padding).
//  4. Message sections take the receiver's tokens; each is decoded and
//     re-encoded by the sharer's tokenizer: one token is taken as is; of
//     several, `first` takes the first and `longest` the one whose decoded
//     text is longest; none gives unk (or 0). Special tokens map pad / eos /
//     bos / unk to their counterparts, else by their text.
//
// Everything follows the reference code's semantics, including its
// fallbacks; the byte offsets of kvwire's tokenizer stand in for Python's
// character offsets (equivalent for these comparisons: spans and token
// offsets both fall on character boundaries).
//
// Pure C++ (no Torch). Thread-safe after construction (const methods only).
#ifndef KVWIRE_COMMON_TOKENIZER_TOKEN_ALIGNER_H_
#define KVWIRE_COMMON_TOKENIZER_TOKEN_ALIGNER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"

namespace kvwire {

enum class AlignmentStrategy { kFirst, kLongest };
// "first" / "longest" (any case). INVALID_ARGUMENT otherwise.
absl::StatusOr<AlignmentStrategy> ParseAlignmentStrategy(
    absl::string_view name);
const char* AlignmentStrategyName(AlignmentStrategy strategy);

// One side of the alignment: a tokenizer and its chat template (not owned;
// both must outlive the aligner).
struct AlignmentSide {
  const Tokenizer* tokenizer = nullptr;
  const ChatTemplate* chat_template = nullptr;
};

// The aligned pair of sequences (TokenAligner.align_chat_messages with
// return_details=True).
struct ChatAlignment {
  std::string receiver_text, sharer_text;  // The rendered templates.
  // Equal lengths; padding tokens carry the side's pad id.
  std::vector<int64_t> receiver_ids, sharer_ids;
  std::vector<bool> message_mask;
  std::vector<bool> receiver_padding, sharer_padding;
  struct Section {
    bool message = false;
    int64_t begin = 0, end = 0;  // Aligned index range.
  };
  std::vector<Section> sections;
};

class TokenAligner {
 public:
  // INVALID_ARGUMENT when a side lacks its tokenizer or template.
  static absl::StatusOr<TokenAligner> Create(AlignmentSide receiver,
                                             AlignmentSide sharer,
                                             AlignmentStrategy strategy);

  // The sharer token standing for each receiver token (align_tokens).
  std::vector<int64_t> AlignTokens(
      absl::Span<const int64_t> receiver_ids) const;

  // Renders and aligns `messages`. `options` is passed to both templates
  // with add_generation_prompt and enable_thinking=false forced, as C2C's
  // generation path does (date_string and the like pass through).
  // INVALID_ARGUMENT for template errors or when the two renderings do not
  // split into the same sections (the reference asserts then).
  absl::StatusOr<ChatAlignment> AlignChatMessages(
      absl::Span<const ChatMessage> messages,
      ChatTemplateOptions options = {}) const;

  AlignmentStrategy strategy() const { return strategy_; }

 private:
  TokenAligner(AlignmentSide receiver, AlignmentSide sharer,
               AlignmentStrategy strategy);
  int64_t MapSpecialToken(uint32_t receiver_id, const std::string& text) const;
  int64_t PadId(const Tokenizer& tokenizer) const;

  AlignmentSide receiver_, sharer_;
  AlignmentStrategy strategy_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_TOKENIZER_TOKEN_ALIGNER_H_
