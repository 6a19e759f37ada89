// kvwire-make-fuser: writes a random C2C fuser checkpoint in the released
// layout (config.json, final/projector_{i}.pt + .json, projector_config.json),
// readable by Python's torch.load and by C2CFuser::Load.
//
//   kvwire-make-fuser --out=/tmp/fuser-tiny --receiver_layers=4
//       --sharer_layers=3 --source_heads=2 --source_dim=8 --target_heads=4
//       --target_dim=16 --hidden=32 --intermediate=48 --dtype=fp32
//   kvwire-make-fuser --out=/tmp/fuser-real --preset=qwen3-0.6b+qwen2.5-0.5b
//   kvwire-make-fuser --out=/tmp/fuser-llama --preset=qwen3-0.6b+llama-3.2-1b
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/flags_help.h"
#include "common/fuser/checkpoint.h"
#include "common/fuser/fuser_config.h"
#include "common/model/model_config.h"
#include "common/model/model_family.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, out, "", "Output checkpoint directory (created).");
ABSL_FLAG(std::string, preset, "",
          "RECEIVER+SHARER, two model presets of kvwire-make-checkpoint "
          "(qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, qwen2.5-0.5b, "
          "qwen2.5-1.5b, qwen2.5-7b, llama-3.2-1b, gemma-3-1b, "
          "mistral-7b-v0.3), e.g. qwen3-0.6b+qwen2.5-0.5b (the released "
          "fuser: 28 projectors 2x64 -> 8x128): one projector per receiver "
          "layer from the sharer's KV heads x head_dim to the receiver's, "
          "the released projector's widths (hidden 1024, intermediate 1024, "
          "3 layers; --hidden / --intermediate / --num_layers override "
          "them), both models' Hugging Face ids in the recipe and, when the "
          "two tokenizers differ (Llama, Gemma or Mistral with another "
          "family), is_do_alignment with strategy longest unless "
          "--is_do_alignment / --alignment_strategy are given. Overrides the "
          "other size flags.");
ABSL_FLAG(int, receiver_layers, 4, "Receiver layers (= projectors).");
ABSL_FLAG(int, sharer_layers, 3, "Sharer layers (last_aligned map).");
ABSL_FLAG(int64_t, source_heads, 2, "Sharer KV heads.");
ABSL_FLAG(int64_t, source_dim, 8, "Sharer head_dim.");
ABSL_FLAG(int64_t, target_heads, 4, "Receiver KV heads.");
ABSL_FLAG(int64_t, target_dim, 16, "Receiver head_dim.");
ABSL_FLAG(int64_t, hidden, 0,
          "Projector hidden_dim (0: 32, or 1024 with --preset).");
ABSL_FLAG(int64_t, intermediate, 0,
          "Projector intermediate_dim (0: 48, or 1024 with --preset).");
ABSL_FLAG(int64_t, num_layers, 0, "Projector num_layers, >= 3 (0: 3).");
ABSL_FLAG(std::string, dtype, "bf16", "Stored dtype: bf16 | fp16 | fp32.");
ABSL_FLAG(std::string, format, "pt", "pt | safetensors");
ABSL_FLAG(uint64_t, seed, 0, "Random seed.");
ABSL_FLAG(double, open_gates, 1.0,
          "Fraction of open key/value gates (closed ones get logit -1).");
ABSL_FLAG(double, weight_scale, 1.0,
          "Scale of the Linear weights relative to torch's default init.");
ABSL_FLAG(double, norm_jitter, 0.1,
          "RMSNorm weights are 1 + U(-jitter, jitter).");
ABSL_FLAG(std::string, base_model, "",
          "Recipe (config.json) model.base_model: the receiver (empty: the "
          "--preset receiver's Hugging Face id, else Qwen/Qwen3-0.6B).");
ABSL_FLAG(std::string, teacher_model, "",
          "Recipe (config.json) model.teacher_model: the sharer (empty: the "
          "--preset sharer's Hugging Face id, else "
          "Qwen/Qwen2.5-0.5B-Instruct).");
