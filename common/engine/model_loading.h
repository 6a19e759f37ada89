// Loading a model for serving, written once for the sharer engine, the
// receiver engine and the in-process pipeline: dtype and device names, the
// intra-op thread count, Decoder::Load, the CUDA-graph accelerators, and
// the wire's description of the loaded model (ModelInfo with its
// fingerprint). Torch-free: the engines' option structs embed
// ModelLoadOptions; the model types are only forward-declared.
#ifndef KVWIRE_COMMON_ENGINE_MODEL_LOADING_H_
#define KVWIRE_COMMON_ENGINE_MODEL_LOADING_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model/step_batch_stats.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

class Decoder;
struct DecoderOptions;

// Where a model comes from and how it runs.
struct ModelLoadOptions {
  // Hugging Face model directory (config.json + safetensors); a hub id is
  // resolved to its snapshot before (ResolveModelDirFlags, hub_cache.h).
  std::string dir;
  // "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp16" or "fp32".
  std::string dtype = "auto";
  // "cpu", "cuda", "cuda:N".
  std::string device = "cpu";
  // LibTorch intra-op threads (0: LibTorch's default).
  int intra_op_threads = 0;
  // Batching across concurrent requests (batched_prefill.h,
  // InstallRequestBatching), on any device (as CUDA graphs on CUDA): slots
  // of the batched decode (0: off) and positions per slot; prompts per
  // batched prefill (0: off). Observers are told each batch (metrics).
  int64_t decode_batch_slots = 0;
  int64_t decode_slot_capacity = 1024;
  int64_t prefill_batch_rows = 0;
  StepBatchObserver decode_batch_observer;
  StepBatchObserver prefill_batch_observer;
  // Replaces the sliding window of every windowed layer (DecoderOptions);
  // 0: the config's. C2C loads Gemma-3 with 4096.
  int64_t sliding_window_override = 0;
};

// A batching size flag (--decode_batch_slots, --prefill_batch_rows):
// `value` when >= 0; -1 ("auto"): `cuda_default` on a CUDA device, where
// batching pays, and 0 on the CPU, where the services then answer exactly
// as the in-process pipeline does.
int64_t AutoBatchingSize(int64_t value, absl::string_view device,
                         int64_t cuda_default);

// The dtype and device `dtype` / `device` name ("auto": bf16 on CUDA, fp32
// on CPU). INVALID_ARGUMENT for unknown names.
absl::StatusOr<DecoderOptions> ParseDecoderOptions(absl::string_view dtype,
                                                   absl::string_view device);

// Decoder::Load of options.dir, then the request batching asked for and
// (CUDA builds) the CUDA-graph prefill and decode accelerators
// (KVWIRE_CUDA_GRAPH_PREFILL=0 / KVWIRE_CUDA_GRAPH_DECODE=0 turn them off,
// and the batching of that stage with them).
// Errors: INVALID_ARGUMENT for an empty directory or bad names; the
// loader's (NOT_FOUND, INVALID_ARGUMENT, UNIMPLEMENTED) naming the
// directory; the accelerators' allocation errors.
absl::StatusOr<std::unique_ptr<Decoder>> LoadModel(
    const ModelLoadOptions& options);
// The same with already-parsed decoder options.
absl::StatusOr<std::unique_ptr<Decoder>> LoadModel(
    const std::string& model_dir, const DecoderOptions& decoder_options,
    const ModelLoadOptions& accelerators = {});

// The codec's and the wire's description of a loaded model: architecture,
// shapes, dtype, and CheckpointFingerprint(model_dir) (without a readable
// directory, the fingerprint of the config alone); name: the directory's
// base name, or OWNER/NAME for a Hugging Face hub snapshot
// (ModelDirDisplayName).
v1::ModelInfo DescribeModel(const Decoder& decoder,
                            const std::string& model_dir);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_ENGINE_MODEL_LOADING_H_
