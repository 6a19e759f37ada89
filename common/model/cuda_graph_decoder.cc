#include "common/model/cuda_graph_decoder.h"

#include <ATen/TensorOperators.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cuda_graph_capture.h"
#include "common/model/decode_kernels.h"
#include "common/model/layers.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {
namespace {

bool KernelDtype(at::ScalarType t, decode_kernels::Dtype* out) {
  switch (t) {
    case at::kFloat:
      *out = decode_kernels::Dtype::kFp32;
      return true;
    case at::kBFloat16:
      *out = decode_kernels::Dtype::kBf16;
      return true;
    case at::kHalf:
      *out = decode_kernels::Dtype::kFp16;
      return true;
    default:
      return false;
  }
}

void CheckLaunch(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, what, ": ", cudaGetErrorString(e));
}

cudaStream_t CurrentStream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

at::Tensor FusedRmsNorm(const at::Tensor& x, const at::Tensor& weight,
                        double eps) {
  decode_kernels::Dtype dtype;
  if (!x.is_cuda() || weight.device() != x.device() ||
      weight.scalar_type() != x.scalar_type() || weight.dim() != 1 ||
      x.dim() < 1 || x.size(-1) != weight.size(0) ||
      !KernelDtype(x.scalar_type(), &dtype)) {
    return RmsNorm(x, weight, eps);
  }
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = weight.contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t cols = x.size(-1);
  CheckLaunch(
      decode_kernels::RmsNorm(xc.data_ptr(), wc.data_ptr(), out.data_ptr(),
                              xc.numel() / cols, cols, static_cast<float>(eps),
                              dtype, CurrentStream(x)),
      "fused RMSNorm");
  return out;
}

at::Tensor FusedRope(const at::Tensor& x, const at::Tensor& cos,
                     const at::Tensor& sin) {
  decode_kernels::Dtype dtype;
  const int64_t dim = x.dim() >= 1 ? x.size(-1) : 0;
  // One cos/sin row for every row of x, or one per position when x is
  // [..., T, D] and cos/sin are [1.., T, D] (a prefill chunk).
  const int64_t positions = cos.numel() == dim ? 1
                            : x.dim() >= 2 && cos.dim() >= 2 &&
                                    cos.size(-2) == x.size(-2) &&
                                    cos.numel() == x.size(-2) * dim
                                ? x.size(-2)
                                : 0;
  if (!x.is_cuda() || cos.device() != x.device() ||
      sin.device() != x.device() || cos.scalar_type() != x.scalar_type() ||
      sin.scalar_type() != x.scalar_type() || dim % 2 != 0 || positions == 0 ||
      sin.sizes() != cos.sizes() || !KernelDtype(x.scalar_type(), &dtype)) {
    return ApplyRope(x, cos, sin);
  }
  const at::Tensor xc = x.contiguous();
  const at::Tensor cc = cos.contiguous();
  const at::Tensor sc = sin.contiguous();
  at::Tensor out = at::empty_like(xc);
  CheckLaunch(decode_kernels::Rope(xc.data_ptr(), cc.data_ptr(), sc.data_ptr(),
                                   out.data_ptr(), xc.numel() / dim, dim,
                                   positions, dtype, CurrentStream(x)),
              "fused RoPE");
  return out;
}

at::Tensor FusedSiluMul(const at::Tensor& gate_up) {
  decode_kernels::Dtype dtype;
  const int64_t n = gate_up.dim() >= 1 ? gate_up.size(-1) / 2 : 0;
  if (!gate_up.is_cuda() || gate_up.size(-1) % 2 != 0 || n == 0 ||
      !KernelDtype(gate_up.scalar_type(), &dtype)) {
    return SiluMul(gate_up, n);
  }
  const at::Tensor gc = gate_up.contiguous();
  std::vector<int64_t> shape(gc.sizes().begin(), gc.sizes().end());
  shape.back() = n;
  at::Tensor out = at::empty(shape, gc.options());
  CheckLaunch(decode_kernels::SiluMul(gc.data_ptr(), out.data_ptr(),
                                      gc.numel() / (2 * n), n, dtype,
                                      CurrentStream(gate_up)),
              "fused SiLU*up");
  return out;
}

