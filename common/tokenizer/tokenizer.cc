// Over 700 lines on purpose: tokenizer.json's pipeline (normalizers,
// pre-tokenizers with their PCRE2 regexes, byte-level and SentencePiece-style
// BPE, added and special tokens, offsets, decoders) is one format read by one
// loader; its sections (marked below) share private helpers (UTF-8, the
// aligned text, the regex wrapper) that a split would have to export.
#include "common/tokenizer/tokenizer.h"

#include "common/file_util.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/utypes.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <fstream>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------
// UTF-8 helpers.

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the well-formed UTF-8 sequence at s[i], or 0 if the bytes there
// are ill-formed; `*maximal` is then the length of the maximal subpart (>= 1)
// that one U+FFFD replaces (Unicode 15, section 3.9, "U+FFFD Substitution of
// Maximal Subparts").
size_t DecodeUtf8At(absl::string_view s, size_t i, uint32_t* cp,
                    size_t* maximal) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  *maximal = 1;
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t need;
  uint32_t value;
  uint8_t lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
    value = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    value = c & 0x0F;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    value = c & 0x07;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return 0;
    const uint8_t t = b(i + k);
    const uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (t < l || t > h) return 0;
    value = (value << 6) | (t & 0x3F);
    *maximal = k + 1;
  }
  *cp = value;
  return need + 1;
}

bool IsValidUtf8(absl::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    uint32_t cp;
    size_t maximal;
    const size_t n = DecodeUtf8At(s, i, &cp, &maximal);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// Decodes valid UTF-8 into code points.
std::vector<uint32_t> CodePoints(absl::string_view s) {
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    size_t maximal;
    const size_t n = DecodeUtf8At(s, i, &cp, &maximal);
    if (n == 0) {
      cps.push_back(0xFFFD);
      i += maximal;
    } else {
      cps.push_back(cp);
      i += n;
    }
  }
  return cps;
}

// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s
// match).
bool IsWhiteSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// PCRE2 class body for Unicode White_Space.
constexpr char kWhiteSpaceClassBody[] =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}"
    "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

// Rewrites \s and \S of a regex to the explicit White_Space set (see the
// header). Everything else is copied unchanged. \S inside a character class
// is left to PCRE2 (it differs from White_Space only at U+180E).
std::string RewriteWhitespaceEscapes(absl::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char n = pattern[i + 1];
      if (n == 's') {
        if (in_class) {
          out += kWhiteSpaceClassBody;
        } else {
          absl::StrAppend(&out, "[", kWhiteSpaceClassBody, "]");
        }
        ++i;
        continue;
      }
      if (n == 'S' && !in_class) {
        absl::StrAppend(&out, "[^", kWhiteSpaceClassBody, "]");
        ++i;
        continue;
      }
      out.push_back(c);
      out.push_back(n);
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      // A leading ^ and a ']' right after the opening are literal parts of
      // the class syntax.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') {
        out.push_back('^');
        ++i;
      }
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') {
        out.push_back(']');
        ++i;
      }
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() &&
        pattern[i + 1] == ':') {
      // POSIX class such as [:alpha:]: copy through ":]".
      const size_t end = pattern.find(":]", i + 2);
      if (end != absl::string_view::npos) {
        const absl::string_view posix = pattern.substr(i, end + 2 - i);
        out.append(posix.data(), posix.size());
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Byte-level alphabet (GPT-2's bytes_to_unicode).

struct ByteLevelAlphabet {
  std::array<uint32_t, 256> byte_to_cp;
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 324> cp_to_byte;

  ByteLevelAlphabet() {
    cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      byte_to_cp[b] = printable ? b : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
      AppendUtf8(byte_to_cp[b], &byte_to_utf8[b]);
    }
  }

  // Rust ByteLevel decoder: a token whose every char is in the alphabet
  // becomes those bytes; any other token is kept as its UTF-8 text.
  std::string TokenToBytes(absl::string_view token) const {
    std::string bytes;
    bytes.reserve(token.size());
    for (uint32_t cp : CodePoints(token)) {
      if (cp >= cp_to_byte.size() || cp_to_byte[cp] < 0) {
        return std::string(token);
      }
      bytes.push_back(static_cast<char>(cp_to_byte[cp]));
    }
    return bytes;
  }
};

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet* const kAlphabet = new ByteLevelAlphabet();
  return *kAlphabet;
}

// ---------------------------------------------------------------------------
// PCRE2 wrapper.

struct Pcre2CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};

// Per-thread match state; the compiled code is shared and read-only.
struct Pcre2ThreadState {
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  Pcre2ThreadState() {
    match_data = pcre2_match_data_create(16, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (jit_stack != nullptr) {
      pcre2_jit_stack_assign(context, nullptr, jit_stack);
    }
  }
  ~Pcre2ThreadState() {
    pcre2_match_data_free(match_data);
    pcre2_match_context_free(context);
    if (jit_stack != nullptr) pcre2_jit_stack_free(jit_stack);
  }
};

Pcre2ThreadState& ThreadState() {
  thread_local Pcre2ThreadState state;
  return state;
}

class Regex {
 public:
  // `literal`: the pattern is a plain string (tokenizers' String pattern).
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(
      absl::string_view pattern, bool literal) {
    std::string source =
        literal ? std::string(pattern) : RewriteWhitespaceEscapes(pattern);
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    // PCRE2_LITERAL does not combine with PCRE2_UCP (nor need it).
    const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code* code = pcre2_compile(
        reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), options,
        &error_code, &error_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error_code, message, sizeof(message));
      return absl::InvalidArgumentError(absl::StrCat(
          "PCRE2 cannot compile pre-tokenizer pattern '", pattern, "': ",
          reinterpret_cast<const char*>(message), " at offset ", error_offset));
    }
    auto regex = std::unique_ptr<Regex>(new Regex());
    regex->code_.reset(code);
    regex->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    return regex;
  }

  // Calls fn(start, end) for each successive non-overlapping match in
  // `text` (valid UTF-8). Empty matches advance by one character.
  template <typename Fn>
  void ForEachMatch(absl::string_view text, Fn&& fn) const {
    Pcre2ThreadState& state = ThreadState();
    size_t offset = 0;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    while (offset <= text.size()) {
      const int rc =
          pcre2_match(code_.get(), subject, text.size(), offset,
                      PCRE2_NO_UTF_CHECK, state.match_data, state.context);
      if (rc < 0) break;  // PCRE2_ERROR_NOMATCH (or a resource limit).
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.match_data);
      const size_t start = ovector[0], end = ovector[1];
      fn(start, end);
      if (end > start) {
        offset = end;
      } else {
        if (start >= text.size()) break;
        offset = start + 1;
        while (offset < text.size() &&
               (static_cast<uint8_t>(text[offset]) & 0xC0) == 0x80) {
          ++offset;
        }
      }
    }
  }

  bool jit() const { return jit_; }

 private:
  Regex() = default;
  std::unique_ptr<pcre2_code, Pcre2CodeDeleter> code_;
  bool jit_ = false;
};

// ---------------------------------------------------------------------------
// Pipeline pieces.

enum class SplitBehavior {
  kRemoved,
  kIsolated,
  kMergedWithPrevious,
  kMergedWithNext,
  kContiguous,
};

enum class PrependScheme { kAlways, kFirst, kNever };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel, kMetaspace } kind;
  // Split pattern, ByteLevel's GPT-2 regex, or Metaspace's replacement.
  std::unique_ptr<Regex> regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
  // Metaspace.
  std::string replacement;
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;
};

constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

// Splits `text` by `regex` with tokenizers' SplitDelimiterBehavior
// semantics (normalizer.rs `split`), appending the [start, end) byte ranges
// of the non-empty pieces to `out`.
void SplitByRegex(absl::string_view text, const Regex& regex,
                  SplitBehavior behavior, bool invert,
                  std::vector<std::pair<size_t, size_t>>* out) {
  struct Span {
    size_t start, end;
    bool flag;  // is_match, then "remove".
  };
  std::vector<Span> matches;
  size_t prev = 0;
  regex.ForEachMatch(text, [&](size_t start, size_t end) {
    if (prev != start) matches.push_back({prev, start, false});
    matches.push_back({start, end, true});
    prev = end;
  });
  if (prev != text.size()) matches.push_back({prev, text.size(), false});
  if (invert) {
    for (Span& s : matches) s.flag = !s.flag;
  }

  std::vector<Span> splits;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (Span s : matches) splits.push_back({s.start, s.end, false});
      break;
    case SplitBehavior::kRemoved:
      splits = matches;
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : matches) {
        if (s.flag == previous_match && !splits.empty()) {
          splits.back().end = s.end;
        } else {
          splits.push_back({s.start, s.end, false});
        }
        previous_match = s.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : matches) {
        if (s.flag && !previous_match && !splits.empty()) {
          splits.back().end = s.end;
        } else {
          splits.push_back({s.start, s.end, false});
        }
        previous_match = s.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        if (it->flag && !previous_match && !splits.empty()) {
          splits.back().start = it->start;
        } else {
          splits.push_back({it->start, it->end, false});
        }
        previous_match = it->flag;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  for (const Span& s : splits) {
    if (!s.flag && s.end > s.start) out->emplace_back(s.start, s.end);
  }
}

