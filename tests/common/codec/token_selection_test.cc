#include "common/codec/token_selection.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "common/codec/index_coding.h"
#include "common/codec/scheme.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::absl::StatusCode;

v1::TokenSelection Selection(v1::SelectionMode mode, double proportion,
                             uint32_t min_tokens = 0) {
  v1::TokenSelection s;
  s.set_mode(mode);
  s.set_proportion(proportion);
  s.set_min_tokens(min_tokens);
  return s;
}

std::vector<uint32_t> Iota(uint32_t first, uint32_t count) {
  std::vector<uint32_t> out(count);
  for (uint32_t i = 0; i < count; ++i) out[i] = first + i;
  return out;
}

// [heads=2, T=4, head_dim=2] with hand-computable norms:
//   head 0: |(3,4)|=5, |(0,1)|=1, |(6,8)|=10, |(0,0)|=0
//   head 1: |(0,0)|=0, |(0,3)|=3, |(0,2)|=2,  |(1,0)|=1
//   mean:   2.5,       2,         6,          0.5
at::Tensor HandKeys() {
  return at::tensor({3.f, 4.f, 0.f, 1.f, 6.f, 8.f, 0.f, 0.f,  //
                     0.f, 0.f, 0.f, 3.f, 0.f, 2.f, 1.f, 0.f})
      .reshape({2, 4, 2});
}

// Values whose mean norms are 0, 4, 1, 3 (heads identical).
at::Tensor HandValues() {
  return at::tensor({0.f, 0.f, 0.f, 4.f, 1.f, 0.f, 3.f, 0.f,  //
                     0.f, 0.f, 4.f, 0.f, 0.f, 1.f, 0.f, 3.f})
      .reshape({2, 4, 2});
}

TEST(TokenSelectionTest, CountRoundsHalfToEven) {
  EXPECT_EQ(SelectedTokenCount(5, 0.5, 0), 2);  // 2.5 -> 2
  EXPECT_EQ(SelectedTokenCount(7, 0.5, 0), 4);  // 3.5 -> 4
  EXPECT_EQ(SelectedTokenCount(3, 0.5, 0), 2);  // 1.5 -> 2
  EXPECT_EQ(SelectedTokenCount(1, 0.5, 0), 0);  // 0.5 -> 0
  EXPECT_EQ(SelectedTokenCount(10, 0.26, 0), 3);
  EXPECT_EQ(SelectedTokenCount(118, 0.1, 0), 12);  // 11.8
}

TEST(TokenSelectionTest, CountHonorsMinTokensAndCaps) {
  EXPECT_EQ(SelectedTokenCount(1, 0.5, 1), 1);
  EXPECT_EQ(SelectedTokenCount(200, 0.1, 64), 64);
  EXPECT_EQ(SelectedTokenCount(1000, 0.1, 64), 100);
  EXPECT_EQ(SelectedTokenCount(50, 0.1, 64), 50);  // capped at T
}

TEST(TokenSelectionTest, CountKeepsAllForProportionOutsideZeroOne) {
  EXPECT_EQ(SelectedTokenCount(10, 1.0, 0), 10);
  EXPECT_EQ(SelectedTokenCount(10, 2.5, 0), 10);
  EXPECT_EQ(SelectedTokenCount(10, 0.0, 0), 10);  // proto3 "unset"
  EXPECT_EQ(SelectedTokenCount(10, -0.5, 0), 10);
  EXPECT_EQ(SelectedTokenCount(0, 0.5, 4), 0);
  EXPECT_EQ(SelectedTokenCount(-3, 0.5, 4), 0);
}

TEST(TokenSelectionTest, NeedsScoresOnlyForNormModes) {
  EXPECT_TRUE(SelectionNeedsScores(v1::SELECTION_KNORM_TOPK));
  EXPECT_TRUE(SelectionNeedsScores(v1::SELECTION_VNORM_TOPK));
  for (v1::SelectionMode m :
       {v1::SELECTION_UNSPECIFIED, v1::SELECTION_ALL, v1::SELECTION_FRONT,
        v1::SELECTION_BACK, v1::SELECTION_RANDOM, v1::SELECTION_EXPLICIT}) {
    EXPECT_FALSE(SelectionNeedsScores(m));
  }
}

TEST(TokenSelectionTest, AllFrontBackWithoutTensors) {
  const at::Tensor none;
  auto all =
      SelectTokens(Selection(v1::SELECTION_UNSPECIFIED, 0.3), 10, none, none);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, Iota(0, 10));
  all = SelectTokens(Selection(v1::SELECTION_ALL, 0.3), 10, none, none);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, Iota(0, 10));

  auto front =
      SelectTokens(Selection(v1::SELECTION_FRONT, 0.3), 10, none, none);
  ASSERT_TRUE(front.ok());
  EXPECT_EQ(*front, Iota(0, 3));
  auto back = SelectTokens(Selection(v1::SELECTION_BACK, 0.3), 10, none, none);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, Iota(7, 3));
  back = SelectTokens(Selection(v1::SELECTION_BACK, 0.05, 4), 10, none, none);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, Iota(6, 4));

  auto empty = SelectTokens(Selection(v1::SELECTION_FRONT, 0.5), 0, none, none);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

