// Small synthetic byte-level BPE tokenizer.json documents, written out
// independently of kvwire::Tokenizer, for the tokenizer and engine tests
// (tests/common/engine/test_assets.cc) and the fuzz seed corpus
// (fuzz/make_fuzz_corpus.cc, which compiles tokenizer_fixtures.cc itself: the
// fuzz build has no tests). Only nlohmann::json; no kvwire library.
#ifndef KVWIRE_TESTS_COMMON_TOKENIZER_TOKENIZER_FIXTURES_H_
#define KVWIRE_TESTS_COMMON_TOKENIZER_TOKENIZER_FIXTURES_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"

namespace kvwire {

// The Split regex of Qwen2/Qwen3's pre-tokenizer.
extern const char kQwenSplitPattern[];

// GPT-2's bytes_to_unicode: the character (UTF-8) that byte `b` is in a
// byte-level vocabulary.
std::string ByteLevelChar(unsigned b);

// `raw` with each byte replaced by its ByteLevelChar.
std::string ByteLevelMapped(const std::string& raw);

// One entry of a tokenizer.json's "added_tokens".
nlohmann::json AddedTokenJson(uint32_t id, const std::string& content,
                              bool special, bool lstrip = false,
                              bool rstrip = false, bool single_word = false,
                              bool normalized = false);

// A ByteLevel pre-tokenizer or post-processor.
nlohmann::json ByteLevelJson(bool add_prefix_space, bool trim_offsets,
                             bool use_regex);

// A TemplateProcessing post-processor that puts `token` (id `id`) before a
// single sequence, and has no pair template.
nlohmann::json BosTemplateProcessing(uint32_t id, const std::string& token);

// Builds a byte-level BPE tokenizer.json in Qwen's layout (NFC, the Qwen
// Split regex then ByteLevel, ByteLevel post-processor and decoder): ids
// 0..255 are the bytes, then one token per merge (raw byte strings) and per
// extra token, in order; the fields below override the defaults.
struct ByteLevelBpeBuilder {
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> extra_tokens;  // Raw strings, vocab only.
  bool array_merges = true;
  bool ignore_merges = false;
  nlohmann::json normalizer = {{"type", "NFC"}};
  nlohmann::json pre_tokenizer;  // Qwen's Split + ByteLevel.
  nlohmann::json post_processor = {{"type", "ByteLevel"}};
  nlohmann::json decoder = {{"type", "ByteLevel"}};
  nlohmann::json added_tokens = nlohmann::json::array();

  // Filled in by Build().
  uint32_t next_id = 256;
  nlohmann::json vocab = nlohmann::json::object();

  ByteLevelBpeBuilder();

  nlohmann::json Build();

  // The first id after the vocabulary that Build() writes.
  uint32_t NextId();

  // Appends AddedTokenJson(...) to added_tokens (not to the vocabulary).
  void AddToken(uint32_t id, const std::string& content, bool special,
                bool lstrip = false, bool rstrip = false,
                bool single_word = false, bool normalized = false);

  // The id of the vocabulary token for `raw`, after Build().
  uint32_t Id(const std::string& raw);
};

}  // namespace kvwire

#endif  // KVWIRE_TESTS_COMMON_TOKENIZER_TOKENIZER_FIXTURES_H_
