#include "common/codec/layer_schedule.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::absl::StatusCode;
using ::testing::HasSubstr;

// The prototype's quantization/configs/kv_layer_schedule.yaml.
constexpr char kPrototypeYaml[] = R"yaml(
layer_schedule:
  default: int8
  overrides:
    - layers: [24, 25, 26, 27]   # or: range: [start, end]  (inclusive)
      scheme: fp16
)yaml";

std::vector<v1::Scheme> ResolveAll(const LayerSchedule& s, uint32_t layers) {
  std::vector<v1::Scheme> out;
  for (uint32_t l = 0; l < layers; ++l) out.push_back(ResolveScheme(s, l));
  return out;
}

std::vector<v1::Scheme> Expected(uint32_t layers, v1::Scheme base,
                                 uint32_t first, uint32_t last,
                                 v1::Scheme scheme) {
  std::vector<v1::Scheme> out(layers, base);
  for (uint32_t l = first; l <= last && l < layers; ++l) out[l] = scheme;
  return out;
}

TEST(LayerScheduleTest, ParsesPrototypeYaml) {
  auto s = ParseLayerScheduleYaml(kPrototypeYaml);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->default_scheme, v1::SCHEME_INT8);
  ASSERT_EQ(s->overrides.size(), 1u);
  EXPECT_EQ(s->overrides[0].scheme(), v1::SCHEME_FP16);
  EXPECT_EQ(s->overrides[0].layers_size(), 4);
  EXPECT_FALSE(s->overrides[0].has_range());
  EXPECT_EQ(ResolveAll(*s, 28),
            Expected(28, v1::SCHEME_INT8, 24, 27, v1::SCHEME_FP16));
}

TEST(LayerScheduleTest, ParsesBareScheduleAndFlowStyle) {
  auto bare = ParseLayerScheduleYaml(
      "default: int4\noverrides:\n  - range: [20, 27]\n    scheme: int8\n");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(ResolveAll(*bare, 28),
            Expected(28, v1::SCHEME_INT4, 20, 27, v1::SCHEME_INT8));

  auto flow = ParseLayerScheduleYaml(
      "layer_schedule: {default: int8, overrides: [{layers: [24,25,26,27], "
      "scheme: fp16}]}");
  ASSERT_TRUE(flow.ok()) << flow.status();
  EXPECT_EQ(ResolveAll(*flow, 28),
            Expected(28, v1::SCHEME_INT8, 24, 27, v1::SCHEME_FP16));
}

TEST(LayerScheduleTest, OtherTopLevelKeysIgnoredWhenWrapped) {
  auto s = ParseLayerScheduleYaml(
      "granularity: head\nlayer_schedule:\n  default: nf4\n");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->default_scheme, v1::SCHEME_NF4);
  EXPECT_TRUE(s->overrides.empty());
}

TEST(LayerScheduleTest, DefaultIsInt8WhenAbsent) {
  auto s =
      ParseLayerScheduleYaml("overrides:\n  - layers: [3]\n    scheme: FP8\n");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->default_scheme, v1::SCHEME_INT8);
  EXPECT_EQ(ResolveScheme(*s, 3), v1::SCHEME_FP8_E4M3);
  EXPECT_EQ(ResolveScheme(*s, 2), v1::SCHEME_INT8);
}

TEST(LayerScheduleTest, LaterOverridesWinAndRangesAreInclusive) {
  auto s = ParseLayerScheduleYaml(R"yaml(
layer_schedule:
  default: int8
  overrides:
    - range: [4, 9]
      scheme: int4
    - layers: [6, 7]
      scheme: fp16
    - range: [7, 7]
      scheme: nf4
    - layers: [12]
      range: [0, 1]
      scheme: int2
)yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  const std::vector<v1::Scheme> expected = {
      v1::SCHEME_INT2, v1::SCHEME_INT2, v1::SCHEME_INT8, v1::SCHEME_INT8,
      v1::SCHEME_INT4, v1::SCHEME_INT4, v1::SCHEME_FP16, v1::SCHEME_NF4,
      v1::SCHEME_INT4, v1::SCHEME_INT4, v1::SCHEME_INT8, v1::SCHEME_INT8,
      v1::SCHEME_INT2, v1::SCHEME_INT8};
  EXPECT_EQ(ResolveAll(*s, 14), expected);
}

