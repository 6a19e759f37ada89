// The model fingerprint a sharer reports (ModelInfo.fingerprint) and a
// receiver may require (ShareRequest.expected_model_fingerprint): SHA-256,
// in lower-case hex, over config.json and every checkpoint tensor's name and
// shape. It identifies the architecture and shapes of a checkpoint, not its
// weight values or storage dtype, and is cheap to compute (no weights read).
#ifndef KVWIRE_COMMON_MODEL_MODEL_FINGERPRINT_H_
#define KVWIRE_COMMON_MODEL_MODEL_FINGERPRINT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {

struct TensorShape {
  std::string name;
  std::vector<int64_t> shape;
};

// SHA-256 of "kvwire-model-fingerprint-v1\n", the config.json bytes, "\n",
// then one "name:d0,d1,...\n" line per tensor in name order. 64 hex digits.
std::string ModelFingerprint(absl::string_view config_json,
                             std::vector<TensorShape> tensors);

// ModelFingerprint of the checkpoint directory `model_dir` (config.json and
// the tensor names and shapes its safetensors headers declare; no weights
// are read). NOT_FOUND / INVALID_ARGUMENT / DATA_LOSS as the readers report.
absl::StatusOr<std::string> CheckpointFingerprint(const std::string& model_dir);

// Lower-case hex SHA-256 of `data` (self-contained implementation).
std::string Sha256Hex(absl::string_view data);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_MODEL_FINGERPRINT_H_
