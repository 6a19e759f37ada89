// kvwire-fuser-bench: loads a C2C fuser checkpoint, checks it against
// reference fused K/V (written by tools/gen_fuser_goldens.py) and times the
// fusion of every receiver layer for one prompt, as C2C does after the
// prefill, written in place into the receiver's cache: one projector call
// per receiver layer ("timing"), and all layers in one batched
// C2CFuser::FuseLayers call ("batched"). kvwire-fuser-graph-bench (CUDA
// builds, --device=cuda) also times CUDA-graph replay of both
// ("cuda_graphs", "cuda_graphs_batched", with their capture time). Prints
// one JSON object on stdout; its "summary" lists each path's median ms and
// its max |diff| against the eager per-layer result.
//
// The io file is a torch.save / pickle_save dict of tensors [1, H, N, D]:
// sharer_k.<s>, sharer_v.<s>, receiver_k.<t>, receiver_v.<t>, and optionally
// fused_k.<t>, fused_v.<t> (reference outputs), positions (int64 [n]) with
// sparse_k.<t>, sparse_v.<t> (the receiver's whole layer after fusing only
// those positions).
//
//   kvwire-fuser-bench --checkpoint=/tmp/real --io=/tmp/real_io.pt
//       --device=cuda --dtype=bf16 --warmup=3 --runs=15
//   kvwire-fuser-bench --checkpoint=/tmp/tiny --tokens=9 --dtype=fp32
//       --write_io=/tmp/tiny_io.pt --runs=0
#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/flags_help.h"
#include "common/fuser/fuser.h"
#include "common/fuser/torch_pickle.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"
#include "nlohmann/json.hpp"

#ifdef KVWIRE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif
#ifdef KVWIRE_FUSER_GRAPHS
#include "common/fuser/cuda_graph_fuser.h"
#endif

ABSL_FLAG(std::string, checkpoint, "", "Fuser checkpoint directory.");
ABSL_FLAG(std::string, io, "", "Inputs (+ reference outputs); see above.");
ABSL_FLAG(std::string, write_io, "",
          "Write the inputs and our fused outputs (and a sparse case over "
          "every third token) here, in the io format.");
ABSL_FLAG(std::string, device, "cpu", "cpu | cuda | cuda:N");
ABSL_FLAG(std::string, dtype, "bf16", "Projector dtype: bf16 | fp16 | fp32.");
ABSL_FLAG(int64_t, tokens, 117, "Tokens per layer for random inputs.");
ABSL_FLAG(uint64_t, seed, 1, "Seed for random inputs.");
ABSL_FLAG(int, warmup, 3, "Untimed runs.");
ABSL_FLAG(int, runs, 15, "Timed runs of the whole fusion.");

namespace kvwire {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

void Sync(const c10::Device& device) {
#ifdef KVWIRE_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#endif
  (void)device;
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& s) {
  if (s == "bf16") return at::kBFloat16;
  if (s == "fp16") return at::kHalf;
  if (s == "fp32") return at::kFloat;
  return absl::InvalidArgumentError("unknown --dtype " + s);
}

Json Compare(const at::Tensor& ours, const at::Tensor& ref) {
  at::Tensor a = ours.to(at::kCPU).to(at::kFloat);
  at::Tensor b = ref.to(at::kCPU).to(at::kFloat);
  at::Tensor d = (a - b).abs();
  Json j;
  j["max_abs_diff"] = d.max().item<double>();
  j["mean_abs_diff"] = d.mean().item<double>();
  j["ref_max_abs"] = b.abs().max().item<double>();
  j["exact_fraction"] = ours.to(at::kCPU)
                            .eq(ref.to(at::kCPU).to(ours.scalar_type()))
                            .to(at::kFloat)
                            .mean()
                            .item<double>();
  return j;
}

absl::Status Run() {
  c10::InferenceMode guard;
  const std::string ckpt_dir = absl::GetFlag(FLAGS_checkpoint);
  if (ckpt_dir.empty()) return absl::InvalidArgumentError("--checkpoint");
  ASSIGN_OR_RETURN(at::ScalarType dtype,
                   ParseDtype(absl::GetFlag(FLAGS_dtype)));
  const c10::Device device(absl::GetFlag(FLAGS_device));
  Json out;
  out["checkpoint"] = ckpt_dir;
  out["device"] = device.str();
  out["dtype"] = absl::GetFlag(FLAGS_dtype);

  FuserOptions options;
  options.projector.dtype = dtype;
  options.projector.device = device;
  auto t0 = Clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<C2CFuser> fuser,
                   C2CFuser::Load(ckpt_dir, options));
  Sync(device);
  out["load_seconds"] =
      std::chrono::duration<double>(Clock::now() - t0).count();
  out["projectors"] = fuser->num_projectors();

