#include "common/fuser/cuda_graph_fuser.h"

#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cuda_graph_capture.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

struct LayerGraph {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor sk, sv, rk, rv;  // Static inputs [H, n, D].
  at::Tensor out_k, out_v;    // Static outputs.
};

using GraphKey = std::tuple<int64_t, at::ScalarType, at::ScalarType>;

// [H, n, D] view of an unbatched or batch-1 tensor; undefined otherwise.
at::Tensor Unbatched(const at::Tensor& t) {
  if (t.dim() == 3) return t;
  if (t.dim() == 4 && t.size(0) == 1) return t.select(0, 0);
  return at::Tensor();
}

}  // namespace

struct CudaGraphFuser::Impl {
  std::mutex mu;
  int auto_prepare = 0;  // Token counts that may still be captured on use.
  bool have_pool = false;
  decltype(at::cuda::graph_pool_handle()) pool;
  std::map<GraphKey, std::map<int, LayerGraph>> graphs;
  int64_t replays = 0;

  // The graph for this call, or nullptr (eager fallback).
  LayerGraph* Find(int layer, const at::Tensor& sk, const at::Tensor& sv,
                   const at::Tensor& rk, const at::Tensor& rv,
                   const c10::Device& device) {
    if (!device.is_cuda()) return nullptr;
    for (const at::Tensor* t : {&sk, &sv, &rk, &rv}) {
      if (!t->defined() || t->device() != device || !Unbatched(*t).defined()) {
        return nullptr;
      }
    }
    auto it =
        graphs.find(GraphKey{sk.size(-2), sk.scalar_type(), rk.scalar_type()});
    if (it == graphs.end() || sv.scalar_type() != sk.scalar_type() ||
        rv.scalar_type() != rk.scalar_type()) {
      return nullptr;
    }
    auto g = it->second.find(layer);
    if (g == it->second.end()) return nullptr;
    LayerGraph& lg = g->second;
    if (Unbatched(sk).sizes() != lg.sk.sizes() ||
        Unbatched(sv).sizes() != lg.sv.sizes() ||
        Unbatched(rk).size(0) != lg.rk.size(0) ||
        Unbatched(rk).size(2) != lg.rk.size(2) ||
        Unbatched(rv).sizes() != Unbatched(rk).sizes()) {
      return nullptr;
    }
    return &lg;
  }
};

CudaGraphFuser::CudaGraphFuser(const C2CFuser* fuser)
    : fuser_(fuser), impl_(std::make_unique<Impl>()) {}

CudaGraphFuser::~CudaGraphFuser() = default;

int64_t CudaGraphFuser::replays() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->replays;
}

bool CudaGraphFuser::prepared(int64_t tokens) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (const auto& [key, layers] : impl_->graphs) {
    if (std::get<0>(key) == tokens) return true;
  }
  return false;
}

absl::Status CudaGraphFuser::Prepare(int64_t tokens,
                                     at::ScalarType sharer_dtype,
                                     at::ScalarType receiver_dtype) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return PrepareLocked(tokens, sharer_dtype, receiver_dtype);
}

void CudaGraphFuser::set_auto_prepare(int max_token_counts) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->auto_prepare = max_token_counts;
}

void CudaGraphFuser::MaybeAutoPrepareLocked(const at::Tensor& sharer_keys,
                                            const at::Tensor& receiver_keys) {
  if (impl_->auto_prepare <= 0 || !sharer_keys.defined() ||
      !receiver_keys.defined() || !sharer_keys.is_cuda()) {
    return;
  }
  const GraphKey key{sharer_keys.size(-2), sharer_keys.scalar_type(),
                     receiver_keys.scalar_type()};
  if (impl_->graphs.count(key) > 0) return;
  --impl_->auto_prepare;
  const absl::Status st =
      PrepareLocked(std::get<0>(key), std::get<1>(key), std::get<2>(key));
  if (!st.ok()) impl_->auto_prepare = 0;  // Eager from now on.
}

