// Over 700 lines on purpose: tokenizer.json's pipeline (normalizers,
// pre-tokenizers with their PCRE2 regexes, byte-level BPE, added and special
// tokens, decoders) is one format read by one loader; its sections (marked
// below) share private helpers that a split would have to export.
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

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel } kind;
  std::unique_ptr<Regex> regex;  // Split pattern, or ByteLevel's GPT-2 regex.
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
};

constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

// Splits `text` by `regex` with tokenizers' SplitDelimiterBehavior
// semantics (normalizer.rs `split`), appending non-empty pieces to `out`.
void SplitByRegex(absl::string_view text, const Regex& regex,
                  SplitBehavior behavior, bool invert,
                  std::vector<std::string>* out) {
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
    if (!s.flag && s.end > s.start) {
      out->emplace_back(text.substr(s.start, s.end - s.start));
    }
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

}  // namespace

// ---------------------------------------------------------------------------

struct Tokenizer::Impl {
  // Model.
  absl::flat_hash_map<std::string, uint32_t> token_to_id;
  std::vector<std::string> id_to_token;  // "" for ids without a token.
  std::vector<std::string> id_to_bytes;  // Decoded bytes of each token.
  std::vector<uint8_t> id_is_special;
  absl::flat_hash_map<uint64_t, std::pair<uint32_t, uint32_t>>
      merges;  // (left, right) -> (rank, merged id).
  std::array<uint32_t, 256> byte_to_id{};
  bool ignore_merges = false;
  std::optional<uint32_t> model_unk_id;

  // Added tokens.
  std::vector<AddedToken> added_tokens;
  AddedTokenTrie raw_trie;         // normalized=false tokens.
  AddedTokenTrie normalized_trie;  // normalized=true tokens.

  // Pipeline.
  std::vector<const icu::Normalizer2*> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  // Post-processor template for one sequence: ids, with kSequenceMarker
  // standing for the encoded text.
  static constexpr int64_t kSequenceMarker = -1;
  std::vector<int64_t> single_template;
  bool has_template = false;

  // Config.
  std::string bos_token, eos_token, pad_token, unk_token;
  std::string chat_template;
  bool config_clean_up = false;

  // Per-word BPE cache.
  static constexpr size_t kMaxCacheEntries = 1 << 18;
  static constexpr size_t kMaxCachedWordBytes = 256;
  mutable absl::Mutex cache_mu;
  mutable absl::flat_hash_map<std::string, std::vector<uint32_t>> cache
      ABSL_GUARDED_BY(cache_mu);

  absl::Status LoadModel(const json& model);
  absl::Status LoadAddedTokens(const json& added);
  absl::Status LoadNormalizer(const json& normalizer);
  absl::Status LoadPreTokenizer(const json& pre_tokenizer);
  absl::Status LoadPreTokenizerStep(const json& step);
  absl::Status LoadPostProcessor(const json& post_processor);
  absl::Status LoadPostProcessorStep(const json& step);
  absl::Status LoadDecoder(const json& decoder);
  absl::Status LoadConfig(const json& config);

  std::string Normalize(absl::string_view text) const;
  // Splits `text` around the added tokens of `trie`; calls
  // on_text(string_view) and on_token(id) in order.
  template <typename OnText, typename OnToken>
  void SplitAdded(absl::string_view text, const AddedTokenTrie& trie,
                  OnText&& on_text, OnToken&& on_token) const;
  void EncodeNormalizedPiece(absl::string_view text,
                             std::vector<uint32_t>* out) const;
  void EncodeWord(absl::string_view word, std::vector<uint32_t>* out) const;
  void Bpe(absl::string_view word, std::vector<uint32_t>* out) const;
  std::optional<uint32_t> Lookup(absl::string_view token) const {
    auto it = token_to_id.find(token);
    if (it == token_to_id.end()) return std::nullopt;
    return it->second;
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
      id_to_bytes.resize(*id + 1);
      id_is_special.resize(*id + 1, 0);
    }
    return absl::OkStatus();
  }
};

