// CUDA-graph replay of fusion (per layer and batched, token buckets)
// against the eager path (CUDA builds only; the tests skip without a GPU).
#include "common/fuser/cuda_graph_fuser.h"

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randn_like.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace kvwire {
namespace {

std::unique_ptr<C2CFuser> MakeFuser(at::ScalarType dtype) {
  RandomFuserOptions o;
  o.args.source_dim = 16;
  o.args.source_num_heads = 2;
  o.args.target_dim = 32;
  o.args.target_num_heads = 4;
  o.args.hidden_dim = 64;
  o.args.intermediate_dim = 96;
  o.receiver_layers = 5;
  o.sharer_layers = 3;
  o.open_gate_fraction = 0.8;
  o.seed = 21;
  auto ckpt = MakeRandomFuserCheckpoint(o);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  FuserOptions fo;
  fo.projector.dtype = dtype;
  fo.projector.device = c10::Device("cuda");
  auto fuser = C2CFuser::FromCheckpoint(*ckpt, fo);
  EXPECT_TRUE(fuser.ok()) << fuser.status();
  return std::move(*fuser);
}

// Batched (bmm) against per-layer (mm) fusion: fp32 noise, or in bf16 a
// couple of units in the last place of the largest output value (GEMMs of
// different shapes round differently).
double BatchedTolerance(at::ScalarType dtype, const at::Tensor& reference) {
  if (dtype == at::kFloat) return 1e-5;
  const double largest = reference.abs().max().item<double>();
  return 2e-2 * std::max(1.0, largest);
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>();
}

class CudaGraphFuserTest : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaGraphFuserTest, ReplayMatchesEager) {
  const at::ScalarType dtype = GetParam();
  auto fuser = MakeFuser(dtype);
  CudaGraphFuser graphs(fuser.get());
  const int64_t n = 13, total = 20;
  ASSERT_TRUE(graphs.Prepare(n, dtype, dtype).ok());
  EXPECT_TRUE(graphs.prepared(n));
  auto cuda = at::TensorOptions().device("cuda").dtype(dtype);
  for (int t : fuser->FusedReceiverLayers()) {
    SCOPED_TRACE(t);
    at::Tensor sk = at::randn({2, n, 16}, cuda),
               sv = at::randn({2, n, 16}, cuda);
    at::Tensor rk = at::randn({4, total, 32}, cuda);
    at::Tensor rv = at::randn({4, total, 32}, cuda);
    at::Tensor ek = rk.clone(), ev = rv.clone(), gk = rk.clone(),
               gv = rv.clone();
    ASSERT_TRUE(fuser->FuseLayer(t, sk, sv, ek, ev, 4).ok());
    ASSERT_TRUE(graphs.FuseLayer(t, sk, sv, gk, gv, 4).ok());
    const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
    EXPECT_LE(MaxDiff(gk, ek), tol);
    EXPECT_LE(MaxDiff(gv, ev), tol);
    // Batch-1 layout and sparse positions.
    std::vector<uint32_t> pos;
    for (int64_t i = 0; i < n; ++i)
      pos.push_back(static_cast<uint32_t>(19 - i));
    at::Tensor sk4 = sk.unsqueeze(0), sv4 = sv.unsqueeze(0);
    ek = rk.clone().unsqueeze(0);
    ev = rv.clone().unsqueeze(0);
    gk = rk.clone().unsqueeze(0);
    gv = rv.clone().unsqueeze(0);
    ASSERT_TRUE(fuser->FuseLayerTokens(t, sk4, sv4, pos, ek, ev).ok());
    ASSERT_TRUE(graphs.FuseLayerTokens(t, sk4, sv4, pos, gk, gv).ok());
    EXPECT_LE(MaxDiff(gk, ek), tol);
    EXPECT_LE(MaxDiff(gv, ev), tol);
  }
  EXPECT_EQ(graphs.replays(),
            2 * static_cast<int64_t>(fuser->FusedReceiverLayers().size()));
  // A token count of an uncaptured bucket (48, not 16) runs eagerly.
  at::Tensor sk = at::randn({2, 40, 16}, cuda),
             sv = at::randn({2, 40, 16}, cuda);
  at::Tensor rk = at::randn({4, 40, 32}, cuda),
             rv = at::randn({4, 40, 32}, cuda);
  const int64_t before = graphs.replays();
  ASSERT_TRUE(graphs.FuseLayer(0, sk, sv, rk, rv).ok());
  EXPECT_EQ(graphs.replays(), before);
  // Errors still surface (through the eager path).
  EXPECT_FALSE(graphs.FuseLayer(0, rk, rv, rk, rv).ok());
}

TEST_P(CudaGraphFuserTest, InstalledGraphsServeFusionSessionsAndCaptureOnUse) {
  const at::ScalarType dtype = GetParam();
  auto eager = MakeFuser(dtype);
  auto fast = MakeFuser(dtype);  // Same seed: the same projectors.
  std::shared_ptr<CudaGraphFuser> graphs = InstallCudaGraphFuser(*fast);
  ASSERT_NE(graphs, nullptr);
  EXPECT_EQ(fast->accelerator(), graphs.get());
  const int64_t n = 11;
  EXPECT_FALSE(graphs->prepared(n));
  auto cuda = at::TensorOptions().device("cuda").dtype(dtype);
  const at::Tensor rk = at::randn({5, 4, n, 32}, cuda);
  const at::Tensor rv = at::randn({5, 4, n, 32}, cuda);
  at::Tensor ek = rk.clone(), ev = rv.clone(), gk = rk.clone(), gv = rv.clone();
  auto cache = [](at::Tensor k, at::Tensor v) {
    return [k, v](int t) -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
      return std::make_pair(k.select(0, t), v.select(0, t));
    };
  };
  FusionSession eager_session(eager.get(), cache(ek, ev));
  FusionSession fast_session(fast.get(), cache(gk, gv));
  std::vector<uint32_t> positions;
  for (uint32_t i = 0; i < n; ++i) positions.push_back(i);
  for (int s = 0; s < 3; ++s) {
    const at::Tensor sk = at::randn({2, n, 16}, cuda);
    const at::Tensor sv = at::randn({2, n, 16}, cuda);
    ASSERT_TRUE(eager_session.AddSharerLayer(s, positions, sk, sv).ok());
    ASSERT_TRUE(fast_session.AddSharerLayer(s, positions, sk, sv).ok());
  }
  EXPECT_TRUE(graphs->prepared(n));  // Captured on first use.
  EXPECT_EQ(graphs->replays(),
            static_cast<int64_t>(fast->FusedReceiverLayers().size()));
  const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
  EXPECT_LE(MaxDiff(gk, ek), tol);
  EXPECT_LE(MaxDiff(gv, ev), tol);
}

