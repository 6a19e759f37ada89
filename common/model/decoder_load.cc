// Decoder::Load: config.json -> model family -> the family's weight list ->
// checked checkpoint tensors -> the decoder's fused per-layer weights and
// RoPE tables (Decoder::Impl). Nothing here is specific to an architecture:
// the weight list (model_family.h) says which tensor goes where.
#include <ATen/ops/cat.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model/decoder.h"
#include "common/model/decoder_impl.h"
#include "common/model/layers.h"
#include "common/model/safetensors.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {
namespace {

// Every expected tensor present, with its shape and a float dtype, checked
// before anything is converted: NOT_FOUND / INVALID_ARGUMENT naming them.
absl::Status CheckWeights(const CheckpointReader& reader,
                          const std::vector<WeightSpec>& specs,
                          const ModelConfig& config,
                          const std::string& model_dir) {
  std::vector<std::string> missing, mismatched;
  for (const WeightSpec& spec : specs) {
    const SafetensorsTensorInfo* info = reader.Info(spec.name);
    if (info == nullptr) {
      missing.push_back(spec.name);
    } else if (info->shape != spec.shape) {
      mismatched.push_back(absl::StrCat(spec.name, " is ",
                                        ShapeString(info->shape), ", expected ",
                                        ShapeString(spec.shape)));
    } else if (info->dtype != SafetensorsDtype::kBF16 &&
               info->dtype != SafetensorsDtype::kF16 &&
               info->dtype != SafetensorsDtype::kF32) {
      mismatched.push_back(absl::StrCat(spec.name, " has dtype ",
                                        SafetensorsDtypeName(info->dtype)));
    }
  }
  auto listing = [](const std::vector<std::string>& names) {
    constexpr size_t kShown = 8;
    std::string s = absl::StrJoin(
        names.begin(), names.begin() + std::min(names.size(), kShown), ", ");
    if (names.size() > kShown) {
      absl::StrAppend(&s, ", ... (", names.size() - kShown, " more)");
    }
    return s;
  };
  if (!missing.empty()) {
    return absl::NotFoundError(absl::StrCat(
        model_dir, ": checkpoint for ", config.architecture, " lacks ",
        missing.size(), " tensor(s): ", listing(missing)));
  }
  if (!mismatched.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, ": unusable tensor(s): ", listing(mismatched)));
  }
  // Tensors the architecture has no place for mean the checkpoint is of
  // another model (e.g. a Qwen2 relabelled Llama would lose its attention
  // biases): an error, as loading would compute something else. HF's
  // non-persistent RoPE buffers and a tied model's lm_head copy are fine.
  std::unordered_set<std::string> expected;
  for (const WeightSpec& spec : specs) expected.insert(spec.name);
  std::vector<std::string> unused;
  for (const std::string& name : reader.Names()) {
    if (expected.count(name) > 0 ||
        absl::EndsWith(name, "rotary_emb.inv_freq") ||
        (config.tie_word_embeddings && name == "lm_head.weight")) {
      continue;
    }
    unused.push_back(name);
  }
  if (!unused.empty()) {
    std::sort(unused.begin(), unused.end());
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, ": checkpoint has ", unused.size(),
                     " tensor(s) that ", config.architecture,
                     " does not use (is config.json's architecture "
                     "right?): ",
                     listing(unused)));
  }
  return absl::OkStatus();
}

// Where the decoder keeps the tensor of `spec`; null for a layer the model
// does not have.
at::Tensor* SlotTensor(ModelWeights& impl, const WeightSpec& spec) {
  using Slot = WeightSpec::Slot;
  switch (spec.slot) {
    case Slot::kEmbedding:
      return &impl.embed;
    case Slot::kFinalNorm:
      return &impl.final_norm;
    case Slot::kLmHead:
      return &impl.lm_head;
    default:
      break;
  }
  if (spec.layer < 0 ||
      spec.layer >= static_cast<int64_t>(impl.layers.size())) {
    return nullptr;
  }
  LayerWeights& w = impl.layers[spec.layer];
  switch (spec.slot) {
    case Slot::kInputNorm:
      return &w.input_norm;
    case Slot::kPostNorm:
      return &w.post_norm;
    case Slot::kQkv:
      return &w.qkv_w;
    case Slot::kQkvBias:
      return &w.qkv_b;
    case Slot::kOut:
      return &w.o_w;
    case Slot::kOutBias:
      return &w.o_b;
    case Slot::kQNorm:
      return &w.q_norm;
    case Slot::kKNorm:
      return &w.k_norm;
    case Slot::kGateUp:
      return &w.gate_up_w;
    case Slot::kGateUpBias:
      return &w.gate_up_b;
    case Slot::kDown:
      return &w.down_w;
    case Slot::kDownBias:
      return &w.down_b;
    case Slot::kAttnOutNorm:
      return &w.attn_out_norm;
    case Slot::kMlpOutNorm:
      return &w.mlp_out_norm;
    default:
      return nullptr;
  }
}

}  // namespace

