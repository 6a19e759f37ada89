// Synthetic KV caches with the statistics of real ones, for the codec
// report, benchmarks and tests (no machine here has pretrained weights).
#ifndef KVWIRE_COMMON_CODEC_SYNTHETIC_KV_H_
#define KVWIRE_COMMON_CODEC_SYNTHETIC_KV_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

struct SyntheticKvOptions {
  int64_t layers = 24;  // Qwen2.5-0.5B's KV shape by default.
  int64_t kv_heads = 2;
  int64_t tokens = 118;
  int64_t head_dim = 64;
  uint64_t seed = 0;
  at::ScalarType dtype = at::kBFloat16;
};

// Per layer, keys and values of [kv_heads, tokens, head_dim] on the CPU.
// Keys have a few outlier channels per head (10-20x the typical magnitude,
// as KIVI observed in real keys); values have per-token magnitudes drawn
// log-normally, so norm-based selection has something to find.
std::vector<std::pair<at::Tensor, at::Tensor>> MakeSyntheticKv(
    const SyntheticKvOptions& options);

// A ModelInfo describing such a cache (architecture "synthetic").
v1::ModelInfo SyntheticModelInfo(const SyntheticKvOptions& options);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_SYNTHETIC_KV_H_
