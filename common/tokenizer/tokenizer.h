// Byte-level BPE tokenizer loaded from a Hugging Face `tokenizer.json` (and
// optionally `tokenizer_config.json`), as Qwen2/Qwen2.5/Qwen3 and Llama-3
// ship them. Encoding and decoding follow the Rust `tokenizers` library that
// `transformers` uses:
//
//  1. Added tokens (special or not) are split out of the raw text first,
//     leftmost-longest, honouring `lstrip`, `rstrip`, `single_word` and
//     `normalized` (tokens with normalized=true are matched after the
//     normalizer ran).
//  2. The normalizer (NFC, NFD, NFKC, NFKD via ICU, or a Sequence of them)
//     runs on each remaining piece.
//  3. Pre-tokenizers: `Split` (regex or string pattern, every behaviour,
//     invert) and `ByteLevel` (add_prefix_space, use_regex), alone or in a
//     `Sequence`. Regexes run on PCRE2 in UTF + UCP mode (JIT when the
//     library has it) with the pattern exactly as the file gives it, except
//     that `\s`/`\S` are expanded to the Unicode White_Space set: that is
//     what Oniguruma (used by `tokenizers`) matches, while PCRE2's own `\s`
//     also matches U+180E.
//  4. BPE merges by rank (merges as "a b" strings or ["a", "b"] arrays;
//     `ignore_merges` honoured), O(n log n) per word with a per-word cache.
//  5. `add_special_tokens` applies the `post_processor` (TemplateProcessing,
//     ByteLevel, or a Sequence of them) to single sequences.
//
// Decoding maps byte-level characters back to bytes and replaces invalid
// UTF-8 with U+FFFD per maximal subpart, like Rust's String::from_utf8_lossy
// (HF's ByteLevel decoder, errors="replace"). Ids outside the vocabulary are
// skipped, as HF does. Input text that is not valid UTF-8 is first repaired
// the same way.
//
// Anything else in the file (WordPiece/Unigram models, Metaspace or other
// pre-tokenizers, other normalizers or decoders, byte_fallback, dropout)
// fails to load with an error naming it.
//
// Thread-safe: all const methods may be called concurrently.
#ifndef KVWIRE_COMMON_TOKENIZER_TOKENIZER_H_
#define KVWIRE_COMMON_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvwire {

// One entry of `added_tokens` in tokenizer.json.
struct AddedToken {
  uint32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool single_word = false;
};

struct DecodeOptions {
  // Drop added tokens marked `special` (e.g. <|im_end|>, but not <think>).
  bool skip_special_tokens = false;
  // Apply transformers' `clean_up_tokenization` (" ." -> ".", " n't" ->
  // "n't", ...). transformers 5.x never does this for BPE tokenizers, so it
  // is off by default whatever tokenizer_config.json says;
  // `Tokenizer::config_clean_up_tokenization_spaces()` tells what the config
  // asked for (transformers.js and transformers 4.x honour it).
  bool clean_up_tokenization_spaces = false;
};

class Tokenizer {
 public:
  // Loads `tokenizer_json_path`; a `tokenizer_config.json` in the same
  // directory is loaded too when it exists.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(
      const std::string& tokenizer_json_path);
  // Loads both files; `tokenizer_config_path` may be empty (no config).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFiles(
      const std::string& tokenizer_json_path,
      const std::string& tokenizer_config_path);
  // Loads `<dir>/tokenizer.json` and, if present,
  // `<dir>/tokenizer_config.json`.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromDirectory(
      const std::string& dir);
  // From file contents; `tokenizer_config_json` may be empty.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      absl::string_view tokenizer_json,
      absl::string_view tokenizer_config_json = {});

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids for `text` (UTF-8). With `add_special_tokens`, the
  // post-processor's template for a single sequence is applied (a BOS for
  // Llama-3.x files that declare one; nothing for Qwen).
  std::vector<uint32_t> Encode(absl::string_view text,
                               bool add_special_tokens = false) const;

  // UTF-8 text for `ids`, as transformers 5.x `tokenizer.decode` returns it.
  std::string Decode(absl::Span<const uint32_t> ids,
                     bool skip_special_tokens = false) const;
  std::string Decode(absl::Span<const uint32_t> ids,
                     const DecodeOptions& options) const;

  // Vocabulary look-ups on token strings as stored in the file (byte-level
  // characters, e.g. "Ġthe"), added tokens included.
  std::optional<uint32_t> TokenToId(absl::string_view token) const;
  std::optional<std::string> IdToToken(uint32_t id) const;

  // One past the largest id of the vocabulary and added tokens (what
  // `len(tokenizer)` gives in transformers; a model's embedding table may
  // have more rows).
  uint32_t vocab_size() const;
  bool IsSpecialToken(uint32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;

  // Special tokens named by tokenizer_config.json (absent when the config is
  // absent, names none, or names a token missing from the vocabulary).
  std::optional<uint32_t> bos_token_id() const;
  std::optional<uint32_t> eos_token_id() const;
  std::optional<uint32_t> pad_token_id() const;
  std::optional<uint32_t> unk_token_id() const;
  const std::string& bos_token() const;  // "" when none
  const std::string& eos_token() const;
  const std::string& pad_token() const;

  // tokenizer_config.json's `chat_template` ("" when none; the "default"
  // entry when it is a list) and `clean_up_tokenization_spaces`.
  const std::string& chat_template() const;
  bool config_clean_up_tokenization_spaces() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Helpers shared with the chat template and tests.

// Replaces each maximal ill-formed subsequence of `bytes` with U+FFFD, the
// way Rust's String::from_utf8_lossy and the WHATWG TextDecoder do.
std::string Utf8Lossy(absl::string_view bytes);

// Applies transformers' clean_up_tokenization string replacements.
std::string CleanUpTokenization(absl::string_view text);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_TOKENIZER_TOKENIZER_H_
