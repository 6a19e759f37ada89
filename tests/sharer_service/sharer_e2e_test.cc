// End-to-end tests of kvwire-sharer: the real binary is started as a child
// process on 127.0.0.1 (ports chosen by the kernel and read from its ready
// line), called with a real gRPC client, its streams decoded and compared
// with an in-process prefill, its /metrics scraped over HTTP.
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <fstream>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/model/model_fingerprint.h"
#include "common/service/channel.h"
#include "common/service/grpc_status.h"
#include "common/service/security.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "tests/common/hub_cache_testing.h"
#include "tests/common/service/testing_util.h"
#include "tests/sharer_service/kv_reference.h"

namespace kvwire {
namespace {

using test_util::ChildProcess;
using test_util::MetricValue;
using test_util::WaitFor;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr absl::Duration kStartTimeout = absl::Seconds(60);
constexpr absl::Duration kExitTimeout = absl::Seconds(30);

std::vector<uint32_t> RandomTokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> ids(n);
  for (uint32_t& id : ids) id = rng() % 256;
  return ids;
}

struct ShareResult {
  grpc::Status status;
  std::vector<v1::KvChunk> chunks;
};

class SharerE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = new std::string(test_util::MakeTempDir("model"));
    const absl::Status st = WriteTestModel(*model_dir_);
    ASSERT_TRUE(st.ok()) << st;
  }

  void TearDown() override {
    if (sharer_ != nullptr && HasFailure()) {
      std::cerr << "---- kvwire-sharer stderr ----\n"
                << sharer_->Stderr() << "\n------------------------------\n";
    }
  }

  // Starts kvwire-sharer with loopback addresses and `flags`.
  void StartSharer(std::vector<std::string> flags, bool plaintext = true) {
    std::vector<std::string> argv = {
        KVWIRE_SHARER_BINARY,           "--model_dir=" + *model_dir_,
        "--listen_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
        "--intra_op_threads=1",         "--drain_timeout_seconds=20",
    };
    if (plaintext) argv.push_back("--allow_insecure");
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto child = ChildProcess::Start(
        argv, test_util::MakeTempDir("sharer") + "/stderr.log");
    ASSERT_TRUE(child.ok()) << child.status();
    sharer_ = *std::move(child);
    auto ready = sharer_->WaitForLine("kvwire-sharer ready", kStartTimeout);
    ASSERT_TRUE(ready.ok()) << ready.status();
    port_ = std::stoi((*ready)["grpc_port"]);
    metrics_port_ = std::stoi((*ready)["metrics_port"]);
    fingerprint_ = (*ready)["fingerprint"];
  }

  std::unique_ptr<v1::Sharer::Stub> Stub(ClientSecurityOptions security = {}) {
    if (!security.tls_enabled()) security.allow_insecure = true;
    ChannelOptions options;
    options.security = security;
    auto channel =
        CreateKvwireChannel(absl::StrCat("127.0.0.1:", port_), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    channel_ = *channel;
    return v1::Sharer::NewStub(*channel);
  }

  static ShareResult Share(v1::Sharer::Stub& stub,
                           const v1::ShareRequest& request,
                           absl::Duration deadline = absl::Seconds(30),
                           const std::string& token = "") {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    AttachBearerToken(&context, token);
    ShareResult result;
    auto reader = stub.Share(&context, request);
    v1::KvChunk chunk;
    while (reader->Read(&chunk)) result.chunks.push_back(chunk);
    result.status = reader->Finish();
    return result;
  }

  static v1::ShareRequest Request(const std::vector<uint32_t>& tokens,
                                  v1::Scheme scheme) {
    v1::ShareRequest request;
    request.set_request_id("e2e");
    for (uint32_t t : tokens) request.add_token_ids(t);
    request.mutable_spec()->set_scheme(scheme);
    return request;
  }

  std::string ScrapeMetrics() {
    auto body = test_util::HttpGet("127.0.0.1", metrics_port_, "/metrics");
    EXPECT_TRUE(body.ok()) << body.status();
    return body.value_or("");
  }

  std::optional<double> Metric(const std::string& name,
                               std::map<std::string, std::string> labels) {
    return MetricValue(ScrapeMetrics(), name, labels);
  }

  // Waits (bounded) until a metric has `value`; the server records a call
  // in OnDone, which may run just after the client saw the status.
  bool AwaitMetric(const std::string& name,
                   const std::map<std::string, std::string>& labels,
                   double value, absl::Duration timeout = absl::Seconds(10)) {
    return WaitFor([&] { return Metric(name, labels) == value; }, timeout);
  }

  static std::map<std::string, std::string> ShareCode(const std::string& code) {
    return {{"role", "sharer"}, {"method", "Share"}, {"code", code}};
  }

  static std::string* model_dir_;
  std::unique_ptr<ChildProcess> sharer_;
  std::shared_ptr<grpc::Channel> channel_;
  int port_ = 0;
  int metrics_port_ = 0;
  std::string fingerprint_;
};

std::string* SharerE2eTest::model_dir_ = nullptr;

int64_t SizeBeforeTrailer(const std::vector<v1::KvChunk>& chunks) {
  int64_t total = 0;
  for (const v1::KvChunk& c : chunks) {
    if (!c.has_trailer()) total += static_cast<int64_t>(c.ByteSizeLong());
  }
  return total;
}

