#include "common/fuser/c2c_projector.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>

#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

C2CProjectorArgs TinyArgs() {
  C2CProjectorArgs a;
  a.source_dim = 8;
  a.source_num_heads = 2;
  a.target_dim = 16;
  a.target_num_heads = 4;
  a.hidden_dim = 16;
  a.intermediate_dim = 24;
  a.num_layers = 4;
  return a;
}

C2CProjector Make(const C2CProjectorArgs& args, double key_gate = 1.0,
                  double value_gate = 0.5, at::ScalarType dtype = at::kFloat,
                  uint64_t seed = 3) {
  C2CProjector::RandomOptions r;
  r.seed = seed;
  r.key_gate_logit = key_gate;
  r.value_gate_logit = value_gate;
  ProjectorOptions o;
  o.dtype = dtype;
  auto p = C2CProjector::Random(args, r, o);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

// The spec's formula written out directly (fp32), from a state dict.
at::Tensor Reference(const TensorList& sd, const C2CProjectorArgs& a,
                     const std::string& x, const at::Tensor& src,
                     const at::Tensor& tgt) {
  std::map<std::string, at::Tensor> w;
  for (const auto& [n, t] : sd) w[n] = t.to(at::kFloat);
  auto block = [&](at::Tensor h, const std::string& prefix, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
      const std::string b = prefix + ".blocks." + std::to_string(j) + ".";
      at::Tensor y = h * at::rsqrt(h.pow(2).mean({-1}, true) + 1e-6) *
                     w[b + "norm.weight"];
      h = h + at::linear(at::gelu(at::linear(y, w[b + "w1.weight"])),
                         w[b + "w2.weight"]);
    }
    return h;
  };
  const int64_t b = src.size(0), n = src.size(2);
  at::Tensor s = src.permute({0, 2, 1, 3}).reshape({b, n, -1});
  at::Tensor r = tgt.permute({0, 2, 1, 3}).reshape({b, n, -1});
  at::Tensor h =
      at::linear(at::cat({s, r}, -1), w[x + "_in.weight"], w[x + "_in.bias"]);
  h = block(h, x + "_mlp1", 1);
  at::Tensor p = at::linear(block(h, x + "_proj_mlp2", a.num_layers - 2),
                            w[x + "_proj_out.weight"], w[x + "_proj_out.bias"]);
  p = p.view({b, n, a.target_num_heads, a.target_dim}).permute({0, 2, 1, 3});
  at::Tensor g =
      at::linear(block(h, x + "_scalar_mlp2", 1), w[x + "_scalar_head.weight"],
                 w[x + "_scalar_head.bias"]);
  g = at::sigmoid(g.permute({0, 2, 1}).unsqueeze(-1));
  const float gate = w[x + "_gate_logit"].item<float>() > 0 ? 1.f : 0.f;
  return tgt.to(at::kFloat) + gate * g * p;
}

struct Inputs {
  at::Tensor sk, sv, rk, rv;
};
Inputs RandomInputs(const C2CProjectorArgs& a, int64_t n, int64_t b = 1,
                    at::ScalarType dtype = at::kFloat) {
  return {at::randn({b, a.source_num_heads, n, a.source_dim}).to(dtype),
          at::randn({b, a.source_num_heads, n, a.source_dim}).to(dtype),
          at::randn({b, a.target_num_heads, n, a.target_dim}).to(dtype),
          at::randn({b, a.target_num_heads, n, a.target_dim}).to(dtype)};
}

TEST(C2CProjectorSpecTest, ReleasedParameterCount) {
  // c2c-spec §2.3: 17,066,002 parameters per projector (gate_temperature is
  // a buffer).
  int64_t params = 0;
  int entries = 0;
  for (const auto& s : ProjectorStateDictSpec(ReleasedQwen3Qwen25Args())) {
    ++entries;
    if (s.name == "gate_temperature") continue;
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    params += n;
  }
  EXPECT_EQ(params, 17066002);
  EXPECT_EQ(entries, 2 * (2 + 3 * 3 + 2 + 2) + 3);
}

