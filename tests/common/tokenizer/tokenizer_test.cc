// Unit tests of kvwire::Tokenizer on small synthetic byte-level BPE
// tokenizers, offsets included. SentencePiece-style BPE is tested in
// sentencepiece_bpe_test.cc; parity with real Qwen3 / Llama-3 / Llama-3.1 /
// Gemma-3 / Llama-2 files is checked by tokenizer_parity_test.cc.
#include "common/tokenizer/tokenizer.h"

#include <chrono>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/tokenizer/tokenizer_fixtures.h"

namespace kvwire {

void PrintTo(const TokenOffsets& o, std::ostream* os) {
  *os << "(" << o.begin << "," << o.end << ")";
}

namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The builder of tokenizer_fixtures.h, plus the tokenizer it describes.
struct Builder : ByteLevelBpeBuilder {
  std::unique_ptr<Tokenizer> Make(const std::string& config = "") {
    auto tok = Tokenizer::FromJson(Build().dump(), config);
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? std::move(*tok) : nullptr;
  }
};

std::vector<uint32_t> Bytes(const std::string& s) {
  std::vector<uint32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

TEST(TokenizerTest, NoMergesGivesBytesAndRoundTrips) {
  Builder b;
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  const std::string text = "Hello, wörld! 你好 🤖\r\n\ttab";
  EXPECT_EQ(tok->Encode(text), Bytes(text));
  EXPECT_EQ(tok->Decode(tok->Encode(text)), text);
  EXPECT_EQ(tok->vocab_size(), 256u);
  EXPECT_TRUE(tok->Encode("").empty());
}

TEST(TokenizerTest, MergesByRankInBothFormats) {
  for (bool array_format : {true, false}) {
    Builder b;
    b.array_merges = array_format;
    b.merges = {
        {"l", "l"}, {"h", "e"}, {"he", "ll"}, {"hell", "o"}, {" ", "w"}};
    auto tok = b.Make();
    ASSERT_NE(tok, nullptr);
    EXPECT_THAT(tok->Encode("hello world"),
                ElementsAre(b.Id("hello"), b.Id(" w"), 'o', 'r', 'l', 'd'))
        << array_format;
    EXPECT_EQ(tok->Decode(tok->Encode("hello world")), "hello world");
  }
}

TEST(TokenizerTest, LowestRankWinsThenLeftmost) {
  Builder b;
  // "bc" outranks "ab": "abc" -> a + bc, not ab + c.
  b.merges = {{"b", "c"}, {"a", "b"}, {"a", "a"}};
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("abc"), ElementsAre('a', b.Id("bc")));
  // Ties at equal rank go to the leftmost pair.
  EXPECT_THAT(tok->Encode("aaa"), ElementsAre(b.Id("aa"), 'a'));
}

TEST(TokenizerTest, IgnoreMergesUsesWholeWordFromVocab) {
  Builder b;
  b.extra_tokens = {"xyz"};
  b.ignore_merges = true;
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("xyz"), ElementsAre(b.Id("xyz")));
  Builder c;
  c.extra_tokens = {"xyz"};
  auto tok2 = c.Make();
  ASSERT_NE(tok2, nullptr);
  EXPECT_EQ(tok2->Encode("xyz"), Bytes("xyz"));
}

TEST(TokenizerTest, LongWordIsFast) {
  Builder b;
  b.merges = {{"a", "a"}, {"aa", "aa"}, {"aaaa", "aaaa"}};
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  const std::string word(200000, 'a');
  const auto start = std::chrono::steady_clock::now();
  const std::vector<uint32_t> ids = tok->Encode(word);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  ASSERT_EQ(ids.size(), 25000u);
  for (uint32_t id : ids) ASSERT_EQ(id, b.Id("aaaaaaaa"));
  EXPECT_LT(seconds, 5.0);
}