// Independent transcription of the RANDOM algorithm in the header.
std::vector<uint32_t> ReferenceRandom(uint64_t seed, uint32_t total,
                                      uint32_t k) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> perm(total);
  for (uint32_t i = 0; i < total; ++i) perm[i] = i;
  for (uint32_t i = 0; i < k; ++i) {
    const uint64_t n = total - i;
    const uint64_t threshold = (~n + 1) % n;
    uint64_t x;
    do {
      x = rng();
    } while (x < threshold);
    std::swap(perm[i], perm[i + x % n]);
  }
  perm.resize(k);
  std::sort(perm.begin(), perm.end());
  return perm;
}

TEST(TokenSelectionTest, RandomIsReproducibleAndSeedDependent) {
  const at::Tensor none;
  v1::TokenSelection s = Selection(v1::SELECTION_RANDOM, 0.25);
  s.set_seed(42);
  auto a = SelectTokens(s, 118, none, none);
  auto b = SelectTokens(s, 118, none, none);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*a, *b);
  ASSERT_EQ(a->size(), 30u);  // round(29.5) = 30
  EXPECT_TRUE(std::is_sorted(a->begin(), a->end()));
  EXPECT_EQ(std::adjacent_find(a->begin(), a->end()), a->end());
  EXPECT_LT(a->back(), 118u);
  EXPECT_EQ(*a, ReferenceRandom(42, 118, 30));

  s.set_seed(43);
  auto c = SelectTokens(s, 118, none, none);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(*a, *c);

  s.set_proportion(1.0);
  auto all = SelectTokens(s, 118, none, none);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, Iota(0, 118));
}

TEST(TokenSelectionTest, RandomMatchesGoldenDraw) {
  // Pins the cross-platform algorithm: mt19937_64 is fully specified by the
  // C++ standard, and the bounded draw is ours, not the library's. The
  // expected set was also checked against an independent Python
  // transcription of MT19937-64 and the header's algorithm.
  v1::TokenSelection s = Selection(v1::SELECTION_RANDOM, 0.5);
  s.set_seed(0);
  auto got = SelectTokens(s, 10, at::Tensor(), at::Tensor());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, ReferenceRandom(0, 10, 5));
  EXPECT_EQ(*got, (std::vector<uint32_t>{3, 4, 6, 8, 9}));
  // The standard pins the 10000th output of the default seed; check that our
  // library's engine is the standard one.
  std::mt19937_64 standard;
  standard.discard(9999);
  EXPECT_EQ(standard(), 9981545732273789042ull);
}

TEST(TokenSelectionTest, RandomCoversTokensUniformly) {
  // Each token of 20 is picked with probability 1/4 over many seeds.
  std::vector<int> hits(20, 0);
  const int seeds = 4000;
  for (int seed = 0; seed < seeds; ++seed) {
    v1::TokenSelection s = Selection(v1::SELECTION_RANDOM, 0.25);
    s.set_seed(static_cast<uint64_t>(seed));
    auto got = SelectTokens(s, 20, at::Tensor(), at::Tensor());
    ASSERT_TRUE(got.ok());
    ASSERT_EQ(got->size(), 5u);
    for (uint32_t i : *got) ++hits[i];
  }
  for (int h : hits) {
    EXPECT_NEAR(h, seeds / 4, seeds / 4 * 0.15);
  }
}

TEST(TokenSelectionTest, ExplicitSortsAndValidates) {
  v1::TokenSelection s = Selection(v1::SELECTION_EXPLICIT, 0.1);
  for (uint32_t i : {7u, 1u, 4u}) s.add_indices(i);
  auto got = SelectTokens(s, 8, at::Tensor(), at::Tensor());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, (std::vector<uint32_t>{1, 4, 7}));

  EXPECT_EQ(SelectTokens(s, 7, at::Tensor(), at::Tensor()).status().code(),
            StatusCode::kInvalidArgument);  // 7 >= T
  s.add_indices(4);
  EXPECT_EQ(SelectTokens(s, 8, at::Tensor(), at::Tensor()).status().code(),
            StatusCode::kInvalidArgument);  // duplicate

  s.clear_indices();
  got = SelectTokens(s, 8, at::Tensor(), at::Tensor());
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->empty());
}

