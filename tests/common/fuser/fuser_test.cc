#include "common/fuser/fuser.h"

#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

RandomFuserOptions Tiny() {
  RandomFuserOptions o;
  o.args.source_dim = 4;
  o.args.source_num_heads = 2;
  o.args.target_dim = 8;
  o.args.target_num_heads = 2;
  o.args.hidden_dim = 12;
  o.args.intermediate_dim = 20;
  o.receiver_layers = 6;
  o.sharer_layers = 4;
  o.seed = 5;
  o.dtype = at::kFloat;
  return o;
}

std::unique_ptr<C2CFuser> MakeFuser(FuserOptions options = {}) {
  auto ckpt = MakeRandomFuserCheckpoint(Tiny());
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  options.projector.dtype = at::kFloat;
  auto fuser = C2CFuser::FromCheckpoint(*ckpt, options);
  EXPECT_TRUE(fuser.ok()) << fuser.status();
  return std::move(*fuser);
}

// A receiver "cache": per layer K/V [2, T, 8].
struct Cache {
  std::vector<at::Tensor> k, v;
  Cache Clone() const {
    Cache c;
    for (const auto& t : k) c.k.push_back(t.clone());
    for (const auto& t : v) c.v.push_back(t.clone());
    return c;
  }
};
Cache RandomCache(int layers, int64_t tokens) {
  Cache c;
  for (int i = 0; i < layers; ++i) {
    c.k.push_back(at::randn({2, tokens, 8}));
    c.v.push_back(at::randn({2, tokens, 8}));
  }
  return c;
}

TEST(C2CFuserTest, LayerMapQueries) {
  auto fuser = MakeFuser();
  EXPECT_EQ(fuser->num_projectors(), 6);
  // last_aligned 6 <- 4: 0,1,2 -> 0; 3 -> 1; 4 -> 2; 5 -> 3.
  EXPECT_THAT(fuser->ReceiverLayersReading(0), ElementsAre(0, 1, 2));
  EXPECT_THAT(fuser->ReceiverLayersReading(3), ElementsAre(5));
  EXPECT_TRUE(fuser->ReceiverLayersReading(4).empty());
  EXPECT_THAT(fuser->SharerLayersNeeded(), ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(*fuser->SharerLayerFor(4), 2);
  EXPECT_EQ(fuser->ProjectorFor(6), nullptr);
  EXPECT_EQ(fuser->ProjectorFor(-1), nullptr);
  EXPECT_TRUE(fuser->CheckModels(6, 2, 8, 4, 2, 4).ok());
  EXPECT_THAT(fuser->CheckModels(6, 8, 128, 4, 2, 4).message(),
              HasSubstr("projector 0"));
  EXPECT_THAT(fuser->CheckModels(5, 2, 8, 4, 2, 4).message(),
              HasSubstr("receiver layer 5"));
  EXPECT_THAT(fuser->CheckModels(6, 2, 8, 3, 2, 4).message(),
              HasSubstr("sharer layer 3"));
}

TEST(C2CFuserTest, LayerMapSources) {
  auto ckpt = MakeRandomFuserCheckpoint(Tiny());
  ASSERT_TRUE(ckpt.ok());
  // A custom map in the file wins in kAuto; kLastAligned recomputes.
  FuserLayerMap custom(6);
  custom[2] = FuserLayerMapEntry{3, 0};
  ckpt->layer_map = custom;
  FuserOptions o;
  o.projector.dtype = at::kFloat;
  auto f = C2CFuser::FromCheckpoint(*ckpt, o);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT((*f)->FusedReceiverLayers(), ElementsAre(2));
  o.layer_map = LayerMapSource::kLastAligned;
  EXPECT_FALSE(C2CFuser::FromCheckpoint(*ckpt, o).ok());  // No counts.
  o.receiver_layers = 6;
  o.sharer_layers = 4;
  f = C2CFuser::FromCheckpoint(*ckpt, o);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->FusedReceiverLayers().size(), 6u);
  // No file: kAuto needs the counts.
  ckpt->layer_map.reset();
  o.layer_map = LayerMapSource::kAuto;
  EXPECT_TRUE(C2CFuser::FromCheckpoint(*ckpt, o).ok());
  o.receiver_layers = 0;
  EXPECT_EQ(C2CFuser::FromCheckpoint(*ckpt, o).status().code(),
            absl::StatusCode::kFailedPrecondition);
  o.layer_map = LayerMapSource::kFile;
  EXPECT_EQ(C2CFuser::FromCheckpoint(*ckpt, o).status().code(),
            absl::StatusCode::kNotFound);
  // A map that reads more sharer layers than the model has.
  ckpt->layer_map = custom;
  o.layer_map = LayerMapSource::kAuto;
  o.receiver_layers = 6;
  o.sharer_layers = 3;
  EXPECT_FALSE(C2CFuser::FromCheckpoint(*ckpt, o).ok());
}