struct AddedTokenTrie {
  struct Node {
    absl::flat_hash_map<uint8_t, int32_t> children;
    int32_t token = -1;  // Index into Impl::added_tokens.
  };
  std::vector<Node> nodes{1};

  bool empty() const { return nodes.size() == 1; }

  void Insert(absl::string_view content, int32_t index) {
    int32_t node = 0;
    for (char c : content) {
      auto it = nodes[node].children.find(static_cast<uint8_t>(c));
      if (it == nodes[node].children.end()) {
        nodes.emplace_back();
        const int32_t child = static_cast<int32_t>(nodes.size() - 1);
        nodes[node].children[static_cast<uint8_t>(c)] = child;
        node = child;
      } else {
        node = it->second;
      }
    }
    nodes[node].token = index;
  }

  // Longest token starting at text[pos]; returns its index and sets *end.
  int32_t LongestAt(absl::string_view text, size_t pos, size_t* end) const {
    int32_t node = 0, found = -1;
    for (size_t i = pos; i < text.size(); ++i) {
      auto it = nodes[node].children.find(static_cast<uint8_t>(text[i]));
      if (it == nodes[node].children.end()) break;
      node = it->second;
      if (nodes[node].token >= 0) {
        found = nodes[node].token;
        *end = i + 1;
      }
    }
    return found;
  }
};

bool IsWordChar(uint32_t cp) { return cp == '_' || u_isalnum(cp); }

uint32_t LastCodePoint(absl::string_view s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<uint8_t>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  uint32_t cp = 0;
  size_t maximal;
  if (DecodeUtf8At(s, i, &cp, &maximal) == 0) return 0xFFFD;
  return cp;
}

uint32_t FirstCodePoint(absl::string_view s) {
  uint32_t cp = 0;
  size_t maximal;
  if (DecodeUtf8At(s, 0, &cp, &maximal) == 0) return 0xFFFD;
  return cp;
}

std::string DirName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string JsonTypeName(const json& j) {
  if (j.is_object() && j.contains("type") && j["type"].is_string()) {
    return j["type"].get<std::string>();
  }
  return j.dump().substr(0, 80);
}

// j[key], or null when j is not an object or lacks the key.
const json& Field(const json& j, const char* key) {
  static const json* const kNull = new json();
  if (!j.is_object()) return *kNull;
  auto it = j.find(key);
  return it == j.end() ? *kNull : *it;
}

bool GetBool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (it->is_boolean()) return it->get<bool>();
  return fallback;
}

