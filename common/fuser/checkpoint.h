// C2C fuser checkpoint directories, as published (nics-efc/C2C_Fuser,
// c2c-spec §3) and in an equivalent safetensors form:
//
//   <dir>/config.json                  training recipe (optional)
//   <dir>/final/projector_{i}.pt       torch.save(state_dict), i = 0..n-1
//      or  final/projector_{i}.safetensors  (same tensor names)
//   <dir>/final/projector_{i}.json     {"class": "C2CProjector", ...}
//   <dir>/final/projector_config.json  layer map (optional)
//
// `dir` may also name the final/ folder itself. Any number of projectors and
// any sharer/receiver dimensions. Tensors are validated against each
// projector's json when a C2CProjector is built (c2c_projector.h), which
// names a missing or mis-shaped tensor and its expected shape.
#ifndef KVWIRE_COMMON_FUSER_CHECKPOINT_H_
#define KVWIRE_COMMON_FUSER_CHECKPOINT_H_

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/fuser/fuser_config.h"
#include "common/fuser/torch_pickle.h"

namespace kvwire {

enum class FuserWeightFormat {
  kAuto,         // Reading: .pt if present, else .safetensors.
  kTorch,        // projector_{i}.pt (torch.save zip format).
  kSafetensors,  // projector_{i}.safetensors.
};

// "pt" / "torch", "safetensors" / "st", "auto".
absl::StatusOr<FuserWeightFormat> ParseFuserWeightFormat(
    absl::string_view name);

// A checkpoint directory in memory: CPU tensors as stored.
struct FuserCheckpoint {
  std::optional<FuserRecipe> recipe;       // config.json, if present.
  std::vector<C2CProjectorArgs> args;      // projector_{i}.json.
  std::vector<TensorList> weights;         // projector_{i}.{pt,safetensors}.
  std::optional<FuserLayerMap> layer_map;  // projector_config.json.
  FuserWeightFormat format = FuserWeightFormat::kTorch;  // As read.

  int num_projectors() const { return static_cast<int>(args.size()); }
};

// The folder holding the projector files: <dir>/final if it exists, else
// <dir>.
std::string FuserWeightsDir(const std::string& dir);

// Reads every file. Projectors are counted as the reference does (files
// named projector_<i>.pt, or .safetensors) and must be numbered 0..n-1
// (NOT_FOUND names the first missing file, json or weights). NOT_FOUND if
// there is no projector at all; INVALID_ARGUMENT / DATA_LOSS from the parsers,
// prefixed with the file; INVALID_ARGUMENT if projector_config.json names a
// projector that does not exist.
absl::StatusOr<FuserCheckpoint> ReadFuserCheckpoint(
    const std::string& dir,
    FuserWeightFormat format = FuserWeightFormat::kAuto);

// Writes `checkpoint` in the released layout under <dir> (config.json when a
// recipe is present, final/ with the projector files and, when a layer map
// is present, projector_config.json), creating directories as needed.
// `format` kAuto means kTorch. Weights are written as given (any device;
// converted to CPU). INVALID_ARGUMENT if args and weights differ in count.
absl::Status WriteFuserCheckpoint(
    const std::string& dir, const FuserCheckpoint& checkpoint,
    FuserWeightFormat format = FuserWeightFormat::kTorch);

// Options for a random checkpoint (tests, demos): one projector per
// receiver layer with `args` (C2CProjector::Random with seeds seed,
// seed+1, ...), a last_aligned layer map for receiver_layers <-
// sharer_layers (projector t for receiver layer t), and gate logits drawn so
// that about `open_gate_fraction` of the gates are open: open logits are
// U(0.5, 2), closed ones -1.
struct RandomFuserOptions {
  C2CProjectorArgs args;
  int receiver_layers = 4;
  int sharer_layers = 3;
  uint64_t seed = 0;
  double open_gate_fraction = 1.0;
  double norm_jitter = 0.1;
  double weight_scale = 1.0;
  at::ScalarType dtype = at::kBFloat16;  // Stored dtype.
  std::string base_model = "Qwen/Qwen3-0.6B";
  std::string teacher_model = "Qwen/Qwen2.5-0.5B-Instruct";
};
absl::StatusOr<FuserCheckpoint> MakeRandomFuserCheckpoint(
    const RandomFuserOptions& options);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FUSER_CHECKPOINT_H_