TEST(TokenizerTest, SplitBehaviors) {
  const auto make = [](const char* behavior) {
    Builder b;
    b.merges = {{"a", " "}, {" ", "b"}, {" ", " "}};
    b.pre_tokenizer =
        json{{"type", "Sequence"},
             {"pretokenizers", json::array({json{{"type", "Split"},
                                                 {"pattern", {{"String", " "}}},
                                                 {"behavior", behavior},
                                                 {"invert", false}},
                                            json{{"type", "ByteLevel"},
                                                 {"add_prefix_space", false},
                                                 {"use_regex", false}}})}};
    return std::make_pair(b.Make(), b);
  };
  {
    auto [tok, b] = make("Isolated");
    EXPECT_THAT(tok->Encode("a b"), ElementsAre('a', ' ', 'b'));
    EXPECT_THAT(tok->Encode("a  b"), ElementsAre('a', ' ', ' ', 'b'));
  }
  {
    auto [tok, b] = make("Removed");
    EXPECT_THAT(tok->Encode("a b"), ElementsAre('a', 'b'));
  }
  {
    auto [tok, b] = make("MergedWithPrevious");
    EXPECT_THAT(tok->Encode("a b"), ElementsAre(b.Id("a "), 'b'));
  }
  {
    auto [tok, b] = make("MergedWithNext");
    EXPECT_THAT(tok->Encode("a b"), ElementsAre('a', b.Id(" b")));
  }
  {
    auto [tok, b] = make("Contiguous");
    EXPECT_THAT(tok->Encode("a  b"), ElementsAre('a', b.Id("  "), 'b'));
  }
}

TEST(TokenizerTest, ByteLevelPrefixSpaceAndGpt2Regex) {
  Builder b;
  b.merges = {{" ", "h"}, {" h", "i"}};
  b.pre_tokenizer = json{
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("hi hi"), ElementsAre(b.Id(" hi"), b.Id(" hi")));
}

TEST(TokenizerTest, WhitespaceFollowsOniguruma) {
  // U+180E is not White_Space (PCRE2's own \s matches it): "\u180E!" is
  // one ` ?[^\s\p{L}\p{N}]+` word, so the merge across the two applies.
  Builder b;
  const std::string mvs = "\xE1\xA0\x8E";
  b.merges = {{"\x8E", "!"}};
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("a" + mvs + "!"),
              ElementsAre('a', 0xE1, 0xA0, b.Id("\x8E!")));
  // U+0085 (NEL) is White_Space (transformers.js' \s lacks it): it stands
  // alone and "!" is a word of its own.
  Builder c;
  c.merges = {{"\x85", "!"}};
  auto tok2 = c.Make();
  ASSERT_NE(tok2, nullptr);
  EXPECT_EQ(tok2->Encode("a\xC2\x85!"), Bytes("a\xC2\x85!"));
}

TEST(TokenizerTest, NfcNormalizerComposes) {
  Builder b;
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("Cafe\xCC\x81"), tok->Encode("Caf\xC3\xA9"));
  Builder none;
  none.normalizer = nullptr;
  auto raw = none.Make();
  ASSERT_NE(raw, nullptr);
  EXPECT_EQ(raw->Encode("Cafe\xCC\x81"), Bytes("Cafe\xCC\x81"));
}

TEST(TokenizerTest, AddedTokensSplitFirstLongestMatch) {
  Builder b;
  b.AddToken(300, "<|s|>", true);
  b.AddToken(301, "<|s|><|t|>", true);
  b.AddToken(302, "<think>", false);
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("x<|s|>y"), ElementsAre('x', 300, 'y'));
  EXPECT_THAT(tok->Encode("<|s|><|t|>"), ElementsAre(301));
  EXPECT_THAT(tok->Encode("<think>a"), ElementsAre(302, 'a'));
  EXPECT_EQ(tok->Encode("<|s"), Bytes("<|s"));
  EXPECT_EQ(tok->vocab_size(), 303u);
  EXPECT_TRUE(tok->IsSpecialToken(300));
  EXPECT_FALSE(tok->IsSpecialToken(302));
  EXPECT_EQ(tok->TokenToId("<think>"), 302u);
  EXPECT_EQ(tok->IdToToken(300), "<|s|>");
  EXPECT_EQ(tok->IdToToken(999), std::nullopt);
  // Added tokens are matched on the raw text, before NFC.
  EXPECT_EQ(tok->Decode({'x', 300, 302, 'y'}), "x<|s|><think>y");
  EXPECT_EQ(tok->Decode({'x', 300, 302, 'y'}, /*skip_special_tokens=*/true),
            "x<think>y");
}

