// The shared blocks and the one decoder layer (layers.h). Every op here runs
// in the order and dtype HF transformers uses, so that eager forwards, the
// static step and its CUDA graphs agree with the Hugging Face goldens.
#include "common/model/layers.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rsub.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/status_macros.h"

#if TORCH_VERSION_MAJOR >= 2
#include <ATen/ops/scaled_dot_product_attention.h>
#define KVWIRE_HAS_SDPA 1
#else
#define KVWIRE_HAS_SDPA 0
#endif

namespace kvwire {
namespace {

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

// at::scaled_dot_product_attention without dropout, across the LibTorch
// versions that have it (2.0 has no scale argument and uses 1 / sqrt(D),
// which is the scale the decoder passes).
at::Tensor Sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const c10::optional<at::Tensor>& mask, bool causal,
                double scale) {
#if KVWIRE_HAS_SDPA
  return at::scaled_dot_product_attention(q, k, v, mask, 0.0, causal
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
                                          ,
                                          scale
#endif
  );
#else
  TORCH_CHECK(false, "scaled_dot_product_attention needs LibTorch >= 2.0");
  return at::Tensor();
#endif
}

}  // namespace

bool SdpaAvailable() { return KVWIRE_HAS_SDPA; }

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  const at::Tensor normed = xf * (variance + eps).rsqrt();
  return weight * normed.to(x.scalar_type());
}

at::Tensor GemmaRmsNorm(const at::Tensor& x, const at::Tensor& weight,
                        double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor normed =
      xf * (xf.pow(2).mean(-1, /*keepdim=*/true) + eps).rsqrt();
  return (normed * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
}

at::Tensor ModelRmsNorm(const ModelConfig& config, const at::Tensor& x,
                        const at::Tensor& weight) {
  return config.norm_plus_one ? GemmaRmsNorm(x, weight, config.rms_norm_eps)
                              : RmsNorm(x, weight, config.rms_norm_eps);
}

at::Tensor SoftCap(const at::Tensor& x, double cap) {
  if (!(cap > 0)) return x;
  return (x / cap).tanh() * cap;
}

at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos,
                     const at::Tensor& sin) {
  return x * cos + RotateHalf(x) * sin;
}

at::Tensor InvFreq(const RopeConfig& rope, int64_t dim) {
  const at::Tensor exponent =
      at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong))
          .to(at::kFloat) /
      static_cast<double>(dim);
  at::Tensor inv_freq = at::pow(rope.theta, exponent).reciprocal();
  switch (rope.type) {
    case RopeType::kDefault:
      return inv_freq;
    case RopeType::kLinear:
      return inv_freq / rope.factor;
    case RopeType::kLlama3: {
      const double old_len =
          static_cast<double>(rope.original_max_position_embeddings);
      const double low_wavelen = old_len / rope.low_freq_factor;
      const double high_wavelen = old_len / rope.high_freq_factor;
      const at::Tensor wavelen = inv_freq.reciprocal() * (2 * M_PI);
      at::Tensor llama =
          at::where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq);
      const at::Tensor smooth =
          (wavelen.reciprocal() * old_len - rope.low_freq_factor) /
          (rope.high_freq_factor - rope.low_freq_factor);
      const at::Tensor smoothed =
          at::rsub(smooth, 1) * llama / rope.factor + smooth * llama;
      const at::Tensor medium = (wavelen < high_wavelen).logical_not() *
                                (wavelen > low_wavelen).logical_not();
      return at::where(medium, smoothed, llama);
    }
  }
  return inv_freq;
}

at::Tensor AllowedKeys(const at::Tensor& qpos, int64_t span, int64_t window) {
  const at::Tensor kpos = at::arange(
      span, at::TensorOptions().dtype(at::kLong).device(qpos.device()));
  at::Tensor allowed = kpos.le(qpos);
  if (window > 0) allowed = allowed.logical_and((qpos - kpos).lt(window));
  return allowed;
}

at::Tensor SiluMul(const at::Tensor& gate_up, int64_t n) {
  return at::silu(gate_up.narrow(-1, 0, n)) * gate_up.narrow(-1, n, n);
}

at::Tensor GeluTanhMul(const at::Tensor& gate_up, int64_t n) {
  return at::gelu(gate_up.narrow(-1, 0, n), "tanh") * gate_up.narrow(-1, n, n);
}

void KvWrite::Apply(const at::Tensor& cache, const at::Tensor& x) const {
  switch (kind) {
    case Kind::kRange:
      cache.narrow(2, start, x.size(2)).copy_(x);
      return;
    case Kind::kScatter:
      cache.scatter_(2, index, x);
      return;
    case Kind::kIndexCopy:
      cache.index_copy_(2, index, x);
      return;
  }
}