ABSL_FLAG(
    std::optional<bool>, is_do_alignment, std::nullopt,
    "Recipe model.is_do_alignment: the fuser was trained with token "
    "alignment (a sharer with another tokenizer); receivers in "
    "--token_alignment=auto then align (=true / =false). Unset: false, or "
    "whether the --preset models' tokenizers differ.");
ABSL_FLAG(std::optional<std::string>, alignment_strategy, std::nullopt,
          "Recipe model.alignment_strategy: first or longest (unset: not "
          "written, or longest when --preset turns alignment on; only with "
          "alignment).");

namespace kvwire {
namespace {

// What a RECEIVER+SHARER preset fixes.
struct PairPreset {
  C2CProjectorArgs args;  // The released widths; the pair's heads and dims.
  int receiver_layers = 0;
  int sharer_layers = 0;
  std::string base_model;  // Hugging Face ids.
  std::string teacher_model;
  bool needs_alignment = false;  // The tokenizers differ.
};

absl::StatusOr<PairPreset> ResolvePairPreset(const std::string& preset) {
  const std::vector<std::string> names = absl::StrSplit(preset, '+');
  if (names.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--preset '", preset,
        "' is not RECEIVER+SHARER (known model presets: qwen3-0.6b, "
        "qwen3-1.7b, qwen3-4b, qwen3-8b, qwen2.5-0.5b, qwen2.5-1.5b, "
        "qwen2.5-7b, llama-3.2-1b, gemma-3-1b, mistral-7b-v0.3)"));
  }
  ModelConfig configs[2];
  std::string ids[2];
  for (int i = 0; i < 2; ++i) {
    const char* role = i == 0 ? "receiver" : "sharer";
    absl::StatusOr<ModelConfig> config = PresetModelConfig(names[i]);
    absl::StatusOr<std::string> id = PresetHuggingFaceId(names[i]);
    if (!config.ok() || !id.ok()) {
      // Both list the known names; the model config's list is the one
      // kvwire-make-checkpoint takes.
      const absl::Status& bad = !config.ok() ? config.status() : id.status();
      return absl::InvalidArgumentError(
          absl::StrCat("--preset '", preset, "': ", role, ": ", bad.message()));
    }
    configs[i] = *std::move(config);
    ids[i] = *std::move(id);
  }
  const ModelConfig& receiver = configs[0];
  const ModelConfig& sharer = configs[1];
  PairPreset p;
  // Every released fuser has the same projector widths; only the heads and
  // head dims follow the pair.
  p.args = ReleasedQwen3Qwen25Args();
  p.args.source_dim = sharer.head_dim;
  p.args.source_num_heads = sharer.num_key_value_heads;
  p.args.target_dim = receiver.head_dim;
  p.args.target_num_heads = receiver.num_key_value_heads;
  p.receiver_layers = static_cast<int>(receiver.num_hidden_layers);
  p.sharer_layers = static_cast<int>(sharer.num_hidden_layers);
  p.base_model = ids[0];
  p.teacher_model = ids[1];
  p.needs_alignment =
      !ReadSameTokenIds(GetModelFamily(receiver.arch), receiver.vocab_size,
                        GetModelFamily(sharer.arch), sharer.vocab_size);
  return p;
}

