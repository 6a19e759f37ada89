#include "common/model/cuda_graph_decoder.h"

#include <ATen/TensorOperators.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/silu.h>
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
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cuda_graph_capture.h"
#include "common/model/decode_kernels.h"
#include "common/status_macros.h"

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

at::Tensor ReferenceRmsNorm(const at::Tensor& x, const at::Tensor& weight,
                            double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * (variance + eps).rsqrt()).to(x.scalar_type());
}

at::Tensor FusedRmsNorm(const at::Tensor& x, const at::Tensor& weight,
                        double eps) {
  decode_kernels::Dtype dtype;
  if (!x.is_cuda() || weight.device() != x.device() ||
      weight.scalar_type() != x.scalar_type() || weight.dim() != 1 ||
      x.dim() < 1 || x.size(-1) != weight.size(0) ||
      !KernelDtype(x.scalar_type(), &dtype)) {
    return ReferenceRmsNorm(x, weight, eps);
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

at::Tensor ReferenceRope(const at::Tensor& x, const at::Tensor& cos,
                         const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor rot =
      at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
  return x * cos + rot * sin;
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
    return ReferenceRope(x, cos, sin);
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
    return at::silu(gate_up.narrow(-1, 0, n)) * gate_up.narrow(-1, n, n);
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

bool EnvOff(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr &&
         (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0 ||
          std::strcmp(v, "off") == 0);
}

// What a graph bakes in: the storage address and layout, and the span.
using GraphKey = std::tuple<const void*, std::vector<int64_t>,
                            std::vector<int64_t>, int64_t>;

struct Graph {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  uint64_t last_use = 0;
};

}  // namespace

DecodeStepKernels FusedDecodeKernels() {
  DecodeStepKernels k;
  k.rms_norm = FusedRmsNorm;
  k.rope = FusedRope;
  k.silu_mul = FusedSiluMul;
  return k;
}

struct CudaGraphDecoder::Impl {
  std::mutex mu;
  // Guarded by mu:
  bool initialized = false;
  bool warmed = false;
  decltype(at::cuda::graph_pool_handle()) pool;
  std::unique_ptr<c10::cuda::CUDAStream> stream;
  at::cuda::CUDAEvent ready, done;
  StaticDecodeIo io;
  DecodeStepKernels kernels;
  std::map<GraphKey, Graph> graphs;
  std::map<GraphKey, bool> failed;  // Keys whose capture failed: eager.
  uint64_t clock = 0;
  // Counters, readable without the lock.
  std::atomic<int64_t> replays{0}, captures{0}, declined{0};
};

CudaGraphDecoder::CudaGraphDecoder(const Decoder* decoder,
                                   CudaGraphDecoderOptions options)
    : decoder_(decoder), options_(options), impl_(std::make_unique<Impl>()) {
  if (options_.min_span < 1) options_.min_span = 1;
  if (options_.max_graphs < 1) options_.max_graphs = 1;
  if (options_.fused_kernels) impl_->kernels = FusedDecodeKernels();
}

CudaGraphDecoder::~CudaGraphDecoder() {
  if (impl_ != nullptr && impl_->stream != nullptr) {
    try {
      impl_->stream->synchronize();
    } catch (const c10::Error&) {
    }
  }
}

int64_t CudaGraphDecoder::replays() const { return impl_->replays.load(); }
int64_t CudaGraphDecoder::captures() const { return impl_->captures.load(); }
int64_t CudaGraphDecoder::declined() const { return impl_->declined.load(); }
int64_t CudaGraphDecoder::cached_graphs() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return static_cast<int64_t>(impl_->graphs.size());
}

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
  if (impl.failed.count(key) > 0) {
    ++impl.declined;
    return at::Tensor();
  }
  const DecodeStepKernels* kernels =
      options_.fused_kernels ? &impl.kernels : nullptr;
  try {
    c10::InferenceMode inference;
    c10::cuda::CUDAGuard device_guard(device.index());
    if (!impl.initialized) {
      impl.pool = at::cuda::graph_pool_handle();
      impl.stream =
          std::make_unique<c10::cuda::CUDAStream>(c10::cuda::getStreamFromPool(
              /*isHighPriority=*/true, device.index()));
      const auto index = at::TensorOptions().dtype(at::kLong).device(device);
      impl.io.token = at::zeros({1}, index);
      impl.io.position = at::zeros({1}, index);
      impl.io.logits =
          at::zeros({decoder.config().vocab_size}, index.dtype(at::kFloat));
      impl.initialized = true;
    }
    c10::cuda::CUDAStream caller =
        c10::cuda::getCurrentCUDAStream(device.index());
    c10::cuda::CUDAStream& stream = *impl.stream;
    // The output lives on the caller's stream (allocated there, written on
    // ours before the caller waits for us).
    at::Tensor out =
        at::empty({decoder.config().vocab_size},
                  at::TensorOptions().dtype(at::kFloat).device(device));
    impl.ready.record(caller);
    impl.ready.block(stream);
    {
      c10::cuda::CUDAStreamGuard stream_guard(stream);
      impl.io.token.fill_(token_id);
      impl.io.position.fill_(position);
      auto it = impl.graphs.find(key);
      if (it == impl.graphs.end()) {
        // Warm up on this stream (cuBLAS handles and workspaces, lazy
        // kernel loading) with the real inputs: it writes the same K/V the
        // replay below writes again.
        for (int i = 0; i < (impl.warmed ? 1 : 2); ++i) {
          absl::Status st =
              decoder.StaticDecodeStep(impl.io, storage, span, kernels);
          if (!st.ok()) {
            impl.failed.emplace(key, true);
            ++impl.declined;
            stream.synchronize();
            return at::Tensor();
          }
        }
        impl.warmed = true;
        stream.synchronize();
        if (static_cast<int>(impl.graphs.size()) >= options_.max_graphs) {
          auto oldest = impl.graphs.begin();
          for (auto g = impl.graphs.begin(); g != impl.graphs.end(); ++g) {
            if (g->second.last_use < oldest->second.last_use) oldest = g;
          }
          impl.graphs.erase(oldest);
        }
        Graph g;
        g.graph = std::make_unique<at::cuda::CUDAGraph>();
        const absl::Status st =
            CaptureCudaGraph(*g.graph, impl.pool, stream.stream(), [&] {
              return decoder.StaticDecodeStep(impl.io, storage, span, kernels);
            });
        if (!st.ok()) {
          impl.failed.emplace(key, true);
          ++impl.declined;
          return at::Tensor();
        }
        ++impl.captures;
        it = impl.graphs.emplace(key, std::move(g)).first;
      }
      it->second.last_use = ++impl.clock;
      it->second.graph->replay();
      ++impl.replays;
      out.copy_(impl.io.logits);
    }
    impl.done.record(stream);
    impl.done.block(caller);
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("CUDA-graph decode step: ", e.what_without_backtrace()));
  }
}

