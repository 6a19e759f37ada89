// Unit tests of kvwire::Tokenizer on small synthetic SentencePiece-style BPE
// tokenizers (characters, "▁" for spaces, <0xNN> byte fallback, unk), in the
// layouts Llama-2 (Prepend + Replace normalizers, Strip decoder), Gemma
// (Replace normalizer, Split pre-tokenizer) and Metaspace files use. The
// expected ids, offsets and decodes are what Hugging Face tokenizers 0.23.2
// (the npm binding of the Rust library) gives for the same tokenizer.json;
// parity on the real files is in tokenizer_parity_test.cc.
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/tokenizer/tokenizer.h"
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
using ::testing::HasSubstr;

constexpr char kSp[] = "\xE2\x96\x81";  // "▁"

// Builds a tokenizer.json: <unk> 0, <s> 1, </s> 2 (special added tokens),
// <0x00>..<0xFF> 3..258 (unless byte_tokens is false), the single pieces
// below, then one token per merge, in order.
struct SpBuilder {
  json normalizer;
  json pre_tokenizer;
  json decoder;
  bool byte_tokens = true;
  bool byte_fallback = true;
  bool fuse_unk = true;
  bool ignore_merges = false;
  std::vector<std::string> extra_pieces;
  json vocab = json::object();

  json Build() {
    vocab = json::object();
    int next = 0;
    for (const char* t : {"<unk>", "<s>", "</s>"}) vocab[t] = next++;
    if (byte_tokens) {
      static constexpr char kHex[] = "0123456789ABCDEF";
      for (int b = 0; b < 256; ++b) {
        vocab[std::string{'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'}] =
            next++;
      }
    }
    for (const std::string& p :
         {std::string(kSp), std::string("a"), std::string("b"),
          std::string("c"), std::string("d"), std::string("e"),
          std::string("h"), std::string("l"), std::string("o"),
          std::string("r"), std::string("w"), std::string("\xC3\xA9"),
          std::string("\n")}) {
      if (!vocab.contains(p)) vocab[p] = next++;
    }
    const std::string sp = kSp;
    const std::vector<std::pair<std::string, std::string>> merges = {
        {sp, "h"},          {"e", "l"},         {"l", "o"}, {sp + "h", "el"},
        {sp + "hel", "lo"}, {sp, "w"},          {"o", "r"}, {sp + "w", "or"},
        {sp + "wor", "l"},  {sp + "worl", "d"}, {sp, sp},   {"h", "\xC3\xA9"},
        {"h\xC3\xA9", "l"}};
    json merge_list = json::array();
    for (const auto& [a, b] : merges) {
      if (!vocab.contains(a + b)) vocab[a + b] = next++;
      merge_list.push_back(json::array({a, b}));
    }
    for (const std::string& p : extra_pieces) {
      if (!vocab.contains(p)) vocab[p] = next++;
    }
    json added = json::array();
    for (const char* t : {"<unk>", "<s>", "</s>"}) {
      added.push_back(
          AddedTokenJson(vocab[t].get<uint32_t>(), t, /*special=*/true));
    }
    return json{{"version", "1.0"},
                {"added_tokens", added},
                {"normalizer", normalizer},
                {"pre_tokenizer", pre_tokenizer},
                {"post_processor", BosTemplateProcessing(1, "<s>")},
                {"decoder", decoder},
                {"model",
                 {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", "<unk>"},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", fuse_unk},
                  {"byte_fallback", byte_fallback},
                  {"ignore_merges", ignore_merges},
                  {"vocab", vocab},
                  {"merges", merge_list}}}};
  }

  std::unique_ptr<Tokenizer> Make() {
    auto tok = Tokenizer::FromJson(Build().dump());
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? std::move(*tok) : nullptr;
  }
};

json Replace(const std::string& from, const std::string& to) {
  return {
      {"type", "Replace"}, {"pattern", {{"String", from}}}, {"content", to}};
}

