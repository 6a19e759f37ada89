// The metrics registry, its handles and the HTTP exposer.
#include "common/service/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec/scheme_table.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/service/testing_util.h"

namespace kvwire {
namespace {

using test_util::MetricValue;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(MetricsTest, EveryFamilyIsRegistered) {
  Metrics metrics;
  metrics.Rpc(ServiceRole::kSharer, "Share");
  metrics.Queue(ServiceRole::kSharer);
  metrics.Transfer(ServiceRole::kSharer);
  metrics.Stage(ServiceRole::kReceiver, kStageFuse);
  metrics.TimeToFirstToken(ServiceRole::kReceiver);
  metrics.TimePerOutputToken(ServiceRole::kReceiver);
  metrics.GeneratedTokens(ServiceRole::kReceiver);
  metrics.Fallbacks(ServiceRole::kReceiver, "UNAVAILABLE");
  metrics.SetBuildInfo(ServiceRole::kSharer, "0.1.0");
  metrics.SetModelInfo(ServiceRole::kSharer, "Qwen/Qwen2.5-0.5B-Instruct",
                       "abc123", "bf16", "cuda:0");
  const std::string text = metrics.SerializeText();
  for (const char* name : {"kvwire_build_info",
                           "kvwire_model_info",
                           "kvwire_requests_total",
                           "kvwire_requests_in_flight",
                           "kvwire_request_duration_seconds",
                           "kvwire_queue_depth",
                           "kvwire_queue_capacity",
                           "kvwire_workers",
                           "kvwire_workers_busy",
                           "kvwire_queue_wait_seconds",
                           "kvwire_queue_rejected_total",
                           "kvwire_transfers_total",
                           "kvwire_kv_raw_bytes_total",
                           "kvwire_kv_payload_bytes_total",
                           "kvwire_kv_serialized_bytes_total",
                           "kvwire_kv_wire_bytes_total",
                           "kvwire_kv_compression_ratio",
                           "kvwire_prompt_tokens_total",
                           "kvwire_kv_tokens_selected_total",
                           "kvwire_kv_tokens_selected_ratio",
                           "kvwire_stage_duration_seconds",
                           "kvwire_time_to_first_token_seconds",
                           "kvwire_time_per_output_token_seconds",
                           "kvwire_generated_tokens_total",
                           "kvwire_fallbacks_total"}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + name + " ")) << name;
  }
  // Replaced by kvwire_time_per_output_token_seconds.
  EXPECT_THAT(text, Not(HasSubstr("kvwire_decode_tokens_per_second")));
  EXPECT_EQ(MetricValue(text, "kvwire_model_info",
                        {{"role", "sharer"},
                         {"model", "Qwen/Qwen2.5-0.5B-Instruct"},
                         {"fingerprint", "abc123"},
                         {"dtype", "bf16"},
                         {"device", "cuda:0"}}),
            1);
}

TEST(MetricsTest, TimePerOutputTokenIsAHistogramInSeconds) {
  Metrics metrics;
  prometheus::Histogram& tpot =
      metrics.TimePerOutputToken(ServiceRole::kReceiver);
  EXPECT_EQ(&tpot, &metrics.TimePerOutputToken(ServiceRole::kReceiver));
  tpot.Observe(0.004);
  tpot.Observe(0.030);
  const std::string text = metrics.SerializeText();
  const std::map<std::string, std::string> receiver = {{"role", "receiver"}};
  EXPECT_EQ(
      MetricValue(text, "kvwire_time_per_output_token_seconds_count", receiver),
      2);
  EXPECT_NEAR(
      *MetricValue(text, "kvwire_time_per_output_token_seconds_sum", receiver),
      0.034, 1e-9);
  EXPECT_EQ(MetricValue(text, "kvwire_time_per_output_token_seconds_bucket",
                        {{"role", "receiver"}, {"le", "0.005"}}),
            1);
  EXPECT_THAT(text, Not(HasSubstr("kvwire_decode_tokens_per_second")));
}