absl::Status Run() {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return absl::InvalidArgumentError("--out is required");
  RandomFuserOptions o;
  const std::string preset = absl::GetFlag(FLAGS_preset);
  const std::optional<bool> align_flag = absl::GetFlag(FLAGS_is_do_alignment);
  const std::optional<std::string> strategy_flag =
      absl::GetFlag(FLAGS_alignment_strategy);
  bool align = align_flag.value_or(false);
  std::string strategy = strategy_flag.value_or("");
  o.base_model = "Qwen/Qwen3-0.6B";
  o.teacher_model = "Qwen/Qwen2.5-0.5B-Instruct";
  if (!preset.empty()) {
    ASSIGN_OR_RETURN(PairPreset p, ResolvePairPreset(preset));
    o.args = p.args;
    o.receiver_layers = p.receiver_layers;
    o.sharer_layers = p.sharer_layers;
    o.base_model = p.base_model;
    o.teacher_model = p.teacher_model;
    // A sharer with another tokenizer needs token alignment; the released
    // fusers for such pairs were trained with the "longest" strategy.
    if (p.needs_alignment) {
      align = align_flag.value_or(true);
      if (align && !strategy_flag.has_value()) strategy = "longest";
    }
  } else {
    o.args.source_num_heads = absl::GetFlag(FLAGS_source_heads);
    o.args.source_dim = absl::GetFlag(FLAGS_source_dim);
    o.args.target_num_heads = absl::GetFlag(FLAGS_target_heads);
    o.args.target_dim = absl::GetFlag(FLAGS_target_dim);
    o.args.hidden_dim = 32;
    o.args.intermediate_dim = 48;
    o.args.num_layers = 3;
    o.receiver_layers = absl::GetFlag(FLAGS_receiver_layers);
    o.sharer_layers = absl::GetFlag(FLAGS_sharer_layers);
  }
  if (absl::GetFlag(FLAGS_hidden) != 0) {
    o.args.hidden_dim = absl::GetFlag(FLAGS_hidden);
  }
  if (absl::GetFlag(FLAGS_intermediate) != 0) {
    o.args.intermediate_dim = absl::GetFlag(FLAGS_intermediate);
  }
  if (absl::GetFlag(FLAGS_num_layers) != 0) {
    o.args.num_layers = absl::GetFlag(FLAGS_num_layers);
  }
  if (!absl::GetFlag(FLAGS_base_model).empty()) {
    o.base_model = absl::GetFlag(FLAGS_base_model);
  }
  if (!absl::GetFlag(FLAGS_teacher_model).empty()) {
    o.teacher_model = absl::GetFlag(FLAGS_teacher_model);
  }
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "bf16") {
    o.dtype = at::kBFloat16;
  } else if (dtype == "fp16") {
    o.dtype = at::kHalf;
  } else if (dtype == "fp32") {
    o.dtype = at::kFloat;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown --dtype '", dtype, "' (bf16, fp16, fp32)"));
  }
  ASSIGN_OR_RETURN(FuserWeightFormat format,
                   ParseFuserWeightFormat(absl::GetFlag(FLAGS_format)));
  o.seed = absl::GetFlag(FLAGS_seed);
  o.open_gate_fraction = absl::GetFlag(FLAGS_open_gates);
  o.weight_scale = absl::GetFlag(FLAGS_weight_scale);
  o.norm_jitter = absl::GetFlag(FLAGS_norm_jitter);
  if (!strategy.empty() && strategy != "first" && strategy != "longest") {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown --alignment_strategy '", strategy, "' (first, longest)"));
  }
  if (!strategy.empty() && !align) {
    return absl::InvalidArgumentError(
        "--alignment_strategy needs --is_do_alignment");
  }
  ASSIGN_OR_RETURN(FuserCheckpoint ckpt, MakeRandomFuserCheckpoint(o));
  if (align) {
    if (!ckpt.recipe.has_value()) {
      return absl::InternalError("the random checkpoint has no recipe");
    }
    ckpt.recipe->is_do_alignment = true;
    ckpt.recipe->alignment_strategy = strategy;
    ckpt.recipe->raw_json = FuserRecipeJson(
        *ckpt.recipe, ckpt.args.empty() ? C2CProjectorArgs{} : ckpt.args[0]);
  }
  return WriteFuserCheckpoint(out, ckpt, format);
}

}  // namespace
}  // namespace kvwire

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes a random C2C fuser checkpoint in the released layout.");
  kvwire::HelpListsFlagsOf({"tools/fuser/make_fuser_main.cc"});
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = kvwire::Run();
  if (!status.ok()) {
    std::cerr << "kvwire-make-fuser: " << status << "\n";
    return 1;
  }
  std::cout << "wrote " << absl::GetFlag(FLAGS_out) << "\n";
  return 0;
}
