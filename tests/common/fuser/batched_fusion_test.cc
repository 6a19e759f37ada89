// Batched fusion (C2CProjectorStack, C2CFuser::FuseLayers,
// FusionSession::AddSharerLayers) against the per-layer path, and fusion
// batched across requests (RequestFusionBatcher) against each request
// alone.
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/stack.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fuser/fuser.h"
#include "common/fuser/request_fusion_batcher.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int kReceiverLayers = 6;
constexpr int64_t kSharerHeads = 2, kSharerDim = 4;
constexpr int64_t kReceiverHeads = 2, kReceiverDim = 8;

RandomFuserOptions Tiny(double open_gate_fraction = 1.0, uint64_t seed = 5) {
  RandomFuserOptions o;
  o.args.source_dim = kSharerDim;
  o.args.source_num_heads = kSharerHeads;
  o.args.target_dim = kReceiverDim;
  o.args.target_num_heads = kReceiverHeads;
  o.args.hidden_dim = 12;
  o.args.intermediate_dim = 20;
  o.receiver_layers = kReceiverLayers;
  o.sharer_layers = 4;
  o.seed = seed;
  o.open_gate_fraction = open_gate_fraction;
  o.dtype = at::kFloat;
  return o;
}

std::unique_ptr<C2CFuser> MakeFuser(const RandomFuserOptions& o,
                                    at::ScalarType dtype = at::kFloat) {
  auto ckpt = MakeRandomFuserCheckpoint(o);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  FuserOptions options;
  options.projector.dtype = dtype;
  auto fuser = C2CFuser::FromCheckpoint(*ckpt, options);
  EXPECT_TRUE(fuser.ok()) << fuser.status();
  return std::move(*fuser);
}

// A receiver "cache": per layer K/V [Ht, T, Dt].
struct Cache {
  std::vector<at::Tensor> k, v;
  Cache Clone() const {
    Cache c;
    for (const auto& t : k) c.k.push_back(t.clone());
    for (const auto& t : v) c.v.push_back(t.clone());
    return c;
  }
};
Cache RandomCache(int64_t tokens, at::ScalarType dtype = at::kFloat) {
  Cache c;
  for (int i = 0; i < kReceiverLayers; ++i) {
    c.k.push_back(at::randn({kReceiverHeads, tokens, kReceiverDim}).to(dtype));
    c.v.push_back(at::randn({kReceiverHeads, tokens, kReceiverDim}).to(dtype));
  }
  return c;
}

struct Sharer {
  at::Tensor k, v;
};
Sharer RandomSharer(int64_t n, at::ScalarType dtype = at::kFloat) {
  return {at::randn({kSharerHeads, n, kSharerDim}).to(dtype),
          at::randn({kSharerHeads, n, kSharerDim}).to(dtype)};
}

// max |a - b| / max(1, max |b|).
double RelDiff(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor fa = a.to(at::kFloat), fb = b.to(at::kFloat);
  const double scale = std::max(1.0, fb.abs().max().item<double>());
  return (fa - fb).abs().max().item<double>() / scale;
}

void ExpectCachesNear(const Cache& got, const Cache& want, double tol) {
  for (size_t t = 0; t < want.k.size(); ++t) {
    EXPECT_LE(RelDiff(got.k[t], want.k[t]), tol) << "keys of layer " << t;
    EXPECT_LE(RelDiff(got.v[t], want.v[t]), tol) << "values of layer " << t;
  }
}

void ExpectCachesEqual(const Cache& got, const Cache& want) {
  for (size_t t = 0; t < want.k.size(); ++t) {
    EXPECT_TRUE(at::equal(got.k[t], want.k[t])) << "keys of layer " << t;
    EXPECT_TRUE(at::equal(got.v[t], want.v[t])) << "values of layer " << t;
  }
}

LayerFusionInput Input(
    int t, const Sharer& s, Cache& cache, int64_t start = 0,
    std::optional<absl::Span<const uint32_t>> positions = std::nullopt) {
  LayerFusionInput in;
  in.receiver_layer = t;
  in.sharer_keys = s.k;
  in.sharer_values = s.v;
  in.receiver_keys = cache.k[t];
  in.receiver_values = cache.v[t];
  in.start = start;
  in.positions = positions;
  return in;
}