TEST(LayerScheduleTest, ErrorsAreClear) {
  const auto error = [](const std::string& yaml) {
    auto s = ParseLayerScheduleYaml(yaml);
    EXPECT_FALSE(s.ok()) << yaml;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << yaml;
    return std::string(s.status().message());
  };
  EXPECT_THAT(error("layer_schedule: {default: int8, overrides: [}"),
              HasSubstr("malformed YAML"));
  EXPECT_THAT(error(""), HasSubstr("empty"));
  EXPECT_THAT(error("- 1\n- 2\n"), HasSubstr("expected a map"));
  EXPECT_THAT(error("layer_schedule: int8\n"), HasSubstr("must be a map"));
  EXPECT_THAT(error("default: int3\n"), HasSubstr("unknown scheme 'int3'"));
  EXPECT_THAT(error("default: int8\noverrides:\n  - layers: [1]\n"
                    "    scheme: fp12\n"),
              HasSubstr("override 0: unknown scheme 'fp12'"));
  EXPECT_THAT(error("overrides:\n  - range: [9, 4]\n    scheme: fp16\n"),
              HasSubstr("range start 9 is after its end 4"));
  EXPECT_THAT(error("overrides:\n  - layers: [1, -2]\n    scheme: fp16\n"),
              HasSubstr("negative layer -2"));
  EXPECT_THAT(error("overrides:\n  - layers: [1, 2.5]\n    scheme: fp16\n"),
              HasSubstr("not an integer"));
  EXPECT_THAT(error("overrides:\n  - layers: [1, 2]\n"),
              HasSubstr("override 0 has no scheme"));
  EXPECT_THAT(error("overrides:\n  - layers: [1]\n    scheme: int8\n"
                    "  - scheme: fp16\n"),
              HasSubstr("override 1 has neither layers nor range"));
  EXPECT_THAT(error("overrides:\n  - range: [1]\n    scheme: fp16\n"),
              HasSubstr("range must be [start, end]"));
  EXPECT_THAT(error("overrides:\n  - layers: 3\n    scheme: fp16\n"),
              HasSubstr("layers must be a list"));
  EXPECT_THAT(error("overrides: {layers: [1]}\n"),
              HasSubstr("`overrides` must be a list"));
  EXPECT_THAT(error("default: int8\noverides: []\n"),
              HasSubstr("unknown key 'overides'"));
  EXPECT_THAT(error("overrides:\n  - layer: [1]\n    scheme: fp16\n"),
              HasSubstr("unknown key 'layer'"));
  // Line numbers point at the offending node.
  EXPECT_THAT(error("default: int8\noverrides:\n  - layers: [1]\n"
                    "    scheme: bogus\n"),
              HasSubstr("line 4"));
}

TEST(LayerScheduleTest, LoadsFileAndReportsMissingFile) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = tmp != nullptr ? tmp : "/tmp";
  const std::string path = dir + "/kvwire_layer_schedule_test_" +
                           std::to_string(::getpid()) + ".yaml";
  {
    std::ofstream out(path);
    out << kPrototypeYaml;
  }
  auto s = LoadLayerScheduleFile(path);
  std::remove(path.c_str());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(ResolveScheme(*s, 25), v1::SCHEME_FP16);

  auto missing = LoadLayerScheduleFile(path);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);

  {
    std::ofstream out(path);
    out << "default: int9\n";
  }
  auto bad = LoadLayerScheduleFile(path);
  std::remove(path.c_str());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr(path));
}

TEST(LayerScheduleTest, ResolveTreatsUnspecifiedAsDefaultAndInt8) {
  LayerSchedule s;
  s.default_scheme = v1::SCHEME_UNSPECIFIED;
  v1::LayerOverride o;
  o.add_layers(2);
  o.set_scheme(v1::SCHEME_FP16);
  s.overrides.push_back(o);
  v1::LayerOverride reset;
  reset.mutable_range()->set_first(2);
  reset.mutable_range()->set_last(2);
  reset.set_scheme(v1::SCHEME_UNSPECIFIED);
  EXPECT_EQ(ResolveScheme(s, 0), v1::SCHEME_INT8);
  EXPECT_EQ(ResolveScheme(s, 2), v1::SCHEME_FP16);
  s.overrides.push_back(reset);
  s.default_scheme = v1::SCHEME_INT4;
  EXPECT_EQ(ResolveScheme(s, 2), v1::SCHEME_INT4);
}

TEST(LayerScheduleTest, SpecRoundTrip) {
  v1::TransferSpec spec;
  EXPECT_EQ(ScheduleFromSpec(spec).default_scheme, v1::SCHEME_INT8);
  spec.set_scheme(v1::SCHEME_INT4);
  v1::LayerOverride* o = spec.add_layer_overrides();
  o->add_layers(3);
  o->set_scheme(v1::SCHEME_BF16);
  const LayerSchedule s = ScheduleFromSpec(spec);
  EXPECT_EQ(s.default_scheme, v1::SCHEME_INT4);
  ASSERT_EQ(s.overrides.size(), 1u);
  EXPECT_EQ(ResolveScheme(s, 3), v1::SCHEME_BF16);

  v1::TransferSpec other;
  other.add_layer_overrides()->set_scheme(v1::SCHEME_NF4);  // replaced
  ApplyScheduleToSpec(s, &other);
  EXPECT_EQ(other.scheme(), v1::SCHEME_INT4);
  ASSERT_EQ(other.layer_overrides_size(), 1);
  EXPECT_EQ(other.layer_overrides(0).SerializeAsString(),
            spec.layer_overrides(0).SerializeAsString());
}

