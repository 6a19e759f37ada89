// kvwire-load's engine against in-process fake Sharer and Receiver services
// on loopback: byte accounting, request bounds, error counting, the
// coordinated-omission correction under a stall, and the reports.
#include "load_tests/load_runner.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/service/channel.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "load_tests/report.h"
#include "load_tests/tests/fake_openai_server.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace load {
namespace {

class FakeSharer final : public v1::Sharer::Service {
 public:
  grpc::Status GetInfo(grpc::ServerContext*, const v1::GetInfoRequest*,
                       v1::SharerInfo* info) override {
    info->mutable_model()->set_vocab_size(300);
    info->mutable_model()->set_name("fake");
    info->set_max_prompt_tokens(4096);
    return grpc::Status::OK;
  }

  grpc::Status Share(grpc::ServerContext*, const v1::ShareRequest* request,
                     grpc::ServerWriter<v1::KvChunk>* writer) override {
    const int n = calls_.fetch_add(1);
    for (uint32_t id : request->token_ids()) {
      if (id >= 300) return grpc::Status(grpc::INVALID_ARGUMENT, "bad id");
    }
    if (fail_every_ > 0 && n % fail_every_ == fail_every_ - 1) {
      return grpc::Status(grpc::UNAVAILABLE, "injected");
    }
    if (n == stall_call_) absl::SleepFor(stall_);
    int64_t serialized = 0, messages = 0, payload = 0;
    auto send = [&](const v1::KvChunk& c) {
      serialized += static_cast<int64_t>(c.ByteSizeLong());
      ++messages;
      writer->Write(c);
    };
    v1::KvChunk header;
    header.mutable_header()->set_token_count(request->token_ids_size());
    send(header);
    // Bytes proportional to the prompt: 4 per token, in 3 blocks.
    for (int b = 0; b < 3; ++b) {
      v1::KvChunk block;
      block.mutable_block()->set_layer(b);
      block.mutable_block()->set_values(
          std::string(4 * request->token_ids_size() + b, 'x'));
      payload += block.block().values().size();
      send(block);
    }
    v1::KvChunk trailer;
    v1::TransferStats* stats = trailer.mutable_trailer()->mutable_stats();
    stats->set_payload_bytes(payload);
    stats->set_raw_bytes(payload * 2);
    stats->set_serialized_bytes(serialized);
    stats->set_selected_tokens(3 * request->token_ids_size());
    send(trailer);
    wire_bytes_ += serialized + 5 * messages;
    return grpc::Status::OK;
  }

  std::atomic<int> calls_{0};
  std::atomic<int64_t> wire_bytes_{0};
  int fail_every_ = 0;
  int stall_call_ = -1;
  absl::Duration stall_ = absl::ZeroDuration();
};

class FakeReceiver final : public v1::Receiver::Service {
 public:
  static void Fill(const v1::AnswerRequest& request, v1::AnswerResponse* r) {
    r->set_request_id(request.request_id());
    r->set_text("ok");
    r->add_token_ids(1);
    r->add_token_ids(2);
    r->mutable_transfer()->set_payload_bytes(1000);
    r->mutable_transfer()->set_wire_bytes(1234);
    r->mutable_transfer()->set_serialized_bytes(1200);
    r->mutable_transfer()->set_raw_kv_bytes(4000);
    r->mutable_timings()->set_time_to_first_token_seconds(0.002);
    r->set_fell_back(request.question().size() % 2 == 0);
  }
  grpc::Status Answer(grpc::ServerContext*, const v1::AnswerRequest* request,
                      v1::AnswerResponse* response) override {
    if (request->question().empty()) {
      return grpc::Status(grpc::INVALID_ARGUMENT, "empty");
    }
    Fill(*request, response);
    return grpc::Status::OK;
  }
  grpc::Status AnswerStream(grpc::ServerContext*,
                            const v1::AnswerRequest* request,
                            grpc::ServerWriter<v1::AnswerEvent>* w) override {
    absl::SleepFor(absl::Milliseconds(5));
    v1::AnswerEvent token;
    token.mutable_token()->set_token_id(1);
    w->Write(token);
    // Two more tokens 10 ms apart: the inter-token gaps.
    for (int i = 0; i < 2; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
      w->Write(token);
    }
    absl::SleepFor(absl::Milliseconds(5));
    v1::AnswerEvent final_event;
    Fill(*request, final_event.mutable_final());
    w->Write(final_event);
    return grpc::Status::OK;
  }
};

class LoadRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&sharer_);
    builder.RegisterService(&receiver_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ChannelOptions options;
    options.security.allow_insecure = true;
    auto channel =
        CreateKvwireChannel(absl::StrCat("127.0.0.1:", port_), options);
    ASSERT_TRUE(channel.ok()) << channel.status();
    channel_ = *channel;
  }
  void TearDown() override { server_->Shutdown(); }

  RunnerOptions Options() {
    RunnerOptions o;
    o.config.target = absl::StrCat("127.0.0.1:", port_);
    o.config.warmup_seconds = 0;
    o.config.duration_seconds = 30;
    Scenario a;
    a.name = "small";
    a.spec.set_scheme(v1::SCHEME_INT8);
    a.prompt_tokens = 10;
    Scenario b = a;
    b.name = "large";
    b.prompt_tokens = 100;
    o.config.scenarios = {a, b};
    o.channel = channel_;
    o.questions = {"What is the answer?", "Why?"};
    o.progress = false;
    return o;
  }

  FakeSharer sharer_;
  FakeReceiver receiver_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  int port_ = 0;
};