at::Tensor FusedQkvToCache(const at::Tensor& qkv, const at::Tensor& q_norm,
                           const at::Tensor& k_norm, double eps,
                           const at::Tensor& cos, const at::Tensor& sin,
                           const at::Tensor& positions, const at::Tensor& kc,
                           const at::Tensor& vc) {
  decode_kernels::Dtype dtype;
  if (!qkv.is_cuda() || qkv.dim() != 3 || !qkv.is_contiguous() ||
      kc.dim() != 4 || !KernelDtype(qkv.scalar_type(), &dtype)) {
    return at::Tensor();
  }
  const int64_t batch = qkv.size(0), tokens = qkv.size(1);
  const int64_t kv_heads = kc.size(1), dim = kc.size(3);
  const int64_t heads = qkv.size(2) / dim - 2 * kv_heads;
  auto same = [&](const at::Tensor& t) {
    return t.device() == qkv.device() && t.scalar_type() == qkv.scalar_type();
  };
  auto norm_ok = [&](const at::Tensor& w) {
    return !w.defined() ||
           (same(w) && w.dim() == 1 && w.size(0) == dim && w.is_contiguous());
  };
  auto table_ok = [&](const at::Tensor& t) {
    return same(t) && t.is_contiguous() && t.dim() == 4 && t.size(1) == 1 &&
           t.size(2) == tokens && t.size(3) == dim &&
           (t.size(0) == 1 || t.size(0) == batch);
  };
  if (heads <= 0 || qkv.size(2) != (heads + 2 * kv_heads) * dim ||
      dim % 2 != 0 || dim > 1024 || !norm_ok(q_norm) || !norm_ok(k_norm) ||
      !table_ok(cos) || !table_ok(sin) || sin.sizes() != cos.sizes() ||
      !same(kc) || !same(vc) || kc.sizes() != vc.sizes() ||
      kc.strides() != vc.strides() || kc.size(0) != batch ||
      kc.stride(3) != 1 || positions.device() != qkv.device() ||
      positions.scalar_type() != at::kLong || !positions.is_contiguous() ||
      positions.numel() != batch * tokens) {
    return at::Tensor();
  }
  at::Tensor q = at::empty({batch, heads, tokens, dim}, qkv.options());
  decode_kernels::QkvToCacheArgs a;
  a.qkv = qkv.data_ptr();
  a.qkv_row_stride = qkv.size(2);
  a.q_norm = q_norm.defined() ? q_norm.data_ptr() : nullptr;
  a.k_norm = k_norm.defined() ? k_norm.data_ptr() : nullptr;
  a.eps = static_cast<float>(eps);
  a.cos = cos.data_ptr();
  a.sin = sin.data_ptr();
  a.cos_per_batch = cos.size(0) == batch && batch > 1;
  a.positions = positions.data_ptr<int64_t>();
  a.q_out = q.data_ptr();
  a.k_cache = kc.data_ptr();
  a.v_cache = vc.data_ptr();
  a.cache_batch_stride = kc.stride(0);
  a.cache_head_stride = kc.stride(1);
  a.cache_pos_stride = kc.stride(2);
  a.batch = batch;
  a.tokens = tokens;
  a.heads = static_cast<int>(heads);
  a.kv_heads = static_cast<int>(kv_heads);
  a.dim = static_cast<int>(dim);
  CheckLaunch(decode_kernels::QkvToCache(a, dtype, CurrentStream(qkv)),
              "fused QKV to cache");
  return q;
}

bool EnvOff(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr &&
         (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0 ||
          std::strcmp(v, "off") == 0);
}

// What a decode graph bakes in: the storage address and layout, and the
// span.
using GraphKey = std::tuple<const void*, std::vector<int64_t>,
                            std::vector<int64_t>, int64_t>;

