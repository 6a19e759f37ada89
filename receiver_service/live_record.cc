// Answer calls as rows of the live page.
#include "receiver_service/live_record.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/codec/scheme.h"
#include "common/service/grpc_status.h"
#include "receiver_service/answer_validation.h"

namespace kvwire {
namespace {

// The label kvwire_kv_wire_bytes_total uses, from the resolved spec: one
// scheme, or "mixed" when layers override it.
std::string SpecSchemeLabel(const v1::TransferSpec& spec) {
  if (spec.layer_overrides_size() > 0) return "mixed";
  return SchemeName(spec.scheme() == v1::SCHEME_UNSPECIFIED ? v1::SCHEME_INT8
                                                            : spec.scheme());
}

}  // namespace

std::string DescribeTransferSpec(const v1::TransferSpec& spec) {
  const v1::Scheme scheme =
      spec.scheme() == v1::SCHEME_UNSPECIFIED ? v1::SCHEME_INT8 : spec.scheme();
  std::string out = SchemeName(scheme);
  if (scheme != v1::SCHEME_BF16 && scheme != v1::SCHEME_FP16) {
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

LiveRequest MakeLiveRequest(const v1::AnswerRequest& request,
                            const v1::AnswerResponse& summary,
                            const absl::Status& status, bool streaming,
                            absl::Duration queue_wait, double seconds,
                            absl::Time finished) {
  LiveRequest r;
  r.time = absl::ToDoubleSeconds(finished - absl::UnixEpoch());
  r.method = streaming ? "AnswerStream" : "Answer";
  r.status = std::string(StatusCodeName(status.code()));
  const v1::AnswerMode mode = summary.mode() != v1::ANSWER_MODE_UNSPECIFIED
                                  ? summary.mode()
                                  : EffectiveMode(request);
  r.mode = AnswerModeName(mode);
  const v1::TransferReport& t = summary.transfer();
  // A complete transfer reports the sharer's resolved spec; otherwise show
  // what was asked for.
  const bool transferred = t.has_spec() && !summary.fell_back();
  if (transferred) {
    r.spec = DescribeTransferSpec(t.spec());
    r.scheme = SpecSchemeLabel(t.spec());
    r.raw_bytes = static_cast<int64_t>(t.raw_kv_bytes());
    r.payload_bytes = static_cast<int64_t>(t.payload_bytes());
    r.prompt_tokens = t.prompt_tokens();
    r.layers_sent = t.layers_sent();
    r.tokens_sent = t.layers_sent() > 0 ? t.tokens_sent() / t.layers_sent() : 0;
  } else if (EffectiveMode(request) == v1::ANSWER_MODE_C2C) {
    r.spec = absl::StrCat("asked: ", DescribeTransferSpec(request.spec()));
  }
  r.serialized_bytes = static_cast<int64_t>(t.serialized_bytes());
  r.wire_bytes = static_cast<int64_t>(t.wire_bytes());
  r.fell_back = summary.fell_back();
  r.fallback_reason = summary.fallback_reason();
  r.generated_tokens = summary.token_ids_size();
  const v1::StageTimings& s = summary.timings();
  auto set = [&r](absl::string_view stage, double value) {
    for (int i = 0; i < kNumLiveStages; ++i) {
      if (kLiveStageNames[i] == stage) r.stage_seconds[i] = value;
    }
  };
  set("queue", absl::ToDoubleSeconds(queue_wait));
  set("transfer", transferred ? s.transfer_seconds() : 0);
  set("sharer_compute", s.sharer_compute_seconds());
  set("encode", s.encode_seconds());
  set("decode", s.decode_seconds());
  set("fuse", s.fuse_seconds());
  set("receiver_prefill", s.receiver_prefill_seconds());
  set("time_to_first_token", s.time_to_first_token_seconds());
  set("generation", s.generation_seconds());
  set("total", seconds);
  return r;
}

}  // namespace kvwire