TEST(TokenizerTest, AddedTokenStripAndSingleWord) {
  Builder b;
  b.AddToken(300, "<l>", true, /*lstrip=*/true);
  b.AddToken(301, "<r>", true, false, /*rstrip=*/true);
  b.AddToken(302, "tok", false, false, false, /*single_word=*/true);
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("z \t <l>"), ElementsAre('z', 300));
  EXPECT_THAT(tok->Encode("<r> \n z"), ElementsAre(301, 'z'));
  EXPECT_THAT(tok->Encode("a tok"), ElementsAre('a', ' ', 302));
  EXPECT_EQ(tok->Encode("atok"), Bytes("atok"));
  EXPECT_EQ(tok->Encode("toks"), Bytes("toks"));
}

TEST(TokenizerTest, NormalizedAddedTokenMatchesAfterNormalizer) {
  Builder b;
  b.AddToken(300, "\xC3\xA9t\xC3\xA9", false, false, false, false,
             /*normalized=*/true);
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  // Decomposed input only matches after NFC.
  EXPECT_THAT(tok->Encode("e\xCC\x81te\xCC\x81!"), ElementsAre(300, '!'));
}

TEST(TokenizerTest, DecodeReplacesInvalidUtf8LikeRust) {
  Builder b;
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  // The first byte of "é" alone.
  EXPECT_EQ(tok->Decode({'a', 0xC3, 'b'}),
            "a\xEF\xBF\xBD"
            "b");
  // Unknown ids are skipped, as transformers does.
  EXPECT_EQ(tok->Decode({'a', 100000, 'b'}), "ab");
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"
                      "A"),
            "\xEF\xBF\xBD"
            "A");
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy("\xF4\x90\x80\x80"),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy("\xE2\x82"), "\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy(std::string("ok\0ok", 5)), std::string("ok\0ok", 5));
}

TEST(TokenizerTest, InvalidUtf8InputIsReplacedBeforeEncoding) {
  Builder b;
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("a\xFF"
                        "b\xE2\x82"),
            tok->Encode("a\xEF\xBF\xBD"
                        "b\xEF\xBF\xBD"));
}

TEST(TokenizerTest, CleanUpTokenizationMatchesTransformers) {
  EXPECT_EQ(CleanUpTokenization("Hello , world ! Is n't it ? I 'm ok ."),
            "Hello, world! Isn't it? I'm ok.");
  Builder b;
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  DecodeOptions options;
  options.clean_up_tokenization_spaces = true;
  EXPECT_EQ(tok->Decode(Bytes("a , b"), options), "a, b");
  EXPECT_EQ(tok->Decode(Bytes("a , b")), "a , b");
}

TEST(TokenizerTest, TemplatePostProcessorAddsBos) {
  Builder b;
  b.AddToken(300, "<bos>", true);
  b.post_processor =
      json{{"type", "Sequence"},
           {"processors", json::array({json{{"type", "ByteLevel"}},
                                       BosTemplateProcessing(300, "<bos>")})}};
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("hi", /*add_special_tokens=*/true),
              ElementsAre(300, 'h', 'i'));
  EXPECT_THAT(tok->Encode("hi"), ElementsAre('h', 'i'));
}