absl::Status CudaGraphFuser::PrepareLocked(int64_t tokens,
                                           at::ScalarType sharer_dtype,
                                           at::ScalarType receiver_dtype) {
  if (tokens <= 0) return absl::InvalidArgumentError("tokens must be > 0");
  const GraphKey key{tokens, sharer_dtype, receiver_dtype};
  if (impl_->graphs.count(key)) return absl::OkStatus();
  const std::vector<int> layers = fuser_->FusedReceiverLayers();
  if (layers.empty()) return absl::OkStatus();
  const c10::Device device = fuser_->ProjectorFor(layers[0])->device();
  if (!device.is_cuda()) {
    return absl::FailedPreconditionError(
        "CUDA graphs need the projectors on a CUDA device");
  }
  std::map<int, LayerGraph> captured;
  try {
    c10::InferenceMode inference;
    c10::cuda::CUDAGuard device_guard(device.index());
    if (!impl_->have_pool) {
      impl_->pool = at::cuda::graph_pool_handle();
      impl_->have_pool = true;
    }
    for (int t : layers) {
      const C2CProjector* p = fuser_->ProjectorFor(t);
      const C2CProjectorArgs& a = p->args();
      LayerGraph g;
      auto opts = at::TensorOptions().device(device);
      g.sk = at::zeros({a.source_num_heads, tokens, a.source_dim},
                       opts.dtype(sharer_dtype));
      g.sv = at::zeros_like(g.sk);
      g.rk = at::zeros({a.target_num_heads, tokens, a.target_dim},
                       opts.dtype(receiver_dtype));
      g.rv = at::zeros_like(g.rk);
      g.out_k = at::zeros_like(g.rk);
      g.out_v = at::zeros_like(g.rk);
      captured.emplace(t, std::move(g));
    }
    c10::cuda::device_synchronize();
    c10::cuda::CUDAStream stream =
        c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
    c10::cuda::CUDAStreamGuard stream_guard(stream);
    for (auto& [t, g] : captured) {
      const C2CProjector* p = fuser_->ProjectorFor(t);
      // Warm-up on the capture stream (cuBLAS handles and workspaces).
      for (int i = 0; i < 2; ++i) {
        RETURN_IF_ERROR(
            p->ForwardInto(g.sk, g.sv, g.rk, g.rv, g.out_k, g.out_v));
      }
      stream.synchronize();
      g.graph = std::make_unique<at::cuda::CUDAGraph>();
      const absl::Status st =
          CaptureCudaGraph(*g.graph, impl_->pool, stream.stream(), [&] {
            return p->ForwardInto(g.sk, g.sv, g.rk, g.rv, g.out_k, g.out_v);
          });
      if (!st.ok()) {
        return absl::InternalError(
            absl::StrCat("capturing receiver layer ", t, ": ", st.message()));
      }
    }
    stream.synchronize();
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("CUDA graph capture: ", e.what_without_backtrace()));
  }
  impl_->graphs.emplace(key, std::move(captured));
  return absl::OkStatus();
}

absl::Status CudaGraphFuser::FuseLayer(int receiver_layer, const at::Tensor& sk,
                                       const at::Tensor& sv,
                                       const at::Tensor& rk,
                                       const at::Tensor& rv, int64_t start) {
  const C2CProjector* p = fuser_->ProjectorFor(receiver_layer);
  if (p == nullptr) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(impl_->mu);
  MaybeAutoPrepareLocked(sk, rk);
  LayerGraph* g = impl_->Find(receiver_layer, sk, sv, rk, rv, p->device());
  const int64_t n = sk.defined() ? sk.size(-2) : 0;
  if (g == nullptr || start < 0 || start + n > rk.size(-2)) {
    return fuser_->FuseLayer(receiver_layer, sk, sv, rk, rv, start);
  }
  try {
    c10::InferenceMode inference;
    at::Tensor k = Unbatched(rk).narrow(1, start, n);
    at::Tensor v = Unbatched(rv).narrow(1, start, n);
    g->sk.copy_(Unbatched(sk));
    g->sv.copy_(Unbatched(sv));
    g->rk.copy_(k);
    g->rv.copy_(v);
    g->graph->replay();
    ++impl_->replays;
    if (p->key_gate_open()) k.copy_(g->out_k);
    if (p->value_gate_open()) v.copy_(g->out_v);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("fusing receiver layer ", receiver_layer,
                     " (graph): ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status CudaGraphFuser::FuseLayerTokens(
    int receiver_layer, const at::Tensor& sk, const at::Tensor& sv,
    absl::Span<const uint32_t> positions, const at::Tensor& rk,
    const at::Tensor& rv) {
  const C2CProjector* p = fuser_->ProjectorFor(receiver_layer);
  if (p == nullptr) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(impl_->mu);
  MaybeAutoPrepareLocked(sk, rk);
  LayerGraph* g = impl_->Find(receiver_layer, sk, sv, rk, rv, p->device());
  const int64_t n = sk.defined() ? sk.size(-2) : 0;
  bool valid = g != nullptr && static_cast<int64_t>(positions.size()) == n;
  std::vector<int64_t> idx(positions.begin(), positions.end());
  if (valid) {
    std::vector<int64_t> sorted = idx;
    std::sort(sorted.begin(), sorted.end());
    valid = sorted.empty() ||
            (sorted.back() < rk.size(-2) &&
             std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
  }
  if (!valid) {
    return fuser_->FuseLayerTokens(receiver_layer, sk, sv, positions, rk, rv);
  }
  try {
    c10::InferenceMode inference;
    at::Tensor index =
        at::from_blob(idx.data(), {n}, at::TensorOptions().dtype(at::kLong))
            .to(rk.device());
    at::Tensor k = Unbatched(rk), v = Unbatched(rv);
    g->sk.copy_(Unbatched(sk));
    g->sv.copy_(Unbatched(sv));
    g->rk.copy_(k.index_select(1, index));
    g->rv.copy_(v.index_select(1, index));
    g->graph->replay();
    ++impl_->replays;
    if (p->key_gate_open()) k.index_copy_(1, index, g->out_k);
    if (p->value_gate_open()) v.index_copy_(1, index, g->out_v);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("fusing receiver layer ", receiver_layer,
                     " (graph): ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

std::shared_ptr<CudaGraphFuser> InstallCudaGraphFuser(C2CFuser& fuser) {
  const char* env = std::getenv("KVWIRE_CUDA_GRAPH_FUSE");
  if (env != nullptr && std::string(env) == "0") return nullptr;
  const std::vector<int> layers = fuser.FusedReceiverLayers();
  if (layers.empty() || !fuser.ProjectorFor(layers[0])->device().is_cuda()) {
    return nullptr;
  }
  auto graphs = std::make_shared<CudaGraphFuser>(&fuser);
  graphs->set_auto_prepare(32);
  fuser.SetAccelerator(graphs);
  return graphs;
}

}  // namespace kvwire