TEST_F(LoadRunnerTest, ClosedLoopCountsEveryByteTheServerSent) {
  RunnerOptions o = Options();
  o.config.concurrency = {1, 3};
  o.config.max_requests = 40;
  o.config.warmup_seconds = 0.2;
  auto r = RunLoad(o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->points.size(), 2u);
  for (const PointResult& p : r->points) {
    EXPECT_EQ(p.all.ok, 40) << p.label;  // Exactly the request bound.
    EXPECT_EQ(p.all.error_count(), 0);
    EXPECT_EQ(p.all.latency.count(), 40);
    EXPECT_GT(p.measured_seconds, 0);
    EXPECT_GT(p.warmup_requests, 0);
    // Per scenario: 4 bytes per token per block (+0, +1, +2).
    for (size_t i = 0; i < 2; ++i) {
      const ScenarioStats& s = p.scenarios[i];
      const int tokens = o.config.scenarios[i].prompt_tokens;
      EXPECT_EQ(s.payload_bytes, s.ok * (12 * tokens + 3));
      EXPECT_EQ(s.prompt_tokens, s.ok * tokens);
      EXPECT_EQ(s.raw_bytes, 2 * s.payload_bytes);
      EXPECT_EQ(s.ttft.count(), s.ok);
    }
  }
  EXPECT_EQ(r->points[0].label, "concurrency=1");
  // Warm-up included, the generator's wire bytes are the server's.
  EXPECT_EQ(r->wire_bytes_including_warmup, sharer_.wire_bytes_.load());
  EXPECT_EQ(r->requests_including_warmup, sharer_.calls_.load());
  EXPECT_EQ(r->sharer_info.model().name(), "fake");
}

TEST_F(LoadRunnerTest, ErrorsAreCountedByStatus) {
  sharer_.fail_every_ = 3;
  RunnerOptions o = Options();
  o.config.concurrency = {2};
  o.config.max_requests = 30;
  auto r = RunLoad(o);
  ASSERT_TRUE(r.ok()) << r.status();
  const PointResult& p = r->points[0];
  EXPECT_EQ(p.all.total(), 30);
  EXPECT_EQ(p.all.errors.at("UNAVAILABLE"), 10);
  EXPECT_EQ(p.all.ok, 20);
  EXPECT_EQ(p.all.latency.count(), 20);  // OK calls only.
}