LayerContext::LayerContext(const ModelConfig& config, at::ScalarType dtype,
                           const std::vector<at::Tensor>& inv_freq,
                           const at::Tensor& positions, int64_t span,
                           const at::Tensor& rope_positions)
    : config_(config),
      dtype_(dtype),
      positions_(positions),
      rope_positions_(rope_positions.defined() ? rope_positions : positions),
      batch_(positions.size(0)),
      tokens_(positions.size(1)),
      span_(span),
      groups_(config.num_attention_heads / config.num_key_value_heads),
      scale_(1.0 / std::sqrt(config.query_pre_attn_scalar > 0
                                 ? config.query_pre_attn_scalar
                                 : static_cast<double>(config.head_dim))) {
  const at::Tensor pos_f =
      rope_positions_.to(at::kFloat).unsqueeze(-1);  // [B, T, 1]
  for (const at::Tensor& table : inv_freq) {
    const at::Tensor freqs = pos_f * table;  // [B, T, D/2]
    const at::Tensor emb = at::cat({freqs, freqs}, -1);
    cos_.push_back(emb.cos().to(dtype).unsqueeze(1));
    sin_.push_back(emb.sin().to(dtype).unsqueeze(1));
  }
}

at::Tensor LayerContext::Norm(const at::Tensor& x,
                              const at::Tensor& weight) const {
  // The fused kernel computes the Llama-style norm only.
  return kernels != nullptr && kernels->rms_norm && !config_.norm_plus_one
             ? kernels->rms_norm(x, weight, config_.rms_norm_eps)
             : ModelRmsNorm(config_, x, weight);
}

at::Tensor LayerContext::Rope(const at::Tensor& x,
                              const LayerWeights& w) const {
  const at::Tensor& cos = cos_[w.rope_index];
  const at::Tensor& sin = sin_[w.rope_index];
  return kernels != nullptr && kernels->rope ? kernels->rope(x, cos, sin)
                                             : ApplyRope(x, cos, sin);
}

at::Tensor LayerContext::QkvToCache(const LayerWeights& w,
                                    const at::Tensor& qkv, const at::Tensor& kc,
                                    const at::Tensor& vc) const {
  // The fused kernel's q/k norm is Llama-style: Gemma's runs the ATen ops.
  if (kernels != nullptr && kernels->qkv_to_cache &&
      !(config_.norm_plus_one && w.q_norm.defined())) {
    at::Tensor q = kernels->qkv_to_cache(
        qkv, w.q_norm, w.k_norm, config_.rms_norm_eps, cos_[w.rope_index],
        sin_[w.rope_index], positions_, kc, vc);
    if (q.defined()) return q;  // Else the kernel declined: the ATen steps.
  }
  const int64_t heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t dim = config_.head_dim;
  const int64_t q_out = heads * dim;
  const int64_t kv_out = kv_heads * dim;
  at::Tensor q =
      qkv.narrow(-1, 0, q_out).reshape({batch_, tokens_, heads, dim});
  at::Tensor k =
      qkv.narrow(-1, q_out, kv_out).reshape({batch_, tokens_, kv_heads, dim});
  at::Tensor v = qkv.narrow(-1, q_out + kv_out, kv_out)
                     .reshape({batch_, tokens_, kv_heads, dim});
  if (w.q_norm.defined()) {  // Per-head RMSNorm before RoPE (Qwen3, Gemma3).
    q = Norm(q, w.q_norm);
    k = Norm(k, w.k_norm);
  }
  q = Rope(q.transpose(1, 2), w);
  k = Rope(k.transpose(1, 2), w);
  v = v.transpose(1, 2);
  write.Apply(kc, k);
  write.Apply(vc, v);
  return q;
}

int64_t LayerContext::EffectiveWindow(const LayerWeights& w) const {
  // RoPE positions may spread wider than the span: always masked.
  if (key_rope_positions.defined())
    return std::max<int64_t>(w.sliding_window, 0);
  return w.sliding_window > 0 && w.sliding_window < span_ ? w.sliding_window
                                                          : 0;
}

const at::Tensor& LayerContext::Allowed(int64_t window) {
  auto it = allowed_.find(window);
  if (it != allowed_.end()) return it->second;
  // Right padding (batched eager forwards) needs nothing more: real queries
  // never reach padded keys.
  if (window > 0 && key_rope_positions.defined()) {
    // Causal over cache indices, the window over RoPE positions.
    const at::Tensor causal = AllowedKeys(positions_.unsqueeze(-1), span_, 0);
    const at::Tensor near =
        (rope_positions_.unsqueeze(-1) - key_rope_positions.unsqueeze(1))
            .lt(window);  // [B, T, span]
    return allowed_.emplace(window, causal.logical_and(near).unsqueeze(1))
        .first->second;
  }
  return allowed_
      .emplace(
          window,
          AllowedKeys(positions_.unsqueeze(-1), span_, window).unsqueeze(1))
      .first->second;
}

at::Tensor LayerContext::GroupRowsAllowed(int64_t window) {
  return Allowed(window)
      .unsqueeze(2)
      .expand({batch_, 1, groups_, tokens_, span_})
      .reshape({batch_, 1, groups_ * tokens_, span_});
}

