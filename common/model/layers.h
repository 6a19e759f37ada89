// The decoder's shared blocks over LibTorch (RMSNorm, RoPE incl. its
// scaling variants, masks, attention, the gated-SiLU MLP) and the one
// transformer layer that every forward runs: eager prefill / decode /
// batched forwards (Decoder::Forward) and the shape-static step
// (Decoder::StaticDecodeStep: CUDA-graph decode and prefill, batched decode
// across requests). What those callers do differently is a LayerContext
// built once per forward: how K/V reach the cache, which attention kernel
// and mask, whether layer callbacks fire, and which steps run as fused
// kernels (DecodeStepKernels). Numerics follow HF transformers (decoder.h).
//
// Internal to kvwire_model. These functions throw c10::Error; callers run
// them under Guarded() (torch_guard.h).
#ifndef KVWIRE_COMMON_MODEL_LAYERS_H_
#define KVWIRE_COMMON_MODEL_LAYERS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "common/model/decoder.h"
#include "common/model/model_config.h"

namespace kvwire {

// Whether this LibTorch has at::scaled_dot_product_attention (>= 2.0).
bool SdpaAvailable();

// HF RMSNorm: fp32 statistics, cast back, then weight * x.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);
// HF Gemma3RMSNorm: fp32 statistics times (1 + weight in fp32), cast back.
at::Tensor GemmaRmsNorm(const at::Tensor& x, const at::Tensor& weight,
                        double eps);
// The config's RMSNorm (ModelConfig::norm_plus_one picks Gemma's).
at::Tensor ModelRmsNorm(const ModelConfig& config, const at::Tensor& x,
                        const at::Tensor& weight);
// cap * tanh(x / cap) in x's dtype (HF's soft-capping order); x if cap <= 0.
at::Tensor SoftCap(const at::Tensor& x, double cap);
// HF rotate-half RoPE: x * cos + rotate_half(x) * sin.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos,
                     const at::Tensor& sin);
// RoPE inverse frequencies (fp32, CPU), op for op as transformers computes
// them, with the config's scaling (linear, llama3).
at::Tensor InvFreq(const RopeConfig& rope, int64_t dim);
// Which keys [0, span) queries at positions `qpos` (any shape broadcasting
// against [span], on the model device) may attend: j <= p, and p - j <
// window when window > 0.
at::Tensor AllowedKeys(const at::Tensor& qpos, int64_t span, int64_t window);
// The gated-SiLU MLP's activation: silu(gate) * up for gate_up [..., 2n].
at::Tensor SiluMul(const at::Tensor& gate_up, int64_t n);
// Gemma's gelu_pytorch_tanh(gate) * up for gate_up [..., 2n].
at::Tensor GeluTanhMul(const at::Tensor& gate_up, int64_t n);

// One decoder layer's weights, filled from the family's weight list
// (model_family.h). An undefined tensor is a part the family lacks (a bias,
// the q/k norms, Gemma's norms on the attention and MLP outputs), which the
// layer then skips.
struct LayerWeights {
  at::Tensor input_norm, post_norm;        // Before attention / before the MLP.
  at::Tensor attn_out_norm, mlp_out_norm;  // On their outputs (Gemma3).
  at::Tensor qkv_w, qkv_b;                 // q|k|v fused along the output dim.
  at::Tensor o_w, o_b;
  at::Tensor q_norm, k_norm;
  at::Tensor gate_up_w, gate_up_b;  // gate|up fused.
  at::Tensor down_w, down_b;
  int rope_index = 0;  // Into the decoder's distinct RoPE tables.
  int64_t sliding_window = 0;
};

// How a forward writes its tokens' K/V [B, Hkv, T, D] into a layer's cache
// views [B, Hkv, C, D].
struct KvWrite {
  enum class Kind {
    kRange,      // Every row at positions [start, start + T): a narrow copy.
    kScatter,    // Row b's token t at index[b, :, t, :] (index [B, Hkv, T, D]).
    kIndexCopy,  // One row at positions index [T] (device positions).
  };
  Kind kind = Kind::kRange;
  int64_t start = 0;
  at::Tensor index;

  void Apply(const at::Tensor& cache, const at::Tensor& x) const;
};

// Which attention kernel and mask a forward uses. The shortcuts need the
// positions on the host, so only eager forwards take them.
struct AttentionPlan {
  bool sdpa = false;  // at::scaled_dot_product_attention, else HF "eager".
  // Every row adds one token at the same position: outside a sliding
  // window, that query sees every key of the span, so no mask.
  bool uniform_single_token = false;
  // Every row starts at position 0 with as many tokens: SDPA's causal flag
  // (the flash kernel) instead of a mask.
  bool causal_from_zero = false;
  // SDPA gets an additive mask built once per forward and window instead of
  // a boolean one it converts in every layer: fewer kernels per layer in the
  // captured static step.
  bool additive_masks = false;
};

