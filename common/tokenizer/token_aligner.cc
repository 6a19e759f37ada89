#include "common/tokenizer/token_aligner.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

using Span = std::pair<int64_t, int64_t>;  // [begin, end), bytes or tokens.

struct EncodedText {
  std::vector<int64_t> ids;
  std::vector<Span> offsets;  // Bytes of the text, one per id.
};

// tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).
EncodedText EncodeWithOffsets(const Tokenizer& tokenizer,
                              absl::string_view text) {
  const EncodingWithOffsets encoding =
      tokenizer.EncodeWithOffsets(text, /*add_special_tokens=*/false);
  EncodedText out;
  out.ids.assign(encoding.ids.begin(), encoding.ids.end());
  for (const TokenOffsets& o : encoding.offsets) {
    out.offsets.emplace_back(static_cast<int64_t>(o.begin),
                             static_cast<int64_t>(o.end));
  }
  return out;
}

// decode([id], skip_special_tokens=False, clean_up_tokenization_spaces=False).
std::string DecodeOne(const Tokenizer& tokenizer, int64_t id) {
  const uint32_t one[] = {static_cast<uint32_t>(id)};
  DecodeOptions options;
  options.skip_special_tokens = false;
  options.clean_up_tokenization_spaces = false;
  return tokenizer.Decode(one, options);
}

// Python's len() of a UTF-8 string: code points.
int64_t CodePoints(absl::string_view s) {
  int64_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// The byte index `n` code points before / after `at` (clamped to the text),
// for the reference's character-based context slices.
size_t CharsBefore(absl::string_view s, size_t at, int n) {
  while (n > 0 && at > 0) {
    --at;
    while (at > 0 && (static_cast<unsigned char>(s[at]) & 0xC0) == 0x80) --at;
    --n;
  }
  return at;
}
size_t CharsAfter(absl::string_view s, size_t at, int n) {
  while (n > 0 && at < s.size()) {
    ++at;
    while (at < s.size() && (static_cast<unsigned char>(s[at]) & 0xC0) == 0x80)
      ++at;
    --n;
  }
  return at;
}

// _compute_content_spans: each non-empty message content's span in `text`,
// searched in order.
std::vector<Span> ContentSpans(absl::string_view text,
                               absl::Span<const ChatMessage> messages) {
  std::vector<Span> spans;
  size_t search_from = 0;
  for (const ChatMessage& m : messages) {
    const std::string& content = m.content;
    if (content.empty()) continue;
    bool found = false;
    size_t idx = search_from;
    while (idx < text.size()) {
      idx = text.find(content, idx);
      if (idx == absl::string_view::npos) break;
      const size_t end = idx + content.size();
      // A match followed by a special token's '<', or ending the text.
      if ((end < text.size() && text[end] == '<') || end == text.size()) {
        spans.emplace_back(idx, end);
        search_from = end;
        found = true;
        break;
      }
      idx = CharsAfter(text, idx, 1);
    }
    if (found) continue;
    size_t at = text.find(content, search_from);
    if (at == absl::string_view::npos) at = text.find(content);
    if (at == absl::string_view::npos) continue;
    const size_t end = at + content.size();
    // The reference skips a match that looks like the inside of
    // <|begin_of_text|>.
    const absl::string_view before =
        text.substr(CharsBefore(text, at, 10), at - CharsBefore(text, at, 10));
    const size_t near_begin = CharsBefore(text, at, 20);
    const absl::string_view near =
        text.substr(near_begin, CharsAfter(text, at, 20) - near_begin);
    if (absl::StrContains(before, "<") && !absl::StrContains(before, ">") &&
        absl::StrContains(near, "begin_of_text")) {
      continue;
    }
    spans.emplace_back(at, end);
    search_from = end;
  }
  return spans;
}

// _spans_to_token_ranges.
std::vector<Span> TokenRanges(const std::vector<Span>& offsets,
                              const std::vector<Span>& spans) {
  std::vector<Span> ranges;
  const int64_t n = static_cast<int64_t>(offsets.size());
  for (const auto& [s, e] : spans) {
    int64_t start = 0;
    while (start < n && offsets[start].second <= s) ++start;
    int64_t end = start;
    while (end < n && offsets[end].first < e) ++end;
    ranges.emplace_back(start, end);
  }
  return ranges;
}

// build_sections: alternating template / message token ranges.
std::vector<ChatAlignment::Section> BuildSections(
    int64_t total, const std::vector<Span>& message_ranges) {
  std::vector<ChatAlignment::Section> sections;
  int64_t prev = 0;
  for (const auto& [s, e] : message_ranges) {
    if (prev < s) sections.push_back({false, prev, s});
    sections.push_back({true, s, e});
    prev = e;
  }
  if (prev < total) sections.push_back({false, prev, total});
  return sections;
}

}  // namespace

