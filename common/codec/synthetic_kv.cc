#include "common/codec/synthetic_kv.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"

namespace kvwire {

std::vector<std::pair<at::Tensor, at::Tensor>> MakeSyntheticKv(
    const SyntheticKvOptions& o) {
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  std::vector<std::pair<at::Tensor, at::Tensor>> layers;
  for (int64_t l = 0; l < o.layers; ++l) {
    // Keys: N(0,1) with ~1/16 of the channels of each head scaled 10-20x.
    at::Tensor channel_scale = at::ones({o.kv_heads, 1, o.head_dim}, f32);
    at::Tensor outliers =
        at::rand({o.kv_heads, 1, o.head_dim}, gen, f32).lt(1.0 / 16);
    at::Tensor magnitude =
        at::rand({o.kv_heads, 1, o.head_dim}, gen, f32) * 10 + 10;
    channel_scale = at::where(outliers, magnitude, channel_scale);
    at::Tensor keys =
        at::randn({o.kv_heads, o.tokens, o.head_dim}, gen, f32) * channel_scale;
    // Values: per-token magnitude exp(N(0, 0.5)).
    at::Tensor token_scale =
        at::exp(at::randn({1, o.tokens, 1}, gen, f32) * 0.5);
    at::Tensor values =
        at::randn({o.kv_heads, o.tokens, o.head_dim}, gen, f32) * token_scale;
    layers.emplace_back(keys.to(o.dtype), values.to(o.dtype));
  }
  return layers;
}

v1::ModelInfo SyntheticModelInfo(const SyntheticKvOptions& o) {
  v1::ModelInfo m;
  m.set_fingerprint(absl::StrCat("synthetic-", o.seed));
  m.set_architecture("synthetic");
  m.set_name(
      absl::StrCat("synthetic ", o.layers, "x", o.kv_heads, "x", o.head_dim));
  m.set_num_layers(static_cast<uint32_t>(o.layers));
  m.set_num_kv_heads(static_cast<uint32_t>(o.kv_heads));
  m.set_head_dim(static_cast<uint32_t>(o.head_dim));
  m.set_dtype(o.dtype == at::kHalf    ? v1::DTYPE_FP16
              : o.dtype == at::kFloat ? v1::DTYPE_FP32
                                      : v1::DTYPE_BF16);
  return m;
}

}  // namespace kvwire