TEST_F(SharerE2eTest, GetInfoDescribesTheModel) {
  ASSERT_NO_FATAL_FAILURE(StartSharer({"--max_prompt_tokens=300"}));
  auto stub = Stub();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::SharerInfo info;
  ASSERT_TRUE(stub->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
  const v1::ModelInfo& m = info.model();
  EXPECT_EQ(m.fingerprint(), fingerprint_);
  EXPECT_EQ(m.fingerprint().size(), 64u);
  EXPECT_EQ(m.architecture(), "Qwen2ForCausalLM");
  EXPECT_EQ(m.num_layers(), 4u);
  EXPECT_EQ(m.num_kv_heads(), 2u);
  EXPECT_EQ(m.head_dim(), 16u);
  EXPECT_EQ(m.vocab_size(), 256u);
  EXPECT_EQ(m.dtype(), v1::DTYPE_FP32);
  EXPECT_EQ(info.max_prompt_tokens(), 300u);
  EXPECT_EQ(info.schemes_size(), 8);
  EXPECT_EQ(info.granularities_size(), 6);
  EXPECT_EQ(info.selection_modes_size(), 7);
  EXPECT_FALSE(info.version().empty());

  // Health: overall and per service.
  EXPECT_EQ(test_util::HealthCheck(channel_, "").value_or(-1), 1);
  EXPECT_EQ(test_util::HealthCheck(channel_, "kvwire.v1.Sharer").value_or(-1),
            1);
}

TEST_F(SharerE2eTest, Bf16StreamIsBitExactAndAccountedExactly) {
  ASSERT_NO_FATAL_FAILURE(StartSharer({}));
  auto stub = Stub();
  const std::vector<uint32_t> tokens = RandomTokens(300, 1);
  v1::ShareRequest request = Request(tokens, v1::SCHEME_BF16);
  request.set_expected_model_fingerprint(fingerprint_);
  // Small chunks: every layer's blocks travel as several fragments.
  request.mutable_spec()->set_chunk_size_bytes(4096);
  const ShareResult r = Share(*stub, request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();

  ASSERT_GE(r.chunks.size(), 3u);
  EXPECT_TRUE(r.chunks.front().has_header());
  ASSERT_TRUE(r.chunks.back().has_trailer());
  bool fragments = false;
  for (const v1::KvChunk& c : r.chunks) {
    EXPECT_LE(c.ByteSizeLong(), 4096u);
    fragments |= c.has_fragment();
  }
  EXPECT_TRUE(fragments);
  const v1::TransferStats& stats = r.chunks.back().trailer().stats();
  EXPECT_EQ(static_cast<int64_t>(stats.serialized_bytes()),
            SizeBeforeTrailer(r.chunks));
  EXPECT_EQ(stats.chunks(), r.chunks.size() - 1);
  EXPECT_EQ(stats.raw_bytes(), 4u * 2 * 2 * 300 * 16 * 2);
  EXPECT_GT(stats.compute_seconds(), 0);

  auto cmp = CompareWithPrefill(r.chunks, *model_dir_, tokens, 0);
  ASSERT_TRUE(cmp.ok()) << cmp.status();
  EXPECT_EQ(cmp->layers, 4);
  EXPECT_TRUE(cmp->bf16_bit_exact) << "max abs error " << cmp->max_abs_error;

  // The metrics saw exactly these bytes.
  int64_t all_bytes = 0;
  for (const v1::KvChunk& c : r.chunks) all_bytes += c.ByteSizeLong();
  const std::map<std::string, std::string> bf16{{"role", "sharer"},
                                                {"scheme", "bf16"}};
  ASSERT_TRUE(AwaitMetric("kvwire_requests_total", ShareCode("OK"), 1));
  const std::string text = ScrapeMetrics();
  EXPECT_EQ(MetricValue(text, "kvwire_kv_serialized_bytes_total", bf16),
            all_bytes);
  EXPECT_EQ(MetricValue(text, "kvwire_kv_wire_bytes_total", bf16),
            all_bytes + 5 * static_cast<int64_t>(r.chunks.size()));
  EXPECT_EQ(MetricValue(text, "kvwire_kv_raw_bytes_total", bf16),
            stats.raw_bytes());
  EXPECT_EQ(MetricValue(text, "kvwire_kv_payload_bytes_total", bf16),
            stats.payload_bytes());
  EXPECT_EQ(MetricValue(text, "kvwire_transfers_total", bf16), 1);
  EXPECT_EQ(
      MetricValue(text, "kvwire_prompt_tokens_total", {{"role", "sharer"}}),
      300);
  EXPECT_EQ(MetricValue(text, "kvwire_stage_duration_seconds_count",
                        {{"role", "sharer"}, {"stage", "sharer_compute"}}),
            1);
  EXPECT_EQ(MetricValue(text, "kvwire_queue_wait_seconds_count",
                        {{"role", "sharer"}}),
            1);
  EXPECT_EQ(MetricValue(text, "kvwire_requests_in_flight",
                        {{"role", "sharer"}, {"method", "Share"}}),
            0);
}

TEST_F(SharerE2eTest, Int8IsWithinTheQuantizationBound) {
  ASSERT_NO_FATAL_FAILURE(StartSharer({}));
  auto stub = Stub();
  const std::vector<uint32_t> tokens = RandomTokens(97, 2);
  const ShareResult r = Share(*stub, Request(tokens, v1::SCHEME_INT8));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  for (const v1::KvChunk& c : r.chunks) {
    EXPECT_LE(c.ByteSizeLong(), 1u << 20);  // The default chunk size.
  }
  EXPECT_EQ(static_cast<int64_t>(
                r.chunks.back().trailer().stats().serialized_bytes()),
            SizeBeforeTrailer(r.chunks));
  auto cmp = CompareWithPrefill(r.chunks, *model_dir_, tokens, 8);
  ASSERT_TRUE(cmp.ok()) << cmp.status();
  EXPECT_EQ(cmp->layers, 4);
  EXPECT_TRUE(cmp->within_int_bound) << "max abs error " << cmp->max_abs_error;
  EXPECT_GT(cmp->max_abs_error, 0);  // Really quantized.
}

// The blocks of a stream, serialized, in order, however they were batched.
std::vector<std::string> StreamBlocks(const std::vector<v1::KvChunk>& chunks) {
  std::vector<std::string> blocks;
  for (const v1::KvChunk& c : chunks) {
    if (c.has_block()) blocks.push_back(c.block().SerializeAsString());
    for (const v1::KvBlock& b : c.blocks()) {
      blocks.push_back(b.SerializeAsString());
    }
  }
  return blocks;
}

int64_t AllBytes(const std::vector<v1::KvChunk>& chunks) {
  int64_t total = 0;
  for (const v1::KvChunk& c : chunks) total += c.ByteSizeLong();
  return total;
}

TEST_F(SharerE2eTest, BatchedBlocksAreTheSameStreamInFewerMessages) {
  ASSERT_NO_FATAL_FAILURE(StartSharer({}));
  auto stub = Stub();
  const std::vector<uint32_t> tokens = RandomTokens(118, 7);
  v1::ShareRequest request = Request(tokens, v1::SCHEME_INT4);
  const ShareResult single = Share(*stub, request);
  ASSERT_TRUE(single.status.ok()) << single.status.error_message();
  request.set_max_blocks_per_message(64);
  const ShareResult batched = Share(*stub, request);
  ASSERT_TRUE(batched.status.ok()) << batched.status.error_message();

  // Without the field: one block per message, as before.
  for (const v1::KvChunk& c : single.chunks) EXPECT_EQ(c.blocks_size(), 0);
  ASSERT_EQ(single.chunks.size(), 10u);  // Header, 4 x (K, V), trailer.
  // With it: the same blocks byte for byte. A layer's K and V are queued
  // together, so they always share a message (and more join while a write
  // is in flight).
  EXPECT_EQ(StreamBlocks(batched.chunks), StreamBlocks(single.chunks));
  EXPECT_LE(batched.chunks.size(), 6u);
  for (const v1::KvChunk& c : batched.chunks) {
    EXPECT_FALSE(c.has_block());
    EXPECT_NE(c.blocks_size(), 1);
  }
  EXPECT_TRUE(batched.chunks.front().has_header());
  ASSERT_TRUE(batched.chunks.back().has_trailer());

  // The bytes do not depend on batching; the trailer counts the messages.
  const v1::TransferStats& a = single.chunks.back().trailer().stats();
  const v1::TransferStats& b = batched.chunks.back().trailer().stats();
  EXPECT_EQ(AllBytes(batched.chunks), AllBytes(single.chunks));
  EXPECT_EQ(static_cast<int64_t>(b.serialized_bytes()),
            SizeBeforeTrailer(batched.chunks));
  EXPECT_EQ(b.serialized_bytes(), a.serialized_bytes());
  EXPECT_EQ(b.payload_bytes(), a.payload_bytes());
  EXPECT_EQ(b.scale_bytes(), a.scale_bytes());
  EXPECT_EQ(b.index_bytes(), a.index_bytes());
  EXPECT_EQ(b.header_bytes(), a.header_bytes());
  EXPECT_EQ(b.blocks(), 8u);
  EXPECT_EQ(a.chunks(), single.chunks.size() - 1);
  EXPECT_EQ(b.chunks(), batched.chunks.size() - 1);

  auto cmp_single = CompareWithPrefill(single.chunks, *model_dir_, tokens, 4);
  auto cmp_batched = CompareWithPrefill(batched.chunks, *model_dir_, tokens, 4);
  ASSERT_TRUE(cmp_single.ok()) << cmp_single.status();
  ASSERT_TRUE(cmp_batched.ok()) << cmp_batched.status();
  EXPECT_EQ(cmp_batched->layers, 4);
  EXPECT_TRUE(cmp_batched->within_int_bound);
  EXPECT_EQ(cmp_batched->max_abs_error, cmp_single->max_abs_error);

  // The sharer's metrics: exactly the serialized bytes, plus 5 per message
  // actually sent.
  const std::map<std::string, std::string> int4{{"role", "sharer"},
                                                {"scheme", "int4"}};
  ASSERT_TRUE(AwaitMetric("kvwire_requests_total", ShareCode("OK"), 2));
  const std::string text = ScrapeMetrics();
  const int64_t serialized = AllBytes(single.chunks) + AllBytes(batched.chunks);
  EXPECT_EQ(MetricValue(text, "kvwire_kv_serialized_bytes_total", int4),
            serialized);
  EXPECT_EQ(MetricValue(text, "kvwire_kv_wire_bytes_total", int4),
            serialized + 5 * static_cast<int64_t>(single.chunks.size() +
                                                  batched.chunks.size()));
}

TEST_F(SharerE2eTest, BlocksWaitingForASlowClientTravelTogether) {
  // 16 layers of 512 KiB bf16 blocks, far more than the HTTP/2 windows
  // hold: while the client waits for the sharer to finish computing, the
  // blocks queue there (the stream buffer holds 64 MiB) and then go several
  // per message, never above the chunk size.
  const std::string wide = test_util::MakeTempDir("wide-model");
  ASSERT_TRUE(WriteWideTestModel(wide).ok());
  ASSERT_NO_FATAL_FAILURE(StartSharer({"--model_dir=" + wide}));
  auto stub = Stub();
  const std::vector<uint32_t> tokens = RandomTokens(256, 8);
  v1::ShareRequest request = Request(tokens, v1::SCHEME_BF16);
  request.mutable_spec()->set_chunk_size_bytes(4u << 20);
  request.set_max_blocks_per_message(64);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto reader = stub->Share(&context, request);
  std::vector<v1::KvChunk> chunks;
  v1::KvChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  chunks.push_back(chunk);
  // Every layer computed and queued (a fixed sleep is not enough for a
  // sanitizer build's prefill).
  ASSERT_TRUE(AwaitMetric("kvwire_workers_busy", {{"role", "sharer"}}, 0,
                          absl::Seconds(60)));
  while (reader->Read(&chunk)) chunks.push_back(chunk);
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();

  int blocks = 0, largest = 0;
  for (const v1::KvChunk& c : chunks) {
    EXPECT_LE(c.ByteSizeLong(), 4u << 20);
    blocks += c.has_block() + c.blocks_size();
    largest = std::max(largest, c.blocks_size());
  }
  EXPECT_EQ(blocks, 32);
  EXPECT_GT(largest, 2);  // More than one layer's pair in one message.
  EXPECT_LT(chunks.size(), 2u + 16);
  const v1::TransferStats& stats = chunks.back().trailer().stats();
  EXPECT_EQ(static_cast<int64_t>(stats.serialized_bytes()),
            SizeBeforeTrailer(chunks));
  EXPECT_EQ(stats.chunks(), chunks.size() - 1);
  auto cmp = CompareWithPrefill(chunks, wide, tokens, 0);
  ASSERT_TRUE(cmp.ok()) << cmp.status();
  EXPECT_EQ(cmp->layers, 16);
  EXPECT_TRUE(cmp->bf16_close) << "max abs error " << cmp->max_abs_error;
}

TEST_F(SharerE2eTest, SelectionAndByteBudget) {
  ASSERT_NO_FATAL_FAILURE(StartSharer({}));
  auto stub = Stub();
  const std::vector<uint32_t> tokens = RandomTokens(64, 3);

  // INT4, the last half of the tokens.
  v1::ShareRequest half = Request(tokens, v1::SCHEME_INT4);
  half.mutable_spec()->mutable_selection()->set_mode(v1::SELECTION_BACK);
  half.mutable_spec()->mutable_selection()->set_proportion(0.5);
  const ShareResult r = Share(*stub, half);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  auto cmp = CompareWithPrefill(r.chunks, *model_dir_, tokens, 4);
  ASSERT_TRUE(cmp.ok()) << cmp.status();
  ASSERT_EQ(cmp->token_indices.size(), 4u);
  std::vector<uint32_t> back;
  for (uint32_t i = 32; i < 64; ++i) back.push_back(i);
  EXPECT_EQ(cmp->token_indices[0], back);
  EXPECT_TRUE(cmp->within_int_bound);

  // A budget the requested BF16 cannot meet: the sharer steps down and the
  // whole stream (trailer included) stays within it.
  v1::ShareRequest budget = Request(tokens, v1::SCHEME_BF16);
  budget.mutable_spec()->set_max_payload_bytes(12000);
  const ShareResult b = Share(*stub, budget);
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  int64_t total = 0;
  for (const v1::KvChunk& c : b.chunks) total += c.ByteSizeLong();
  EXPECT_LE(total, 12000);
  EXPECT_NE(b.chunks.front().header().layers(0).scheme(), v1::SCHEME_BF16);

  // A budget nothing meets.
  budget.mutable_spec()->set_max_payload_bytes(300);
  const ShareResult none = Share(*stub, budget);
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(none.chunks.empty());
}

TEST_F(SharerE2eTest, InvalidRequestsGetPreciseCodes) {
  ASSERT_NO_FATAL_FAILURE(StartSharer({"--max_prompt_tokens=128"}));
  auto stub = Stub();
  struct Case {
    std::string name;
    v1::ShareRequest request;
    grpc::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({"empty", Request({}, v1::SCHEME_INT8),
                   grpc::StatusCode::INVALID_ARGUMENT, "token_ids is empty"});
  cases.push_back({"oversized", Request(RandomTokens(129, 4), v1::SCHEME_INT8),
                   grpc::StatusCode::INVALID_ARGUMENT, "at most 128"});
  {
    std::vector<uint32_t> t = RandomTokens(10, 5);
    t[3] = 999;
    cases.push_back({"vocab", Request(t, v1::SCHEME_INT8),
                     grpc::StatusCode::INVALID_ARGUMENT,
                     "token_ids[3] = 999 is outside the model's vocabulary "
                     "[0, 256)"});
  }
  {
    v1::ShareRequest r = Request(RandomTokens(10, 6), v1::SCHEME_INT8);
    r.set_expected_model_fingerprint("0123");
    cases.push_back({"fingerprint", r, grpc::StatusCode::FAILED_PRECONDITION,
                     "fingerprint mismatch"});
  }
  {
    v1::ShareRequest r = Request(RandomTokens(10, 7), v1::SCHEME_INT8);
    r.mutable_spec()->set_granularity(v1::GRANULARITY_PER_GROUP);
    r.mutable_spec()->set_group_size(7);
    cases.push_back(
        {"group", r, grpc::StatusCode::INVALID_ARGUMENT, "transfer spec"});
  }
  {
    v1::ShareRequest r = Request(RandomTokens(10, 8), v1::SCHEME_INT8);
    r.mutable_spec()->set_scheme(static_cast<v1::Scheme>(99));
    cases.push_back(
        {"scheme", r, grpc::StatusCode::INVALID_ARGUMENT, "transfer spec"});
  }
  {
    v1::ShareRequest r = Request(RandomTokens(10, 9), v1::SCHEME_INT8);
    r.mutable_spec()->add_layers(4);
    cases.push_back(
        {"layer", r, grpc::StatusCode::INVALID_ARGUMENT, "transfer spec"});
  }
  {
    v1::ShareRequest r = Request(RandomTokens(10, 10), v1::SCHEME_INT8);
    r.set_request_id(std::string(65, 'x'));
    cases.push_back({"request id", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "request_id has 65 bytes"});
  }
  for (const Case& c : cases) {
    const ShareResult r = Share(*stub, c.request);
    EXPECT_EQ(r.status.error_code(), c.code)
        << c.name << ": " << r.status.error_message();
    EXPECT_THAT(r.status.error_message(), HasSubstr(c.message)) << c.name;
    EXPECT_TRUE(r.chunks.empty()) << c.name;
  }
  EXPECT_TRUE(
      AwaitMetric("kvwire_requests_total", ShareCode("INVALID_ARGUMENT"), 7));
  EXPECT_TRUE(AwaitMetric("kvwire_requests_total",
                          ShareCode("FAILED_PRECONDITION"), 1));
  // The server survived all of it.
  EXPECT_TRUE(
      Share(*stub, Request(RandomTokens(10, 11), v1::SCHEME_INT8)).status.ok());
}

TEST_F(SharerE2eTest, MalformedPayloadsAreInvalidArgumentWithAReason) {
  // Issue 14: gRPC answered these with UNIMPLEMENTED and no message.
  ASSERT_NO_FATAL_FAILURE(StartSharer({}));
  auto stub = Stub();  // Opens channel_.
  const std::string truncated_varint = "\x08\xff\xff\xff";
  // ShareRequest.request_id (field 1) holding a lone continuation byte.
  const std::string non_utf8 = std::string("\x0a\x01\x80", 3);
  for (const std::string method :
       {"/kvwire.v1.Sharer/Share", "/kvwire.v1.Sharer/Generate",
        "/kvwire.v1.Sharer/GetInfo"}) {
    const auto malformed =
        test_util::RawUnaryCall(channel_, method, truncated_varint);
    EXPECT_EQ(malformed.status().code(), absl::StatusCode::kInvalidArgument)
        << method << ": " << malformed.status();
    EXPECT_THAT(std::string(malformed.status().message()),
                HasSubstr("not protobuf wire format"))
        << method;
  }
  for (const std::string method :
       {"/kvwire.v1.Sharer/Share", "/kvwire.v1.Sharer/Generate"}) {
    const auto bad_text = test_util::RawUnaryCall(channel_, method, non_utf8);
    EXPECT_EQ(bad_text.status().code(), absl::StatusCode::kInvalidArgument)
        << method;
    EXPECT_THAT(std::string(bad_text.status().message()),
                HasSubstr("request_id is not valid UTF-8"))
        << method;
  }
  // Well-formed requests still work.
  const ShareResult ok =
      Share(*stub, Request(RandomTokens(8, 71), v1::SCHEME_INT8));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_TRUE(
      AwaitMetric("kvwire_requests_total", ShareCode("INVALID_ARGUMENT"), 2));
}

TEST_F(SharerE2eTest, ClientTextCannotForgeOrFloodLogLines) {
  ASSERT_NO_FATAL_FAILURE(StartSharer({}));
  auto stub = Stub();
  // Refused requests (no tokens) are logged with their request ids.
  v1::ShareRequest forged = Request({}, v1::SCHEME_INT8);
  forged.set_request_id("x\nE1207 00:00:00.000000 1 forged.cc:1] hi\x1b[31m");
  EXPECT_EQ(Share(*stub, forged).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  const size_t before = sharer_->Stderr().size();
  v1::ShareRequest flood = Request({}, v1::SCHEME_INT8);
  flood.set_request_id(std::string(1 << 20, 'A'));
  EXPECT_EQ(Share(*stub, flood).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // The call's line is written when the reactor is done, after the status.
  std::string log;
  for (int i = 0; i < 200; ++i) {
    log = sharer_->Stderr();
    if (log.find("(1048576 bytes)") != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(25));
  }
  EXPECT_THAT(log, HasSubstr("request_id=x\\nE1207"));
  EXPECT_THAT(log, Not(HasSubstr("\nE1207 00:00:00.000000 1 forged")));
  EXPECT_THAT(log, Not(HasSubstr("\x1b[31m")));
  EXPECT_THAT(log, HasSubstr("...(1048576 bytes)"));
  EXPECT_LT(log.size() - before, 4096u);
}

TEST_F(SharerE2eTest, GenerateWritesTokensAndValidatesItsRequest) {
  ASSERT_NO_FATAL_FAILURE(StartSharer({"--max_new_tokens=40"}));
  auto stub = Stub();
  v1::GenerateRequest request;
  request.set_request_id("gen");
  for (uint32_t t : RandomTokens(16, 5)) request.add_token_ids(t);
  request.mutable_generation()->set_max_new_tokens(40);
  request.set_expected_model_fingerprint(fingerprint_);
  auto call = [&](const v1::GenerateRequest& r, v1::GenerateResponse* out) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    return stub->Generate(&context, r, out);
  };
  v1::GenerateResponse first, second;
  ASSERT_TRUE(call(request, &first).ok());
  EXPECT_EQ(first.request_id(), "gen");
  EXPECT_EQ(first.prompt_tokens(), 16u);
  ASSERT_GE(first.token_ids_size(), 1);
  EXPECT_LE(first.token_ids_size(), 40);
  EXPECT_EQ(first.stopped_at_eos(), first.token_ids_size() < 40);
  EXPECT_GT(first.generation_seconds(), 0);
  // Greedy: the same ids again.
  ASSERT_TRUE(call(request, &second).ok());
  EXPECT_EQ(
      std::vector<uint32_t>(first.token_ids().begin(), first.token_ids().end()),
      std::vector<uint32_t>(second.token_ids().begin(),
                            second.token_ids().end()));
  EXPECT_TRUE(AwaitMetric(
      "kvwire_requests_total",
      {{"role", "sharer"}, {"method", "Generate"}, {"code", "OK"}}, 2));
  EXPECT_EQ(Metric("kvwire_generated_tokens_total", {{"role", "sharer"}}),
            2.0 * first.token_ids_size());

  v1::GenerateRequest bad = request;
  bad.mutable_generation()->set_max_new_tokens(41);
  v1::GenerateResponse ignored;
  grpc::Status st = call(bad, &ignored);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("over the limit of 40"));
  bad = request;
  bad.set_expected_model_fingerprint("other");
  EXPECT_EQ(call(bad, &ignored).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  bad = request;
  bad.clear_token_ids();
  EXPECT_EQ(call(bad, &ignored).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(SharerE2eTest, DeadlineExpiryStopsTheWork) {
  // 4 layers x 1 s: the call would take 4 s.
  ASSERT_NO_FATAL_FAILURE(StartSharer({"--testing_layer_delay_ms=1000"}));
  auto stub = Stub();
  const absl::Time start = absl::Now();
  const ShareResult r =
      Share(*stub, Request(RandomTokens(16, 12), v1::SCHEME_INT8),
            absl::Milliseconds(300));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  ASSERT_TRUE(
      AwaitMetric("kvwire_requests_total", ShareCode("DEADLINE_EXCEEDED"), 1));
  // The worker stops after the layer in progress, long before the 4 s the
  // prefill would take.
  EXPECT_TRUE(AwaitMetric("kvwire_workers_busy", {{"role", "sharer"}}, 0,
                          absl::Milliseconds(2500)));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(3500));
}

// A Generate call on its own thread, ended by `deadline` or by TryCancel.
class AsyncGenerate {
 public:
  AsyncGenerate(v1::Sharer::Stub* stub, const std::vector<uint32_t>& tokens,
                absl::Duration deadline) {
    request_.set_request_id("async");
    for (uint32_t t : tokens) request_.add_token_ids(t);
    request_.mutable_generation()->set_max_new_tokens(4);
    context_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    thread_ = std::thread([this, stub] {
      status_ = stub->Generate(&context_, request_, &reply_);
    });
  }
  ~AsyncGenerate() { Wait(); }
  void Cancel() { context_.TryCancel(); }
  grpc::Status Wait() {
    if (thread_.joinable()) thread_.join();
    return status_;
  }

 private:
  v1::GenerateRequest request_;
  v1::GenerateResponse reply_;
  grpc::ClientContext context_;
  grpc::Status status_;
  std::thread thread_;
};

TEST_F(SharerE2eTest, GenerateHonoursDeadlinesRunningAndQueued) {
  // Issue 14's repro. Each prefill layer takes 1 s (4 s a call): A runs
  // with a 3 s deadline, B and C queue with 1 s deadlines, filling the
  // queue. B and C must leave the queue at 1 s, while A still runs, and A
  // must stop within a layer of 3 s, so that a Share arriving at 3.5 s is
  // admitted (the old code refused it: queue full until A's 4 s end).
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      {"--workers=1", "--queue_size=2", "--testing_layer_delay_ms=1000"}));
  auto stub = Stub();
  const absl::Time start = absl::Now();
  AsyncGenerate a(stub.get(), RandomTokens(64, 31), absl::Seconds(3));
  ASSERT_TRUE(AwaitMetric("kvwire_workers_busy", {{"role", "sharer"}}, 1));
  AsyncGenerate b(stub.get(), RandomTokens(64, 32), absl::Seconds(1));
  AsyncGenerate c(stub.get(), RandomTokens(64, 33), absl::Seconds(1));
  const std::map<std::string, std::string> expired = {
      {"role", "sharer"},
      {"method", "Generate"},
      {"code", "DEADLINE_EXCEEDED"}};
  ASSERT_TRUE(AwaitMetric("kvwire_requests_total", expired, 2));
  EXPECT_EQ(Metric("kvwire_queue_depth", {{"role", "sharer"}}), 0);
  if (absl::Now() - start < absl::Milliseconds(2800)) {  // A still runs.
    EXPECT_EQ(Metric("kvwire_workers_busy", {{"role", "sharer"}}), 1);
  }

  absl::SleepFor(start + absl::Milliseconds(3500) - absl::Now());
  const ShareResult share =
      Share(*stub, Request(RandomTokens(16, 34), v1::SCHEME_INT8));
  EXPECT_TRUE(share.status.ok()) << share.status.error_message();
  EXPECT_EQ(a.Wait().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(b.Wait().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(c.Wait().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(AwaitMetric("kvwire_requests_total", expired, 3));
  // A's prefill stopped within a layer of its deadline: A (3-4 s) and the
  // Share (4 layers, 4 s) ran one after the other.
  EXPECT_LT(absl::Now() - start, absl::Seconds(12));
}

TEST_F(SharerE2eTest, CancelledQueuedGenerateLeavesTheQueueAtOnce) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      {"--workers=1", "--queue_size=1", "--testing_layer_delay_ms=1000"}));
  auto stub = Stub();
  AsyncGenerate running(stub.get(), RandomTokens(64, 41), absl::Seconds(30));
  ASSERT_TRUE(AwaitMetric("kvwire_workers_busy", {{"role", "sharer"}}, 1));
  AsyncGenerate queued(stub.get(), RandomTokens(64, 42), absl::Seconds(30));
  ASSERT_TRUE(AwaitMetric("kvwire_queue_depth", {{"role", "sharer"}}, 1));
  const absl::Time cancelled = absl::Now();
  queued.Cancel();
  EXPECT_EQ(queued.Wait().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(AwaitMetric("kvwire_queue_depth", {{"role", "sharer"}}, 0,
                          absl::Seconds(2)));
  EXPECT_TRUE(AwaitMetric(
      "kvwire_requests_total",
      {{"role", "sharer"}, {"method", "Generate"}, {"code", "CANCELLED"}}, 1,
      absl::Seconds(2)));
  EXPECT_LT(absl::Now() - cancelled, absl::Seconds(2));  // A still runs.
  EXPECT_EQ(Metric("kvwire_workers_busy", {{"role", "sharer"}}), 1);
  running.Cancel();
  EXPECT_EQ(running.Wait().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(AwaitMetric("kvwire_workers_busy", {{"role", "sharer"}}, 0,
                          absl::Seconds(3)));
}

TEST_F(SharerE2eTest, StalledClientIsCancelledAndFreesItsWorker) {
  const std::string wide = test_util::MakeTempDir("wide-model");
  ASSERT_TRUE(WriteWideTestModel(wide).ok());
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      {"--model_dir=" + wide, "--workers=1", "--stream_stall_timeout_seconds=1",
       "--max_buffered_bytes_per_stream=65536"}));
  auto stub = Stub();
  grpc::ClientContext stalled;
  stalled.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  auto reader =
      stub->Share(&stalled, Request(RandomTokens(256, 51), v1::SCHEME_BF16));
  v1::KvChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));  // Streaming; now stop reading.
  const absl::Time stopped = absl::Now();

  // The server ends the stalled stream itself, long before the client's
  // 120 s deadline, and its worker is free again.
  ASSERT_TRUE(AwaitMetric("kvwire_requests_total",
                          ShareCode("RESOURCE_EXHAUSTED"), 1,
                          absl::Seconds(20)));
  EXPECT_TRUE(AwaitMetric("kvwire_workers_busy", {{"role", "sharer"}}, 0));
  EXPECT_LT(absl::Now() - stopped, absl::Seconds(20));
  EXPECT_THAT(sharer_->Stderr(), HasSubstr("the client read nothing for 1s"));
  grpc::ChannelArguments args = MakeChannelArguments(ChannelOptions{});
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // Its own connection.
  auto other_stub = v1::Sharer::NewStub(
      grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                grpc::InsecureChannelCredentials(), args));
  const ShareResult next =
      Share(*other_stub, Request(RandomTokens(16, 52), v1::SCHEME_INT8));
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();

  // Reading again, the stalled client finds its call cancelled.
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(SharerE2eTest, CorruptChunkFaultIsCaughtByTheChecksum) {
  // The soak's fault flag: every data chunk gets a flipped byte.
  ASSERT_NO_FATAL_FAILURE(
      StartSharer({"--testing_corrupt_chunk_probability=1"}));
  auto stub = Stub();
  const std::vector<uint32_t> tokens = RandomTokens(16, 61);
  const ShareResult r = Share(*stub, Request(tokens, v1::SCHEME_INT8));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const auto compared = CompareWithPrefill(r.chunks, *model_dir_, tokens, 8);
  EXPECT_EQ(compared.status().code(), absl::StatusCode::kDataLoss)
      << compared.status();
  EXPECT_THAT(sharer_->Stderr(), HasSubstr("TESTING: corrupted a chunk"));
}

TEST_F(SharerE2eTest, OverloadBeyondWorkersAndQueueIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      {"--workers=1", "--queue_size=1", "--testing_layer_delay_ms=2000"}));
  auto stub = Stub();
  const v1::ShareRequest request =
      Request(RandomTokens(16, 13), v1::SCHEME_INT8);

  // A occupies the worker, B the queue slot.
  grpc::ClientContext a_context, b_context;
  std::promise<void> a_started;
  std::thread a([&] {
    auto reader = stub->Share(&a_context, request);
    v1::KvChunk chunk;
    bool first = true;
    while (reader->Read(&chunk)) {
      if (first) a_started.set_value();
      first = false;
    }
    if (first) a_started.set_value();
    reader->Finish();
  });
  ASSERT_EQ(a_started.get_future().wait_for(std::chrono::seconds(30)),
            std::future_status::ready);
  std::thread b([&] {
    auto reader = stub->Share(&b_context, request);
    v1::KvChunk chunk;
    while (reader->Read(&chunk)) {
    }
    reader->Finish();
  });
  ASSERT_TRUE(AwaitMetric("kvwire_queue_depth", {{"role", "sharer"}}, 1));

  const ShareResult c = Share(*stub, request);
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(c.status.error_message(), HasSubstr("overloaded"));

  a_context.TryCancel();
  b_context.TryCancel();
  a.join();
  b.join();
  EXPECT_TRUE(
      AwaitMetric("kvwire_queue_rejected_total", {{"role", "sharer"}}, 1));
  EXPECT_TRUE(AwaitMetric("kvwire_requests_total", ShareCode("CANCELLED"), 2));
  EXPECT_TRUE(AwaitMetric("kvwire_workers_busy", {{"role", "sharer"}}, 0));
}

