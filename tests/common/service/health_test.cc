// Readiness, the peer health check and its monitor (against a real
// GrpcServer), and the /proc/self reading behind the process_* metrics.
#include "common/service/health.h"

#include <unistd.h>

#include <atomic>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/service/channel.h"
#include "common/service/process_metrics.h"
#include "common/service/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/service/testing_util.h"

namespace kvwire {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ReadinessTest : public ::testing::Test {};

TEST_F(ReadinessTest, IsReadyOnlyWhenEveryConditionHolds) {
  Readiness readiness;
  EXPECT_TRUE(readiness.ready());
  readiness.Set("models", absl::UnavailableError("loading"));
  readiness.Set("sharer", absl::UnavailableError("connection refused"));
  const absl::Status st = readiness.Check();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(st.message(), HasSubstr("models: UNAVAILABLE: loading"));
  EXPECT_THAT(st.message(), HasSubstr("sharer: UNAVAILABLE: connection"));
  readiness.Set("models", absl::OkStatus());
  EXPECT_FALSE(readiness.ready());
  EXPECT_THAT(readiness.Check().message(), ::testing::Not(HasSubstr("models")));
  readiness.Set("sharer", absl::OkStatus());
  EXPECT_TRUE(readiness.ready());
}

TEST_F(ReadinessTest, ListenerHearsEachChangeOfVerdictOnce) {
  Readiness readiness;
  std::vector<bool> heard;
  readiness.Set("grpc", absl::UnavailableError("not yet"));
  readiness.SetListener([&heard](bool ready) { heard.push_back(ready); });
  readiness.Set("grpc", absl::UnavailableError("still not"));
  readiness.Set("grpc", absl::OkStatus());
  readiness.Set("grpc", absl::OkStatus());
  readiness.Set("grpc", absl::UnavailableError("draining"));
  readiness.SetListener(nullptr);
  readiness.Set("grpc", absl::OkStatus());
  EXPECT_THAT(heard, ElementsAre(false, true, false));
}

class PeerHealthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.security.allow_insecure = true;
    options.drain_timeout = absl::Seconds(1);
    auto server = GrpcServer::Start(options, {}, {"kvwire.test.Peer"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ChannelOptions channel_options;
    channel_options.security.allow_insecure = true;
    auto channel = CreateKvwireChannel(
        absl::StrCat("127.0.0.1:", server_->port()), channel_options);
    ASSERT_TRUE(channel.ok()) << channel.status();
    channel_ = *channel;
  }

  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(PeerHealthTest, CheckSaysServingNotServingOrUnreachable) {
  EXPECT_TRUE(
      CheckPeerServing(channel_, "kvwire.test.Peer", absl::Seconds(2)).ok());
  server_->SetServing("kvwire.test.Peer", false);
  EXPECT_EQ(
      CheckPeerServing(channel_, "kvwire.test.Peer", absl::Seconds(2)).code(),
      absl::StatusCode::kUnavailable);
  EXPECT_EQ(
      CheckPeerServing(channel_, "kvwire.test.Other", absl::Seconds(2)).code(),
      absl::StatusCode::kNotFound);
  server_->Shutdown();
  EXPECT_FALSE(
      CheckPeerServing(channel_, "kvwire.test.Peer", absl::Seconds(1)).ok());
}

TEST_F(PeerHealthTest, MonitorFollowsThePeerAndStopsWhenDestroyed) {
  Readiness readiness;
  PeerHealthMonitor::Options options;
  options.channel = channel_;
  options.service = "kvwire.test.Peer";
  options.condition = "peer";
  options.peer_label = "test-peer";
  options.interval = absl::Milliseconds(50);
  auto monitor = PeerHealthMonitor::Start(options, &readiness);
  // The first check ran before Start returned.
  EXPECT_TRUE(readiness.ready()) << readiness.Check();
  server_->SetServing("kvwire.test.Peer", false);
  EXPECT_TRUE(
      test_util::WaitFor([&] { return !readiness.ready(); }, absl::Seconds(5)));
  EXPECT_THAT(readiness.Check().message(), HasSubstr("peer: "));
  EXPECT_THAT(readiness.Check().message(), HasSubstr("test-peer"));
  server_->SetServing("kvwire.test.Peer", true);
  EXPECT_TRUE(
      test_util::WaitFor([&] { return readiness.ready(); }, absl::Seconds(5)));
  monitor.reset();
  server_->SetServing("kvwire.test.Peer", false);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_TRUE(readiness.ready());
}

class ProcessMetricsTest : public ::testing::Test {};

TEST_F(ProcessMetricsTest, ReadsThisProcessFromProc) {
  auto stats = ReadProcessStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->resident_bytes, 1 << 20);
  EXPECT_GE(stats->virtual_bytes, stats->resident_bytes);
  EXPECT_GE(stats->cpu_seconds, 0);
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(stats->start_time_seconds, now + 1);
  EXPECT_GT(stats->start_time_seconds, now - 3600);
  ASSERT_TRUE(stats->open_fds.has_value());
  ASSERT_TRUE(stats->max_fds.has_value());
  EXPECT_GE(*stats->open_fds, 3);  // stdin, stdout, stderr at least.
  EXPECT_LE(*stats->open_fds, *stats->max_fds);
  // One more descriptor is seen at the next reading.
  const int fd = ::dup(1);
  ASSERT_GE(fd, 0);
  auto after = ReadProcessStats();
  ::close(fd);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after->open_fds, *stats->open_fds + 1);
}

TEST_F(ProcessMetricsTest, CollectorExportsTheStandardNames) {
  const std::vector<prometheus::MetricFamily> families =
      ProcessCollector().Collect();
  std::vector<std::string> names;
  for (const auto& f : families) names.push_back(f.name);
  EXPECT_THAT(
      names,
      ElementsAre("process_cpu_seconds_total", "process_resident_memory_bytes",
                  "process_virtual_memory_bytes", "process_open_fds",
                  "process_max_fds", "process_start_time_seconds"));
  EXPECT_EQ(families.front().type, prometheus::MetricType::Counter);
}

}  // namespace
}  // namespace kvwire