// The per-layer reference for `in` (on `cache`, not on in's views).
void FusePerLayer(const C2CFuser& fuser, const LayerFusionInput& in,
                  Cache& cache) {
  const int t = in.receiver_layer;
  const absl::Status s =
      in.positions.has_value()
          ? fuser.FuseLayerTokens(t, in.sharer_keys, in.sharer_values,
                                  *in.positions, cache.k[t], cache.v[t])
          : fuser.FuseLayer(t, in.sharer_keys, in.sharer_values, cache.k[t],
                            cache.v[t], in.start);
  ASSERT_TRUE(s.ok()) << s;
}

class FuseLayersTest : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  // fp32: GEMM accumulation order only. bf16: that, amplified by the
  // roundings of every intermediate.
  double Tolerance() const { return GetParam() == at::kFloat ? 1e-5 : 3e-2; }
};

TEST_P(FuseLayersTest, DenseMatchesPerLayer) {
  const at::ScalarType dtype = GetParam();
  auto fuser = MakeFuser(Tiny(), dtype);
  ASSERT_EQ(fuser->num_stacks(), 1);
  EXPECT_EQ(fuser->stack(0).size(), kReceiverLayers);
  const int64_t n = 5, total = 9, start = 3;
  const Cache original = RandomCache(total, dtype);
  std::vector<Sharer> sharer;
  for (int s = 0; s < 4; ++s) sharer.push_back(RandomSharer(n, dtype));
  Cache expected = original.Clone(), got = original.Clone();
  std::vector<LayerFusionInput> inputs;
  for (int t = 0; t < kReceiverLayers; ++t) {
    inputs.push_back(Input(t, sharer[*fuser->SharerLayerFor(t)], got, start));
    FusePerLayer(*fuser, inputs.back(), expected);
  }
  auto plan = fuser->PlanFusion(inputs);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->runs.size(), 2u);  // One per path, all six layers.
  EXPECT_EQ(plan->runs[0].count(), kReceiverLayers);
  EXPECT_EQ(plan->runs[0].first, 0);
  ASSERT_TRUE(fuser->FuseLayers(inputs).ok());
  ExpectCachesNear(got, expected, Tolerance());
  // Rows outside [start, start + n) are untouched.
  for (int t = 0; t < kReceiverLayers; ++t) {
    EXPECT_TRUE(at::equal(got.k[t].narrow(1, 0, start),
                          original.k[t].narrow(1, 0, start)));
    EXPECT_TRUE(
        at::equal(got.v[t].narrow(1, start + n, total - start - n),
                  original.v[t].narrow(1, start + n, total - start - n)));
  }
}

TEST_P(FuseLayersTest, SparseMatchesPerLayer) {
  const at::ScalarType dtype = GetParam();
  auto fuser = MakeFuser(Tiny(), dtype);
  const int64_t total = 10;
  const Cache original = RandomCache(total, dtype);
  // One selection for every layer (the common case), one per-layer
  // selection, a contiguous one and a dense input, all of 4 tokens.
  const std::vector<uint32_t> shared = {7, 1, 4, 2};
  const std::vector<uint32_t> other = {9, 0, 3, 5};
  const std::vector<uint32_t> contiguous = {5, 6, 7, 8};
  std::vector<Sharer> sharer;
  for (int s = 0; s < 4; ++s) sharer.push_back(RandomSharer(4, dtype));
  Cache expected = original.Clone(), got = original.Clone();
  std::vector<LayerFusionInput> inputs;
  for (int t = 0; t < kReceiverLayers; ++t) {
    const Sharer& s = sharer[*fuser->SharerLayerFor(t)];
    if (t == 1) {
      inputs.push_back(Input(t, s, got, 0, absl::MakeConstSpan(other)));
    } else if (t == 3) {
      inputs.push_back(Input(t, s, got, 0, absl::MakeConstSpan(contiguous)));
    } else if (t == 5) {
      inputs.push_back(Input(t, s, got, 2));
    } else {
      inputs.push_back(Input(t, s, got, 0, absl::MakeConstSpan(shared)));
    }
    FusePerLayer(*fuser, inputs.back(), expected);
  }
  auto plan = fuser->PlanFusion(inputs);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->runs.size(), 2u);  // Positions do not split runs.
  // The shared selection is one index tensor; contiguous ones need none.
  EXPECT_TRUE(plan->index[0].is_same(plan->index[2]));
  EXPECT_FALSE(plan->index[3].defined());
  EXPECT_EQ(plan->start[3], 5);
  ASSERT_TRUE(fuser->FuseLayers(inputs).ok());
  ExpectCachesNear(got, expected, Tolerance());
  // Positions nobody sent keep the receiver's own KV (layer 0: not 0, 3).
  for (int64_t p : {0, 3, 5, 6, 8, 9}) {
    EXPECT_TRUE(at::equal(got.k[0].select(1, p), original.k[0].select(1, p)));
  }
}

