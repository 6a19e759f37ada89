#include "common/fuser/cuda_graph_fuser.h"

#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cuda_graph_capture.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {
namespace {

struct LayerGraph {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor sk, sv, rk, rv;  // Static inputs [H, nb, D] (buffer views).
  at::Tensor out_k, out_v;    // Static outputs.
};

struct RunGraph {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  // Static sharer / receiver inputs and output, [count, H, nb, D].
  at::Tensor sharer, receiver, out;
};

// Static buffers of one shape, shared by its graphs of every bucket (each
// graph uses views of their first nb token rows).
struct StaticBuffers {
  std::vector<at::Tensor> tensors;  // Token rows on dim -2.
  int64_t rows = 0;
};

// (bucket, sharer dtype, receiver dtype) -> per-layer graphs.
using LayerGraphKey = std::tuple<int64_t, at::ScalarType, at::ScalarType>;
// (receiver layer, sharer dtype, receiver dtype).
using LayerBufferKey = std::tuple<int, at::ScalarType, at::ScalarType>;
// A FusionRun's shape: (stack, value path, first member, count, receiver
// dtype).
using RunShape = std::tuple<int, bool, int64_t, int64_t, at::ScalarType>;
using RunGraphKey = std::pair<RunShape, int64_t>;  // With the bucket.

RunShape ShapeOf(const FusionRun& run) {
  return RunShape{run.stack, run.value, run.first, run.count(),
                  run.receiver_dtype};
}

// [H, n, D] view of an unbatched or batch-1 tensor; undefined otherwise.
at::Tensor Unbatched(const at::Tensor& t) {
  if (t.dim() == 3) return t;
  if (t.dim() == 4 && t.size(0) == 1) return t.select(0, 0);
  return at::Tensor();
}

// Views of rows [0, nb) of `b`'s tensors. When they hold fewer rows, `make`
// allocates new ones of max(nb, min(2 * rows, max_rows)) rows; graphs
// captured on the old ones keep those alive.
std::vector<at::Tensor> Rows(
    StaticBuffers& b, int64_t nb, int64_t max_rows,
    const std::function<std::vector<at::Tensor>(int64_t)>& make) {
  if (b.rows < nb) {
    const int64_t rows = std::max(nb, std::min(2 * b.rows, max_rows));
    b.tensors = make(rows);
    b.rows = rows;
  }
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : b.tensors) out.push_back(t.narrow(-2, 0, nb));
  return out;
}

// Runs `record` twice on `stream`, the current stream (cuBLAS handles and
// workspaces), then captures it into `graph`.
absl::Status WarmUpAndCapture(at::cuda::CUDAGraph& graph,
                              decltype(at::cuda::graph_pool_handle()) pool,
                              c10::cuda::CUDAStream stream,
                              const std::function<absl::Status()>& record) {
  for (int i = 0; i < 2; ++i) RETURN_IF_ERROR(record());
  stream.synchronize();
  return CaptureCudaGraph(graph, pool, stream.stream(), record);
}

}  // namespace

struct CudaGraphFuser::Impl {
  std::mutex mu;
  int auto_prepare = 0;          // Per-layer buckets that may be captured.
  int auto_prepare_batched = 0;  // Batched graphs that may be captured.
  bool have_pool = false;
  decltype(at::cuda::graph_pool_handle()) pool;
  std::map<LayerGraphKey, std::map<int, LayerGraph>> graphs;
  std::map<LayerBufferKey, StaticBuffers> layer_buffers;
  std::map<RunGraphKey, RunGraph> run_graphs;
  std::map<RunShape, StaticBuffers> run_buffers;
  int64_t replays = 0;
  int64_t captures = 0;
  // Recorded after each graph call's work: the next one waits for it, on
  // whatever stream it runs, before touching the static buffers.
  at::cuda::CUDAEvent done;

  decltype(at::cuda::graph_pool_handle()) Pool() {
    if (!have_pool) {
      pool = at::cuda::graph_pool_handle();
      have_pool = true;
    }
    return pool;
  }