TEST_F(SharerE2eTest, QueuedRequestsAreBatched) {
  ASSERT_NO_FATAL_FAILURE(
      StartSharer({"--workers=1", "--queue_size=8", "--max_batch_size=4",
                   "--testing_layer_delay_ms=1000"}));
  auto stub = Stub();
  // A holds the worker; B, C, D queue behind it and then run as one batch.
  grpc::ClientContext a_context;
  std::promise<void> a_started;
  std::thread a([&] {
    auto reader =
        stub->Share(&a_context, Request(RandomTokens(8, 20), v1::SCHEME_INT8));
    v1::KvChunk chunk;
    bool first = true;
    while (reader->Read(&chunk)) {
      if (first) a_started.set_value();
      first = false;
    }
    if (first) a_started.set_value();
    EXPECT_TRUE(reader->Finish().ok());
  });
  ASSERT_EQ(a_started.get_future().wait_for(std::chrono::seconds(30)),
            std::future_status::ready);
  const std::vector<std::vector<uint32_t>> prompts = {
      RandomTokens(30, 21), RandomTokens(24, 22), RandomTokens(27, 23)};
  std::vector<std::future<ShareResult>> results;
  for (const auto& tokens : prompts) {
    results.push_back(std::async(std::launch::async, [&stub, tokens] {
      return Share(*stub, Request(tokens, v1::SCHEME_BF16));
    }));
  }
  ASSERT_TRUE(AwaitMetric("kvwire_queue_depth", {{"role", "sharer"}}, 3));
  a.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const ShareResult r = results[i].get();
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    auto cmp = CompareWithPrefill(r.chunks, *model_dir_, prompts[i], 0);
    ASSERT_TRUE(cmp.ok()) << cmp.status();
    EXPECT_EQ(cmp->layers, 4);
    EXPECT_TRUE(cmp->bf16_close) << i << ": " << cmp->max_abs_error;
    EXPECT_EQ(static_cast<int64_t>(
                  r.chunks.back().trailer().stats().serialized_bytes()),
              SizeBeforeTrailer(r.chunks));
  }
  // Two runs: A alone, then B, C and D together.
  EXPECT_TRUE(AwaitMetric("kvwire_batch_size_count", {{"role", "sharer"}}, 2));
  EXPECT_EQ(Metric("kvwire_batch_size_sum", {{"role", "sharer"}}), 4);
  EXPECT_TRUE(AwaitMetric("kvwire_requests_total", ShareCode("OK"), 4));
}

