// Multiple-choice evaluation datasets from local JSONL files: OpenBookQA and
// ARC-Challenge, each in either form users are likely to have:
//
//  * AI2's original release (OpenBookQA-V1-Sep2018/Data/Main/test.jsonl,
//    ARC-V1-Feb2018/ARC-Challenge/ARC-Challenge-Test.jsonl):
//      {"id": "7-980", "question": {"stem": "...", "choices":
//        [{"text": "...", "label": "A"}, ...]}, "answerKey": "D"}
//  * the JSONL that Hugging Face `datasets` writes with
//    `load_dataset(...)["test"].to_json(path)`:
//      OpenBookQA: {"id", "question_stem", "choices": {"text": [...],
//                   "label": [...]}, "answerKey"}
//      ARC:        {"id", "question", "choices": {"text": [...],
//                   "label": [...]}, "answerKey"}
//
// The form is detected per line (a file may even mix them). As the C2C
// reference evaluator does (c2c-spec §5), the choices are relabelled A, B, C,
// ... by their position, the gold answer is `answerKey` as written, and items
// whose `answerKey` is not one of A-D (ARC's numeric keys "1"-"4", or "E")
// are skipped and counted: ARC-Challenge test has 1172 rows, 1150 scored.
// The question and choice texts are used verbatim (no trimming).
//
// Malformed lines are errors naming `path:line`. Blank lines are ignored.
#ifndef KVWIRE_TOOLS_EVAL_DATASET_H_
#define KVWIRE_TOOLS_EVAL_DATASET_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {
namespace eval {

enum class DatasetKind { kOpenBookQA, kArcChallenge };

// "openbookqa", "arc_challenge".
const char* DatasetKindName(DatasetKind kind);
// Also accepts "obqa", "arc-challenge", "arc_c", "arc-c", "arc" (any case).
absl::StatusOr<DatasetKind> ParseDatasetKind(absl::string_view name);

enum class DatasetFormat { kAi2, kHuggingFace };
const char* DatasetFormatName(DatasetFormat format);  // "ai2", "hf"

struct EvalItem {
  std::string id;        // The file's `id` (else "line<N>").
  std::string question;  // question.stem / question_stem / question.
  // In file order; the prompt labels them A, B, C, ... by position.
  std::vector<std::string> choices;
  std::string answer;  // Gold letter, one of A-D.
  int line = 0;        // 1-based line in the file.
  DatasetFormat format = DatasetFormat::kAi2;
};

struct SkippedItem {
  std::string id;
  std::string answer_key;  // As written in the file.
  int line = 0;
};

struct Dataset {
  DatasetKind kind = DatasetKind::kOpenBookQA;
  std::string path;                  // Where it was read from ("" for text).
  std::vector<EvalItem> items;       // Scored items, in file order.
  std::vector<SkippedItem> skipped;  // answerKey not in A-D.
  int ai2_lines = 0;                 // Lines in each form.
  int hf_lines = 0;
};

// Parses JSONL text; `source` names it in error messages ("path:line: ...").
// INVALID_ARGUMENT for a line that is not a JSON object, lacks the question,
// choices (at least two, all strings) or answerKey, or repeats an id.
absl::StatusOr<Dataset> ParseDataset(absl::string_view jsonl, DatasetKind kind,
                                     absl::string_view source);

// Reads and parses a file. NOT_FOUND / UNAVAILABLE for I/O errors; an empty
// dataset (no scored item) is INVALID_ARGUMENT.
absl::StatusOr<Dataset> LoadDataset(const std::string& path, DatasetKind kind);

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_DATASET_H_
