// The shape-static decoder step (Decoder::StaticDecodeStep), which the
// CUDA-graph decode and prefill accelerators (cuda_graph_decoder.h) and
// batched decode across requests (batched_decode.h) capture and replay, and
// the reference accelerators that run it eagerly for tests. The layer itself
// is layers.h's, configured for device-side positions.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/decoder.h"
#include "common/model/decoder_impl.h"
#include "common/model/layers.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {

int64_t StaticDecodeSpan(int64_t position, int64_t capacity, int64_t min_span) {
  int64_t span = 1;
  while (span < position + 1 || span < min_span) span *= 2;
  return std::min(span, capacity);
}

absl::Status Decoder::StaticDecodeStep(const StaticDecodeIo& io,
                                       const at::Tensor& storage, int64_t span,
                                       const DecodeStepKernels* kernels) const {
  const ModelConfig& c = config_;
  const c10::Device device = options_.device;
  if (!storage.defined() || storage.dim() != 6 ||
      storage.size(0) != c.num_hidden_layers || storage.size(1) != 2 ||
      storage.size(3) != c.num_key_value_heads ||
      storage.size(5) != c.head_dim ||
      storage.scalar_type() != options_.dtype || storage.device() != device) {
    return absl::InvalidArgumentError(
        "static decode needs the storage of a KV cache of this model");
  }
  if (span < 1 || span > storage.size(4)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "static decode span ", span, " outside [1, ", storage.size(4), "]"));
  }
  const int64_t rows = storage.size(2);
  auto is_index = [&](const at::Tensor& t) {
    return t.defined() && t.scalar_type() == at::kLong && t.device() == device;
  };
  const int64_t count = io.token.defined() ? io.token.numel() / rows : 0;
  if (!is_index(io.token) || count < 1 || io.token.numel() != rows * count ||
      !is_index(io.position) || io.position.numel() != rows ||
      (io.rope_offset.defined() &&
       (!is_index(io.rope_offset) || io.rope_offset.numel() != rows)) ||
      (io.logits_row.defined() &&
       (!is_index(io.logits_row) || io.logits_row.numel() != rows)) ||
      (io.logits.defined() && (io.logits.numel() != rows * c.vocab_size ||
                               io.logits.scalar_type() != at::kFloat ||
                               io.logits.device() != device))) {
    return absl::InvalidArgumentError(
        "static decode needs tokens int64 [B * T] (T >= 1), positions (and "
        "RoPE offsets, if any) int64 [B], logits_row (if any) int64 [B] "
        "and logits (if any) fp32 "
        "[B * vocab] on the model device, B being the storage's batch");
  }
  if (count > span) {
    return absl::InvalidArgumentError(absl::StrCat(
        "static decode of ", count, " tokens over a span of ", span));
  }
  return Guarded("static decode step", [&]() -> absl::Status {
    c10::InferenceMode inference;
    const Impl& impl = *impl_;
    const int64_t b = rows;
    const int64_t n = count;
    // Positions [B, T]: position[b] + t, computed on the device.
    const at::Tensor pos =
        n == 1 ? io.position.reshape({b, 1})
               : io.position.reshape({b, 1}) +
                     at::arange(
                         n, at::TensorOptions().dtype(at::kLong).device(device))
                         .view({1, n});
    // RoPE positions: the cache index plus the row's offset, on the device.
    const at::Tensor rope = io.rope_offset.defined()
                                ? pos + io.rope_offset.reshape({b, 1})
                                : at::Tensor();
    LayerContext ctx(c, options_.dtype, impl.inv_freq, pos, span, rope);
    ctx.kernels = kernels;
    // The positions live on the device: no mask shortcuts, and one additive
    // mask per window for SDPA.
    ctx.attention.sdpa = impl.sdpa;
    ctx.attention.additive_masks = true;
    // Cache writes: one position range for a batch of one, per-row
    // positions otherwise.
    if (b == 1) {
      ctx.write.kind = KvWrite::Kind::kIndexCopy;
      ctx.write.index = pos.reshape({n});
    } else {
      ctx.write.kind = KvWrite::Kind::kScatter;
      ctx.write.index = pos.view({b, 1, n, 1})
                            .expand({b, c.num_key_value_heads, n, c.head_dim})
                            .contiguous();
    }

    at::Tensor h = EmbedTokens(impl, io.token, b, n);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      RETURN_IF_ERROR(RunDecoderLayer(ctx, l, impl.layers[l], storage, h));
    }
    if (!io.logits.defined()) return absl::OkStatus();
    // One row per batch row: the last token's (or logits_row's: a padded
    // row's last real token).
    h = io.logits_row.defined()
            ? h.reshape({b, n, c.hidden_size})
                  .gather(1, io.logits_row.view({b, 1, 1}).expand(
                                 {b, 1, c.hidden_size}))
                  .squeeze(1)
            : h.select(1, n - 1);
    h = ctx.Norm(h, impl.final_norm);
    io.logits.view({b, c.vocab_size})
        .copy_(SoftCap(at::linear(h, impl.lm_head), c.final_logit_softcapping));
    return absl::OkStatus();
  });
}

absl::StatusOr<at::Tensor> StaticDecodeAccelerator::DecodeStep(
    const Decoder& decoder, int64_t token_id, const KvCache& cache) {
  if (cache.batch_size() != 1) return at::Tensor();
  const int64_t position = cache.length(0);
  StaticDecodeIo io;
  RETURN_IF_ERROR(Guarded("static decode inputs", [&]() -> absl::Status {
    const auto options =
        at::TensorOptions().dtype(at::kLong).device(decoder.device());
    io.token = at::full({1}, token_id, options);
    io.position = at::full({1}, position, options);
    if (cache.rope_offset(0) != 0) {
      io.rope_offset = at::full({1}, cache.rope_offset(0), options);
    }
    io.logits =
        at::empty({decoder.config().vocab_size}, options.dtype(at::kFloat));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(decoder.StaticDecodeStep(
      io, cache.storage(),
      StaticDecodeSpan(position, cache.capacity(), min_span_)));
  ++steps_;
  return io.logits;
}

absl::StatusOr<AcceleratedPrefill> StaticPrefillAccelerator::Prefill(
    const Decoder& decoder, absl::Span<const int64_t> token_ids,
    const KvCache& cache, bool want_logits) {
  const int64_t n = static_cast<int64_t>(token_ids.size());
  if (cache.batch_size() != 1 || n > capacity_ || cache.rope_offset(0) != 0) {
    return AcceleratedPrefill{};
  }
  ASSIGN_OR_RETURN(KvCache staging,
                   decoder.NewCache(capacity_, 1, CacheSource::kOwnStorage));
  StaticDecodeIo io;
  RETURN_IF_ERROR(Guarded("static prefill inputs", [&]() -> absl::Status {
    const auto options =
        at::TensorOptions().dtype(at::kLong).device(decoder.device());
    io.token =
        VectorToTensor(std::vector<int64_t>(token_ids.begin(), token_ids.end()),
                       {n}, decoder.device());
    io.position = at::zeros({1}, options);
    if (want_logits) {
      io.logits =
          at::empty({decoder.config().vocab_size}, options.dtype(at::kFloat));
    }
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(decoder.StaticDecodeStep(io, staging.storage(),
                                           StaticDecodeSpan(n - 1, capacity_)));
  RETURN_IF_ERROR(CopyCachePrefix(staging.storage(), cache.storage(), n));
  ++prefills_;
  return AcceleratedPrefill{true, io.logits};
}

}  // namespace kvwire