  // Inputs.
  std::map<std::string, at::Tensor> io;
  const std::string io_path = absl::GetFlag(FLAGS_io);
  if (!io_path.empty()) {
    ASSIGN_OR_RETURN(TensorList list, ReadTorchStateDict(io_path));
    for (auto& [n, t] : list) io[n] = t;
  } else {
    at::manual_seed(absl::GetFlag(FLAGS_seed));
    const int64_t n = absl::GetFlag(FLAGS_tokens);
    for (int t : fuser->FusedReceiverLayers()) {
      const C2CProjectorArgs& a = fuser->ProjectorFor(t)->args();
      const int s = *fuser->SharerLayerFor(t);
      for (const char* kv : {"k", "v"}) {
        const std::string sk = absl::StrCat("sharer_", kv, ".", s);
        if (!io.count(sk)) {
          io[sk] =
              at::randn({1, a.source_num_heads, n, a.source_dim}).to(dtype);
        }
        io[absl::StrCat("receiver_", kv, ".", t)] =
            at::randn({1, a.target_num_heads, n, a.target_dim}).to(dtype);
      }
    }
  }
  auto get = [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
    auto it = io.find(name);
    if (it == io.end()) return absl::NotFoundError("io lacks " + name);
    return it->second.to(device);
  };
  const std::vector<int> layers = fuser->FusedReceiverLayers();
  std::map<std::string, at::Tensor> dev;  // Inputs on the device.
  for (int t : layers) {
    const int s = *fuser->SharerLayerFor(t);
    for (const char* kv : {"k", "v"}) {
      for (const std::string& name : {absl::StrCat("sharer_", kv, ".", s),
                                      absl::StrCat("receiver_", kv, ".", t)}) {
        if (dev.count(name)) continue;
        ASSIGN_OR_RETURN(dev[name], get(name));
      }
    }
  }
  auto in = [&](const char* what, const char* kv, int layer) {
    return dev.at(absl::StrCat(what, "_", kv, ".", layer));
  };
  out["tokens"] = in("receiver", "k", layers.at(0)).size(-2);

  // Parity, layer by layer.
  Json parity = Json::array();
  double worst = 0, worst_rel = 0;
  TensorList written;
  for (const auto& [n, t] : dev) written.emplace_back(n, t.to(at::kCPU));
  for (int t : layers) {
    const int s = *fuser->SharerLayerFor(t);
    ASSIGN_OR_RETURN(auto fused,
                     fuser->ProjectorFor(t)->Forward(
                         in("sharer", "k", s), in("sharer", "v", s),
                         in("receiver", "k", t), in("receiver", "v", t)));
    written.emplace_back(absl::StrCat("fused_k.", t), fused.first.to(at::kCPU));
    written.emplace_back(absl::StrCat("fused_v.", t),
                         fused.second.to(at::kCPU));
    const std::string rk = absl::StrCat("fused_k.", t);
    if (!io.count(rk)) continue;
    Json layer;
    layer["layer"] = t;
    layer["k"] = Compare(fused.first, io.at(rk));
    layer["v"] = Compare(fused.second, io.at(absl::StrCat("fused_v.", t)));
    for (const char* kv : {"k", "v"}) {
      worst = std::max(worst, layer[kv]["max_abs_diff"].get<double>());
      worst_rel =
          std::max(worst_rel,
                   layer[kv]["max_abs_diff"].get<double>() /
                       std::max(1e-30, layer[kv]["ref_max_abs"].get<double>()));
    }
    parity.push_back(layer);
  }
  if (!parity.empty()) {
    out["parity"] = parity;
    out["parity_max_abs_diff"] = worst;
    out["parity_max_rel_to_ref_max"] = worst_rel;
  }

