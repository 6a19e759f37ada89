// The answer extractor against a table of tricky outputs. The expected
// letters and stages were produced by running the reference's Python
// function (rosetta/utils/evaluate.py::extract_answer_from_content, with a
// stage counter added) on the same strings.
#include "tools/eval/answer_extraction.h"

#include <string>

#include "gtest/gtest.h"

namespace kvwire {
namespace eval {
namespace {

struct Case {
  const char* text;
  const char* letter;
  int stage;
};

// clang-format off
const Case kCases[] = {
    {"The correct answer is B.", "B", 1},
    {"The correct answer is A/B/C/D.", "A", 1},  // the instruction echoed: first upper-case letter
    {"B", "B", 2},
    {"b", "B", 2},
    {"", "", 0},
    {"   \n\t ", "", 0},
    {"Answer: c", "C", 2},
    {"The correct answer is the one about Darwin.", "D", 1},  // quirk: the D of Darwin
    {"I think it's (C) because it is warm.", "C", 2},
    {"A. 5 + 3 = 8", "", 0},  // math signs and no answer word: no answer
    {"Answer: 5 + 3 = 8, so A", "A", 1},
    {"The answer is\nB", "B", 1},
    {"the correct answer is: D", "D", 1},
    {"Option B is correct", "B", 3},  // no colon after Option: the last bare letter
    {"All of the above", "A", 4},  // step 4: the A of All
    {"I cannot decide", "", 0},
    {"The correct answer is B. The correct answer is C.", "B", 1},
    {"R\xc3\xa9"  "ponse : C", "C", 2},
    {"<think>\n\n</think>\n\nThe correct answer is C", "C", 1},  // Qwen3's empty think block is not a special token
    {"x = a + b", "", 0},  // math, no answer word
    {"Answer: a + b = c, so the choice is B", "B", 1},
    {"d", "D", 2},
    {"It's A, B, or C", "C", 2},
    {"ANSWER: (d)", "D", 2},
    {"\xe3\x80\x80"  "B\xc2\xa0", "B", 2},
    {"Based on the data, option two", "B", 4},  // step 4: the B of Based
    {"The correct answer is", "", 0},  // the prompt's tail echoed: nothing
    {"A. first B. second thing", "B", 2},
    {"Jibu: C", "C", 1},
    {"Choice: the second one, B", "B", 1},
    {"correct answer: none of these, but maybe D", "D", 1},
    {"The correct answer is c", "C", 2},
    {"the answer is a", "A", 2},
    {"Answer:\n\nB", "B", 1},
    {"The correct answer is B\nAnswer: C", "C", 1},  // "Answer:" is tried before "correct answer is"
    {"well-known fact: a", "", 0},  // a hyphen counts as a math sign
    {"1/2 of them; c", "", 0},
    {"It is B-type", "", 0},  // hyphen again: step 3 finds B, then gives up
    {"The answer is 42", "", 0},
    {"The correct answer is \xc3\xa4"  ", then B", "B", 1},
    {"D)", "D", 2},
    {"The correct answer is **B**", "B", 1},
    {"A\nB\nC", "C", 2},
    {"Final: b)", "B", 2},
    {"Response: \xc3\xa9"  " option C", "C", 1},
    {"so it is c.", "C", 2},
    {"mostly a. Not b.", "B", 2},
};
// clang-format on

TEST(AnswerExtractionTest, MatchesTheReferenceOnTrickyOutputs) {
  for (const Case& c : kCases) {
    const Extraction e = ExtractAnswerDetailed(c.text);
    EXPECT_EQ(e.letter, c.letter) << "text: \"" << c.text << "\"";
    EXPECT_EQ(e.stage, c.stage) << "text: \"" << c.text << "\"";
    EXPECT_EQ(ExtractAnswer(c.text), c.letter);
  }
}

TEST(AnswerExtractionTest, PyStripRemovesUnicodeWhitespace) {
  EXPECT_EQ(PyStrip("  a b \n"), "a b");
  EXPECT_EQ(PyStrip("\xe3\x80\x80x\xc2\xa0"), "x");  // U+3000, U+00A0.
  EXPECT_EQ(PyStrip("\x1cx\x1f"), "x");              // Python's extras.
  EXPECT_EQ(PyStrip("\xc3\xa9"), "\xc3\xa9");        // Not space.
  EXPECT_EQ(PyStrip(" \t "), "");
}

TEST(AnswerExtractionTest, InvalidUtf8IsRepairedNotRejected) {
  EXPECT_EQ(ExtractAnswer("The correct answer is \xff C"), "C");
  EXPECT_EQ(ExtractAnswer("\xc3"), "");
}

}  // namespace
}  // namespace eval
}  // namespace kvwire