TEST_P(FuseLayersTest, ClosedGatesLeaveTheReceiverExactly) {
  const at::ScalarType dtype = GetParam();
  auto fuser = MakeFuser(Tiny(/*open_gate_fraction=*/0.5, /*seed=*/11), dtype);
  int closed = 0;
  for (int t = 0; t < kReceiverLayers; ++t) {
    closed += !fuser->ProjectorFor(t)->key_gate_open();
    closed += !fuser->ProjectorFor(t)->value_gate_open();
  }
  ASSERT_GT(closed, 0) << "the seed should close some gates";
  ASSERT_LT(closed, 2 * kReceiverLayers) << "and leave some open";
  const int64_t n = 6;
  const Cache original = RandomCache(n, dtype);
  std::vector<Sharer> sharer;
  for (int s = 0; s < 4; ++s) sharer.push_back(RandomSharer(n, dtype));
  Cache expected = original.Clone(), got = original.Clone();
  std::vector<LayerFusionInput> inputs;
  for (int t = 0; t < kReceiverLayers; ++t) {
    inputs.push_back(Input(t, sharer[*fuser->SharerLayerFor(t)], got));
    FusePerLayer(*fuser, inputs.back(), expected);
  }
  auto plan = fuser->PlanFusion(inputs);
  ASSERT_TRUE(plan.ok());
  int64_t members = 0;
  for (const FusionRun& run : plan->runs) members += run.count();
  EXPECT_EQ(members, 2 * kReceiverLayers - closed);  // Closed: no run.
  ASSERT_TRUE(fuser->FuseLayers(inputs).ok());
  ExpectCachesNear(got, expected, Tolerance());
  for (int t = 0; t < kReceiverLayers; ++t) {
    const C2CProjector* p = fuser->ProjectorFor(t);
    EXPECT_EQ(at::equal(got.k[t], original.k[t]), !p->key_gate_open()) << t;
    EXPECT_EQ(at::equal(got.v[t], original.v[t]), !p->value_gate_open()) << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, FuseLayersTest,
                         ::testing::Values(at::kFloat, at::kBFloat16),
                         [](const auto& info) {
                           return std::string(
                               info.param == at::kFloat ? "fp32" : "bf16");
                         });

TEST(FuseLayersTest, MixedShapesAndSharedProjectorsSplitIntoRuns) {
  // Projectors 0, 1, 3 have one shape, 2 and 4 a wider hidden layer; the
  // map reads projector 0 from receiver layers 0 and 5.
  C2CProjectorArgs narrow = Tiny().args;
  C2CProjectorArgs wide = narrow;
  wide.hidden_dim = 16;
  std::vector<C2CProjector> projectors;
  ProjectorOptions options;
  options.dtype = at::kFloat;
  for (int i = 0; i < 5; ++i) {
    C2CProjector::RandomOptions r;
    r.seed = 100 + i;
    auto p = C2CProjector::Random(i == 2 || i == 4 ? wide : narrow, r, options);
    ASSERT_TRUE(p.ok()) << p.status();
    projectors.push_back(std::move(*p));
  }
  FuserLayerMap map(kReceiverLayers);
  for (int t = 0; t < 5; ++t) map[t] = FuserLayerMapEntry{t % 4, t};
  map[5] = FuserLayerMapEntry{3, 0};
  auto fuser = C2CFuser::Create(std::move(projectors), map);
  ASSERT_TRUE(fuser.ok()) << fuser.status();
  ASSERT_EQ((*fuser)->num_stacks(), 2);
  EXPECT_EQ((*fuser)->stack(0).size(), 3);
  EXPECT_EQ((*fuser)->stack(1).size(), 2);

  const Cache original = RandomCache(5);
  std::vector<Sharer> sharer;
  for (int s = 0; s < 4; ++s) sharer.push_back(RandomSharer(5));
  Cache expected = original.Clone(), got = original.Clone();
  std::vector<LayerFusionInput> inputs;
  for (int t = 0; t < kReceiverLayers; ++t) {
    inputs.push_back(Input(t, sharer[*(*fuser)->SharerLayerFor(t)], got));
    FusePerLayer(**fuser, inputs.back(), expected);
  }
  auto plan = (*fuser)->PlanFusion(inputs);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // Per path: narrow stack members {0, 1, 2(proj 3)} + {0} again (layer 5),
  // wide stack {0, 1}: three runs.
  EXPECT_EQ(plan->runs.size(), 6u);
  ASSERT_TRUE((*fuser)->FuseLayers(inputs).ok());
  ExpectCachesNear(got, expected, 1e-5);
}

TEST(FuseLayersTest, TokenCountsAndBatchesSplitOrFallBack) {
  auto fuser = MakeFuser(Tiny());
  const Cache original = RandomCache(8);
  Cache expected = original.Clone(), got = original.Clone();
  // Layers 0-2: 3 tokens; 3-4: 5 tokens, as batch-1 tensors; layer 5: a
  // batch of two (fused one by one).
  const Sharer three = RandomSharer(3), five = RandomSharer(5);
  std::vector<LayerFusionInput> inputs;
  for (int t = 0; t < 3; ++t) inputs.push_back(Input(t, three, got, 1));
  for (int t = 3; t < 5; ++t) {
    LayerFusionInput in = Input(t, five, got, 2);
    FusePerLayer(*fuser, in, expected);
    in.sharer_keys = in.sharer_keys.unsqueeze(0);
    in.sharer_values = in.sharer_values.unsqueeze(0);
    in.receiver_keys = in.receiver_keys.unsqueeze(0);
    in.receiver_values = in.receiver_values.unsqueeze(0);
    inputs.push_back(in);
  }
  // Batch of two: the receiver layer's K/V twice, as [2, H, T, D].
  at::Tensor bk = at::stack({original.k[5], original.k[5] * 0.5});
  at::Tensor bv = at::stack({original.v[5], original.v[5] * 0.5});
  at::Tensor ek = bk.clone(), ev = bv.clone();
  const at::Tensor sk = at::randn({2, kSharerHeads, 4, kSharerDim});
  const at::Tensor sv = at::randn({2, kSharerHeads, 4, kSharerDim});
  LayerFusionInput batch;
  batch.receiver_layer = 5;
  batch.sharer_keys = sk;
  batch.sharer_values = sv;
  batch.receiver_keys = bk;
  batch.receiver_values = bv;
  inputs.push_back(batch);
  for (int t = 0; t < 3; ++t) FusePerLayer(*fuser, inputs[t], expected);
  ASSERT_TRUE(fuser->FuseLayer(5, sk, sv, ek, ev).ok());

  auto plan = fuser->PlanFusion(inputs);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->runs.size(), 4u);  // Two token counts x two paths.
  EXPECT_THAT(plan->one_by_one, ElementsAre(5));
  ASSERT_TRUE(fuser->FuseLayers(inputs).ok());
  for (int t = 0; t < 5; ++t) {
    EXPECT_LE(RelDiff(got.k[t], expected.k[t]), 1e-5) << t;
    EXPECT_LE(RelDiff(got.v[t], expected.v[t]), 1e-5) << t;
  }
  EXPECT_TRUE(at::equal(bk, ek));  // The same per-layer path.
  EXPECT_TRUE(at::equal(bv, ev));
}

TEST(FuseLayersTest, ErrorsTouchNoLayer) {
  auto fuser = MakeFuser(Tiny());
  const Cache original = RandomCache(6);
  Cache got = original.Clone();
  const Sharer good = RandomSharer(4);
  auto inputs = [&](int bad_layer, LayerFusionInput bad) {
    std::vector<LayerFusionInput> out;
    for (int t = 0; t < kReceiverLayers; ++t) {
      out.push_back(t == bad_layer ? bad : Input(t, good, got));
    }
    return out;
  };
  // Wrong sharer head count in layer 4: nothing is written, not even the
  // layers before it.
  LayerFusionInput bad = Input(4, good, got);
  bad.sharer_keys = at::randn({3, 4, kSharerDim});
  bad.sharer_values = at::randn({3, 4, kSharerDim});
  absl::Status s = fuser->FuseLayers(inputs(4, bad));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("receiver layer 4"));
  ExpectCachesEqual(got, original);
  // Rows outside the receiver.
  s = fuser->FuseLayers(inputs(2, Input(2, good, got, /*start=*/3)));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("receiver layer 2"));
  const std::vector<uint32_t> out_of_range = {0, 1, 2, 6};
  const std::vector<uint32_t> repeated = {0, 1, 1, 2};
  const std::vector<uint32_t> too_few = {0, 1, 2};
  for (const auto* positions : {&out_of_range, &repeated, &too_few}) {
    s = fuser->FuseLayers(
        inputs(1, Input(1, good, got, 0, absl::MakeConstSpan(*positions))));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  }
  ExpectCachesEqual(got, original);
  // The same receiver layer twice.
  std::vector<LayerFusionInput> twice = {Input(3, good, got),
                                         Input(3, good, got)};
  s = fuser->FuseLayers(twice);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("twice"));
  ExpectCachesEqual(got, original);
  // Receiver layers without a projector are ignored; nothing at all is OK.
  LayerFusionInput none = Input(0, good, got);
  none.receiver_layer = 17;
  EXPECT_TRUE(fuser->FuseLayers({none}).ok());
  EXPECT_TRUE(fuser->FuseLayers({}).ok());
  ExpectCachesEqual(got, original);
}