  void BeginGraphCall(c10::DeviceIndex device) {
    done.block(c10::cuda::getCurrentCUDAStream(device));
  }
  void EndGraphCall(c10::DeviceIndex device) {
    done.record(c10::cuda::getCurrentCUDAStream(device));
  }

  // The per-layer graph for this call, or nullptr (eager fallback).
  LayerGraph* Find(int layer, int64_t bucket, const at::Tensor& sk,
                   const at::Tensor& sv, const at::Tensor& rk,
                   const at::Tensor& rv, const c10::Device& device) {
    if (!device.is_cuda() || bucket <= 0) return nullptr;
    for (const at::Tensor* t : {&sk, &sv, &rk, &rv}) {
      if (!t->defined() || t->device() != device || !Unbatched(*t).defined()) {
        return nullptr;
      }
    }
    // The eager path rejects mixed ranks; so must this one.
    if (sv.dim() != sk.dim() || rk.dim() != sk.dim() || rv.dim() != sk.dim() ||
        sv.scalar_type() != sk.scalar_type() ||
        rv.scalar_type() != rk.scalar_type()) {
      return nullptr;
    }
    auto it =
        graphs.find(LayerGraphKey{bucket, sk.scalar_type(), rk.scalar_type()});
    if (it == graphs.end()) return nullptr;
    auto g = it->second.find(layer);
    if (g == it->second.end()) return nullptr;
    LayerGraph& lg = g->second;
    const at::Tensor s = Unbatched(sk), r = Unbatched(rk);
    if (s.size(0) != lg.sk.size(0) || s.size(2) != lg.sk.size(2) ||
        s.size(1) > lg.sk.size(1) || Unbatched(sv).sizes() != s.sizes() ||
        r.size(0) != lg.rk.size(0) || r.size(2) != lg.rk.size(2) ||
        Unbatched(rv).sizes() != r.sizes()) {
      return nullptr;
    }
    return &lg;
  }

  RunGraph* FindRun(const FusionRun& run, int64_t bucket) {
    auto it = run_graphs.find(RunGraphKey{ShapeOf(run), bucket});
    return it == run_graphs.end() ? nullptr : &it->second;
  }
};

CudaGraphFuser::CudaGraphFuser(const C2CFuser* fuser)
    : CudaGraphFuser(fuser, Options()) {}

CudaGraphFuser::CudaGraphFuser(const C2CFuser* fuser, const Options& options)
    : fuser_(fuser), options_(options), impl_(std::make_unique<Impl>()) {
  options_.bucket = std::max<int64_t>(options_.bucket, 1);
}

CudaGraphFuser::~CudaGraphFuser() = default;

int64_t CudaGraphFuser::TokenBucket(int64_t tokens) const {
  if (tokens <= 0 || tokens > options_.max_tokens) return 0;
  return (tokens + options_.bucket - 1) / options_.bucket * options_.bucket;
}

int64_t CudaGraphFuser::replays() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->replays;
}

int64_t CudaGraphFuser::captures() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->captures;
}

bool CudaGraphFuser::prepared(int64_t tokens) const {
  const int64_t bucket = TokenBucket(tokens);
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (const auto& [key, layers] : impl_->graphs) {
    if (std::get<0>(key) == bucket) return true;
  }
  return false;
}

bool CudaGraphFuser::prepared_batched(int64_t tokens) const {
  const int64_t bucket = TokenBucket(tokens);
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (const auto& [key, graph] : impl_->run_graphs) {
    if (key.second == bucket) return true;
  }
  return false;
}

absl::Status CudaGraphFuser::Prepare(int64_t tokens,
                                     at::ScalarType sharer_dtype,
                                     at::ScalarType receiver_dtype) {
  const int64_t bucket = TokenBucket(tokens);
  if (bucket == 0) {
    return absl::InvalidArgumentError(absl::StrCat("no graph bucket for ",
                                                   tokens, " tokens (1 to ",
                                                   options_.max_tokens, ")"));
  }
  std::lock_guard<std::mutex> lock(impl_->mu);
  return PrepareLocked(bucket, sharer_dtype, receiver_dtype);
}

void CudaGraphFuser::set_auto_prepare(int max_buckets, int max_batched_graphs) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->auto_prepare = max_buckets;
  impl_->auto_prepare_batched = max_batched_graphs;
}