// Captured graphs by key, the least recently used evicted beyond `max`, all
// sharing one memory pool and one private stream (replays never overlap),
// ordered after the caller's stream with events. Not synchronized: each
// owner serializes its calls.
template <typename Key>
class GraphCache {
 public:
  GraphCache(c10::Device device, int max)
      : stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true,
                                             device.index())),
        max_(std::max(max, 1)) {}
  ~GraphCache() {
    try {
      stream_.synchronize();
    } catch (const c10::Error&) {
    }
  }

  c10::cuda::CUDAStream& stream() { return stream_; }
  // Makes the private stream wait for the caller's current stream.
  void Enter(c10::cuda::CUDAStream caller) {
    ready_.record(caller);
    ready_.block(stream_);
  }
  // Makes the caller's stream wait for what ran on the private stream.
  void Leave(c10::cuda::CUDAStream caller) {
    done_.record(stream_);
    done_.block(caller);
  }

  // With the private stream current: the graph of `key`, capturing `step`
  // first if needed, after a warm-up run (two on the first capture: cuBLAS
  // handles and workspaces, lazy kernel loading); a step must be safe to
  // repeat (warm-ups write what the replay writes again). nullptr if the
  // key's warm-up or capture failed (then and for later calls).
  at::cuda::CUDAGraph* Get(const Key& key,
                           const std::function<absl::Status()>& step) {
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (failed_.count(key) > 0) return nullptr;
      for (int i = 0; i < (warmed_ ? 1 : 2); ++i) {
        if (!step().ok()) {
          failed_.insert(key);
          stream_.synchronize();
          return nullptr;
        }
      }
      warmed_ = true;
      stream_.synchronize();
      if (static_cast<int>(graphs_.size()) >= max_) {
        auto oldest = graphs_.begin();
        for (auto g = graphs_.begin(); g != graphs_.end(); ++g) {
          if (g->second.last_use < oldest->second.last_use) oldest = g;
        }
        graphs_.erase(oldest);
      }
      if (!pool_initialized_) {
        pool_ = at::cuda::graph_pool_handle();
        pool_initialized_ = true;
      }
      Graph g;
      g.graph = std::make_unique<at::cuda::CUDAGraph>();
      if (!CaptureCudaGraph(*g.graph, pool_, stream_.stream(), step).ok()) {
        failed_.insert(key);
        return nullptr;
      }
      ++captures_;
      it = graphs_.emplace(key, std::move(g)).first;
    }
    it->second.last_use = ++clock_;
    return it->second.graph.get();
  }
  bool failed(const Key& key) const { return failed_.count(key) > 0; }
  int64_t size() const { return static_cast<int64_t>(graphs_.size()); }
  int64_t captures() const { return captures_; }

 private:
  struct Graph {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    uint64_t last_use = 0;
  };
  c10::cuda::CUDAStream stream_;
  int max_;
  at::cuda::CUDAEvent ready_, done_;
  bool warmed_ = false;
  bool pool_initialized_ = false;
  decltype(at::cuda::graph_pool_handle()) pool_;
  std::map<Key, Graph> graphs_;
  std::set<Key> failed_;
  uint64_t clock_ = 0;
  int64_t captures_ = 0;
};

}  // namespace

DecodeStepKernels FusedDecodeKernels() {
  DecodeStepKernels k;
  k.rms_norm = FusedRmsNorm;
  k.rope = FusedRope;
  k.silu_mul = FusedSiluMul;
  k.qkv_to_cache = FusedQkvToCache;
  return k;
}

struct CudaGraphDecoder::Impl {
  std::mutex mu;
  // Guarded by mu:
  std::unique_ptr<GraphCache<GraphKey>> graphs;  // Created on first use.
  StaticDecodeIo io;
  DecodeStepKernels kernels;
  // Counters, readable without the lock.
  std::atomic<int64_t> replays{0}, captures{0}, declined{0}, cached{0};
};

CudaGraphDecoder::CudaGraphDecoder(const Decoder* decoder,
                                   CudaGraphDecoderOptions options)
    : decoder_(decoder), options_(options), impl_(std::make_unique<Impl>()) {
  if (options_.min_span < 1) options_.min_span = 1;
  if (options_.max_graphs < 1) options_.max_graphs = 1;
  if (options_.fused_kernels) impl_->kernels = FusedDecodeKernels();
}

CudaGraphDecoder::~CudaGraphDecoder() = default;

int64_t CudaGraphDecoder::replays() const { return impl_->replays.load(); }
int64_t CudaGraphDecoder::captures() const { return impl_->captures.load(); }
int64_t CudaGraphDecoder::declined() const { return impl_->declined.load(); }
int64_t CudaGraphDecoder::cached_graphs() const { return impl_->cached.load(); }

