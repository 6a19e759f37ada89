// kvwire-make-checkpoint: writes a random-weight checkpoint in the Hugging
// Face layout for any supported architecture.
//
//   kvwire-make-checkpoint --out=/tmp/tiny-qwen3 --arch=qwen3 --layers=2
//       --hidden=64 --heads=4 --kv_heads=2 --head_dim=32 --vocab=512
//   kvwire-make-checkpoint --out=/tmp/qwen3-0.6b-random --preset=qwen3-0.6b
//   kvwire-make-checkpoint --out=/tmp/m --config=/path/to/hf/config.json
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/flags_help.h"
#include "common/model/model_config.h"
#include "common/model/safetensors.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

ABSL_FLAG(std::string, out, "", "Output model directory (created).");
ABSL_FLAG(std::string, preset, "",
          "Real model shapes: qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, "
          "qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, llama-3.2-1b, gemma-3-1b "
          "or mistral-7b-v0.3 (overrides the size flags).");
ABSL_FLAG(std::string, config, "",
          "A Hugging Face config.json, or a directory holding one: the model "
          "comes from it and it is copied byte for byte (with the "
          "generation_config.json next to it, if any); overrides the size "
          "flags; not with --preset or --eos_ids.");
ABSL_FLAG(std::string, arch, "qwen3",
          "qwen2 | qwen3 | llama | mistral | gemma3_text (or the HF "
          "architecture name).");
ABSL_FLAG(int64_t, layers, 2, "num_hidden_layers");
ABSL_FLAG(int64_t, hidden, 64, "hidden_size");
ABSL_FLAG(int64_t, heads, 4, "num_attention_heads");
ABSL_FLAG(int64_t, kv_heads, 2, "num_key_value_heads");
ABSL_FLAG(int64_t, head_dim, 0, "head_dim (0: hidden / heads)");
ABSL_FLAG(int64_t, vocab, 512, "vocab_size");
ABSL_FLAG(int64_t, intermediate, 128, "intermediate_size");
ABSL_FLAG(int64_t, max_position, 32768, "max_position_embeddings");
ABSL_FLAG(double, rope_theta, 0, "RoPE theta (0: the architecture default)");
ABSL_FLAG(std::string, rope_scaling, "", "'' or 'llama3'");
ABSL_FLAG(double, rope_factor, 8.0, "llama3 scaling factor");
ABSL_FLAG(int64_t, rope_original_max_position, 8192,
          "llama3 original_max_position_embeddings");
ABSL_FLAG(bool, tie_embeddings, true, "tie_word_embeddings");
ABSL_FLAG(bool, attention_bias, false, "attention_bias (Llama/Qwen3)");
ABSL_FLAG(std::string, eos_ids, "",
          "Comma-separated EOS ids (default: vocab-1)");
ABSL_FLAG(uint64_t, seed, 0, "Random seed");
ABSL_FLAG(std::string, dtype, "bf16", "bf16 | fp16 | fp32");
ABSL_FLAG(double, init_std, 0.02, "Std of linear/embedding weights");
ABSL_FLAG(double, norm_std, 0.1, "Norm weights are 1 + N(0, norm_std)");
ABSL_FLAG(double, bias_std, 0.02, "Std of biases");
ABSL_FLAG(int, threads, 0,
          "Generator threads (0: all cores); the output does not depend on "
          "it.");
ABSL_FLAG(int, shards, 1, "Number of safetensors shards (>1 writes an index)");