void CudaGraphFuser::MaybeAutoPrepareLocked(int64_t bucket,
                                            const at::Tensor& sharer_keys,
                                            const at::Tensor& receiver_keys) {
  if (impl_->auto_prepare <= 0 || bucket <= 0 || !sharer_keys.defined() ||
      !receiver_keys.defined() || !sharer_keys.is_cuda()) {
    return;
  }
  const LayerGraphKey key{bucket, sharer_keys.scalar_type(),
                          receiver_keys.scalar_type()};
  if (impl_->graphs.count(key) > 0) return;
  --impl_->auto_prepare;
  const absl::Status st =
      PrepareLocked(bucket, std::get<1>(key), std::get<2>(key));
  if (!st.ok()) impl_->auto_prepare = 0;  // Eager from now on.
}

absl::Status CudaGraphFuser::PrepareLocked(int64_t bucket,
                                           at::ScalarType sharer_dtype,
                                           at::ScalarType receiver_dtype) {
  const LayerGraphKey key{bucket, sharer_dtype, receiver_dtype};
  if (impl_->graphs.count(key)) return absl::OkStatus();
  const std::vector<int> layers = fuser_->FusedReceiverLayers();
  if (layers.empty()) return absl::OkStatus();
  const c10::Device device = fuser_->ProjectorFor(layers[0])->device();
  if (!device.is_cuda()) {
    return absl::FailedPreconditionError(
        "CUDA graphs need the projectors on a CUDA device");
  }
  const int64_t max_rows = TokenBucket(options_.max_tokens);
  std::map<int, LayerGraph> captured;
  RETURN_IF_ERROR(Guarded("CUDA graph capture", [&]() -> absl::Status {
    c10::InferenceMode inference;
    c10::cuda::CUDAGuard device_guard(device.index());
    for (int t : layers) {
      const C2CProjectorArgs& a = fuser_->ProjectorFor(t)->args();
      const std::vector<at::Tensor> v = Rows(
          impl_->layer_buffers[LayerBufferKey{t, sharer_dtype, receiver_dtype}],
          bucket, max_rows, [&](int64_t rows) {
            auto opts = at::TensorOptions().device(device);
            auto s = opts.dtype(sharer_dtype);
            auto r = opts.dtype(receiver_dtype);
            std::vector<int64_t> ss = {a.source_num_heads, rows, a.source_dim};
            std::vector<int64_t> rs = {a.target_num_heads, rows, a.target_dim};
            return std::vector<at::Tensor>{at::zeros(ss, s), at::zeros(ss, s),
                                           at::zeros(rs, r), at::zeros(rs, r),
                                           at::zeros(rs, r), at::zeros(rs, r)};
          });
      LayerGraph g;
      g.sk = v[0];
      g.sv = v[1];
      g.rk = v[2];
      g.rv = v[3];
      g.out_k = v[4];
      g.out_v = v[5];
      captured.emplace(t, std::move(g));
    }
    c10::cuda::device_synchronize();
    c10::cuda::CUDAStream stream =
        c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
    c10::cuda::CUDAStreamGuard stream_guard(stream);
    for (auto& [t, g] : captured) {
      const C2CProjector* p = fuser_->ProjectorFor(t);
      g.graph = std::make_unique<at::cuda::CUDAGraph>();
      const absl::Status st =
          WarmUpAndCapture(*g.graph, impl_->Pool(), stream, [&] {
            return p->ForwardInto(g.sk, g.sv, g.rk, g.rv, g.out_k, g.out_v);
          });
      if (!st.ok()) {
        return absl::InternalError(
            absl::StrCat("capturing receiver layer ", t, ": ", st.message()));
      }
      ++impl_->captures;
    }
    stream.synchronize();
    return absl::OkStatus();
  }));
  impl_->graphs.emplace(key, std::move(captured));
  return absl::OkStatus();
}