TEST(MetricsTest, RpcHandleCountsByCodeAndTracksInFlight) {
  Metrics metrics;
  RpcMetrics& rpc = metrics.Rpc(ServiceRole::kSharer, "Share");
  EXPECT_EQ(&rpc, &metrics.Rpc(ServiceRole::kSharer, "Share"));
  rpc.Started();
  rpc.Started();
  rpc.Finished(absl::StatusCode::kOk, 0.01);
  std::string text = metrics.SerializeText();
  EXPECT_EQ(MetricValue(text, "kvwire_requests_in_flight",
                        {{"role", "sharer"}, {"method", "Share"}}),
            1);
  rpc.Finished(absl::StatusCode::kResourceExhausted, 0.02);
  text = metrics.SerializeText();
  EXPECT_EQ(
      MetricValue(text, "kvwire_requests_total",
                  {{"role", "sharer"}, {"method", "Share"}, {"code", "OK"}}),
      1);
  EXPECT_EQ(MetricValue(text, "kvwire_requests_total",
                        {{"role", "sharer"},
                         {"method", "Share"},
                         {"code", "RESOURCE_EXHAUSTED"}}),
            1);
  EXPECT_EQ(MetricValue(text, "kvwire_requests_in_flight",
                        {{"role", "sharer"}, {"method", "Share"}}),
            0);
  EXPECT_EQ(MetricValue(text, "kvwire_request_duration_seconds_count",
                        {{"role", "sharer"}, {"method", "Share"}}),
            2);
}

TEST(MetricsTest, TransferRecordFillsBytesByScheme) {
  Metrics metrics;
  TransferMetrics& t = metrics.Transfer(ServiceRole::kSharer);
  TransferRecord r;
  r.scheme = "int4";
  r.raw_bytes = 4000;
  r.payload_bytes = 900;
  r.serialized_bytes = 1000;
  r.wire_bytes = 1050;
  r.prompt_tokens = 100;
  r.selected_tokens = 50;
  t.Record(r);
  r.scheme = "bogus";
  t.Record(r);
  const std::string text = metrics.SerializeText();
  const std::map<std::string, std::string> int4{{"role", "sharer"},
                                                {"scheme", "int4"}};
  EXPECT_EQ(MetricValue(text, "kvwire_kv_raw_bytes_total", int4), 4000);
  EXPECT_EQ(MetricValue(text, "kvwire_kv_payload_bytes_total", int4), 900);
  EXPECT_EQ(MetricValue(text, "kvwire_kv_serialized_bytes_total", int4), 1000);
  EXPECT_EQ(MetricValue(text, "kvwire_kv_wire_bytes_total", int4), 1050);
  EXPECT_EQ(MetricValue(text, "kvwire_transfers_total", int4), 1);
  EXPECT_EQ(MetricValue(text, "kvwire_kv_compression_ratio_sum", int4), 4);
  EXPECT_EQ(MetricValue(text, "kvwire_transfers_total",
                        {{"role", "sharer"}, {"scheme", "other"}}),
            1);
  EXPECT_EQ(
      MetricValue(text, "kvwire_prompt_tokens_total", {{"role", "sharer"}}),
      200);
  EXPECT_EQ(MetricValue(text, "kvwire_kv_tokens_selected_ratio_sum",
                        {{"role", "sharer"}}),
            1.0);
}

// The label set comes from the scheme table (common/codec/scheme_table.h):
// every row is counted under its own name, never as "other".
TEST(MetricsTest, EverySchemeTableRowHasItsOwnLabel) {
  Metrics metrics;
  TransferMetrics& t = metrics.Transfer(ServiceRole::kReceiver);
  for (const SchemeInfo& row : kSchemeTable) {
    TransferRecord r;
    r.scheme = row.name;
    t.Record(r);
  }
  const std::string text = metrics.SerializeText();
  for (const SchemeInfo& row : kSchemeTable) {
    EXPECT_EQ(MetricValue(text, "kvwire_transfers_total",
                          {{"role", "receiver"}, {"scheme", row.name}}),
              1)
        << row.name;
  }
  EXPECT_EQ(MetricValue(text, "kvwire_transfers_total",
                        {{"role", "receiver"}, {"scheme", "other"}}),
            0);
}

