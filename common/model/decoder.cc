// Decoder (decoder.h): option parsing and the eager forward behind
// Prefill / DecodeStep / PrefillBatch / DecodeStepBatch, which hands
// eligible calls to the installed accelerators and otherwise runs the
// shared decoder layer (layers.h) with the positions known on the host.
// Loading lives in decoder_load.cc, the static step in static_decode.cc, the
// KV cache in kv_cache.cc and generation in generation.cc.
#include "common/model/decoder.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/linear.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model/decoder_impl.h"
#include "common/model/layers.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

at::Tensor VectorToTensor(const std::vector<int64_t>& v, at::IntArrayRef shape,
                          c10::Device device) {
  return at::from_blob(const_cast<int64_t*>(v.data()), shape,
                       at::TensorOptions().dtype(at::kLong))
      .to(device, at::kLong, /*non_blocking=*/false, /*copy=*/true);
}

at::Tensor EmbedTokens(const ModelWeights& weights, const at::Tensor& ids,
                       int64_t batch, int64_t width) {
  at::Tensor h = weights.embed.index_select(0, ids.reshape(-1))
                     .view({batch, width, weights.embed.size(1)});
  // HF multiplies by the scale rounded to the embedding's dtype.
  if (weights.embed_scale.defined()) h = h * weights.embed_scale;
  return h;
}

at::Tensor LmHead(const ModelConfig& config, const ModelWeights& weights,
                  const at::Tensor& h) {
  return SoftCap(
      at::linear(ModelRmsNorm(config, h, weights.final_norm), weights.lm_head),
      config.final_logit_softcapping);
}

absl::StatusOr<at::ScalarType> ParseModelDtype(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "bf16" || lower == "bfloat16") return at::kBFloat16;
  if (lower == "fp16" || lower == "float16" || lower == "half")
    return at::kHalf;
  if (lower == "fp32" || lower == "float32" || lower == "float") {
    return at::kFloat;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown model dtype '", name, "' (bf16, fp16, fp32)"));
}