// Called once a layer's K/V are in the cache: kc / vc the layer's cache
// views [B, Hkv, C, D], q the queries [B, H, T, D] (after norm and RoPE).
using KvWrittenHook =
    std::function<absl::Status(int64_t layer, const at::Tensor& kc,
                               const at::Tensor& vc, const at::Tensor& q)>;

// The per-forward strategy of the decoder layer: the forward's shape, RoPE
// tables and masks, and one method per step that a caller may change.
class LayerContext {
 public:
  // `positions` [B, T] int64 on the model device: token t of row b sits at
  // cache index positions[b, t]; keys [0, span) are attended.
  // `rope_positions` [B, T] (undefined: `positions`) are the tokens' RoPE
  // positions (KvCache::rope_offset, Decoder::PrefillAt). Computes RoPE's
  // cos/sin [B, 1, T, D] (fp32, cast to `dtype`, as HF does) per table of
  // `inv_freq`.
  LayerContext(const ModelConfig& config, at::ScalarType dtype,
               const std::vector<at::Tensor>& inv_freq,
               const at::Tensor& positions, int64_t span,
               const at::Tensor& rope_positions = at::Tensor());

  KvWrite write;
  AttentionPlan attention;
  const DecodeStepKernels* kernels = nullptr;  // Fused steps; null: ATen.
  KvWrittenHook on_kv_written;                 // Empty: none.
  // [B, span] int64 (optional): the RoPE positions of the keys. When set,
  // sliding windows compare RoPE positions (query's minus key's < window),
  // as HF does over a padded sequence; otherwise cache indices.
  at::Tensor key_rope_positions;

  int64_t batch() const { return batch_; }
  int64_t tokens() const { return tokens_; }
  int64_t span() const { return span_; }

  // The steps. Each fused kernel replaces exactly one of them.
  // HF RMSNorm over the last dim (kernels->rms_norm).
  at::Tensor Norm(const at::Tensor& x, const at::Tensor& weight) const;
  // RoPE of x [B, heads, T, D] with the layer's table (kernels->rope).
  at::Tensor Rope(const at::Tensor& x, const LayerWeights& w) const;
  // From the QKV projection [B, T, (H + 2 Hkv) D] to the cache: split, q/k
  // norm, RoPE, K/V written into kc / vc per `write`; returns the queries
  // [B, H, T, D] (kernels->qkv_to_cache, which may decline).
  at::Tensor QkvToCache(const LayerWeights& w, const at::Tensor& qkv,
                        const at::Tensor& kc, const at::Tensor& vc) const;
  // Grouped-query attention of q [B, H, T, D] over keys / values
  // [B, Hkv, span, D] under the layer's mask; returns [B, H, T, D].
  at::Tensor Attention(const LayerWeights& w, const at::Tensor& q,
                       const at::Tensor& keys, const at::Tensor& values);
  // The MLP activation of gate_up [B, T, 2 I] (kernels->silu_mul).
  at::Tensor MlpActivation(const at::Tensor& gate_up) const;

 private:
  // The window a layer's mask applies: 0 when it cuts nothing in the span.
  int64_t EffectiveWindow(const LayerWeights& w) const;
  // Boolean masks [B, 1, T, span] per window, built on first use.
  const at::Tensor& Allowed(int64_t window);
  // The mask per query row of a KV head's group: [B, 1, groups * T, span].
  at::Tensor GroupRowsAllowed(int64_t window);
  // Additive masks (0 / -inf, model dtype) of GroupRowsAllowed, cached.
  const at::Tensor& AdditiveMask(int64_t window);

  const ModelConfig& config_;
  at::ScalarType dtype_;
  at::Tensor positions_, rope_positions_;
  int64_t batch_, tokens_, span_;
  int64_t groups_;
  double scale_;
  std::vector<at::Tensor> cos_, sin_;
  std::map<int64_t, at::Tensor> allowed_, additive_;
};

// Runs decoder layer `layer` (weights `w`, cache storage `storage` of the
// whole model, [layers, 2, B, Hkv, C, D]) over the hidden states h
// [B, T, hidden], replacing them with the layer's output. A non-OK status
// comes from the context's hook.
absl::Status RunDecoderLayer(LayerContext& ctx, int64_t layer,
                             const LayerWeights& w, const at::Tensor& storage,
                             at::Tensor& h);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_LAYERS_H_