TEST_F(SharerE2eTest, ConcurrentPrefillsGoThroughTheBatchedPrefill) {
  ASSERT_NO_FATAL_FAILURE(
      StartSharer({"--workers=4", "--queue_size=8", "--prefill_batch_rows=4"}));
  auto stub = Stub();
  const std::vector<std::vector<uint32_t>> prompts = {
      RandomTokens(30, 31), RandomTokens(9, 32), RandomTokens(24, 33),
      RandomTokens(17, 34)};
  std::vector<std::future<ShareResult>> results;
  for (const auto& tokens : prompts) {
    results.push_back(std::async(std::launch::async, [&stub, tokens] {
      return Share(*stub, Request(tokens, v1::SCHEME_BF16));
    }));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const ShareResult r = results[i].get();
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    // A padded batched prefill equals the reference's up to the order of
    // float reductions, then rounds to bf16.
    auto cmp = CompareWithPrefill(r.chunks, *model_dir_, prompts[i], 0);
    ASSERT_TRUE(cmp.ok()) << cmp.status();
    EXPECT_EQ(cmp->layers, 4);
    EXPECT_TRUE(cmp->bf16_close) << i << ": " << cmp->max_abs_error;
  }
  // Every prompt went through the batched prefill (alone or together).
  EXPECT_TRUE(AwaitMetric("kvwire_model_batch_size_sum",
                          {{"role", "sharer"}, {"stage", "prefill"}}, 4));
  EXPECT_GE(Metric("kvwire_model_batch_size_count",
                   {{"role", "sharer"}, {"stage", "prefill"}}),
            1);
}

