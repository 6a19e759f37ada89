#include "load_tests/stats.h"

#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"

namespace kvwire {
namespace load {
namespace {

TEST(NearestRankTest, MatchesTheDefinition) {
  // ceil(p/100 * n) - 1.
  EXPECT_EQ(NearestRankIndex(50, 10), 4);
  EXPECT_EQ(NearestRankIndex(90, 10), 8);
  EXPECT_EQ(NearestRankIndex(99, 10), 9);
  EXPECT_EQ(NearestRankIndex(100, 10), 9);
  EXPECT_EQ(NearestRankIndex(0, 10), 0);
  EXPECT_EQ(NearestRankIndex(50, 1), 0);
  EXPECT_EQ(NearestRankIndex(50, 0), 0);
  // Exact products must not round up through floating-point error.
  EXPECT_EQ(NearestRankIndex(99.9, 1000), 998);
  EXPECT_EQ(NearestRankIndex(99.9, 1001), 999);
  EXPECT_EQ(NearestRankIndex(99, 100), 98);
  EXPECT_EQ(NearestRankIndex(99, 101), 99);
}

TEST(LatencySamplesTest, PercentilesOfOneToHundred) {
  LatencySamples s;
  // Inserted out of order.
  for (int i = 100; i >= 1; --i) s.Add(i);
  EXPECT_EQ(s.count(), 100);
  EXPECT_DOUBLE_EQ(s.Percentile(50), 50);
  EXPECT_DOUBLE_EQ(s.Percentile(90), 90);
  EXPECT_DOUBLE_EQ(s.Percentile(99), 99);
  EXPECT_DOUBLE_EQ(s.Percentile(99.9), 100);
  EXPECT_DOUBLE_EQ(s.Max(), 100);
  EXPECT_DOUBLE_EQ(s.Min(), 1);
  EXPECT_DOUBLE_EQ(s.Mean(), 50.5);
}

TEST(LatencySamplesTest, OneSlowOutlierOnlyShowsInTheTail) {
  LatencySamples s;
  for (int i = 0; i < 999; ++i) s.Add(0.010);
  s.Add(2.0);
  EXPECT_DOUBLE_EQ(s.Percentile(50), 0.010);
  EXPECT_DOUBLE_EQ(s.Percentile(99), 0.010);
  EXPECT_DOUBLE_EQ(s.Percentile(99.9), 0.010);  // Rank 999 of 1000.
  EXPECT_DOUBLE_EQ(s.Max(), 2.0);
  s.Add(2.0);  // Now 2 of 1001 above: p99.9 is rank 1000.
  EXPECT_DOUBLE_EQ(s.Percentile(99.9), 2.0);
}

TEST(LatencySamplesTest, EmptyAndMerge) {
  LatencySamples a, b;
  EXPECT_EQ(a.Percentile(99), 0);
  EXPECT_EQ(a.Max(), 0);
  EXPECT_EQ(a.Mean(), 0);
  a.Add(3);
  b.Add(1);
  b.Add(2);
  EXPECT_DOUBLE_EQ(a.Percentile(50), 3);  // Sorted once...
  a.Merge(b);                             // ...then re-sorted after Merge.
  EXPECT_DOUBLE_EQ(a.Percentile(50), 2);
  EXPECT_DOUBLE_EQ(a.Min(), 1);
  EXPECT_EQ(a.count(), 3);
}

TEST(ArrivalScheduleTest, PoissonGapsHaveTheRightMeanAndSpread) {
  ArrivalSchedule schedule(50.0, /*seed=*/42);
  std::vector<double> gaps;
  double prev = 0;
  for (int i = 0; i < 20000; ++i) {
    const double t = schedule.Next();
    ASSERT_GT(t, prev);
    gaps.push_back(t - prev);
    prev = t;
  }
  const double mean =
      std::accumulate(gaps.begin(), gaps.end(), 0.0) / gaps.size();
  double var = 0;
  for (double g : gaps) var += (g - mean) * (g - mean);
  var /= gaps.size();
  // Exponential(50): mean 0.02, standard deviation 0.02.
  EXPECT_NEAR(mean, 0.02, 0.02 * 0.03);
  EXPECT_NEAR(std::sqrt(var), 0.02, 0.02 * 0.05);
  // Memorylessness check: P(gap > mean) = e^-1.
  int above = 0;
  for (double g : gaps) above += g > 0.02;
  EXPECT_NEAR(above / 20000.0, std::exp(-1.0), 0.015);
}

TEST(ArrivalScheduleTest, DeterministicForASeedAndUniformWhenAsked) {
  ArrivalSchedule a(10, 7), b(10, 7), c(10, 8);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const double x = a.Next();
    EXPECT_EQ(x, b.Next());
    differs |= x != c.Next();
  }
  EXPECT_TRUE(differs);
  ArrivalSchedule u(4, 1, /*uniform=*/true);
  EXPECT_DOUBLE_EQ(u.Next(), 0.25);
  EXPECT_DOUBLE_EQ(u.Next(), 0.5);
  EXPECT_DOUBLE_EQ(u.Next(), 0.75);
}

TEST(CorrectedLatencyTest, OpenLoopCountsFromTheIntendedTime) {
  // Due at 1.0, sent late at 1.5 (backlog), done at 1.6.
  EXPECT_DOUBLE_EQ(CorrectedLatency(1.0, 1.5, 1.6, /*open_loop=*/true), 0.6);
  // Closed loop: service time only.
  EXPECT_NEAR(CorrectedLatency(1.0, 1.5, 1.6, /*open_loop=*/false), 0.1, 1e-12);
  // Sent (a hair) early: never less than the service time.
  EXPECT_NEAR(CorrectedLatency(1.0, 0.999, 1.1, true), 0.101, 1e-12);
  EXPECT_EQ(CorrectedLatency(2.0, 2.0, 1.0, true), 0);
}

// The classic coordinated-omission example: a server that answers in 1 ms
// but stalls once for 1 s, probed at 100/s. A closed-loop tester records
// one slow sample; the intended-time measure records the whole backlog.
TEST(CorrectedLatencyTest, AStallShowsUpInTheCorrectedTail) {
  LatencySamples naive, corrected;
  int corrected_slow = 0, naive_slow = 0;
  double server_free = 0;
  for (int i = 0; i < 1000; ++i) {
    const double intended = i * 0.01;
    const double send = std::max(intended, server_free);
    const double service = (i == 100) ? 1.0 : 0.001;
    const double done = send + service;
    server_free = done;
    const double n = CorrectedLatency(intended, send, done, false);
    const double c = CorrectedLatency(intended, send, done, true);
    naive.Add(n);
    corrected.Add(c);
    naive_slow += n > 0.1;
    corrected_slow += c > 0.1;
  }
  EXPECT_LT(naive.Percentile(99), 0.002);
  EXPECT_GT(corrected.Percentile(99), 0.5);
  EXPECT_NEAR(corrected.Max(), 1.0, 1e-9);
  // Only the stalled call itself looks slow without the correction; with
  // it, every call that was due during the stall (about 90) does.
  EXPECT_EQ(naive_slow, 1);
  EXPECT_GE(corrected_slow, 85);
  EXPECT_LE(corrected_slow, 100);
}

TEST(ScenarioStatsTest, MergeAndCounts) {
  ScenarioStats a, b;
  a.ok = 3;
  a.errors["UNAVAILABLE"] = 1;
  a.wire_bytes = 100;
  b.ok = 2;
  b.errors["UNAVAILABLE"] = 2;
  b.errors["DEADLINE_EXCEEDED"] = 1;
  b.wire_bytes = 50;
  b.latency.Add(1);
  a.Merge(b);
  EXPECT_EQ(a.ok, 5);
  EXPECT_EQ(a.error_count(), 4);
  EXPECT_EQ(a.total(), 9);
  EXPECT_EQ(a.errors["UNAVAILABLE"], 3);
  EXPECT_EQ(a.wire_bytes, 150);
  EXPECT_EQ(a.latency.count(), 1);
}

TEST(PercentileLabelTest, Names) {
  EXPECT_EQ(PercentileLabel(50), "p50");
  EXPECT_EQ(PercentileLabel(99.9), "p99.9");
}

}  // namespace
}  // namespace load
}  // namespace kvwire