// A token in tokenizer_config.json: "text", {"content": "text", ...} or null.
std::string ConfigToken(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") &&
      (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return "";
}

// ---------------------------------------------------------------------------
// Aligned text: the part of tokenizers' NormalizedString that offsets need.

// A [begin, end) byte range of the input text.
struct OrigSpan {
  size_t begin = 0;
  size_t end = 0;
};

// Text being tokenized and, for each of its bytes, the range of the input
// text it came from. Every byte of a character carries that character's
// whole range, as tokenizers' alignments do, so a token that covers part of
// a character maps back to all of it.
struct AlignedText {
  std::string text;
  std::vector<OrigSpan> align;

  AlignedText Slice(size_t start, size_t end) const {
    AlignedText out;
    out.text.assign(text, start, end - start);
    out.align.assign(align.begin() + start, align.begin() + end);
    return out;
  }
  // Input range of text[start, end): the first byte's begin to the last
  // byte's end (NormalizedString::convert_offsets / expand_alignments).
  OrigSpan Original(size_t start, size_t end) const {
    return {align[start].begin, align[end - 1].end};
  }
  void Append(const AlignedText& other, size_t start, size_t end) {
    text.append(other.text, start, end - start);
    align.insert(align.end(), other.align.begin() + start,
                 other.align.begin() + end);
  }
};

// `input` repaired to valid UTF-8 like Utf8Lossy, each byte aligned to the
// character (or, for a U+FFFD, the ill-formed subsequence) it came from.
AlignedText MakeAligned(absl::string_view input) {
  AlignedText out;
  out.text.reserve(input.size());
  out.align.reserve(input.size());
  size_t i = 0;
  while (i < input.size()) {
    if (static_cast<uint8_t>(input[i]) < 0x80) {
      out.text.push_back(input[i]);
      out.align.push_back({i, i + 1});
      ++i;
      continue;
    }
    uint32_t cp;
    size_t maximal;
    const size_t n = DecodeUtf8At(input, i, &cp, &maximal);
    if (n == 0) {
      out.text += "\xEF\xBF\xBD";
      for (int k = 0; k < 3; ++k) out.align.push_back({i, i + maximal});
      i += maximal;
    } else {
      out.text.append(input.data() + i, n);
      for (size_t k = 0; k < n; ++k) out.align.push_back({i, i + n});
      i += n;
    }
  }
  return out;
}

// Byte length of the character whose (valid UTF-8) lead byte is `lead`.
size_t Utf8Length(char lead) {
  const auto b = static_cast<uint8_t>(lead);
  return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

// NormalizedString::replace: each non-empty match of `pattern` becomes
// `content`, whose bytes all take the alignment of the match's last byte
// (for " " -> "▁", the space it replaced).
void ReplaceAligned(const Regex& pattern, absl::string_view content,
                    AlignedText* t) {
  AlignedText out;
  size_t last = 0;
  bool matched = false;
  pattern.ForEachMatch(t->text, [&](size_t start, size_t end) {
    if (end == start) return;
    matched = true;
    out.Append(*t, last, start);
    out.text.append(content.data(), content.size());
    out.align.insert(out.align.end(), content.size(), t->align[end - 1]);
    last = end;
  });
  if (!matched) return;
  out.Append(*t, last, t->text.size());
  *t = std::move(out);
}

// NormalizedString::prepend: the new bytes share the first character's
// alignment; nothing happens to an empty string.
void PrependAligned(absl::string_view s, AlignedText* t) {
  if (t->text.empty()) return;
  const OrigSpan first = t->align[0];
  t->text.insert(0, s.data(), s.size());
  t->align.insert(t->align.begin(), s.size(), first);
}

// Unicode normalization, segment by segment between normalization
// boundaries (ICU's hasBoundaryBefore), so that unchanged segments keep
// their exact alignments. In a segment that changes, output characters
// take input characters' ranges in order: what tokenizers' per-character
// changes give for the usual one-starter segments (see the header).
void NormalizeUnicodeAligned(const icu::Normalizer2& n, AlignedText* t) {
  UErrorCode status = U_ZERO_ERROR;
  if (n.isNormalizedUTF8(icu::StringPiece(t->text.data(),
                                          static_cast<int32_t>(t->text.size())),
                         status) &&
      U_SUCCESS(status)) {
    return;
  }
  AlignedText out;
  out.text.reserve(t->text.size());
  out.align.reserve(t->text.size());
  size_t segment = 0;
  const auto flush = [&](size_t end) {
    if (end == segment) return;
    const absl::string_view piece(t->text.data() + segment, end - segment);
    // ASCII is stable under all four forms: skip ICU for the common case.
    if (std::all_of(piece.begin(), piece.end(),
                    [](char c) { return static_cast<uint8_t>(c) < 0x80; })) {
      out.Append(*t, segment, end);
      segment = end;
      return;
    }
    std::string normalized;
    UErrorCode s = U_ZERO_ERROR;
    icu::StringByteSink<std::string> sink(&normalized,
                                          static_cast<int32_t>(piece.size()));
    n.normalizeUTF8(
        0, icu::StringPiece(piece.data(), static_cast<int32_t>(piece.size())),
        sink, nullptr, s);
    if (U_FAILURE(s) || normalized == piece) {
      out.Append(*t, segment, end);
      segment = end;
      return;
    }
    // As tokenizers' alignments do for a composition ("e" + U+0301 + U+0301
    // -> "é" + U+0301): the first output character takes the first input
    // character's range (the characters composed into it get none), later
    // ones the input characters left, in order. For an expansion
    // ("ﬁ" -> "fi"), characters past the last input one share its range.
    std::vector<size_t> starts;  // Input character starts in the segment.
    for (size_t i = segment; i < end; i += Utf8Length(t->text[i])) {
      starts.push_back(i);
    }
    size_t outputs = 0;
    for (size_t i = 0; i < normalized.size(); i += Utf8Length(normalized[i])) {
      ++outputs;
    }
    const size_t removed =
        outputs < starts.size() ? starts.size() - outputs : 0;
    size_t k = 0;
    for (size_t i = 0; i < normalized.size(); ++k) {
      const size_t len =
          std::min(Utf8Length(normalized[i]), normalized.size() - i);
      const size_t in =
          starts[std::min(k == 0 ? 0 : k + removed, starts.size() - 1)];
      const OrigSpan span = t->align[in];
      out.text.append(normalized, i, len);
      out.align.insert(out.align.end(), len, span);
      i += len;
    }
    segment = end;
  };
  for (size_t i = 0; i < t->text.size();) {
    uint32_t cp = 0;
    size_t maximal;
    size_t len = DecodeUtf8At(t->text, i, &cp, &maximal);
    if (len == 0) len = maximal;
    if (i > segment && n.hasBoundaryBefore(static_cast<UChar32>(cp))) flush(i);
    i += len;
  }
  flush(t->text.size());
  *t = std::move(out);
}

// ---------------------------------------------------------------------------
// Pipeline steps beyond the regex splits.

struct NormalizerStep {
  enum class Kind { kUnicode, kReplace, kPrepend } kind = Kind::kUnicode;
  const icu::Normalizer2* unicode = nullptr;
  std::unique_ptr<Regex> pattern;  // Replace.
  std::string content;             // Replace's content, Prepend's string.
};

struct DecoderStep {
  enum class Kind {
    kByteLevel,
    kReplace,
    kByteFallback,
    kFuse,
    kStrip,
    kMetaspace
  } kind = Kind::kByteLevel;
  std::unique_ptr<Regex> pattern;  // Replace.
  std::string content;             // Replace's content; Strip's/Metaspace's
                                   // character.
  size_t start = 0, stop = 0;      // Strip.
  bool drop_first_replacement = false;  // Metaspace, unless scheme never.
};

// The byte of a "<0xNN>" token, as tokenizers' ByteFallback decoder reads it
// (u8::from_str_radix on the two characters, so "<0x0a>" and "<0x+A>" count
// too), or -1.
int ByteFallbackValue(absl::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') {
    return -1;
  }
  const auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (token[3] == '+') return hex(token[4]);
  const int hi = hex(token[3]), lo = hex(token[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

// ---------------------------------------------------------------------------

struct Tokenizer::Impl {
  // Model.
  absl::flat_hash_map<std::string, uint32_t> model_vocab;  // BPE vocab.
  absl::flat_hash_map<std::string, uint32_t> added_vocab;  // added_tokens.
  std::vector<std::string> id_to_token;  // "" for ids without a token.
  std::vector<std::string> id_to_bytes;  // ByteLevel decode of each token.
  std::vector<uint8_t> id_is_special;
  absl::flat_hash_map<uint64_t, std::pair<uint32_t, uint32_t>>
      merges;  // (left, right) -> (rank, merged id).
  // Byte-level BPE (a ByteLevel pre-tokenizer) starts words from bytes;
  // otherwise (SentencePiece-style) from characters.
  bool byte_level = false;
  std::array<uint32_t, 256> byte_to_id{};  // Byte-level alphabet ids.
  bool byte_fallback = false;
  std::array<int64_t, 256> fallback_id{};  // "<0xNN>" ids, -1 when absent.
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::optional<uint32_t> model_unk_id;

  // Added tokens.
  std::vector<AddedToken> added_tokens;
  AddedTokenTrie raw_trie;         // normalized=false tokens.
  AddedTokenTrie normalized_trie;  // normalized=true tokens.

  // Pipeline.
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  // Post-processor template for one sequence: ids, with kSequenceMarker
  // standing for the encoded text.
  static constexpr int64_t kSequenceMarker = -1;
  std::vector<int64_t> single_template;
  bool has_template = false;
  // ByteLevel post-processor with trim_offsets (offsets only).
  bool trim_offsets = false;
  bool trim_add_prefix_space = false;
  std::vector<DecoderStep> decoders;
  bool decoder_byte_level_only = false;

  // Config.
  std::string bos_token, eos_token, pad_token, unk_token;
  std::string chat_template;
  bool config_clean_up = false;

  // Per-word BPE cache: (id, byte length in the word) of each token.
  using WordTokens = std::vector<std::pair<uint32_t, uint32_t>>;
  static constexpr size_t kMaxCacheEntries = 1 << 18;
  static constexpr size_t kMaxCachedWordBytes = 256;
  mutable absl::Mutex cache_mu;
  mutable absl::flat_hash_map<std::string, WordTokens> cache
      ABSL_GUARDED_BY(cache_mu);

  absl::Status LoadModel(const json& model);
  absl::Status FinishModel();
  absl::Status LoadAddedTokens(const json& added);
  absl::Status LoadNormalizer(const json& normalizer);
  absl::Status LoadPreTokenizer(const json& pre_tokenizer);
  absl::Status LoadPreTokenizerStep(const json& step);
  absl::Status LoadPostProcessor(const json& post_processor);
  absl::Status LoadPostProcessorStep(const json& step);
  absl::Status LoadDecoder(const json& decoder);
  absl::Status LoadDecoderStep(const json& step);
  absl::Status LoadConfig(const json& config);

  void Normalize(AlignedText* text) const;
  // False when every normalizer would leave `text` as it is (Unicode
  // normalizers on already-normalized text), so it need not be copied.
  bool NeedsNormalization(absl::string_view text) const;
  // Splits `text` around the added tokens of `trie`; calls
  // on_text(start, end) and on_token(id, start, end) in order, with byte
  // ranges of `text` (a token's range includes what lstrip/rstrip took).
  template <typename OnText, typename OnToken>
  void SplitAdded(absl::string_view text, const AddedTokenTrie& trie,
                  OnText&& on_text, OnToken&& on_token) const;
  void EncodeNormalizedPiece(const AlignedText& text, size_t start, size_t end,
                             std::vector<uint32_t>* ids,
                             std::vector<OrigSpan>* spans) const;
  void EncodeWord(absl::string_view word, WordTokens* out) const;
  void Bpe(absl::string_view word, WordTokens* out) const;
  void Encode(absl::string_view input, bool add_special_tokens,
              std::vector<uint32_t>* ids, std::vector<OrigSpan>* spans) const;
  void TrimOffsets(absl::string_view input, const std::vector<uint32_t>& ids,
                   const std::vector<std::string>& added_values,
                   std::vector<OrigSpan>* spans) const;
  std::string RunDecoders(std::vector<std::string> tokens) const;

  std::optional<uint32_t> ModelLookup(absl::string_view token) const {
    auto it = model_vocab.find(token);
    if (it == model_vocab.end()) return std::nullopt;
    return it->second;
  }
  // Added tokens first, then the model, as tokenizers' token_to_id.
  std::optional<uint32_t> Lookup(absl::string_view token) const {
    auto it = added_vocab.find(token);
    if (it != added_vocab.end()) return it->second;
    return ModelLookup(token);
  }
  // Token ids index dense tables, so a file's id sizes them: ids past
  // kMaxTokenId (16x the largest real vocabularies) are refused instead of
  // allocating gigabytes, and 0xFFFFFFFF no longer wraps `id + 1` to 0 (both
  // found by fuzz/tokenizer_fuzzer.cc).
  static constexpr uint64_t kMaxTokenId = (uint64_t{1} << 22) - 1;
  absl::Status EnsureId(const json& value, absl::string_view what,
                        uint32_t* id) {
    const uint64_t wide = value.get<uint64_t>();
    if (wide > kMaxTokenId) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has id ", wide, ", past the largest supported ",
                       kMaxTokenId));
    }
    *id = static_cast<uint32_t>(wide);
    if (*id >= id_to_token.size()) {
      id_to_token.resize(*id + 1);
      id_is_special.resize(*id + 1, 0);
    }
    return absl::OkStatus();
  }
};

namespace {

// A tokenizers Pattern ({"String": s} or {"Regex": r}) as a Regex.
absl::StatusOr<std::unique_ptr<Regex>> LoadPattern(const json& pattern,
                                                   absl::string_view where) {
  if (pattern.is_object() && pattern.contains("Regex") &&
      pattern["Regex"].is_string()) {
    return Regex::Compile(pattern["Regex"].get<std::string>(), false);
  }
  if (pattern.is_object() && pattern.contains("String") &&
      pattern["String"].is_string()) {
    return Regex::Compile(pattern["String"].get<std::string>(), true);
  }
  return absl::UnimplementedError(
      absl::StrCat("unsupported ", where, " pattern: ", pattern.dump()));
}

// A single-character string field (Metaspace's replacement, Strip's
// content).
absl::StatusOr<std::string> LoadChar(const json& step, const char* key,
                                     absl::string_view where) {
  const json& value = Field(step, key);
  if (!value.is_string() || CodePoints(value.get<std::string>()).size() != 1 ||
      !IsValidUtf8(value.get<std::string>())) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " needs a one-character string \"", key, "\", got ",
                     value.dump().substr(0, 40)));
  }
  return value.get<std::string>();
}