absl::StatusOr<AlignmentStrategy> ParseAlignmentStrategy(
    absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "first") return AlignmentStrategy::kFirst;
  if (n == "longest") return AlignmentStrategy::kLongest;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown alignment strategy '", name, "' (first, longest)"));
}

const char* AlignmentStrategyName(AlignmentStrategy strategy) {
  return strategy == AlignmentStrategy::kFirst ? "first" : "longest";
}

TokenAligner::TokenAligner(AlignmentSide receiver, AlignmentSide sharer,
                           AlignmentStrategy strategy)
    : receiver_(receiver), sharer_(sharer), strategy_(strategy) {}

absl::StatusOr<TokenAligner> TokenAligner::Create(AlignmentSide receiver,
                                                  AlignmentSide sharer,
                                                  AlignmentStrategy strategy) {
  for (const AlignmentSide* side : {&receiver, &sharer}) {
    if (side->tokenizer == nullptr || side->chat_template == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("token alignment needs the ",
                       side == &receiver ? "receiver" : "sharer",
                       "'s tokenizer and chat template"));
    }
  }
  return TokenAligner(receiver, sharer, strategy);
}

int64_t TokenAligner::PadId(const Tokenizer& tokenizer) const {
  // The reference sets a missing pad token to the eos token.
  if (auto pad = tokenizer.pad_token_id()) return *pad;
  if (auto eos = tokenizer.eos_token_id()) return *eos;
  return 0;
}

int64_t TokenAligner::MapSpecialToken(uint32_t receiver_id,
                                      const std::string& text) const {
  const Tokenizer& from = *receiver_.tokenizer;
  const Tokenizer& to = *sharer_.tokenizer;
  // The reference's dict literal {pad: pad, eos: eos, bos: bos, unk: unk}:
  // a later key replaces an earlier equal one; a None value falls through.
  std::optional<int64_t> mapped;
  bool matched = false;
  auto entry = [&](std::optional<uint32_t> key, std::optional<int64_t> value) {
    if (key.has_value() && *key == receiver_id) {
      matched = true;
      mapped = value;
    }
  };
  const auto pad = [this](const Tokenizer& t) -> std::optional<int64_t> {
    return PadId(t);
  };
  entry(from.pad_token_id().has_value() || from.eos_token_id().has_value()
            ? std::optional<uint32_t>(static_cast<uint32_t>(PadId(from)))
            : std::nullopt,
        pad(to));
  entry(from.eos_token_id(), to.eos_token_id());
  entry(from.bos_token_id(), to.bos_token_id());
  entry(from.unk_token_id(), to.unk_token_id());
  if (matched && mapped.has_value()) return *mapped;
  // convert_tokens_to_ids on the text, unless that gives unk.
  if (std::optional<uint32_t> id = to.TokenToId(text);
      id.has_value() && id != to.unk_token_id()) {
    return *id;
  }
  return to.unk_token_id().value_or(0);
}

