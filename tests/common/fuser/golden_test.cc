// Parity with an independent PyTorch implementation of C2C's projector.
// tools/gen_fuser_goldens.py --tiny (run on the GPU host, torch 2.11) built
// random projectors from the spec's formula, saved them with
// torch.save(state_dict()) in the released layout under tests/data/fuser/
// and recorded inputs and fused K/V. The C++ loader reads those files and
// the C++ projector must reproduce the outputs:
//   fp32 checkpoint: |ours - ref| <= kFp32Abs + kFp32Rel * |ref|;
//   bf16 checkpoint: |ours - ref| <= kBf16Abs + kBf16Rel * |ref| (bf16
//     rounds every layer's output; CPU kernels of different LibTorch
//     versions may round differently);
//   closed gates and positions outside a sparse fuse: bit-identical to the
//   receiver's own KV.
// KVWIRE_TEST_DEVICE=cuda runs the projectors on the GPU.
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/equal.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fuser/fuser.h"
#include "common/fuser/torch_pickle.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

constexpr double kFp32Abs = 2e-5;
constexpr double kFp32Rel = 2e-5;
constexpr double kBf16Abs = 3e-2;
constexpr double kBf16Rel = 2e-2;

std::string DataDir() {
  const char* env = std::getenv("KVWIRE_SOURCE_DIR");
  const std::string root = env != nullptr ? env : KVWIRE_SOURCE_DIR_DEFAULT;
  return root + "/tests/data/fuser";
}

c10::Device TestDevice() {
  const char* env = std::getenv("KVWIRE_TEST_DEVICE");
  return c10::Device(env != nullptr ? env : "cpu");
}

// Max over elements of |a - b| - (abs + rel * |b|); <= 0 passes.
double Excess(const at::Tensor& ours, const at::Tensor& ref, double abs,
              double rel) {
  const at::Tensor a = ours.to(at::kCPU).to(at::kFloat);
  const at::Tensor b = ref.to(at::kCPU).to(at::kFloat);
  return ((a - b).abs() - (b.abs() * rel + abs)).max().item<double>();
}

double MaxDiff(const at::Tensor& ours, const at::Tensor& ref) {
  return (ours.to(at::kCPU).to(at::kFloat) - ref.to(at::kCPU).to(at::kFloat))
      .abs()
      .max()
      .item<double>();
}

class FuserGoldenTest : public ::testing::Test {
 protected:
  void Load(const std::string& name, at::ScalarType dtype) {
    FuserOptions o;
    o.projector.dtype = dtype;
    o.projector.device = TestDevice();
    o.strict = true;
    auto fuser = C2CFuser::Load(DataDir() + "/" + name, o);
    ASSERT_TRUE(fuser.ok())
        << fuser.status() << " (run tools/gen_fuser_goldens.py --tiny)";
    fuser_ = std::move(*fuser);
    auto io = ReadTorchStateDict(DataDir() + "/" + name + "_io.pt");
    ASSERT_TRUE(io.ok()) << io.status();
    for (auto& [n, t] : *io) io_[n] = t;
  }
  at::Tensor In(const std::string& name) const {
    return io_.at(name).to(TestDevice());
  }
  at::Tensor Ref(const std::string& name) const { return io_.at(name); }

  std::unique_ptr<C2CFuser> fuser_;
  std::map<std::string, at::Tensor> io_;
};

TEST_F(FuserGoldenTest, Fp32DenseSparseAndBatched) {
  ASSERT_NO_FATAL_FAILURE(Load("tiny_fp32", at::kFloat));
  ASSERT_EQ(fuser_->num_projectors(), 4);
  EXPECT_THAT(fuser_->SharerLayersNeeded(), ::testing::ElementsAre(0, 1, 2));
  // Gates as generated: projector 2's value gate and 3's key gate are shut.
  EXPECT_FALSE(fuser_->projector(2).value_gate_open());
  EXPECT_FALSE(fuser_->projector(3).key_gate_open());
  EXPECT_TRUE(fuser_->projector(3).value_gate_open());

  for (int t = 0; t < 4; ++t) {
    SCOPED_TRACE(t);
    const int s = *fuser_->SharerLayerFor(t);
    const std::string st = std::to_string(t), ss = std::to_string(s);
    auto out = fuser_->ProjectorFor(t)->Forward(
        In("sharer_k." + ss), In("sharer_v." + ss), In("receiver_k." + st),
        In("receiver_v." + st));
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_LE(Excess(out->first, Ref("fused_k." + st), kFp32Abs, kFp32Rel), 0)
        << MaxDiff(out->first, Ref("fused_k." + st));
    EXPECT_LE(Excess(out->second, Ref("fused_v." + st), kFp32Abs, kFp32Rel), 0)
        << MaxDiff(out->second, Ref("fused_v." + st));
  }
  EXPECT_TRUE(at::equal(Ref("fused_v.2"), Ref("receiver_v.2")));
  EXPECT_TRUE(at::equal(Ref("fused_k.3"), Ref("receiver_k.3")));

  // In place through a session, and sparse over `positions`.
  const at::Tensor positions = Ref("positions");
  std::vector<uint32_t> pos;
  for (int64_t i = 0; i < positions.numel(); ++i) {
    pos.push_back(static_cast<uint32_t>(positions[i].item<int64_t>()));
  }
  std::vector<at::Tensor> dense_k, dense_v, sparse_k, sparse_v;
  for (int t = 0; t < 4; ++t) {
    const std::string st = std::to_string(t);
    dense_k.push_back(In("receiver_k." + st).clone());
    dense_v.push_back(In("receiver_v." + st).clone());
    sparse_k.push_back(In("receiver_k." + st).clone());
    sparse_v.push_back(In("receiver_v." + st).clone());
  }
  FusionSession dense(fuser_.get(), [&](int t) {
    return absl::StatusOr<std::pair<at::Tensor, at::Tensor>>(
        std::make_pair(dense_k[t], dense_v[t]));
  });
  FusionSession sparse(fuser_.get(), [&](int t) {
    return absl::StatusOr<std::pair<at::Tensor, at::Tensor>>(
        std::make_pair(sparse_k[t], sparse_v[t]));
  });
  const at::Tensor idx = positions.to(TestDevice());
  for (int s : {2, 0, 1}) {  // Any order.
    const std::string ss = std::to_string(s);
    ASSERT_TRUE(dense
                    .AddSharerLayerRange(s, 0, In("sharer_k." + ss),
                                         In("sharer_v." + ss))
                    .ok());
    auto r =
        sparse.AddSharerLayer(s, pos, In("sharer_k." + ss).index_select(2, idx),
                              In("sharer_v." + ss).index_select(2, idx));
    ASSERT_TRUE(r.ok()) << r.status();
  }
  EXPECT_TRUE(dense.done() && sparse.done());
  for (int t = 0; t < 4; ++t) {
    SCOPED_TRACE(t);
    const std::string st = std::to_string(t);
    EXPECT_LE(Excess(dense_k[t], Ref("fused_k." + st), kFp32Abs, kFp32Rel), 0);
    EXPECT_LE(Excess(dense_v[t], Ref("fused_v." + st), kFp32Abs, kFp32Rel), 0);
    EXPECT_LE(Excess(sparse_k[t], Ref("sparse_k." + st), kFp32Abs, kFp32Rel),
              0);
    EXPECT_LE(Excess(sparse_v[t], Ref("sparse_v." + st), kFp32Abs, kFp32Rel),
              0);
    for (int64_t p = 0; p < sparse_k[t].size(2); ++p) {
      if (std::find(pos.begin(), pos.end(), p) != pos.end()) continue;
      EXPECT_TRUE(at::equal(sparse_k[t].select(2, p).cpu(),
                            Ref("receiver_k." + st).select(2, p)));
    }
  }

  // A batch of two sequences through projector 1.
  auto batch = fuser_->projector(1).Forward(In("batch_sk"), In("batch_sv"),
                                            In("batch_rk"), In("batch_rv"));
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_LE(Excess(batch->first, Ref("batch_fused_k"), kFp32Abs, kFp32Rel), 0);
  EXPECT_LE(Excess(batch->second, Ref("batch_fused_v"), kFp32Abs, kFp32Rel), 0);

  // The raw branches (projection P and weight sigmoid(w)) of projector 0.
  auto pw = fuser_->projector(0).ProjectAndWeight(
      In("sharer_k.0"), In("receiver_k.0"), /*value=*/false);
  ASSERT_TRUE(pw.ok());
  EXPECT_LE(Excess(pw->first, Ref("proj_k.0"), kFp32Abs, kFp32Rel), 0);
  EXPECT_LE(Excess(pw->second, Ref("weight_k.0"), kFp32Abs, kFp32Rel), 0);
}

TEST_F(FuserGoldenTest, Bf16WithACustomMap) {
  ASSERT_NO_FATAL_FAILURE(Load("tiny_bf16", at::kBFloat16));
  ASSERT_EQ(fuser_->num_projectors(), 2);
  EXPECT_EQ(fuser_->projector(0).args().num_layers, 4);
  EXPECT_EQ(fuser_->ProjectorFor(1), nullptr);  // Receiver layer 1: unfused.
  EXPECT_EQ(*fuser_->SharerLayerFor(0), 1);
  EXPECT_EQ(*fuser_->SharerLayerFor(2), 0);

  const at::Tensor positions = Ref("positions");
  std::vector<uint32_t> pos;
  for (int64_t i = 0; i < positions.numel(); ++i) {
    pos.push_back(static_cast<uint32_t>(positions[i].item<int64_t>()));
  }
  const at::Tensor idx = positions.to(TestDevice());
  double exact = 0, total = 0, worst = 0;
  for (int t : {0, 2}) {
    SCOPED_TRACE(t);
    const std::string st = std::to_string(t);
    const std::string ss = std::to_string(*fuser_->SharerLayerFor(t));
    at::Tensor k = In("receiver_k." + st).clone();
    at::Tensor v = In("receiver_v." + st).clone();
    ASSERT_TRUE(
        fuser_->FuseLayer(t, In("sharer_k." + ss), In("sharer_v." + ss), k, v)
            .ok());
    EXPECT_EQ(k.scalar_type(), at::kBFloat16);
    EXPECT_LE(Excess(k, Ref("fused_k." + st), kBf16Abs, kBf16Rel), 0);
    EXPECT_LE(Excess(v, Ref("fused_v." + st), kBf16Abs, kBf16Rel), 0);
    for (const auto& [ours, ref] : {std::make_pair(k, Ref("fused_k." + st)),
                                    std::make_pair(v, Ref("fused_v." + st))}) {
      exact += ours.cpu().eq(ref).sum().item<double>();
      total += static_cast<double>(ref.numel());
      worst = std::max(worst, MaxDiff(ours, ref));
    }
    at::Tensor sk = In("receiver_k." + st).clone();
    at::Tensor sv = In("receiver_v." + st).clone();
    ASSERT_TRUE(fuser_
                    ->FuseLayerTokens(
                        t, In("sharer_k." + ss).index_select(2, idx),
                        In("sharer_v." + ss).index_select(2, idx), pos, sk, sv)
                    .ok());
    EXPECT_LE(Excess(sk, Ref("sparse_k." + st), kBf16Abs, kBf16Rel), 0);
    EXPECT_LE(Excess(sv, Ref("sparse_v." + st), kBf16Abs, kBf16Rel), 0);
  }
  std::cout << "bf16 golden: " << exact << " of " << total
            << " values bit-identical, max |diff| " << worst << "\n";
}

}  // namespace
}  // namespace kvwire