absl::StatusOr<PrependScheme> LoadPrependScheme(const json& step) {
  const json& scheme = Field(step, "prepend_scheme");
  if (scheme.is_string()) {
    const std::string s = scheme.get<std::string>();
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    return absl::UnimplementedError(
        absl::StrCat("unsupported Metaspace prepend_scheme '", s, "'"));
  }
  // Files written before prepend_scheme existed say add_prefix_space.
  return GetBool(step, "add_prefix_space", true) ? PrependScheme::kAlways
                                                 : PrependScheme::kNever;
}

}  // namespace

absl::Status Tokenizer::Impl::LoadModel(const json& model) {
  if (!model.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json has no \"model\" object");
  }
  const std::string type = model.contains("type") && model["type"].is_string()
                               ? model["type"].get<std::string>()
                               : (model.contains("merges") ? "BPE" : "");
  if (type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat("unsupported tokenizer model type '", type,
                     "': only BPE (byte-level or SentencePiece-style) is "
                     "supported"));
  }
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      model["dropout"].get<double>() != 0.0) {
    return absl::UnimplementedError("unsupported BPE option dropout");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() &&
        !model[key].get<std::string>().empty()) {
      return absl::UnimplementedError(
          absl::StrCat("unsupported BPE option ", key, "='",
                       model[key].get<std::string>(), "'"));
    }
  }
  ignore_merges = GetBool(model, "ignore_merges", false);
  byte_fallback = GetBool(model, "byte_fallback", false);
  fuse_unk = GetBool(model, "fuse_unk", false);

  const json& vocab = Field(model, "vocab");
  if (!vocab.is_object()) {
    return absl::InvalidArgumentError("BPE model has no \"vocab\" object");
  }
  model_vocab.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocab entry '", it.key(), "' has a non-integer id"));
    }
    uint32_t id = 0;
    RETURN_IF_ERROR(EnsureId(
        it.value(), absl::StrCat("vocab entry '", it.key(), "'"), &id));
    id_to_token[id] = it.key();
    model_vocab[it.key()] = id;
  }

  const json& merge_list = Field(model, "merges");
  if (!merge_list.is_array()) {
    return absl::InvalidArgumentError("BPE model has no \"merges\" array");
  }
  merges.reserve(merge_list.size());
  std::string left, right;
  for (size_t rank = 0; rank < merge_list.size(); ++rank) {
    const json& m = merge_list[rank];
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos ||
          s.find(' ', space + 1) != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("merge #", rank + 1, " '", s,
                         "' is not two tokens separated by one space"));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() &&
               m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("merge #", rank + 1,
                       " has an unsupported format: ", m.dump().substr(0, 80)));
    }
    const auto a = ModelLookup(left), b = ModelLookup(right),
               merged = ModelLookup(left + right);
    if (!a || !b || !merged) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge #", rank + 1, " ('", left, "', '", right,
                       "') uses a token missing from the vocabulary"));
    }
    // Later duplicates win, as in tokenizers and transformers.js.
    merges[(static_cast<uint64_t>(*a) << 32) | *b] = {
        static_cast<uint32_t>(rank), *merged};
  }

  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    // Absent from the vocabulary, it is as if there were none (unknown
    // characters are dropped), where tokenizers would fail the encode.
    model_unk_id = ModelLookup(model["unk_token"].get<std::string>());
  }
  fallback_id.fill(-1);
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const std::string name = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
    if (auto id = ModelLookup(name)) fallback_id[b] = *id;
  }
  return absl::OkStatus();
}

