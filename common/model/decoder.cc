#include "common/model/decoder.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rsub.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model/batched_decode.h"
#include "common/model/safetensors.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

#if TORCH_VERSION_MAJOR >= 2
#include <ATen/ops/scaled_dot_product_attention.h>
#define KVWIRE_HAS_SDPA 1
#else
#define KVWIRE_HAS_SDPA 0
#endif

namespace kvwire {
namespace {

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// HF RMSNorm: fp32 statistics, cast back, then weight * x.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  const at::Tensor normed = xf * (variance + eps).rsqrt();
  return weight * normed.to(x.scalar_type());
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

// Inverse frequencies (fp32, CPU), op for op as transformers computes them.
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

// RoPE's cos/sin [B, 1, T, D] for fp32 positions `pos_f` [B, T, 1], one
// pair per distinct inverse-frequency table: computed in fp32, then cast to
// the model dtype, as HF does.
void RopeCosSin(const std::vector<at::Tensor>& inv_freqs,
                const at::Tensor& pos_f, at::ScalarType dtype,
                std::vector<at::Tensor>* cos, std::vector<at::Tensor>* sin) {
  for (const at::Tensor& inv_freq : inv_freqs) {
    const at::Tensor freqs = pos_f * inv_freq;  // [B, T, D/2]
    const at::Tensor emb = at::cat({freqs, freqs}, -1);
    cos->push_back(emb.cos().to(dtype).unsqueeze(1));
    sin->push_back(emb.sin().to(dtype).unsqueeze(1));
  }
}

// Which keys [0, span) queries at positions `qpos` (any shape broadcasting
// against [span], on the model device) may attend: j <= p, and p - j <
// window when window > 0.
at::Tensor AllowedKeys(const at::Tensor& qpos, int64_t span, int64_t window) {
  const at::Tensor kpos = at::arange(
      span, at::TensorOptions().dtype(at::kLong).device(qpos.device()));
  at::Tensor allowed = kpos.le(qpos);
  if (window > 0) allowed = allowed.logical_and((qpos - kpos).lt(window));
  return allowed;
}

at::Tensor VectorToTensor(const std::vector<int64_t>& v, at::IntArrayRef shape,
                          c10::Device device) {
  return at::from_blob(const_cast<int64_t*>(v.data()), shape,
                       at::TensorOptions().dtype(at::kLong))
      .to(device, at::kLong, /*non_blocking=*/false, /*copy=*/true);
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A uniform double in [0, 1) determined by (seed, step).
double UniformDraw(uint64_t seed, int64_t step) {
  std::mt19937_64 rng(
      SplitMix64(seed) ^
      SplitMix64(0x5851f42d4c957f2dULL + static_cast<uint64_t>(step)));
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace

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

// ---------------------------------------------------------------------------
// KvCache

int64_t KvCache::length(int64_t row) const {
  return row >= 0 && row < batch_size() ? lengths_[row] : 0;
}

at::Tensor KvCache::Keys(int64_t layer, int64_t row) const {
  if (!defined() || layer < 0 || layer >= num_layers() || row < 0 ||
      row >= batch_size()) {
    return at::Tensor();
  }
  try {
    return storage_.select(0, layer).select(0, 0).select(0, row).narrow(
        1, 0, lengths_[row]);
  } catch (const c10::Error&) {
    return at::Tensor();
  }
}

at::Tensor KvCache::Values(int64_t layer, int64_t row) const {
  if (!defined() || layer < 0 || layer >= num_layers() || row < 0 ||
      row >= batch_size()) {
    return at::Tensor();
  }
  try {
    return storage_.select(0, layer).select(0, 1).select(0, row).narrow(
        1, 0, lengths_[row]);
  } catch (const c10::Error&) {
    return at::Tensor();
  }
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>> KvCache::Read(
    int64_t layer, int64_t start, int64_t count, int64_t row) const {
  if (!defined()) return absl::FailedPreconditionError("KV cache is empty");
  if (layer < 0 || layer >= num_layers() || row < 0 || row >= batch_size()) {
    return absl::OutOfRangeError(
        absl::StrCat("KV cache has no layer ", layer, " / row ", row));
  }
  if (start < 0 || count < 0 || start + count > lengths_[row]) {
    return absl::OutOfRangeError(
        absl::StrCat("KV cache read [", start, ", ", start + count,
                     ") outside the row's ", lengths_[row], " tokens"));
  }
  return Guarded("KvCache::Read",
                 [&]() -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
                   const at::Tensor l = storage_.select(0, layer);
                   return std::make_pair(
                       l.select(0, 0).select(0, row).narrow(1, start, count),
                       l.select(0, 1).select(0, row).narrow(1, start, count));
                 });
}

absl::Status KvCache::Write(int64_t layer, int64_t start,
                            const at::Tensor& keys, const at::Tensor& values,
                            int64_t row) {
  if (!defined()) return absl::FailedPreconditionError("KV cache is empty");
  if (layer < 0 || layer >= num_layers() || row < 0 || row >= batch_size()) {
    return absl::OutOfRangeError(
        absl::StrCat("KV cache has no layer ", layer, " / row ", row));
  }
  if (!keys.defined() || !values.defined() || keys.dim() != 3 ||
      keys.sizes() != values.sizes() || keys.size(0) != num_kv_heads() ||
      keys.size(2) != head_dim()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache write needs keys and values of shape [", num_kv_heads(),
        ", n, ", head_dim(), "]; got ",
        keys.defined() ? ShapeString(keys.sizes()) : "undefined", " and ",
        values.defined() ? ShapeString(values.sizes()) : "undefined"));
  }
  const int64_t n = keys.size(1);
  if (start < 0 || start > lengths_[row] || start + n > capacity()) {
    return absl::OutOfRangeError(absl::StrCat(
        "KV cache write [", start, ", ", start + n, ") invalid for a row of ",
        lengths_[row], " tokens and capacity ", capacity()));
  }
  return Guarded("KvCache::Write", [&]() -> absl::Status {
    c10::NoGradGuard no_grad;
    const at::Tensor l = storage_.select(0, layer);
    l.select(0, 0).select(0, row).narrow(1, start, n).copy_(keys);
    l.select(0, 1).select(0, row).narrow(1, start, n).copy_(values);
    lengths_[row] = std::max(lengths_[row], start + n);
    return absl::OkStatus();
  });
}

absl::Status KvCache::SetLength(int64_t row, int64_t length) {
  if (row < 0 || row >= batch_size()) {
    return absl::OutOfRangeError(absl::StrCat("KV cache has no row ", row));
  }
  if (length < 0 || length > capacity()) {
    return absl::OutOfRangeError(absl::StrCat(
        "KV cache length ", length, " outside [0, ", capacity(), "]"));
  }
  lengths_[row] = length;
  return absl::OkStatus();
}

void KvCache::Clear() { std::fill(lengths_.begin(), lengths_.end(), 0); }

// ---------------------------------------------------------------------------
// Decoder

struct LayerWeights {
  at::Tensor input_norm, post_norm;
  at::Tensor qkv_w, qkv_b;  // q|k|v fused along the output dim.
  at::Tensor o_w, o_b;
  at::Tensor q_norm, k_norm;
  at::Tensor gate_up_w, gate_up_b;  // gate|up fused.
  at::Tensor down_w, down_b;
  int rope_index = 0;
  int64_t sliding_window = 0;
};

struct Decoder::Impl {
  at::Tensor embed;
  at::Tensor final_norm;
  at::Tensor lm_head;
  std::vector<LayerWeights> layers;
  std::vector<at::Tensor> inv_freq;  // fp32 on device, one per distinct RoPE.
  bool sdpa = false;
};

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
  if (options.attention == AttentionImpl::kSdpa && !KVWIRE_HAS_SDPA) {
    return absl::UnimplementedError(
        "scaled_dot_product_attention needs LibTorch >= 2.0");
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(CheckpointReader reader, CheckpointReader::Open(model_dir));

  // Check every expected tensor before converting anything.
  const std::vector<WeightSpec> specs = ExpectedWeights(config);
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

  std::unique_ptr<Decoder> decoder(new Decoder(config, options));
  absl::Status status = Guarded("loading " + model_dir, [&]() -> absl::Status {
    c10::NoGradGuard no_grad;
    Impl& impl = *decoder->impl_;
    const ModelConfig& c = decoder->config_;
    auto get = [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
      ASSIGN_OR_RETURN(at::Tensor t, reader.Get(name));
      // Zero-copy when the file already has the dtype and we stay on CPU.
      return t.to(options.device, options.dtype);
    };
#if KVWIRE_HAS_SDPA
    impl.sdpa = options.attention != AttentionImpl::kPlain;
#endif
    ASSIGN_OR_RETURN(impl.embed, get("model.embed_tokens.weight"));
    ASSIGN_OR_RETURN(impl.final_norm, get("model.norm.weight"));
    if (c.tie_word_embeddings) {
      impl.lm_head = impl.embed;
    } else {
      ASSIGN_OR_RETURN(impl.lm_head, get("lm_head.weight"));
    }
    std::vector<RopeConfig> ropes;
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      const std::string p = absl::StrCat("model.layers.", i, ".");
      LayerWeights w;
      ASSIGN_OR_RETURN(w.input_norm, get(p + "input_layernorm.weight"));
      ASSIGN_OR_RETURN(w.post_norm, get(p + "post_attention_layernorm.weight"));
      ASSIGN_OR_RETURN(at::Tensor q, get(p + "self_attn.q_proj.weight"));
      ASSIGN_OR_RETURN(at::Tensor k, get(p + "self_attn.k_proj.weight"));
      ASSIGN_OR_RETURN(at::Tensor v, get(p + "self_attn.v_proj.weight"));
      w.qkv_w = at::cat({q, k, v}, 0);
      if (c.qkv_bias) {
        ASSIGN_OR_RETURN(at::Tensor qb, get(p + "self_attn.q_proj.bias"));
        ASSIGN_OR_RETURN(at::Tensor kb, get(p + "self_attn.k_proj.bias"));
        ASSIGN_OR_RETURN(at::Tensor vb, get(p + "self_attn.v_proj.bias"));
        w.qkv_b = at::cat({qb, kb, vb}, 0);
      }
      ASSIGN_OR_RETURN(w.o_w, get(p + "self_attn.o_proj.weight"));
      if (c.o_bias) {
        ASSIGN_OR_RETURN(w.o_b, get(p + "self_attn.o_proj.bias"));
      }
      if (c.qk_norm) {
        ASSIGN_OR_RETURN(w.q_norm, get(p + "self_attn.q_norm.weight"));
        ASSIGN_OR_RETURN(w.k_norm, get(p + "self_attn.k_norm.weight"));
      }
      ASSIGN_OR_RETURN(at::Tensor gate, get(p + "mlp.gate_proj.weight"));
      ASSIGN_OR_RETURN(at::Tensor up, get(p + "mlp.up_proj.weight"));
      w.gate_up_w = at::cat({gate, up}, 0);
      ASSIGN_OR_RETURN(w.down_w, get(p + "mlp.down_proj.weight"));
      if (c.mlp_bias) {
        ASSIGN_OR_RETURN(at::Tensor gb, get(p + "mlp.gate_proj.bias"));
        ASSIGN_OR_RETURN(at::Tensor ub, get(p + "mlp.up_proj.bias"));
        w.gate_up_b = at::cat({gb, ub}, 0);
        ASSIGN_OR_RETURN(w.down_b, get(p + "mlp.down_proj.bias"));
      }
      const LayerConfig& lc = c.layers[i];
      auto found = std::find(ropes.begin(), ropes.end(), lc.rope);
      w.rope_index = static_cast<int>(found - ropes.begin());
      if (found == ropes.end()) ropes.push_back(lc.rope);
      w.sliding_window = lc.sliding_window;
      impl.layers.push_back(std::move(w));
    }
    for (const RopeConfig& rope : ropes) {
      impl.inv_freq.push_back(InvFreq(rope, c.head_dim).to(options.device));
    }
    return absl::OkStatus();
  });
  RETURN_IF_ERROR(status);
  return decoder;
}

absl::StatusOr<KvCache> Decoder::NewCache(int64_t capacity, int64_t batch,
                                          CacheSource source) const {
  if (capacity <= 0 || batch <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache capacity and batch must be positive; got ",
                     capacity, " and ", batch));
  }
  if (slot_pool_ != nullptr && batch == 1 && source == CacheSource::kAny) {
    absl::StatusOr<KvCache> pooled = slot_pool_->Acquire(capacity);
    // A full pool or a large cache: an allocation of its own.
    if (pooled.ok() || (!absl::IsResourceExhausted(pooled.status()) &&
                        !absl::IsOutOfRange(pooled.status()))) {
      return pooled;
    }
  }
  return Guarded("allocating the KV cache", [&]() -> absl::StatusOr<KvCache> {
    c10::NoGradGuard no_grad;
    KvCache cache;
    cache.storage_ = at::zeros(
        {config_.num_hidden_layers, 2, batch, config_.num_key_value_heads,
         capacity, config_.head_dim},
        at::TensorOptions().dtype(options_.dtype).device(options_.device));
    cache.lengths_.assign(batch, 0);
    return cache;
  });
}