TEST(C2CProjectorTest, MatchesTheFormula) {
  const C2CProjectorArgs a = TinyArgs();
  C2CProjector p = Make(a, 0.7, 1.3);
  Inputs in = RandomInputs(a, 5, 2);
  auto out = p.Forward(in.sk, in.sv, in.rk, in.rv);
  ASSERT_TRUE(out.ok()) << out.status();
  const TensorList sd = p.StateDict();
  EXPECT_TRUE(at::allclose(out->first, Reference(sd, a, "key", in.sk, in.rk),
                           1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(out->second, Reference(sd, a, "value", in.sv, in.rv),
                           1e-5, 1e-5));
  EXPECT_FALSE(at::allclose(out->first, in.rk));
}

TEST(C2CProjectorTest, ClosedGatesLeaveTheReceiverExactly) {
  const C2CProjectorArgs a = TinyArgs();
  C2CProjector p = Make(a, -0.1, 0.0);  // logit 0 is closed too (> 0 opens).
  EXPECT_FALSE(p.key_gate_open());
  EXPECT_FALSE(p.value_gate_open());
  Inputs in = RandomInputs(a, 4, 1, at::kBFloat16);
  auto out = p.Forward(in.sk, in.sv, in.rk, in.rv);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(at::equal(out->first, in.rk));
  EXPECT_TRUE(at::equal(out->second, in.rv));
}

TEST(C2CProjectorTest, UnbatchedAndBatchedLayoutsAgree) {
  const C2CProjectorArgs a = TinyArgs();
  C2CProjector p = Make(a);
  Inputs in = RandomInputs(a, 6, 2);
  auto batched = p.Forward(in.sk, in.sv, in.rk, in.rv);
  ASSERT_TRUE(batched.ok());
  for (int64_t b = 0; b < 2; ++b) {
    auto one = p.Forward(in.sk[b], in.sv[b], in.rk[b], in.rv[b]);
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_EQ(one->first.dim(), 3);
    EXPECT_TRUE(at::allclose(one->first, batched->first[b], 1e-6, 1e-6));
    EXPECT_TRUE(at::allclose(one->second, batched->second[b], 1e-6, 1e-6));
  }
}

TEST(C2CProjectorTest, SumsInFp32AndRoundsOnceIntoTheReceiverDtype) {
  const C2CProjectorArgs a = TinyArgs();
  C2CProjector p = Make(a);  // fp32 projector, bf16 cache.
  Inputs in = RandomInputs(a, 3, 1, at::kBFloat16);
  auto out = p.Forward(in.sk, in.sv, in.rk, in.rv);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->first.scalar_type(), at::kBFloat16);
  auto pw = p.ProjectAndWeight(in.sk, in.rk, /*value=*/false);
  ASSERT_TRUE(pw.ok());
  const at::Tensor expected =
      (in.rk.to(at::kFloat) + pw->second * pw->first).to(at::kBFloat16);
  EXPECT_TRUE(at::equal(out->first, expected));
}

TEST(C2CProjectorTest, FuseRangeWritesOnlyItsPositions) {
  const C2CProjectorArgs a = TinyArgs();
  C2CProjector p = Make(a);
  Inputs cache = RandomInputs(a, 10, 1, at::kBFloat16);
  Inputs sharer = RandomInputs(a, 4, 1, at::kBFloat16);
  at::Tensor k = cache.rk[0].clone(), v = cache.rv[0].clone();  // [H, T, D]
  ASSERT_TRUE(p.FuseRange(sharer.sk[0], sharer.sv[0], 3, k, v).ok());
  auto expected =
      p.Forward(sharer.sk[0], sharer.sv[0], cache.rk[0].narrow(1, 3, 4),
                cache.rv[0].narrow(1, 3, 4));
  ASSERT_TRUE(expected.ok());
  EXPECT_TRUE(at::equal(k.narrow(1, 3, 4), expected->first));
  EXPECT_TRUE(at::equal(v.narrow(1, 3, 4), expected->second));
  EXPECT_TRUE(at::equal(k.narrow(1, 0, 3), cache.rk[0].narrow(1, 0, 3)));
  EXPECT_TRUE(at::equal(k.narrow(1, 7, 3), cache.rk[0].narrow(1, 7, 3)));
  EXPECT_FALSE(p.FuseRange(sharer.sk[0], sharer.sv[0], 7, k, v).ok());
  EXPECT_FALSE(p.FuseRange(sharer.sk[0], sharer.sv[0], -1, k, v).ok());
}