// Runs once the pre-tokenizer says whether words start from bytes.
absl::Status Tokenizer::Impl::FinishModel() {
  if (!byte_level) return absl::OkStatus();
  const ByteLevelAlphabet& alphabet = Alphabet();
  for (int b = 0; b < 256; ++b) {
    auto id = ModelLookup(alphabet.byte_to_utf8[b]);
    if (!id) {
      return absl::UnimplementedError(absl::StrCat(
          "vocabulary lacks the byte-level token for byte ", b,
          ": a ByteLevel pre-tokenizer needs a byte-level BPE vocabulary"));
    }
    byte_to_id[b] = *id;
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadAddedTokens(const json& added) {
  if (added.is_null()) return absl::OkStatus();
  if (!added.is_array()) {
    return absl::InvalidArgumentError("\"added_tokens\" is not an array");
  }
  for (const json& t : added) {
    if (!t.is_object() || !t.contains("id") || !t.contains("content") ||
        !t["content"].is_string() || !t["id"].is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed added token: ", t.dump().substr(0, 120)));
    }
    AddedToken token;
    token.content = t["content"].get<std::string>();
    token.special = GetBool(t, "special", false);
    token.lstrip = GetBool(t, "lstrip", false);
    token.rstrip = GetBool(t, "rstrip", false);
    token.normalized = GetBool(t, "normalized", !token.special);
    token.single_word = GetBool(t, "single_word", false);
    if (token.content.empty()) continue;
    RETURN_IF_ERROR(EnsureId(
        t["id"], absl::StrCat("added token '", token.content, "'"), &token.id));
    id_to_token[token.id] = token.content;
    added_vocab[token.content] = token.id;
    id_is_special[token.id] = token.special ? 1 : 0;
    const int32_t index = static_cast<int32_t>(added_tokens.size());
    (token.normalized ? normalized_trie : raw_trie)
        .Insert(token.content, index);
    added_tokens.push_back(std::move(token));
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadNormalizer(const json& normalizer) {
  if (normalizer.is_null()) return absl::OkStatus();
  const std::string type = JsonTypeName(normalizer);
  if (type == "Sequence") {
    for (const json& n : Field(normalizer, "normalizers")) {
      RETURN_IF_ERROR(LoadNormalizer(n));
    }
    return absl::OkStatus();
  }
  NormalizerStep step;
  if (type == "Replace") {
    step.kind = NormalizerStep::Kind::kReplace;
    ASSIGN_OR_RETURN(step.pattern,
                     LoadPattern(Field(normalizer, "pattern"), "Replace"));
    const json& content = Field(normalizer, "content");
    if (!content.is_string()) {
      return absl::InvalidArgumentError("Replace normalizer has no content");
    }
    step.content = content.get<std::string>();
    normalizers.push_back(std::move(step));
    return absl::OkStatus();
  }
  if (type == "Prepend") {
    step.kind = NormalizerStep::Kind::kPrepend;
    const json& prepend = Field(normalizer, "prepend");
    if (!prepend.is_string()) {
      return absl::InvalidArgumentError("Prepend normalizer has no prepend");
    }
    step.content = prepend.get<std::string>();
    normalizers.push_back(std::move(step));
    return absl::OkStatus();
  }
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  if (type == "NFC") {
    n = icu::Normalizer2::getNFCInstance(status);
  } else if (type == "NFD") {
    n = icu::Normalizer2::getNFDInstance(status);
  } else if (type == "NFKC") {
    n = icu::Normalizer2::getNFKCInstance(status);
  } else if (type == "NFKD") {
    n = icu::Normalizer2::getNFKDInstance(status);
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported normalizer type '", type,
        "' (supported: NFC, NFD, NFKC, NFKD, Replace, Prepend, Sequence of "
        "these)"));
  }
  if (U_FAILURE(status) || n == nullptr) {
    return absl::InternalError(absl::StrCat(
        "ICU cannot create the ", type, " normalizer: ", u_errorName(status)));
  }
  step.kind = NormalizerStep::Kind::kUnicode;
  step.unicode = n;
  normalizers.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadPreTokenizerStep(const json& step) {
  const std::string type = JsonTypeName(step);
  PreTokenizerStep s;
  if (type == "Split") {
    s.kind = PreTokenizerStep::Kind::kSplit;
    ASSIGN_OR_RETURN(s.regex, LoadPattern(Field(step, "pattern"), "Split"));
    const std::string behavior =
        step.value("behavior", std::string("Isolated"));
    if (behavior == "Removed") {
      s.behavior = SplitBehavior::kRemoved;
    } else if (behavior == "Isolated") {
      s.behavior = SplitBehavior::kIsolated;
    } else if (behavior == "MergedWithPrevious") {
      s.behavior = SplitBehavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      s.behavior = SplitBehavior::kMergedWithNext;
    } else if (behavior == "Contiguous") {
      s.behavior = SplitBehavior::kContiguous;
    } else {
      return absl::UnimplementedError(
          absl::StrCat("unsupported Split behavior '", behavior, "'"));
    }
    s.invert = GetBool(step, "invert", false);
  } else if (type == "ByteLevel") {
    s.kind = PreTokenizerStep::Kind::kByteLevel;
    s.add_prefix_space = GetBool(step, "add_prefix_space", true);
    if (GetBool(step, "use_regex", true)) {
      ASSIGN_OR_RETURN(s.regex, Regex::Compile(kGpt2Pattern, false));
    }
  } else if (type == "Metaspace") {
    s.kind = PreTokenizerStep::Kind::kMetaspace;
    ASSIGN_OR_RETURN(s.replacement,
                     LoadChar(step, "replacement", "Metaspace pre_tokenizer"));
    ASSIGN_OR_RETURN(s.prepend_scheme, LoadPrependScheme(step));
    s.split = GetBool(step, "split", true);
    ASSIGN_OR_RETURN(s.regex, Regex::Compile(s.replacement, true));
    s.behavior = SplitBehavior::kMergedWithNext;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported pre_tokenizer type '", type,
        "' (supported: Split, ByteLevel, Metaspace, Sequence of these)"));
  }
  pre_tokenizers.push_back(std::move(s));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadPreTokenizer(const json& pre_tokenizer) {
  // No pre-tokenizer: each piece between added tokens is one word
  // (Llama-2-era files, which put "▁" in with normalizers instead).
  if (pre_tokenizer.is_null()) return FinishModel();
  if (JsonTypeName(pre_tokenizer) == "Sequence") {
    for (const json& step : Field(pre_tokenizer, "pretokenizers")) {
      if (JsonTypeName(step) == "Sequence") {
        return absl::UnimplementedError(
            "unsupported nested Sequence pre_tokenizer");
      }
      RETURN_IF_ERROR(LoadPreTokenizerStep(step));
    }
  } else {
    RETURN_IF_ERROR(LoadPreTokenizerStep(pre_tokenizer));
  }
  bool metaspace = false;
  for (size_t i = 0; i < pre_tokenizers.size(); ++i) {
    const PreTokenizerStep::Kind kind = pre_tokenizers[i].kind;
    if (kind == PreTokenizerStep::Kind::kMetaspace) metaspace = true;
    if (kind == PreTokenizerStep::Kind::kByteLevel) {
      if (i + 1 != pre_tokenizers.size()) {
        return absl::UnimplementedError(
            "unsupported pre_tokenizer: a step after ByteLevel");
      }
      byte_level = true;
    }
  }
  if (byte_level && metaspace) {
    return absl::UnimplementedError(
        "unsupported pre_tokenizer: ByteLevel together with Metaspace");
  }
  return FinishModel();
}

absl::Status Tokenizer::Impl::LoadPostProcessorStep(const json& step) {
  const std::string type = JsonTypeName(step);
  if (type == "ByteLevel") {
    trim_offsets = GetBool(step, "trim_offsets", true);
    trim_add_prefix_space = GetBool(step, "add_prefix_space", true);
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported post_processor type '", type,
        "' (supported: ByteLevel, TemplateProcessing, Sequence of these)"));
  }
  if (has_template) {
    return absl::UnimplementedError(
        "unsupported post_processor: more than one TemplateProcessing");
  }
  const json& special = Field(step, "special_tokens");
  for (const json& piece : Field(step, "single")) {
    if (piece.contains("Sequence")) {
      single_template.push_back(kSequenceMarker);
    } else if (piece.contains("SpecialToken")) {
      const std::string name =
          Field(Field(piece, "SpecialToken"), "id").get<std::string>();
      if (!Field(special, name.c_str()).contains("ids")) {
        return absl::InvalidArgumentError(
            absl::StrCat("TemplateProcessing names special token '", name,
                         "' without ids in special_tokens"));
      }
      for (const json& id : Field(special, name.c_str())["ids"]) {
        single_template.push_back(id.get<uint32_t>());
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed TemplateProcessing piece: ", piece.dump()));
    }
  }
  has_template = true;
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadPostProcessor(const json& post_processor) {
  if (post_processor.is_null()) return absl::OkStatus();
  if (JsonTypeName(post_processor) == "Sequence") {
    for (const json& step : Field(post_processor, "processors")) {
      RETURN_IF_ERROR(LoadPostProcessorStep(step));
    }
    return absl::OkStatus();
  }
  return LoadPostProcessorStep(post_processor);
}

absl::Status Tokenizer::Impl::LoadDecoderStep(const json& step) {
  const std::string type = JsonTypeName(step);
  DecoderStep d;
  if (type == "ByteLevel") {
    d.kind = DecoderStep::Kind::kByteLevel;
  } else if (type == "Replace") {
    d.kind = DecoderStep::Kind::kReplace;
    ASSIGN_OR_RETURN(d.pattern,
                     LoadPattern(Field(step, "pattern"), "Replace decoder"));
    const json& content = Field(step, "content");
    if (!content.is_string()) {
      return absl::InvalidArgumentError("Replace decoder has no content");
    }
    d.content = content.get<std::string>();
  } else if (type == "ByteFallback") {
    d.kind = DecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    d.kind = DecoderStep::Kind::kFuse;
  } else if (type == "Strip") {
    d.kind = DecoderStep::Kind::kStrip;
    ASSIGN_OR_RETURN(d.content, LoadChar(step, "content", "Strip decoder"));
    const json& start = Field(step, "start");
    const json& stop = Field(step, "stop");
    if (!start.is_number_unsigned() || !stop.is_number_unsigned()) {
      return absl::InvalidArgumentError(
          "Strip decoder needs unsigned \"start\" and \"stop\"");
    }
    d.start = start.get<size_t>();
    d.stop = stop.get<size_t>();
  } else if (type == "Metaspace") {
    d.kind = DecoderStep::Kind::kMetaspace;
    ASSIGN_OR_RETURN(d.content,
                     LoadChar(step, "replacement", "Metaspace decoder"));
    ASSIGN_OR_RETURN(const PrependScheme scheme, LoadPrependScheme(step));
    d.drop_first_replacement = scheme != PrependScheme::kNever;
  } else {
    return absl::UnimplementedError(
        absl::StrCat("unsupported decoder type '", type,
                     "' (supported: ByteLevel, Replace, ByteFallback, Fuse, "
                     "Strip, Metaspace, Sequence of these)"));
  }
  decoders.push_back(std::move(d));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadDecoder(const json& decoder) {
  if (decoder.is_null()) {
    // tokenizers would join the tokens with spaces, which no supported model
    // wants.
    return absl::UnimplementedError("unsupported decoder type 'null'");
  }
  if (JsonTypeName(decoder) == "Sequence") {
    for (const json& d : Field(decoder, "decoders")) {
      if (JsonTypeName(d) == "Sequence") {
        return absl::UnimplementedError("unsupported nested Sequence decoder");
      }
      RETURN_IF_ERROR(LoadDecoderStep(d));
    }
  } else {
    RETURN_IF_ERROR(LoadDecoderStep(decoder));
  }
  if (decoders.empty()) {
    return absl::UnimplementedError("unsupported decoder: empty Sequence");
  }
  decoder_byte_level_only = true;
  for (const DecoderStep& d : decoders) {
    if (d.kind != DecoderStep::Kind::kByteLevel) {
      decoder_byte_level_only = false;
    }
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadConfig(const json& config) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError("tokenizer_config.json is not an object");
  }
  bos_token = ConfigToken(config, "bos_token");
  eos_token = ConfigToken(config, "eos_token");
  pad_token = ConfigToken(config, "pad_token");
  unk_token = ConfigToken(config, "unk_token");
  config_clean_up = GetBool(config, "clean_up_tokenization_spaces", false);
  auto it = config.find("chat_template");
  if (it != config.end()) {
    if (it->is_string()) {
      chat_template = it->get<std::string>();
    } else if (it->is_array()) {
      for (const json& entry : *it) {
        if (entry.value("name", std::string()) == "default" &&
            entry.contains("template") && entry["template"].is_string()) {
          chat_template = entry["template"].get<std::string>();
        }
      }
    }
  }
  return absl::OkStatus();
}

bool Tokenizer::Impl::NeedsNormalization(absl::string_view text) const {
  for (const NormalizerStep& step : normalizers) {
    if (step.kind != NormalizerStep::Kind::kUnicode) return true;
    UErrorCode status = U_ZERO_ERROR;
    if (!step.unicode->isNormalizedUTF8(
            icu::StringPiece(text.data(), static_cast<int32_t>(text.size())),
            status) ||
        U_FAILURE(status)) {
      return true;
    }
  }
  return false;
}

void Tokenizer::Impl::Normalize(AlignedText* text) const {
  for (const NormalizerStep& step : normalizers) {
    switch (step.kind) {
      case NormalizerStep::Kind::kUnicode:
        NormalizeUnicodeAligned(*step.unicode, text);
        break;
      case NormalizerStep::Kind::kReplace:
        ReplaceAligned(*step.pattern, step.content, text);
        break;
      case NormalizerStep::Kind::kPrepend:
        PrependAligned(step.content, text);
        break;
    }
  }
}

template <typename OnText, typename OnToken>
void Tokenizer::Impl::SplitAdded(absl::string_view text,
                                 const AddedTokenTrie& trie, OnText&& on_text,
                                 OnToken&& on_token) const {
  if (trie.empty()) {
    if (!text.empty()) on_text(size_t{0}, text.size());
    return;
  }
  size_t start_offset = 0;  // Start of the pending text piece.
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = 0;
    const int32_t index = trie.LongestAt(text, pos, &end);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = added_tokens[index];
    size_t start = pos, stop = end;
    pos = end;  // Like aho-corasick's find_iter, resume after the match.
    if (token.single_word) {
      const bool start_ok =
          start == 0 || !IsWordChar(LastCodePoint(text.substr(0, start)));
      const bool stop_ok =
          stop == text.size() || !IsWordChar(FirstCodePoint(text.substr(stop)));
      if (!start_ok || !stop_ok) continue;
    }
    if (token.lstrip) {
      size_t s = start;
      while (s > start_offset) {
        size_t k = s - 1;
        while (k > start_offset &&
               (static_cast<uint8_t>(text[k]) & 0xC0) == 0x80)
          --k;
        if (!IsWhiteSpace(FirstCodePoint(text.substr(k, s - k)))) break;
        s = k;
      }
      start = s;
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        uint32_t cp;
        size_t maximal;
        const size_t n = DecodeUtf8At(text, stop, &cp, &maximal);
        if (n == 0 || !IsWhiteSpace(cp)) break;
        stop += n;
      }
      pos = std::max(pos, stop);
    }
    if (start_offset < start) on_text(start_offset, start);
    on_token(token.id, start, stop);
    start_offset = stop;
  }
  if (start_offset < text.size()) on_text(start_offset, text.size());
}

// Pre-tokenizes text[start, end) and encodes its words. Pieces are ranges
// of an aligned text, copied only where a step rewrites them (a ByteLevel
// prefix space, Metaspace), so splitting costs no allocation per word.
void Tokenizer::Impl::EncodeNormalizedPiece(
    const AlignedText& text, size_t start, size_t end,
    std::vector<uint32_t>* ids, std::vector<OrigSpan>* spans) const {
  struct Piece {
    const AlignedText* text;
    size_t start, end;
    absl::string_view view() const {
      return absl::string_view(text->text).substr(start, end - start);
    }
  };
  std::deque<AlignedText> rewritten;  // Stable addresses for Piece::text.
  std::vector<Piece> pieces = {{&text, start, end}};
  std::vector<Piece> next;
  std::vector<std::pair<size_t, size_t>> ranges;
  const auto split = [&](const Piece& p, const Regex& regex,
                         SplitBehavior behavior, bool invert) {
    ranges.clear();
    SplitByRegex(p.view(), regex, behavior, invert, &ranges);
    for (const auto& [s, e] : ranges) {
      next.push_back({p.text, p.start + s, p.start + e});
    }
  };
  const auto own = [&](const Piece& p) -> AlignedText& {
    rewritten.push_back(p.text->Slice(p.start, p.end));
    return rewritten.back();
  };
  for (const PreTokenizerStep& step : pre_tokenizers) {
    next.clear();
    for (Piece p : pieces) {
      switch (step.kind) {
        case PreTokenizerStep::Kind::kSplit:
          split(p, *step.regex, step.behavior, step.invert);
          break;
        case PreTokenizerStep::Kind::kByteLevel:
          if (step.add_prefix_space && p.view()[0] != ' ') {
            AlignedText& t = own(p);
            PrependAligned(" ", &t);
            p = {&t, 0, t.text.size()};
          }
          if (step.regex != nullptr) {
            split(p, *step.regex, SplitBehavior::kIsolated, false);
          } else {
            next.push_back(p);
          }
          break;
        case PreTokenizerStep::Kind::kMetaspace: {
          // Metaspace::pre_tokenize: spaces become the replacement, which
          // is prepended as the scheme says, then split before each one.
          // "First" means the piece starts the input (original offset 0).
          const bool at_input_start = p.text->align[p.start].begin == 0;
          rewritten.emplace_back();
          AlignedText& out = rewritten.back();
          for (size_t i = p.start; i < p.end; ++i) {
            if (p.text->text[i] == ' ') {
              out.text += step.replacement;
              out.align.insert(out.align.end(), step.replacement.size(),
                               p.text->align[i]);
            } else {
              out.text.push_back(p.text->text[i]);
              out.align.push_back(p.text->align[i]);
            }
          }
          const bool starts_with_replacement =
              absl::string_view(out.text).substr(0, step.replacement.size()) ==
              step.replacement;
          if (!starts_with_replacement &&
              (step.prepend_scheme == PrependScheme::kAlways ||
               (step.prepend_scheme == PrependScheme::kFirst &&
                at_input_start))) {
            PrependAligned(step.replacement, &out);
          }
          const Piece whole = {&out, 0, out.text.size()};
          if (step.split) {
            split(whole, *step.regex, SplitBehavior::kMergedWithNext, false);
          } else {
            next.push_back(whole);
          }
          break;
        }
      }
    }
    pieces.swap(next);
  }
  WordTokens tokens;
  for (const Piece& word : pieces) {
    tokens.clear();
    EncodeWord(word.view(), &tokens);
    size_t at = word.start;
    for (const auto& [id, len] : tokens) {
      ids->push_back(id);
      spans->push_back(word.text->Original(at, at + len));
      at += len;
    }
  }
}

void Tokenizer::Impl::EncodeWord(absl::string_view word,
                                 WordTokens* out) const {
  if (word.empty()) return;
  const auto size = static_cast<uint32_t>(word.size());
  if (ignore_merges) {
    // tokenizers looks the whole word up first (in byte-level characters
    // when the words are bytes).
    std::optional<uint32_t> id;
    if (byte_level) {
      const ByteLevelAlphabet& alphabet = Alphabet();
      std::string mapped;
      mapped.reserve(word.size() * 2);
      for (char c : word) {
        mapped += alphabet.byte_to_utf8[static_cast<uint8_t>(c)];
      }
      id = ModelLookup(mapped);
    } else {
      id = ModelLookup(word);
    }
    if (id) {
      out->emplace_back(*id, size);
      return;
    }
  }
  if (byte_level && word.size() == 1) {
    out->emplace_back(byte_to_id[static_cast<uint8_t>(word[0])], 1);
    return;
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mu);
    auto it = cache.find(word);
    if (it != cache.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  WordTokens tokens;
  Bpe(word, &tokens);
  out->insert(out->end(), tokens.begin(), tokens.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_mu);
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.emplace(std::string(word), std::move(tokens));
  }
}

// BPE over one pre-token word, as tokenizers' BPE::merge_word and
// Word::merge_all do. The word starts as its bytes (byte-level) or its
// characters; a character missing from the vocabulary becomes its
// "<0xNN>" byte tokens (byte_fallback, when all exist) or the unk token
// (consecutive ones fused into one with fuse_unk), or is dropped when the
// model has no unk token. Then the lowest-ranked merge (leftmost on ties)
// applies until none does: O(n log n) with a heap and a linked list.
void Tokenizer::Impl::Bpe(absl::string_view word, WordTokens* out) const {
  struct Symbol {
    uint32_t id;
    uint32_t len;  // Bytes of the word.
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&](uint32_t id, size_t len) {
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back(
        {id, static_cast<uint32_t>(len), index - 1, index + 1, true});
  };
  if (byte_level) {
    for (char c : word) add(byte_to_id[static_cast<uint8_t>(c)], 1);
  } else {
    // A pending unk token and its byte length.
    bool unk = false;
    size_t unk_len = 0;
    for (size_t i = 0; i < word.size();) {
      const size_t len = std::min(Utf8Length(word[i]), word.size() - i);
      const absl::string_view c = word.substr(i, len);
      i += len;
      if (auto id = ModelLookup(c)) {
        if (unk) add(*model_unk_id, unk_len);
        unk = false;
        add(*id, len);
        continue;
      }
      if (byte_fallback && std::all_of(c.begin(), c.end(), [&](char b) {
            return fallback_id[static_cast<uint8_t>(b)] >= 0;
          })) {
        // As tokenizers does, a pending unk is not flushed first.
        for (char b : c) {
          add(static_cast<uint32_t>(fallback_id[static_cast<uint8_t>(b)]), 1);
        }
        continue;
      }
      if (!model_unk_id) continue;
      if (unk && fuse_unk) {
        unk_len += len;
      } else {
        if (unk) add(*model_unk_id, unk_len);
        unk = true;
        unk_len = len;
      }
    }
    if (unk) add(*model_unk_id, unk_len);
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    uint32_t rank;
    int32_t pos;
    uint32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>,
                      std::greater<Candidate>>
      queue;
  const auto find_merge =
      [&](uint32_t a, uint32_t b) -> const std::pair<uint32_t, uint32_t>* {
    auto it = merges.find((static_cast<uint64_t>(a) << 32) | b);
    return it == merges.end() ? nullptr : &it->second;
  };
  const auto push_pair = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    if (const auto* m = find_merge(symbols[pos].id, symbols[next].id)) {
      queue.push({m->first, pos, m->second});
    }
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    push_pair(static_cast<int32_t>(i));
  }

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const auto* m = find_merge(left.id, right.id);
    if (m == nullptr || m->second != top.new_id) continue;  // Stale.
    left.id = top.new_id;
    left.len += right.len;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    out->emplace_back(symbols[i].id, symbols[i].len);
  }
}