SpBuilder Llama2Style() {
  SpBuilder b;
  b.normalizer = {
      {"type", "Sequence"},
      {"normalizers", json::array({json{{"type", "Prepend"}, {"prepend", kSp}},
                                   Replace(" ", kSp)})}};
  b.pre_tokenizer = nullptr;
  b.decoder = {{"type", "Sequence"},
               {"decoders",
                json::array({Replace(kSp, " "), json{{"type", "ByteFallback"}},
                             json{{"type", "Fuse"}},
                             json{{"type", "Strip"},
                                  {"content", " "},
                                  {"start", 1},
                                  {"stop", 0}}})}};
  return b;
}

SpBuilder GemmaStyle() {
  SpBuilder b;
  b.normalizer = Replace(" ", kSp);
  b.pre_tokenizer = {{"type", "Split"},
                     {"pattern", {{"String", " "}}},
                     {"behavior", "MergedWithPrevious"},
                     {"invert", false}};
  b.decoder = {{"type", "Sequence"},
               {"decoders",
                json::array({Replace(kSp, " "), json{{"type", "ByteFallback"}},
                             json{{"type", "Fuse"}}})}};
  return b;
}

SpBuilder MetaspaceStyle(const std::string& scheme, bool split) {
  SpBuilder b;
  b.normalizer = nullptr;
  b.pre_tokenizer = {{"type", "Metaspace"},
                     {"replacement", kSp},
                     {"prepend_scheme", scheme},
                     {"split", split}};
  b.decoder = {{"type", "Metaspace"},
               {"replacement", kSp},
               {"prepend_scheme", scheme},
               {"split", split}};
  b.byte_fallback = false;
  return b;
}

// One expected encoding, with add_special_tokens (a leading <s>).
struct Case {
  std::string text;
  std::vector<uint32_t> ids;
  std::vector<std::pair<size_t, size_t>> offsets;
  std::string decoded;  // Decode of the ids after <s>.
};

// `c` decoding to `decoded` instead.
Case WithDecoded(Case c, const std::string& decoded) {
  c.decoded = decoded;
  return c;
}

// Encodings that several layouts below give.

// "hello world" as "▁hello" "▁world".
Case HelloWorldAsWords() {
  return {
      "hello world", {1, 276, 281}, {{0, 0}, {0, 5}, {5, 11}}, "hello world"};
}

// "hello world" with no "▁" before "hello", which then takes its pieces.
Case HelloWorldAsPieces() {
  return {"hello world",
          {1, 265, 273, 274, 281},
          {{0, 0}, {0, 1}, {1, 3}, {3, 5}, {5, 11}},
          "hello world"};
}

// Every space its own "▁", none prepended.
Case SpacedHelloWorld() {
  return {"  hello  world ",
          {1, 259, 276, 259, 281, 259},
          {{0, 0}, {0, 1}, {1, 7}, {7, 8}, {8, 14}, {14, 15}},
          "  hello  world "};
}

// Special tokens in the text, "hello" after <s> without a "▁".
Case SpecialTokensThenPieces() {
  return {"<s>hello</s> world",
          {1, 1, 265, 273, 274, 2, 281},
          {{0, 0}, {0, 3}, {3, 4}, {4, 6}, {6, 8}, {8, 12}, {12, 18}},
          "<s>hello</s> world"};
}

// A special token between words, the space before it a "▁" of its own.
Case SpecialTokenBetweenWords() {
  return {"hello <s> world",
          {1, 276, 259, 1, 281},
          {{0, 0}, {0, 5}, {5, 6}, {6, 9}, {9, 15}},
          "hello <s> world"};
}

// A lone space, one "▁".
Case SingleSpace() { return {" ", {1, 259}, {{0, 0}, {0, 1}}, " "}; }