absl::StatusOr<at::Tensor> Decoder::Forward(
    const std::vector<std::vector<int64_t>>& tokens, KvCache& cache,
    const LayerCallback* on_layer, LogitsMode logits_mode) const {
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
  if (accelerator_ != nullptr && batch == 1 && width == 1 &&
      on_layer == nullptr && logits_mode == LogitsMode::kLast) {
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

  if (prefill_accelerator_ != nullptr && batch == 1 && width >= 2 &&
      starts[0] == 0 && logits_mode != LogitsMode::kAll) {
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
    const at::ScalarType dtype = options_.dtype;
    const int64_t heads = c.num_attention_heads;
    const int64_t kv_heads = c.num_key_value_heads;
    const int64_t dim = c.head_dim;
    const int64_t groups = heads / kv_heads;
    const int64_t q_out = heads * dim;
    const int64_t kv_out = kv_heads * dim;
    const int64_t inter = c.intermediate_size;
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));

    std::vector<int64_t> ids(batch * width, 0), pos(batch * width, 0);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = 0; t < width; ++t) {
        const int64_t n = static_cast<int64_t>(tokens[b].size());
        ids[b * width + t] = t < n ? tokens[b][t] : tokens[b][n - 1];
        pos[b * width + t] = starts[b] + t;
      }
    }
    const at::Tensor ids_t = VectorToTensor(ids, {batch, width}, device);
    const at::Tensor pos_t = VectorToTensor(pos, {batch, width}, device);

    // cos/sin [B, 1, T, D] per distinct RoPE.
    std::vector<at::Tensor> cos, sin;
    RopeCosSin(impl.inv_freq, pos_t.to(at::kFloat).unsqueeze(-1), dtype, &cos,
               &sin);

    // Attention masks, built lazily per sliding window (0: none). A query of
    // row b at position p sees keys j <= p (and p - j < window). Right
    // padding needs nothing more: real queries never reach padded keys.
    std::map<int64_t, at::Tensor> masks;
    auto mask_for = [&](int64_t window) -> const at::Tensor& {
      auto it = masks.find(window);
      if (it != masks.end()) return it->second;
      const at::Tensor allowed =
          AllowedKeys(pos_t.unsqueeze(-1), span, window);  // [B, T, S]
      return masks.emplace(window, allowed.unsqueeze(1)).first->second;
    };

    at::Tensor h = impl.embed.index_select(0, ids_t.reshape(-1))
                       .view({batch, width, c.hidden_size});
    const at::Tensor& storage = cache.storage_;
    at::Tensor scatter_index;
    if (!uniform) {
      scatter_index = pos_t.view({batch, 1, width, 1})
                          .expand({batch, kv_heads, width, dim});
    }

    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const LayerWeights& w = impl.layers[l];
      at::Tensor x = RmsNorm(h, w.input_norm, c.rms_norm_eps);
      const at::Tensor qkv = at::linear(x, w.qkv_w, w.qkv_b);
      at::Tensor q =
          qkv.narrow(-1, 0, q_out).reshape({batch, width, heads, dim});
      at::Tensor k =
          qkv.narrow(-1, q_out, kv_out).reshape({batch, width, kv_heads, dim});
      at::Tensor v = qkv.narrow(-1, q_out + kv_out, kv_out)
                         .reshape({batch, width, kv_heads, dim});
      if (c.qk_norm) {
        q = RmsNorm(q, w.q_norm, c.rms_norm_eps);
        k = RmsNorm(k, w.k_norm, c.rms_norm_eps);
      }
      q = q.transpose(1, 2);
      k = k.transpose(1, 2);
      v = v.transpose(1, 2);
      const at::Tensor& cs = cos[w.rope_index];
      const at::Tensor& sn = sin[w.rope_index];
      q = q * cs + RotateHalf(q) * sn;
      k = k * cs + RotateHalf(k) * sn;

      // Append to the cache.
      const at::Tensor kc = storage.select(0, l).select(0, 0);  // [B,Hkv,C,D]
      const at::Tensor vc = storage.select(0, l).select(0, 1);
      if (uniform) {
        kc.narrow(2, starts[0], width).copy_(k);
        vc.narrow(2, starts[0], width).copy_(v);
      } else {
        kc.scatter_(2, scatter_index, k);
        vc.scatter_(2, scatter_index, v);
      }
      if (on_layer != nullptr && *on_layer) {
        for (int64_t b = 0; b < batch; ++b) {
          const int64_t n = static_cast<int64_t>(tokens[b].size());
          LayerKv kv{l, b, starts[b], kc.select(0, b).narrow(1, starts[b], n),
                     vc.select(0, b).narrow(1, starts[b], n)};
          kv.queries = q.select(0, b).narrow(1, 0, n);
          RETURN_IF_ERROR((*on_layer)(kv));
        }
      }
      const at::Tensor keys = kc.narrow(2, 0, span);
      const at::Tensor values = vc.narrow(2, 0, span);

      // Attention. q: [B, H, T, D]; keys/values: [B, Hkv, S, D].
      const bool window_matters =
          w.sliding_window > 0 && w.sliding_window < span;
      at::Tensor attn;  // [B, H, T, D]
      if (impl.sdpa) {
#if KVWIRE_HAS_SDPA
        if (uniform && !window_matters && width == 1) {
          // Every key is visible: grouped queries, no mask.
          attn = at::scaled_dot_product_attention(
                     q.reshape({batch, kv_heads, groups, dim}), keys, values,
                     {}, 0.0, false
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
                     ,
                     scale
#endif
                     )
                     .reshape({batch, heads, 1, dim});
        } else if (uniform && !window_matters && starts[0] == 0) {
          // Plain causal prefill: repeat K/V per query head (flash kernel).
          auto repeat = [&](const at::Tensor& t) {
            return groups == 1
                       ? t
                       : t.unsqueeze(2)
                             .expand({batch, kv_heads, groups, span, dim})
                             .reshape({batch, heads, span, dim});
          };
          attn = at::scaled_dot_product_attention(q, repeat(keys),
                                                  repeat(values), {}, 0.0, true
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
                                                  ,
                                                  scale
#endif
          );
        } else {
          const at::Tensor mask =
              mask_for(window_matters ? w.sliding_window : 0)
                  .unsqueeze(2)
                  .expand({batch, 1, groups, width, span})
                  .reshape({batch, 1, groups * width, span});
          attn = at::scaled_dot_product_attention(
                     q.reshape({batch, kv_heads, groups * width, dim}), keys,
                     values, mask, 0.0, false
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
                     ,
                     scale
#endif
                     )
                     .reshape({batch, heads, width, dim});
        }
#endif
      } else {
        // HF "eager": matmul, scale, mask, fp32 softmax, cast, matmul.
        const at::Tensor qg = q.reshape({batch, kv_heads, groups * width, dim});
        at::Tensor scores = at::matmul(qg, keys.transpose(2, 3)) * scale;
        const bool need_mask = !(uniform && !window_matters && width == 1);
        if (need_mask) {
          const at::Tensor& allowed =
              mask_for(window_matters ? w.sliding_window : 0);  // [B,1,T,S]
          scores = scores.view({batch, kv_heads, groups, width, span})
                       .masked_fill(allowed.unsqueeze(2).logical_not(),
                                    -std::numeric_limits<double>::infinity())
                       .view({batch, kv_heads, groups * width, span});
        }
        const at::Tensor probs = scores.softmax(-1, at::kFloat).to(dtype);
        attn = at::matmul(probs, values).reshape({batch, heads, width, dim});
      }
      const at::Tensor attn_out =
          attn.transpose(1, 2).reshape({batch, width, q_out});
      h = h + at::linear(attn_out, w.o_w, w.o_b);

      x = RmsNorm(h, w.post_norm, c.rms_norm_eps);
      const at::Tensor gate_up = at::linear(x, w.gate_up_w, w.gate_up_b);
      const at::Tensor mlp = at::silu(gate_up.narrow(-1, 0, inter)) *
                             gate_up.narrow(-1, inter, inter);
      h = h + at::linear(mlp, w.down_w, w.down_b);
    }
    for (int64_t b = 0; b < batch; ++b) {
      cache.lengths_[b] = starts[b] + static_cast<int64_t>(tokens[b].size());
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
    h = RmsNorm(h, impl.final_norm, c.rms_norm_eps);
    return at::linear(h, impl.lm_head).to(at::kFloat);
  });
}

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
      (io.logits_row.defined() &&
       (rows != 1 || !is_index(io.logits_row) || io.logits_row.numel() != 1)) ||
      (io.logits.defined() && (io.logits.numel() != rows * c.vocab_size ||
                               io.logits.scalar_type() != at::kFloat ||
                               io.logits.device() != device))) {
    return absl::InvalidArgumentError(
        "static decode needs tokens int64 [B * T] (T >= 1), positions int64 "
        "[B], logits_row (if any, B = 1) int64 [1] and logits (if any) fp32 "
        "[B * vocab] on the model device, B being the storage's batch");
  }
  if (count > span) {
    return absl::InvalidArgumentError(absl::StrCat(
        "static decode of ", count, " tokens over a span of ", span));
  }
  return Guarded("static decode step", [&]() -> absl::Status {
    c10::InferenceMode inference;
    const Impl& impl = *impl_;
    const at::ScalarType dtype = options_.dtype;
    const int64_t heads = c.num_attention_heads;
    const int64_t kv_heads = c.num_key_value_heads;
    const int64_t dim = c.head_dim;
    const int64_t groups = heads / kv_heads;
    const int64_t q_out = heads * dim;
    const int64_t kv_out = kv_heads * dim;
    const int64_t inter = c.intermediate_size;
    const double eps = c.rms_norm_eps;
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
    auto norm = [&](const at::Tensor& x, const at::Tensor& weight) {
      return kernels != nullptr && kernels->rms_norm
                 ? kernels->rms_norm(x, weight, eps)
                 : RmsNorm(x, weight, eps);
    };
    auto rope = [&](const at::Tensor& x, const at::Tensor& cs,
                    const at::Tensor& sn) {
      return kernels != nullptr && kernels->rope ? kernels->rope(x, cs, sn)
                                                 : x * cs + RotateHalf(x) * sn;
    };
    const int64_t b = rows;
    const int64_t n = count;
    // Positions [B, T]: position[b] + t, computed on the device.
    const at::Tensor pos =
        n == 1 ? io.position.reshape({b, 1})
               : io.position.reshape({b, 1}) +
                     at::arange(
                         n, at::TensorOptions().dtype(at::kLong).device(device))
                         .view({1, n});

    // cos/sin [B, 1, T, D] per distinct RoPE, as Forward computes them.
    std::vector<at::Tensor> cos, sin;
    RopeCosSin(impl.inv_freq, pos.to(at::kFloat).unsqueeze(-1), dtype, &cos,
               &sin);
    // Masks [B, 1, 1, T, span] per sliding window (0: none): token t of row
    // b sees keys j <= pos[b, t] and pos[b, t] - j < window.
    std::map<int64_t, at::Tensor> masks;
    auto mask_for = [&](int64_t window) -> const at::Tensor& {
      auto it = masks.find(window);
      if (it != masks.end()) return it->second;
      return masks
          .emplace(window, AllowedKeys(pos.unsqueeze(-1), span, window)
                               .view({b, 1, 1, n, span}))
          .first->second;
    };
    // Cache writes: one position range for a batch of one, per-row
    // positions otherwise.
    at::Tensor scatter_index;
    if (b > 1) {
      scatter_index =
          pos.view({b, 1, n, 1}).expand({b, kv_heads, n, dim}).contiguous();
    }

    std::map<int64_t, at::Tensor> float_masks;  // SDPA: additive masks.
    at::Tensor h =
        impl.embed.index_select(0, io.token.reshape({b * n})).view({b, n, -1});
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const LayerWeights& w = impl.layers[l];
      at::Tensor x = norm(h, w.input_norm);
      const at::Tensor qkv = at::linear(x, w.qkv_w, w.qkv_b);
      const at::Tensor kc = storage.select(0, l).select(0, 0);  // [B,Hkv,C,D]
      const at::Tensor vc = storage.select(0, l).select(0, 1);
      at::Tensor q;  // [B, H, T, D] after norm and RoPE.
      if (kernels != nullptr && kernels->qkv_to_cache) {
        q = kernels->qkv_to_cache(qkv, w.q_norm, w.k_norm, eps,
                                  cos[w.rope_index], sin[w.rope_index], pos, kc,
                                  vc);
      }
      if (!q.defined()) {
        q = qkv.narrow(-1, 0, q_out).reshape({b, n, heads, dim});
        at::Tensor k =
            qkv.narrow(-1, q_out, kv_out).reshape({b, n, kv_heads, dim});
        at::Tensor v = qkv.narrow(-1, q_out + kv_out, kv_out)
                           .reshape({b, n, kv_heads, dim});
        if (c.qk_norm) {
          q = norm(q, w.q_norm);
          k = norm(k, w.k_norm);
        }
        q = rope(q.transpose(1, 2), cos[w.rope_index], sin[w.rope_index]);
        k = rope(k.transpose(1, 2), cos[w.rope_index], sin[w.rope_index]);
        v = v.transpose(1, 2);
        if (b == 1) {
          const at::Tensor row_pos = pos.reshape({n});
          kc.index_copy_(2, row_pos, k);
          vc.index_copy_(2, row_pos, v);
        } else {
          kc.scatter_(2, scatter_index, k);
          vc.scatter_(2, scatter_index, v);
        }
      }
      const at::Tensor keys = kc.narrow(2, 0, span);
      const at::Tensor values = vc.narrow(2, 0, span);
      const at::Tensor& allowed = mask_for(
          w.sliding_window > 0 && w.sliding_window < span ? w.sliding_window
                                                          : 0);
      // Query rows (g, t) of each KV head: [B, Hkv, groups * T, D].
      const at::Tensor qg = q.reshape({b, kv_heads, groups * n, dim});
      // Boolean mask per query row: [B, 1, groups * T, span].
      const at::Tensor row_allowed = allowed.expand({b, 1, groups, n, span})
                                         .reshape({b, 1, groups * n, span});
      at::Tensor attn;  // [B, H, T, D]
      if (impl.sdpa) {
#if KVWIRE_HAS_SDPA
        // The additive mask SDPA would derive from the boolean one, built
        // once per step instead of once per layer.
        const int64_t window_key =
            w.sliding_window > 0 && w.sliding_window < span ? w.sliding_window
                                                            : 0;
        auto it = float_masks.find(window_key);
        if (it == float_masks.end()) {
          it = float_masks
                   .emplace(window_key,
                            at::zeros(
                                {b, 1, groups * n, span},
                                at::TensorOptions().dtype(dtype).device(device))
                                .masked_fill_(
                                    row_allowed.logical_not(),
                                    -std::numeric_limits<double>::infinity()))
                   .first;
        }
        attn = at::scaled_dot_product_attention(qg, keys, values, it->second,
                                                0.0, false
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
                                                ,
                                                scale
#endif
                                                )
                   .reshape({b, heads, n, dim});
#endif
      } else {
        const at::Tensor scores =
            (at::matmul(qg, keys.transpose(2, 3)) * scale)
                .masked_fill(row_allowed.logical_not(),
                             -std::numeric_limits<double>::infinity());
        const at::Tensor probs = scores.softmax(-1, at::kFloat).to(dtype);
        attn = at::matmul(probs, values).reshape({b, heads, n, dim});
      }
      const at::Tensor attn_out = attn.transpose(1, 2).reshape({b, n, q_out});
      h = h + at::linear(attn_out, w.o_w, w.o_b);

      x = norm(h, w.post_norm);
      const at::Tensor gate_up = at::linear(x, w.gate_up_w, w.gate_up_b);
      const at::Tensor mlp = kernels != nullptr && kernels->silu_mul
                                 ? kernels->silu_mul(gate_up)
                                 : at::silu(gate_up.narrow(-1, 0, inter)) *
                                       gate_up.narrow(-1, inter, inter);
      h = h + at::linear(mlp, w.down_w, w.down_b);
    }
    if (!io.logits.defined()) return absl::OkStatus();
    // One row per batch row: the last token's (or logits_row's).
    h = io.logits_row.defined()
            ? h.reshape({n, c.hidden_size})
                  .index_select(0, io.logits_row.reshape({1}))
            : h.select(1, n - 1);
    h = norm(h, impl.final_norm);
    io.logits.view({b, c.vocab_size}).copy_(at::linear(h, impl.lm_head));
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

absl::Status CopyCachePrefix(const at::Tensor& from_storage,
                             const at::Tensor& to_storage, int64_t n) {
  if (!from_storage.defined() || !to_storage.defined() ||
      from_storage.dim() != 6 || to_storage.dim() != 6 ||
      from_storage.size(2) != 1 || to_storage.size(2) != 1 ||
      from_storage.size(0) != to_storage.size(0) ||
      from_storage.size(3) != to_storage.size(3) ||
      from_storage.size(5) != to_storage.size(5) || n < 0 ||
      n > from_storage.size(4) || n > to_storage.size(4)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot copy ", n, " positions between these KV cache storages"));
  }
  return Guarded("copying a KV cache prefix", [&]() -> absl::Status {
    c10::InferenceMode inference;
    to_storage.narrow(4, 0, n).copy_(from_storage.narrow(4, 0, n));
    return absl::OkStatus();
  });
}

absl::StatusOr<AcceleratedPrefill> StaticPrefillAccelerator::Prefill(
    const Decoder& decoder, absl::Span<const int64_t> token_ids,
    const KvCache& cache, bool want_logits) {
  const int64_t n = static_cast<int64_t>(token_ids.size());
  if (cache.batch_size() != 1 || n > capacity_) return AcceleratedPrefill{};
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

absl::StatusOr<std::vector<int64_t>> Decoder::Sample(
    const at::Tensor& logits, const SamplingOptions& sampling,
    int64_t step) const {
  if (!logits.defined() || logits.dim() < 1 || logits.dim() > 2) {
    return absl::InvalidArgumentError(
        "Sample needs logits [vocab] or [batch, vocab]");
  }
  if (sampling.top_k < 0 || !(sampling.top_p > 0.0) || sampling.top_p > 1.0) {
    return absl::InvalidArgumentError("top_k must be >= 0 and top_p in (0, 1]");
  }
  return Guarded("sampling", [&]() -> absl::StatusOr<std::vector<int64_t>> {
    c10::InferenceMode inference;
    const at::Tensor rows = logits.dim() == 1 ? logits.unsqueeze(0) : logits;
    const int64_t batch = rows.size(0);
    const int64_t vocab = rows.size(1);
    std::vector<int64_t> out(batch);
    if (sampling.temperature <= 0.0) {
      const at::Tensor best = rows.argmax(-1).to(at::kCPU).contiguous();
      std::copy(best.data_ptr<int64_t>(), best.data_ptr<int64_t>() + batch,
                out.begin());
      return out;
    }
    const double neg_inf = -std::numeric_limits<double>::infinity();
    at::Tensor scores = rows.to(at::kFloat) / sampling.temperature;
    if (sampling.top_k > 0 && sampling.top_k < vocab) {
      const at::Tensor kth = std::get<0>(scores.topk(sampling.top_k, -1))
                                 .narrow(-1, sampling.top_k - 1, 1);
      scores = scores.masked_fill(scores < kth, neg_inf);
    }
    if (sampling.top_p < 1.0) {
      const auto sorted = scores.sort(-1, /*descending=*/false);
      const at::Tensor cumulative = std::get<0>(sorted).softmax(-1).cumsum(-1);
      at::Tensor remove = cumulative <= (1.0 - sampling.top_p);
      remove.narrow(-1, vocab - 1, 1).fill_(false);
      remove = remove.scatter(-1, std::get<1>(sorted), remove);
      scores = scores.masked_fill(remove, neg_inf);
    }
    const at::Tensor probs =
        scores.softmax(-1).to(at::kDouble).to(at::kCPU).contiguous();
    const double* p = probs.data_ptr<double>();
    for (int64_t b = 0; b < batch; ++b) {
      const double* row = p + b * vocab;
      double total = 0;
      for (int64_t i = 0; i < vocab; ++i) total += row[i];
      const double target =
          UniformDraw(sampling.seed + static_cast<uint64_t>(b), step) * total;
      double acc = 0;
      int64_t pick = -1;
      for (int64_t i = 0; i < vocab; ++i) {
        if (row[i] <= 0) continue;
        pick = i;
        acc += row[i];
        if (acc > target) break;
      }
      if (pick < 0) {
        return absl::InternalError(
            "sampling found no token with probability > 0");
      }
      out[b] = pick;
    }
    return out;
  });
}

absl::StatusOr<std::vector<GenerationResult>> Decoder::GenerateRows(
    KvCache& cache, const std::vector<std::vector<int64_t>>& pending,
    const GenerationOptions& options) const {
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  }
  const int64_t batch = static_cast<int64_t>(pending.size());
  std::vector<GenerationResult> results(batch);
  if (options.max_new_tokens == 0) return results;
  int64_t width = 0;
  for (const auto& row : pending) {
    width = std::max<int64_t>(width, static_cast<int64_t>(row.size()));
  }
  for (int64_t b = 0; b < batch && b < cache.batch_size(); ++b) {
    // The padded first forward writes `width` positions; each later step one.
    const int64_t needed =
        std::max(cache.length(b) + width,
                 cache.length(b) + static_cast<int64_t>(pending[b].size()) +
                     options.max_new_tokens - 1);
    if (needed > cache.capacity()) {
      return absl::OutOfRangeError(absl::StrCat(
          "KV cache capacity ", cache.capacity(), " is too small: row ", b,
          " needs ", needed, " positions"));
    }
  }
  const std::vector<int64_t>& eos = options.eos_token_ids.has_value()
                                        ? *options.eos_token_ids
                                        : config_.eos_token_ids;
  const std::set<int64_t> stop(eos.begin(), eos.end());
  ASSIGN_OR_RETURN(at::Tensor logits,
                   Forward(pending, cache, nullptr, LogitsMode::kLast));
  std::vector<bool> done(batch, false);
  int64_t remaining = batch;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    ASSIGN_OR_RETURN(std::vector<int64_t> next,
                     Sample(logits, options.sampling, step));
    std::vector<std::vector<int64_t>> feed(batch);
    for (int64_t b = 0; b < batch; ++b) {
      if (!done[b]) {
        results[b].tokens.push_back(next[b]);
        if (stop.count(next[b]) > 0) {
          done[b] = true;
          results[b].finish_reason = FinishReason::kEos;
          --remaining;
        }
      }
      feed[b] = {done[b] ? results[b].tokens.back() : next[b]};
    }
    if (remaining == 0 || step + 1 == options.max_new_tokens) break;
    ASSIGN_OR_RETURN(logits, Forward(feed, cache, nullptr, LogitsMode::kLast));
  }
  return results;
}

