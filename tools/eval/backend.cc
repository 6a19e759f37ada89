#include "tools/eval/backend.h"

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace kvwire {
namespace eval {

const char* EvalMethodName(EvalMethod method) {
  switch (method) {
    case EvalMethod::kReceiverOnly:
      return "receiver-only";
    case EvalMethod::kSharerOnly:
      return "sharer-only";
    case EvalMethod::kTextToText:
      return "text-to-text";
    case EvalMethod::kC2C:
      return "c2c";
  }
  return "?";
}

absl::StatusOr<EvalMethod> ParseEvalMethod(absl::string_view name) {
  const std::string n =
      absl::StrReplaceAll(absl::AsciiStrToLower(name), {{"_", "-"}});
  if (n == "receiver-only" || n == "receiver") return EvalMethod::kReceiverOnly;
  if (n == "sharer-only" || n == "sharer") return EvalMethod::kSharerOnly;
  if (n == "text-to-text" || n == "t2t") return EvalMethod::kTextToText;
  if (n == "c2c") return EvalMethod::kC2C;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown method '", name,
                   "' (receiver-only, sharer-only, text-to-text, c2c)"));
}

bool IsInProcessSelectionStrategy(absl::string_view name) {
  return name == "proj_vnorm_topk" || name == "delta_proj_vnorm_topk" ||
         name == "receiver_attention" || name == "receiver_vnorm";
}

bool PairOverride::empty() const {
  return sharer.empty() && sharer_dir.empty() && sharer_tokenizer_dir.empty() &&
         fuser_dir.empty() && !no_fuser && token_alignment.empty() &&
         alignment_strategy.empty();
}

std::string PairOverride::Describe() const {
  std::vector<std::string> parts;
  if (!sharer.empty() || !sharer_dir.empty()) {
    parts.push_back(absl::StrCat("sharer=", sharer.empty() ? "?" : sharer,
                                 sharer_dir.empty() ? "" : " (", sharer_dir,
                                 sharer_dir.empty() ? "" : ")"));
  }
  if (!sharer_tokenizer_dir.empty()) {
    parts.push_back(absl::StrCat("sharer_tokenizer=", sharer_tokenizer_dir));
  }
  if (no_fuser) {
    parts.push_back("fuser=none");
  } else if (!fuser_dir.empty()) {
    parts.push_back(absl::StrCat("fuser=", fuser_dir));
  }
  if (!token_alignment.empty() || !alignment_strategy.empty()) {
    parts.push_back(absl::StrCat(
        "token_alignment=", token_alignment.empty() ? "auto" : token_alignment,
        alignment_strategy.empty() ? "" : "/", alignment_strategy));
  }
  return absl::StrJoin(parts, " ");
}

bool PairOverride::operator==(const PairOverride& o) const {
  return sharer == o.sharer && sharer_dir == o.sharer_dir &&
         sharer_tokenizer_dir == o.sharer_tokenizer_dir &&
         fuser_dir == o.fuser_dir && no_fuser == o.no_fuser &&
         token_alignment == o.token_alignment &&
         alignment_strategy == o.alignment_strategy;
}

absl::Status AnswerBackend::CheckPairSupported(const PairOverride& pair) const {
  if (pair.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("the ", kind(),
                   " backend cannot change the model pair per "
                   "run (",
                   pair.Describe(), ")"));
}

absl::Status AnswerBackend::UsePair(const PairOverride& pair) {
  return CheckPairSupported(pair);
}

}  // namespace eval
}  // namespace kvwire