// ByteLevel post-processor with trim_offsets (tokenizers'
// process_offsets): leading and trailing spaces of a token's string move
// out of its offsets, counted in characters of the input. A token's string
// is its vocabulary entry, or for an added token the text it matched
// (`added_values`, "" for the others), with what lstrip/rstrip took.
void Tokenizer::Impl::TrimOffsets(absl::string_view input,
                                  const std::vector<uint32_t>& ids,
                                  const std::vector<std::string>& added_values,
                                  std::vector<OrigSpan>* spans) const {
  const auto is_space = [](uint32_t cp) {
    return cp == 0x120 || IsWhiteSpace(cp);  // 'Ġ' is the byte-level space.
  };
  const auto next_char = [&](size_t i) {
    ++i;
    while (i < input.size() && (static_cast<uint8_t>(input[i]) & 0xC0) == 0x80)
      ++i;
    return i;
  };
  const auto prev_char = [&](size_t i) {
    --i;
    while (i > 0 && (static_cast<uint8_t>(input[i]) & 0xC0) == 0x80) --i;
    return i;
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::vector<uint32_t> cps =
        !added_values[i].empty()      ? CodePoints(added_values[i])
        : ids[i] < id_to_token.size() ? CodePoints(id_to_token[ids[i]])
                                      : std::vector<uint32_t>();
    size_t leading = 0, trailing = 0;
    while (leading < cps.size() && is_space(cps[leading])) ++leading;
    while (trailing < cps.size() && is_space(cps[cps.size() - 1 - trailing])) {
      ++trailing;
    }
    OrigSpan& span = (*spans)[i];
    if (leading > 0) {
      const bool is_first = i == 0 || span.begin == 0;
      if (is_first && trim_add_prefix_space && leading == 1) leading = 0;
      for (size_t k = 0; k < leading && span.begin < span.end; ++k) {
        span.begin = next_char(span.begin);
      }
      span.begin = std::min(span.begin, span.end);
    }
    if (trailing > 0) {
      // Only when the end is at least `trailing` characters in.
      size_t end = span.end;
      size_t k = 0;
      for (; k < trailing && end > 0; ++k) end = prev_char(end);
      if (k == trailing) span.end = std::max(end, span.begin);
    }
  }
}

