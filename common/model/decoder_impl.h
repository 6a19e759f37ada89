// Internals shared by the translation units of Decoder (decoder.cc,
// decoder_load.cc, kv_cache.cc, static_decode.cc, generation.cc): the loaded
// weights and a few tensor helpers. Internal to kvwire_model.
#ifndef KVWIRE_COMMON_MODEL_DECODER_IMPL_H_
#define KVWIRE_COMMON_MODEL_DECODER_IMPL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/model/decoder.h"
#include "common/model/layers.h"

namespace kvwire {

// What Decoder::Load builds; immutable afterwards.
struct ModelWeights {
  at::Tensor embed;
  // 0-dim, model dtype: sqrt(hidden_size) when config.scale_embeddings
  // (Gemma3), else undefined.
  at::Tensor embed_scale;
  at::Tensor final_norm;
  at::Tensor lm_head;
  std::vector<LayerWeights> layers;
  std::vector<at::Tensor> inv_freq;  // fp32 on device, one per distinct RoPE.
  bool sdpa = false;
};

// Namespace-level ModelWeights so that helpers outside Decoder can fill it.
struct Decoder::Impl : ModelWeights {};

// The hidden states [B, T, hidden] of token ids [B, T] (or [B * T] with
// batch/width given): the embedding rows, scaled as the family does.
at::Tensor EmbedTokens(const ModelWeights& weights, const at::Tensor& ids,
                       int64_t batch, int64_t width);
// The LM head over final hidden states h [..., hidden] (final norm
// included), soft-capped as the config says, in the model dtype.
at::Tensor LmHead(const ModelConfig& config, const ModelWeights& weights,
                  const at::Tensor& h);

// "[a, b, c]".
std::string ShapeString(at::IntArrayRef shape);

// A copy of `v` as an int64 tensor of `shape` on `device`.
at::Tensor VectorToTensor(const std::vector<int64_t>& v, at::IntArrayRef shape,
                          c10::Device device);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_DECODER_IMPL_H_