TEST(C2CProjectorTest, FuseTokensIsSparse) {
  const C2CProjectorArgs a = TinyArgs();
  C2CProjector p = Make(a);
  Inputs cache = RandomInputs(a, 9);
  Inputs sharer = RandomInputs(a, 3);
  const std::vector<uint32_t> positions = {7, 1, 4};
  at::Tensor k = cache.rk.clone(), v = cache.rv.clone();  // [1, H, T, D]
  ASSERT_TRUE(p.FuseTokens(sharer.sk, sharer.sv, positions, k, v).ok());
  const at::Tensor idx = at::tensor({7, 1, 4}, at::kLong);
  auto expected = p.Forward(sharer.sk, sharer.sv, cache.rk.index_select(2, idx),
                            cache.rv.index_select(2, idx));
  ASSERT_TRUE(expected.ok());
  EXPECT_TRUE(at::equal(k.index_select(2, idx), expected->first));
  EXPECT_TRUE(at::equal(v.index_select(2, idx), expected->second));
  for (int64_t t : {0, 2, 3, 5, 6, 8}) {
    EXPECT_TRUE(at::equal(k.select(2, t), cache.rk.select(2, t))) << t;
    EXPECT_TRUE(at::equal(v.select(2, t), cache.rv.select(2, t))) << t;
  }
  // A contiguous run is the same as FuseRange.
  at::Tensor k2 = cache.rk.clone(), v2 = cache.rv.clone();
  at::Tensor k3 = cache.rk.clone(), v3 = cache.rv.clone();
  const std::vector<uint32_t> run = {2, 3, 4};
  ASSERT_TRUE(p.FuseTokens(sharer.sk, sharer.sv, run, k2, v2).ok());
  ASSERT_TRUE(p.FuseRange(sharer.sk, sharer.sv, 2, k3, v3).ok());
  EXPECT_TRUE(at::equal(k2, k3));
  EXPECT_TRUE(at::equal(v2, v3));
}

TEST(C2CProjectorTest, RejectsBadInputs) {
  const C2CProjectorArgs a = TinyArgs();
  C2CProjector p = Make(a);
  Inputs in = RandomInputs(a, 4);
  EXPECT_THAT(p.Forward(in.rk, in.rv, in.rk, in.rv).status().message(),
              HasSubstr("sharer KV"));
  EXPECT_THAT(p.Forward(in.sk, in.sv, in.sk, in.sv).status().message(),
              HasSubstr("receiver KV"));
  EXPECT_FALSE(
      p.Forward(in.sk.narrow(2, 0, 3), in.sv.narrow(2, 0, 3), in.rk, in.rv)
          .ok());
  EXPECT_FALSE(p.Forward(in.sk[0], in.sv[0], in.rk, in.rv).ok());
  EXPECT_FALSE(p.Forward(in.sk.to(at::kInt), in.sv, in.rk, in.rv).ok());
  at::Tensor k = in.rk.clone(), v = in.rv.clone();
  const std::vector<uint32_t> out_of_range = {0, 4, 1, 2};
  EXPECT_THAT(p.FuseTokens(in.sk, in.sv, out_of_range, k, v).message(),
              HasSubstr("position 4"));
  const std::vector<uint32_t> repeated = {0, 1, 1, 2};
  EXPECT_THAT(p.FuseTokens(in.sk, in.sv, repeated, k, v).message(),
              HasSubstr("repeat"));
  const std::vector<uint32_t> short_list = {0, 1};
  EXPECT_FALSE(p.FuseTokens(in.sk, in.sv, short_list, k, v).ok());
  EXPECT_TRUE(at::equal(k, in.rk));  // Nothing written on errors.
}