TEST_F(SharerE2eTest, MutualTlsAndBearerToken) {
  auto pki = test_util::MakeTestPki(test_util::MakeTempDir("pki"));
  ASSERT_TRUE(pki.ok()) << pki.status();
  const std::string token_file = pki->dir + "/token";
  std::ofstream(token_file) << "correct-horse\n";
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      {"--tls_cert=" + pki->server_cert, "--tls_key=" + pki->server_key,
       "--tls_client_ca=" + pki->ca_cert, "--auth_token_file=" + token_file},
      /*plaintext=*/false));

  ClientSecurityOptions trusted;
  trusted.tls_ca_path = pki->ca_cert;
  trusted.tls_cert_path = pki->client_cert;
  trusted.tls_key_path = pki->client_key;
  trusted.tls_server_name = "localhost";
  const v1::ShareRequest request =
      Request(RandomTokens(20, 14), v1::SCHEME_INT4);

  auto stub = Stub(trusted);
  const ShareResult ok =
      Share(*stub, request, absl::Seconds(30), "correct-horse");
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_TRUE(ok.chunks.back().has_trailer());

  const ShareResult wrong = Share(*stub, request, absl::Seconds(30), "nope");
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(wrong.status.error_message(), HasSubstr("invalid bearer token"));
  const ShareResult missing = Share(*stub, request);
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  {
    grpc::ClientContext context;
    v1::SharerInfo info;
    EXPECT_EQ(stub->GetInfo(&context, v1::GetInfoRequest(), &info).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }

  // Transport-level refusals: no client certificate, a certificate from an
  // unknown CA, a client that does not trust the server, plaintext.
  ClientSecurityOptions no_cert = trusted;
  no_cert.tls_cert_path.clear();
  no_cert.tls_key_path.clear();
  ClientSecurityOptions rogue = trusted;
  rogue.tls_cert_path = pki->other_client_cert;
  rogue.tls_key_path = pki->other_client_key;
  ClientSecurityOptions distrustful = trusted;
  distrustful.tls_ca_path = pki->other_ca_cert;
  for (const auto& [name, security] :
       std::vector<std::pair<std::string, ClientSecurityOptions>>{
           {"no client cert", no_cert},
           {"untrusted client cert", rogue},
           {"untrusted server", distrustful},
           {"plaintext", ClientSecurityOptions{}}}) {
    auto refused = Stub(security);
    const ShareResult r =
        Share(*refused, request, absl::Seconds(5), "correct-horse");
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << name;
  }
  EXPECT_TRUE(
      AwaitMetric("kvwire_requests_total", ShareCode("UNAUTHENTICATED"), 2));
}