struct CudaGraphPrefill::Impl {
  std::mutex mu;
  // Guarded by mu:
  bool initialized = false;
  bool warmed = false;
  decltype(at::cuda::graph_pool_handle()) pool;
  std::unique_ptr<c10::cuda::CUDAStream> stream;
  at::cuda::CUDAEvent ready, done;
  KvCache staging;    // capacity: max_tokens (rounded up to a bucket).
  at::Tensor tokens;  // [capacity] int64; a graph reads its first T.
  at::Tensor zero;    // [1] int64: position 0.
  at::Tensor last;    // [1] int64: the last real token's row.
  at::Tensor logits;  // [vocab] fp32.
  // Graphs keyed by (bucketed token count, with logits).
  std::map<std::pair<int64_t, bool>, Graph> graphs;
  std::map<std::pair<int64_t, bool>, bool> failed;
  uint64_t clock = 0;
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

CudaGraphPrefill::~CudaGraphPrefill() {
  if (impl_ != nullptr && impl_->stream != nullptr) {
    try {
      impl_->stream->synchronize();
    } catch (const c10::Error&) {
    }
  }
}

int64_t CudaGraphPrefill::replays() const { return impl_->replays.load(); }
int64_t CudaGraphPrefill::captures() const { return impl_->captures.load(); }
int64_t CudaGraphPrefill::declined() const { return impl_->declined.load(); }

absl::StatusOr<AcceleratedPrefill> CudaGraphPrefill::Prefill(
    const Decoder& decoder, absl::Span<const int64_t> token_ids,
    const KvCache& cache, bool want_logits) {
  Impl& impl = *impl_;
  const c10::Device device = decoder.device();
  const int64_t n = static_cast<int64_t>(token_ids.size());
  if (&decoder != decoder_ || !device.is_cuda() || n < 1 ||
      n > options_.max_tokens || cache.batch_size() != 1 ||
      !cache.storage().defined() || cache.storage().device() != device ||
      n > cache.capacity()) {
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
  if (impl.failed.count(key) > 0) {
    ++impl.declined;
    return AcceleratedPrefill{};
  }
  const DecodeStepKernels* kernels =
      options_.fused_kernels ? &kernels_ : nullptr;
  try {
    c10::InferenceMode inference;
    c10::cuda::CUDAGuard device_guard(device.index());
    if (!impl.initialized) {
      ASSIGN_OR_RETURN(impl.staging, decoder.NewCache(options_.max_tokens));
      impl.pool = at::cuda::graph_pool_handle();
      impl.stream =
          std::make_unique<c10::cuda::CUDAStream>(c10::cuda::getStreamFromPool(
              /*isHighPriority=*/true, device.index()));
      const auto index = at::TensorOptions().dtype(at::kLong).device(device);
      impl.tokens = at::zeros({options_.max_tokens}, index);
      impl.zero = at::zeros({1}, index);
      impl.last = at::zeros({1}, index);
      impl.logits = at::zeros({config.vocab_size}, index.dtype(at::kFloat));
      impl.initialized = true;
    }
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
    c10::cuda::CUDAStream& stream = *impl.stream;
    at::Tensor out;
    if (want_logits) {
      out = at::empty({config.vocab_size},
                      at::TensorOptions().dtype(at::kFloat).device(device));
    }
    impl.ready.record(caller);
    impl.ready.block(stream);
    {
      c10::cuda::CUDAStreamGuard stream_guard(stream);
      io.token.copy_(host_tokens);
      impl.last.fill_(n - 1);
      const at::Tensor& storage = impl.staging.storage();
      auto it = impl.graphs.find(key);
      if (it == impl.graphs.end()) {
        for (int i = 0; i < (impl.warmed ? 1 : 2); ++i) {
          const absl::Status st =
              decoder.StaticDecodeStep(io, storage, bucket, kernels);
          if (!st.ok()) {
            impl.failed.emplace(key, true);
            ++impl.declined;
            stream.synchronize();
            return AcceleratedPrefill{};
          }
        }
        impl.warmed = true;
        stream.synchronize();
        if (static_cast<int>(impl.graphs.size()) >= options_.max_graphs) {
          auto oldest = impl.graphs.begin();
          for (auto g = impl.graphs.begin(); g != impl.graphs.end(); ++g) {
            if (g->second.last_use < oldest->second.last_use) oldest = g;
          }
          impl.graphs.erase(oldest);
        }
        Graph g;
        g.graph = std::make_unique<at::cuda::CUDAGraph>();
        const absl::Status st =
            CaptureCudaGraph(*g.graph, impl.pool, stream.stream(), [&] {
              return decoder.StaticDecodeStep(io, storage, bucket, kernels);
            });
        if (!st.ok()) {
          impl.failed.emplace(key, true);
          ++impl.declined;
          return AcceleratedPrefill{};
        }
        ++impl.captures;
        it = impl.graphs.emplace(key, std::move(g)).first;
      }
      it->second.last_use = ++impl.clock;
      it->second.graph->replay();
      ++impl.replays;
      RETURN_IF_ERROR(CopyCachePrefix(storage, cache.storage(), n));
      if (want_logits) out.copy_(impl.logits);
    }
    impl.done.record(stream);
    impl.done.block(caller);
    return AcceleratedPrefill{true, out};
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("CUDA-graph prefill: ", e.what_without_backtrace()));
  }
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

void InstallCudaGraphAccelerators(Decoder& decoder) {
  InstallCudaGraphDecoder(decoder);
  InstallCudaGraphPrefill(decoder);
}

}  // namespace kvwire