TEST_F(LoadRunnerTest, OpenLoopLatencyIncludesTheBacklogBehindAStall) {
  sharer_.stall_call_ = 5;
  sharer_.stall_ = absl::Milliseconds(600);
  RunnerOptions o = Options();
  o.config.mode = LoopMode::kOpen;
  o.config.rates = {50};
  o.config.uniform_arrivals = true;
  o.config.duration_seconds = 2;
  o.config.max_in_flight = 1;  // One outstanding call: a stall backs up.
  auto r = RunLoad(o);
  ASSERT_TRUE(r.ok()) << r.status();
  const PointResult& p = r->points[0];
  // 2 s at 50/s, uniform gaps: 99 or 100 calls (the last one may fall just
  // past the window through rounding).
  EXPECT_GE(p.all.ok, 99);
  EXPECT_LE(p.all.ok, 100);
  EXPECT_GT(p.max_backlog, 10);
  EXPECT_GT(p.late_sends, 10);
  // The stalled call plus those queued behind it: corrected latencies of
  // hundreds of ms for ~30 calls; the service times stay small.
  EXPECT_GT(p.all.latency.Percentile(90), 0.1);
  EXPECT_GT(p.all.latency.Max(), 0.55);
  EXPECT_LT(p.all.service_time.Percentile(90), 0.1);
  EXPECT_DOUBLE_EQ(p.offered_rate, 50);
}

TEST_F(LoadRunnerTest, PoissonOpenLoopHitsTheRate) {
  RunnerOptions o = Options();
  o.config.mode = LoopMode::kOpen;
  o.config.rates = {100};
  o.config.duration_seconds = 2;
  o.config.warmup_seconds = 0.3;
  auto r = RunLoad(o);
  ASSERT_TRUE(r.ok()) << r.status();
  const PointResult& p = r->points[0];
  EXPECT_NEAR(p.all.ok, 200, 50);
  EXPECT_EQ(p.all.error_count(), 0);
  EXPECT_NEAR(p.all.ok / p.measured_seconds, 100, 25);
}

TEST_F(LoadRunnerTest, AnswerAndAnswerStream) {
  for (RpcKind rpc : {RpcKind::kAnswer, RpcKind::kAnswerStream}) {
    RunnerOptions o = Options();
    o.config.rpc = rpc;
    o.config.concurrency = {2};
    o.config.max_requests = 10;
    auto r = RunLoad(o);
    ASSERT_TRUE(r.ok()) << r.status();
    const PointResult& p = r->points[0];
    EXPECT_EQ(p.all.ok, 10);
    EXPECT_EQ(p.all.wire_bytes, 10 * 1234);
    EXPECT_EQ(p.all.payload_bytes, 10 * 1000);
    EXPECT_EQ(p.all.generated_tokens, 20);
    EXPECT_EQ(p.all.ttft.count(), 10);
    if (rpc == RpcKind::kAnswerStream) {
      // The first token comes ~5 ms in, the whole answer ~30 ms.
      EXPECT_GE(p.all.ttft.Percentile(50), 0.004);
      EXPECT_LT(p.all.ttft.Percentile(50), p.all.latency.Percentile(50));
      // Three token events per answer: two gaps of ~10 ms each.
      EXPECT_EQ(p.all.inter_token.count(), 20);
      EXPECT_GE(p.all.inter_token.Percentile(50), 0.008);
      EXPECT_LT(p.all.inter_token.Percentile(50), 0.5);
    } else {
      EXPECT_EQ(p.all.inter_token.count(), 0);  // No stream to time.
    }
  }
}

