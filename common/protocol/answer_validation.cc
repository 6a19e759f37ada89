// AnswerRequest validation.
#include "common/protocol/answer_validation.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/codec/scheme.h"
#include "common/protocol/generation_params.h"

namespace kvwire {
namespace {

constexpr size_t kMaxRequestIdBytes = 64;

absl::Status CheckSpecEnums(const v1::TransferSpec& spec) {
  if (!v1::Scheme_IsValid(spec.scheme())) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.scheme: unknown scheme ", spec.scheme()));
  }
  for (int i = 0; i < spec.layer_overrides_size(); ++i) {
    if (!v1::Scheme_IsValid(spec.layer_overrides(i).scheme())) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.layer_overrides[", i, "].scheme: unknown scheme ",
                       spec.layer_overrides(i).scheme()));
    }
  }
  if (!v1::Granularity_IsValid(spec.granularity())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.granularity: unknown granularity ", spec.granularity()));
  }
  if (!v1::SelectionMode_IsValid(spec.selection().mode())) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.selection.mode: unknown selection mode ",
                     spec.selection().mode()));
  }
  if (!v1::EntropyCoder_IsValid(spec.entropy().coder())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.entropy.coder: unknown entropy coder ", spec.entropy().coder()));
  }
  const double p = spec.selection().proportion();
  if (!std::isfinite(p) || p < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.selection.proportion must be >= 0, got ", p));
  }
  return absl::OkStatus();
}

}  // namespace

bool IsReceiverGuided(const v1::TransferSpec& spec) {
  return spec.selection().mode() == v1::SELECTION_EXPLICIT &&
         spec.selection().indices_size() == 0;
}

v1::AnswerMode EffectiveMode(const v1::AnswerRequest& request) {
  return request.mode() == v1::ANSWER_MODE_UNSPECIFIED ? v1::ANSWER_MODE_C2C
                                                       : request.mode();
}

absl::Status ValidateAnswerRequest(const v1::AnswerRequest& request,
                                   const AnswerLimits& limits) {
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id has ", request.request_id().size(),
                     " bytes; at most ", kMaxRequestIdBytes));
  }
  const bool has_question = !request.question().empty();
  if (has_question && request.messages_size() > 0) {
    return absl::InvalidArgumentError(
        "give either question or messages, not both");
  }
  if (!has_question && request.messages_size() == 0) {
    return absl::InvalidArgumentError(
        "the request has no question (an empty question or no messages)");
  }
  int64_t text_bytes = static_cast<int64_t>(request.question().size());
  if (request.messages_size() > limits.max_messages) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request has ", request.messages_size(),
                     " messages; at most ", limits.max_messages));
  }
  bool has_user = has_question;
  for (int i = 0; i < request.messages_size(); ++i) {
    const v1::ChatMessage& m = request.messages(i);
    if (m.role() != "system" && m.role() != "user" && m.role() != "assistant") {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].role '", m.role(),
                       "' is not system, user or assistant"));
    }
    has_user |= m.role() == "user";
    text_bytes += static_cast<int64_t>(m.content().size());
  }
  if (!has_user) {
    return absl::InvalidArgumentError("the messages have no user message");
  }
  if (text_bytes > limits.max_question_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the question has ", text_bytes, " bytes; at most ",
                     limits.max_question_bytes));
  }
  if (!v1::AnswerMode_IsValid(request.mode())) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown answer mode ", request.mode()));
  }
  if (!v1::FallbackPolicy_IsValid(request.fallback())) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown fallback policy ", request.fallback()));
  }
  absl::Status st =
      ValidateGenerationParams(request.generation(), limits.max_new_tokens);
  if (!st.ok()) return st;
  st = CheckSpecEnums(request.spec());
  if (!st.ok()) return st;
  const v1::AnswerMode mode = EffectiveMode(request);
  if (IsReceiverGuided(request.spec()) && mode != v1::ANSWER_MODE_C2C) {
    return absl::InvalidArgumentError(
        "receiver-guided selection (SELECTION_EXPLICIT without indices) "
        "needs C2C mode");
  }
  return absl::OkStatus();
}