Decoder::Decoder(ModelConfig config, DecoderOptions options)
    : config_(std::move(config)),
      options_(options),
      impl_(std::make_unique<Impl>()) {}

Decoder::~Decoder() = default;

bool Decoder::uses_sdpa() const { return impl_->sdpa; }

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Load(
    const std::string& model_dir, const DecoderOptions& options) {
  if (options.dtype != at::kFloat && options.dtype != at::kBFloat16 &&
      options.dtype != at::kHalf) {
    return absl::InvalidArgumentError("model dtype must be bf16, fp16 or fp32");
  }
  if (options.attention == AttentionImpl::kSdpa && !SdpaAvailable()) {
    return absl::UnimplementedError(
        "scaled_dot_product_attention needs LibTorch >= 2.0");
  }
  if (options.sliding_window_override < 0) {
    return absl::InvalidArgumentError("sliding_window_override must be >= 0");
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  // C2C loads Gemma-3 with sliding_window=4096: every sliding layer takes
  // the override (config() then reports it).
  if (options.sliding_window_override > 0) {
    for (LayerConfig& layer : config.layers) {
      if (layer.sliding_window > 0) {
        layer.sliding_window = options.sliding_window_override;
      }
    }
  }
  ASSIGN_OR_RETURN(CheckpointReader reader, CheckpointReader::Open(model_dir));
  const std::vector<WeightSpec> specs = ExpectedWeights(config);
  RETURN_IF_ERROR(CheckWeights(reader, specs, config, model_dir));

  std::unique_ptr<Decoder> decoder(new Decoder(config, options));
  RETURN_IF_ERROR(Guarded("loading " + model_dir, [&]() -> absl::Status {
    c10::NoGradGuard no_grad;
    Impl& impl = *decoder->impl_;
    const ModelConfig& c = decoder->config_;
    impl.sdpa = SdpaAvailable() && options.attention != AttentionImpl::kPlain;
    impl.layers.resize(c.num_hidden_layers);
    // Consecutive specs of one layer and slot are parts of one tensor.
    std::vector<at::Tensor> parts;
    for (size_t i = 0; i < specs.size(); ++i) {
      const WeightSpec& spec = specs[i];
      ASSIGN_OR_RETURN(at::Tensor t, reader.Get(spec.name));
      // Zero-copy when the file already has the dtype and we stay on CPU.
      parts.push_back(t.to(options.device, options.dtype));
      if (i + 1 < specs.size() && specs[i + 1].slot == spec.slot &&
          specs[i + 1].layer == spec.layer) {
        continue;
      }
      at::Tensor* slot = SlotTensor(impl, spec);
      if (slot == nullptr) {
        return absl::InternalError(
            absl::StrCat("no place for weight ", spec.name));
      }
      *slot = parts.size() == 1 ? std::move(parts[0]) : at::cat(parts, 0);
      parts.clear();
    }
    if (c.tie_word_embeddings) impl.lm_head = impl.embed;
    if (c.scale_embeddings) {
      // torch.tensor(hidden_size ** 0.5) (fp32), then .to(weight.dtype).
      impl.embed_scale =
          at::scalar_tensor(std::sqrt(static_cast<double>(c.hidden_size)),
                            at::TensorOptions().dtype(at::kFloat))
              .to(options.device, options.dtype);
    }
    // One RoPE table per distinct RopeConfig.
    std::vector<RopeConfig> ropes;
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      const LayerConfig& lc = c.layers[i];
      LayerWeights& w = impl.layers[i];
      auto found = std::find(ropes.begin(), ropes.end(), lc.rope);
      w.rope_index = static_cast<int>(found - ropes.begin());
      if (found == ropes.end()) ropes.push_back(lc.rope);
      w.sliding_window = lc.sliding_window;
    }
    for (const RopeConfig& rope : ropes) {
      impl.inv_freq.push_back(InvFreq(rope, c.head_dim).to(options.device));
    }
    return absl::OkStatus();
  }));
  return decoder;
}

}  // namespace kvwire