namespace kvwire {
namespace {

absl::Status Run() {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return absl::InvalidArgumentError("--out is required");
  TinyCheckpointOptions options;
  options.seed = absl::GetFlag(FLAGS_seed);
  options.init_std = absl::GetFlag(FLAGS_init_std);
  options.norm_std = absl::GetFlag(FLAGS_norm_std);
  options.bias_std = absl::GetFlag(FLAGS_bias_std);
  options.num_shards = absl::GetFlag(FLAGS_shards);
  options.threads = absl::GetFlag(FLAGS_threads);
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "bf16") {
    options.dtype = SafetensorsDtype::kBF16;
  } else if (dtype == "fp16") {
    options.dtype = SafetensorsDtype::kF16;
  } else if (dtype == "fp32") {
    options.dtype = SafetensorsDtype::kF32;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown --dtype '", dtype, "' (bf16, fp16, fp32)"));
  }
  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (!config_path.empty()) {
    if (!absl::GetFlag(FLAGS_preset).empty()) {
      return absl::InvalidArgumentError("--config and --preset are exclusive");
    }
    // The config.json copy is what Hugging Face reads, so EOS ids that
    // differ from it would make the two disagree.
    if (!absl::GetFlag(FLAGS_eos_ids).empty()) {
      return absl::InvalidArgumentError(
          "--eos_ids does not apply with --config (edit the config instead)");
    }
    return WriteRandomCheckpointForConfigFile(config_path, out, options);
  }
  ModelConfig& c = options.config;
  if (!absl::GetFlag(FLAGS_preset).empty()) {
    auto preset = PresetModelConfig(absl::GetFlag(FLAGS_preset));
    if (!preset.ok()) return preset.status();
    c = *preset;
  } else {
    auto arch = ParseModelArch(absl::GetFlag(FLAGS_arch));
    if (!arch.ok()) return arch.status();
    c = MakeModelConfig(
        *arch, absl::GetFlag(FLAGS_vocab), absl::GetFlag(FLAGS_hidden),
        absl::GetFlag(FLAGS_intermediate), absl::GetFlag(FLAGS_layers),
        absl::GetFlag(FLAGS_heads), absl::GetFlag(FLAGS_kv_heads),
        absl::GetFlag(FLAGS_head_dim));
    c.max_position_embeddings = absl::GetFlag(FLAGS_max_position);
    c.tie_word_embeddings = absl::GetFlag(FLAGS_tie_embeddings);
    if (absl::GetFlag(FLAGS_attention_bias) && *arch != ModelArch::kQwen2) {
      c.qkv_bias = c.o_bias = true;
    }
    if (absl::GetFlag(FLAGS_rope_theta) > 0) {
      c.rope.theta = absl::GetFlag(FLAGS_rope_theta);
    }
    const std::string scaling = absl::GetFlag(FLAGS_rope_scaling);
    if (scaling == "llama3") {
      c.rope.type = RopeType::kLlama3;
      c.rope.factor = absl::GetFlag(FLAGS_rope_factor);
      c.rope.low_freq_factor = 1.0;
      c.rope.high_freq_factor = 4.0;
      c.rope.original_max_position_embeddings =
          absl::GetFlag(FLAGS_rope_original_max_position);
    } else if (!scaling.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported --rope_scaling '", scaling, "'"));
    }
    // The flags' RoPE on every layer, except Gemma3's sliding layers, which
    // keep their local RoPE (the layer types and windows are the family's
    // defaults).
    for (LayerConfig& layer : c.layers) {
      if (*arch != ModelArch::kGemma3 ||
          layer.attention_type == "full_attention") {
        layer.rope = c.rope;
      }
    }
    c.eos_token_ids = {c.vocab_size - 1};
  }
  const std::string eos = absl::GetFlag(FLAGS_eos_ids);
  if (!eos.empty()) {
    c.eos_token_ids.clear();
    for (absl::string_view part : absl::StrSplit(eos, ',')) {
      int64_t id = 0;
      if (!absl::SimpleAtoi(part, &id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad --eos_ids entry '", part, "'"));
      }
      c.eos_token_ids.push_back(id);
    }
  }
  return WriteRandomCheckpoint(out, options);
}

}  // namespace
}  // namespace kvwire

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes a random-weight Hugging Face checkpoint (config.json, "
      "generation_config.json, safetensors).");
  kvwire::HelpListsFlagsOf({"tools/make_tiny_checkpoint/main.cc"});
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = kvwire::Run();
  if (!status.ok()) {
    std::cerr << "kvwire-make-checkpoint: " << status << "\n";
    return 1;
  }
  std::cout << "wrote " << absl::GetFlag(FLAGS_out) << "\n";
  return 0;
}
