// PromptPlan: the same-vocabulary plan, the aligned plan built from a
// ChatAlignment, and the validation every session runs.
#include "common/engine/prompt_plan.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::ElementsAre;

TEST(PromptPlanTest, SameVocabularyPlanFusesEveryTokenButTheLast) {
  const PromptPlan plan = SameVocabularyPlan({5, 6, 7, 8});
  EXPECT_THAT(plan.receiver_ids, ElementsAre(5, 6, 7, 8));
  EXPECT_THAT(plan.sharer_ids, ElementsAre(5, 6, 7));
  EXPECT_THAT(plan.fuse_into, ElementsAre(0, 1, 2));
  EXPECT_THAT(plan.stage_ends, ElementsAre(3));
  EXPECT_TRUE(plan.receiver_positions.empty());
  EXPECT_TRUE(plan.sharer_positions.empty());
  EXPECT_TRUE(ValidatePromptPlan(plan).ok());
}

// template (receiver 2 tokens, sharer 4) | message (3) | template (receiver 3,
// sharer 1) | message (2) | template (receiver 4, sharer 2).
ChatAlignment TwoMessageAlignment() {
  ChatAlignment a;
  const int P = 0;  // Pad id on both sides.
  a.receiver_ids = {1, 2, P, P, 10, 11, 12, 3, 4, 5, 20, 21, 6, 7, 8, 9};
  a.sharer_ids = {31, 32, 33, 34, 40, 41, 42, 35, P, P, 50, 51, 36, 37, P, P};
  a.receiver_padding = {0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  a.sharer_padding = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1};
  a.message_mask = {0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0};
  a.sections = {{false, 0, 4},
                {true, 4, 7},
                {false, 7, 10},
                {true, 10, 12},
                {false, 12, 16}};
  return a;
}

TEST(PromptPlanTest, AlignedPlanDropsPaddingAndKeepsAlignedPositions) {
  const PromptPlan plan = AlignedPromptPlan(TwoMessageAlignment());
  EXPECT_THAT(plan.receiver_ids,
              ElementsAre(1, 2, 10, 11, 12, 3, 4, 5, 20, 21, 6, 7, 8, 9));
  EXPECT_THAT(plan.receiver_positions,
              ElementsAre(0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  // The sharer never runs the last section.
  EXPECT_THAT(plan.sharer_ids,
              ElementsAre(31, 32, 33, 34, 40, 41, 42, 35, 50, 51));
  EXPECT_THAT(plan.sharer_positions,
              ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 10, 11));
  // Message tokens fuse into their receiver counterparts.
  EXPECT_THAT(plan.fuse_into, ElementsAre(-1, -1, -1, -1, 2, 3, 4, -1, 8, 9));
  // One stage per message section: each fused before what follows runs.
  EXPECT_THAT(plan.stage_ends, ElementsAre(5, 10));
  EXPECT_TRUE(ValidatePromptPlan(plan).ok()) << ValidatePromptPlan(plan);
  EXPECT_THAT(FusedSharerIndices(plan), ElementsAre(4, 5, 6, 8, 9));
}

TEST(PromptPlanTest, AllTokenSelectionBecomesTheFusedTokensWhenAligned) {
  const PromptPlan plan = AlignedPromptPlan(TwoMessageAlignment());
  v1::TransferSpec spec;
  RestrictSelectionToFusedTokens(plan, spec);
  EXPECT_EQ(spec.selection().mode(), v1::SELECTION_EXPLICIT);
  EXPECT_THAT(spec.selection().indices(), ElementsAre(4, 5, 6, 8, 9));

  v1::TransferSpec front;
  front.mutable_selection()->set_mode(v1::SELECTION_FRONT);
  front.mutable_selection()->set_proportion(0.5);
  RestrictSelectionToFusedTokens(plan, front);
  EXPECT_EQ(front.selection().mode(), v1::SELECTION_FRONT);

  v1::TransferSpec same;
  RestrictSelectionToFusedTokens(SameVocabularyPlan({1, 2, 3}), same);
  EXPECT_EQ(same.selection().mode(), v1::SELECTION_UNSPECIFIED);
}

TEST(PromptPlanTest, ValidationNamesTheInconsistency) {
  PromptPlan plan = SameVocabularyPlan({1, 2, 3, 4});
  plan.fuse_into = {0, 2, 1};
  EXPECT_THAT(std::string(ValidatePromptPlan(plan).message()),
              ::testing::HasSubstr("increasing receiver tokens"));

  plan = SameVocabularyPlan({1, 2, 3, 4});
  plan.sharer_positions = {0, 2};
  EXPECT_THAT(std::string(ValidatePromptPlan(plan).message()),
              ::testing::HasSubstr("one per token"));

  plan = SameVocabularyPlan({1, 2, 3, 4});
  plan.receiver_positions = {0, 1, 1, 2};
  EXPECT_THAT(std::string(ValidatePromptPlan(plan).message()),
              ::testing::HasSubstr("increase strictly"));

  plan = SameVocabularyPlan({1, 2, 3, 4});
  plan.stage_ends = {2};  // Token 2 is fused after its stage.
  EXPECT_THAT(std::string(ValidatePromptPlan(plan).message()),
              ::testing::HasSubstr("stage ends"));

  plan = SameVocabularyPlan({1, 2, 3, 4});
  plan.fuse_into = {0, 1, 3};  // The last receiver token is never fused.
  EXPECT_FALSE(ValidatePromptPlan(plan).ok());
  EXPECT_EQ(ValidatePromptPlan(PromptPlan()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvwire
