// CUDA-graph replay of fusion against the eager path (CUDA builds only; the
// tests skip without a GPU).
#include "common/fuser/cuda_graph_fuser.h"

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/randn.h>

#include <memory>
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
  // An uncaptured token count runs eagerly.
  at::Tensor sk = at::randn({2, 3, 16}, cuda), sv = at::randn({2, 3, 16}, cuda);
  at::Tensor rk = at::randn({4, 3, 32}, cuda), rv = at::randn({4, 3, 32}, cuda);
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

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGraphFuserTest,
                         ::testing::Values(at::kFloat, at::kBFloat16));

}  // namespace
}  // namespace kvwire