TEST(TokenizerTest, ConfigSpecialTokens) {
  Builder b;
  b.AddToken(300, "<|end|>", true);
  b.AddToken(301, "<|pad|>", true);
  b.AddToken(302, "<|bos|>", true);
  const json config = {
      {"bos_token", {{"__type", "AddedToken"}, {"content", "<|bos|>"}}},
      {"eos_token", "<|end|>"},
      {"pad_token", "<|pad|>"},
      {"unk_token", nullptr},
      {"clean_up_tokenization_spaces", true},
      {"chat_template", "{{ hello }}"}};
  auto tok = b.Make(config.dump());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_token_id(), 302u);
  EXPECT_EQ(tok->eos_token_id(), 300u);
  EXPECT_EQ(tok->pad_token_id(), 301u);
  EXPECT_EQ(tok->unk_token_id(), std::nullopt);
  EXPECT_EQ(tok->eos_token(), "<|end|>");
  EXPECT_EQ(tok->chat_template(), "{{ hello }}");
  EXPECT_TRUE(tok->config_clean_up_tokenization_spaces());
  auto no_config = b.Make();
  EXPECT_EQ(no_config->bos_token_id(), std::nullopt);
}

TEST(TokenizerTest, ConcurrentEncodeAgrees) {
  Builder b;
  b.merges = {{"t", "h"}, {"th", "e"}, {" ", "the"}};
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  std::string text;
  for (int i = 0; i < 2000; ++i)
    text += "the cat and the hat " + std::to_string(i) + " ";
  const std::vector<uint32_t> expected = tok->Encode(text);
  std::vector<std::thread> threads;
  std::vector<bool> ok(4, false);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] { ok[t] = tok->Encode(text) == expected; });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_TRUE(ok[t]) << t;
}

// Offsets of byte-level BPE, as Hugging Face tokenizers 0.23.2 gives them
// (return_offsets_mapping, converted to bytes) for the same tokenizer.json.
std::vector<TokenOffsets> Offsets(
    std::initializer_list<std::pair<size_t, size_t>> spans) {
  std::vector<TokenOffsets> out;
  for (const auto& [b, e] : spans) out.push_back({b, e});
  return out;
}

Builder OffsetsBuilder() {
  Builder b;
  b.merges = {{"l", "l"},    {"h", "e"}, {"he", "ll"},
              {"hell", "o"}, {" ", "w"}, {"\xC3", "\xA9"}};
  // Ids right after the vocabulary, as tokenizers requires.
  b.AddToken(262, "<|s|>", true);
  b.AddToken(263, "<l>", true, /*lstrip=*/true);
  b.AddToken(264, "<r>", true, false, /*rstrip=*/true);
  b.post_processor = ByteLevelJson(/*add_prefix_space=*/false,
                                   /*trim_offsets=*/false, /*use_regex=*/false);
  return b;
}

json BosTemplate(uint32_t id, const std::string& token) {
  return json{
      {"type", "Sequence"},
      {"processors",
       json::array({json{{"type", "ByteLevel"}, {"trim_offsets", false}},
                    BosTemplateProcessing(id, token)})}};
}

// A token that covers part of a multi-byte character gets the whole
// character ("ö" is two byte tokens, the emoji four); added tokens get
// their own span, lstrip/rstrip whitespace included; the template's BOS
// gets (0, 0).
TEST(TokenizerTest, OffsetsByteLevel) {
  Builder b = OffsetsBuilder();
  b.post_processor = BosTemplate(262, "<|s|>");
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  const std::string text = "hello w\xC3\xB6rld \xF0\x9F\xA4\x96";
  EncodingWithOffsets enc = tok->EncodeWithOffsets(text, true);
  EXPECT_THAT(enc.ids, ElementsAre(262, 259, 260, 195, 182, 114, 108, 100, 32,
                                   240, 159, 164, 150));
  EXPECT_EQ(enc.offsets, Offsets({{0, 0},
                                  {0, 5},
                                  {5, 7},
                                  {7, 9},
                                  {7, 9},
                                  {9, 10},
                                  {10, 11},
                                  {11, 12},
                                  {12, 13},
                                  {13, 17},
                                  {13, 17},
                                  {13, 17},
                                  {13, 17}}));
  EXPECT_EQ(enc.ids, tok->Encode(text, true));
  enc = tok->EncodeWithOffsets("a  <l> b <r>  c", true);
  EXPECT_THAT(enc.ids, ElementsAre(262, 'a', 263, ' ', 'b', ' ', 264, 'c'));
  EXPECT_EQ(
      enc.offsets,
      Offsets(
          {{0, 0}, {0, 1}, {1, 6}, {6, 7}, {7, 8}, {8, 9}, {9, 14}, {14, 15}}));
  enc = tok->EncodeWithOffsets("x<|s|>y", false);
  EXPECT_THAT(enc.ids, ElementsAre('x', 262, 'y'));
  EXPECT_EQ(enc.offsets, Offsets({{0, 1}, {1, 6}, {6, 7}}));
  EXPECT_TRUE(tok->EncodeWithOffsets("").ids.empty());
}