TEST_F(SharerE2eTest, MetricsTokenAndReflectionAreOptions) {
  const std::string list_services("\x3a\x00", 2);  // list_services: "".
  const std::string reflection =
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
  ASSERT_NO_FATAL_FAILURE(StartSharer({}));
  Stub();
  EXPECT_TRUE(
      test_util::RawUnaryCall(channel_, reflection, list_services).ok());
  sharer_.reset();

  const std::string token_file =
      test_util::MakeTempDir("metrics-token") + "/token";
  std::ofstream(token_file) << "scrape-me\n";
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      {"--metrics_auth_token_file=" + token_file, "--reflection=false"}));
  Stub();
  EXPECT_EQ(test_util::RawUnaryCall(channel_, reflection, list_services)
                .status()
                .code(),
            absl::StatusCode::kUnimplemented);
  const auto anonymous =
      test_util::HttpGet("127.0.0.1", metrics_port_, "/metrics");
  EXPECT_THAT(std::string(anonymous.status().message()), HasSubstr("401"));
  const auto scraped = test_util::HttpGet(
      "127.0.0.1", metrics_port_, "/metrics", absl::Seconds(5),
      "Authorization: Bearer scrape-me\r\n");
  ASSERT_TRUE(scraped.ok()) << scraped.status();
  EXPECT_THAT(*scraped, HasSubstr("kvwire_build_info"));
}

