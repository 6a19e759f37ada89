// The live page's data (bounds, per-second aggregation, JSON) and its HTTP
// endpoints beside /metrics.
#include "common/service/live_stats.h"

#include <string>

#include "common/service/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/service/testing_util.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr double kT0 = 1700000000;  // Some whole Unix second.

int StageIndex(absl::string_view name) {
  for (int i = 0; i < kNumLiveStages; ++i) {
    if (kLiveStageNames[i] == name) return i;
  }
  return -1;
}

LiveRequest Transfer(double time, const std::string& scheme, int64_t wire,
                     int64_t raw, int64_t serialized) {
  LiveRequest r;
  r.time = time;
  r.method = "AnswerStream";
  r.status = "OK";
  r.mode = "c2c";
  r.spec = scheme + " per_head sym";
  r.scheme = scheme;
  r.prompt_tokens = 64;
  r.tokens_sent = 32;
  r.layers_sent = 3;
  r.raw_bytes = raw;
  r.payload_bytes = serialized / 2;
  r.serialized_bytes = serialized;
  r.wire_bytes = wire;
  r.generated_tokens = 4;
  r.stage_seconds[StageIndex("transfer")] = 0.010;
  r.stage_seconds[StageIndex("total")] = 0.100;
  return r;
}

Json Parse(const LiveStats& live, double now) {
  return Json::parse(live.ToJson(now));
}

TEST(LiveStatsTest, EmptyJsonHasEveryField) {
  LiveStats live(/*recent=*/5, /*window_seconds=*/60);
  const Json j = Parse(live, kT0);
  EXPECT_EQ(j["now"].get<double>(), kT0);
  EXPECT_EQ(j["window_seconds"].get<int>(), 60);
  EXPECT_EQ(j["totals"]["requests"].get<int>(), 0);
  EXPECT_TRUE(j["seconds"].empty());
  EXPECT_TRUE(j["recent"].empty());
  EXPECT_TRUE(j["schemes"].empty());
  ASSERT_EQ(j["stages"].size(), kLiveStageNames.size());
  EXPECT_EQ(j["stages"][0].get<std::string>(), "queue");
}

TEST(LiveStatsTest, AggregatesPerSecondAndScheme) {
  LiveStats live(10, 60);
  live.Record(Transfer(kT0 + 0.1, "int4", 1000, 8000, 990));
  live.Record(Transfer(kT0 + 0.9, "int4", 3000, 24000, 2990));
  live.Record(Transfer(kT0 + 0.5, "bf16", 5000, 5000, 4990));
  live.Record(Transfer(kT0 + 2.2, "int8", 2000, 8000, 1990));
  const Json j = Parse(live, kT0 + 3);
  ASSERT_EQ(j["seconds"].size(), 2u);
  const Json& s0 = j["seconds"][0];
  EXPECT_EQ(s0["t"].get<int64_t>(), static_cast<int64_t>(kT0));
  EXPECT_EQ(s0["requests"].get<int>(), 3);
  EXPECT_EQ(s0["transfers"].get<int>(), 3);
  EXPECT_EQ(s0["wire_bytes"].get<int64_t>(), 9000);
  EXPECT_EQ(s0["transfer_wire_bytes"].get<int64_t>(), 9000);
  EXPECT_EQ(s0["raw_bytes"].get<int64_t>(), 37000);
  EXPECT_EQ(s0["serialized_bytes"].get<int64_t>(), 8970);
  EXPECT_EQ(s0["wire_by_scheme"]["int4"].get<int64_t>(), 4000);
  EXPECT_EQ(s0["wire_by_scheme"]["bf16"].get<int64_t>(), 5000);
  EXPECT_EQ(s0["streams_by_scheme"]["int4"].get<int>(), 2);
  EXPECT_DOUBLE_EQ(s0["stage_sum"]["transfer"].get<double>(), 0.030);
  EXPECT_EQ(s0["stage_count"]["transfer"].get<int>(), 3);
  EXPECT_FALSE(s0["stage_count"].contains("fuse"));  // Never ran.
  EXPECT_EQ(j["seconds"][1]["t"].get<int64_t>(), static_cast<int64_t>(kT0) + 2);
  EXPECT_EQ(j["schemes"], Json({"bf16", "int4", "int8"}));
  EXPECT_EQ(j["totals"]["requests"].get<int>(), 4);
  EXPECT_EQ(j["totals"]["wire_bytes"].get<int64_t>(), 11000);
  // Newest (by arrival) first.
  ASSERT_EQ(j["recent"].size(), 4u);
  EXPECT_EQ(j["recent"][0]["scheme"].get<std::string>(), "int8");
  EXPECT_EQ(j["recent"][0]["spec"].get<std::string>(), "int8 per_head sym");
  EXPECT_DOUBLE_EQ(j["recent"][0]["stages"]["total"].get<double>(), 0.1);
  EXPECT_FALSE(j["recent"][0]["stages"].contains("fuse"));
}

