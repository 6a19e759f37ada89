// Random-weight checkpoints in the real Hugging Face layout (config.json,
// generation_config.json, model.safetensors or shards + index), for any
// architecture the decoder supports. Used by kvwire-make-checkpoint, tests,
// the demo and benchmarks. Deterministic for a given seed on every platform.
#ifndef KVWIRE_TOOLS_MAKE_TINY_CHECKPOINT_TINY_CHECKPOINT_H_
#define KVWIRE_TOOLS_MAKE_TINY_CHECKPOINT_TINY_CHECKPOINT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/model/model_config.h"
#include "common/model/safetensors.h"

namespace kvwire {

struct TinyCheckpointOptions {
  ModelConfig config;
  uint64_t seed = 0;
  // BF16, F16 or F32.
  SafetensorsDtype dtype = SafetensorsDtype::kBF16;
  // Linear and embedding weights ~ N(0, init_std); biases ~ N(0, bias_std);
  // norm weights ~ 1 + N(0, norm_std) (HF initializes them to exactly 1,
  // which would hide loading mistakes).
  double init_std = 0.02;
  double bias_std = 0.02;
  double norm_std = 0.1;
  int num_shards = 1;
};

// Creates `dir` (and parents) if needed and writes the checkpoint.
absl::Status WriteRandomCheckpoint(const std::string& dir,
                                   const TinyCheckpointOptions& options);

}  // namespace kvwire

#endif  // KVWIRE_TOOLS_MAKE_TINY_CHECKPOINT_TINY_CHECKPOINT_H_