TEST(C2CProjectorTest, ReportsMissingAndMisshapedTensorsByName) {
  const C2CProjectorArgs a = TinyArgs();
  TensorList sd = Make(a).StateDict();
  ProjectorOptions o;
  o.dtype = at::kFloat;

  TensorList missing;
  for (const auto& e : sd) {
    if (e.first != "value_proj_mlp2.blocks.1.w2.weight") missing.push_back(e);
  }
  auto r = C2CProjector::Create(a, missing, o, false, "projector_5.pt");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("projector_5.pt"));
  EXPECT_THAT(r.status().message(),
              HasSubstr("value_proj_mlp2.blocks.1.w2.weight"));
  EXPECT_THAT(r.status().message(), HasSubstr("[16, 24]"));

  TensorList bad = sd;
  for (auto& e : bad) {
    if (e.first == "key_in.weight") e.second = at::randn({16, 79});
  }
  r = C2CProjector::Create(a, bad, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("key_in.weight"));
  EXPECT_THAT(r.status().message(), HasSubstr("[16, 79]"));
  EXPECT_THAT(r.status().message(), HasSubstr("[16, 80]"));

  TensorList ints = sd;
  ints[0].second = ints[0].second.to(at::kInt);
  EXPECT_FALSE(C2CProjector::Create(a, ints, o).ok());

  TensorList extra = sd;
  extra.emplace_back("something_else", at::randn({2}));
  EXPECT_TRUE(C2CProjector::Create(a, extra, o).ok());
  r = C2CProjector::Create(a, extra, o, /*strict=*/true);
  EXPECT_THAT(r.status().message(), HasSubstr("something_else"));

  // gate_temperature is optional (unused at inference).
  TensorList no_temp;
  for (const auto& e : sd) {
    if (e.first != "gate_temperature") no_temp.push_back(e);
  }
  EXPECT_TRUE(C2CProjector::Create(a, no_temp, o).ok());
}

TEST(C2CProjectorTest, ConvertsAndKeepsStoredDtypes) {
  const C2CProjectorArgs a = TinyArgs();
  C2CProjector p = Make(a, 1.0, 1.0, at::kBFloat16);
  EXPECT_EQ(p.dtype(), at::kBFloat16);
  ProjectorOptions keep;
  keep.dtype = at::ScalarType::Undefined;
  auto kept = C2CProjector::Create(a, p.StateDict(), keep);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->dtype(), at::kBFloat16);
  ProjectorOptions fp32;
  fp32.dtype = at::kFloat;
  auto converted = p.To(fp32);
  ASSERT_TRUE(converted.ok());
  EXPECT_EQ(converted->dtype(), at::kFloat);
  Inputs in = RandomInputs(a, 3);
  auto x = converted->Forward(in.sk, in.sv, in.rk, in.rv);
  auto y = kept->Forward(in.sk, in.sv, in.rk, in.rv);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_TRUE(at::allclose(x->first, y->first, 0.05, 0.05));
  ProjectorOptions int8;
  int8.dtype = at::kChar;
  EXPECT_FALSE(p.To(int8).ok());
}

TEST(C2CProjectorTest, RandomIsReproducible) {
  const C2CProjectorArgs a = TinyArgs();
  TensorList x = Make(a, 1, 1, at::kFloat, 9).StateDict();
  TensorList y = Make(a, 1, 1, at::kFloat, 9).StateDict();
  TensorList z = Make(a, 1, 1, at::kFloat, 10).StateDict();
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_TRUE(at::equal(x[i].second, y[i].second)) << x[i].first;
  }
  EXPECT_FALSE(at::equal(x[5].second, z[5].second));
}

}  // namespace
}  // namespace kvwire