// Offsets of <s> and "xyz hello qq" with a "▁" prepended (sharing "x"'s
// span) and each character of "xyz" and "qq" a token of its own.
std::vector<std::pair<size_t, size_t>> XyzHelloQqCharacterOffsets() {
  return {{0, 0}, {0, 1},  {0, 1},   {1, 2},  {2, 3},
          {3, 9}, {9, 10}, {10, 11}, {11, 12}};
}

void Check(const Tokenizer& tok, const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    const EncodingWithOffsets enc =
        tok.EncodeWithOffsets(c.text, /*add_special_tokens=*/true);
    EXPECT_EQ(enc.ids, c.ids) << "'" << c.text << "'";
    std::vector<TokenOffsets> want;
    for (const auto& [b, e] : c.offsets) want.push_back({b, e});
    EXPECT_EQ(enc.offsets, want) << "'" << c.text << "'";
    EXPECT_EQ(tok.Encode(c.text, /*add_special_tokens=*/true), enc.ids);
    const std::vector<uint32_t> body(c.ids.begin() + 1, c.ids.end());
    EXPECT_EQ(tok.Encode(c.text), body) << "'" << c.text << "'";
    EXPECT_EQ(tok.Decode(body), c.decoded) << "'" << c.text << "'";
  }
}

class SentencePieceBpeTest : public ::testing::Test {
 protected:
  // Makes tok_ from `b`; a fatal failure if `b` is refused.
  void Make(SpBuilder b) {
    tok_ = b.Make();
    ASSERT_NE(tok_, nullptr);
  }

  std::unique_ptr<Tokenizer> tok_;
};

// Llama-2 layout: Prepend("▁") then Replace(" " -> "▁"), no pre-tokenizer.
// The prepended "▁" shares the first character's offsets; a "▁" made from
// a space maps to that space; the four byte-fallback tokens of an emoji all
// map to the whole emoji; characters without a piece or merge use bytes.
TEST_F(SentencePieceBpeTest, Llama2Layout) {
  ASSERT_NO_FATAL_FAILURE(Make(Llama2Style()));
  Check(*tok_, {
                   HelloWorldAsWords(),
                   {"  hello  world ",
                    {1, 282, 276, 259, 281, 259},
                    {{0, 0}, {0, 1}, {1, 7}, {7, 8}, {8, 14}, {14, 15}},
                    "  hello  world "},
                   {"hello\nworld\n",
                    {1, 276, 271, 269, 278, 266, 263, 271},
                    {{0, 0},
                     {0, 5},
                     {5, 6},
                     {6, 7},
                     {7, 9},
                     {9, 10},
                     {10, 11},
                     {11, 12}},
                    "hello\nworld\n"},
                   {"h\xC3\xA9llo \xF0\x9F\xA4\x96!",
                    {1, 272, 270, 266, 274, 259, 243, 162, 167, 153, 36},
                    {{0, 0},
                     {0, 1},
                     {1, 3},
                     {3, 4},
                     {4, 6},
                     {6, 7},
                     {7, 11},
                     {7, 11},
                     {7, 11},
                     {7, 11},
                     {11, 12}},
                    "h\xC3\xA9llo \xF0\x9F\xA4\x96!"},
                   {"<s>hello</s> world",
                    {1, 1, 276, 2, 259, 281},
                    {{0, 0}, {0, 3}, {3, 8}, {8, 12}, {12, 13}, {12, 18}},
                    "<s> hello</s>  world"},
                   {"xyz hello qq",
                    {1, 259, 123, 124, 125, 276, 259, 116, 116},
                    XyzHelloQqCharacterOffsets(),
                    "xyz hello qq"},
                   {"", {1}, {{0, 0}}, ""},
                   {" ", {1, 282}, {{0, 0}, {0, 1}}, " "},
                   {"hello <s> world",
                    {1, 276, 259, 1, 259, 281},
                    {{0, 0}, {0, 5}, {5, 6}, {6, 9}, {9, 10}, {9, 15}},
                    "hello <s>  world"},
                   {"\xE2\x96\x81hello",
                    {1, 259, 276},
                    {{0, 0}, {0, 3}, {0, 8}},
                    " hello"},
               });
  EXPECT_EQ(tok_->vocab_size(), 285u);
  EXPECT_EQ(tok_->TokenToId("<0x0A>"), 13u);
  EXPECT_EQ(tok_->TokenToId(std::string(kSp) + "hello"), 276u);
  EXPECT_EQ(tok_->IdToToken(243), "<0xF0>");
  EXPECT_EQ(tok_->unk_token_id(), 0u);  // The model's, without a config.
  EXPECT_TRUE(tok_->IsSpecialToken(1));
  EXPECT_FALSE(tok_->IsSpecialToken(276));
  // Strip removes one leading space of the whole decode, not of each token.
  EXPECT_EQ(tok_->Decode({259, 259, 262}), " c");
  EXPECT_EQ(tok_->Decode({1, 276, 2}, /*skip_special_tokens=*/true), "hello");
}