TEST(C2CProjectorStackTest, StackingKeepsTheWeightsAndChecksItsInputs) {
  auto ckpt = MakeRandomFuserCheckpoint(Tiny());
  ASSERT_TRUE(ckpt.ok());
  FuserOptions options;
  options.projector.dtype = at::kFloat;
  auto fuser = C2CFuser::FromCheckpoint(*ckpt, options);
  ASSERT_TRUE(fuser.ok());
  // The projectors' weights (now views of the stack) are the checkpoint's.
  for (int i = 0; i < (*fuser)->num_projectors(); ++i) {
    auto fresh = C2CProjector::Create(ckpt->args[i], ckpt->weights[i],
                                      options.projector);
    ASSERT_TRUE(fresh.ok());
    const TensorList a = (*fuser)->projector(i).StateDict();
    const TensorList b = fresh->StateDict();
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) {
      EXPECT_TRUE(at::equal(a[k].second, b[k].second)) << a[k].first;
    }
  }
  // One member of the stack against its projector's Forward.
  const C2CProjectorStack& stack = (*fuser)->stack(0);
  const at::Tensor s = at::randn({2, kSharerHeads, 3, kSharerDim});
  const at::Tensor r = at::randn({2, kReceiverHeads, 3, kReceiverDim});
  at::Tensor out = at::empty_like(r);
  ASSERT_TRUE(stack.FusePathInto(/*value=*/true, 2, 2, s, r, out).ok());
  for (int j = 0; j < 2; ++j) {
    auto fused = (*fuser)->projector(2 + j).Forward(s[j], s[j], r[j], r[j]);
    ASSERT_TRUE(fused.ok());
    EXPECT_LE(RelDiff(out[j], fused->second), 1e-5);
  }
  EXPECT_EQ(stack.FusePath(false, 5, 2, s, r).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stack.FusePath(false, 0, 2, r, r).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stack.FusePathInto(false, 0, 2, s, r, s).code(),
            absl::StatusCode::kInvalidArgument);
  // Projectors of different shapes do not stack.
  C2CProjectorArgs wide = Tiny().args;
  wide.hidden_dim = 16;
  auto a = C2CProjector::Random(Tiny().args, {}, options.projector);
  auto b = C2CProjector::Random(wide, {}, options.projector);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(C2CProjectorStack::Compatible(*a, *b));
  std::vector<C2CProjector*> members = {&*a, &*b};
  EXPECT_EQ(C2CProjectorStack::Build(members).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(C2CProjectorStack::Build({}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// FusionSession::AddSharerLayers.

FusionSession::ReceiverKv CacheAccessor(Cache& cache) {
  return [&cache](int t) {
    return absl::StatusOr<std::pair<at::Tensor, at::Tensor>>(
        std::make_pair(cache.k[t], cache.v[t]));
  };
}

FusionSession::SharerLayerInput SharerInput(
    int layer, const Sharer& s,
    std::optional<absl::Span<const uint32_t>> positions = std::nullopt) {
  FusionSession::SharerLayerInput in;
  in.sharer_layer = layer;
  in.keys = s.k;
  in.values = s.v;
  in.positions = positions;
  return in;
}

TEST(AddSharerLayersTest, MatchesOneByOneAndFusesEachLayerOnce) {
  auto fuser = MakeFuser(Tiny());
  const int64_t tokens = 7;
  const Cache original = RandomCache(tokens);
  const std::vector<uint32_t> positions = {6, 0, 2, 3};
  std::vector<Sharer> sharer;
  for (int s = 0; s < 4; ++s) sharer.push_back(RandomSharer(4));
  Cache expected = original.Clone(), got = original.Clone();
  FusionSession one_by_one(fuser.get(), CacheAccessor(expected));
  for (int s = 0; s < 4; ++s) {
    ASSERT_TRUE(
        one_by_one.AddSharerLayer(s, positions, sharer[s].k, sharer[s].v).ok());
  }

  FusionSession session(fuser.get(), CacheAccessor(got));
  // Sharer layer 2 alone first, then the rest in one call.
  auto done = session.AddSharerLayer(2, positions, sharer[2].k, sharer[2].v);
  ASSERT_TRUE(done.ok());
  EXPECT_THAT(*done, ElementsAre(4));
  std::vector<FusionSession::SharerLayerInput> rest = {
      SharerInput(3, sharer[3], positions),
      SharerInput(0, sharer[0], positions),
      SharerInput(1, sharer[1], positions)};
  // A layer already added, or given twice, refuses the whole call.
  std::vector<FusionSession::SharerLayerInput> again = rest;
  again.push_back(SharerInput(2, sharer[2], positions));
  EXPECT_EQ(session.AddSharerLayers(again).status().code(),
            absl::StatusCode::kFailedPrecondition);
  again = rest;
  again.push_back(rest[0]);
  EXPECT_EQ(session.AddSharerLayers(again).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session.num_fused(), 1);
  done = session.AddSharerLayers(rest);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_THAT(*done, ElementsAre(0, 1, 2, 3, 5));
  EXPECT_TRUE(session.done());
  ExpectCachesNear(got, expected, 1e-5);
  EXPECT_EQ(session.AddSharerLayers({rest[1]}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session.AddSharerLayer(0, positions, sharer[0].k, sharer[0].v)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  // Sharer layers nobody reads, and no layers at all, fuse nothing.
  done = session.AddSharerLayers({SharerInput(9, sharer[0], positions)});
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(done->empty());
  EXPECT_TRUE(session.AddSharerLayers({}).ok());
}

TEST(AddSharerLayersTest, ErrorsFuseNothingAndLeaveTheSessionUsable) {
  auto fuser = MakeFuser(Tiny());
  const Cache original = RandomCache(5);
  Cache got = original.Clone();
  FusionSession session(fuser.get(), CacheAccessor(got));
  const Sharer good = RandomSharer(5);
  Sharer bad = good;
  bad.k = at::randn({3, 5, kSharerDim});
  bad.v = at::randn({3, 5, kSharerDim});
  auto r = session.AddSharerLayers({SharerInput(0, good), SharerInput(3, bad)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("receiver layer 5"));
  EXPECT_EQ(session.num_fused(), 0);
  ExpectCachesEqual(got, original);
  EXPECT_EQ(session.AddSharerLayers({SharerInput(-1, good)}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The receiver accessor's errors come through, fusing nothing.
  FusionSession broken(fuser.get(), [](int t) {
    return absl::StatusOr<std::pair<at::Tensor, at::Tensor>>(
        absl::NotFoundError(absl::StrCat("no layer ", t)));
  });
  EXPECT_EQ(broken.AddSharerLayers({SharerInput(1, good)}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(broken.num_fused(), 0);
  // Retrying with good inputs fuses them all.
  auto done =
      session.AddSharerLayers({SharerInput(0, good), SharerInput(3, good)});
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_THAT(*done, ElementsAre(0, 1, 2, 5));
  EXPECT_THAT(session.PendingReceiverLayers(), ElementsAre(3, 4));
}

// Counts calls and runs them eagerly.
class CountingAccelerator : public FusionAccelerator {
 public:
  CountingAccelerator(const C2CFuser* fuser, bool batched)
      : fuser_(fuser), batched_(batched) {}
  absl::Status FuseLayer(int t, const at::Tensor& sk, const at::Tensor& sv,
                         const at::Tensor& rk, const at::Tensor& rv,
                         int64_t start) override {
    ++per_layer;
    return fuser_->FuseLayer(t, sk, sv, rk, rv, start);
  }
  absl::Status FuseLayerTokens(int t, const at::Tensor& sk,
                               const at::Tensor& sv,
                               absl::Span<const uint32_t> positions,
                               const at::Tensor& rk,
                               const at::Tensor& rv) override {
    ++per_layer;
    return fuser_->FuseLayerTokens(t, sk, sv, positions, rk, rv);
  }
  absl::Status FuseLayers(absl::Span<const LayerFusionInput> inputs) override {
    if (!batched_) return FusionAccelerator::FuseLayers(inputs);
    ++batched;
    return fuser_->FuseLayers(inputs);
  }
  int per_layer = 0;
  int batched = 0;

 private:
  const C2CFuser* fuser_;
  bool batched_;
};

TEST(AddSharerLayersTest, UsesTheAcceleratorsBatchedPathOrFallsBack) {
  for (bool batched : {true, false}) {
    SCOPED_TRACE(batched);
    auto fuser = MakeFuser(Tiny());
    auto accelerator =
        std::make_shared<CountingAccelerator>(fuser.get(), batched);
    fuser->SetAccelerator(accelerator);
    const Cache original = RandomCache(4);
    Cache expected = original.Clone(), got = original.Clone();
    std::vector<Sharer> sharer;
    for (int s = 0; s < 4; ++s) sharer.push_back(RandomSharer(4));
    std::vector<FusionSession::SharerLayerInput> layers;
    std::vector<LayerFusionInput> reference;
    for (int s = 0; s < 4; ++s) layers.push_back(SharerInput(s, sharer[s]));
    for (int t = 0; t < kReceiverLayers; ++t) {
      reference.push_back(
          Input(t, sharer[*fuser->SharerLayerFor(t)], expected));
    }
    ASSERT_TRUE(fuser->FuseLayers(reference).ok());
    FusionSession session(fuser.get(), CacheAccessor(got));
    auto done = session.AddSharerLayers(layers);
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->size(), static_cast<size_t>(kReceiverLayers));
    EXPECT_EQ(accelerator->batched, batched ? 1 : 0);
    EXPECT_EQ(accelerator->per_layer, batched ? 0 : kReceiverLayers);
    if (batched) {
      ExpectCachesEqual(got, expected);
    } else {
      ExpectCachesNear(got, expected, 1e-5);
    }
  }
}

TEST(RequestFusionBatcherTest, ConcurrentRequestsFuseTogetherAsEachAlone) {
  // Four requests of different lengths, dense and sparse, one sending only
  // some sharer layers, over projectors with some gates closed.
  auto fuser = MakeFuser(Tiny(/*open_gate_fraction=*/0.7, /*seed=*/9));
  constexpr int kRequests = 4;
  const std::vector<int64_t> tokens = {5, 9, 3, 7};
  std::vector<Cache> originals, expected, got;
  std::vector<std::vector<uint32_t>> positions(kRequests);
  std::vector<std::vector<Sharer>> sharers(kRequests);
  for (int r = 0; r < kRequests; ++r) {
    originals.push_back(RandomCache(tokens[r]));
    if (r % 2 == 1) {  // Sparse: every other position.
      for (uint32_t p = 0; p < tokens[r]; p += 2) positions[r].push_back(p);
    } else {
      for (uint32_t p = 0; p < tokens[r]; ++p) positions[r].push_back(p);
    }
    for (int s = 0; s < 4; ++s) {
      sharers[r].push_back(RandomSharer(positions[r].size()));
    }
  }
  // Request 3 sends sharer layers 0 and 1 only.
  auto layers_of = [](int r) { return r == 3 ? 2 : 4; };
  auto fuse = [&](int r, Cache& cache) -> absl::Status {
    FusionSession session(fuser.get(), CacheAccessor(cache));
    std::vector<FusionSession::SharerLayerInput> inputs;
    for (int s = 0; s < layers_of(r); ++s) {
      inputs.push_back(SharerInput(s, sharers[r][s], positions[r]));
    }
    return session.AddSharerLayers(inputs).status();
  };
  for (int r = 0; r < kRequests; ++r) {
    expected.push_back(originals[r].Clone());
    ASSERT_TRUE(fuse(r, expected[r]).ok());
    got.push_back(originals[r].Clone());
  }

  RequestFusionBatcherOptions options;
  options.max_requests = 8;
  options.gathering.items = kRequests;  // All in one batch.
  options.gathering.window = absl::Seconds(10);
  int64_t observed = 0;
  options.gathering.observer = [&](const StepBatchStats& stats) {
    observed = std::max(observed, stats.items);
  };
  auto batcher =
      std::make_shared<RequestFusionBatcher>(fuser.get(), nullptr, options);
  fuser->SetAccelerator(batcher);
  std::vector<absl::Status> statuses(kRequests);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRequests; ++r) {
    threads.emplace_back([&, r] { statuses[r] = fuse(r, got[r]); });
  }
  for (auto& t : threads) t.join();
  fuser->SetAccelerator(nullptr);
  for (int r = 0; r < kRequests; ++r) {
    SCOPED_TRACE(absl::StrCat("request ", r));
    ASSERT_TRUE(statuses[r].ok()) << statuses[r];
    ExpectCachesNear(got[r], expected[r], 1e-5);
  }
  EXPECT_EQ(batcher->calls(), kRequests);
  EXPECT_EQ(batcher->batches(), 1);
  EXPECT_EQ(observed, kRequests);

  // Alone, a request goes to the inner path; a bad one is refused before
  // it queues, and nothing of it is written.
  Cache alone = originals[0].Clone();
  fuser->SetAccelerator(
      std::make_shared<RequestFusionBatcher>(fuser.get(), nullptr));
  ASSERT_TRUE(fuse(0, alone).ok());
  ExpectCachesNear(alone, expected[0], 1e-5);
  Cache bad = originals[1].Clone();
  FusionSession session(fuser.get(), CacheAccessor(bad));
  const std::vector<uint32_t> outside = {0, 99};
  const Sharer two = RandomSharer(2);
  EXPECT_EQ(
      session.AddSharerLayers({SharerInput(0, two, outside)}).status().code(),
      absl::StatusCode::kInvalidArgument);
  ExpectCachesEqual(bad, originals[1]);
  fuser->SetAccelerator(nullptr);
}

}  // namespace
}  // namespace kvwire