// ByteLevel pre-tokenizer with add_prefix_space: the added space shares the
// first character's span, as tokenizers' NormalizedString::prepend does.
TEST(TokenizerTest, OffsetsByteLevelPrefixSpace) {
  Builder b = OffsetsBuilder();
  b.pre_tokenizer = ByteLevelJson(/*add_prefix_space=*/true,
                                  /*trim_offsets=*/false, /*use_regex=*/true);
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EncodingWithOffsets enc = tok->EncodeWithOffsets("x<|s|>y");
  EXPECT_THAT(enc.ids, ElementsAre(' ', 'x', 262, ' ', 'y'));
  EXPECT_EQ(enc.offsets, Offsets({{0, 1}, {0, 1}, {1, 6}, {6, 7}, {6, 7}}));
  enc = tok->EncodeWithOffsets("  hi");
  EXPECT_THAT(enc.ids, ElementsAre(' ', ' ', 'h', 'i'));
  EXPECT_EQ(enc.offsets, Offsets({{0, 1}, {1, 2}, {2, 3}, {3, 4}}));
}

// The ByteLevel post-processor's trim_offsets (its default) moves leading
// and trailing spaces out of a token's span, keeping a first token's one
// leading space when add_prefix_space is set.
TEST(TokenizerTest, OffsetsTrimOffsets) {
  Builder b = OffsetsBuilder();
  b.post_processor = ByteLevelJson(/*add_prefix_space=*/true,
                                   /*trim_offsets=*/true, /*use_regex=*/true);
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EncodingWithOffsets enc =
      tok->EncodeWithOffsets("hello w\xC3\xB6rld \xF0\x9F\xA4\x96");
  EXPECT_EQ(enc.offsets, Offsets({{0, 5},
                                  {6, 7},
                                  {7, 9},
                                  {7, 9},
                                  {9, 10},
                                  {10, 11},
                                  {11, 12},
                                  {13, 13},
                                  {13, 17},
                                  {13, 17},
                                  {13, 17},
                                  {13, 17}}));
  enc = tok->EncodeWithOffsets("a  <l> b <r>  c");
  EXPECT_EQ(
      enc.offsets,
      Offsets({{0, 1}, {3, 6}, {7, 7}, {7, 8}, {9, 9}, {9, 12}, {14, 15}}));
  enc = tok->EncodeWithOffsets("  hi");
  EXPECT_EQ(enc.offsets, Offsets({{0, 0}, {2, 2}, {2, 3}, {3, 4}}));
}

// NFC composes "e" + U+0301 into "é": the token maps to the "e" only and
// the combining mark to no token, as in tokenizers; later marks of the
// segment keep their own spans.
TEST(TokenizerTest, OffsetsThroughNfc) {
  Builder b = OffsetsBuilder();
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  EncodingWithOffsets enc = tok->EncodeWithOffsets("Cafe\xCC\x81 ok");
  EXPECT_THAT(enc.ids, ElementsAre('C', 'a', 'f', 261, ' ', 'o', 'k'));
  EXPECT_EQ(enc.offsets,
            Offsets({{0, 1}, {1, 2}, {2, 3}, {3, 4}, {6, 7}, {7, 8}, {8, 9}}));
  // e + dot below + acute -> U+1EB9 + acute; a + acute + dot below is
  // reordered, then composes the same way.
  enc = tok->EncodeWithOffsets("e\xCC\xA3\xCC\x81 a\xCC\x81\xCC\xA3");
  EXPECT_EQ(enc.offsets, Offsets({{0, 1},
                                  {0, 1},
                                  {0, 1},
                                  {3, 5},
                                  {3, 5},
                                  {5, 6},
                                  {6, 7},
                                  {6, 7},
                                  {6, 7},
                                  {9, 11},
                                  {9, 11}}));
}

