// Answer calls as rows of the live page.
#include "receiver_service/live_record.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec/scheme.h"
#include "common/protocol/answer_validation.h"
#include "common/service/grpc_status.h"

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
