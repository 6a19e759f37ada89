#include "tools/eval/dataset.h"

#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace eval {
namespace {

using json = nlohmann::json;

absl::Status LineError(absl::string_view source, int line,
                       absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ":", line, ": ", message));
}

const char* TypeName(const json& j) { return j.type_name(); }

// Choices as [{"text", "label"}, ...] (AI2) or {"text": [...], "label":
// [...]} (HF). Only the texts matter; labels are checked for shape.
absl::Status ReadChoices(const json& choices, absl::string_view source,
                         int line, std::vector<std::string>* out) {
  if (choices.is_array()) {
    for (size_t i = 0; i < choices.size(); ++i) {
      const json& c = choices[i];
      if (!c.is_object() || !c.contains("text") || !c["text"].is_string()) {
        return LineError(source, line,
                         absl::StrCat("choices[", i,
                                      "] must be an object with a string "
                                      "\"text\""));
      }
      out->push_back(c["text"].get<std::string>());
    }
  } else if (choices.is_object()) {
    if (!choices.contains("text") || !choices["text"].is_array()) {
      return LineError(source, line,
                       "choices must have a \"text\" list (Hugging Face form)");
    }
    const json& text = choices["text"];
    for (size_t i = 0; i < text.size(); ++i) {
      if (!text[i].is_string()) {
        return LineError(source, line,
                         absl::StrCat("choices.text[", i, "] is a ",
                                      TypeName(text[i]), ", not a string"));
      }
      out->push_back(text[i].get<std::string>());
    }
    if (choices.contains("label")) {
      const json& label = choices["label"];
      if (!label.is_array() || label.size() != text.size()) {
        return LineError(source, line,
                         absl::StrCat("choices.label must be a list as long "
                                      "as choices.text (",
                                      text.size(), ")"));
      }
    }
  } else {
    return LineError(source, line,
                     absl::StrCat("choices is a ", TypeName(choices),
                                  ", expected a list of {text, label} or "
                                  "{text: [...], label: [...]}"));
  }
  if (out->size() < 2) {
    return LineError(
        source, line,
        absl::StrCat("an item needs at least 2 choices, got ", out->size()));
  }
  if (out->size() > 26) {
    return LineError(source, line,
                     absl::StrCat("too many choices (", out->size(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

const char* DatasetKindName(DatasetKind kind) {
  switch (kind) {
    case DatasetKind::kOpenBookQA:
      return "openbookqa";
    case DatasetKind::kArcChallenge:
      return "arc_challenge";
  }
  return "?";
}

absl::StatusOr<DatasetKind> ParseDatasetKind(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "openbookqa" || n == "obqa") return DatasetKind::kOpenBookQA;
  if (n == "arc_challenge" || n == "arc-challenge" || n == "arc_c" ||
      n == "arc-c" || n == "arc") {
    return DatasetKind::kArcChallenge;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dataset '", name, "' (openbookqa, arc_challenge)"));
}

const char* DatasetFormatName(DatasetFormat format) {
  return format == DatasetFormat::kAi2 ? "ai2" : "hf";
}

absl::StatusOr<Dataset> ParseDataset(absl::string_view jsonl, DatasetKind kind,
                                     absl::string_view source) {
  Dataset ds;
  ds.kind = kind;
  absl::flat_hash_map<std::string, int> seen;  // id -> line
  int line_no = 0;
  for (absl::string_view raw : absl::StrSplit(jsonl, '\n')) {
    ++line_no;
    absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty()) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      return LineError(source, line_no,
                       absl::StrCat("not valid JSON: ", e.what()));
    }
    if (!j.is_object()) {
      return LineError(
          source, line_no,
          absl::StrCat("expected a JSON object, got a ", TypeName(j)));
    }
    EvalItem item;
    item.line = line_no;
    // Question and choices, AI2 or HF form.
    const json* choices = nullptr;
    if (j.contains("question") && j["question"].is_object()) {
      const json& q = j["question"];
      item.format = DatasetFormat::kAi2;
      if (!q.contains("stem") || !q["stem"].is_string()) {
        return LineError(source, line_no,
                         "question.stem is missing or not a string");
      }
      item.question = q["stem"].get<std::string>();
      if (!q.contains("choices")) {
        return LineError(source, line_no, "question.choices is missing");
      }
      choices = &q["choices"];
    } else {
      item.format = DatasetFormat::kHuggingFace;
      if (j.contains("question_stem") && j["question_stem"].is_string()) {
        item.question = j["question_stem"].get<std::string>();
      } else if (j.contains("question") && j["question"].is_string()) {
        item.question = j["question"].get<std::string>();
      } else {
        return LineError(
            source, line_no,
            "no question: expected question.stem (AI2 form), question_stem "
            "(Hugging Face OpenBookQA) or question (Hugging Face ARC)");
      }
      if (!j.contains("choices")) {
        return LineError(source, line_no, "choices is missing");
      }
      choices = &j["choices"];
    }
    RETURN_IF_ERROR(ReadChoices(*choices, source, line_no, &item.choices));
    if (!j.contains("answerKey") || !j["answerKey"].is_string()) {
      return LineError(source, line_no, "answerKey is missing or not a string");
    }
    const std::string key(
        absl::StripAsciiWhitespace(j["answerKey"].get<std::string>()));
    if (j.contains("id") && j["id"].is_string()) {
      item.id = j["id"].get<std::string>();
    } else if (j.contains("id") && j["id"].is_number_integer()) {
      item.id = std::to_string(j["id"].get<int64_t>());
    } else {
      item.id = absl::StrCat("line", line_no);
    }
    auto [it, inserted] = seen.emplace(item.id, line_no);
    if (!inserted) {
      return LineError(source, line_no,
                       absl::StrCat("duplicate id '", item.id,
                                    "' (first on line ", it->second, ")"));
    }
    (item.format == DatasetFormat::kAi2 ? ds.ai2_lines : ds.hf_lines)++;
    if (key != "A" && key != "B" && key != "C" && key != "D") {
      ds.skipped.push_back(SkippedItem{item.id, key, line_no});
      continue;
    }
    item.answer = key;
    ds.items.push_back(std::move(item));
  }
  return ds;
}

absl::StatusOr<Dataset> LoadDataset(const std::string& path, DatasetKind kind) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  ASSIGN_OR_RETURN(Dataset ds, ParseDataset(text, kind, path));
  ds.path = path;
  if (ds.items.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no scored item (", ds.skipped.size(),
                     " skipped for an answerKey outside A-D)"));
  }
  return ds;
}

}  // namespace eval
}  // namespace kvwire
