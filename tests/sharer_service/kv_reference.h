// The Torch side of the sharer end-to-end tests, kept out of the gRPC test
// translation unit: decode a received KvChunk stream and compare it with
// the K/V of an in-process Decoder prefill over the same model and tokens.
#ifndef KVWIRE_TESTS_SHARER_SERVICE_KV_REFERENCE_H_
#define KVWIRE_TESTS_SHARER_SERVICE_KV_REFERENCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

struct StreamComparison {
  int layers = 0;              // Layers decoded.
  bool bf16_bit_exact = true;  // Decoded == reference rounded to bf16.
  // |decoded - ref| <= 2^-8 |ref| + 1e-5: bf16 rounding of a reference
  // computed slightly differently (a batched prefill).
  bool bf16_close = true;
  bool within_int_bound = true;  // |decoded - ref| <= s/2 per element.
  double max_abs_error = 0;
  // Token positions of each decoded layer, in layer order.
  std::vector<std::vector<uint32_t>> token_indices;
};

// Decodes `chunks` (a complete stream; DATA_LOSS otherwise) and compares
// every layer with the fp32 CPU prefill of `tokens` by the model in
// `model_dir` (computed with one intra-op thread, like the sharer under
// test). `int_bits` (8, 4, 2) selects the symmetric per-head bound
// s = absmax_head / (2^(bits-1) - 1); 0 skips it.
absl::StatusOr<StreamComparison> CompareWithPrefill(
    const std::vector<v1::KvChunk>& chunks, const std::string& model_dir,
    const std::vector<uint32_t>& tokens, int int_bits);

// Writes a random Qwen2-layout checkpoint (4 layers, 2 KV heads of 16,
// vocab 256) to `dir`.
absl::Status WriteTestModel(const std::string& dir);
// A model with a large KV cache per token and little compute (16 layers of
// 16 KV heads x 64, hidden size 64): 256 tokens stream ~16 MB in bf16, more
// than loopback sockets and HTTP/2 windows hold, so a client that stops
// reading really stalls the stream.
absl::Status WriteWideTestModel(const std::string& dir);

}  // namespace kvwire

#endif  // KVWIRE_TESTS_SHARER_SERVICE_KV_REFERENCE_H_