absl::StatusOr<c10::Device> ParseModelDevice(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "cpu") return c10::Device(c10::kCPU);
  if (lower == "cuda") return c10::Device(c10::kCUDA, 0);
  if (absl::StartsWith(lower, "cuda:")) {
    int index = 0;
    if (absl::SimpleAtoi(absl::string_view(lower).substr(5), &index) &&
        index >= 0 && index < 64) {
      return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", name, "' (cpu, cuda, cuda:N)"));
}

absl::StatusOr<at::Tensor> Decoder::Forward(
    const std::vector<std::vector<int64_t>>& tokens, KvCache& cache,
    const LayerCallback* on_layer, LogitsMode logits_mode,
    const std::vector<int64_t>* rope_positions) const {
  const ModelConfig& c = config_;
  if (!cache.defined() || cache.num_layers() != c.num_hidden_layers ||
      cache.num_kv_heads() != c.num_key_value_heads ||
      cache.head_dim() != c.head_dim ||
      cache.storage().scalar_type() != options_.dtype ||
      cache.storage().device() != options_.device) {
    return absl::InvalidArgumentError(
        "KV cache does not belong to this model (use Decoder::NewCache)");
  }
  const int64_t batch = static_cast<int64_t>(tokens.size());
  if (batch != cache.batch_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        batch, " token rows for a KV cache of batch ", cache.batch_size()));
  }
  int64_t width = 0;
  for (const auto& row : tokens) {
    if (row.empty()) return absl::InvalidArgumentError("empty token row");
    width = std::max<int64_t>(width, static_cast<int64_t>(row.size()));
    for (int64_t id : row) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " outside the vocabulary [0, ",
                         c.vocab_size, ")"));
      }
    }
  }
  const std::vector<int64_t> starts = cache.lengths();
  int64_t span = 0;  // Keys attended: [0, span).
  for (int64_t b = 0; b < batch; ++b) {
    if (starts[b] + width > cache.capacity()) {
      return absl::OutOfRangeError(absl::StrCat(
          "KV cache row ", b, " holds ", starts[b], " tokens; ", width,
          " more exceed its capacity of ", cache.capacity()));
    }
    span = std::max(span, starts[b] + width);
  }
  const bool uniform = std::all_of(starts.begin(), starts.end(),
                                   [&](int64_t s) { return s == starts[0]; });
  const bool explicit_positions = rope_positions != nullptr;
  if (explicit_positions &&
      (batch != 1 || static_cast<int64_t>(rope_positions->size()) != width)) {
    return absl::InternalError("explicit RoPE positions need one row");
  }
  if (accelerator_ != nullptr && !explicit_positions && batch == 1 &&
      width == 1 && on_layer == nullptr && logits_mode == LogitsMode::kLast) {
    ASSIGN_OR_RETURN(at::Tensor out,
                     accelerator_->DecodeStep(*this, tokens[0][0], cache));
    if (out.defined()) {
      cache.lengths_[0] = starts[0] + 1;
      return Guarded("decode accelerator output",
                     [&]() -> absl::StatusOr<at::Tensor> {
                       return out.reshape({1, c.vocab_size});
                     });
    }
  }

  // Prefill accelerators run positions [0, n): rows with a RoPE offset run
  // eagerly.
  if (prefill_accelerator_ != nullptr && !explicit_positions && batch == 1 &&
      width >= 2 && starts[0] == 0 && cache.rope_offset(0) == 0 &&
      logits_mode != LogitsMode::kAll) {
    ASSIGN_OR_RETURN(
        AcceleratedPrefill out,
        prefill_accelerator_->Prefill(*this, tokens[0], cache,
                                      logits_mode == LogitsMode::kLast));
    if (out.served) {
      if (on_layer != nullptr && *on_layer) {
        RETURN_IF_ERROR(Guarded("prefill layer callbacks", [&]() {
          for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
            const at::Tensor layer = cache.storage_.select(0, l);
            LayerKv kv{l,
                       0,
                       0,
                       layer.select(0, 0).select(0, 0).narrow(1, 0, width),
                       layer.select(0, 1).select(0, 0).narrow(1, 0, width),
                       at::Tensor()};
            RETURN_IF_ERROR((*on_layer)(kv));
          }
          return absl::OkStatus();
        }));
      }
      cache.lengths_[0] = width;
      if (logits_mode == LogitsMode::kNone) return at::Tensor();
      return Guarded("prefill accelerator output",
                     [&]() -> absl::StatusOr<at::Tensor> {
                       return out.logits.reshape({1, c.vocab_size});
                     });
    }
  }
  return Guarded("decoder forward", [&]() -> absl::StatusOr<at::Tensor> {
    c10::InferenceMode inference;
    const Impl& impl = *impl_;
    const c10::Device device = options_.device;
    std::vector<int64_t> ids(batch * width, 0), pos(batch * width, 0);
    std::vector<int64_t> rope(batch * width, 0);
    bool shifted = explicit_positions;  // Any RoPE position != cache index.
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t offset = cache.rope_offset(b);
      shifted = shifted || offset != 0;
      for (int64_t t = 0; t < width; ++t) {
        const int64_t n = static_cast<int64_t>(tokens[b].size());
        ids[b * width + t] = t < n ? tokens[b][t] : tokens[b][n - 1];
        pos[b * width + t] = starts[b] + t;
        rope[b * width + t] =
            explicit_positions ? (*rope_positions)[t] : starts[b] + t + offset;
      }
    }
    const at::Tensor ids_t = VectorToTensor(ids, {batch, width}, device);
    const at::Tensor pos_t = VectorToTensor(pos, {batch, width}, device);
    const at::Tensor rope_t =
        shifted ? VectorToTensor(rope, {batch, width}, device) : at::Tensor();
    LayerContext ctx(c, options_.dtype, impl.inv_freq, pos_t, span, rope_t);
    if (explicit_positions) {
      // Sliding windows over RoPE positions: the keys already in the row at
      // index + the row's offset, then this call's positions.
      std::vector<int64_t> keys(span);
      for (int64_t j = 0; j < span; ++j) {
        keys[j] = j < starts[0] ? j + cache.rope_offset(0)
                                : (*rope_positions)[j - starts[0]];
      }
      ctx.key_rope_positions = VectorToTensor(keys, {1, span}, device);
    }
    // The host knows the positions: masks are skipped where every key is
    // visible, and a prefill from 0 uses SDPA's causal kernel.
    ctx.attention.sdpa = impl.sdpa;
    ctx.attention.uniform_single_token = uniform && width == 1;
    ctx.attention.causal_from_zero = uniform && starts[0] == 0;

    at::Tensor h = EmbedTokens(impl, ids_t, batch, width);
    if (uniform) {
      ctx.write.kind = KvWrite::Kind::kRange;
      ctx.write.start = starts[0];
    } else {
      ctx.write.kind = KvWrite::Kind::kScatter;
      ctx.write.index =
          pos_t.view({batch, 1, width, 1})
              .expand({batch, c.num_key_value_heads, width, c.head_dim});
    }
    if (on_layer != nullptr && *on_layer) {
      ctx.on_kv_written = [&](int64_t l, const at::Tensor& kc,
                              const at::Tensor& vc,
                              const at::Tensor& q) -> absl::Status {
        for (int64_t b = 0; b < batch; ++b) {
          const int64_t n = static_cast<int64_t>(tokens[b].size());
          const LayerKv kv{l,
                           b,
                           starts[b],
                           kc.select(0, b).narrow(1, starts[b], n),
                           vc.select(0, b).narrow(1, starts[b], n),
                           q.select(0, b).narrow(1, 0, n)};
          RETURN_IF_ERROR((*on_layer)(kv));
        }
        return absl::OkStatus();
      };
    }
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      RETURN_IF_ERROR(
          RunDecoderLayer(ctx, l, impl.layers[l], cache.storage_, h));
    }
    for (int64_t b = 0; b < batch; ++b) {
      cache.lengths_[b] = starts[b] + static_cast<int64_t>(tokens[b].size());
    }
    if (explicit_positions) {
      cache.rope_offsets_.resize(cache.lengths_.size(), 0);
      cache.rope_offsets_[0] = rope_positions->back() + 1 - cache.lengths_[0];
    }
    if (logits_mode == LogitsMode::kNone) return at::Tensor();
    if (logits_mode == LogitsMode::kLast) {
      std::vector<int64_t> last(batch);
      for (int64_t b = 0; b < batch; ++b) {
        last[b] = b * width + static_cast<int64_t>(tokens[b].size()) - 1;
      }
      h = h.reshape({batch * width, c.hidden_size})
              .index_select(0, VectorToTensor(last, {batch}, device));
    }
    return LmHead(c, impl, h).to(at::kFloat);
  });
}