absl::Status CudaGraphFuser::PrepareBatched(int64_t tokens,
                                            at::ScalarType receiver_dtype) {
  const int64_t bucket = TokenBucket(tokens);
  if (bucket == 0) {
    return absl::InvalidArgumentError(absl::StrCat("no graph bucket for ",
                                                   tokens, " tokens (1 to ",
                                                   options_.max_tokens, ")"));
  }
  const std::vector<int> layers = fuser_->FusedReceiverLayers();
  if (layers.empty()) return absl::OkStatus();
  const c10::Device device = fuser_->ProjectorFor(layers[0])->device();
  if (!device.is_cuda()) {
    return absl::FailedPreconditionError(
        "CUDA graphs need the projectors on a CUDA device");
  }
  // The runs of a call fusing every layer with `tokens` tokens.
  std::vector<LayerFusionInput> inputs;
  RETURN_IF_ERROR(Guarded("CUDA graph capture", [&]() -> absl::Status {
    c10::InferenceMode inference;
    for (int t : layers) {
      const C2CProjector* p = fuser_->ProjectorFor(t);
      const C2CProjectorArgs& a = p->args();
      auto opts = at::TensorOptions().device(device);
      LayerFusionInput in;
      in.receiver_layer = t;
      in.sharer_keys = at::zeros({a.source_num_heads, tokens, a.source_dim},
                                 opts.dtype(p->dtype()));
      in.sharer_values = in.sharer_keys;
      in.receiver_keys = at::zeros({a.target_num_heads, tokens, a.target_dim},
                                   opts.dtype(receiver_dtype));
      in.receiver_values = in.receiver_keys;
      inputs.push_back(std::move(in));
    }
    return absl::OkStatus();
  }));
  ASSIGN_OR_RETURN(FusionPlan plan, fuser_->PlanFusion(inputs));
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (const FusionRun& run : plan.runs) {
    RETURN_IF_ERROR(CaptureRunLocked(run, bucket));
  }
  return absl::OkStatus();
}

absl::Status CudaGraphFuser::CaptureRunLocked(const FusionRun& run,
                                              int64_t bucket) {
  if (impl_->FindRun(run, bucket) != nullptr) return absl::OkStatus();
  const C2CProjectorStack& stack = fuser_->stack(run.stack);
  const c10::Device device = stack.device();
  if (!device.is_cuda()) {
    return absl::FailedPreconditionError(
        "CUDA graphs need the projectors on a CUDA device");
  }
  const C2CProjectorArgs& a = stack.args();
  const int64_t count = run.count();
  return Guarded("CUDA graph capture", [&]() -> absl::Status {
    c10::InferenceMode inference;
    c10::cuda::CUDAGuard device_guard(device.index());
    const std::vector<at::Tensor> v =
        Rows(impl_->run_buffers[ShapeOf(run)], bucket,
             TokenBucket(options_.max_tokens), [&](int64_t rows) {
               auto opts = at::TensorOptions().device(device);
               std::vector<int64_t> rs = {count, a.target_num_heads, rows,
                                          a.target_dim};
               return std::vector<at::Tensor>{
                   at::zeros({count, a.source_num_heads, rows, a.source_dim},
                             opts.dtype(stack.dtype())),
                   at::zeros(rs, opts.dtype(run.receiver_dtype)),
                   at::zeros(rs, opts.dtype(run.receiver_dtype))};
             });
    RunGraph g;
    g.sharer = v[0];
    g.receiver = v[1];
    g.out = v[2];
    g.graph = std::make_unique<at::cuda::CUDAGraph>();
    c10::cuda::device_synchronize();
    c10::cuda::CUDAStream stream =
        c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
    c10::cuda::CUDAStreamGuard stream_guard(stream);
    const absl::Status st =
        WarmUpAndCapture(*g.graph, impl_->Pool(), stream, [&] {
          return stack.FusePathInto(run.value, run.first, count, g.sharer,
                                    g.receiver, g.out);
        });
    if (!st.ok()) {
      return absl::InternalError(absl::StrCat(
          "capturing batched fusion of ", count, " layers: ", st.message()));
    }
    stream.synchronize();
    ++impl_->captures;
    impl_->run_graphs.emplace(RunGraphKey{ShapeOf(run), bucket}, std::move(g));
    return absl::OkStatus();
  });
}