absl::StatusOr<at::Tensor> CudaGraphDecoder::DecodeStep(const Decoder& decoder,
                                                        int64_t token_id,
                                                        const KvCache& cache) {
  Impl& impl = *impl_;
  std::unique_lock<std::mutex> lock(impl.mu, std::try_to_lock);
  const c10::Device device = decoder.device();
  const int64_t position = cache.length(0);
  if (!lock.owns_lock() || &decoder != decoder_ || !device.is_cuda() ||
      cache.batch_size() != 1 || !cache.storage().defined() ||
      cache.storage().device() != device || position >= cache.capacity()) {
    ++impl.declined;
    return at::Tensor();
  }
  const at::Tensor& storage = cache.storage();
  const int64_t span =
      StaticDecodeSpan(position, cache.capacity(), options_.min_span);
  GraphKey key{
      storage.data_ptr(),
      std::vector<int64_t>(storage.sizes().begin(), storage.sizes().end()),
      std::vector<int64_t>(storage.strides().begin(), storage.strides().end()),
      span};
  if (impl.graphs != nullptr && impl.graphs->failed(key)) {
    ++impl.declined;
    return at::Tensor();
  }
  const DecodeStepKernels* kernels =
      options_.fused_kernels ? &impl.kernels : nullptr;
  return Guarded("CUDA-graph decode step", [&]() -> absl::StatusOr<at::Tensor> {
    c10::InferenceMode inference;
    c10::cuda::CUDAGuard device_guard(device.index());
    if (impl.graphs == nullptr) {
      impl.graphs =
          std::make_unique<GraphCache<GraphKey>>(device, options_.max_graphs);
      const auto index = at::TensorOptions().dtype(at::kLong).device(device);
      impl.io.token = at::zeros({1}, index);
      impl.io.position = at::zeros({1}, index);
      // Always read by the graph (0 for ordinary rows), so one graph serves
      // rows with and without a RoPE offset.
      impl.io.rope_offset = at::zeros({1}, index);
      impl.io.logits =
          at::zeros({decoder.config().vocab_size}, index.dtype(at::kFloat));
    }
    GraphCache<GraphKey>& graphs = *impl.graphs;
    c10::cuda::CUDAStream caller =
        c10::cuda::getCurrentCUDAStream(device.index());
    // The output lives on the caller's stream (allocated there, written on
    // ours before the caller waits for us).
    at::Tensor out =
        at::empty({decoder.config().vocab_size},
                  at::TensorOptions().dtype(at::kFloat).device(device));
    graphs.Enter(caller);
    {
      c10::cuda::CUDAStreamGuard stream_guard(graphs.stream());
      impl.io.token.fill_(token_id);
      impl.io.position.fill_(position);
      impl.io.rope_offset.fill_(cache.rope_offset(0));
      at::cuda::CUDAGraph* graph = graphs.Get(key, [&] {
        return decoder.StaticDecodeStep(impl.io, storage, span, kernels);
      });
      impl.captures = graphs.captures();
      impl.cached = graphs.size();
      if (graph == nullptr) {
        ++impl.declined;
        return at::Tensor();
      }
      graph->replay();
      ++impl.replays;
      out.copy_(impl.io.logits);
    }
    graphs.Leave(caller);
    return out;
  });
}

struct CudaGraphPrefill::Impl {
  std::mutex mu;
  // Guarded by mu:
  std::unique_ptr<GraphCache<std::pair<int64_t, bool>>> graphs;
  KvCache staging;    // capacity: max_tokens (rounded up to a bucket).
  at::Tensor tokens;  // [capacity] int64; a graph reads its first T.
  at::Tensor zero;    // [1] int64: position 0.
  at::Tensor last;    // [1] int64: the last real token's row.
  at::Tensor logits;  // [vocab] fp32.
  std::atomic<int64_t> replays{0}, captures{0}, declined{0};
};

CudaGraphPrefill::CudaGraphPrefill(const Decoder* decoder,
                                   CudaGraphPrefillOptions options)
    : decoder_(decoder), options_(options), impl_(std::make_unique<Impl>()) {
  if (options_.bucket < 1) options_.bucket = 1;
  options_.max_tokens = std::max<int64_t>(
      options_.bucket, (options_.max_tokens + options_.bucket - 1) /
                           options_.bucket * options_.bucket);
  if (options_.max_graphs < 1) options_.max_graphs = 1;
  if (options_.fused_kernels) kernels_ = FusedDecodeKernels();
}

CudaGraphPrefill::~CudaGraphPrefill() = default;

int64_t CudaGraphPrefill::replays() const { return impl_->replays.load(); }
int64_t CudaGraphPrefill::captures() const { return impl_->captures.load(); }
int64_t CudaGraphPrefill::declined() const { return impl_->declined.load(); }

