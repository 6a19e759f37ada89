// The JSON side of a C2C fuser checkpoint (c2c-spec §1.2, §2.1, §3): the
// projectors' constructor arguments (final/projector_{i}.json), the layer map
// (final/projector_config.json) and the training recipe (config.json).
// Pure C++ (no Torch).
//
//   <dir>/config.json                  recipe: model.base_model,
//                                      model.teacher_model, model.projector,
//                                      model.mapping ("last_aligned"), ...
//   <dir>/final/projector_{i}.json     {"class": "C2CProjector",
//                                       "init_args": {...}}
//   <dir>/final/projector_config.json  {"0": {"1": {"<t>": [[s, i]], ...}}}
//   <dir>/final/projector_{i}.pt       torch.save(state_dict) (checkpoint.h)
#ifndef KVWIRE_COMMON_FUSER_FUSER_CONFIG_H_
#define KVWIRE_COMMON_FUSER_FUSER_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {

// C2CProjector's constructor arguments (rosetta/model/projector.py), with the
// class's own defaults. `dtype` is the name recorded in the json
// ("bfloat16", "float32", ...); it is informational (weights are converted
// to whatever dtype the projector is loaded in).
struct C2CProjectorArgs {
  int64_t source_dim = 0;  // Sharer head_dim (Ds).
  int64_t target_dim = 0;  // Receiver head_dim (Dt).
  int64_t source_num_heads = 1;
  int64_t target_num_heads = 1;
  int64_t intermediate_dim = 1024;
  int64_t hidden_dim = 1024;
  int64_t num_layers = 3;  // >= 3: proj_mlp2 has num_layers - 2 blocks.
  double dropout = 0.1;
  double initial_temperature = 1.0;
  double final_temperature = 0.001;
  int64_t anneal_steps = 1929;
  std::string dtype = "float32";

  int64_t in_dim() const { return source_dim * source_num_heads; }
  int64_t out_dim() const { return target_dim * target_num_heads; }
  bool operator==(const C2CProjectorArgs& other) const;
  bool operator!=(const C2CProjectorArgs& other) const {
    return !(*this == other);
  }
};

// The args of the released Qwen3-0.6B <- Qwen2.5-0.5B fuser (spec §2.1).
C2CProjectorArgs ReleasedQwen3Qwen25Args();

// The Hugging Face id a fuser recipe names (model.base_model /
// model.teacher_model) for a model preset of PresetModelConfig
// (common/model/model_config.h), case-insensitive: "qwen3-8b" ->
// "Qwen/Qwen3-8B"; the Qwen2.5, Llama, Gemma and Mistral presets name the
// instruction-tuned checkpoints C2C pairs with ("qwen2.5-7b" ->
// "Qwen/Qwen2.5-7B-Instruct", "llama-3.2-1b" ->
// "meta-llama/Llama-3.2-1B-Instruct", "gemma-3-1b" -> "google/gemma-3-1b-it").
// NOT_FOUND, listing the known names, otherwise.
absl::StatusOr<std::string> PresetHuggingFaceId(absl::string_view preset);

// INVALID_ARGUMENT unless every size is positive and num_layers >= 3.
absl::Status ValidateProjectorArgs(const C2CProjectorArgs& args);

// Parses projector_{i}.json. The class must be "C2CProjector" (any case;
// another class is UNIMPLEMENTED). Missing init_args take the class
// defaults, except source_dim and target_dim, which are required. `dtype`
// may be {"__type__": "torch.dtype", "value": "bfloat16"}, "torch.bfloat16"
// or "bfloat16". Unknown init_args are INVALID_ARGUMENT. `source` names the
// file in messages.
absl::StatusOr<C2CProjectorArgs> ParseProjectorJson(
    absl::string_view json_text, absl::string_view source = "projector.json");
// The json the reference writes (every argument, dtype as a torch.dtype).
std::string ProjectorJson(const C2CProjectorArgs& args);

// Which sharer layer and projector each receiver layer uses. Entry t is
// nullopt for a receiver layer that is never fused.
struct FuserLayerMapEntry {
  int sharer_layer = 0;
  int projector = 0;
  bool operator==(const FuserLayerMapEntry& o) const {
    return sharer_layer == o.sharer_layer && projector == o.projector;
  }
};
using FuserLayerMap = std::vector<std::optional<FuserLayerMapEntry>>;

// Parses projector_config.json ({target_model: {source_model: {target_layer:
// [[source_layer, projector_idx], ...]}}}). The receiver is model "0"; there
// must be exactly one sharer (several are UNIMPLEMENTED). As the reference
// does, only the first pair of each target layer is used. The map covers
// receiver layers [0, max listed + 1); `num_receiver_layers` > 0 extends it
// (unlisted layers stay nullopt) and rejects larger layer numbers.
// INVALID_ARGUMENT for malformed json, negative or non-integer numbers, or an
// empty pair list.
absl::StatusOr<FuserLayerMap> ParseProjectorConfigJson(
    absl::string_view json_text, int num_receiver_layers = 0,
    absl::string_view source = "projector_config.json");
// The json the reference writes for one sharer (model "1").
std::string ProjectorConfigJson(const FuserLayerMap& map);

// C2C's terminal alignment (LastAlignedLayerMap in layer_schedule.h) with
// projector t for receiver layer t. INVALID_ARGUMENT unless both are > 0.
absl::StatusOr<FuserLayerMap> LastAlignedFuserLayerMap(int receiver_layers,
                                                       int sharer_layers);

// Checks every entry against the sizes: sharer_layer in [0, sharer_layers)
// (when sharer_layers > 0) and projector in [0, num_projectors).
absl::Status ValidateFuserLayerMap(const FuserLayerMap& map, int num_projectors,
                                   int sharer_layers = 0);

// The parts of the training recipe (config.json) the runtime uses. Fields the
// file lacks stay empty.
struct FuserRecipe {
  std::string base_model;      // Receiver, e.g. "Qwen/Qwen3-0.6B".
  std::string teacher_model;   // Sharer.
  std::string projector_type;  // "C2CProjector".
  std::string mapping;         // "last_aligned", ...
  bool include_response = false;
  bool is_do_alignment = false;
  // The token-alignment strategy training used ("first" / "longest"; the
  // reference's default is "first"); empty when the file names none.
  std::string alignment_strategy;
  std::string raw_json;  // The whole file.
};

// INVALID_ARGUMENT for malformed json or wrongly typed known fields.
absl::StatusOr<FuserRecipe> ParseFuserRecipe(
    absl::string_view json_text, absl::string_view source = "config.json");
// A minimal recipe in the reference's layout (model.{base_model,
// teacher_model, projector{type, params}, mapping}).
std::string FuserRecipeJson(const FuserRecipe& recipe,
                            const C2CProjectorArgs& args);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FUSER_FUSER_CONFIG_H_