TEST(C2CFuserTest, LoadsFromDiskInEitherFormat) {
  auto ckpt = MakeRandomFuserCheckpoint(Tiny());
  ASSERT_TRUE(ckpt.ok());
  const std::string dir = ::testing::TempDir() + "/fuser_load";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(
      WriteFuserCheckpoint(dir, *ckpt, FuserWeightFormat::kSafetensors).ok());
  FuserOptions o;
  o.projector.dtype = at::kBFloat16;
  auto f = C2CFuser::Load(dir, o);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->projector(0).dtype(), at::kBFloat16);
}

TEST(FusionSessionTest, FusesLayersInAnyOrderExactlyOnce) {
  auto fuser = MakeFuser();
  const int64_t tokens = 7;
  const Cache original = RandomCache(6, tokens);
  std::vector<std::pair<at::Tensor, at::Tensor>> sharer;
  for (int s = 0; s < 4; ++s) {
    sharer.emplace_back(at::randn({2, tokens, 4}), at::randn({2, tokens, 4}));
  }
  // Expected: each receiver layer fused from its mapped sharer layer.
  Cache expected = original.Clone();
  for (int t = 0; t < 6; ++t) {
    const int s = *fuser->SharerLayerFor(t);
    ASSERT_TRUE(fuser
                    ->FuseLayer(t, sharer[s].first, sharer[s].second,
                                expected.k[t], expected.v[t])
                    .ok());
  }

  Cache cache = original.Clone();
  FusionSession session(fuser.get(), [&](int t) {
    return absl::StatusOr<std::pair<at::Tensor, at::Tensor>>(
        std::make_pair(cache.k[t], cache.v[t]));
  });
  EXPECT_THAT(session.PendingReceiverLayers(), ElementsAre(0, 1, 2, 3, 4, 5));
  const std::vector<uint32_t> all = {0, 1, 2, 3, 4, 5, 6};
  auto done = session.AddSharerLayer(2, all, sharer[2].first, sharer[2].second);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_THAT(*done, ElementsAre(4));
  done = session.AddSharerLayerRange(0, 0, sharer[0].first, sharer[0].second);
  ASSERT_TRUE(done.ok());
  EXPECT_THAT(*done, ElementsAre(0, 1, 2));
  EXPECT_EQ(session.num_fused(), 4);
  EXPECT_FALSE(session.done());
  // A repeated layer is refused (fusion is not idempotent).
  EXPECT_EQ(session.AddSharerLayer(2, all, sharer[2].first, sharer[2].second)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  // A layer nobody reads is accepted and fuses nothing.
  done = session.AddSharerLayer(9, all, sharer[2].first, sharer[2].second);
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(done->empty());
  ASSERT_TRUE(
      session.AddSharerLayer(3, all, sharer[3].first, sharer[3].second).ok());
  ASSERT_TRUE(
      session.AddSharerLayer(1, all, sharer[1].first, sharer[1].second).ok());
  EXPECT_TRUE(session.done());
  for (int t = 0; t < 6; ++t) {
    EXPECT_TRUE(at::equal(cache.k[t], expected.k[t])) << t;
    EXPECT_TRUE(at::equal(cache.v[t], expected.v[t])) << t;
  }
}

TEST(FusionSessionTest, PartialTransferKeepsTheReceiversOwnKv) {
  auto fuser = MakeFuser();
  const Cache original = RandomCache(6, 8);
  Cache cache = original.Clone();
  FusionSession session(fuser.get(), [&](int t) {
    return absl::StatusOr<std::pair<at::Tensor, at::Tensor>>(
        std::make_pair(cache.k[t], cache.v[t]));
  });
  // Only tokens 1, 5, 6 of sharer layer 1 (receiver layer 3) arrive.
  const std::vector<uint32_t> positions = {1, 5, 6};
  ASSERT_TRUE(session
                  .AddSharerLayer(1, positions, at::randn({2, 3, 4}),
                                  at::randn({2, 3, 4}))
                  .ok());
  for (int t = 0; t < 6; ++t) {
    for (int64_t p = 0; p < 8; ++p) {
      const bool fused = t == 3 && (p == 1 || p == 5 || p == 6);
      EXPECT_EQ(at::equal(cache.k[t].select(1, p), original.k[t].select(1, p)),
                !fused)
          << t << " " << p;
    }
  }
  EXPECT_THAT(session.PendingReceiverLayers(), ElementsAre(0, 1, 2, 4, 5));
}

TEST(FusionSessionTest, ErrorsLeaveTheLayerPending) {
  auto fuser = MakeFuser();
  Cache cache = RandomCache(6, 4);
  FusionSession session(fuser.get(), [&](int t) {
    return absl::StatusOr<std::pair<at::Tensor, at::Tensor>>(
        std::make_pair(cache.k[t], cache.v[t]));
  });
  // Wrong head count for the sharer.
  auto r = session.AddSharerLayerRange(3, 0, at::randn({3, 4, 4}),
                                       at::randn({3, 4, 4}));
  EXPECT_THAT(r.status().message(), HasSubstr("receiver layer 5"));
  EXPECT_FALSE(session.fused(5));
  EXPECT_TRUE(
      session
          .AddSharerLayerRange(3, 0, at::randn({2, 4, 4}), at::randn({2, 4, 4}))
          .ok());
  EXPECT_TRUE(session.fused(5));
}

}  // namespace
}  // namespace kvwire