absl::StatusOr<GenerationResult> Decoder::Generate(
    absl::Span<const int64_t> prompt, const GenerationOptions& options) const {
  if (prompt.empty()) return absl::InvalidArgumentError("empty prompt");
  ASSIGN_OR_RETURN(KvCache cache,
                   NewCache(static_cast<int64_t>(prompt.size()) +
                            std::max<int64_t>(options.max_new_tokens, 1)));
  return Generate(cache, prompt, options);
}

absl::StatusOr<GenerationResult> Decoder::Generate(
    KvCache& cache, absl::Span<const int64_t> pending,
    const GenerationOptions& options) const {
  if (cache.batch_size() != 1) {
    return absl::InvalidArgumentError(
        "Generate needs a batch-1 KV cache (use GenerateBatch)");
  }
  if (pending.empty()) {
    return absl::InvalidArgumentError(
        "Generate needs at least one token not yet in the cache");
  }
  ASSIGN_OR_RETURN(
      std::vector<GenerationResult> results,
      GenerateRows(cache,
                   {std::vector<int64_t>(pending.begin(), pending.end())},
                   options));
  return std::move(results[0]);
}

absl::StatusOr<std::vector<GenerationResult>> Decoder::GenerateBatch(
    const std::vector<std::vector<int64_t>>& prompts,
    const GenerationOptions& options) const {
  if (prompts.empty()) return std::vector<GenerationResult>{};
  int64_t longest = 0;
  for (const auto& p : prompts) {
    if (p.empty()) return absl::InvalidArgumentError("empty prompt in batch");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  }
  ASSIGN_OR_RETURN(
      KvCache cache,
      NewCache(longest + std::max<int64_t>(options.max_new_tokens, 1),
               static_cast<int64_t>(prompts.size())));
  return GenerateRows(cache, prompts, options);
}

}  // namespace kvwire