TEST(LayerScheduleTest, LastLayersMatchesPrototypeFlag) {
  auto yaml = ParseLayerScheduleYaml(kPrototypeYaml);
  ASSERT_TRUE(yaml.ok());
  const LayerSchedule flag =
      LastLayersSchedule(v1::SCHEME_INT8, 4, v1::SCHEME_FP16, 28);
  EXPECT_EQ(ResolveAll(flag, 28), ResolveAll(*yaml, 28));
  EXPECT_TRUE(LastLayersSchedule(v1::SCHEME_INT8, 0, v1::SCHEME_FP16, 28)
                  .overrides.empty());
  EXPECT_EQ(ResolveAll(
                LastLayersSchedule(v1::SCHEME_INT4, 40, v1::SCHEME_INT8, 6), 6),
            std::vector<v1::Scheme>(6, v1::SCHEME_INT8));
}

TEST(LayerScheduleTest, LastAlignedLayerMap) {
  auto map = LastAlignedLayerMap(28, 24);
  ASSERT_TRUE(map.ok());
  ASSERT_EQ(map->size(), 28u);
  for (int t = 0; t <= 4; ++t) EXPECT_EQ((*map)[t], 0);
  for (int t = 4; t < 28; ++t) EXPECT_EQ((*map)[t], t - 4);
  auto same = LastAlignedLayerMap(3, 3);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*same, (std::vector<int>{0, 1, 2}));
  auto deeper_sharer = LastAlignedLayerMap(2, 5);
  ASSERT_TRUE(deeper_sharer.ok());
  EXPECT_EQ(*deeper_sharer, (std::vector<int>{3, 4}));
  EXPECT_EQ(LastAlignedLayerMap(0, 5).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(LastAlignedLayerMap(3, -1).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(LayerScheduleTest, ReceiverLast4Fp16BecomesSharer20To23) {
  auto receiver = ParseLayerScheduleYaml(kPrototypeYaml);
  ASSERT_TRUE(receiver.ok());
  auto map = LastAlignedLayerMap(28, 24);
  ASSERT_TRUE(map.ok());
  auto sharer = ReceiverToSharerSchedule(*receiver, *map, 24);
  ASSERT_TRUE(sharer.ok()) << sharer.status();
  EXPECT_EQ(sharer->default_scheme, v1::SCHEME_INT8);
  ASSERT_EQ(sharer->overrides.size(), 1u);
  EXPECT_TRUE(sharer->overrides[0].has_range());
  EXPECT_EQ(sharer->overrides[0].range().first(), 20u);
  EXPECT_EQ(sharer->overrides[0].range().last(), 23u);
  EXPECT_EQ(sharer->overrides[0].scheme(), v1::SCHEME_FP16);
  EXPECT_EQ(ResolveAll(*sharer, 24),
            Expected(24, v1::SCHEME_INT8, 20, 23, v1::SCHEME_FP16));
}

TEST(LayerScheduleTest, SharedSharerLayerGetsMostBits) {
  auto map = LastAlignedLayerMap(28, 24);  // receiver 0..4 -> sharer 0
  ASSERT_TRUE(map.ok());
  LayerSchedule receiver;
  receiver.default_scheme = v1::SCHEME_INT4;
  v1::LayerOverride o;
  o.add_layers(2);
  o.set_scheme(v1::SCHEME_INT8);
  receiver.overrides.push_back(o);
  auto sharer = ReceiverToSharerSchedule(receiver, *map, 24);
  ASSERT_TRUE(sharer.ok());
  EXPECT_EQ(sharer->default_scheme, v1::SCHEME_INT4);
  ASSERT_EQ(sharer->overrides.size(), 1u);
  EXPECT_EQ(sharer->overrides[0].layers_size(), 1);
  EXPECT_EQ(sharer->overrides[0].layers(0), 0u);
  EXPECT_EQ(ResolveScheme(*sharer, 0), v1::SCHEME_INT8);
  EXPECT_EQ(ResolveScheme(*sharer, 1), v1::SCHEME_INT4);

  // Tie in bits (INT4 vs NF4): the highest receiver layer wins.
  LayerSchedule tie;
  tie.default_scheme = v1::SCHEME_INT4;
  v1::LayerOverride nf4;
  nf4.add_layers(3);
  nf4.set_scheme(v1::SCHEME_NF4);
  tie.overrides.push_back(nf4);
  auto tied = ReceiverToSharerSchedule(tie, *map, 24);
  ASSERT_TRUE(tied.ok());
  EXPECT_EQ(ResolveScheme(*tied, 0), v1::SCHEME_INT4);  // receiver 4 wins
  nf4.clear_layers();
  nf4.add_layers(4);
  tie.overrides = {nf4};
  tied = ReceiverToSharerSchedule(tie, *map, 24);
  ASSERT_TRUE(tied.ok());
  EXPECT_EQ(ResolveScheme(*tied, 0), v1::SCHEME_NF4);
}

TEST(LayerScheduleTest, SharerDefaultIsMostCommonAndRunsAreCompacted) {
  // Identity map over 6 layers: fp16, fp16, int4, int4, int4, fp16.
  LayerSchedule receiver;
  receiver.default_scheme = v1::SCHEME_FP16;
  v1::LayerOverride o;
  o.mutable_range()->set_first(2);
  o.mutable_range()->set_last(4);
  o.set_scheme(v1::SCHEME_INT4);
  receiver.overrides.push_back(o);
  const std::vector<int> identity = {0, 1, 2, 3, 4, 5};
  auto sharer = ReceiverToSharerSchedule(receiver, identity, 6);
  ASSERT_TRUE(sharer.ok());
  EXPECT_EQ(sharer->default_scheme, v1::SCHEME_FP16);  // 3-3 tie: receiver's
  ASSERT_EQ(sharer->overrides.size(), 1u);
  EXPECT_EQ(sharer->overrides[0].range().first(), 2u);
  EXPECT_EQ(sharer->overrides[0].range().last(), 4u);
  EXPECT_EQ(ResolveAll(*sharer, 6), ResolveAll(receiver, 6));

  // Most common wins over the receiver default; runs are split by gaps.
  o.mutable_range()->set_first(1);
  o.mutable_range()->set_last(5);
  receiver.overrides = {o};
  const std::vector<int> gappy = {0, 1, 3, 4, 5};  // sharer 2 unread
  sharer = ReceiverToSharerSchedule(receiver, gappy, 7);
  ASSERT_TRUE(sharer.ok());
  EXPECT_EQ(sharer->default_scheme, v1::SCHEME_INT4);
  ASSERT_EQ(sharer->overrides.size(), 1u);
  ASSERT_EQ(sharer->overrides[0].layers_size(), 1);
  EXPECT_EQ(sharer->overrides[0].layers(0), 0u);
  EXPECT_EQ(sharer->overrides[0].scheme(), v1::SCHEME_FP16);

  // Mixed runs: int8 x2, fp16, int8, nf4 x2, int8 -> default int8.
  LayerSchedule mixed;
  mixed.default_scheme = v1::SCHEME_INT8;
  v1::LayerOverride a;
  a.add_layers(2);
  a.set_scheme(v1::SCHEME_FP16);
  v1::LayerOverride b;
  b.add_layers(4);
  b.add_layers(5);
  b.set_scheme(v1::SCHEME_NF4);
  mixed.overrides = {a, b};
  const std::vector<int> seven = {0, 1, 2, 3, 4, 5, 6};
  sharer = ReceiverToSharerSchedule(mixed, seven, 7);
  ASSERT_TRUE(sharer.ok());
  EXPECT_EQ(sharer->default_scheme, v1::SCHEME_INT8);
  ASSERT_EQ(sharer->overrides.size(), 2u);
  EXPECT_EQ(sharer->overrides[0].layers(0), 2u);
  EXPECT_EQ(sharer->overrides[1].range().first(), 4u);
  EXPECT_EQ(sharer->overrides[1].range().last(), 5u);
  EXPECT_EQ(ResolveAll(*sharer, 7), ResolveAll(mixed, 7));
}

TEST(LayerScheduleTest, ReceiverToSharerValidatesMap) {
  LayerSchedule receiver;
  const std::vector<int> bad = {0, 1, 3};
  EXPECT_EQ(ReceiverToSharerSchedule(receiver, bad, 3).status().code(),
            StatusCode::kInvalidArgument);
  const std::vector<int> negative = {0, -1};
  EXPECT_EQ(ReceiverToSharerSchedule(receiver, negative, 3).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ReceiverToSharerSchedule(receiver, {}, 0).status().code(),
            StatusCode::kInvalidArgument);
  auto empty = ReceiverToSharerSchedule(receiver, {}, 4);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->default_scheme, v1::SCHEME_INT8);
  EXPECT_TRUE(empty->overrides.empty());
}

}  // namespace
}  // namespace kvwire