std::string DescribeTransferSpec(const v1::TransferSpec& spec) {
  const v1::Scheme scheme =
      spec.scheme() == v1::SCHEME_UNSPECIFIED ? v1::SCHEME_INT8 : spec.scheme();
  std::string out = SchemeName(scheme);
  if (!IsPassthrough(scheme)) {
    const v1::Granularity g = spec.granularity() == v1::GRANULARITY_UNSPECIFIED
                                  ? v1::GRANULARITY_PER_HEAD
                                  : spec.granularity();
    absl::StrAppend(&out, " ", GranularityName(g));
    if (g == v1::GRANULARITY_PER_GROUP) {
      absl::StrAppend(&out, spec.group_size() == 0 ? 32 : spec.group_size());
    }
    if (IsIntScheme(scheme)) {
      absl::StrAppend(&out, spec.asymmetric() ? " asym" : " sym");
    }
  }
  if (spec.layer_overrides_size() > 0) {
    absl::StrAppend(&out, " + ", spec.layer_overrides_size(),
                    " layer overrides");
  }
  const v1::TokenSelection& sel = spec.selection();
  if (sel.mode() != v1::SELECTION_UNSPECIFIED &&
      sel.mode() != v1::SELECTION_ALL) {
    absl::StrAppend(
        &out, ", ",
        sel.mode() == v1::SELECTION_EXPLICIT && sel.indices_size() == 0
            ? std::string("receiver-guided")
            : SelectionModeName(sel.mode()));
    if (sel.proportion() > 0) {
      absl::StrAppend(&out, " ", absl::StrFormat("%g", sel.proportion() * 100),
                      "%");
    } else if (sel.indices_size() > 0) {
      absl::StrAppend(&out, " ", sel.indices_size(), " tokens");
    }
  }
  if (spec.layers_size() > 0) {
    // Runs of consecutive layers: "0-23", "0-3,8,12-15".
    std::vector<std::string> runs;
    for (int i = 0; i < spec.layers_size();) {
      int j = i;
      while (j + 1 < spec.layers_size() &&
             spec.layers(j + 1) == spec.layers(j) + 1) {
        ++j;
      }
      runs.push_back(j == i
                         ? absl::StrCat(spec.layers(i))
                         : absl::StrCat(spec.layers(i), "-", spec.layers(j)));
      i = j + 1;
    }
    absl::StrAppend(&out, ", layers ", absl::StrJoin(runs, ","));
  }
  if (spec.entropy().coder() == v1::ENTROPY_CODER_ZSTD) {
    absl::StrAppend(&out, ", zstd");
  }
  if (spec.max_payload_bytes() > 0) {
    absl::StrAppend(&out, ", <= ", spec.max_payload_bytes(), " B");
  }
  return out;
}

std::string AnswerModeName(v1::AnswerMode mode) {
  switch (mode) {
    case v1::ANSWER_MODE_UNSPECIFIED:
    case v1::ANSWER_MODE_C2C:
      return "c2c";
    case v1::ANSWER_MODE_RECEIVER_ONLY:
      return "receiver-only";
    case v1::ANSWER_MODE_TEXT_TO_TEXT:
      return "text-to-text";
    case v1::ANSWER_MODE_SHARER_ONLY:
      return "sharer-only";
    default:
      return "unknown";
  }
}

absl::Status ParseAnswerMode(absl::string_view name, v1::AnswerMode* mode) {
  const std::string n =
      absl::StrReplaceAll(absl::AsciiStrToLower(name), {{"_", "-"}});
  if (n == "c2c") {
    *mode = v1::ANSWER_MODE_C2C;
  } else if (n == "receiver-only") {
    *mode = v1::ANSWER_MODE_RECEIVER_ONLY;
  } else if (n == "text-to-text") {
    *mode = v1::ANSWER_MODE_TEXT_TO_TEXT;
  } else if (n == "sharer-only") {
    *mode = v1::ANSWER_MODE_SHARER_ONLY;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown mode '", name,
                     "' (c2c, receiver-only, text-to-text, sharer-only)"));
  }
  return absl::OkStatus();
}

std::string FallbackPolicyName(v1::FallbackPolicy policy) {
  switch (policy) {
    case v1::FALLBACK_POLICY_RECEIVER_ONLY:
      return "receiver-only";
    case v1::FALLBACK_POLICY_FAIL:
      return "fail";
    default:
      return "server";
  }
}

absl::Status ParseFallbackPolicy(absl::string_view name,
                                 v1::FallbackPolicy* policy) {
  const std::string n =
      absl::StrReplaceAll(absl::AsciiStrToLower(name), {{"_", "-"}});
  if (n == "receiver-only") {
    *policy = v1::FALLBACK_POLICY_RECEIVER_ONLY;
  } else if (n == "fail") {
    *policy = v1::FALLBACK_POLICY_FAIL;
  } else if (n.empty() || n == "server") {
    *policy = v1::FALLBACK_POLICY_UNSPECIFIED;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown fallback policy '", name, "' (receiver-only, fail, server)"));
  }
  return absl::OkStatus();
}

}  // namespace kvwire