TEST_F(LoadRunnerTest, ShareRefusesPromptsLongerThanTheSharerAccepts) {
  RunnerOptions o = Options();
  o.config.scenarios[1].prompt_tokens = 5000;
  auto r = RunLoad(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LoadRunnerTest, ReportsJsonCsvAndPlots) {
  RunnerOptions o = Options();
  o.config.concurrency = {1, 2};
  o.config.max_requests = 10;
  auto r = RunLoad(o);
  ASSERT_TRUE(r.ok()) << r.status();
  const nlohmann::json j = ReportJson(o.config, *r);
  ASSERT_EQ(j["points"].size(), 2u);
  EXPECT_EQ(j["points"][0]["all"]["ok"], 10);
  EXPECT_TRUE(j["points"][0]["all"]["latency_seconds"].contains("p99.9"));
  for (const char* p : {"p50", "p90", "p99"}) {
    EXPECT_TRUE(j["points"][0]["all"]["ttft_seconds"].contains(p));
    EXPECT_TRUE(j["points"][0]["all"]["inter_token_seconds"].contains(p));
  }
  EXPECT_EQ(j["points"][1]["scenarios"].size(), 2u);
  EXPECT_EQ(j["totals_including_warmup"]["wire_bytes"],
            sharer_.wire_bytes_.load());
  const std::string csv = ReportCsv(o.config, *r);
  // Header + (2 scenarios + ALL) x 2 points.
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 7);
  EXPECT_THAT(csv, ::testing::HasSubstr(
                       "ttft_p90_ms,itl_p50_ms,itl_p90_ms,itl_p99_ms"));
  EXPECT_THAT(SummaryText(o.config, *r), ::testing::HasSubstr("p99 ms"));

  const std::string dir = ::testing::TempDir() + "/kvwire_load_report";
  std::filesystem::remove_all(dir);
  const absl::Status st = WriteReport(dir, o.config, *r, /*plots=*/true);
  EXPECT_TRUE(std::filesystem::exists(dir + "/report.json"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/report.csv"));
  if (absl::IsFailedPrecondition(st)) {
    GTEST_SKIP() << st.message();
  }
  ASSERT_TRUE(st.ok()) << st;
  for (const char* png :
       {"latency_vs_load.png", "throughput_vs_load.png", "ttft_itl_vs_load.png",
        "bytes_per_request_by_spec.png"}) {
    const std::string path = dir + "/" + png;
    ASSERT_TRUE(std::filesystem::exists(path)) << path;
    std::ifstream f(path, std::ios::binary);
    char magic[8] = {0};
    f.read(magic, 8);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG") << path;
    EXPECT_GT(std::filesystem::file_size(path), 2000u) << path;
  }
}

// OpenAI mode against a fake /v1/chat/completions on loopback.
class OpenAiLoadTest : public ::testing::Test {
 protected:
  RunnerOptions Options(const FakeOpenAiServer& server,
                        const std::string& token) {
    RunnerOptions o;
    o.config.rpc = RpcKind::kOpenAiChat;
    o.config.target = server.url();
    o.config.model = "kvwire";
    o.config.warmup_seconds = 0;
    o.config.duration_seconds = 30;
    o.config.concurrency = {2};
    o.config.max_requests = 10;
    Scenario chat;
    chat.name = "chat-32";
    chat.prompt_tokens = 32;
    chat.max_new_tokens = 4;
    chat.spec.set_scheme(v1::SCHEME_INT4);
    o.config.scenarios = {chat};
    ClientSecurityOptions security;
    security.allow_insecure = true;
    auto client = HttpClient::Create(security, /*https=*/false);
    EXPECT_TRUE(client.ok()) << client.status();
    if (client.ok()) o.http_client = *std::move(client);
    o.chat_url = *ParseHttpUrl(server.url() + "/v1/chat/completions");
    o.auth_token = token;
    o.questions = {"What is the answer?", "Why?"};
    o.progress = false;
    return o;
  }
};

TEST_F(OpenAiLoadTest, MeasuresTtftAndInterTokenLatencyFromSseChunks) {
  FakeOpenAiServer::Behaviour behaviour;
  behaviour.tokens = 4;
  behaviour.first_token_delay = absl::Milliseconds(20);
  behaviour.gap = absl::Milliseconds(10);
  behaviour.token = "secret";
  FakeOpenAiServer server(behaviour);
  RunnerOptions o = Options(server, "secret");
  auto r = RunLoad(o);
  ASSERT_TRUE(r.ok()) << r.status();
  const PointResult& p = r->points[0];
  EXPECT_EQ(p.all.ok, 10) << SummaryText(o.config, *r);
  EXPECT_EQ(p.all.error_count(), 0);
  EXPECT_EQ(p.all.ttft.count(), 10);
  EXPECT_GE(p.all.ttft.Percentile(50), 0.018);
  EXPECT_LT(p.all.ttft.Percentile(50), p.all.latency.Percentile(50));
  // Four content chunks per answer: three gaps of ~10 ms.
  EXPECT_EQ(p.all.inter_token.count(), 30);
  EXPECT_GE(p.all.inter_token.Percentile(50), 0.008);
  EXPECT_LT(p.all.inter_token.Percentile(50), 0.5);
  EXPECT_EQ(p.all.generated_tokens, 40);  // From usage.
  // The KV bytes of kvwire-receiver's report in the last chunk.
  EXPECT_EQ(p.all.payload_bytes, 10 * 1000);
  EXPECT_EQ(p.all.wire_bytes, 10 * 1234);
  EXPECT_EQ(p.all.raw_bytes, 10 * 4000);
  EXPECT_EQ(p.all.prompt_tokens, 10 * 32);
  EXPECT_EQ(p.all.tokens_sent, 10 * 96);
  EXPECT_EQ(server.requests(), 10);
  const nlohmann::json request = nlohmann::json::parse(server.last_body());
  EXPECT_EQ(request["model"], "kvwire");
  EXPECT_EQ(request["stream"], true);
  EXPECT_EQ(request["max_tokens"], 4);
  // The scenario's transfer spec rides in the kvwire extension.
  EXPECT_EQ(request["kvwire"]["mode"], "c2c");
  EXPECT_EQ(request["kvwire"]["spec"]["scheme"], "SCHEME_INT4");
  const nlohmann::json j = ReportJson(o.config, *r);
  EXPECT_EQ(j["rpc"], "openai_chat");
  EXPECT_GT(j["points"][0]["all"]["inter_token_seconds"]["p90"], 0.0);
  EXPECT_THAT(SummaryText(o.config, *r), ::testing::HasSubstr("itl p99"));
}

TEST_F(OpenAiLoadTest, CountsHttpAndStreamErrorsByKind) {
  FakeOpenAiServer::Behaviour behaviour;
  behaviour.token = "secret";
  FakeOpenAiServer server(behaviour);
  auto r = RunLoad(Options(server, "wrong"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->points[0].all.errors.at("HTTP_401"), 10);
  EXPECT_EQ(r->points[0].all.error_examples.at("HTTP_401"),
            "invalid bearer token");

  FakeOpenAiServer::Behaviour cut_short;
  cut_short.send_done = false;
  FakeOpenAiServer no_done(cut_short);
  r = RunLoad(Options(no_done, ""));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->points[0].all.errors.at("BAD_STREAM"), 10);

  FakeOpenAiServer::Behaviour failing;
  failing.error_event = true;
  FakeOpenAiServer error_event(failing);
  r = RunLoad(Options(error_event, ""));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->points[0].all.errors.at("STREAM_ERROR"), 10);
  EXPECT_EQ(r->points[0].all.error_examples.at("STREAM_ERROR"),
            "model overloaded");
}

TEST_F(OpenAiLoadTest, SendsPlainOpenAiRequestsWithoutTheExtension) {
  FakeOpenAiServer server({});
  RunnerOptions o = Options(server, "");
  o.config.kvwire_extension = false;
  auto r = RunLoad(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->points[0].all.ok, 10);
  const nlohmann::json request = nlohmann::json::parse(server.last_body());
  EXPECT_FALSE(request.contains("kvwire"));
  EXPECT_EQ(request["messages"][0]["role"], "user");
}

TEST_F(OpenAiLoadTest, RefusesToStartWithoutAnHttpClientOrAModel) {
  FakeOpenAiServer server({});
  RunnerOptions o = Options(server, "");
  o.http_client = nullptr;
  EXPECT_EQ(RunLoad(o).status().code(), absl::StatusCode::kInvalidArgument);
  RunnerOptions unnamed = Options(server, "");
  unnamed.config.model.clear();
  EXPECT_EQ(RunLoad(unnamed).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server.requests(), 0);
}

}  // namespace
}  // namespace load
}  // namespace kvwire