TEST(TokenSelectionTest, NormScoresMatchHandComputation) {
  const at::Tensor scores = TokenNormScores(HandKeys());
  ASSERT_TRUE(scores.defined());
  EXPECT_EQ(scores.scalar_type(), at::kFloat);
  ASSERT_EQ(scores.dim(), 1);
  ASSERT_EQ(scores.size(0), 4);
  const std::vector<float> expected = {2.5f, 2.f, 6.f, 0.5f};
  for (int i = 0; i < 4; ++i) {
    EXPECT_FLOAT_EQ(scores[i].item<float>(), expected[i]);
  }
  // Same in bf16 (every value here is exact in bf16).
  const at::Tensor bf16 = TokenNormScores(HandKeys().to(at::kBFloat16));
  ASSERT_TRUE(bf16.defined());
  EXPECT_EQ(bf16.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(bf16, scores));

  EXPECT_FALSE(TokenNormScores(at::Tensor()).defined());
  EXPECT_FALSE(TokenNormScores(at::ones({4, 2})).defined());
  EXPECT_FALSE(TokenNormScores(at::ones({2, 4, 2}, at::kInt)).defined());
}

TEST(TokenSelectionTest, KnormAndVnormTopK) {
  const at::Tensor keys = HandKeys();
  const at::Tensor values = HandValues();
  auto k2 =
      SelectTokens(Selection(v1::SELECTION_KNORM_TOPK, 0.5), 4, keys, values);
  ASSERT_TRUE(k2.ok()) << k2.status();
  EXPECT_EQ(*k2, (std::vector<uint32_t>{0, 2}));  // 6 and 2.5
  auto k3 =
      SelectTokens(Selection(v1::SELECTION_KNORM_TOPK, 0.75), 4, keys, values);
  ASSERT_TRUE(k3.ok());
  EXPECT_EQ(*k3, (std::vector<uint32_t>{0, 1, 2}));
  auto k1 = SelectTokens(Selection(v1::SELECTION_KNORM_TOPK, 0.1, 1), 4, keys,
                         values);
  ASSERT_TRUE(k1.ok());
  EXPECT_EQ(*k1, (std::vector<uint32_t>{2}));

  // Values: 0, 4, 1, 3 -> top 2 is {1, 3}. Keys may be undefined.
  auto v2 = SelectTokens(Selection(v1::SELECTION_VNORM_TOPK, 0.5), 4,
                         at::Tensor(), values);
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(*v2, (std::vector<uint32_t>{1, 3}));

  // fp16 input gives the same selection.
  auto v2h = SelectTokens(Selection(v1::SELECTION_VNORM_TOPK, 0.5), 4,
                          at::Tensor(), values.to(at::kHalf));
  ASSERT_TRUE(v2h.ok());
  EXPECT_EQ(*v2h, *v2);
}

TEST(TokenSelectionTest, TopKBreaksTiesTowardLowerIndex) {
  const at::Tensor scores = at::tensor({1.f, 2.f, 2.f, 2.f, 1.f});
  EXPECT_EQ(TopKTokens(scores, 2), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(TopKTokens(scores, 4), (std::vector<uint32_t>{0, 1, 2, 3}));
  EXPECT_EQ(TopKTokens(scores, 0), std::vector<uint32_t>{});
  EXPECT_EQ(TopKTokens(scores, 99), (std::vector<uint32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(TopKTokens(scores, -1), std::vector<uint32_t>{});
  EXPECT_TRUE(TopKTokens(at::Tensor(), 2).empty());
  EXPECT_TRUE(TopKTokens(at::ones({2, 2}), 2).empty());
  // NaN ranks lowest.
  const at::Tensor with_nan =
      at::tensor({std::numeric_limits<float>::quiet_NaN(), 0.f, -1.f});
  EXPECT_EQ(TopKTokens(with_nan, 2), (std::vector<uint32_t>{1, 2}));

  // Constant tensors: every score ties, so top-k is the first k tokens.
  const at::Tensor flat = at::ones({3, 9, 4});
  auto got =
      SelectTokens(Selection(v1::SELECTION_KNORM_TOPK, 0.5), 9, flat, flat);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, Iota(0, 4));  // round(4.5) = 4
}

TEST(TokenSelectionTest, TopKMatchesSortOnRandomScores) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t t = 1 + static_cast<int64_t>(rng() % 300);
    // Few distinct values, so there are many ties.
    std::vector<float> s(static_cast<size_t>(t));
    for (float& v : s) v = static_cast<float>(rng() % 7);
    const int64_t k = static_cast<int64_t>(rng() % (t + 1));
    std::vector<uint32_t> order(s.size());
    for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&s](uint32_t a, uint32_t b) { return s[a] > s[b]; });
    order.resize(static_cast<size_t>(k));
    std::sort(order.begin(), order.end());
    EXPECT_EQ(TopKTokens(at::tensor(s), k), order);
  }
}