// Unsupported parts of a tokenizer.json fail with an error naming them.
TEST(TokenizerTest, UnsupportedComponentsAreNamed) {
  const auto expect_error = [](const json& j, absl::StatusCode code,
                               const std::string& needle) {
    auto tok = Tokenizer::FromJson(j.dump());
    ASSERT_FALSE(tok.ok()) << needle;
    EXPECT_EQ(tok.status().code(), code) << tok.status();
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr(needle));
  };
  // A good tokenizer.json with `value` set at `path` (a JSON pointer), the
  // error it gives and a substring of that error's message.
  struct Broken {
    std::string path;
    json value;
    absl::StatusCode code;
    std::string needle;
  };
  constexpr absl::StatusCode kUnimplemented = absl::StatusCode::kUnimplemented;
  constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  const std::vector<Broken> cases = {
      {"/model/type", "WordPiece", kUnimplemented, "'WordPiece'"},
      {"/normalizer", {{"type", "Lowercase"}}, kUnimplemented, "'Lowercase'"},
      {"/pre_tokenizer",
       {{"type", "Whitespace"}},
       kUnimplemented,
       "'Whitespace'"},
      // Metaspace words start from characters, which a ByteLevel decoder
      // could decode, but together with a ByteLevel pre-tokenizer they make
      // no tokenizer anyone ships.
      {"/pre_tokenizer/pretokenizers/0",
       {{"type", "Metaspace"}, {"replacement", "_"}},
       kUnimplemented,
       "ByteLevel together with Metaspace"},
      {"/pre_tokenizer/pretokenizers/0",
       {{"type", "Digits"}},
       kUnimplemented,
       "'Digits'"},
      {"/decoder", {{"type", "WordPiece"}}, kUnimplemented, "'WordPiece'"},
      {"/post_processor",
       {{"type", "RobertaProcessing"}},
       kUnimplemented,
       "'RobertaProcessing'"},
      {"/model/end_of_word_suffix", "</w>", kUnimplemented,
       "end_of_word_suffix"},
      {"/model/dropout", 0.1, kUnimplemented, "dropout"},
      {"/model/merges", json::array({"a b c"}), kInvalid, "merge #1"},
      {"/model/merges", json::array({json::array({"q", "z"})}), kInvalid,
       "missing from the vocabulary"},
      {"/pre_tokenizer/pretokenizers/0/pattern/Regex", "(unclosed", kInvalid,
       "PCRE2"},
      // Found by fuzz/tokenizer_fuzzer.cc: ids past 32 bits were truncated
      // and sized the id tables (a 42 GB allocation); 0xFFFFFFFF wrapped the
      // table size to 0 and was written past its end.
      {"/model/vocab/huge", 151649151650LL, kInvalid, "'huge' has id"},
      {"/added_tokens",
       json::array(
           {{{"id", 4294967295LL}, {"content", "<x>"}, {"special", true}}}),
       kInvalid, "'<x>' has id"},
  };
  Builder b;
  const json base = b.Build();
  for (const Broken& c : cases) {
    json j = base;
    j[json::json_pointer(c.path)] = c.value;
    expect_error(j, c.code, c.needle);
  }
  // A ByteLevel pre-tokenizer needs the 256 byte-level characters.
  json j = base;
  j["model"]["vocab"].erase(ByteLevelChar(0));
  expect_error(j, kUnimplemented, "byte-level token");
  EXPECT_FALSE(Tokenizer::FromJson("{not json").ok());
  EXPECT_EQ(Tokenizer::FromFile("/nonexistent/tokenizer.json").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvwire
