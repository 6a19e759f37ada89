#include "tools/eval/dataset.h"

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/tools/eval/test_util.h"

namespace kvwire {
namespace eval {
namespace {

using ::kvwire::eval::testing::FixturePath;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(DatasetTest, ParsesKindNames) {
  EXPECT_EQ(*ParseDatasetKind("openbookqa"), DatasetKind::kOpenBookQA);
  EXPECT_EQ(*ParseDatasetKind("OBQA"), DatasetKind::kOpenBookQA);
  EXPECT_EQ(*ParseDatasetKind("arc_challenge"), DatasetKind::kArcChallenge);
  EXPECT_EQ(*ParseDatasetKind("ARC-C"), DatasetKind::kArcChallenge);
  EXPECT_EQ(ParseDatasetKind("mmlu").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_STREQ(DatasetKindName(DatasetKind::kArcChallenge), "arc_challenge");
}

TEST(DatasetTest, LoadsOpenBookQaInTheAi2Form) {
  auto ds =
      LoadDataset(FixturePath("obqa_ai2.jsonl"), DatasetKind::kOpenBookQA);
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->items.size(), 6u);
  EXPECT_TRUE(ds->skipped.empty());
  EXPECT_EQ(ds->ai2_lines, 6);
  EXPECT_EQ(ds->hf_lines, 0);
  const EvalItem& first = ds->items[0];
  EXPECT_EQ(first.id, "fx-obqa-1");
  EXPECT_EQ(first.question,
            "A plant placed in a dark closet for weeks will most likely");
  EXPECT_THAT(first.choices,
              ElementsAre("grow greener leaves", "lose its green color",
                          "produce more flowers", "double in height"));
  EXPECT_EQ(first.answer, "B");
  EXPECT_EQ(first.line, 1);
  EXPECT_EQ(first.format, DatasetFormat::kAi2);
  // A blank line after item 3 is skipped but counted in line numbers.
  EXPECT_EQ(ds->items[3].line, 5);
  // Quotes inside the question survive.
  EXPECT_THAT(ds->items[5].question, HasSubstr("\"Food\" is"));
}

TEST(DatasetTest, BothOpenBookQaFormsGiveTheSameItems) {
  auto ai2 =
      LoadDataset(FixturePath("obqa_ai2.jsonl"), DatasetKind::kOpenBookQA);
  auto hf = LoadDataset(FixturePath("obqa_hf.jsonl"), DatasetKind::kOpenBookQA);
  ASSERT_TRUE(ai2.ok()) << ai2.status();
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->hf_lines, 6);
  ASSERT_EQ(ai2->items.size(), hf->items.size());
  for (size_t i = 0; i < ai2->items.size(); ++i) {
    EXPECT_EQ(ai2->items[i].id, hf->items[i].id);
    EXPECT_EQ(ai2->items[i].question, hf->items[i].question);
    EXPECT_EQ(ai2->items[i].choices, hf->items[i].choices);
    EXPECT_EQ(ai2->items[i].answer, hf->items[i].answer);
    EXPECT_EQ(hf->items[i].format, DatasetFormat::kHuggingFace);
  }
}

TEST(DatasetTest, ArcSkipsAndCountsKeysOutsideAToD) {
  for (const char* file : {"arc_ai2.jsonl", "arc_hf.jsonl"}) {
    SCOPED_TRACE(file);
    auto ds = LoadDataset(FixturePath(file), DatasetKind::kArcChallenge);
    ASSERT_TRUE(ds.ok()) << ds.status();
    ASSERT_EQ(ds->items.size(), 5u);
    ASSERT_EQ(ds->skipped.size(), 2u);
    // A numeric key ("4", labels 1-4) and "E" (five choices).
    EXPECT_EQ(ds->skipped[0].id, "fx-arc-4");
    EXPECT_EQ(ds->skipped[0].answer_key, "4");
    EXPECT_EQ(ds->skipped[0].line, 4);
    EXPECT_EQ(ds->skipped[1].id, "fx-arc-6");
    EXPECT_EQ(ds->skipped[1].answer_key, "E");
    // Three and five choices are kept and relabelled by position.
    EXPECT_EQ(ds->items[2].id, "fx-arc-3");
    EXPECT_EQ(ds->items[2].choices.size(), 3u);
    EXPECT_EQ(ds->items[2].answer, "C");
    EXPECT_EQ(ds->items[3].id, "fx-arc-5");
    EXPECT_EQ(ds->items[3].choices.size(), 5u);
    EXPECT_EQ(ds->items[3].choices[4], "cloud cover");
  }
}

TEST(DatasetTest, MixedFormsInOneFile) {
  const std::string text =
      R"({"id": "a", "question": {"stem": "Q1", "choices": [{"text": "x", "label": "A"}, {"text": "y", "label": "B"}]}, "answerKey": "A"})"
      "\n"
      R"({"id": "b", "question_stem": "Q2", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": " B "})"
      "\n";
  auto ds = ParseDataset(text, DatasetKind::kOpenBookQA, "mixed");
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->items.size(), 2u);
  EXPECT_EQ(ds->items[1].answer, "B");  // Whitespace around the key.
  EXPECT_EQ(ds->ai2_lines, 1);
  EXPECT_EQ(ds->hf_lines, 1);
}

TEST(DatasetTest, MissingIdFallsBackToTheLine) {
  auto ds = ParseDataset(
      R"({"question": "Q", "choices": {"text": ["x", "y"]}, "answerKey": "A"})",
      DatasetKind::kArcChallenge, "f");
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->items[0].id, "line1");
}

struct BadCase {
  const char* text;
  const char* message;
};

TEST(DatasetTest, MalformedLinesNameFileAndLine) {
  const std::string good =
      R"({"id": "ok", "question_stem": "Q", "choices": {"text": ["x", "y"]}, "answerKey": "A"})";
  const BadCase cases[] = {
      {"{not json", "data.jsonl:2: not valid JSON"},
      {"[1, 2]", "data.jsonl:2: expected a JSON object, got a array"},
      {R"({"id": "x", "choices": {"text": ["a", "b"]}, "answerKey": "A"})",
       "data.jsonl:2: no question"},
      {R"({"id": "x", "question": {"choices": []}, "answerKey": "A"})",
       "data.jsonl:2: question.stem is missing"},
      {R"({"id": "x", "question_stem": "Q", "answerKey": "A"})",
       "data.jsonl:2: choices is missing"},
      {R"({"id": "x", "question_stem": "Q", "choices": "abc", "answerKey": "A"})",
       "data.jsonl:2: choices is a string"},
      {R"({"id": "x", "question_stem": "Q", "choices": {"text": ["a", 3]}, "answerKey": "A"})",
       "data.jsonl:2: choices.text[1] is a number"},
      {R"({"id": "x", "question_stem": "Q", "choices": {"text": ["a"]}, "answerKey": "A"})",
       "data.jsonl:2: an item needs at least 2 choices"},
      {R"({"id": "x", "question_stem": "Q", "choices": {"text": ["a", "b"], "label": ["A"]}, "answerKey": "A"})",
       "data.jsonl:2: choices.label must be a list as long"},
      {R"({"id": "x", "question_stem": "Q", "choices": {"text": ["a", "b"]}})",
       "data.jsonl:2: answerKey is missing"},
      {R"({"id": "x", "question": {"stem": "Q", "choices": [{"label": "A"}]}, "answerKey": "A"})",
       "data.jsonl:2: choices[0] must be an object with a string \"text\""},
      {R"({"id": "ok", "question_stem": "Q", "choices": {"text": ["a", "b"]}, "answerKey": "A"})",
       "data.jsonl:2: duplicate id 'ok' (first on line 1)"},
  };
  for (const BadCase& c : cases) {
    auto ds = ParseDataset(good + "\n" + c.text + "\n",
                           DatasetKind::kOpenBookQA, "data.jsonl");
    ASSERT_FALSE(ds.ok()) << c.text;
    EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(ds.status().message(), HasSubstr(c.message)) << c.text;
  }
}

TEST(DatasetTest, FileErrors) {
  EXPECT_EQ(LoadDataset("/nonexistent/x.jsonl", DatasetKind::kOpenBookQA)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  auto empty = ParseDataset("\n\n", DatasetKind::kOpenBookQA, "e");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->items.empty());
}

}  // namespace
}  // namespace eval
}  // namespace kvwire