absl::StatusOr<AcceleratedPrefill> CudaGraphPrefill::Prefill(
    const Decoder& decoder, absl::Span<const int64_t> token_ids,
    const KvCache& cache, bool want_logits) {
  Impl& impl = *impl_;
  const c10::Device device = decoder.device();
  const int64_t n = static_cast<int64_t>(token_ids.size());
  // Graphs run positions [0, n): a row with a RoPE offset runs eagerly.
  if (&decoder != decoder_ || !device.is_cuda() || n < 1 ||
      n > options_.max_tokens || cache.batch_size() != 1 ||
      cache.rope_offset(0) != 0 || !cache.storage().defined() ||
      cache.storage().device() != device || n > cache.capacity()) {
    ++impl.declined;
    return AcceleratedPrefill{};
  }
  const ModelConfig& config = decoder.config();
  const int64_t bucket =
      (n + options_.bucket - 1) / options_.bucket * options_.bucket;
  const std::pair<int64_t, bool> key{bucket, want_logits};
  // Prefills wait for each other rather than fall back: a replay takes a
  // few milliseconds, an eager prefill of a small model ten times that.
  std::lock_guard<std::mutex> lock(impl.mu);
  if (impl.graphs != nullptr && impl.graphs->failed(key)) {
    ++impl.declined;
    return AcceleratedPrefill{};
  }
  const DecodeStepKernels* kernels =
      options_.fused_kernels ? &kernels_ : nullptr;
  return Guarded(
      "CUDA-graph prefill", [&]() -> absl::StatusOr<AcceleratedPrefill> {
        c10::InferenceMode inference;
        c10::cuda::CUDAGuard device_guard(device.index());
        if (impl.graphs == nullptr) {
          ASSIGN_OR_RETURN(impl.staging,
                           decoder.NewCache(options_.max_tokens, 1,
                                            CacheSource::kOwnStorage));
          const auto index =
              at::TensorOptions().dtype(at::kLong).device(device);
          impl.tokens = at::zeros({options_.max_tokens}, index);
          impl.zero = at::zeros({1}, index);
          impl.last = at::zeros({1}, index);
          impl.logits = at::zeros({config.vocab_size}, index.dtype(at::kFloat));
          impl.graphs = std::make_unique<GraphCache<std::pair<int64_t, bool>>>(
              device, options_.max_graphs);
        }
        GraphCache<std::pair<int64_t, bool>>& graphs = *impl.graphs;
        StaticDecodeIo io;
        io.token = impl.tokens.narrow(0, 0, bucket);
        io.position = impl.zero;
        if (want_logits) {
          io.logits = impl.logits;
          io.logits_row = impl.last;
        }
        // Padding repeats the last token; causal attention keeps the real
        // tokens' K/V and logits independent of it.
        std::vector<int64_t> padded(token_ids.begin(), token_ids.end());
        padded.resize(bucket, token_ids.back());
        const at::Tensor host_tokens =
            at::from_blob(padded.data(), {bucket}, at::kLong);

        c10::cuda::CUDAStream caller =
            c10::cuda::getCurrentCUDAStream(device.index());
        at::Tensor out;
        if (want_logits) {
          out = at::empty({config.vocab_size},
                          at::TensorOptions().dtype(at::kFloat).device(device));
        }
        graphs.Enter(caller);
        {
          c10::cuda::CUDAStreamGuard stream_guard(graphs.stream());
          io.token.copy_(host_tokens);
          impl.last.fill_(n - 1);
          const at::Tensor& storage = impl.staging.storage();
          at::cuda::CUDAGraph* graph = graphs.Get(key, [&] {
            return decoder.StaticDecodeStep(io, storage, bucket, kernels);
          });
          impl.captures = graphs.captures();
          if (graph == nullptr) {
            ++impl.declined;
            return AcceleratedPrefill{};
          }
          graph->replay();
          ++impl.replays;
          RETURN_IF_ERROR(CopyCachePrefix(storage, cache.storage(), n));
          if (want_logits) out.copy_(impl.logits);
        }
        graphs.Leave(caller);
        return AcceleratedPrefill{true, out};
      });
}