// Gemma layout: Replace(" " -> "▁") and a Split on " " that never fires
// (the spaces are gone by then), so the whole text is one word.
TEST_F(SentencePieceBpeTest, GemmaLayout) {
  ASSERT_NO_FATAL_FAILURE(Make(GemmaStyle()));
  Check(*tok_, {
                   HelloWorldAsPieces(),
                   SpacedHelloWorld(),
                   {"h\xC3\xA9llo \xF0\x9F\xA4\x96!",
                    {1, 284, 274, 259, 243, 162, 167, 153, 36},
                    {{0, 0},
                     {0, 4},
                     {4, 6},
                     {6, 7},
                     {7, 11},
                     {7, 11},
                     {7, 11},
                     {7, 11},
                     {11, 12}},
                    "h\xC3\xA9llo \xF0\x9F\xA4\x96!"},
                   SpecialTokensThenPieces(),
                   SingleSpace(),
                   {"hello <s> world",
                    {1, 265, 273, 274, 259, 1, 281},
                    {{0, 0}, {0, 1}, {1, 3}, {3, 5}, {5, 6}, {6, 9}, {9, 15}},
                    "hello <s> world"},
                   {"\xE2\x96\x81hello", {1, 276}, {{0, 0}, {0, 8}}, " hello"},
               });
}

// tokenizers' ByteFallback decoder: a run of byte tokens that is not valid
// UTF-8 gives one U+FFFD per byte (transformers.js would give one per
// maximal subpart); a valid run gives its text.
TEST_F(SentencePieceBpeTest, ByteFallbackDecode) {
  ASSERT_NO_FATAL_FAILURE(Make(GemmaStyle()));
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(tok_->Decode({230, 161}), fffd + fffd);  // E3 9E, truncated.
  EXPECT_EQ(tok_->Decode({230, 262}), fffd + "c");
  EXPECT_EQ(tok_->Decode({262, 230}), "c" + fffd);
  EXPECT_EQ(tok_->Decode({230, 161, 160, 262}),
            "\xE3\x9E\x9D"
            "c");
  // Each byte token of a character alone, as a token aligner decodes them.
  for (uint32_t id : {243u, 162u, 167u, 153u}) {
    EXPECT_EQ(tok_->Decode({id}), fffd) << id;
  }
  EXPECT_EQ(tok_->Decode({1, 276, 2}), "<s> hello</s>");
  EXPECT_EQ(tok_->Decode({1, 276, 2}, /*skip_special_tokens=*/true), " hello");
}