absl::Status CudaGraphFuser::FuseLayer(int receiver_layer, const at::Tensor& sk,
                                       const at::Tensor& sv,
                                       const at::Tensor& rk,
                                       const at::Tensor& rv, int64_t start) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return FuseLayerLocked(receiver_layer, sk, sv, rk, rv, start);
}

absl::Status CudaGraphFuser::FuseLayerTokens(
    int receiver_layer, const at::Tensor& sk, const at::Tensor& sv,
    absl::Span<const uint32_t> positions, const at::Tensor& rk,
    const at::Tensor& rv) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return FuseLayerTokensLocked(receiver_layer, sk, sv, positions, rk, rv);
}

absl::Status CudaGraphFuser::FuseLayerLocked(
    int receiver_layer, const at::Tensor& sk, const at::Tensor& sv,
    const at::Tensor& rk, const at::Tensor& rv, int64_t start) {
  const C2CProjector* p = fuser_->ProjectorFor(receiver_layer);
  if (p == nullptr) return absl::OkStatus();
  const int64_t n = sk.defined() && sk.dim() >= 3 ? sk.size(-2) : 0;
  const int64_t bucket = TokenBucket(n);
  MaybeAutoPrepareLocked(bucket, sk, rk);
  LayerGraph* g =
      impl_->Find(receiver_layer, bucket, sk, sv, rk, rv, p->device());
  if (g == nullptr || start < 0 || start + n > rk.size(-2)) {
    return fuser_->FuseLayer(receiver_layer, sk, sv, rk, rv, start);
  }
  return Guarded(
      absl::StrCat("fusing receiver layer ", receiver_layer, " (graph)"),
      [&]() -> absl::Status {
        c10::InferenceMode inference;
        c10::cuda::CUDAGuard device_guard(p->device().index());
        impl_->BeginGraphCall(p->device().index());
        at::Tensor k = Unbatched(rk).narrow(1, start, n);
        at::Tensor v = Unbatched(rv).narrow(1, start, n);
        g->sk.narrow(1, 0, n).copy_(Unbatched(sk));
        g->sv.narrow(1, 0, n).copy_(Unbatched(sv));
        g->rk.narrow(1, 0, n).copy_(k);
        g->rv.narrow(1, 0, n).copy_(v);
        g->graph->replay();
        ++impl_->replays;
        if (p->key_gate_open()) k.copy_(g->out_k.narrow(1, 0, n));
        if (p->value_gate_open()) v.copy_(g->out_v.narrow(1, 0, n));
        impl_->EndGraphCall(p->device().index());
        return absl::OkStatus();
      });
}

absl::Status CudaGraphFuser::FuseLayerTokensLocked(
    int receiver_layer, const at::Tensor& sk, const at::Tensor& sv,
    absl::Span<const uint32_t> positions, const at::Tensor& rk,
    const at::Tensor& rv) {
  const C2CProjector* p = fuser_->ProjectorFor(receiver_layer);
  if (p == nullptr) return absl::OkStatus();
  const int64_t n = sk.defined() && sk.dim() >= 3 ? sk.size(-2) : 0;
  const int64_t bucket = TokenBucket(n);
  MaybeAutoPrepareLocked(bucket, sk, rk);
  LayerGraph* g =
      impl_->Find(receiver_layer, bucket, sk, sv, rk, rv, p->device());
  bool valid = g != nullptr && static_cast<int64_t>(positions.size()) == n;
  std::vector<int64_t> idx(positions.begin(), positions.end());
  if (valid) {
    std::vector<int64_t> sorted = idx;
    std::sort(sorted.begin(), sorted.end());
    valid = !sorted.empty() && sorted.back() < rk.size(-2) &&
            std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end();
  }
  if (!valid) {
    return fuser_->FuseLayerTokens(receiver_layer, sk, sv, positions, rk, rv);
  }
  return Guarded(
      absl::StrCat("fusing receiver layer ", receiver_layer, " (graph)"),
      [&]() -> absl::Status {
        c10::InferenceMode inference;
        c10::cuda::CUDAGuard device_guard(p->device().index());
        impl_->BeginGraphCall(p->device().index());
        at::Tensor index =
            at::from_blob(idx.data(), {n}, at::TensorOptions().dtype(at::kLong))
                .to(rk.device());
        at::Tensor k = Unbatched(rk), v = Unbatched(rv);
        g->sk.narrow(1, 0, n).copy_(Unbatched(sk));
        g->sv.narrow(1, 0, n).copy_(Unbatched(sv));
        g->rk.narrow(1, 0, n).copy_(k.index_select(1, index));
        g->rv.narrow(1, 0, n).copy_(v.index_select(1, index));
        g->graph->replay();
        ++impl_->replays;
        if (p->key_gate_open()) {
          k.index_copy_(1, index, g->out_k.narrow(1, 0, n));
        }
        if (p->value_gate_open()) {
          v.index_copy_(1, index, g->out_v.narrow(1, 0, n));
        }
        impl_->EndGraphCall(p->device().index());
        return absl::OkStatus();
      });
}

