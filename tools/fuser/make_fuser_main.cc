// kvwire-make-fuser: writes a random C2C fuser checkpoint in the released
// layout (config.json, final/projector_{i}.pt + .json, projector_config.json),
// readable by Python's torch.load and by C2CFuser::Load.
//
//   kvwire-make-fuser --out=/tmp/fuser-tiny --receiver_layers=4
//       --sharer_layers=3 --source_heads=2 --source_dim=8 --target_heads=4
//       --target_dim=16 --hidden=32 --intermediate=48 --dtype=fp32
//   kvwire-make-fuser --out=/tmp/fuser-real --preset=qwen3-0.6b+qwen2.5-0.5b
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/flags_help.h"
#include "common/fuser/checkpoint.h"
#include "common/fuser/fuser_config.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, out, "", "Output checkpoint directory (created).");
ABSL_FLAG(std::string, preset, "",
          "qwen3-0.6b+qwen2.5-0.5b: the released fuser's shapes (28 "
          "projectors 2x64 -> 8x128, hidden 1024, 3 layers); overrides the "
          "size flags.");
ABSL_FLAG(int, receiver_layers, 4, "Receiver layers (= projectors).");
ABSL_FLAG(int, sharer_layers, 3, "Sharer layers (last_aligned map).");
ABSL_FLAG(int64_t, source_heads, 2, "Sharer KV heads.");
ABSL_FLAG(int64_t, source_dim, 8, "Sharer head_dim.");
ABSL_FLAG(int64_t, target_heads, 4, "Receiver KV heads.");
ABSL_FLAG(int64_t, target_dim, 16, "Receiver head_dim.");
ABSL_FLAG(int64_t, hidden, 32, "Projector hidden_dim.");
ABSL_FLAG(int64_t, intermediate, 48, "Projector intermediate_dim.");
ABSL_FLAG(int64_t, num_layers, 3, "Projector num_layers (>= 3).");
ABSL_FLAG(std::string, dtype, "bf16", "Stored dtype: bf16 | fp16 | fp32.");
ABSL_FLAG(std::string, format, "pt", "pt | safetensors");
ABSL_FLAG(uint64_t, seed, 0, "Random seed.");
ABSL_FLAG(double, open_gates, 1.0,
          "Fraction of open key/value gates (closed ones get logit -1).");
ABSL_FLAG(double, weight_scale, 1.0,
          "Scale of the Linear weights relative to torch's default init.");
ABSL_FLAG(double, norm_jitter, 0.1,
          "RMSNorm weights are 1 + U(-jitter, jitter).");
ABSL_FLAG(std::string, base_model, "Qwen/Qwen3-0.6B",
          "Recipe (config.json) model.base_model: the receiver.");
ABSL_FLAG(std::string, teacher_model, "Qwen/Qwen2.5-0.5B-Instruct",
          "Recipe (config.json) model.teacher_model: the sharer.");
ABSL_FLAG(bool, is_do_alignment, false,
          "Recipe model.is_do_alignment: the fuser was trained with token "
          "alignment (a sharer with another tokenizer); receivers in "
          "--token_alignment=auto then align.");
ABSL_FLAG(std::string, alignment_strategy, "",
          "Recipe model.alignment_strategy: first or longest (empty: not "
          "written; only with --is_do_alignment).");

namespace kvwire {
namespace {

absl::Status Run() {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return absl::InvalidArgumentError("--out is required");
  RandomFuserOptions o;
  const std::string preset = absl::GetFlag(FLAGS_preset);
  if (preset == "qwen3-0.6b+qwen2.5-0.5b") {
    o.args = ReleasedQwen3Qwen25Args();
    o.receiver_layers = 28;
    o.sharer_layers = 24;
  } else if (!preset.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown --preset '", preset, "'"));
  } else {
    o.args.source_num_heads = absl::GetFlag(FLAGS_source_heads);
    o.args.source_dim = absl::GetFlag(FLAGS_source_dim);
    o.args.target_num_heads = absl::GetFlag(FLAGS_target_heads);
    o.args.target_dim = absl::GetFlag(FLAGS_target_dim);
    o.args.hidden_dim = absl::GetFlag(FLAGS_hidden);
    o.args.intermediate_dim = absl::GetFlag(FLAGS_intermediate);
    o.args.num_layers = absl::GetFlag(FLAGS_num_layers);
    o.receiver_layers = absl::GetFlag(FLAGS_receiver_layers);
    o.sharer_layers = absl::GetFlag(FLAGS_sharer_layers);
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
  o.base_model = absl::GetFlag(FLAGS_base_model);
  o.teacher_model = absl::GetFlag(FLAGS_teacher_model);
  const std::string strategy = absl::GetFlag(FLAGS_alignment_strategy);
  const bool align = absl::GetFlag(FLAGS_is_do_alignment);
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