  // Sparse fusion over `positions` (from the io, or every third token).
  at::Tensor positions;
  if (io.count("positions")) {
    positions = io.at("positions").to(at::kLong).reshape(-1).contiguous();
  } else if (!absl::GetFlag(FLAGS_write_io).empty()) {
    positions = at::arange(0, in("receiver", "k", layers[0]).size(-2), 3,
                           at::TensorOptions().dtype(at::kLong));
    written.emplace_back("positions", positions);
  }
  if (positions.defined()) {
    std::vector<uint32_t> pos;
    for (int64_t i = 0; i < positions.numel(); ++i) {
      pos.push_back(static_cast<uint32_t>(positions[i].item<int64_t>()));
    }
    at::Tensor idx = positions.to(device);
    double sparse_worst = 0;
    for (int t : layers) {
      const int s = *fuser->SharerLayerFor(t);
      at::Tensor k = in("receiver", "k", t).clone();
      at::Tensor v = in("receiver", "v", t).clone();
      RETURN_IF_ERROR(fuser->FuseLayerTokens(
          t, in("sharer", "k", s).index_select(-2, idx),
          in("sharer", "v", s).index_select(-2, idx), pos, k, v));
      written.emplace_back(absl::StrCat("sparse_k.", t), k.to(at::kCPU));
      written.emplace_back(absl::StrCat("sparse_v.", t), v.to(at::kCPU));
      const std::string rk = absl::StrCat("sparse_k.", t);
      if (io.count(rk)) {
        sparse_worst = std::max(
            {sparse_worst, Compare(k, io.at(rk))["max_abs_diff"].get<double>(),
             Compare(v, io.at(absl::StrCat("sparse_v.", t)))["max_abs_diff"]
                 .get<double>()});
      }
    }
    out["sparse_tokens"] = pos.size();
    if (io.count("sparse_k." + std::to_string(layers[0]))) {
      out["sparse_max_abs_diff"] = sparse_worst;
    }
  }
  if (!absl::GetFlag(FLAGS_write_io).empty()) {
    RETURN_IF_ERROR(
        WriteTorchStateDict(absl::GetFlag(FLAGS_write_io), written));
  }

  // Timing: fuse every receiver layer in place into a "cache", one layer at
  // a time or all in one batched call (C2CFuser::FuseLayers).
  using Cache = std::map<int, std::pair<at::Tensor, at::Tensor>>;
  using FuseAllFn = std::function<absl::Status(const Cache& cache)>;
  using FuseFn = std::function<absl::Status(
      int t, const at::Tensor& sk, const at::Tensor& sv, const at::Tensor& rk,
      const at::Tensor& rv)>;
  using FuseLayersFn =
      std::function<absl::Status(absl::Span<const LayerFusionInput>)>;
  auto one_by_one = [&](FuseFn fuse) -> FuseAllFn {
    return [&, fuse](const Cache& cache) -> absl::Status {
      for (int t : layers) {
        const int s = *fuser->SharerLayerFor(t);
        RETURN_IF_ERROR(fuse(t, in("sharer", "k", s), in("sharer", "v", s),
                             cache.at(t).first, cache.at(t).second));
      }
      return absl::OkStatus();
    };
  };
  auto all_at_once = [&](FuseLayersFn fuse) -> FuseAllFn {
    return [&, fuse](const Cache& cache) -> absl::Status {
      std::vector<LayerFusionInput> inputs;
      for (int t : layers) {
        const int s = *fuser->SharerLayerFor(t);
        LayerFusionInput input;
        input.receiver_layer = t;
        input.sharer_keys = in("sharer", "k", s);
        input.sharer_values = in("sharer", "v", s);
        input.receiver_keys = cache.at(t).first;
        input.receiver_values = cache.at(t).second;
        inputs.push_back(std::move(input));
      }
      return fuse(inputs);
    };
  };
  // The eager per-layer result of the last timed run: what the other paths
  // are compared with.
  Cache eager_result;
  Json summary = Json::array();
  auto time_fusion = [&](const std::string& path, const FuseAllFn& fuse,
                         Json* timing) -> absl::Status {
    const int runs = absl::GetFlag(FLAGS_runs);
    Cache cache;
    for (int t : layers) {
      cache[t] = {in("receiver", "k", t).clone(),
                  in("receiver", "v", t).clone()};
    }
    std::vector<double> ms;
    const int warmup = absl::GetFlag(FLAGS_warmup);
    for (int r = 0; r < warmup + runs; ++r) {
      for (int t : layers) {
        cache[t].first.copy_(in("receiver", "k", t));
        cache[t].second.copy_(in("receiver", "v", t));
      }
      Sync(device);
      auto a = Clock::now();
      RETURN_IF_ERROR(fuse(cache));
      Sync(device);
      if (r >= warmup) {
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - a)
                         .count());
      }
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    (*timing)["runs"] = runs;
    (*timing)["warmup"] = warmup;
    (*timing)["fuse_all_layers_median_ms"] = sorted[sorted.size() / 2];
    (*timing)["fuse_all_layers_min_ms"] = sorted.front();
    (*timing)["fuse_all_layers_max_ms"] = sorted.back();
    (*timing)["layers"] = layers.size();
    Json row;
    row["path"] = path;
    row["median_ms"] = sorted[sorted.size() / 2];
    if (eager_result.empty()) {
      eager_result = cache;
    } else {
      double diff = 0;
      for (int t : layers) {
        diff = std::max(
            {diff,
             Compare(cache[t].first, eager_result[t].first)["max_abs_diff"]
                 .get<double>(),
             Compare(cache[t].second, eager_result[t].second)["max_abs_diff"]
                 .get<double>()});
      }
      (*timing)["max_abs_diff_vs_eager_per_layer"] = diff;
      row["max_abs_diff_vs_eager_per_layer"] = diff;
    }
    summary.push_back(row);
    // The in-place result of the last run against the reference.
    double worst = 0;
    bool exact = true, checked = false;
    for (int t : layers) {
      const std::string rk = absl::StrCat("fused_k.", t);
      if (!io.count(rk)) continue;
      checked = true;
      const at::Tensor ref_k = io.at(rk);
      const at::Tensor ref_v = io.at(absl::StrCat("fused_v.", t));
      worst = std::max(
          {worst, Compare(cache[t].first, ref_k)["max_abs_diff"].get<double>(),
           Compare(cache[t].second, ref_v)["max_abs_diff"].get<double>()});
      exact = exact &&
              at::equal(cache[t].first.cpu(),
                        ref_k.to(cache[t].first.scalar_type())) &&
              at::equal(cache[t].second.cpu(),
                        ref_v.to(cache[t].second.scalar_type()));
    }
    if (checked) {
      (*timing)["inplace_max_abs_diff"] = worst;
      (*timing)["inplace_bit_exact"] = exact;
    }
    return absl::OkStatus();
  };
  if (absl::GetFlag(FLAGS_runs) > 0) {
    Json timing;
    RETURN_IF_ERROR(time_fusion(
        "eager per-layer",
        one_by_one([&](int t, const at::Tensor& sk, const at::Tensor& sv,
                       const at::Tensor& rk, const at::Tensor& rv) {
          return fuser->FuseLayer(t, sk, sv, rk, rv);
        }),
        &timing));
    out["timing"] = timing;
    Json batched;
    batched["stacks"] = fuser->num_stacks();
    RETURN_IF_ERROR(
        time_fusion("eager batched",
                    all_at_once([&](absl::Span<const LayerFusionInput> inputs) {
                      return fuser->FuseLayers(inputs);
                    }),
                    &batched));
    out["batched"] = batched;
  }