void Tokenizer::Impl::Encode(absl::string_view input, bool add_special_tokens,
                             std::vector<uint32_t>* ids,
                             std::vector<OrigSpan>* spans) const {
  const AlignedText full = MakeAligned(input);
  std::vector<uint32_t> seq_ids;
  std::vector<OrigSpan> seq_spans;
  std::vector<std::string> added_values;  // Only for trim_offsets.
  seq_ids.reserve(full.text.size() / 3 + 4);
  seq_spans.reserve(full.text.size() / 3 + 4);
  const auto on_added = [&](const AlignedText& text, uint32_t id, size_t s,
                            size_t e) {
    seq_ids.push_back(id);
    seq_spans.push_back(text.Original(s, e));
    if (trim_offsets) {
      added_values.resize(seq_ids.size());
      added_values.back() = text.text.substr(s, e - s);
    }
  };
  SplitAdded(
      full.text, raw_trie,
      [&](size_t start, size_t end) {
        if (!NeedsNormalization(
                absl::string_view(full.text).substr(start, end - start))) {
          // Nothing rewrites the text: work on the input's alignments.
          SplitAdded(
              absl::string_view(full.text).substr(start, end - start),
              normalized_trie,
              [&](size_t s, size_t e) {
                EncodeNormalizedPiece(full, start + s, start + e, &seq_ids,
                                      &seq_spans);
              },
              [&](uint32_t id, size_t s, size_t e) {
                on_added(full, id, start + s, start + e);
              });
          return;
        }
        AlignedText piece = full.Slice(start, end);
        Normalize(&piece);
        SplitAdded(
            piece.text, normalized_trie,
            [&](size_t s, size_t e) {
              EncodeNormalizedPiece(piece, s, e, &seq_ids, &seq_spans);
            },
            [&](uint32_t id, size_t s, size_t e) {
              on_added(piece, id, s, e);
            });
      },
      [&](uint32_t id, size_t start, size_t end) {
        on_added(full, id, start, end);
      });
  if (trim_offsets) {
    added_values.resize(seq_ids.size());
    TrimOffsets(input, seq_ids, added_values, &seq_spans);
  }
  if (!add_special_tokens || !has_template) {
    *ids = std::move(seq_ids);
    *spans = std::move(seq_spans);
    return;
  }
  // Tokens the template adds get the empty span (0, 0), as in tokenizers.
  ids->clear();
  spans->clear();
  for (int64_t t : single_template) {
    if (t == kSequenceMarker) {
      ids->insert(ids->end(), seq_ids.begin(), seq_ids.end());
      spans->insert(spans->end(), seq_spans.begin(), seq_spans.end());
    } else {
      ids->push_back(static_cast<uint32_t>(t));
      spans->push_back({0, 0});
    }
  }
}