TEST_F(SharerE2eTest, RefusesPlaintextUnlessAllowed) {
  auto child = ChildProcess::Start(
      {KVWIRE_SHARER_BINARY, "--model_dir=" + *model_dir_,
       "--listen_address=127.0.0.1:0", "--metrics_address="},
      test_util::MakeTempDir("sharer") + "/stderr.log");
  ASSERT_TRUE(child.ok());
  auto status = (*child)->Wait(kExitTimeout);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 1);
  EXPECT_THAT((*child)->Stderr(), HasSubstr("--allow_insecure"));
}

TEST_F(SharerE2eTest, ServesAModelNamedByItsHuggingFaceId) {
  const std::string cache = test_util::MakeTempDir("hub");
  ASSERT_TRUE(
      test_util::StoreInHubCache(*model_dir_, cache, "kvwire-test/tiny-sharer")
          .ok());
  ASSERT_EQ(::setenv("HF_HUB_CACHE", cache.c_str(), 1), 0);
  StartSharer({"--model_dir=kvwire-test/tiny-sharer"});
  ::unsetenv("HF_HUB_CACHE");
  ASSERT_FALSE(HasFatalFailure());
  auto local = CheckpointFingerprint(*model_dir_);
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(fingerprint_, *local);
  EXPECT_THAT(sharer_->Stderr(),
              HasSubstr("--model_dir=kvwire-test/tiny-sharer: Hugging Face "
                        "kvwire-test/tiny-sharer revision main"));

  auto stub = Stub();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::SharerInfo info;
  ASSERT_TRUE(stub->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
  EXPECT_EQ(info.model().name(), "kvwire-test/tiny-sharer");

  // The very model: its KV cache is the local directory's, bit for bit.
  const std::vector<uint32_t> tokens = RandomTokens(40, 61);
  const ShareResult r = Share(*stub, Request(tokens, v1::SCHEME_BF16));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  auto cmp = CompareWithPrefill(r.chunks, *model_dir_, tokens, 0);
  ASSERT_TRUE(cmp.ok()) << cmp.status();
  EXPECT_TRUE(cmp->bf16_bit_exact) << "max abs error " << cmp->max_abs_error;
}

TEST_F(SharerE2eTest, AbsentHuggingFaceIdExitsWithTheDownloadCommand) {
  const std::string cache = test_util::MakeTempDir("empty-hub");
  ASSERT_EQ(::setenv("HF_HUB_CACHE", cache.c_str(), 1), 0);
  auto child = ChildProcess::Start(
      {KVWIRE_SHARER_BINARY, "--model_dir=Qwen/Qwen2.5-0.5B-Instruct@v2",
       "--listen_address=127.0.0.1:0",
       "--metrics_address=", "--allow_insecure"},
      test_util::MakeTempDir("sharer") + "/stderr.log");
  ::unsetenv("HF_HUB_CACHE");
  ASSERT_TRUE(child.ok());
  auto status = (*child)->Wait(kExitTimeout);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 1);
  EXPECT_THAT(
      (*child)->Stderr(),
      AllOf(HasSubstr("NOT_FOUND: --model_dir: "),
            HasSubstr("models--Qwen--Qwen2.5-0.5B-Instruct"), HasSubstr(cache),
            HasSubstr("hf download Qwen/Qwen2.5-0.5B-Instruct "
                      "--revision v2"),
            Not(HasSubstr("huggingface-cli"))));
}

