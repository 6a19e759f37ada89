#include "tools/eval/backend.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
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

}  // namespace eval
}  // namespace kvwire