TEST_P(CudaGraphFuserTest, TokenCountsOfOneBucketShareGraphs) {
  const at::ScalarType dtype = GetParam();
  auto fuser = MakeFuser(dtype);
  CudaGraphFuser graphs(fuser.get());
  EXPECT_EQ(graphs.TokenBucket(0), 0);
  EXPECT_EQ(graphs.TokenBucket(1), 16);
  EXPECT_EQ(graphs.TokenBucket(16), 16);
  EXPECT_EQ(graphs.TokenBucket(17), 32);
  EXPECT_EQ(graphs.TokenBucket(512), 512);
  EXPECT_EQ(graphs.TokenBucket(513), 0);  // Eager beyond max_tokens.
  EXPECT_FALSE(graphs.Prepare(513, dtype, dtype).ok());
  ASSERT_TRUE(graphs.Prepare(13, dtype, dtype).ok());
  const int64_t layers = fuser->FusedReceiverLayers().size();
  EXPECT_EQ(graphs.captures(), layers);
  EXPECT_TRUE(graphs.prepared(1));
  EXPECT_TRUE(graphs.prepared(16));
  EXPECT_FALSE(graphs.prepared(17));
  auto cuda = at::TensorOptions().device("cuda").dtype(dtype);
  const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
  int64_t replays = 0;
  for (int64_t n : {13, 11, 16, 1}) {
    SCOPED_TRACE(n);
    at::Tensor sk = at::randn({2, n, 16}, cuda),
               sv = at::randn({2, n, 16}, cuda);
    at::Tensor rk = at::randn({4, 20, 32}, cuda);
    at::Tensor rv = at::randn({4, 20, 32}, cuda);
    at::Tensor ek = rk.clone(), ev = rv.clone(), gk = rk.clone(),
               gv = rv.clone();
    ASSERT_TRUE(fuser->FuseLayer(1, sk, sv, ek, ev, 2).ok());
    ASSERT_TRUE(graphs.FuseLayer(1, sk, sv, gk, gv, 2).ok());
    EXPECT_EQ(graphs.replays(), ++replays);
    EXPECT_LE(MaxDiff(gk, ek), tol);
    EXPECT_LE(MaxDiff(gv, ev), tol);
    // Rows past the n real ones are untouched (padding is not written).
    EXPECT_EQ(MaxDiff(gk.narrow(1, 2 + n, 18 - n), rk.narrow(1, 2 + n, 18 - n)),
              0);
  }
  EXPECT_EQ(graphs.captures(), layers);  // No capture per new count.
  // Auto-prepare captures a new bucket once, then replays it.
  graphs.set_auto_prepare(1);
  for (int64_t n : {20, 30}) {
    at::Tensor sk = at::randn({2, n, 16}, cuda),
               sv = at::randn({2, n, 16}, cuda);
    at::Tensor rk = at::randn({4, n, 32}, cuda),
               rv = at::randn({4, n, 32}, cuda);
    ASSERT_TRUE(graphs.FuseLayer(0, sk, sv, rk, rv).ok());
  }
  EXPECT_EQ(graphs.captures(), 2 * layers);
  EXPECT_EQ(graphs.replays(), replays + 2);
}