const at::Tensor& LayerContext::AdditiveMask(int64_t window) {
  auto it = additive_.find(window);
  if (it != additive_.end()) return it->second;
  // What SDPA would derive from the boolean mask in every layer.
  at::Tensor mask =
      at::zeros({batch_, 1, groups_ * tokens_, span_},
                at::TensorOptions().dtype(dtype_).device(positions_.device()))
          .masked_fill_(GroupRowsAllowed(window).logical_not(),
                        -std::numeric_limits<double>::infinity());
  return additive_.emplace(window, std::move(mask)).first->second;
}

at::Tensor LayerContext::Attention(const LayerWeights& w, const at::Tensor& q,
                                   const at::Tensor& keys,
                                   const at::Tensor& values) {
  const int64_t heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t dim = config_.head_dim;
  const int64_t b = batch_, n = tokens_;
  const int64_t window = EffectiveWindow(w);
  const bool all_visible = attention.uniform_single_token && window == 0;
  // Query rows (g, t) of each KV head: [B, Hkv, groups * T, D]. A copy
  // when T > 1, so only on the paths that use it.
  auto grouped = [&] { return q.reshape({b, kv_heads, groups_ * n, dim}); };
  // SDPA has no soft-capping: capped scores take HF's eager path.
  if (attention.sdpa && !(config_.attn_logit_softcapping > 0)) {
    if (all_visible) {
      // Every key is visible: grouped queries, no mask.
      return Sdpa(grouped(), keys, values, c10::nullopt, false, scale_)
          .reshape({b, heads, 1, dim});
    }
    if (attention.causal_from_zero && window == 0) {
      // Plain causal prefill: repeat K/V per query head (flash kernel).
      auto repeat = [&](const at::Tensor& t) {
        return groups_ == 1 ? t
                            : t.unsqueeze(2)
                                  .expand({b, kv_heads, groups_, span_, dim})
                                  .reshape({b, heads, span_, dim});
      };
      return Sdpa(q, repeat(keys), repeat(values), c10::nullopt, true, scale_);
    }
    const at::Tensor mask = attention.additive_masks ? AdditiveMask(window)
                                                     : GroupRowsAllowed(window);
    return Sdpa(grouped(), keys, values, mask, false, scale_)
        .reshape({b, heads, n, dim});
  }
  // HF "eager": matmul, scale, mask, fp32 softmax, cast, matmul.
  at::Tensor scores =
      SoftCap(at::matmul(grouped(), keys.transpose(2, 3)) * scale_,
              config_.attn_logit_softcapping);
  if (!all_visible) {
    scores = scores.view({b, kv_heads, groups_, n, span_})
                 .masked_fill(Allowed(window).unsqueeze(2).logical_not(),
                              -std::numeric_limits<double>::infinity())
                 .view({b, kv_heads, groups_ * n, span_});
  }
  const at::Tensor probs = scores.softmax(-1, at::kFloat).to(dtype_);
  return at::matmul(probs, values).reshape({b, heads, n, dim});
}

at::Tensor LayerContext::MlpActivation(const at::Tensor& gate_up) const {
  if (config_.hidden_act == "gelu_pytorch_tanh") {
    return GeluTanhMul(gate_up, config_.intermediate_size);
  }
  return kernels != nullptr && kernels->silu_mul
             ? kernels->silu_mul(gate_up)
             : SiluMul(gate_up, config_.intermediate_size);
}

absl::Status RunDecoderLayer(LayerContext& ctx, int64_t layer,
                             const LayerWeights& w, const at::Tensor& storage,
                             at::Tensor& h) {
  const at::Tensor x = ctx.Norm(h, w.input_norm);
  const at::Tensor qkv = at::linear(x, w.qkv_w, w.qkv_b);
  const at::Tensor kc = storage.select(0, layer).select(0, 0);  // [B,Hkv,C,D]
  const at::Tensor vc = storage.select(0, layer).select(0, 1);
  const at::Tensor q = ctx.QkvToCache(w, qkv, kc, vc);
  if (ctx.on_kv_written) RETURN_IF_ERROR(ctx.on_kv_written(layer, kc, vc, q));
  const at::Tensor attn = ctx.Attention(w, q, kc.narrow(2, 0, ctx.span()),
                                        vc.narrow(2, 0, ctx.span()));
  const at::Tensor attn_out = attn.transpose(1, 2).reshape(
      {ctx.batch(), ctx.tokens(), q.size(1) * q.size(3)});
  at::Tensor o = at::linear(attn_out, w.o_w, w.o_b);
  if (w.attn_out_norm.defined()) o = ctx.Norm(o, w.attn_out_norm);
  h = h + o;
  const at::Tensor gate_up =
      at::linear(ctx.Norm(h, w.post_norm), w.gate_up_w, w.gate_up_b);
  at::Tensor m = at::linear(ctx.MlpActivation(gate_up), w.down_w, w.down_b);
  if (w.mlp_out_norm.defined()) m = ctx.Norm(m, w.mlp_out_norm);
  h = h + m;
  return absl::OkStatus();
}

}  // namespace kvwire