TEST(MetricsTest, QueueAndReceiverHandles) {
  Metrics metrics;
  QueueMetrics& q = metrics.Queue(ServiceRole::kReceiver);
  q.SetCapacity(2, 8);
  q.SetDepth(3);
  q.SetBusyWorkers(2);
  q.ObserveWait(0.5);
  q.CountRejected();
  q.ObserveBatch(4);
  metrics.Fallbacks(ServiceRole::kReceiver, "DEADLINE_EXCEEDED").Increment();
  metrics.Stage(ServiceRole::kReceiver, kStageFuse).Observe(0.003);
  const std::string text = metrics.SerializeText();
  const std::map<std::string, std::string> role{{"role", "receiver"}};
  EXPECT_EQ(MetricValue(text, "kvwire_queue_depth", role), 3);
  EXPECT_EQ(MetricValue(text, "kvwire_workers", role), 2);
  EXPECT_EQ(MetricValue(text, "kvwire_queue_capacity", role), 8);
  EXPECT_EQ(MetricValue(text, "kvwire_workers_busy", role), 2);
  EXPECT_EQ(MetricValue(text, "kvwire_queue_rejected_total", role), 1);
  EXPECT_EQ(MetricValue(text, "kvwire_queue_wait_seconds_count", role), 1);
  EXPECT_EQ(MetricValue(text, "kvwire_batch_size_sum", role), 4);
  EXPECT_EQ(
      MetricValue(text, "kvwire_fallbacks_total",
                  {{"role", "receiver"}, {"reason", "DEADLINE_EXCEEDED"}}),
      1);
  EXPECT_EQ(
      MetricValue(text, "kvwire_stage_duration_seconds_bucket",
                  {{"role", "receiver"}, {"stage", "fuse"}, {"le", "0.005"}}),
      1);
}