// The inputs of a FuseLayers call over every fused layer: sharer [2, n, 16]
// per sharer layer, receiver views of `k` / `v` ([layers, 4, T, 32]).
std::vector<LayerFusionInput> AllLayers(
    const C2CFuser& fuser, const std::vector<at::Tensor>& sk,
    const std::vector<at::Tensor>& sv, const at::Tensor& k, const at::Tensor& v,
    int64_t start, std::optional<absl::Span<const uint32_t>> positions) {
  std::vector<LayerFusionInput> inputs;
  for (int t : fuser.FusedReceiverLayers()) {
    const int s = *fuser.SharerLayerFor(t);
    LayerFusionInput in;
    in.receiver_layer = t;
    in.sharer_keys = sk[s];
    in.sharer_values = sv[s];
    in.receiver_keys = k.select(0, t);
    in.receiver_values = v.select(0, t);
    in.start = start;
    in.positions = positions;
    inputs.push_back(std::move(in));
  }
  return inputs;
}

TEST_P(CudaGraphFuserTest, BatchedGraphsMatchEagerPerLayer) {
  const at::ScalarType dtype = GetParam();
  auto fuser = MakeFuser(dtype);
  CudaGraphFuser graphs(fuser.get());
  const int64_t total = 30;  // Room for 13 positions 2 apart.
  ASSERT_TRUE(graphs.PrepareBatched(13, dtype).ok());
  EXPECT_TRUE(graphs.prepared_batched(16));
  EXPECT_FALSE(graphs.prepared_batched(17));
  EXPECT_FALSE(graphs.prepared(13));  // No per-layer graphs.
  const int64_t captured = graphs.captures();
  EXPECT_GE(captured, 1);
  auto cuda = at::TensorOptions().device("cuda").dtype(dtype);
  int64_t replays = 0;
  // Two token counts of one bucket, dense and sparse (one selection for
  // every layer, non-contiguous).
  for (int64_t n : {13, 9}) {
    for (bool sparse : {false, true}) {
      SCOPED_TRACE(testing::Message() << "n " << n << " sparse " << sparse);
      std::vector<at::Tensor> sk, sv;
      for (int s = 0; s < 3; ++s) {
        sk.push_back(at::randn({2, n, 16}, cuda));
        sv.push_back(at::randn({2, n, 16}, cuda));
      }
      std::vector<uint32_t> pos;
      for (int64_t i = 0; i < n; ++i) {
        pos.push_back(static_cast<uint32_t>(total - 1 - 2 * i));
      }
      std::optional<absl::Span<const uint32_t>> positions;
      if (sparse) positions = absl::MakeConstSpan(pos);
      const at::Tensor rk = at::randn({5, 4, total, 32}, cuda);
      const at::Tensor rv = at::randn({5, 4, total, 32}, cuda);
      at::Tensor ek = rk.clone(), ev = rv.clone(), gk = rk.clone(),
                 gv = rv.clone();
      for (const LayerFusionInput& in :
           AllLayers(*fuser, sk, sv, ek, ev, 3, positions)) {
        ASSERT_TRUE(
            (sparse ? fuser->FuseLayerTokens(
                          in.receiver_layer, in.sharer_keys, in.sharer_values,
                          pos, in.receiver_keys, in.receiver_values)
                    : fuser->FuseLayer(in.receiver_layer, in.sharer_keys,
                                       in.sharer_values, in.receiver_keys,
                                       in.receiver_values, 3))
                .ok());
      }
      const std::vector<LayerFusionInput> inputs =
          AllLayers(*fuser, sk, sv, gk, gv, 3, positions);
      auto plan = fuser->PlanFusion(inputs);
      ASSERT_TRUE(plan.ok()) << plan.status();
      ASSERT_TRUE(graphs.FuseLayers(inputs).ok());
      replays += plan->runs.size();
      EXPECT_EQ(graphs.replays(), replays);
      EXPECT_LE(MaxDiff(gk, ek), BatchedTolerance(dtype, ek));
      EXPECT_LE(MaxDiff(gv, ev), BatchedTolerance(dtype, ev));
    }
  }
  EXPECT_EQ(graphs.captures(), captured);  // One bucket, no new capture.
}