absl::Status CudaGraphFuser::FuseLayers(
    absl::Span<const LayerFusionInput> inputs) {
  ASSIGN_OR_RETURN(FusionPlan plan, fuser_->PlanFusion(inputs));
  std::lock_guard<std::mutex> lock(impl_->mu);
  // Runs without a graph are computed eagerly and written after the graph
  // runs (runs write disjoint (layer, path) pairs, so order is free).
  std::vector<std::pair<const FusionRun*, at::Tensor>> eager;
  std::optional<c10::DeviceIndex> graph_device;
  for (const FusionRun& run : plan.runs) {
    const C2CProjectorStack& stack = fuser_->stack(run.stack);
    const int64_t bucket = TokenBucket(run.tokens);
    RunGraph* g = nullptr;
    if (bucket > 0 && stack.device().is_cuda()) {
      g = impl_->FindRun(run, bucket);
      if (g == nullptr && impl_->auto_prepare_batched > 0) {
        --impl_->auto_prepare_batched;
        if (!CaptureRunLocked(run, bucket).ok()) {
          impl_->auto_prepare_batched = 0;  // Eager from now on.
        }
        g = impl_->FindRun(run, bucket);
      }
    }
    if (g == nullptr) {
      ASSIGN_OR_RETURN(at::Tensor fused, fuser_->ComputeRun(plan, run, inputs));
      eager.emplace_back(&run, std::move(fused));
      continue;
    }
    const c10::DeviceIndex device = stack.device().index();
    RETURN_IF_ERROR(Guarded("batched fusion (graph)", [&]() -> absl::Status {
      c10::InferenceMode inference;
      c10::cuda::CUDAGuard device_guard(device);
      if (!graph_device.has_value()) {
        impl_->BeginGraphCall(device);
        graph_device = device;
      }
      RETURN_IF_ERROR(
          fuser_->GatherRun(plan, run, inputs, g->sharer, g->receiver));
      g->graph->replay();
      ++impl_->replays;
      RETURN_IF_ERROR(fuser_->ScatterRun(plan, run, inputs, g->out));
      return absl::OkStatus();
    }));
  }
  if (graph_device.has_value()) {
    RETURN_IF_ERROR(Guarded("batched fusion (graph)", [&]() -> absl::Status {
      c10::cuda::CUDAGuard device_guard(*graph_device);
      impl_->EndGraphCall(*graph_device);
      return absl::OkStatus();
    }));
  }
  for (const auto& [run, fused] : eager) {
    RETURN_IF_ERROR(fuser_->ScatterRun(plan, *run, inputs, fused));
  }
  for (int i : plan.one_by_one) {
    const LayerFusionInput& in = inputs[i];
    RETURN_IF_ERROR(
        in.positions.has_value()
            ? FuseLayerTokensLocked(in.receiver_layer, in.sharer_keys,
                                    in.sharer_values, *in.positions,
                                    in.receiver_keys, in.receiver_values)
            : FuseLayerLocked(in.receiver_layer, in.sharer_keys,
                              in.sharer_values, in.receiver_keys,
                              in.receiver_values, in.start));
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
  graphs->set_auto_prepare(/*max_buckets=*/32, /*max_batched_graphs=*/64);
  fuser.SetAccelerator(graphs);
  return graphs;
}

}  // namespace kvwire