absl::Status Tokenizer::Impl::LoadModel(const json& model) {
  if (!model.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json has no \"model\" object");
  }
  const std::string type = model.contains("type") && model["type"].is_string()
                               ? model["type"].get<std::string>()
                               : (model.contains("merges") ? "BPE" : "");
  if (type != "BPE") {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported tokenizer model type '", type,
        "': only byte-level BPE (Qwen2/Qwen3, Llama-3) is supported"));
  }
  if (GetBool(model, "byte_fallback", false)) {
    return absl::UnimplementedError(
        "unsupported BPE option byte_fallback=true (SentencePiece-style BPE)");
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

  const json& vocab = Field(model, "vocab");
  if (!vocab.is_object()) {
    return absl::InvalidArgumentError("BPE model has no \"vocab\" object");
  }
  token_to_id.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocab entry '", it.key(), "' has a non-integer id"));
    }
    uint32_t id = 0;
    RETURN_IF_ERROR(EnsureId(
        it.value(), absl::StrCat("vocab entry '", it.key(), "'"), &id));
    id_to_token[id] = it.key();
    token_to_id[it.key()] = id;
  }

  const ByteLevelAlphabet& alphabet = Alphabet();
  for (int b = 0; b < 256; ++b) {
    auto id = Lookup(alphabet.byte_to_utf8[b]);
    if (!id) {
      return absl::UnimplementedError(
          absl::StrCat("vocabulary lacks the byte-level token for byte ", b,
                       ": only byte-level BPE vocabularies are supported"));
    }
    byte_to_id[b] = *id;
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
    const auto a = Lookup(left), b = Lookup(right),
               merged = Lookup(left + right);
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
    model_unk_id = Lookup(model["unk_token"].get<std::string>());
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
    token_to_id[token.content] = token.id;
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
    return absl::UnimplementedError(
        absl::StrCat("unsupported normalizer type '", type,
                     "' (supported: NFC, NFD, NFKC, NFKD, Sequence of these)"));
  }
  if (U_FAILURE(status) || n == nullptr) {
    return absl::InternalError(absl::StrCat(
        "ICU cannot create the ", type, " normalizer: ", u_errorName(status)));
  }
  normalizers.push_back(n);
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadPreTokenizerStep(const json& step) {
  const std::string type = JsonTypeName(step);
  PreTokenizerStep s;
  if (type == "Split") {
    s.kind = PreTokenizerStep::Kind::kSplit;
    const json& pattern = Field(step, "pattern");
    bool literal;
    std::string source;
    if (pattern.is_object() && pattern.contains("Regex")) {
      literal = false;
      source = pattern["Regex"].get<std::string>();
    } else if (pattern.is_object() && pattern.contains("String")) {
      literal = true;
      source = pattern["String"].get<std::string>();
    } else {
      return absl::UnimplementedError(
          absl::StrCat("unsupported Split pattern: ", pattern.dump()));
    }
    ASSIGN_OR_RETURN(s.regex, Regex::Compile(source, literal));
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
  } else {
    return absl::UnimplementedError(
        absl::StrCat("unsupported pre_tokenizer type '", type,
                     "' (supported: Split, ByteLevel, Sequence of these)"));
  }
  pre_tokenizers.push_back(std::move(s));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadPreTokenizer(const json& pre_tokenizer) {
  if (pre_tokenizer.is_null()) {
    return absl::UnimplementedError(
        "tokenizer.json has no pre_tokenizer; only byte-level BPE with a "
        "ByteLevel pre-tokenizer is supported");
  }
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
  if (pre_tokenizers.empty() ||
      pre_tokenizers.back().kind != PreTokenizerStep::Kind::kByteLevel) {
    return absl::UnimplementedError(
        "unsupported pre_tokenizer: the last step must be ByteLevel (only "
        "byte-level BPE is supported)");
  }
  for (size_t i = 0; i + 1 < pre_tokenizers.size(); ++i) {
    if (pre_tokenizers[i].kind == PreTokenizerStep::Kind::kByteLevel) {
      return absl::UnimplementedError(
          "unsupported pre_tokenizer: a step after ByteLevel");
    }
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadPostProcessorStep(const json& step) {
  const std::string type = JsonTypeName(step);
  if (type == "ByteLevel") return absl::OkStatus();  // Offsets only.
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

absl::Status Tokenizer::Impl::LoadDecoder(const json& decoder) {
  const auto unsupported = [](const std::string& type) {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported decoder type '", type,
        "' (only ByteLevel, possibly in a Sequence, is supported)"));
  };
  if (decoder.is_null()) return unsupported("null");
  const std::string type = JsonTypeName(decoder);
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "Sequence") {
    bool has_byte_level = false;
    for (const json& d : Field(decoder, "decoders")) {
      const std::string t = JsonTypeName(d);
      if (t != "ByteLevel") return unsupported(t);
      has_byte_level = true;
    }
    if (has_byte_level) return absl::OkStatus();
  }
  return unsupported(type);
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

std::string Tokenizer::Impl::Normalize(absl::string_view text) const {
  std::string current(text);
  for (const icu::Normalizer2* n : normalizers) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::StringPiece piece(current.data(),
                                 static_cast<int32_t>(current.size()));
    if (n->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) continue;
    status = U_ZERO_ERROR;
    std::string normalized;
    icu::StringByteSink<std::string> sink(&normalized,
                                          static_cast<int32_t>(current.size()));
    n->normalizeUTF8(0, piece, sink, nullptr, status);
    if (U_SUCCESS(status)) current = std::move(normalized);
  }
  return current;
}

template <typename OnText, typename OnToken>
void Tokenizer::Impl::SplitAdded(absl::string_view text,
                                 const AddedTokenTrie& trie, OnText&& on_text,
                                 OnToken&& on_token) const {
  if (trie.empty()) {
    if (!text.empty()) on_text(text);
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
    if (start_offset < start) {
      on_text(text.substr(start_offset, start - start_offset));
    }
    on_token(token.id);
    start_offset = stop;
  }
  if (start_offset < text.size()) on_text(text.substr(start_offset));
}

void Tokenizer::Impl::EncodeNormalizedPiece(absl::string_view text,
                                            std::vector<uint32_t>* out) const {
  std::vector<std::string> pieces;
  pieces.emplace_back(text);
  std::vector<std::string> next;
  for (const PreTokenizerStep& step : pre_tokenizers) {
    next.clear();
    for (std::string& piece : pieces) {
      if (step.kind == PreTokenizerStep::Kind::kSplit) {
        SplitByRegex(piece, *step.regex, step.behavior, step.invert, &next);
        continue;
      }
      if (step.add_prefix_space && (piece.empty() || piece[0] != ' ')) {
        piece.insert(piece.begin(), ' ');
      }
      if (step.regex != nullptr) {
        SplitByRegex(piece, *step.regex, SplitBehavior::kIsolated, false,
                     &next);
      } else if (!piece.empty()) {
        next.push_back(std::move(piece));
      }
    }
    pieces.swap(next);
  }
  for (const std::string& word : pieces) EncodeWord(word, out);
}

void Tokenizer::Impl::EncodeWord(absl::string_view word,
                                 std::vector<uint32_t>* out) const {
  if (word.empty()) return;
  const ByteLevelAlphabet& alphabet = Alphabet();
  if (ignore_merges) {
    std::string mapped;
    mapped.reserve(word.size() * 2);
    for (char c : word)
      mapped += alphabet.byte_to_utf8[static_cast<uint8_t>(c)];
    if (auto id = Lookup(mapped)) {
      out->push_back(*id);
      return;
    }
  }
  if (word.size() == 1) {
    out->push_back(byte_to_id[static_cast<uint8_t>(word[0])]);
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
  std::vector<uint32_t> ids;
  Bpe(word, &ids);
  out->insert(out->end(), ids.begin(), ids.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_mu);
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.emplace(std::string(word), std::move(ids));
  }
}

// BPE over the bytes of one pre-token word: repeatedly applies the
// lowest-ranked merge (leftmost on ties), as tokenizers' Word::merge_all
// does. O(n log n) with a heap and a linked list of symbols.
void Tokenizer::Impl::Bpe(absl::string_view word,
                          std::vector<uint32_t>* out) const {
  const size_t n = word.size();
  struct Symbol {
    uint32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols(n);
  for (size_t i = 0; i < n; ++i) {
    symbols[i] = {byte_to_id[static_cast<uint8_t>(word[i])],
                  static_cast<int32_t>(i) - 1,
                  i + 1 < n ? static_cast<int32_t>(i + 1) : -1, true};
  }
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
  for (size_t i = 0; i + 1 < n; ++i) push_pair(static_cast<int32_t>(i));

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const auto* m = find_merge(left.id, right.id);
    if (m == nullptr || m->second != top.new_id) continue;  // Stale.
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next)
    out->push_back(symbols[i].id);
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
  const ByteLevelAlphabet& alphabet = Alphabet();
  for (size_t id = 0; id < impl->id_to_token.size(); ++id) {
    impl->id_to_bytes[id] = alphabet.TokenToBytes(impl->id_to_token[id]);
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
  std::string repaired;
  if (!IsValidUtf8(text)) {
    repaired = Utf8Lossy(text);
    text = repaired;
  }
  std::vector<uint32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  const Impl& impl = *impl_;
  const auto on_token = [&](uint32_t id) { ids.push_back(id); };
  impl.SplitAdded(
      text, impl.raw_trie,
      [&](absl::string_view piece) {
        const std::string normalized = impl.Normalize(piece);
        impl.SplitAdded(
            normalized, impl.normalized_trie,
            [&](absl::string_view p) { impl.EncodeNormalizedPiece(p, &ids); },
            on_token);
      },
      on_token);
  if (add_special_tokens && impl.has_template) {
    std::vector<uint32_t> with;
    with.reserve(ids.size() + impl.single_template.size());
    for (int64_t t : impl.single_template) {
      if (t == Impl::kSequenceMarker) {
        with.insert(with.end(), ids.begin(), ids.end());
      } else {
        with.push_back(static_cast<uint32_t>(t));
      }
    }
    return with;
  }
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const uint32_t> ids,
                              bool skip_special_tokens) const {
  DecodeOptions options;
  options.skip_special_tokens = skip_special_tokens;
  return Decode(ids, options);
}

std::string Tokenizer::Decode(absl::Span<const uint32_t> ids,
                              const DecodeOptions& options) const {
  std::string bytes;
  for (uint32_t id : ids) {
    if (id >= impl_->id_to_bytes.size()) continue;
    if (impl_->id_to_token[id].empty()) continue;
    if (options.skip_special_tokens && impl_->id_is_special[id]) continue;
    bytes += impl_->id_to_bytes[id];
  }
  std::string text = Utf8Lossy(bytes);
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