TEST_P(CudaGraphFuserTest, BatchedCallsTheGraphsCannotTakeRunEagerly) {
  const at::ScalarType dtype = GetParam();
  auto fuser = MakeFuser(dtype);
  CudaGraphFuser::Options options;
  options.max_tokens = 32;
  CudaGraphFuser graphs(fuser.get(), options);
  graphs.set_auto_prepare(0, 0);
  auto cuda = at::TensorOptions().device("cuda").dtype(dtype);
  const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
  for (int64_t n : {40, 5}) {  // Above max_tokens; no graph, no budget.
    SCOPED_TRACE(n);
    std::vector<at::Tensor> sk, sv;
    for (int s = 0; s < 3; ++s) {
      sk.push_back(at::randn({2, n, 16}, cuda));
      sv.push_back(at::randn({2, n, 16}, cuda));
    }
    const at::Tensor rk = at::randn({5, 4, n, 32}, cuda);
    const at::Tensor rv = at::randn({5, 4, n, 32}, cuda);
    at::Tensor ek = rk.clone(), ev = rv.clone(), gk = rk.clone(),
               gv = rv.clone();
    ASSERT_TRUE(
        fuser->FuseLayers(AllLayers(*fuser, sk, sv, ek, ev, 0, std::nullopt))
            .ok());
    ASSERT_TRUE(
        graphs.FuseLayers(AllLayers(*fuser, sk, sv, gk, gv, 0, std::nullopt))
            .ok());
    EXPECT_EQ(MaxDiff(gk, ek), 0);  // The same eager computation.
    EXPECT_EQ(MaxDiff(gv, ev), 0);
  }
  EXPECT_EQ(graphs.replays(), 0);
  EXPECT_EQ(graphs.captures(), 0);
  // A receiver cache on the host: the graph path copies through.
  ASSERT_TRUE(graphs.PrepareBatched(6, dtype).ok());
  std::vector<at::Tensor> sk, sv;
  for (int s = 0; s < 3; ++s) {
    sk.push_back(at::randn({2, 6, 16}, cuda));
    sv.push_back(at::randn({2, 6, 16}, cuda));
  }
  const at::Tensor host_k = at::randn({5, 4, 6, 32}).to(dtype);
  const at::Tensor host_v = at::randn({5, 4, 6, 32}).to(dtype);
  at::Tensor ek = host_k.clone(), ev = host_v.clone(), gk = host_k.clone(),
             gv = host_v.clone();
  ASSERT_TRUE(
      fuser->FuseLayers(AllLayers(*fuser, sk, sv, ek, ev, 0, std::nullopt))
          .ok());
  ASSERT_TRUE(
      graphs.FuseLayers(AllLayers(*fuser, sk, sv, gk, gv, 0, std::nullopt))
          .ok());
  EXPECT_GT(graphs.replays(), 0);
  EXPECT_LE(MaxDiff(gk, ek), tol);
  EXPECT_LE(MaxDiff(gv, ev), tol);
  // A batch of two goes through the per-layer path.
  const at::Tensor bsk = at::randn({2, 2, 6, 16}, cuda);
  const at::Tensor bsv = at::randn({2, 2, 6, 16}, cuda);
  at::Tensor bk = at::randn({2, 4, 6, 32}, cuda), bv = at::randn_like(bk);
  at::Tensor bek = bk.clone(), bev = bv.clone();
  LayerFusionInput batch;
  batch.receiver_layer = 2;
  batch.sharer_keys = bsk;
  batch.sharer_values = bsv;
  batch.receiver_keys = bk;
  batch.receiver_values = bv;
  ASSERT_TRUE(graphs.FuseLayers({batch}).ok());
  ASSERT_TRUE(fuser->FuseLayer(2, bsk, bsv, bek, bev).ok());
  EXPECT_EQ(MaxDiff(bk, bek), 0);
  EXPECT_EQ(MaxDiff(bv, bev), 0);
  // Errors are the eager path's, and nothing is written.
  std::vector<LayerFusionInput> bad =
      AllLayers(*fuser, sk, sv, gk, gv, 0, std::nullopt);
  bad.back().sharer_keys = at::randn({3, 6, 16}, cuda);
  const at::Tensor before = gk.clone();
  const absl::Status st = graphs.FuseLayers(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(MaxDiff(gk, before), 0);
}

TEST_P(CudaGraphFuserTest, InstalledGraphsServeBatchedSessions) {
  const at::ScalarType dtype = GetParam();
  auto eager = MakeFuser(dtype);
  auto fast = MakeFuser(dtype);
  std::shared_ptr<CudaGraphFuser> graphs = InstallCudaGraphFuser(*fast);
  ASSERT_NE(graphs, nullptr);
  auto cuda = at::TensorOptions().device("cuda").dtype(dtype);
  int64_t captures = 0;
  for (int64_t n : {11, 14}) {  // One bucket: the second call replays.
    SCOPED_TRACE(n);
    const at::Tensor rk = at::randn({5, 4, n, 32}, cuda);
    const at::Tensor rv = at::randn({5, 4, n, 32}, cuda);
    at::Tensor ek = rk.clone(), ev = rv.clone(), gk = rk.clone(),
               gv = rv.clone();
    auto cache = [](at::Tensor k, at::Tensor v) {
      return
          [k, v](int t) -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
            return std::make_pair(k.select(0, t), v.select(0, t));
          };
    };
    FusionSession eager_session(eager.get(), cache(ek, ev));
    FusionSession fast_session(fast.get(), cache(gk, gv));
    std::vector<uint32_t> positions;
    for (uint32_t i = 0; i < n; ++i) positions.push_back(n - 1 - i);
    std::vector<FusionSession::SharerLayerInput> layers;
    for (int s = 0; s < 3; ++s) {
      FusionSession::SharerLayerInput in;
      in.sharer_layer = s;
      in.keys = at::randn({2, n, 16}, cuda);
      in.values = at::randn({2, n, 16}, cuda);
      in.positions = absl::MakeConstSpan(positions);
      ASSERT_TRUE(
          eager_session.AddSharerLayer(s, positions, in.keys, in.values).ok());
      layers.push_back(std::move(in));
    }
    auto done = fast_session.AddSharerLayers(layers);
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->size(), fast->FusedReceiverLayers().size());
    EXPECT_TRUE(graphs->prepared_batched(n));  // Captured on first use.
    EXPECT_FALSE(graphs->prepared(n));         // No per-layer graphs.
    if (captures == 0) captures = graphs->captures();
    EXPECT_EQ(graphs->captures(), captures);
    EXPECT_LE(MaxDiff(gk, ek), BatchedTolerance(dtype, ek));
    EXPECT_LE(MaxDiff(gv, ev), BatchedTolerance(dtype, ev));
  }
  EXPECT_EQ(graphs->replays(), 2 * captures);
}

TEST_P(CudaGraphFuserTest, EnvironmentTurnsGraphsOff) {
  auto fuser = MakeFuser(GetParam());
  setenv("KVWIRE_CUDA_GRAPH_FUSE", "0", /*overwrite=*/1);
  EXPECT_EQ(InstallCudaGraphFuser(*fuser), nullptr);
  unsetenv("KVWIRE_CUDA_GRAPH_FUSE");
  EXPECT_EQ(fuser->accelerator(), nullptr);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGraphFuserTest,
                         ::testing::Values(at::kFloat, at::kBFloat16));

}  // namespace
}  // namespace kvwire
