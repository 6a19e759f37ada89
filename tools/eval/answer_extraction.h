// The C2C reference evaluator's answer extraction
// (rosetta/utils/evaluate.py::extract_answer_from_content, c2c-spec §5),
// reproduced rule for rule, quirks included. On the stripped output:
//
//  1. Patterns, in the reference's order, searched case-insensitively:
//     "Answer:", "Your answer:", "The answer is", "Correct answer is",
//     "Correct answer is:", "Correct answer:", the Swahili "Jibu lako:",
//     "Jibu:", "Jibu sahihi:", then "Response:", "Choice:", "Option:" (each
//     followed by \s*(.*), where . stops at a newline). For the first
//     occurrence of a pattern, the first *upper-case* A, B, C or D anywhere
//     in the rest of that line is the answer ("... is the Darwin option" ->
//     "D"); a pattern whose remainder has none falls through to the next.
//  2. A standalone letter (either case): at the end of the text with
//     optional punctuation, then one followed by punctuation and a space,
//     then one after whitespace at the end; the last match of the first
//     pattern that matches wins, upper-cased. A pattern is skipped when the
//     text contains a math sign (+ - * / = ^ mod sqrt sin cos tan ...) and no
//     answer word (answer, choice, option, response, correct, jibu, sahihi).
//  3. The last \b[A-Da-d]\b, upper-cased; with math signs and no answer word
//     the result is "no answer" (step 4 is not tried).
//  4. The last upper-case A-D character anywhere.
//
// Regexes run on PCRE2 with UTF + UCP, so \b, \s and case folding are
// Unicode-aware as in Python 3's re.
#ifndef KVWIRE_TOOLS_EVAL_ANSWER_EXTRACTION_H_
#define KVWIRE_TOOLS_EVAL_ANSWER_EXTRACTION_H_

#include <string>

#include "absl/strings/string_view.h"

namespace kvwire {
namespace eval {

struct Extraction {
  std::string letter;  // "A".."D", or "" (the reference's None).
  int stage = 0;       // 1-4 as above; 0 when nothing was found.
};

Extraction ExtractAnswerDetailed(absl::string_view text);
inline std::string ExtractAnswer(absl::string_view text) {
  return ExtractAnswerDetailed(text).letter;
}

// Python's str.strip() (Unicode White_Space plus \x1c-\x1f) on UTF-8.
absl::string_view PyStrip(absl::string_view text);

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_ANSWER_EXTRACTION_H_