TEST(LiveStatsTest, FailuresAndPartialStreams) {
  LiveStats live(10, 60);
  LiveRequest partial;  // A fallback after half a stream.
  partial.time = kT0;
  partial.status = "OK";
  partial.fell_back = true;
  partial.fallback_reason = "UNAVAILABLE: sharer killed";
  partial.serialized_bytes = 495;
  partial.wire_bytes = 500;
  live.Record(partial);
  LiveRequest error;
  error.time = kT0;
  error.status = "DEADLINE_EXCEEDED";
  live.Record(error);
  const Json j = Parse(live, kT0);
  ASSERT_EQ(j["seconds"].size(), 1u);
  const Json& s = j["seconds"][0];
  EXPECT_EQ(s["requests"].get<int>(), 2);
  EXPECT_EQ(s["errors"].get<int>(), 1);
  EXPECT_EQ(s["fallbacks"].get<int>(), 1);
  EXPECT_EQ(s["transfers"].get<int>(), 0);
  EXPECT_EQ(s["wire_bytes"].get<int64_t>(), 500);
  EXPECT_EQ(s["transfer_wire_bytes"].get<int64_t>(), 0);
  EXPECT_EQ(s["serialized_bytes"].get<int64_t>(), 0);  // Complete only.
  EXPECT_EQ(s["wire_by_scheme"]["partial"].get<int64_t>(), 500);
  EXPECT_EQ(j["totals"]["errors"].get<int>(), 1);
  EXPECT_EQ(j["totals"]["fallbacks"].get<int>(), 1);
}

TEST(LiveStatsTest, RecentListIsBounded) {
  LiveStats live(/*recent=*/3, 60);
  for (int i = 0; i < 10; ++i) {
    live.Record(Transfer(kT0 + i * 0.1, "int4", 100 + i, 800, 99));
  }
  EXPECT_EQ(live.recent_size(), 3u);
  const Json j = Parse(live, kT0 + 1);
  ASSERT_EQ(j["recent"].size(), 3u);
  EXPECT_EQ(j["recent"][0]["wire_bytes"].get<int>(), 109);
  EXPECT_EQ(j["recent"][2]["wire_bytes"].get<int>(), 107);
  EXPECT_EQ(j["totals"]["requests"].get<int>(), 10);
}

TEST(LiveStatsTest, WindowDropsOldSecondsAndReusesBuckets) {
  LiveStats live(5, /*window_seconds=*/10);
  live.Record(Transfer(kT0, "int4", 100, 800, 99));
  live.Record(Transfer(kT0 + 5, "int4", 200, 800, 99));
  // Outside the window at kT0 + 12: only the second one is listed.
  Json j = Parse(live, kT0 + 12);
  ASSERT_EQ(j["seconds"].size(), 1u);
  EXPECT_EQ(j["seconds"][0]["wire_bytes"].get<int>(), 200);
  // Not yet happened at kT0 + 2 (a clock step back): only the first.
  j = Parse(live, kT0 + 2);
  ASSERT_EQ(j["seconds"].size(), 1u);
  EXPECT_EQ(j["seconds"][0]["wire_bytes"].get<int>(), 100);
  // kT0 + 10 lands on kT0's bucket and replaces it.
  live.Record(Transfer(kT0 + 10, "int8", 300, 800, 99));
  j = Parse(live, kT0 + 10);
  ASSERT_EQ(j["seconds"].size(), 2u);
  EXPECT_EQ(j["seconds"][0]["wire_bytes"].get<int>(), 200);
  EXPECT_EQ(j["seconds"][1]["wire_bytes"].get<int>(), 300);
  EXPECT_FALSE(j["seconds"][1]["wire_by_scheme"].contains("int4"));
  // A request older than the window behind the newest second: recent list
  // and totals only, never an aggregate bucket.
  live.Record(Transfer(kT0 + 0.5, "bf16", 400, 800, 99));
  j = Parse(live, kT0 + 10);
  ASSERT_EQ(j["seconds"].size(), 2u);
  EXPECT_EQ(j["recent"][0]["scheme"].get<std::string>(), "bf16");
  EXPECT_EQ(j["totals"]["wire_bytes"].get<int>(), 1000);
}