BatchedDecodeAccelerator::StepRunner CudaGraphStepRunner(
    CudaGraphDecoderOptions options) {
  // Graphs keyed by (storage address, rows, tokens per row, span): the
  // batcher's io tensors are fixed, so the shape is all that varies.
  using Key = std::tuple<const void*, int64_t, int64_t, int64_t>;
  struct State {
    std::mutex mu;
    std::unique_ptr<GraphCache<Key>> graphs;
    DecodeStepKernels kernels;
  };
  auto state = std::make_shared<State>();
  if (options.fused_kernels) state->kernels = FusedDecodeKernels();
  return [state, options](const Decoder& decoder, const StaticDecodeIo& io,
                          const at::Tensor& storage,
                          int64_t span) -> absl::Status {
    const c10::Device device = decoder.device();
    const DecodeStepKernels* kernels =
        options.fused_kernels ? &state->kernels : nullptr;
    std::lock_guard<std::mutex> lock(state->mu);
    if (!device.is_cuda()) {
      return decoder.StaticDecodeStep(io, storage, span, kernels);
    }
    return Guarded("CUDA-graph batched decode", [&]() -> absl::Status {
      c10::InferenceMode inference;
      c10::cuda::CUDAGuard device_guard(device.index());
      if (state->graphs == nullptr) {
        // One graph per (rows, span): powers of two up to the pool's size
        // and capacity.
        state->graphs =
            std::make_unique<GraphCache<Key>>(device, 4 * options.max_graphs);
      }
      GraphCache<Key>& graphs = *state->graphs;
      c10::cuda::CUDAStream caller =
          c10::cuda::getCurrentCUDAStream(device.index());
      graphs.Enter(caller);
      {
        c10::cuda::CUDAStreamGuard stream_guard(graphs.stream());
        at::cuda::CUDAGraph* graph = graphs.Get(
            Key{storage.data_ptr(), storage.size(2),
                io.token.numel() / storage.size(2), span},
            [&] {
              return decoder.StaticDecodeStep(io, storage, span, kernels);
            });
        if (graph == nullptr) {
          // Capture failed: run this step eagerly (still batched).
          RETURN_IF_ERROR(decoder.StaticDecodeStep(io, storage, span, kernels));
        } else {
          graph->replay();
        }
      }
      graphs.Leave(caller);
      return absl::OkStatus();
    });
  };
}

std::shared_ptr<CudaGraphPrefill> InstallCudaGraphPrefill(
    Decoder& decoder, CudaGraphPrefillOptions options) {
  if (!decoder.device().is_cuda() || EnvOff("KVWIRE_CUDA_GRAPH_PREFILL")) {
    return nullptr;
  }
  if (EnvOff("KVWIRE_CUDA_GRAPH_FUSED_KERNELS")) options.fused_kernels = false;
  auto accelerator = std::make_shared<CudaGraphPrefill>(&decoder, options);
  decoder.SetPrefillAccelerator(accelerator);
  return accelerator;
}

std::shared_ptr<CudaGraphDecoder> InstallCudaGraphDecoder(
    Decoder& decoder, CudaGraphDecoderOptions options) {
  if (!decoder.device().is_cuda() || EnvOff("KVWIRE_CUDA_GRAPH_DECODE")) {
    return nullptr;
  }
  if (EnvOff("KVWIRE_CUDA_GRAPH_FUSED_KERNELS")) options.fused_kernels = false;
  auto accelerator = std::make_shared<CudaGraphDecoder>(&decoder, options);
  decoder.SetDecodeAccelerator(accelerator);
  return accelerator;
}

absl::Status InstallCudaGraphAccelerators(
    Decoder& decoder, const RequestBatchingOptions& batching) {
  if (!decoder.device().is_cuda()) return absl::OkStatus();
  std::shared_ptr<CudaGraphDecoder> single = InstallCudaGraphDecoder(decoder);
  std::shared_ptr<CudaGraphPrefill> prefill = InstallCudaGraphPrefill(decoder);
  RequestBatchingOptions graphed = batching;
  // Batching without graphs would be slower than the batch-1 graphs.
  if (single == nullptr) graphed.decode_slots = 0;
  if (prefill == nullptr) graphed.prefill_rows = 0;
  const CudaGraphDecoderOptions graph_options =
      single != nullptr ? single->options() : CudaGraphDecoderOptions{};
  return InstallRequestBatching(decoder, graphed,
                                CudaGraphStepRunner(graph_options),
                                CudaGraphStepRunner(graph_options));
}

}  // namespace kvwire
