// Random-weight checkpoints in the real Hugging Face layout (config.json,
// generation_config.json, model.safetensors or shards + index), for any
// architecture the decoder supports. Used by kvwire-make-checkpoint, tests,
// the demo and benchmarks. Deterministic for a given seed on every platform
// and for any thread count: values come from one SplitMix64 stream, two
// draws per value, in ExpectedWeights(config) order; threads fill disjoint
// ranges of that stream (tools/gen_aligned_goldens.py relies on the bytes).
#ifndef KVWIRE_TOOLS_MAKE_TINY_CHECKPOINT_TINY_CHECKPOINT_H_
#define KVWIRE_TOOLS_MAKE_TINY_CHECKPOINT_TINY_CHECKPOINT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/model/model_config.h"
#include "common/model/safetensors.h"

namespace kvwire {

// What to generate. Plain values; the writers own nothing beyond the call.
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
  // Generator threads; 0: std::thread::hardware_concurrency(). The bytes
  // written are the same for every value.
  int threads = 0;
};

// Creates `dir` (and parents) if needed and writes the checkpoint: weights,
// and config.json / generation_config.json from options.config (torch_dtype
// set to the stored dtype). The weights are held in memory until written.
// INVALID_ARGUMENT for an inconsistent config, an unsupported dtype or
// threads < 0; PERMISSION_DENIED / DATA_LOSS when a directory or file cannot
// be written.
absl::Status WriteRandomCheckpoint(const std::string& dir,
                                   const TinyCheckpointOptions& options);

// The same for the model a Hugging Face config.json describes: `config_path`
// is the file or a directory holding it. options.config is replaced by the
// parsed config; <dir>/config.json is a byte-for-byte copy of the file (so
// transformers reads back exactly its own config), and so is
// generation_config.json when one sits next to it (else it is written from
// the config). NOT_FOUND if the config cannot be read; the parser's
// INVALID_ARGUMENT / UNIMPLEMENTED (ParseModelConfig) for a config it does
// not support; otherwise as WriteRandomCheckpoint.
absl::Status WriteRandomCheckpointForConfigFile(const std::string& config_path,
                                                const std::string& dir,
                                                TinyCheckpointOptions options);

}  // namespace kvwire

#endif  // KVWIRE_TOOLS_MAKE_TINY_CHECKPOINT_TINY_CHECKPOINT_H_