// Metaspace pre-tokenizer and decoder, every prepend scheme, with and
// without split; no byte fallback, so unknown characters become <unk>,
// consecutive ones fused.
TEST_F(SentencePieceBpeTest, MetaspaceFirstSplit) {
  ASSERT_NO_FATAL_FAILURE(Make(MetaspaceStyle("first", true)));
  Check(*tok_, {
                   HelloWorldAsWords(),
                   WithDecoded(SpacedHelloWorld(), " hello  world "),
                   {"h\xC3\xA9llo \xF0\x9F\xA4\x96!",
                    {1, 272, 270, 266, 274, 259, 0},
                    {{0, 0}, {0, 1}, {1, 3}, {3, 4}, {4, 6}, {6, 7}, {7, 12}},
                    "h\xC3\xA9llo <unk>"},
                   // Only the piece at the start of the input gets the "▁".
                   SpecialTokensThenPieces(),
                   {"xyz hello qq",
                    {1, 259, 0, 276, 259, 0},
                    {{0, 0}, {0, 1}, {0, 3}, {3, 9}, {9, 10}, {10, 12}},
                    "<unk> hello <unk>"},
                   WithDecoded(SingleSpace(), ""),
                   SpecialTokenBetweenWords(),
               });
  // The first token loses its replacement characters, later ones become
  // spaces.
  EXPECT_EQ(tok_->Decode({282, 262, 259, 262}), "c c");
}

TEST_F(SentencePieceBpeTest, MetaspaceAlwaysNoSplit) {
  ASSERT_NO_FATAL_FAILURE(Make(MetaspaceStyle("always", false)));
  Check(*tok_, {
                   HelloWorldAsWords(),
                   {"<s>hello</s> world",
                    {1, 1, 276, 2, 281},
                    {{0, 0}, {0, 3}, {3, 8}, {8, 12}, {12, 18}},
                    "<s> hello</s> world"},
                   SpecialTokenBetweenWords(),
               });
  EXPECT_EQ(tok_->Decode({262, 282}), "c  ");
}

TEST_F(SentencePieceBpeTest, MetaspaceNeverSplit) {
  ASSERT_NO_FATAL_FAILURE(Make(MetaspaceStyle("never", true)));
  Check(*tok_, {
                   HelloWorldAsPieces(),
                   SpacedHelloWorld(),
                   {"xyz hello qq",
                    {1, 0, 276, 259, 0},
                    {{0, 0}, {0, 3}, {3, 9}, {9, 10}, {10, 12}},
                    "<unk> hello <unk>"},
                   SingleSpace(),
               });
  EXPECT_EQ(tok_->Decode({282, 262, 259, 262}), "  c c");
}

// Without fuse_unk every unknown character is its own <unk>.
TEST_F(SentencePieceBpeTest, UnkWithoutFusing) {
  SpBuilder b = MetaspaceStyle("first", true);
  b.fuse_unk = false;
  ASSERT_NO_FATAL_FAILURE(Make(b));
  Check(
      *tok_,
      {
          {"h\xC3\xA9llo \xF0\x9F\xA4\x96!",
           {1, 272, 270, 266, 274, 259, 0, 0},
           {{0, 0}, {0, 1}, {1, 3}, {3, 4}, {4, 6}, {6, 7}, {7, 11}, {11, 12}},
           "h\xC3\xA9llo <unk><unk>"},
          {"xyz hello qq",
           {1, 259, 0, 0, 0, 276, 259, 0, 0},
           XyzHelloQqCharacterOffsets(),
           "<unk><unk><unk> hello <unk><unk>"},
      });
}

// byte_fallback needs every <0xNN> of a character in the vocabulary; a
// vocabulary without them falls back to <unk>.
TEST_F(SentencePieceBpeTest, ByteFallbackWithoutByteTokensGivesUnk) {
  SpBuilder b = GemmaStyle();
  b.byte_tokens = false;
  ASSERT_NO_FATAL_FAILURE(Make(b));
  Check(*tok_, {
                   {"h\xC3\xA9llo \xF0\x9F\xA4\x96!",
                    {1, 28, 18, 3, 0},
                    {{0, 0}, {0, 4}, {4, 6}, {6, 7}, {7, 12}},
                    "h\xC3\xA9llo <unk>"},
                   {"xyz hello qq",
                    {1, 0, 20, 3, 0},
                    {{0, 0}, {0, 3}, {3, 9}, {9, 10}, {10, 12}},
                    "<unk> hello <unk>"},
               });
}

