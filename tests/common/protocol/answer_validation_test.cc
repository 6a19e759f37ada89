// Unit tests of AnswerRequest validation and the receiver's name parsers.
#include "common/protocol/answer_validation.h"

#include "common/engine/receiver_engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

v1::AnswerRequest Valid() {
  v1::AnswerRequest r;
  r.set_request_id("id");
  r.set_question("Why is the sky blue?");
  return r;
}

void ExpectError(const v1::AnswerRequest& r, absl::StatusCode code,
                 const std::string& message, AnswerLimits limits = {}) {
  const absl::Status st = ValidateAnswerRequest(r, limits);
  EXPECT_EQ(st.code(), code) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr(message));
}

TEST(AnswerValidationTest, AcceptsQuestionsAndChats) {
  EXPECT_TRUE(ValidateAnswerRequest(Valid(), {}).ok());
  v1::AnswerRequest chat;
  chat.add_messages()->set_role("system");
  v1::ChatMessage* m = chat.add_messages();
  m->set_role("user");
  m->set_content("hi");
  chat.set_mode(v1::ANSWER_MODE_RECEIVER_ONLY);
  EXPECT_TRUE(ValidateAnswerRequest(chat, {}).ok());
}

TEST(AnswerValidationTest, RejectsMalformedRequests) {
  v1::AnswerRequest r = Valid();
  r.clear_question();
  ExpectError(r, absl::StatusCode::kInvalidArgument, "no question");

  r = Valid();
  r.add_messages()->set_role("user");
  ExpectError(r, absl::StatusCode::kInvalidArgument, "not both");

  r = Valid();
  r.clear_question();
  r.add_messages()->set_role("system");
  ExpectError(r, absl::StatusCode::kInvalidArgument, "no user message");

  r = Valid();
  r.clear_question();
  r.add_messages()->set_role("tool");
  ExpectError(r, absl::StatusCode::kInvalidArgument, "'tool'");

  r = Valid();
  r.set_question(std::string(101, 'q'));
  AnswerLimits small;
  small.max_question_bytes = 100;
  ExpectError(r, absl::StatusCode::kInvalidArgument, "101 bytes; at most 100",
              small);

  r = Valid();
  r.set_request_id(std::string(65, 'r'));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "request_id");

  r = Valid();
  r.set_mode(static_cast<v1::AnswerMode>(42));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "answer mode 42");

  r = Valid();
  r.set_fallback(static_cast<v1::FallbackPolicy>(9));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "fallback policy 9");

  r = Valid();
  r.mutable_generation()->set_max_new_tokens(5000);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "over the limit");

  r = Valid();
  r.mutable_generation()->set_temperature(-1);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "temperature");

  r = Valid();
  r.mutable_generation()->set_top_p(1.5);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "top_p");
}

TEST(AnswerValidationTest, RejectsUnknownSpecEnums) {
  v1::AnswerRequest r = Valid();
  r.mutable_spec()->set_scheme(static_cast<v1::Scheme>(99));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "unknown scheme 99");
  r = Valid();
  r.mutable_spec()->add_layer_overrides()->set_scheme(
      static_cast<v1::Scheme>(77));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "layer_overrides[0]");
  r = Valid();
  r.mutable_spec()->set_granularity(static_cast<v1::Granularity>(50));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "granularity");
  r = Valid();
  r.mutable_spec()->mutable_selection()->set_mode(
      static_cast<v1::SelectionMode>(50));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "selection mode");
  r = Valid();
  r.mutable_spec()->mutable_entropy()->set_coder(
      static_cast<v1::EntropyCoder>(50));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "entropy coder");
  r = Valid();
  r.mutable_spec()->mutable_selection()->set_proportion(-0.5);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "proportion");
}

TEST(AnswerValidationTest, TextToTextIsAccepted) {
  v1::AnswerRequest r = Valid();
  r.set_mode(v1::ANSWER_MODE_TEXT_TO_TEXT);
  EXPECT_TRUE(ValidateAnswerRequest(r, {}).ok());
}

TEST(AnswerValidationTest, ReceiverGuidedSelectionNeedsC2C) {
  v1::AnswerRequest r = Valid();
  r.mutable_spec()->mutable_selection()->set_mode(v1::SELECTION_EXPLICIT);
  r.mutable_spec()->mutable_selection()->set_proportion(0.5);
  EXPECT_TRUE(IsReceiverGuided(r.spec()));
  EXPECT_TRUE(ValidateAnswerRequest(r, {}).ok());
  r.set_mode(v1::ANSWER_MODE_RECEIVER_ONLY);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "needs C2C");
  r.mutable_spec()->mutable_selection()->add_indices(3);
  EXPECT_FALSE(IsReceiverGuided(r.spec()));
}

TEST(AnswerValidationTest, NamesRoundTrip) {
  v1::AnswerMode mode;
  ASSERT_TRUE(ParseAnswerMode("receiver_only", &mode).ok());
  EXPECT_EQ(mode, v1::ANSWER_MODE_RECEIVER_ONLY);
  EXPECT_EQ(AnswerModeName(mode), "receiver-only");
  ASSERT_TRUE(ParseAnswerMode("sharer_only", &mode).ok());
  EXPECT_EQ(mode, v1::ANSWER_MODE_SHARER_ONLY);
  EXPECT_EQ(AnswerModeName(mode), "sharer-only");
  EXPECT_FALSE(ParseAnswerMode("sharer", &mode).ok());
  v1::FallbackPolicy policy;
  ASSERT_TRUE(ParseFallbackPolicy("fail", &policy).ok());
  EXPECT_EQ(policy, v1::FALLBACK_POLICY_FAIL);
  ASSERT_TRUE(ParseFallbackPolicy("", &policy).ok());
  EXPECT_EQ(policy, v1::FALLBACK_POLICY_UNSPECIFIED);
}

}  // namespace
}  // namespace kvwire