TEST(MetricsTest, ExposerServesTextOverHttp) {
  Metrics metrics;
  metrics.Rpc(ServiceRole::kSharer, "GetInfo").Started();
  auto server = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  auto body = test_util::HttpGet("127.0.0.1", (*server)->port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(MetricValue(*body, "kvwire_requests_in_flight",
                        {{"role", "sharer"}, {"method", "GetInfo"}}),
            1);
}

class MetricsPortTest : public ::testing::Test {
 protected:
  void Start(const MetricsSecurityOptions& security = {}) {
    auto server = MetricsServer::Start("127.0.0.1:0", metrics_.registry(),
                                       &metrics_.Live(), security, &readiness_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  absl::StatusOr<test_util::HttpResponse> Request(
      const std::string& path, const std::string& method = "GET",
      const std::string& headers = "") {
    return test_util::HttpRequest("127.0.0.1", server_->port(), method, path,
                                  absl::Seconds(5), headers);
  }

  Metrics metrics_;
  Readiness readiness_;
  std::unique_ptr<MetricsServer> server_;
};

TEST_F(MetricsPortTest, ReadyzIs503UntilEveryConditionHoldsAndHealthzIs200) {
  readiness_.Set(kReadyModels, absl::UnavailableError("loading the model"));
  ASSERT_NO_FATAL_FAILURE(Start());
  auto healthz = Request("/healthz");
  ASSERT_TRUE(healthz.ok()) << healthz.status();
  EXPECT_EQ(healthz->status, 200);
  EXPECT_EQ(healthz->body, "ok\n");
  auto readyz = Request("/readyz");
  ASSERT_TRUE(readyz.ok()) << readyz.status();
  EXPECT_EQ(readyz->status, 503);
  EXPECT_THAT(readyz->body, HasSubstr("models: UNAVAILABLE: loading"));
  EXPECT_EQ(readyz->headers["cache-control"], "no-store");

  readiness_.Set(kReadyModels, absl::OkStatus());
  readyz = Request("/readyz");
  ASSERT_TRUE(readyz.ok()) << readyz.status();
  EXPECT_EQ(readyz->status, 200);
  EXPECT_EQ(readyz->body, "ready\n");
  auto head = Request("/readyz", "HEAD");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->body, "");

  readiness_.Set(kReadySharer, absl::UnavailableError("127.0.0.1:1 down"));
  readyz = Request("/readyz");
  ASSERT_TRUE(readyz.ok()) << readyz.status();
  EXPECT_EQ(readyz->status, 503);
  EXPECT_THAT(readyz->body, HasSubstr("sharer: UNAVAILABLE: 127.0.0.1:1 down"));
  // Liveness does not depend on readiness.
  EXPECT_EQ(Request("/healthz")->status, 200);
  EXPECT_EQ(Request("/readyz", "POST")->status, 405);
}

TEST_F(MetricsPortTest, ProbesNeedNoTokenWhereEverythingElseDoes) {
  MetricsSecurityOptions security;
  security.auth_token = "s3cret";
  ASSERT_NO_FATAL_FAILURE(Start(security));
  EXPECT_EQ(Request("/healthz")->status, 200);
  EXPECT_EQ(Request("/readyz")->status, 200);
  EXPECT_EQ(Request("/metrics")->status, 401);
  EXPECT_EQ(Request("/ui/live")->status, 401);
  EXPECT_EQ(Request("/live")->status, 401);
}

TEST_F(MetricsPortTest, OldLivePathsRedirectToUiLive) {
  ASSERT_NO_FATAL_FAILURE(Start());
  for (const auto& [old_path, new_path] :
       std::vector<std::pair<std::string, std::string>>{
           {"/live", "/ui/live"},
           {"/live/", "/ui/live"},
           {"/live/data.json", "/ui/live/data.json"},
           {"/live/data.json?x=1", "/ui/live/data.json?x=1"}}) {
    auto moved = Request(old_path);
    ASSERT_TRUE(moved.ok()) << old_path << ": " << moved.status();
    EXPECT_EQ(moved->status, 301) << old_path;
    EXPECT_EQ(moved->headers["location"], new_path) << old_path;
    auto followed = Request(moved->headers["location"]);
    ASSERT_TRUE(followed.ok()) << new_path << ": " << followed.status();
    EXPECT_EQ(followed->status, 200) << new_path;
  }
  auto page = Request("/ui/live");
  ASSERT_TRUE(page.ok());
  EXPECT_THAT(page->headers["content-type"], HasSubstr("text/html"));
  auto data = Request("/ui/live/data.json");
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(data->headers["content-type"], "application/json");
  EXPECT_THAT(data->body, HasSubstr("\"window_seconds\""));
}

TEST_F(MetricsPortTest, ServesProcessMetricsBesideTheRegistry) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto body = test_util::HttpGet("127.0.0.1", server_->port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_THAT(*body, HasSubstr("# TYPE process_cpu_seconds_total counter"));
  for (const char* name :
       {"process_resident_memory_bytes", "process_virtual_memory_bytes",
        "process_open_fds", "process_max_fds", "process_start_time_seconds"}) {
    EXPECT_THAT(*body, HasSubstr(absl::StrCat("# TYPE ", name, " gauge")))
        << name;
    const auto value = MetricValue(*body, name, {});
    ASSERT_TRUE(value.has_value()) << name;
    EXPECT_GT(*value, 0) << name;
  }
  EXPECT_GE(*MetricValue(*body, "process_cpu_seconds_total", {}), 0);
}

TEST_F(MetricsPortTest, WithoutALivePageTheOldPathsAreNotFound) {
  auto server = MetricsServer::Start("127.0.0.1:0", metrics_.registry());
  ASSERT_TRUE(server.ok()) << server.status();
  auto moved =
      test_util::HttpRequest("127.0.0.1", (*server)->port(), "GET", "/live");
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->status, 404);
  // Without a Readiness, ready as soon as it answers.
  EXPECT_EQ(
      test_util::HttpRequest("127.0.0.1", (*server)->port(), "GET", "/readyz")
          ->status,
      200);
}

// A TCP connection to 127.0.0.1:port that never sends a byte; -1 on error.
int IdleConnection(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

TEST(MetricsTest, IdleConnectionsDoNotStarveScrapes) {
  Metrics metrics;
  auto server = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(server.ok()) << server.status();
  // A few idle connections (they used to take both server threads for 30 s)
  // leave threads to scrape with at once.
  std::vector<int> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(IdleConnection((*server)->port()));
  auto body = test_util::HttpGet("127.0.0.1", (*server)->port(), "/metrics",
                                 absl::Seconds(1));
  EXPECT_TRUE(body.ok()) << body.status();
  // More idle connections than threads are timed out, so a scrape still
  // gets through within the request timeout.
  for (int i = 0; i < kMetricsServerThreads + 4; ++i) {
    idle.push_back(IdleConnection((*server)->port()));
  }
  const auto start = std::chrono::steady_clock::now();
  body = test_util::HttpGet("127.0.0.1", (*server)->port(), "/metrics",
                            absl::Seconds(10));
  EXPECT_TRUE(body.ok()) << body.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start,
            std::chrono::milliseconds(2 * kMetricsRequestTimeoutMs + 1000));
  for (int fd : idle) {
    if (fd >= 0) ::close(fd);
  }
}

TEST(MetricsTest, BearerTokenGuardsEveryPathOfTheMetricsPort) {
  Metrics metrics;
  MetricsSecurityOptions security;
  security.auth_token = "s3cret";
  auto server = MetricsServer::Start("127.0.0.1:0", metrics.registry(),
                                     &metrics.Live(), security);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  for (const std::string path :
       {"/metrics", "/ui/live", "/ui/live/data.json"}) {
    const auto anonymous = test_util::HttpGet("127.0.0.1", port, path);
    EXPECT_THAT(anonymous.status().message(), HasSubstr("401")) << path;
    const auto wrong =
        test_util::HttpGet("127.0.0.1", port, path, absl::Seconds(5),
                           "Authorization: Bearer s3cre\r\n");
    EXPECT_THAT(wrong.status().message(), HasSubstr("401")) << path;
    const auto allowed =
        test_util::HttpGet("127.0.0.1", port, path, absl::Seconds(5),
                           "Authorization: Bearer s3cret\r\n");
    EXPECT_TRUE(allowed.ok()) << path << ": " << allowed.status();
  }
}

// GET https://127.0.0.1:port/path with the openssl command-line client,
// verifying the server against `ca`; the whole HTTP response.
std::string HttpsGet(int port, const std::string& path, const std::string& ca) {
  const std::string command = absl::StrCat(
      "printf 'GET ", path,
      " HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' | "
      "timeout 10 openssl s_client -quiet -verify_return_error -CAfile ",
      ca, " -servername localhost -connect 127.0.0.1:", port, " 2>&1");
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    out.append(buffer, n);
  }
  ::pclose(pipe);
  return out;
}