TEST(TokenSelectionTest, NormModesValidateTensors) {
  const auto code = [](v1::SelectionMode mode, uint32_t t, const at::Tensor& k,
                       const at::Tensor& v) {
    return SelectTokens(Selection(mode, 0.5), t, k, v).status().code();
  };
  EXPECT_EQ(code(v1::SELECTION_KNORM_TOPK, 4, at::Tensor(), HandValues()),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(v1::SELECTION_VNORM_TOPK, 4, HandKeys(), at::Tensor()),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(v1::SELECTION_KNORM_TOPK, 5, HandKeys(), HandValues()),
            StatusCode::kInvalidArgument);  // T mismatch
  EXPECT_EQ(code(v1::SELECTION_KNORM_TOPK, 4, at::ones({4, 2}), at::Tensor()),
            StatusCode::kInvalidArgument);  // not 3-D
  EXPECT_EQ(code(v1::SELECTION_KNORM_TOPK, 4, at::ones({2, 4, 2}, at::kLong),
                 at::Tensor()),
            StatusCode::kInvalidArgument);  // not floating
  EXPECT_EQ(
      code(v1::SELECTION_KNORM_TOPK, 4, at::ones({0, 4, 2}), at::Tensor()),
      StatusCode::kInvalidArgument);  // no heads
}

TEST(TokenSelectionTest, NonFiniteScoresAreRejected) {
  at::Tensor keys = HandKeys();
  keys[1][2][0] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(SelectTokens(Selection(v1::SELECTION_KNORM_TOPK, 0.5), 4, keys,
                         at::Tensor())
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  keys[1][2][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(SelectTokens(Selection(v1::SELECTION_KNORM_TOPK, 0.5), 4, keys,
                         at::Tensor())
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  // Non-score modes do not look at the tensors.
  EXPECT_TRUE(
      SelectTokens(Selection(v1::SELECTION_FRONT, 0.5), 4, keys, keys).ok());
}

TEST(TokenSelectionTest, RejectsUnknownModeNanProportionAndHugeT) {
  EXPECT_EQ(SelectTokens(Selection(static_cast<v1::SelectionMode>(42), 0.5), 4,
                         at::Tensor(), at::Tensor())
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectTokens(Selection(v1::SELECTION_FRONT,
                                   std::numeric_limits<double>::quiet_NaN()),
                         4, at::Tensor(), at::Tensor())
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectTokens(Selection(v1::SELECTION_FRONT, 0.5),
                         kMaxIndexTokens + 1, at::Tensor(), at::Tensor())
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

TEST(TokenSelectionTest, SharedSelectionFromAveragedScores) {
  // Two layers: mean of the key scores (2.5, 2, 6, 0.5) and value scores
  // (0, 4, 1, 3) is (1.25, 3, 3.5, 1.75): top 2 = {1, 2}.
  const at::Tensor mean =
      (TokenNormScores(HandKeys()) + TokenNormScores(HandValues())) / 2;
  auto got =
      SelectTokensByScores(Selection(v1::SELECTION_KNORM_TOPK, 0.5), 4, mean);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (std::vector<uint32_t>{1, 2}));

  EXPECT_EQ(
      SelectTokensByScores(Selection(v1::SELECTION_KNORM_TOPK, 0.5), 5, mean)
          .status()
          .code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectTokensByScores(Selection(v1::SELECTION_KNORM_TOPK, 0.5), 2,
                                 at::tensor({1.f, INFINITY}))
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectTokensByScores(Selection(v1::SELECTION_KNORM_TOPK, 0.5), 4,
                                 at::Tensor())
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

TEST(TokenSelectionTest, CudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(3);
  const at::Tensor keys = at::randn({4, 200, 64});
  const at::Tensor values = at::randn({4, 200, 64});
  for (v1::SelectionMode mode :
       {v1::SELECTION_KNORM_TOPK, v1::SELECTION_VNORM_TOPK,
        v1::SELECTION_RANDOM, v1::SELECTION_BACK}) {
    v1::TokenSelection s = Selection(mode, 0.3);
    s.set_seed(11);
    auto cpu = SelectTokens(s, 200, keys, values);
    auto cuda = SelectTokens(s, 200, keys.cuda().to(at::kBFloat16),
                             values.cuda().to(at::kBFloat16));
    auto cpu_bf16 =
        SelectTokens(s, 200, keys.to(at::kBFloat16), values.to(at::kBFloat16));
    ASSERT_TRUE(cpu.ok());
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    ASSERT_TRUE(cpu_bf16.ok());
    EXPECT_EQ(*cuda, *cpu_bf16) << SelectionModeName(mode);
    EXPECT_EQ(cuda->size(), cpu->size());
  }
}

}  // namespace
}  // namespace kvwire
