#include "common/engine/model_loading.h"

#include <ATen/Parallel.h>

#include <utility>

#include "absl/strings/match.h"
#include "common/hub_cache.h"
#include "common/model/batched_prefill.h"
#include "common/model/decoder.h"
#include "common/model/model_fingerprint.h"
#include "common/status_macros.h"

#ifdef KVWIRE_WITH_CUDA
#include "common/model/cuda_graph_decoder.h"
#endif

namespace kvwire {
namespace {

v1::DType WireDType(at::ScalarType type) {
  switch (type) {
    case at::kBFloat16:
      return v1::DTYPE_BF16;
    case at::kHalf:
      return v1::DTYPE_FP16;
    case at::kFloat:
      return v1::DTYPE_FP32;
    default:
      return v1::DTYPE_UNSPECIFIED;
  }
}

}  // namespace

absl::StatusOr<DecoderOptions> ParseDecoderOptions(absl::string_view dtype,
                                                   absl::string_view device) {
  DecoderOptions options;
  ASSIGN_OR_RETURN(options.device, ParseModelDevice(device));
  options.dtype = options.device.is_cuda() ? at::kBFloat16 : at::kFloat;
  if (dtype != "auto") {
    ASSIGN_OR_RETURN(options.dtype, ParseModelDtype(dtype));
  }
  return options;
}

int64_t AutoBatchingSize(int64_t value, absl::string_view device,
                         int64_t cuda_default) {
  if (value >= 0) return value;
  return absl::StartsWith(device, "cuda") ? cuda_default : 0;
}

absl::StatusOr<std::unique_ptr<Decoder>> LoadModel(
    const ModelLoadOptions& options) {
  ASSIGN_OR_RETURN(DecoderOptions decoder_options,
                   ParseDecoderOptions(options.dtype, options.device));
  decoder_options.sliding_window_override = options.sliding_window_override;
  return LoadModel(options.dir, decoder_options, options);
}

absl::StatusOr<std::unique_ptr<Decoder>> LoadModel(
    const std::string& model_dir, const DecoderOptions& decoder_options,
    const ModelLoadOptions& accelerators) {
  if (model_dir.empty()) {
    return absl::InvalidArgumentError("no model directory given (--model_dir)");
  }
  if (accelerators.intra_op_threads > 0) {
    at::set_num_threads(accelerators.intra_op_threads);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Decoder> decoder,
                   Decoder::Load(model_dir, decoder_options));
  RequestBatchingOptions batching;
  batching.decode_slots = accelerators.decode_batch_slots;
  batching.slot_capacity = accelerators.decode_slot_capacity;
  batching.decode_observer = accelerators.decode_batch_observer;
  batching.prefill_rows = accelerators.prefill_batch_rows;
  batching.prefill_observer = accelerators.prefill_batch_observer;
#ifdef KVWIRE_WITH_CUDA
  if (decoder->device().is_cuda()) {
    RETURN_IF_ERROR(InstallCudaGraphAccelerators(*decoder, batching));
    return decoder;
  }
#endif
  RETURN_IF_ERROR(InstallRequestBatching(*decoder, batching));
  return decoder;
}

v1::ModelInfo DescribeModel(const Decoder& decoder,
                            const std::string& model_dir) {
  const ModelConfig& c = decoder.config();
  v1::ModelInfo m;
  m.set_architecture(c.architecture.empty() ? ArchitectureName(c.arch)
                                            : c.architecture);
  m.set_name(model_dir.empty() ? c.model_type : ModelDirDisplayName(model_dir));
  m.set_num_layers(static_cast<uint32_t>(c.num_hidden_layers));
  m.set_num_kv_heads(static_cast<uint32_t>(c.num_key_value_heads));
  m.set_head_dim(static_cast<uint32_t>(c.head_dim));
  m.set_dtype(WireDType(decoder.dtype()));
  m.set_vocab_size(static_cast<uint32_t>(c.vocab_size));
  m.set_max_position_embeddings(
      static_cast<uint32_t>(c.max_position_embeddings));
  auto fingerprint = model_dir.empty()
                         ? absl::StatusOr<std::string>(absl::NotFoundError(""))
                         : CheckpointFingerprint(model_dir);
  m.set_fingerprint(fingerprint.ok()
                        ? *fingerprint
                        : ModelFingerprint(ModelConfigToJson(c), {}));
  return m;
}

}  // namespace kvwire
