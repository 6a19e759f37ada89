// BPE tokenizer loaded from a Hugging Face `tokenizer.json` (and optionally
// `tokenizer_config.json`), in both forms that file stores BPE in:
// byte-level (GPT-2 style: Qwen2/Qwen2.5/Qwen3, Llama-3/3.1) and
// SentencePiece-style (characters with byte fallback: Gemma-3, Llama-2,
// Mistral). Encoding, offsets and decoding follow the Rust `tokenizers`
// library that transformers' fast tokenizers use:
//
//  1. Added tokens (special or not) are split out of the raw text first,
//     leftmost-longest, honouring `lstrip`, `rstrip`, `single_word` and
//     `normalized` (tokens with normalized=true are matched after the
//     normalizer ran).
//  2. Normalizers on each remaining piece: NFC, NFD, NFKC, NFKD (ICU),
//     `Replace` (String or Regex pattern, e.g. " " -> "▁"), `Prepend`
//     (e.g. "▁"), and `Sequence`s of these.
//  3. Pre-tokenizers: `Split` (regex or string pattern, every behaviour,
//     invert), `ByteLevel` (add_prefix_space, use_regex; last step only) and
//     `Metaspace` (replacement, prepend_scheme always/first/never or the
//     older add_prefix_space, split), alone or in a `Sequence`; none at all
//     (each piece is one word, as in Llama-2 files). Regexes run on PCRE2 in
//     UTF + UCP mode (JIT when the library has it) with the pattern exactly
//     as the file gives it, except that `\s`/`\S` are expanded to the
//     Unicode White_Space set: that is what Oniguruma (used by `tokenizers`)
//     matches, while PCRE2's own `\s` also matches U+180E.
//  4. BPE merges by rank (merges as "a b" strings or ["a", "b"] arrays;
//     `ignore_merges` honoured), O(n log n) per word with a per-word cache.
//     With a ByteLevel pre-tokenizer words start from their bytes (the
//     vocabulary must hold all 256 byte-level characters); otherwise from
//     their characters, and a character missing from the vocabulary becomes
//     its `<0xNN>` byte tokens (`byte_fallback`, when all of them exist), or
//     `unk_token` (consecutive ones fused into one with `fuse_unk`), or is
//     dropped when the model has no unk token.
//  5. `add_special_tokens` applies the `post_processor` (TemplateProcessing,
//     ByteLevel, or a Sequence of them) to single sequences.
//
// Offsets (EncodeWithOffsets) are return_offsets_mapping=True's, in bytes of
// the input instead of characters: each token maps back through the
// normalizers' alignments to the input characters it came from (a token that
// covers part of a character, a byte-level piece or a `<0xNN>` byte token,
// gets that whole character; a "▁" that Replace made from a space maps to
// that space; one that Prepend or Metaspace put in front shares the first
// character's span; an added token's span includes what lstrip/rstrip
// took; tokens the post-processor adds, e.g. BOS, get (0, 0); a ByteLevel
// post-processor's trim_offsets is applied; where NFC composes characters,
// as in "e" + U+0301 -> "é", the token maps to the first one and the
// characters composed into it belong to no token). Unicode normalizers map
// each segment between normalization boundaries on its own: output
// characters take the input characters' ranges in order, the first one
// absorbing what it composed, which is what `tokenizers` gives for the
// usual starter-plus-marks segments; for exotic segments (several starters
// recomposed at once) offsets may differ from `tokenizers'` while still
// lying within the segment.
//
// Decoding runs the file's decoder: `ByteLevel` (byte-level characters back
// to bytes, invalid UTF-8 replaced with U+FFFD per maximal subpart like
// Rust's String::from_utf8_lossy), or a `Sequence` of `Replace`,
// `ByteFallback` (a run of `<0xNN>` tokens becomes its bytes if they are
// valid UTF-8, else one U+FFFD per byte, as `tokenizers` does; transformers.js
// replaces per maximal subpart instead), `Fuse`, `Strip` and `Metaspace`
// (which drops the replacement characters of the first token unless
// prepend_scheme is never). Ids outside the vocabulary are skipped, as HF
// does. Input text that is not valid UTF-8 is first repaired like
// Utf8Lossy; offsets still index the input as given.
//
// Anything else in the file (WordPiece/Unigram models, other pre-tokenizers,
// normalizers, post-processors or decoders, a missing decoder,
// continuing_subword_prefix, end_of_word_suffix, dropout, ByteLevel with
// Metaspace) fails to load with an error naming it.
//
// A Tokenizer owns everything it loaded (vocabulary, merges, compiled
// regexes, a bounded per-word cache); results are returned by value.
// Loading fails with NotFound (or another file error) when a file cannot be
// read, InvalidArgument for malformed JSON or an inconsistent file (a merge
// of unknown tokens, an id past 2^22), and Unimplemented for a component
// listed above as unsupported. Encoding and decoding never fail.
//
// Thread-safe: all const methods may be called concurrently.
#ifndef KVWIRE_COMMON_TOKENIZER_TOKENIZER_H_
#define KVWIRE_COMMON_TOKENIZER_TOKENIZER_H_

#include <cstddef>
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

// [begin, end) byte offsets of one token in the text given to
// EncodeWithOffsets.
struct TokenOffsets {
  size_t begin = 0;
  size_t end = 0;
  bool operator==(const TokenOffsets& o) const {
    return begin == o.begin && end == o.end;
  }
  bool operator!=(const TokenOffsets& o) const { return !(*this == o); }
};

// Ids and, one per id, their offsets.
struct EncodingWithOffsets {
  std::vector<uint32_t> ids;
  std::vector<TokenOffsets> offsets;
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

  // Encode's ids (always the same ones) with each token's byte offsets in
  // `text`, as described at the top of this file. The offsets of the text's
  // tokens are non-decreasing (begins and ends); tokens the post-processor
  // adds (a BOS) have (0, 0).
  EncodingWithOffsets EncodeWithOffsets(absl::string_view text,
                                        bool add_special_tokens = false) const;

  // UTF-8 text for `ids`, as transformers 5.x `tokenizer.decode` returns it.
  std::string Decode(absl::Span<const uint32_t> ids,
                     bool skip_special_tokens = false) const;
  std::string Decode(absl::Span<const uint32_t> ids,
                     const DecodeOptions& options) const;

  // Vocabulary look-ups on token strings as stored in the file (byte-level
  // characters, e.g. "Ġthe", or SentencePiece pieces, e.g. "▁the",
  // "<0x0A>"), added tokens included (they win over the model's vocabulary,
  // as in tokenizers).
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