// tokenizers' decoder chain over token strings.
std::string Tokenizer::Impl::RunDecoders(
    std::vector<std::string> tokens) const {
  std::vector<std::string> next;
  for (const DecoderStep& d : decoders) {
    next.clear();
    switch (d.kind) {
      case DecoderStep::Kind::kByteLevel: {
        // Tokens made only of byte-level characters become those bytes,
        // others stay as they are; then one lossy UTF-8 string.
        std::string bytes;
        for (const std::string& t : tokens) {
          bytes += Alphabet().TokenToBytes(t);
        }
        next.push_back(Utf8Lossy(bytes));
        break;
      }
      case DecoderStep::Kind::kReplace:
        for (const std::string& t : tokens) {
          std::string replaced;
          size_t last = 0;
          d.pattern->ForEachMatch(t, [&](size_t start, size_t end) {
            if (end == start) return;
            replaced.append(t, last, start - last);
            replaced += d.content;
            last = end;
          });
          replaced.append(t, last, std::string::npos);
          next.push_back(std::move(replaced));
        }
        break;
      case DecoderStep::Kind::kByteFallback: {
        // Runs of "<0xNN>" tokens become their bytes when those are valid
        // UTF-8, else one U+FFFD per byte (not per maximal subpart).
        std::string run;
        const auto flush = [&] {
          if (run.empty()) return;
          if (IsValidUtf8(run)) {
            next.push_back(run);
          } else {
            for (size_t k = 0; k < run.size(); ++k) {
              next.emplace_back("\xEF\xBF\xBD");
            }
          }
          run.clear();
        };
        for (std::string& t : tokens) {
          const int b = ByteFallbackValue(t);
          if (b >= 0) {
            run.push_back(static_cast<char>(b));
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        flush();
        break;
      }
      case DecoderStep::Kind::kFuse: {
        std::string fused;
        for (const std::string& t : tokens) fused += t;
        next.push_back(std::move(fused));
        break;
      }
      case DecoderStep::Kind::kStrip:
        for (const std::string& t : tokens) {
          // Counted in characters; the content is one character.
          size_t begin = 0, end = t.size();
          const size_t n = d.content.size();
          for (size_t k = 0; k < d.start && begin + n <= end &&
                             t.compare(begin, n, d.content) == 0;
               ++k) {
            begin += n;
          }
          for (size_t k = 0; k < d.stop && end >= begin + n &&
                             t.compare(end - n, n, d.content) == 0;
               ++k) {
            end -= n;
          }
          next.push_back(t.substr(begin, end - begin));
        }
        break;
      case DecoderStep::Kind::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          // The first token loses every replacement character (the one
          // the pre-tokenizer prepended, and any other), later ones turn
          // them into spaces.
          const std::string& t = tokens[i];
          std::string out;
          size_t last = 0;
          for (size_t at = t.find(d.content); at != std::string::npos;
               at = t.find(d.content, last)) {
            out.append(t, last, at - last);
            if (!(i == 0 && d.drop_first_replacement)) out.push_back(' ');
            last = at + d.content.size();
          }
          out.append(t, last, std::string::npos);
          next.push_back(std::move(out));
        }
        break;
    }
    tokens.swap(next);
  }
  std::string text;
  for (const std::string& t : tokens) text += t;
  return text;
}

// ---------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(
    absl::string_view tokenizer_json, absl::string_view tokenizer_config_json) {
  json tj = json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (tj.is_discarded() || !tj.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json is not a JSON object");
  }
  auto impl = std::make_unique<Impl>();
  try {
    RETURN_IF_ERROR(impl->LoadModel(Field(tj, "model")));
    RETURN_IF_ERROR(impl->LoadAddedTokens(Field(tj, "added_tokens")));
    RETURN_IF_ERROR(impl->LoadNormalizer(Field(tj, "normalizer")));
    RETURN_IF_ERROR(impl->LoadPreTokenizer(Field(tj, "pre_tokenizer")));
    RETURN_IF_ERROR(impl->LoadPostProcessor(Field(tj, "post_processor")));
    RETURN_IF_ERROR(impl->LoadDecoder(Field(tj, "decoder")));
    if (!tokenizer_config_json.empty()) {
      json cj = json::parse(tokenizer_config_json, nullptr, false);
      if (cj.is_discarded()) {
        return absl::InvalidArgumentError(
            "tokenizer_config.json is not valid JSON");
      }
      RETURN_IF_ERROR(impl->LoadConfig(cj));
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed tokenizer file: ", e.what()));
  }
  if (impl->decoder_byte_level_only) {
    // Decoding then is a concatenation of per-token bytes.
    const ByteLevelAlphabet& alphabet = Alphabet();
    impl->id_to_bytes.resize(impl->id_to_token.size());
    for (size_t id = 0; id < impl->id_to_token.size(); ++id) {
      impl->id_to_bytes[id] = alphabet.TokenToBytes(impl->id_to_token[id]);
    }
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFiles(
    const std::string& tokenizer_json_path,
    const std::string& tokenizer_config_path) {
  ASSIGN_OR_RETURN(std::string tj, ReadFileToString(tokenizer_json_path));
  std::string cj;
  if (!tokenizer_config_path.empty()) {
    ASSIGN_OR_RETURN(cj, ReadFileToString(tokenizer_config_path));
  }
  auto tokenizer = FromJson(tj, cj);
  if (!tokenizer.ok()) {
    return absl::Status(
        tokenizer.status().code(),
        absl::StrCat(tokenizer_json_path, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(
    const std::string& tokenizer_json_path) {
  const std::string config =
      DirName(tokenizer_json_path) + "/tokenizer_config.json";
  return FromFiles(tokenizer_json_path, IsRegularFile(config) ? config : "");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromDirectory(
    const std::string& dir) {
  return FromFile(dir + "/tokenizer.json");
}

std::vector<uint32_t> Tokenizer::Encode(absl::string_view text,
                                        bool add_special_tokens) const {
  std::vector<uint32_t> ids;
  std::vector<OrigSpan> spans;
  impl_->Encode(text, add_special_tokens, &ids, &spans);
  return ids;
}

EncodingWithOffsets Tokenizer::EncodeWithOffsets(
    absl::string_view text, bool add_special_tokens) const {
  EncodingWithOffsets result;
  std::vector<OrigSpan> spans;
  impl_->Encode(text, add_special_tokens, &result.ids, &spans);
  result.offsets.reserve(spans.size());
  for (const OrigSpan& s : spans) result.offsets.push_back({s.begin, s.end});
  return result;
}

std::string Tokenizer::Decode(absl::Span<const uint32_t> ids,
                              bool skip_special_tokens) const {
  DecodeOptions options;
  options.skip_special_tokens = skip_special_tokens;
  return Decode(ids, options);
}

std::string Tokenizer::Decode(absl::Span<const uint32_t> ids,
                              const DecodeOptions& options) const {
  const Impl& impl = *impl_;
  const auto keep = [&](uint32_t id) {
    return id < impl.id_to_token.size() && !impl.id_to_token[id].empty() &&
           !(options.skip_special_tokens && impl.id_is_special[id]);
  };
  std::string text;
  if (impl.decoder_byte_level_only) {
    std::string bytes;
    for (uint32_t id : ids) {
      if (keep(id)) bytes += impl.id_to_bytes[id];
    }
    text = Utf8Lossy(bytes);
  } else {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (uint32_t id : ids) {
      if (keep(id)) tokens.push_back(impl.id_to_token[id]);
    }
    text = impl.RunDecoders(std::move(tokens));
  }
  if (options.clean_up_tokenization_spaces) text = CleanUpTokenization(text);
  return text;
}

std::optional<uint32_t> Tokenizer::TokenToId(absl::string_view token) const {
  return impl_->Lookup(token);
}

std::optional<std::string> Tokenizer::IdToToken(uint32_t id) const {
  if (id >= impl_->id_to_token.size() || impl_->id_to_token[id].empty()) {
    return std::nullopt;
  }
  return impl_->id_to_token[id];
}

uint32_t Tokenizer::vocab_size() const {
  return static_cast<uint32_t>(impl_->id_to_token.size());
}

bool Tokenizer::IsSpecialToken(uint32_t id) const {
  return id < impl_->id_is_special.size() && impl_->id_is_special[id] != 0;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return impl_->added_tokens;
}

std::optional<uint32_t> Tokenizer::bos_token_id() const {
  return impl_->bos_token.empty() ? std::nullopt
                                  : impl_->Lookup(impl_->bos_token);
}
std::optional<uint32_t> Tokenizer::eos_token_id() const {
  return impl_->eos_token.empty() ? std::nullopt
                                  : impl_->Lookup(impl_->eos_token);
}
std::optional<uint32_t> Tokenizer::pad_token_id() const {
  return impl_->pad_token.empty() ? std::nullopt
                                  : impl_->Lookup(impl_->pad_token);
}
std::optional<uint32_t> Tokenizer::unk_token_id() const {
  if (!impl_->unk_token.empty()) return impl_->Lookup(impl_->unk_token);
  return impl_->model_unk_id;
}
const std::string& Tokenizer::bos_token() const { return impl_->bos_token; }
const std::string& Tokenizer::eos_token() const { return impl_->eos_token; }
const std::string& Tokenizer::pad_token() const { return impl_->pad_token; }
const std::string& Tokenizer::chat_template() const {
  return impl_->chat_template;
}
bool Tokenizer::config_clean_up_tokenization_spaces() const {
  return impl_->config_clean_up;
}

std::string Utf8Lossy(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    if (static_cast<uint8_t>(bytes[i]) < 0x80) {
      out.push_back(bytes[i++]);
      continue;
    }
    uint32_t cp;
    size_t maximal;
    const size_t n = DecodeUtf8At(bytes, i, &cp, &maximal);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += maximal;
    } else {
      out.append(bytes.data() + i, n);
      i += n;
    }
  }
  return out;
}

std::string CleanUpTokenization(absl::string_view text) {
  static constexpr std::pair<absl::string_view, absl::string_view> kRules[] = {
      {" .", "."},     {" ?", "?"},     {" !", "!"},   {" ,", ","},
      {" ' ", "'"},    {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"},
      {" 've", "'ve"}, {" 're", "'re"},
  };
  std::string current(text);
  for (const auto& [from, to] : kRules) {
    std::string next;
    next.reserve(current.size());
    size_t pos = 0;
    while (true) {
      const size_t hit = current.find(from.data(), pos, from.size());
      if (hit == std::string::npos) break;
      next.append(current, pos, hit - pos);
      next.append(to.data(), to.size());
      pos = hit + from.size();
    }
    next.append(current, pos, std::string::npos);
    current = std::move(next);
  }
  return current;
}

}  // namespace kvwire
