// Fuzzes the request validators of the v1 protocol with requests built from
// the fuzz bytes: byte 0 picks the message, the rest is parsed as its wire
// bytes (ParseFromArray), as the gRPC handlers receive them.
//   0: ShareRequest    -> ValidateShareRequest, then PlanTransfer and the
//                         stream header, as the sharer does next;
//   1: GenerateRequest -> ValidateGenerateRequest;
//   2: AnswerRequest   -> ValidateAnswerRequest (default limits), then the
//                         receiver's helpers (EffectiveMode,
//                         IsReceiverGuided, DescribeTransferSpec).
// The sharer is a fixed Qwen2.5-0.5B description (24 layers, 2 KV heads of
// 64, vocabulary 151936) serving every scheme, granularity and selection.
#include <cstdint>
#include <string>

#include "common/codec/scheme_table.h"
#include "common/codec/transfer_plan.h"
#include "common/protocol/answer_validation.h"
#include "common/protocol/request_validation.h"
#include "google/protobuf/stubs/logging.h"
#include "kvwire/v1/kvwire.pb.h"

namespace {

kvwire::v1::SharerInfo MakeSharerInfo() {
  kvwire::v1::SharerInfo info;
  kvwire::v1::ModelInfo* model = info.mutable_model();
  model->set_fingerprint("0123456789abcdef");
  model->set_architecture("Qwen2ForCausalLM");
  model->set_name("Qwen2.5-0.5B-Instruct");
  model->set_num_layers(24);
  model->set_num_kv_heads(2);
  model->set_head_dim(64);
  model->set_dtype(kvwire::v1::DTYPE_BF16);
  model->set_vocab_size(151936);
  model->set_max_position_embeddings(32768);
  for (kvwire::v1::Scheme scheme : kvwire::SupportedSchemes()) {
    info.add_schemes(scheme);
  }
  for (int g = kvwire::v1::GRANULARITY_PER_LAYER;
       g <= kvwire::v1::GRANULARITY_KIVI; ++g) {
    info.add_granularities(static_cast<kvwire::v1::Granularity>(g));
  }
  for (int s = kvwire::v1::SELECTION_ALL; s <= kvwire::v1::SELECTION_EXPLICIT;
       ++s) {
    info.add_selection_modes(static_cast<kvwire::v1::SelectionMode>(s));
  }
  info.set_max_prompt_tokens(8192);
  info.set_version("fuzz");
  info.set_max_new_tokens(1024);
  return info;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const kvwire::v1::SharerInfo* info = [] {
    // Invalid UTF-8 in string fields is expected input; keep the log quiet.
    google::protobuf::SetLogHandler(nullptr);
    return new kvwire::v1::SharerInfo(MakeSharerInfo());
  }();
  if (size < 1) return 0;
  const uint8_t which = data[0] % 3;
  ++data;
  --size;
  const int n = static_cast<int>(size);
  if (which == 0) {
    kvwire::v1::ShareRequest request;
    if (!request.ParseFromArray(data, n)) return 0;
    if (!kvwire::ValidateShareRequest(request, *info).ok()) return 0;
    auto plan = kvwire::PlanTransfer(info->model(), request.token_ids_size(),
                                     request.spec());
    if (!plan.ok()) __builtin_trap();  // Validation promised it would plan.
    const kvwire::v1::KvHeader header =
        kvwire::PlanHeader(info->model(), *plan, request.request_id());
    (void)kvwire::SchemeLabel(header);
    (void)kvwire::PredictStreamBytes(info->model(), *plan);
  } else if (which == 1) {
    kvwire::v1::GenerateRequest request;
    if (!request.ParseFromArray(data, n)) return 0;
    (void)kvwire::ValidateGenerateRequest(request, *info);
  } else {
    kvwire::v1::AnswerRequest request;
    if (!request.ParseFromArray(data, n)) return 0;
    const kvwire::AnswerLimits limits;
    if (!kvwire::ValidateAnswerRequest(request, limits).ok()) return 0;
    (void)kvwire::EffectiveMode(request);
    (void)kvwire::IsReceiverGuided(request.spec());
    (void)kvwire::DescribeTransferSpec(request.spec());
  }
  return 0;
}