TEST_F(SharerE2eTest, SigtermDrainsInFlightCallsAndExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      {"--testing_layer_delay_ms=600", "--shutdown_grace_seconds=2"}));
  auto stub = Stub();
  ASSERT_EQ(test_util::HealthCheck(channel_, "kvwire.v1.Sharer").value_or(-1),
            1);
  const std::vector<uint32_t> tokens = RandomTokens(40, 15);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto reader = stub->Share(&context, Request(tokens, v1::SCHEME_BF16));
  std::vector<v1::KvChunk> chunks;
  v1::KvChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));  // The header: the call is running.
  chunks.push_back(chunk);

  ASSERT_TRUE(sharer_->Signal(SIGTERM).ok());
  // Still answering during the grace period, but NOT_SERVING.
  EXPECT_TRUE(WaitFor(
      [&] {
        return test_util::HealthCheck(channel_, "kvwire.v1.Sharer",
                                      absl::Seconds(1))
                   .value_or(-1) == 2;
      },
      absl::Seconds(5)));

  while (reader->Read(&chunk)) chunks.push_back(chunk);
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(chunks.empty());
  EXPECT_TRUE(chunks.back().has_trailer());
  auto cmp = CompareWithPrefill(chunks, *model_dir_, tokens, 0);
  ASSERT_TRUE(cmp.ok()) << cmp.status();
  EXPECT_TRUE(cmp->bf16_bit_exact);

  auto exit_status = sharer_->Wait(kExitTimeout);
  ASSERT_TRUE(exit_status.ok()) << exit_status.status();
  EXPECT_TRUE(WIFEXITED(*exit_status));
  EXPECT_EQ(WEXITSTATUS(*exit_status), 0);
  // New calls are refused once it is gone.
  EXPECT_EQ(Share(*stub, Request(tokens, v1::SCHEME_INT8), absl::Seconds(2))
                .status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST_F(SharerE2eTest, DrainTimeoutCancelsStragglersAndStillExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      {"--testing_layer_delay_ms=2000", "--drain_timeout_seconds=0.5"}));
  auto stub = Stub();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto reader =
      stub->Share(&context, Request(RandomTokens(8, 16), v1::SCHEME_INT8));
  v1::KvChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  const absl::Time signalled = absl::Now();
  ASSERT_TRUE(sharer_->Signal(SIGTERM).ok());
  while (reader->Read(&chunk)) {
  }
  EXPECT_FALSE(reader->Finish().ok());
  auto exit_status = sharer_->Wait(kExitTimeout);
  ASSERT_TRUE(exit_status.ok()) << exit_status.status();
  EXPECT_TRUE(WIFEXITED(*exit_status));
  EXPECT_EQ(WEXITSTATUS(*exit_status), 0);
  // Well before the 8 s the prefill would have taken.
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(5));
  // The log names the shutdown, not the client, as the cause.
  EXPECT_THAT(sharer_->Stderr(),
              HasSubstr("status=UNAVAILABLE message=\"cancelled by the "
                        "server"));
  EXPECT_THAT(sharer_->Stderr(), Not(HasSubstr("cancelled by the client")));
}

TEST_F(SharerE2eTest, MetricsPortServesProbesModelInfoAndProcessMetrics) {
  ASSERT_NO_FATAL_FAILURE(StartSharer({"--max_new_tokens=8"}));
  auto healthz =
      test_util::HttpRequest("127.0.0.1", metrics_port_, "GET", "/healthz");
  ASSERT_TRUE(healthz.ok()) << healthz.status();
  EXPECT_EQ(healthz->status, 200);
  auto readyz =
      test_util::HttpRequest("127.0.0.1", metrics_port_, "GET", "/readyz");
  ASSERT_TRUE(readyz.ok()) << readyz.status();
  EXPECT_EQ(readyz->status, 200) << readyz->body;
  auto stub = Stub();  // Also opens channel_.
  EXPECT_EQ(test_util::HealthCheck(channel_, "kvwire.v1.Sharer").value_or(-1),
            1);

  // One Generate: its seconds per output token are observed.
  v1::GenerateRequest request;
  request.set_request_id("tpot");
  for (uint32_t t : RandomTokens(8, 7)) request.add_token_ids(t);
  request.mutable_generation()->set_max_new_tokens(8);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::GenerateResponse response;
  ASSERT_TRUE(stub->Generate(&context, request, &response).ok());
  ASSERT_TRUE(AwaitMetric(
      "kvwire_requests_total",
      {{"role", "sharer"}, {"method", "Generate"}, {"code", "OK"}}, 1));
  const std::string text = ScrapeMetrics();
  EXPECT_EQ(MetricValue(text, "kvwire_time_per_output_token_seconds_count",
                        {{"role", "sharer"}}),
            1);
  EXPECT_NEAR(MetricValue(text, "kvwire_time_per_output_token_seconds_sum",
                          {{"role", "sharer"}})
                  .value_or(-1),
              response.generation_seconds() / response.token_ids_size(), 1e-6);
  EXPECT_THAT(text, Not(HasSubstr("kvwire_decode_tokens_per_second")));
  // The model it serves, and the process beside the fleet's.
  EXPECT_THAT(text, HasSubstr("kvwire_model_info{"));
  EXPECT_THAT(text,
              HasSubstr(absl::StrCat("fingerprint=\"", fingerprint_, "\"")));
  EXPECT_THAT(text, HasSubstr("device=\"cpu\""));
  EXPECT_THAT(text, HasSubstr("role=\"sharer\""));
  for (const char* name :
       {"process_cpu_seconds_total", "process_resident_memory_bytes",
        "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
        "process_start_time_seconds"}) {
    EXPECT_GT(MetricValue(text, name, {}).value_or(-1), 0) << name;
  }
}

}  // namespace
}  // namespace kvwire