std::vector<int64_t> TokenAligner::AlignTokens(
    absl::Span<const int64_t> receiver_ids) const {
  const Tokenizer& from = *receiver_.tokenizer;
  const Tokenizer& to = *sharer_.tokenizer;
  std::vector<int64_t> out;
  out.reserve(receiver_ids.size());
  for (int64_t id : receiver_ids) {
    const std::string text = DecodeOne(from, id);
    if (from.IsSpecialToken(static_cast<uint32_t>(id))) {
      out.push_back(MapSpecialToken(static_cast<uint32_t>(id), text));
      continue;
    }
    const std::vector<uint32_t> candidates = to.Encode(text, false);
    if (candidates.empty()) {
      out.push_back(to.unk_token_id().value_or(0));
    } else if (candidates.size() == 1 ||
               strategy_ == AlignmentStrategy::kFirst) {
      out.push_back(candidates.front());
    } else {
      // The candidate whose decoded text is longest; the first on ties.
      int64_t best = candidates.front();
      int64_t best_length = 0;
      for (uint32_t c : candidates) {
        const int64_t length = CodePoints(DecodeOne(to, c));
        if (length > best_length) {
          best_length = length;
          best = c;
        }
      }
      out.push_back(best);
    }
  }
  return out;
}

absl::StatusOr<ChatAlignment> TokenAligner::AlignChatMessages(
    absl::Span<const ChatMessage> messages, ChatTemplateOptions options) const {
  options.add_generation_prompt = true;
  options.enable_thinking = false;
  ChatAlignment a;
  ASSIGN_OR_RETURN(a.receiver_text,
                   receiver_.chat_template->Apply(messages, options));
  ASSIGN_OR_RETURN(a.sharer_text,
                   sharer_.chat_template->Apply(messages, options));
  const EncodedText slm =
      EncodeWithOffsets(*receiver_.tokenizer, a.receiver_text);
  const EncodedText llm = EncodeWithOffsets(*sharer_.tokenizer, a.sharer_text);
  const std::vector<ChatAlignment::Section> slm_sections = BuildSections(
      static_cast<int64_t>(slm.ids.size()),
      TokenRanges(slm.offsets, ContentSpans(a.receiver_text, messages)));
  const std::vector<ChatAlignment::Section> llm_sections = BuildSections(
      static_cast<int64_t>(llm.ids.size()),
      TokenRanges(llm.offsets, ContentSpans(a.sharer_text, messages)));
  if (slm_sections.size() != llm_sections.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token alignment: the receiver's chat template splits the "
        "conversation into ",
        slm_sections.size(), " template/message sections, the sharer's into ",
        llm_sections.size(),
        " (a message's content is not found verbatim in one rendering, e.g. "
        "because a template trims it)"));
  }
  const int64_t slm_pad = PadId(*receiver_.tokenizer);
  const int64_t llm_pad = PadId(*sharer_.tokenizer);
  for (size_t k = 0; k < slm_sections.size(); ++k) {
    const ChatAlignment::Section& s = slm_sections[k];
    const ChatAlignment::Section& l = llm_sections[k];
    if (s.message != l.message) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token alignment: section ", k, " is a ",
          s.message ? "message" : "template", " for the receiver but a ",
          l.message ? "message" : "template", " for the sharer"));
    }
    ChatAlignment::Section out{s.message,
                               static_cast<int64_t>(a.receiver_ids.size()), 0};
    if (!s.message) {
      const int64_t slm_len = s.end - s.begin, llm_len = l.end - l.begin;
      const int64_t target = std::max(slm_len, llm_len);
      for (int64_t i = 0; i < target; ++i) {
        const bool slm_real = i < slm_len, llm_real = i < llm_len;
        a.receiver_ids.push_back(slm_real ? slm.ids[s.begin + i] : slm_pad);
        a.sharer_ids.push_back(llm_real ? llm.ids[l.begin + i] : llm_pad);
        a.message_mask.push_back(false);
        a.receiver_padding.push_back(!slm_real);
        a.sharer_padding.push_back(!llm_real);
      }
    } else {
      const auto slm_message =
          absl::MakeConstSpan(slm.ids).subspan(s.begin, s.end - s.begin);
      const std::vector<int64_t> llm_message = AlignTokens(slm_message);
      for (size_t i = 0; i < slm_message.size(); ++i) {
        a.receiver_ids.push_back(slm_message[i]);
        a.sharer_ids.push_back(llm_message[i]);
        a.message_mask.push_back(true);
        a.receiver_padding.push_back(false);
        a.sharer_padding.push_back(false);
      }
    }
    out.end = static_cast<int64_t>(a.receiver_ids.size());
    a.sections.push_back(out);
  }
  return a;
}

}  // namespace kvwire