TEST(LiveStatsTest, SchemesPerSecondAreBounded) {
  LiveStats live(5, 60);
  for (int i = 0; i < LiveStats::kMaxSchemesPerSecond + 5; ++i) {
    live.Record(Transfer(kT0, "s" + std::to_string(i), 10, 80, 9));
  }
  const Json j = Parse(live, kT0);
  const Json& by_scheme = j["seconds"][0]["wire_by_scheme"];
  EXPECT_EQ(by_scheme.size(),
            static_cast<size_t>(LiveStats::kMaxSchemesPerSecond));
  int64_t total = 0;
  for (const auto& [name, bytes] : by_scheme.items()) {
    total += bytes.get<int64_t>();
  }
  EXPECT_EQ(total, 10 * (LiveStats::kMaxSchemesPerSecond + 5));
  EXPECT_EQ(by_scheme["other"].get<int64_t>(), 10 * 6);
}

TEST(LiveStatsTest, JsonEscapesStrings) {
  LiveStats live(5, 60);
  LiveRequest r = Transfer(kT0, "int4", 10, 80, 9);
  r.fallback_reason = "quote \" backslash \\ newline \n bad \xff byte";
  live.Record(r);
  const Json j = Parse(live, kT0);  // Throws on malformed JSON.
  EXPECT_THAT(j["recent"][0]["fallback_reason"].get<std::string>(),
              HasSubstr("quote \" backslash \\ newline \n bad "));
}

TEST(LiveStatsTest, ServedBesideMetrics) {
  Metrics metrics;
  metrics.Live().Record(Transfer(kT0, "int4", 1234, 8000, 1200));
  auto server =
      MetricsServer::Start("127.0.0.1:0", metrics.registry(), &metrics.Live());
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  auto page = test_util::HttpGet("127.0.0.1", port, "/ui/live");
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_THAT(*page, HasSubstr("<canvas id=\"chart-wire\""));
  EXPECT_THAT(*page, HasSubstr("\"/ui/live/data.json\""));
  // Self-contained: no external scripts, styles or images.
  EXPECT_THAT(*page, ::testing::Not(HasSubstr("src=\"http")));
  EXPECT_THAT(*page, ::testing::Not(HasSubstr("href=\"http")));
  EXPECT_EQ(*page, std::string(LivePageHtml()));
  auto data = test_util::HttpGet("127.0.0.1", port, "/ui/live/data.json");
  ASSERT_TRUE(data.ok()) << data.status();
  const Json j = Json::parse(*data);
  EXPECT_EQ(j["totals"]["wire_bytes"].get<int>(), 1234);
  EXPECT_EQ(j["recent"][0]["scheme"].get<std::string>(), "int4");
  // /metrics is still the Exposer's.
  auto text = test_util::HttpGet("127.0.0.1", port, "/metrics");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_THAT(*text, HasSubstr("exposer_"));
  EXPECT_FALSE(test_util::HttpGet("127.0.0.1", port, "/live/other").ok());
}

TEST(LiveStatsTest, NoPageWithoutLiveStats) {
  Metrics metrics;
  auto server = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_FALSE(
      test_util::HttpGet("127.0.0.1", (*server)->port(), "/live").ok());
  EXPECT_TRUE(
      test_util::HttpGet("127.0.0.1", (*server)->port(), "/metrics").ok());
}

}  // namespace
}  // namespace kvwire