// ignore_merges: a word that is itself a vocabulary piece is one token.
TEST_F(SentencePieceBpeTest, IgnoreMergesTakesWholeWord) {
  SpBuilder b = GemmaStyle();
  b.extra_pieces = {"abc"};
  b.ignore_merges = true;
  auto tok = b.Make();
  ASSERT_NE(tok, nullptr);
  const std::vector<uint32_t> abc = {*tok->TokenToId("abc")};
  EXPECT_EQ(tok->Encode("abc"), abc);
  SpBuilder c = GemmaStyle();
  c.extra_pieces = {"abc"};
  auto merged = c.Make();
  ASSERT_NE(merged, nullptr);
  EXPECT_EQ(merged->Encode("abc"), (std::vector<uint32_t>{260, 261, 262}));
}

// Invalid UTF-8 input is repaired before encoding, and offsets still index
// the input as given: each U+FFFD maps to the bytes it replaced.
TEST_F(SentencePieceBpeTest, OffsetsOfRepairedInput) {
  ASSERT_NO_FATAL_FAILURE(Make(GemmaStyle()));
  const EncodingWithOffsets enc = tok_->EncodeWithOffsets(
      "a\xFF\xE2\x82"
      "b");
  // "a", then U+FFFD twice as byte tokens (EF BF BD each), then "b".
  ASSERT_EQ(enc.ids.size(), 8u);
  EXPECT_EQ(enc.offsets[0], (TokenOffsets{0, 1}));
  for (size_t i = 1; i <= 3; ++i) {
    EXPECT_EQ(enc.offsets[i], (TokenOffsets{1, 2})) << i;
  }
  for (size_t i = 4; i <= 6; ++i) {
    EXPECT_EQ(enc.offsets[i], (TokenOffsets{2, 4})) << i;
  }
  EXPECT_EQ(enc.offsets[7], (TokenOffsets{4, 5}));
}

TEST_F(SentencePieceBpeTest, UnsupportedComponentsAreNamed) {
  // A good tokenizer.json with `value` set at `path` (a JSON pointer), and a
  // substring of the error that gives.
  struct Broken {
    std::string path;
    json value;
    std::string needle;
  };
  const std::vector<Broken> cases = {
      {"/decoder/decoders/1", {{"type", "CTC"}}, "'CTC'"},
      {"/decoder", nullptr, "'null'"},
      {"/normalizer/normalizers/0", {{"type", "Lowercase"}}, "'Lowercase'"},
      {"/normalizer/normalizers/1/pattern", {{"Glob", "*"}}, "Replace pattern"},
      {"/pre_tokenizer",
       {{"type", "Metaspace"},
        {"replacement", kSp},
        {"prepend_scheme", "sometimes"}},
       "'sometimes'"},
      {"/pre_tokenizer",
       {{"type", "Metaspace"}, {"replacement", "ab"}},
       "one-character"},
      {"/pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({json{{"type", "Metaspace"}, {"replacement", kSp}},
                      json{{"type", "ByteLevel"}}})}},
       "ByteLevel together with Metaspace"},
      {"/pre_tokenizer", {{"type", "Whitespace"}}, "'Whitespace'"},
      {"/model/continuing_subword_prefix", "##", "continuing_subword_prefix"},
      {"/model/type", "Unigram", "'Unigram'"},
  };
  SpBuilder b = Llama2Style();
  const json base = b.Build();
  for (const Broken& c : cases) {
    json j = base;
    j[json::json_pointer(c.path)] = c.value;
    auto tok = Tokenizer::FromJson(j.dump());
    EXPECT_FALSE(tok.ok()) << c.needle;
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr(c.needle));
  }
}

}  // namespace
}  // namespace kvwire
