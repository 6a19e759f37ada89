// Torch side of the sharer end-to-end tests.
#include "tests/sharer_service/kv_reference.h"

#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/tensor.h>

#include <map>
#include <utility>

#include "common/codec/kv_codec.h"
#include "common/model/decoder.h"
#include "common/status_macros.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

namespace kvwire {

absl::Status WriteTestModel(const std::string& dir) {
  TinyCheckpointOptions options;
  options.config = MakeModelConfig(ModelArch::kQwen2, /*vocab_size=*/256,
                                   /*hidden_size=*/64,
                                   /*intermediate_size=*/128,
                                   /*num_layers=*/4, /*num_heads=*/4,
                                   /*num_kv_heads=*/2, /*head_dim=*/0);
  options.config.tie_word_embeddings = true;
  options.config.eos_token_ids = {255};
  options.dtype = SafetensorsDtype::kF32;
  options.seed = 7;
  options.init_std = 0.2;
  options.bias_std = 0.1;
  return WriteRandomCheckpoint(dir, options);
}

absl::Status WriteWideTestModel(const std::string& dir) {
  TinyCheckpointOptions options;
  options.config = MakeModelConfig(ModelArch::kQwen3, /*vocab_size=*/256,
                                   /*hidden_size=*/64,
                                   /*intermediate_size=*/128,
                                   /*num_layers=*/16, /*num_heads=*/16,
                                   /*num_kv_heads=*/16, /*head_dim=*/64);
  options.config.tie_word_embeddings = true;
  options.dtype = SafetensorsDtype::kF32;
  options.seed = 11;
  return WriteRandomCheckpoint(dir, options);
}

absl::StatusOr<StreamComparison> CompareWithPrefill(
    const std::vector<v1::KvChunk>& chunks, const std::string& model_dir,
    const std::vector<uint32_t>& tokens, int int_bits) {
  KvStreamDecoder decoder(at::kFloat, at::kCPU);
  std::vector<DecodedLayer> decoded;
  for (const v1::KvChunk& chunk : chunks) {
    // ConsumeAll: the stream may batch blocks (KvChunk.blocks).
    ASSIGN_OR_RETURN(std::vector<DecodedLayer> layers,
                     decoder.ConsumeAll(chunk));
    for (DecodedLayer& layer : layers) decoded.push_back(std::move(layer));
  }
  RETURN_IF_ERROR(decoder.Finish());

  at::set_num_threads(1);
  DecoderOptions options;
  options.dtype = at::kFloat;
  ASSIGN_OR_RETURN(std::unique_ptr<Decoder> model,
                   Decoder::Load(model_dir, options));
  ASSIGN_OR_RETURN(KvCache cache,
                   model->NewCache(static_cast<int64_t>(tokens.size())));
  std::map<int64_t, std::pair<at::Tensor, at::Tensor>> reference;
  const std::vector<int64_t> ids(tokens.begin(), tokens.end());
  RETURN_IF_ERROR(
      model
          ->Prefill(
              ids, cache,
              [&](const LayerKv& kv) {
                reference[kv.layer] = {kv.keys.clone(), kv.values.clone()};
                return absl::OkStatus();
              },
              LogitsMode::kNone)
          .status());

  StreamComparison result;
  for (const DecodedLayer& layer : decoded) {
    ++result.layers;
    result.token_indices.push_back(layer.token_indices);
    const at::Tensor idx =
        at::tensor(std::vector<int64_t>(layer.token_indices.begin(),
                                        layer.token_indices.end()),
                   at::TensorOptions().dtype(at::kLong));
    const auto& [ref_k, ref_v] = reference.at(layer.layer);
    for (const auto& [got, ref_full] : {std::make_pair(layer.keys, ref_k),
                                        std::make_pair(layer.values, ref_v)}) {
      const at::Tensor ref = ref_full.index_select(1, idx);
      const at::Tensor rounded = ref.to(at::kBFloat16).to(at::kFloat);
      if (!at::equal(got, rounded)) result.bf16_bit_exact = false;
      const at::Tensor err = (got - ref).abs();
      if (!(err <= ref.abs() / 256.0 + 1e-5).all().item<bool>()) {
        result.bf16_close = false;
      }
      result.max_abs_error =
          std::max(result.max_abs_error, err.max().item<double>());
      if (int_bits > 0) {
        const double qmax = (1 << (int_bits - 1)) - 1;
        // Per head [H, 1, 1]: s/2 with s rounded up to fp16 (< 2^-10 rel).
        const at::Tensor bound = at::amax(ref.abs(), {1, 2}, /*keepdim=*/true) /
                                     qmax * 0.5 * (1.0 + 1.0 / 1024) +
                                 1e-6;
        if (!(err <= bound).all().item<bool>()) result.within_int_bound = false;
      }
    }
  }
  return result;
}

}  // namespace kvwire