#ifdef KVWIRE_FUSER_GRAPHS
  if (absl::GetFlag(FLAGS_runs) > 0 && device.is_cuda()) {
    CudaGraphFuser graphs(fuser.get());
    const int first = layers[0];
    const int64_t tokens = in("receiver", "k", first).size(-2);
    const at::ScalarType receiver_dtype =
        in("receiver", "k", first).scalar_type();
    Sync(device);
    auto c0 = Clock::now();
    absl::Status prepared = graphs.Prepare(
        tokens, in("sharer", "k", *fuser->SharerLayerFor(first)).scalar_type(),
        receiver_dtype);
    Sync(device);
    Json g;
    g["token_bucket"] = graphs.TokenBucket(tokens);
    g["capture_seconds"] =
        std::chrono::duration<double>(Clock::now() - c0).count();
    if (!prepared.ok()) {
      g["error"] = prepared.ToString();
    } else {
      absl::Status timed = time_fusion(
          "cuda graphs per-layer",
          one_by_one([&](int t, const at::Tensor& sk, const at::Tensor& sv,
                         const at::Tensor& rk, const at::Tensor& rv) {
            return graphs.FuseLayer(t, sk, sv, rk, rv);
          }),
          &g);
      if (!timed.ok()) g["error"] = timed.ToString();
      g["replays"] = graphs.replays();
    }
    out["cuda_graphs"] = g;

    Json b;
    const int64_t replays_before = graphs.replays();
    Sync(device);
    c0 = Clock::now();
    prepared = graphs.PrepareBatched(tokens, receiver_dtype);
    Sync(device);
    b["token_bucket"] = graphs.TokenBucket(tokens);
    b["capture_seconds"] =
        std::chrono::duration<double>(Clock::now() - c0).count();
    if (!prepared.ok()) {
      b["error"] = prepared.ToString();
    } else {
      absl::Status timed = time_fusion(
          "cuda graphs batched",
          all_at_once([&](absl::Span<const LayerFusionInput> inputs) {
            return graphs.FuseLayers(inputs);
          }),
          &b);
      if (!timed.ok()) b["error"] = timed.ToString();
      b["replays"] = graphs.replays() - replays_before;
    }
    out["cuda_graphs_batched"] = b;
  }
#endif
  if (!summary.empty()) out["summary"] = summary;
  std::cout << out.dump(2) << "\n";
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvwire

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Checks and times C2C fusion of every receiver layer (per layer and "
      "batched; with CUDA graphs in kvwire-fuser-graph-bench).");
  kvwire::HelpListsFlagsOf({"tools/fuser/bench_main.cc"});
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = kvwire::Guarded("fusion bench", kvwire::Run);
  if (!status.ok()) {
    std::cerr << "kvwire-fuser-bench: " << status << "\n";
    return 1;
  }
  return 0;
}