TEST(MetricsTest, TlsMetricsPortSpeaksHttpsOnly) {
  auto pki = test_util::MakeTestPki(test_util::MakeTempDir("metrics-pki"));
  ASSERT_TRUE(pki.ok()) << pki.status();
  Metrics metrics;
  metrics.Rpc(ServiceRole::kSharer, "GetInfo").Started();
  MetricsSecurityOptions security;
  security.tls_cert_path = pki->server_cert;
  security.tls_key_path = pki->server_key;
  auto server = MetricsServer::Start("127.0.0.1:0", metrics.registry(), nullptr,
                                     security);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string response =
      HttpsGet((*server)->port(), "/metrics", pki->ca_cert);
  EXPECT_THAT(response, HasSubstr("200 OK"));
  EXPECT_THAT(response, HasSubstr("kvwire_requests_in_flight"));
  // Plain HTTP gets no metrics.
  EXPECT_FALSE(
      test_util::HttpGet("127.0.0.1", (*server)->port(), "/metrics").ok());

  // A key of another certificate is refused at start, naming the files.
  security.tls_key_path = pki->client_key;
  const auto mismatched = MetricsServer::Start(
      "127.0.0.1:0", metrics.registry(), nullptr, security);
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mismatched.status().message(), HasSubstr("does not match"));
  security.tls_key_path.clear();
  EXPECT_EQ(
      MetricsServer::Start("127.0.0.1:0", metrics.registry(), nullptr, security)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(MetricsTest, ExposerReportsBadAddress) {
  Metrics metrics;
  EXPECT_EQ(MetricsServer::Start("", metrics.registry()).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto first = MetricsServer::Start("127.0.0.1:0", metrics.registry());
  ASSERT_TRUE(first.ok());
  const std::string taken = "127.0.0.1:" + std::to_string((*first)->port());
  EXPECT_EQ(MetricsServer::Start(taken, metrics.registry()).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(MetricsTest, MetricValueParsesLabelsExactly) {
  const std::string text =
      "# TYPE a counter\n"
      "a{x=\"1\",y=\"q\\\"z\"} 5\n"
      "a{x=\"1\"} 7\n"
      "ab 3\n"
      "b 2.5\n";
  EXPECT_EQ(MetricValue(text, "a", {{"x", "1"}, {"y", "q\"z"}}), 5);
  EXPECT_EQ(MetricValue(text, "a", {{"x", "1"}}), 7);
  EXPECT_EQ(MetricValue(text, "b", {}), 2.5);
  EXPECT_EQ(MetricValue(text, "a", {}), std::nullopt);
  EXPECT_EQ(MetricValue(text, "c", {}), std::nullopt);
}

}  // namespace
}  // namespace kvwire