absl::StatusOr<at::Tensor> Decoder::Prefill(absl::Span<const int64_t> token_ids,
                                            KvCache& cache,
                                            const LayerCallback& on_layer,
                                            LogitsMode logits) const {
  if (cache.batch_size() != 1) {
    return absl::InvalidArgumentError(
        "Prefill needs a batch-1 KV cache (use PrefillBatch)");
  }
  std::vector<std::vector<int64_t>> rows{
      std::vector<int64_t>(token_ids.begin(), token_ids.end())};
  ASSIGN_OR_RETURN(
      at::Tensor out,
      Forward(rows, cache, on_layer ? &on_layer : nullptr, logits));
  if (out.defined()) out = out.squeeze(0);
  return out;
}

absl::StatusOr<at::Tensor> Decoder::PrefillAt(
    absl::Span<const int64_t> token_ids, absl::Span<const int64_t> positions,
    KvCache& cache, const LayerCallback& on_layer, LogitsMode logits) const {
  if (cache.batch_size() != 1) {
    return absl::InvalidArgumentError("PrefillAt needs a batch-1 KV cache");
  }
  if (positions.size() != token_ids.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("PrefillAt got ", token_ids.size(), " tokens and ",
                     positions.size(), " positions"));
  }
  if (token_ids.empty()) return absl::InvalidArgumentError("empty token row");
  const int64_t next = cache.length(0) + cache.rope_offset(0);
  if (positions[0] < next) {
    return absl::InvalidArgumentError(
        absl::StrCat("PrefillAt position ", positions[0],
                     " precedes the row's next position ", next));
  }
  bool contiguous = positions[0] == next;
  for (size_t k = 1; k < positions.size(); ++k) {
    if (positions[k] <= positions[k - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("PrefillAt positions must increase strictly; got ",
                       positions[k - 1], " then ", positions[k]));
    }
    contiguous = contiguous && positions[k] == positions[k - 1] + 1;
  }
  // Exactly Prefill's computation (accelerators included).
  if (contiguous) return Prefill(token_ids, cache, on_layer, logits);
  std::vector<std::vector<int64_t>> rows{
      std::vector<int64_t>(token_ids.begin(), token_ids.end())};
  const std::vector<int64_t> rope(positions.begin(), positions.end());
  ASSIGN_OR_RETURN(
      at::Tensor out,
      Forward(rows, cache, on_layer ? &on_layer : nullptr, logits, &rope));
  if (out.defined()) out = out.squeeze(0);
  return out;
}

absl::StatusOr<at::Tensor> Decoder::DecodeStep(int64_t token_id,
                                               KvCache& cache) const {
  const int64_t ids[1] = {token_id};
  return Prefill(absl::MakeConstSpan(ids), cache, nullptr, LogitsMode::kLast);
}

absl::StatusOr<at::Tensor> Decoder::PrefillBatch(
    const std::vector<std::vector<int64_t>>& tokens, KvCache& cache,
    const LayerCallback& on_layer, LogitsMode logits) const {
  return Forward(tokens, cache, on_layer ? &on_layer : nullptr, logits);
}

absl::StatusOr<at::Tensor> Decoder::DecodeStepBatch(
    absl::Span<const int64_t> token_ids, KvCache& cache) const {
  std::vector<std::vector<int64_t>> rows;
  rows.reserve(token_ids.size());
  for (int64_t id : token_ids) rows.push_back({id});
  return Forward(rows, cache, nullptr, LogitsMode::kLast);
}

}  // namespace kvwire
