// Unit tests of kvwire-cli ask's request building and formatting.
#include "tools/cli/ask.h"

#include "common/protocol/answer_validation.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(AskTest, FormatsMultipleChoiceItems) {
  EXPECT_EQ(FormatQuestion("Why?", {}).value_or(""), "Why?");
  const std::string q =
      FormatQuestion("Which is a gas?", {"iron", "oxygen"}).value_or("");
  EXPECT_THAT(q, HasSubstr("\nA. iron\nB. oxygen\n"));
  EXPECT_THAT(q, HasSubstr("letter"));
  EXPECT_FALSE(FormatQuestion("  ", {}).ok());
  EXPECT_FALSE(FormatQuestion("q", std::vector<std::string>(27, "x")).ok());
}

TEST(AskTest, SpecShorthands) {
  v1::AnswerRequest r;
  r.mutable_spec()->set_granularity(v1::GRANULARITY_PER_TOKEN);
  ASSERT_TRUE(ApplySpecShorthand("int4@0.5", &r).ok());
  EXPECT_EQ(r.mode(), v1::ANSWER_MODE_C2C);
  EXPECT_EQ(r.spec().scheme(), v1::SCHEME_INT4);
  EXPECT_EQ(r.spec().granularity(), v1::GRANULARITY_PER_TOKEN);  // Kept.
  EXPECT_EQ(r.spec().selection().mode(), v1::SELECTION_BACK);
  EXPECT_DOUBLE_EQ(r.spec().selection().proportion(), 0.5);

  v1::AnswerRequest k;
  ASSERT_TRUE(ApplySpecShorthand("nf4@0.25:knorm_topk", &k).ok());
  EXPECT_EQ(k.spec().selection().mode(), v1::SELECTION_KNORM_TOPK);
  v1::AnswerRequest g;
  ASSERT_TRUE(ApplySpecShorthand("int8@0.5:receiver", &g).ok());
  EXPECT_EQ(g.spec().selection().mode(), v1::SELECTION_EXPLICIT);
  EXPECT_EQ(g.spec().selection().indices_size(), 0);
  v1::AnswerRequest alone;
  ASSERT_TRUE(ApplySpecShorthand("receiver-only", &alone).ok());
  EXPECT_EQ(alone.mode(), v1::ANSWER_MODE_RECEIVER_ONLY);

  v1::AnswerRequest bad;
  EXPECT_FALSE(ApplySpecShorthand("int5", &bad).ok());
  EXPECT_FALSE(ApplySpecShorthand("int4@x", &bad).ok());
  EXPECT_FALSE(ApplySpecShorthand("int4@0.5:nearest", &bad).ok());
  EXPECT_FALSE(ApplySpecShorthand("int4@0.5@1", &bad).ok());
}

TEST(AskTest, DescribesSpecs) {
  v1::TransferSpec s;
  EXPECT_EQ(DescribeTransferSpec(s), "int8 head sym");
  s.set_scheme(v1::SCHEME_INT4);
  s.set_granularity(v1::GRANULARITY_PER_GROUP);
  s.set_asymmetric(true);
  s.mutable_selection()->set_mode(v1::SELECTION_BACK);
  s.mutable_selection()->set_proportion(0.5);
  for (uint32_t l : {0, 1, 2, 3, 8}) s.add_layers(l);
  s.mutable_entropy()->set_coder(v1::ENTROPY_CODER_ZSTD);
  EXPECT_EQ(DescribeTransferSpec(s),
            "int4 group32 asym, back 50%, layers 0-3,8, zstd");
  v1::TransferSpec bf16;
  bf16.set_scheme(v1::SCHEME_BF16);
  EXPECT_EQ(DescribeTransferSpec(bf16), "bf16");
}

TEST(AskTest, TablesCarryTheReport) {
  v1::AnswerResponse r;
  r.set_text("Oxygen, in the chloroplasts.");
  r.set_mode(v1::ANSWER_MODE_C2C);
  r.add_token_ids(1);
  v1::TransferReport* t = r.mutable_transfer();
  t->mutable_spec()->set_scheme(v1::SCHEME_INT4);
  t->set_raw_kv_bytes(1130496);
  t->set_serialized_bytes(285016);
  t->set_wire_bytes(285266);
  t->set_tokens_sent(2208);
  t->set_layers_sent(24);
  r.mutable_timings()->set_time_to_first_token_seconds(0.25);
  const std::string detail = FormatAnswer(r);
  EXPECT_THAT(detail, HasSubstr("Oxygen, in the chloroplasts."));
  EXPECT_THAT(detail, HasSubstr("1,130,496"));
  EXPECT_THAT(detail, HasSubstr("3.97x smaller than raw"));
  EXPECT_THAT(detail, HasSubstr("250.0"));

  AskResult a{"int4", {}, r};
  v1::AnswerResponse fallback;
  fallback.set_mode(v1::ANSWER_MODE_RECEIVER_ONLY);
  fallback.set_fell_back(true);
  fallback.set_fallback_reason("UNAVAILABLE: sharer down");
  AskResult b{"bf16", {}, fallback};
  const std::string table = FormatComparison({a, b});
  EXPECT_THAT(table, HasSubstr("3.96x"));
  EXPECT_THAT(table, HasSubstr("YES"));
  EXPECT_THAT(table, HasSubstr("bf16 fell back: UNAVAILABLE: sharer down"));
  EXPECT_THAT(ComparisonJson({a, b}), HasSubstr("\"label\": \"bf16\""));
  EXPECT_THAT(AnswerJson(r), HasSubstr("\"wire_bytes\": \"285266\""));
}

TEST(AskTest, SharerOnlyAnswersShowTheGenerateCallNotATransfer) {
  v1::AnswerResponse r;
  r.set_mode(v1::ANSWER_MODE_SHARER_ONLY);
  r.set_text("Carbon dioxide.");
  r.mutable_transfer()->set_serialized_bytes(118);
  r.mutable_transfer()->set_wire_bytes(123);
  r.mutable_timings()->set_sharer_generation_seconds(0.5);
  const std::string detail = FormatAnswer(r);
  EXPECT_THAT(detail, HasSubstr("Answer (sharer-only"));
  EXPECT_THAT(detail, HasSubstr("118 bytes serialized (GenerateResponse)"));
  EXPECT_THAT(detail, HasSubstr("sharer Generate call"));
  EXPECT_THAT(detail, Not(HasSubstr("received before the failure")));
}

}  // namespace
}  // namespace kvwire
