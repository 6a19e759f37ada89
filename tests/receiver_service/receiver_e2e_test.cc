// End-to-end tests of kvwire-receiver with kvwire-sharer: both real binaries
// are started as child processes on 127.0.0.1 (ports chosen by the kernel
// and read from their ready lines), called with a real gRPC client, and
// their answers compared with the in-process C2cPipeline (bit-identical
// tokens), their byte reports with the codec's exact stream sizes, their
// /metrics scraped over HTTP. Faults: a sharer that is down, killed
// mid-stream, too slow, of the wrong shape, refusing the receiver's token,
// and a proxy sharer in this process that corrupts or truncates a stream.
// Over 700 lines on purpose: the cases share one fixture that starts the
// real binaries once per suite (a split would start them again per file).
#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <future>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/service/channel.h"
#include "common/service/grpc_status.h"
#include "common/service/security.h"
#include "common/service/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "tests/common/hub_cache_testing.h"
#include "tests/common/service/testing_util.h"
#include "tests/receiver_service/pipeline_reference.h"

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

// ~100 prompt tokens with the byte-level test tokenizer and the template.
constexpr char kQuestion[] =
    "Which gas do plants take in from the air to make their food, and "
    "why is sunlight needed?";

v1::TransferSpec Spec(v1::Scheme scheme, double proportion = 0,
                      v1::SelectionMode mode = v1::SELECTION_UNSPECIFIED) {
  v1::TransferSpec spec;
  spec.set_scheme(scheme);
  if (proportion > 0) {
    spec.mutable_selection()->set_mode(mode);
    spec.mutable_selection()->set_proportion(proportion);
  }
  return spec;
}

v1::GenerationParams Generation(uint32_t max_new_tokens = 12) {
  v1::GenerationParams g;
  g.set_max_new_tokens(max_new_tokens);
  return g;
}

using Service = test_util::StartedService;

struct AnswerResult {
  grpc::Status status;
  v1::AnswerResponse response;
};

std::vector<uint32_t> Ids(const v1::AnswerResponse& r) {
  return std::vector<uint32_t>(r.token_ids().begin(), r.token_ids().end());
}

// A Sharer in this process that forwards to a real sharer and damages the
// stream on the way: flips a byte of the values of chunk `corrupt_chunk`,
// or ends the call with OK after `truncate_after` chunks. Unless
// `forward_batches` is set, it asks the sharer for one block per message
// (ShareRequest.max_blocks_per_message = 0), so that those indices count
// blocks; either way it forwards the messages as they came and counts
// them.
class FaultySharer final : public v1::Sharer::Service {
 public:
  explicit FaultySharer(const std::string& upstream) {
    ChannelOptions options;
    options.security.allow_insecure = true;
    stub_ = v1::Sharer::NewStub(*CreateKvwireChannel(upstream, options));
  }

  std::atomic<int> corrupt_chunk{-1};
  std::atomic<int> truncate_after{-1};
  std::atomic<int> calls{0};
  std::atomic<bool> forward_batches{false};
  // Of the last call: messages forwarded, and the most blocks in one.
  std::atomic<int> last_messages{0};
  std::atomic<int> last_largest_batch{0};

  grpc::Status Share(grpc::ServerContext* server_context,
                     const v1::ShareRequest* request,
                     grpc::ServerWriter<v1::KvChunk>* writer) override {
    ++calls;
    grpc::ClientContext context;
    context.set_deadline(server_context->deadline());
    v1::ShareRequest forwarded = *request;
    if (!forward_batches.load()) forwarded.set_max_blocks_per_message(0);
    auto reader = stub_->Share(&context, forwarded);
    v1::KvChunk chunk;
    int index = 0;
    last_messages = 0;
    last_largest_batch = 0;
    while (reader->Read(&chunk)) {
      ++last_messages;
      last_largest_batch =
          std::max(last_largest_batch.load(), chunk.blocks_size());
      if (index == truncate_after.load()) {
        context.TryCancel();
        while (reader->Read(&chunk)) {
        }
        reader->Finish();
        return grpc::Status::OK;
      }
      if (index == corrupt_chunk.load() && chunk.has_block() &&
          !chunk.block().values().empty()) {
        (*chunk.mutable_block()->mutable_values())[0] ^= 0x5a;
      }
      writer->Write(chunk);
      ++index;
    }
    return reader->Finish();
  }

  grpc::Status GetInfo(grpc::ServerContext*, const v1::GetInfoRequest*,
                       v1::SharerInfo* info) override {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return stub_->GetInfo(&context, v1::GetInfoRequest(), info);
  }

 private:
  std::unique_ptr<v1::Sharer::Stub> stub_;
};

class ReceiverE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto assets = MakeReferenceAssets(test_util::MakeTempDir("assets"));
    ASSERT_TRUE(assets.ok()) << assets.status();
    assets_ = new ReferenceAssets(*assets);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    for (const auto& [name, service] :
         {std::make_pair("sharer", &sharer_),
          std::make_pair("sharer2", &sharer2_),
          std::make_pair("receiver", &receiver_)}) {
      if (service->process != nullptr) {
        std::cerr << "---- " << name << " stderr ----\n"
                  << service->process->Stderr() << "\n";
      }
    }
  }

  static void StartService(Service& service,
                           const std::vector<std::string>& argv,
                           const std::string& ready_prefix) {
    auto started = test_util::StartService(argv, ready_prefix, kStartTimeout);
    ASSERT_TRUE(started.ok()) << started.status();
    service = *std::move(started);
  }

  static void StartSharer(Service& service, std::vector<std::string> flags,
                          const std::string& model_dir = "",
                          bool plaintext = true) {
    std::vector<std::string> argv = {
        KVWIRE_SHARER_BINARY,
        "--model_dir=" + (model_dir.empty() ? assets_->sharer_dir : model_dir),
        "--listen_address=127.0.0.1:0",
        "--metrics_address=127.0.0.1:0",
        "--intra_op_threads=1",
        "--drain_timeout_seconds=5"};
    if (plaintext) argv.push_back("--allow_insecure");
    argv.insert(argv.end(), flags.begin(), flags.end());
    StartService(service, argv, "kvwire-sharer ready");
  }

  // A receiver talking plaintext to `sharer_target` (empty: sharer_).
  void StartReceiver(std::vector<std::string> flags,
                     std::string sharer_target = "", bool plaintext = true) {
    if (sharer_target.empty()) {
      sharer_target = absl::StrCat("127.0.0.1:", sharer_.port);
    }
    std::vector<std::string> argv = {KVWIRE_RECEIVER_BINARY,
                                     "--model_dir=" + assets_->receiver_dir,
                                     "--fuser_dir=" + assets_->fuser_dir,
                                     "--listen_address=127.0.0.1:0",
                                     "--metrics_address=127.0.0.1:0",
                                     "--intra_op_threads=1",
                                     "--drain_timeout_seconds=5",
                                     "--sharer_target=" + sharer_target};
    if (plaintext) {
      argv.push_back("--allow_insecure");
      argv.push_back("--sharer_allow_insecure");
    }
    argv.insert(argv.end(), flags.begin(), flags.end());
    StartService(receiver_, argv, "kvwire-receiver ready");
  }

  std::unique_ptr<v1::Receiver::Stub> Stub(
      ClientSecurityOptions security = {}) {
    if (!security.tls_enabled()) security.allow_insecure = true;
    ChannelOptions options;
    options.security = security;
    auto channel = CreateKvwireChannel(
        absl::StrCat("127.0.0.1:", receiver_.port), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    channel_ = *channel;
    return v1::Receiver::NewStub(*channel);
  }

  static v1::AnswerRequest Request(const v1::TransferSpec& spec,
                                   const std::string& id = "e2e",
                                   v1::AnswerMode mode = v1::ANSWER_MODE_C2C) {
    v1::AnswerRequest r;
    r.set_request_id(id);
    r.set_question(kQuestion);
    r.set_mode(mode);
    *r.mutable_spec() = spec;
    *r.mutable_generation() = Generation();
    return r;
  }

  static AnswerResult Answer(v1::Receiver::Stub& stub,
                             const v1::AnswerRequest& request,
                             absl::Duration deadline = absl::Seconds(60),
                             const std::string& token = "") {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    AttachBearerToken(&context, token);
    AnswerResult r;
    r.status = stub.Answer(&context, request, &r.response);
    return r;
  }

  static std::vector<uint32_t> Reference(
      const v1::AnswerRequest& request, const std::string& selection = "spec") {
    const bool c2c = request.mode() != v1::ANSWER_MODE_RECEIVER_ONLY;
    auto ref =
        ReferenceAnswer(*assets_, request.question(), c2c, request.spec(),
                        request.generation(), selection, request.request_id());
    EXPECT_TRUE(ref.ok()) << ref.status();
    return ref.ok() ? ref->token_ids : std::vector<uint32_t>();
  }

  static std::vector<uint32_t> ReceiverOnlyReference() {
    return Reference(
        Request(v1::TransferSpec(), "e2e", v1::ANSWER_MODE_RECEIVER_ONLY));
  }

  // `faulty` served on a plaintext loopback port of its own.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> StartProxy(
      FaultySharer& faulty) {
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.security.allow_insecure = true;
    options.drain_timeout = absl::Seconds(2);
    return GrpcServer::Start(options, {&faulty}, {"kvwire.v1.Sharer"});
  }

  static std::string Scrape(const Service& service) {
    auto body =
        test_util::HttpGet("127.0.0.1", service.metrics_port, "/metrics");
    EXPECT_TRUE(body.ok()) << body.status();
    return body.value_or("");
  }

  static bool AwaitMetric(const Service& service, const std::string& name,
                          const std::map<std::string, std::string>& labels,
                          double value,
                          absl::Duration timeout = absl::Seconds(10)) {
    return WaitFor(
        [&] { return MetricValue(Scrape(service), name, labels) == value; },
        timeout);
  }

  static std::map<std::string, std::string> AnswerCode(
      const std::string& code, const std::string& method = "Answer") {
    return {{"role", "receiver"}, {"method", method}, {"code", code}};
  }

  static ReferenceAssets* assets_;
  Service sharer_;
  Service sharer2_;
  Service receiver_;
  std::shared_ptr<grpc::Channel> channel_;
};

ReferenceAssets* ReceiverE2eTest::assets_ = nullptr;

// The number N in a fallback reason's "(after N chunks".
int ChunksBeforeFailure(const std::string& reason) {
  std::smatch m;
  if (!std::regex_search(reason, m, std::regex("after ([0-9]+) chunks"))) {
    return -1;
  }
  return std::stoi(m[1]);
}

TEST_F(ReceiverE2eTest, AnswersEqualTheInProcessPipelineBitForBit) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}));
  auto stub = Stub();
  EXPECT_EQ(test_util::HealthCheck(channel_, "kvwire.v1.Receiver").value_or(-1),
            1);

  // The sharer's own description (its fingerprint is in every header).
  ChannelOptions sharer_options;
  sharer_options.security.allow_insecure = true;
  auto sharer_stub = v1::Sharer::NewStub(*CreateKvwireChannel(
      absl::StrCat("127.0.0.1:", sharer_.port), sharer_options));
  v1::SharerInfo info;
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ASSERT_TRUE(
        sharer_stub->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
  }

  struct Case {
    std::string name;
    v1::TransferSpec spec;
    std::string scheme_label;
  };
  v1::TransferSpec zstd = Spec(v1::SCHEME_INT2);
  zstd.set_granularity(v1::GRANULARITY_PER_TOKEN);
  zstd.mutable_entropy()->set_coder(v1::ENTROPY_CODER_ZSTD);
  const std::vector<Case> cases = {
      {"bf16", Spec(v1::SCHEME_BF16), "bf16"},
      {"int8", Spec(v1::SCHEME_INT8), "int8"},
      {"int4", Spec(v1::SCHEME_INT4), "int4"},
      {"int4-half", Spec(v1::SCHEME_INT4, 0.5, v1::SELECTION_KNORM_TOPK),
       "int4"},
      {"int2-zstd", zstd, "int2"},
  };
  uint64_t int4_wire = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const v1::AnswerRequest request = Request(c.spec, "e2e-" + c.name);
    const AnswerResult r = Answer(*stub, request);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    const v1::AnswerResponse& a = r.response;
    EXPECT_EQ(a.mode(), v1::ANSWER_MODE_C2C);
    EXPECT_FALSE(a.fell_back()) << a.fallback_reason();
    EXPECT_EQ(a.request_id(), request.request_id());

    auto ref =
        ReferenceAnswer(*assets_, kQuestion, /*c2c=*/true, c.spec,
                        request.generation(), "spec", request.request_id());
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(Ids(a), ref->token_ids);
    EXPECT_EQ(a.text(), ref->text);
    ASSERT_EQ(a.token_ids_size(), 12);

    // The transfer report: the codec's numbers, and the bytes serialized
    // exactly as the codec produces them for this sharer's header.
    const v1::TransferReport& t = a.transfer();
    EXPECT_EQ(t.raw_kv_bytes(), ref->raw_kv_bytes);
    EXPECT_EQ(t.payload_bytes(), ref->payload_bytes);
    EXPECT_EQ(t.scale_bytes(), ref->scale_bytes);
    EXPECT_EQ(t.index_bytes(), ref->index_bytes);
    EXPECT_EQ(t.prompt_tokens(), ref->prompt_tokens);
    EXPECT_EQ(t.tokens_sent(), ref->tokens_sent);
    EXPECT_EQ(t.layers_sent(), 3u);
    EXPECT_EQ(t.spec().scheme(), c.spec.scheme());
    auto expected = ExpectedStream(*assets_, info.model(), kQuestion, c.spec,
                                   request.request_id());
    ASSERT_TRUE(expected.ok()) << expected.status();
    EXPECT_EQ(t.serialized_bytes(), expected->serialized_bytes);
    // The receiver asks for batches of blocks (fewer messages, same bytes):
    // 5 bytes of gRPC framing per message actually received, at most one
    // per chunk of the unbatched stream, at least header, blocks, trailer.
    // (FaultySharer's test counts the messages exactly.)
    const uint64_t framing = t.wire_bytes() - t.serialized_bytes();
    EXPECT_EQ(framing % 5, 0u);
    EXPECT_LE(framing, 5 * expected->chunks);
    EXPECT_GE(framing, 5u * 3);
    EXPECT_GT(t.raw_kv_bytes(), 0u);
    if (c.name == "int4") int4_wire = t.wire_bytes();

    const v1::StageTimings& s = a.timings();
    EXPECT_GT(s.receiver_prefill_seconds(), 0);
    EXPECT_GT(s.transfer_seconds(), 0);
    EXPECT_GT(s.sharer_compute_seconds(), 0);
    EXPECT_GT(s.decode_seconds(), 0);
    EXPECT_GT(s.fuse_seconds(), 0);
    EXPECT_GT(s.time_to_first_token_seconds(), 0);
    EXPECT_GE(s.total_seconds(), s.time_to_first_token_seconds());
  }
  // Receiver-only answers equal the pipeline's receiver-only answers.
  const v1::AnswerRequest alone =
      Request(v1::TransferSpec(), "e2e", v1::ANSWER_MODE_RECEIVER_ONLY);
  const AnswerResult r = Answer(*stub, alone);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.mode(), v1::ANSWER_MODE_RECEIVER_ONLY);
  EXPECT_EQ(r.response.transfer().wire_bytes(), 0u);
  EXPECT_EQ(Ids(r.response), ReceiverOnlyReference());

  // Metrics on both sides reflect the requests and agree on the bytes.
  ASSERT_TRUE(AwaitMetric(receiver_, "kvwire_requests_total", AnswerCode("OK"),
                          cases.size() + 1));
  const std::string recv = Scrape(receiver_);
  const std::string shr = Scrape(sharer_);
  const std::map<std::string, std::string> r_int4{{"role", "receiver"},
                                                  {"scheme", "int4"}};
  const std::map<std::string, std::string> s_int4{{"role", "sharer"},
                                                  {"scheme", "int4"}};
  EXPECT_EQ(MetricValue(recv, "kvwire_transfers_total", r_int4), 2);
  EXPECT_EQ(MetricValue(recv, "kvwire_kv_wire_bytes_total", r_int4),
            MetricValue(shr, "kvwire_kv_wire_bytes_total", s_int4));
  EXPECT_EQ(MetricValue(recv, "kvwire_kv_serialized_bytes_total", r_int4),
            MetricValue(shr, "kvwire_kv_serialized_bytes_total", s_int4));
  EXPECT_GT(MetricValue(recv, "kvwire_kv_wire_bytes_total", r_int4).value_or(0),
            static_cast<double>(int4_wire));
  EXPECT_EQ(MetricValue(recv, "kvwire_kv_compression_ratio_count",
                        {{"role", "receiver"}, {"scheme", "bf16"}}),
            1);
  EXPECT_EQ(MetricValue(recv, "kvwire_stage_duration_seconds_count",
                        {{"role", "receiver"}, {"stage", "fuse"}}),
            cases.size());
  EXPECT_EQ(MetricValue(recv, "kvwire_stage_duration_seconds_count",
                        {{"role", "receiver"}, {"stage", "receiver_prefill"}}),
            cases.size() + 1);
  EXPECT_EQ(MetricValue(recv, "kvwire_time_to_first_token_seconds_count",
                        {{"role", "receiver"}}),
            cases.size() + 1);
  EXPECT_EQ(MetricValue(recv, "kvwire_generated_tokens_total",
                        {{"role", "receiver"}}),
            12 * (cases.size() + 1));
  EXPECT_EQ(MetricValue(recv, "kvwire_time_per_output_token_seconds_count",
                        {{"role", "receiver"}}),
            cases.size() + 1);
  EXPECT_FALSE(MetricValue(recv, "kvwire_decode_tokens_per_second_count",
                           {{"role", "receiver"}})
                   .has_value());
  EXPECT_EQ(MetricValue(recv, "kvwire_requests_in_flight",
                        {{"role", "receiver"}, {"method", "Answer"}}),
            0);
  EXPECT_GT(MetricValue(recv, "kvwire_kv_tokens_selected_total",
                        {{"role", "receiver"}})
                .value_or(0),
            0);
  EXPECT_EQ(
      MetricValue(shr, "kvwire_requests_total",
                  {{"role", "sharer"}, {"method", "Share"}, {"code", "OK"}}),
      cases.size());
}

TEST_F(ReceiverE2eTest, MalformedPayloadsAreInvalidArgumentWithAReason) {
  // Issue 14: gRPC answered these with UNIMPLEMENTED and no message.
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}));
  auto stub = Stub();  // Opens channel_.
  // AnswerRequest.request_id (field 1) holding invalid UTF-8.
  const std::string non_utf8 = std::string("\x0a\x02\xc3\x28", 4);
  for (const std::string method :
       {"/kvwire.v1.Receiver/Answer", "/kvwire.v1.Receiver/AnswerStream"}) {
    const auto malformed =
        test_util::RawUnaryCall(channel_, method, "\x12\x05ab");
    EXPECT_EQ(malformed.status().code(), absl::StatusCode::kInvalidArgument)
        << method << ": " << malformed.status();
    EXPECT_THAT(std::string(malformed.status().message()),
                HasSubstr("not a valid kvwire.v1.AnswerRequest"))
        << method;
    const auto bad_text = test_util::RawUnaryCall(channel_, method, non_utf8);
    EXPECT_EQ(bad_text.status().code(), absl::StatusCode::kInvalidArgument)
        << method;
    EXPECT_THAT(std::string(bad_text.status().message()),
                HasSubstr("request_id is not valid UTF-8"))
        << method;
  }
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_requests_total",
                          AnswerCode("INVALID_ARGUMENT"), 2));
}

TEST_F(ReceiverE2eTest, ClientTextCannotForgeLogLines) {
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}));
  auto stub = Stub();
  const std::string forged = "\nE1207 00:00:00.000000 1 forged.cc:1] ";
  v1::AnswerRequest r = Request(v1::TransferSpec(), "x" + forged + "id\x1b[31m",
                                v1::ANSWER_MODE_RECEIVER_ONLY);
  r.clear_question();
  v1::ChatMessage* m = r.add_messages();
  m->set_role(forged + "role");  // Refused, and quoted in the message.
  m->set_content("hi");
  EXPECT_EQ(Answer(*stub, r).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // The call's line is written when the reactor is done, after the status.
  std::string log;
  for (int i = 0; i < 200; ++i) {
    log = receiver_.process->Stderr();
    if (log.find("request_id=x\\nE1207") != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(25));
  }
  EXPECT_THAT(log, HasSubstr("request_id=x\\nE1207"));
  EXPECT_THAT(log, Not(HasSubstr(forged)));
  EXPECT_THAT(log, Not(HasSubstr("\x1b[31m")));
}

TEST_F(ReceiverE2eTest, TextToTextOverTheNetworkEqualsTheInProcessPipeline) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  // The sharer's chat template, as the in-process pipeline reads it from
  // the sharer's directory.
  ASSERT_NO_FATAL_FAILURE(
      StartReceiver({"--sharer_tokenizer_dir=" + assets_->sharer_dir}));
  auto stub = Stub();
  const v1::AnswerRequest request =
      Request(v1::TransferSpec(), "e2e-t2t", v1::ANSWER_MODE_TEXT_TO_TEXT);
  const AnswerResult r = Answer(*stub, request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const v1::AnswerResponse& a = r.response;
  EXPECT_EQ(a.mode(), v1::ANSWER_MODE_TEXT_TO_TEXT);
  EXPECT_FALSE(a.fell_back()) << a.fallback_reason();

  auto ref = ReferenceTextToText(*assets_, kQuestion, request.generation());
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_FALSE(ref->background_ids.empty());
  EXPECT_EQ(std::vector<uint32_t>(a.background_token_ids().begin(),
                                  a.background_token_ids().end()),
            ref->background_ids);
  EXPECT_EQ(a.background_text(), ref->background_text);
  EXPECT_EQ(Ids(a), ref->token_ids);
  EXPECT_EQ(a.text(), ref->text);
  // The text baseline's bytes: the serialized GenerateResponse.
  v1::GenerateResponse sent;
  sent.set_request_id(request.request_id());
  sent.mutable_token_ids()->Add(ref->background_ids.begin(),
                                ref->background_ids.end());
  // Plus two timings (9 bytes each), the prompt length and the EOS flag.
  EXPECT_GE(a.transfer().serialized_bytes(), sent.ByteSizeLong() + 18);
  EXPECT_LE(a.transfer().serialized_bytes(), sent.ByteSizeLong() + 25);
  EXPECT_EQ(a.transfer().wire_bytes(), a.transfer().serialized_bytes() + 5);
  EXPECT_GT(a.timings().sharer_generation_seconds(), 0);
  EXPECT_GT(a.timings().receiver_prefill_seconds(), 0);
  EXPECT_TRUE(AwaitMetric(
      sharer_, "kvwire_requests_total",
      {{"role", "sharer"}, {"method", "Generate"}, {"code", "OK"}}, 1));
  EXPECT_EQ(MetricValue(Scrape(sharer_), "kvwire_generated_tokens_total",
                        {{"role", "sharer"}}),
            static_cast<double>(ref->background_ids.size()));

  // The sharer gone: receiver-only per the default policy, or the error.
  sharer_.process.reset();
  const AnswerResult f = Answer(*stub, request);
  ASSERT_TRUE(f.status.ok()) << f.status.error_message();
  EXPECT_TRUE(f.response.fell_back());
  EXPECT_EQ(f.response.mode(), v1::ANSWER_MODE_RECEIVER_ONLY);
  EXPECT_THAT(f.response.fallback_reason(), HasSubstr("sharer Generate"));
  EXPECT_EQ(Ids(f.response), ReceiverOnlyReference());
  v1::AnswerRequest strict = request;
  strict.set_fallback(v1::FALLBACK_POLICY_FAIL);
  EXPECT_EQ(Answer(*stub, strict).status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST_F(ReceiverE2eTest, TraceShowsEveryStageOnTheRequestsClock) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}));
  auto stub = Stub();
  v1::AnswerRequest request = Request(Spec(v1::SCHEME_INT4), "e2e-trace");
  const AnswerResult plain = Answer(*stub, request);
  ASSERT_TRUE(plain.status.ok()) << plain.status.error_message();
  EXPECT_EQ(plain.response.trace_size(), 0);

  request.set_trace(true);
  const AnswerResult r = Answer(*stub, request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(Ids(r.response), Ids(plain.response));
  std::map<std::string, int> per_track;
  int fusions = 0, tokens = 0, decoded_blocks = 0;
  double share_end = 0, last_token_end = 0;
  for (const v1::TraceEvent& e : r.response.trace()) {
    SCOPED_TRACE(e.name());
    EXPECT_GE(e.start_seconds(), 0);
    EXPECT_GE(e.end_seconds(), e.start_seconds());
    EXPECT_LE(e.end_seconds(), r.response.timings().total_seconds());
    ++per_track[e.track()];
    // One event per layer fused alone, one per batch of held layers.
    int batched = 0;
    if (absl::StartsWith(e.name(), "fuse sharer layer")) {
      ++fusions;
    } else if (absl::StartsWith(e.name(), "fuse ") &&
               absl::SimpleAtoi(e.name().substr(5, e.name().find(' ', 5) - 5),
                                &batched)) {
      fusions += batched;
    }
    // "decode chunk (layer L)", or "decode chunk (N blocks, ...)" for a
    // batch of blocks.
    int in_batch = 0;
    if (absl::StartsWith(e.name(), "decode chunk (layer")) {
      ++decoded_blocks;
    } else if (absl::StartsWith(e.name(), "decode chunk (") &&
               absl::SimpleAtoi(
                   e.name().substr(14, e.name().find(' ', 14) - 14),
                   &in_batch)) {
      decoded_blocks += in_batch;
    }
    if (absl::StartsWith(e.name(), "token ") ||
        absl::StartsWith(e.name(), "last prompt token")) {
      ++tokens;
      last_token_end = std::max(last_token_end, e.end_seconds());
    }
    if (e.track() == "sharer call") share_end = e.end_seconds();
  }
  EXPECT_EQ(per_track["sharer call"], 1);
  EXPECT_GE(per_track["receiver stream"], 3);  // Header, blocks, trailer.
  EXPECT_EQ(fusions, 3);         // The sharer's 3 layers, alone or batched.
  EXPECT_GE(decoded_blocks, 6);  // K and V of each layer.
  EXPECT_EQ(tokens, 12);
  EXPECT_LT(share_end, last_token_end);
}

TEST_F(ReceiverE2eTest, AnswerStreamSendsEachTokenThenTheResponse) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}));
  auto stub = Stub();
  const v1::AnswerRequest request = Request(Spec(v1::SCHEME_INT8), "stream");
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto reader = stub->AnswerStream(&context, request);
  std::vector<v1::AnswerEvent> events;
  v1::AnswerEvent event;
  while (reader->Read(&event)) events.push_back(event);
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(events.size(), 13u);
  std::vector<uint32_t> streamed;
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    ASSERT_TRUE(events[i].has_token());
    EXPECT_EQ(events[i].token().index(), i);
    streamed.push_back(events[i].token().token_id());
    text += events[i].token().text();
  }
  ASSERT_TRUE(events.back().has_final());
  const v1::AnswerResponse& final_response = events.back().final();
  EXPECT_EQ(Ids(final_response), streamed);
  EXPECT_EQ(streamed, Reference(request));
  EXPECT_THAT(text, HasSubstr(final_response.text()));
  EXPECT_GT(final_response.transfer().wire_bytes(), 0u);
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_requests_total",
                          AnswerCode("OK", "AnswerStream"), 1));
}

TEST_F(ReceiverE2eTest, ReceiverGuidedSelectionEqualsTheInProcessStrategy) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  for (const std::string signal : {"attention", "vnorm"}) {
    SCOPED_TRACE(signal);
    ASSERT_NO_FATAL_FAILURE(
        StartReceiver({"--guided_selection_signal=" + signal}));
    auto stub = Stub();
    // EXPLICIT without indices: the receiver picks half of the tokens.
    const v1::AnswerRequest request =
        Request(Spec(v1::SCHEME_INT4, 0.5, v1::SELECTION_EXPLICIT), "guided");
    const AnswerResult r = Answer(*stub, request);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_FALSE(r.response.fell_back()) << r.response.fallback_reason();
    const v1::TransferSpec in_process = Spec(v1::SCHEME_INT4, 0.5);
    auto ref = ReferenceAnswer(*assets_, kQuestion, true, in_process,
                               request.generation(), "receiver_" + signal,
                               request.request_id());
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(Ids(r.response), ref->token_ids);
    const v1::TransferReport& t = r.response.transfer();
    EXPECT_EQ(t.tokens_sent(), ref->tokens_sent);
    EXPECT_LT(t.tokens_sent(), 3 * t.prompt_tokens());
    EXPECT_EQ(t.spec().selection().mode(), v1::SELECTION_EXPLICIT);
    receiver_.process.reset();
  }
}

TEST_F(ReceiverE2eTest, SharerDownFallsBackOrFailsPerPolicy) {
  // A port nothing listens on: a sharer that started and is gone.
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  const std::string dead = absl::StrCat("127.0.0.1:", sharer_.port);
  sharer_.process.reset();
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}, dead));
  auto stub = Stub();
  const std::vector<uint32_t> alone = ReceiverOnlyReference();

  // Default policy: receiver-only, said in the response and the metrics.
  const AnswerResult r = Answer(*stub, Request(Spec(v1::SCHEME_INT4)));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_TRUE(r.response.fell_back());
  EXPECT_EQ(r.response.mode(), v1::ANSWER_MODE_RECEIVER_ONLY);
  EXPECT_THAT(r.response.fallback_reason(), HasSubstr("UNAVAILABLE"));
  EXPECT_EQ(Ids(r.response), alone);
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_fallbacks_total",
                          {{"role", "receiver"}, {"reason", "UNAVAILABLE"}},
                          1));

  // The request overrides the policy.
  v1::AnswerRequest fail = Request(Spec(v1::SCHEME_INT4));
  fail.set_fallback(v1::FALLBACK_POLICY_FAIL);
  const AnswerResult f = Answer(*stub, fail);
  EXPECT_EQ(f.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(f.status.error_message(), HasSubstr("sharer"));
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_requests_total",
                          AnswerCode("UNAVAILABLE"), 1));

  // A server configured to fail, overridden by a request.
  receiver_.process.reset();
  ASSERT_NO_FATAL_FAILURE(StartReceiver({"--fallback=fail"}, dead));
  stub = Stub();
  EXPECT_EQ(Answer(*stub, Request(Spec(v1::SCHEME_INT4))).status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
  v1::AnswerRequest lenient = Request(Spec(v1::SCHEME_INT4));
  lenient.set_fallback(v1::FALLBACK_POLICY_RECEIVER_ONLY);
  const AnswerResult l = Answer(*stub, lenient);
  ASSERT_TRUE(l.status.ok()) << l.status.error_message();
  EXPECT_TRUE(l.response.fell_back());
  EXPECT_EQ(Ids(l.response), alone);
}

TEST_F(ReceiverE2eTest, SharerKilledMidStreamFallsBackOnAFreshSession) {
  // Layer l is sent after 2 (l + 1) s: killed after the first layer arrived
  // (and was fused) and before the second.
  ASSERT_NO_FATAL_FAILURE(
      StartSharer(sharer_, {"--testing_layer_delay_ms=2000"}));
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}));
  auto stub = Stub();
  auto answer = std::async(std::launch::async, [&] {
    return Answer(*stub, Request(Spec(v1::SCHEME_INT8)));
  });
  ASSERT_TRUE(AwaitMetric(sharer_, "kvwire_workers_busy", {{"role", "sharer"}},
                          1, absl::Seconds(20)));
  absl::SleepFor(absl::Milliseconds(3000));
  ASSERT_TRUE(sharer_.process->Signal(SIGKILL).ok());
  ASSERT_EQ(answer.wait_for(std::chrono::seconds(60)),
            std::future_status::ready);
  const AnswerResult r = answer.get();
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_TRUE(r.response.fell_back());
  // Header and the first layer's two blocks had arrived (one message when
  // batched).
  EXPECT_GE(ChunksBeforeFailure(r.response.fallback_reason()), 2)
      << r.response.fallback_reason();
  EXPECT_GT(r.response.transfer().wire_bytes(), 0u);
  // The partly fused cache was dropped: exactly the receiver-only answer.
  EXPECT_EQ(Ids(r.response), ReceiverOnlyReference());

  // The receiver is alive, idle, and keeps answering.
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_requests_in_flight",
                          {{"role", "receiver"}, {"method", "Answer"}}, 0));
  EXPECT_TRUE(
      AwaitMetric(receiver_, "kvwire_workers_busy", {{"role", "receiver"}}, 0));
  const AnswerResult again = Answer(*stub, Request(Spec(v1::SCHEME_INT8)));
  EXPECT_TRUE(again.status.ok());
  EXPECT_TRUE(again.response.fell_back());
  ASSERT_TRUE(receiver_.process->Signal(SIGTERM).ok());
  auto exit_status = receiver_.process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_status.ok()) << exit_status.status();
  EXPECT_TRUE(WIFEXITED(*exit_status));
  EXPECT_EQ(WEXITSTATUS(*exit_status), 0);
}

TEST_F(ReceiverE2eTest, RestartedSharerIsUsedAgainWithinASecondOrTwo) {
  // Issue 14: with gRPC's default reconnect backoff (1 s growing 1.6x to
  // 120 s) a sharer back after ~10 s down stayed unused for several more
  // seconds (22-30 s after longer outages), every answer falling back.
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  const int port = sharer_.port;
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}));
  auto stub = Stub();
  const v1::AnswerRequest request = Request(Spec(v1::SCHEME_INT8));
  const AnswerResult before = Answer(*stub, request);
  ASSERT_TRUE(before.status.ok()) << before.status.error_message();
  ASSERT_FALSE(before.response.fell_back());

  ASSERT_TRUE(sharer_.process->Signal(SIGKILL).ok());
  ASSERT_TRUE(sharer_.process->Wait(kExitTimeout).ok());
  const absl::Time down = absl::Now();
  while (absl::Now() - down < absl::Seconds(10)) {
    const AnswerResult r = Answer(*stub, request);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_TRUE(r.response.fell_back());
    absl::SleepFor(absl::Milliseconds(500));
  }
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      sharer_, {absl::StrCat("--listen_address=127.0.0.1:", port)}));
  const absl::Time up = absl::Now();
  bool fused = false;
  while (!fused && absl::Now() - up < absl::Seconds(30)) {
    const AnswerResult r = Answer(*stub, request);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    fused = !r.response.fell_back();
    if (fused) {
      EXPECT_EQ(Ids(r.response), Ids(before.response));
    } else {
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  EXPECT_TRUE(fused);
  EXPECT_LT(absl::Now() - up, absl::Seconds(2.5));
}

TEST_F(ReceiverE2eTest, CorruptOrTruncatedStreamsAreDetected) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  FaultySharer faulty(absl::StrCat("127.0.0.1:", sharer_.port));
  auto proxy = StartProxy(faulty);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  ASSERT_NO_FATAL_FAILURE(
      StartReceiver({}, absl::StrCat("127.0.0.1:", (*proxy)->port())));
  auto stub = Stub();
  const std::vector<uint32_t> alone = ReceiverOnlyReference();

  // Untouched, the proxy is transparent.
  const v1::AnswerRequest request = Request(Spec(v1::SCHEME_INT4));
  const AnswerResult clean = Answer(*stub, request);
  ASSERT_TRUE(clean.status.ok()) << clean.status.error_message();
  EXPECT_FALSE(clean.response.fell_back());
  EXPECT_EQ(Ids(clean.response), Reference(request));

  // A flipped byte in the second layer's first block: its CRC-32C fails.
  faulty.corrupt_chunk = 3;
  const AnswerResult corrupt = Answer(*stub, request);
  ASSERT_TRUE(corrupt.status.ok()) << corrupt.status.error_message();
  EXPECT_TRUE(corrupt.response.fell_back());
  EXPECT_THAT(corrupt.response.fallback_reason(), HasSubstr("DATA_LOSS"));
  EXPECT_THAT(corrupt.response.fallback_reason(), HasSubstr("CRC-32C"));
  EXPECT_EQ(Ids(corrupt.response), alone);
  v1::AnswerRequest strict = request;
  strict.set_fallback(v1::FALLBACK_POLICY_FAIL);
  const AnswerResult refused = Answer(*stub, strict);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("CRC-32C"));

  // A stream that ends early with OK: no trailer.
  faulty.corrupt_chunk = -1;
  faulty.truncate_after = 4;
  const AnswerResult truncated = Answer(*stub, request);
  ASSERT_TRUE(truncated.status.ok()) << truncated.status.error_message();
  EXPECT_TRUE(truncated.response.fell_back());
  EXPECT_THAT(truncated.response.fallback_reason(),
              HasSubstr("stream is incomplete"));
  EXPECT_EQ(Ids(truncated.response), alone);
  EXPECT_EQ(Answer(*stub, strict).status.error_code(),
            grpc::StatusCode::DATA_LOSS);
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_fallbacks_total",
                          {{"role", "receiver"}, {"reason", "DATA_LOSS"}}, 4));
  (*proxy)->Shutdown();
}

TEST_F(ReceiverE2eTest, BatchedBlocksGiveTheSameAnswerInFewerMessages) {
  // The receiver asks for batches (SharerClientOptions'
  // max_blocks_per_message); the proxy forwards them as they come, or asks
  // for one block per message instead, and counts the messages.
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  FaultySharer proxy_service(absl::StrCat("127.0.0.1:", sharer_.port));
  auto proxy = StartProxy(proxy_service);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  ASSERT_NO_FATAL_FAILURE(
      StartReceiver({}, absl::StrCat("127.0.0.1:", (*proxy)->port())));
  auto stub = Stub();
  ChannelOptions sharer_options;
  sharer_options.security.allow_insecure = true;
  auto sharer_stub = v1::Sharer::NewStub(*CreateKvwireChannel(
      absl::StrCat("127.0.0.1:", sharer_.port), sharer_options));
  v1::SharerInfo info;
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ASSERT_TRUE(
        sharer_stub->GetInfo(&context, v1::GetInfoRequest(), &info).ok());
  }
  for (const v1::TransferSpec& spec :
       {Spec(v1::SCHEME_INT4),
        Spec(v1::SCHEME_INT8, 0.5, v1::SELECTION_BACK)}) {
    SCOPED_TRACE(spec.ShortDebugString());
    const v1::AnswerRequest request = Request(spec, "e2e-batches");
    proxy_service.forward_batches = false;
    const AnswerResult off = Answer(*stub, request);
    ASSERT_TRUE(off.status.ok()) << off.status.error_message();
    const int off_messages = proxy_service.last_messages.load();
    EXPECT_EQ(proxy_service.last_largest_batch.load(), 0);
    proxy_service.forward_batches = true;
    const AnswerResult on = Answer(*stub, request);
    ASSERT_TRUE(on.status.ok()) << on.status.error_message();
    const int on_messages = proxy_service.last_messages.load();
    EXPECT_GE(proxy_service.last_largest_batch.load(), 2);

    EXPECT_FALSE(off.response.fell_back()) << off.response.fallback_reason();
    EXPECT_FALSE(on.response.fell_back()) << on.response.fallback_reason();
    EXPECT_EQ(Ids(on.response), Ids(off.response));
    EXPECT_EQ(on.response.text(), off.response.text());
    EXPECT_EQ(Ids(on.response), Reference(request));
    // Header, K and V of the sharer's 3 layers, trailer; batched: K and V
    // of a layer always share a message.
    EXPECT_EQ(off_messages, 8);
    EXPECT_LE(on_messages, 5);
    // The same bytes; the wire adds 5 per message actually received.
    const v1::TransferReport& a = off.response.transfer();
    const v1::TransferReport& b = on.response.transfer();
    EXPECT_EQ(b.serialized_bytes(), a.serialized_bytes());
    EXPECT_EQ(b.payload_bytes(), a.payload_bytes());
    EXPECT_EQ(b.scale_bytes(), a.scale_bytes());
    EXPECT_EQ(b.index_bytes(), a.index_bytes());
    EXPECT_EQ(b.header_bytes(), a.header_bytes());
    EXPECT_EQ(a.wire_bytes(), a.serialized_bytes() + 5u * off_messages);
    EXPECT_EQ(b.wire_bytes(), b.serialized_bytes() + 5u * on_messages);
    auto expected = ExpectedStream(*assets_, info.model(), kQuestion, spec,
                                   request.request_id());
    ASSERT_TRUE(expected.ok()) << expected.status();
    EXPECT_EQ(b.serialized_bytes(), expected->serialized_bytes);
    EXPECT_EQ(expected->chunks, static_cast<uint64_t>(off_messages));
  }
  (*proxy)->Shutdown();
}

TEST_F(ReceiverE2eTest, SharerOfTheWrongShapeIsRefusedBeforeFusing) {
  ASSERT_NO_FATAL_FAILURE(
      StartSharer(sharer_, {}, assets_->mismatched_sharer_dir));
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}));
  auto stub = Stub();
  const AnswerResult r = Answer(*stub, Request(Spec(v1::SCHEME_INT8)));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_TRUE(r.response.fell_back());
  EXPECT_THAT(r.response.fallback_reason(), HasSubstr("FAILED_PRECONDITION"));
  EXPECT_THAT(r.response.fallback_reason(), HasSubstr("does not fit"));
  // The receiver's start-up GetInfo saw the sharer's shapes: nothing is
  // requested (no "after N chunks").
  EXPECT_EQ(ChunksBeforeFailure(r.response.fallback_reason()), -1);
  EXPECT_EQ(Ids(r.response), ReceiverOnlyReference());
  v1::AnswerRequest strict = Request(Spec(v1::SCHEME_INT8));
  strict.set_fallback(v1::FALLBACK_POLICY_FAIL);
  const AnswerResult f = Answer(*stub, strict);
  EXPECT_EQ(f.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(f.status.error_message(), HasSubstr("1x8 KV"));
}

TEST_F(ReceiverE2eTest, DeadlinesAndSlowSharers) {
  // 3 layers x 1 s.
  ASSERT_NO_FATAL_FAILURE(
      StartSharer(sharer_, {"--testing_layer_delay_ms=1000"}));
  ASSERT_NO_FATAL_FAILURE(StartReceiver({"--sharer_timeout_seconds=0.8"}));
  auto stub = Stub();

  // The call's own deadline: DEADLINE_EXCEEDED, promptly, no fallback.
  absl::Time start = absl::Now();
  const AnswerResult late =
      Answer(*stub, Request(Spec(v1::SCHEME_INT8)), absl::Milliseconds(400));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));

  // The sharer slower than --sharer_timeout_seconds: answered without it.
  start = absl::Now();
  const AnswerResult slow = Answer(*stub, Request(Spec(v1::SCHEME_INT8)));
  ASSERT_TRUE(slow.status.ok()) << slow.status.error_message();
  EXPECT_TRUE(slow.response.fell_back());
  EXPECT_THAT(slow.response.fallback_reason(), HasSubstr("DEADLINE_EXCEEDED"));
  EXPECT_EQ(Ids(slow.response), ReceiverOnlyReference());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_requests_total",
                          AnswerCode("DEADLINE_EXCEEDED"), 1));
  EXPECT_TRUE(
      AwaitMetric(receiver_, "kvwire_fallbacks_total",
                  {{"role", "receiver"}, {"reason", "DEADLINE_EXCEEDED"}}, 1));
  // The abandoned Share calls were cancelled on the sharer too.
  EXPECT_TRUE(AwaitMetric(sharer_, "kvwire_workers_busy", {{"role", "sharer"}},
                          0, absl::Seconds(5)));
}

TEST_F(ReceiverE2eTest, OverloadBeyondTheQueueIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(
      StartSharer(sharer_, {"--testing_layer_delay_ms=1000", "--workers=2"}));
  ASSERT_NO_FATAL_FAILURE(StartReceiver({"--workers=1", "--queue_size=1"}));
  auto stub = Stub();
  const v1::AnswerRequest request = Request(Spec(v1::SCHEME_INT8));
  // A occupies the worker, B the queue slot.
  grpc::ClientContext a_context, b_context;
  v1::AnswerResponse a_response, b_response;
  std::thread a([&] { stub->Answer(&a_context, request, &a_response); });
  ASSERT_TRUE(
      AwaitMetric(receiver_, "kvwire_workers_busy", {{"role", "receiver"}}, 1));
  std::thread b([&] { stub->Answer(&b_context, request, &b_response); });
  ASSERT_TRUE(
      AwaitMetric(receiver_, "kvwire_queue_depth", {{"role", "receiver"}}, 1));

  const AnswerResult c = Answer(*stub, request);
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(c.status.error_message(), HasSubstr("overloaded"));

  a_context.TryCancel();
  b_context.TryCancel();
  a.join();
  b.join();
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_queue_rejected_total",
                          {{"role", "receiver"}}, 1));
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_requests_total",
                          AnswerCode("CANCELLED"), 2));
  EXPECT_TRUE(
      AwaitMetric(receiver_, "kvwire_workers_busy", {{"role", "receiver"}}, 0));
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_requests_total",
                          AnswerCode("RESOURCE_EXHAUSTED"), 1));
}

TEST_F(ReceiverE2eTest, InvalidRequestsGetPreciseCodes) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  ASSERT_NO_FATAL_FAILURE(
      StartReceiver({"--max_question_bytes=2000", "--max_prompt_tokens=200",
                     "--max_new_tokens_limit=100"}));
  auto stub = Stub();
  struct Case {
    std::string name;
    v1::AnswerRequest request;
    grpc::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  const v1::AnswerRequest base = Request(Spec(v1::SCHEME_INT8));
  {
    v1::AnswerRequest r = base;
    r.clear_question();
    cases.push_back(
        {"empty", r, grpc::StatusCode::INVALID_ARGUMENT, "no question"});
  }
  {
    v1::AnswerRequest r = base;
    v1::ChatMessage* m = r.add_messages();
    m->set_role("user");
    m->set_content("hi");
    cases.push_back({"both", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "either question or messages"});
  }
  {
    v1::AnswerRequest r = base;
    r.set_question(std::string(2001, 'x'));
    cases.push_back({"oversized", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "2001 bytes; at most 2000"});
  }
  {
    v1::AnswerRequest r = base;
    r.set_question(std::string(300, 'y'));
    cases.push_back({"too many tokens", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "at most 200"});
  }
  {
    v1::AnswerRequest r = base;
    r.clear_question();
    v1::ChatMessage* m = r.add_messages();
    m->set_role("robot");
    m->set_content("hi");
    cases.push_back({"role", r, grpc::StatusCode::INVALID_ARGUMENT, "robot"});
  }
  {
    v1::AnswerRequest r = base;
    r.mutable_spec()->set_scheme(static_cast<v1::Scheme>(99));
    cases.push_back(
        {"scheme", r, grpc::StatusCode::INVALID_ARGUMENT, "unknown scheme 99"});
  }
  {
    v1::AnswerRequest r = base;
    r.mutable_generation()->set_max_new_tokens(101);
    cases.push_back({"max_new_tokens", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "over the limit of 100"});
  }
  {
    // The sharer rejects the spec: the client's error, never a fallback.
    v1::AnswerRequest r = base;
    r.mutable_spec()->set_granularity(v1::GRANULARITY_PER_GROUP);
    r.mutable_spec()->set_group_size(7);
    cases.push_back({"group", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "the sharer refused the transfer spec"});
  }
  {
    v1::AnswerRequest r = base;
    r.mutable_spec()->set_max_payload_bytes(300);
    cases.push_back({"budget", r, grpc::StatusCode::RESOURCE_EXHAUSTED,
                     "max_payload_bytes"});
  }
  for (const Case& c : cases) {
    const AnswerResult r = Answer(*stub, c.request);
    EXPECT_EQ(r.status.error_code(), c.code)
        << c.name << ": " << r.status.error_message();
    EXPECT_THAT(r.status.error_message(), HasSubstr(c.message)) << c.name;
  }
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_requests_total",
                          AnswerCode("INVALID_ARGUMENT"), 8));
  // None of them fell back; the server survived all of it.
  EXPECT_EQ(MetricValue(Scrape(receiver_), "kvwire_fallbacks_total",
                        {{"role", "receiver"}, {"reason", "INVALID_ARGUMENT"}})
                .value_or(0),
            0);
  EXPECT_TRUE(Answer(*stub, base).status.ok());
}

TEST_F(ReceiverE2eTest, TlsAndBearerTokensOnBothHops) {
  auto pki = test_util::MakeTestPki(test_util::MakeTempDir("pki"));
  ASSERT_TRUE(pki.ok()) << pki.status();
  const std::string client_token = pki->dir + "/client-token";
  const std::string sharer_token = pki->dir + "/sharer-token";
  const std::string wrong_token = pki->dir + "/wrong-token";
  std::ofstream(client_token) << "client-secret\n";
  std::ofstream(sharer_token) << "sharer-secret\n";
  std::ofstream(wrong_token) << "not-it\n";
  // The sharer: mutual TLS and its own token.
  ASSERT_NO_FATAL_FAILURE(StartSharer(
      sharer_,
      {"--tls_cert=" + pki->server_cert, "--tls_key=" + pki->server_key,
       "--tls_client_ca=" + pki->ca_cert, "--auth_token_file=" + sharer_token},
      "", /*plaintext=*/false));
  const std::vector<std::string> server_tls = {
      "--tls_cert=" + pki->server_cert, "--tls_key=" + pki->server_key,
      "--tls_client_ca=" + pki->ca_cert, "--auth_token_file=" + client_token};
  const std::vector<std::string> sharer_tls = {
      "--sharer_tls_ca=" + pki->ca_cert,
      "--sharer_tls_cert=" + pki->client_cert,
      "--sharer_tls_key=" + pki->client_key,
      "--sharer_tls_server_name=localhost"};
  auto flags = server_tls;
  flags.insert(flags.end(), sharer_tls.begin(), sharer_tls.end());
  flags.push_back("--sharer_auth_token_file=" + sharer_token);
  ASSERT_NO_FATAL_FAILURE(StartReceiver(flags, "", /*plaintext=*/false));

  ClientSecurityOptions trusted;
  trusted.tls_ca_path = pki->ca_cert;
  trusted.tls_cert_path = pki->client_cert;
  trusted.tls_key_path = pki->client_key;
  trusted.tls_server_name = "localhost";
  auto stub = Stub(trusted);
  const v1::AnswerRequest request = Request(Spec(v1::SCHEME_INT4));
  const AnswerResult ok =
      Answer(*stub, request, absl::Seconds(60), "client-secret");
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_FALSE(ok.response.fell_back()) << ok.response.fallback_reason();
  EXPECT_EQ(Ids(ok.response), Reference(request));

  const AnswerResult wrong = Answer(*stub, request, absl::Seconds(30), "nope");
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(wrong.status.error_message(), HasSubstr("invalid bearer token"));
  EXPECT_EQ(Answer(*stub, request).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ClientSecurityOptions rogue = trusted;
  rogue.tls_cert_path = pki->other_client_cert;
  rogue.tls_key_path = pki->other_client_key;
  ClientSecurityOptions distrustful = trusted;
  distrustful.tls_ca_path = pki->other_ca_cert;
  for (const auto& [name, security] :
       std::vector<std::pair<std::string, ClientSecurityOptions>>{
           {"untrusted client cert", rogue},
           {"untrusted server", distrustful},
           {"plaintext", ClientSecurityOptions{}}}) {
    auto refused = Stub(security);
    EXPECT_EQ(Answer(*refused, request, absl::Seconds(5), "client-secret")
                  .status.error_code(),
              grpc::StatusCode::UNAVAILABLE)
        << name;
  }
  EXPECT_TRUE(AwaitMetric(receiver_, "kvwire_requests_total",
                          AnswerCode("UNAUTHENTICATED"), 2));

  // A receiver holding the wrong sharer token: the sharer refuses it, which
  // is a sharer-path failure (not the client's authentication error).
  receiver_.process.reset();
  flags = server_tls;
  flags.insert(flags.end(), sharer_tls.begin(), sharer_tls.end());
  flags.push_back("--sharer_auth_token_file=" + wrong_token);
  ASSERT_NO_FATAL_FAILURE(StartReceiver(flags, "", /*plaintext=*/false));
  stub = Stub(trusted);
  const AnswerResult refused =
      Answer(*stub, request, absl::Seconds(60), "client-secret");
  ASSERT_TRUE(refused.status.ok()) << refused.status.error_message();
  EXPECT_TRUE(refused.response.fell_back());
  EXPECT_THAT(refused.response.fallback_reason(), HasSubstr("UNAUTHENTICATED"));
  v1::AnswerRequest strict = request;
  strict.set_fallback(v1::FALLBACK_POLICY_FAIL);
  EXPECT_EQ(Answer(*stub, strict, absl::Seconds(60), "client-secret")
                .status.error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ReceiverE2eTest, RoundRobinOverSeveralSharers) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer2_, {}));
  ASSERT_NO_FATAL_FAILURE(
      StartReceiver({}, absl::StrCat("ipv4:127.0.0.1:", sharer_.port,
                                     ",127.0.0.1:", sharer2_.port)));
  auto stub = Stub();
  for (int i = 0; i < 4; ++i) {
    const AnswerResult r = Answer(*stub, Request(Spec(v1::SCHEME_INT8)));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_FALSE(r.response.fell_back()) << r.response.fallback_reason();
  }
  // Both sharers served some of the calls (round_robin picks among the
  // connected ones, so the split need not be exactly even).
  const std::map<std::string, std::string> ok = {
      {"role", "sharer"}, {"method", "Share"}, {"code", "OK"}};
  EXPECT_TRUE(WaitFor(
      [&] {
        const double a =
            MetricValue(Scrape(sharer_), "kvwire_requests_total", ok)
                .value_or(0);
        const double b =
            MetricValue(Scrape(sharer2_), "kvwire_requests_total", ok)
                .value_or(0);
        return a >= 1 && b >= 1 && a + b == 4;
      },
      absl::Seconds(10)));
}

// Models by name: the sharer, the receiver and the fuser (a subfolder of
// its repository, as the released fusers are) named by Hugging Face ids and
// read from a hub cache; the answers are the local directories' bit for bit.
TEST_F(ReceiverE2eTest, ModelsNamedByHuggingFaceIdsAnswerAsTheirDirectories) {
  const std::string cache = test_util::MakeTempDir("hub");
  ASSERT_TRUE(test_util::StoreInHubCache(assets_->sharer_dir, cache,
                                         "kvwire-test/tiny-sharer")
                  .ok());
  ASSERT_TRUE(test_util::StoreInHubCache(assets_->receiver_dir, cache,
                                         "kvwire-test/tiny-receiver")
                  .ok());
  ASSERT_TRUE(test_util::StoreInHubCache(assets_->fuser_dir, cache,
                                         "kvwire-test/C2C_Fuser",
                                         "tiny_pair_Fuser")
                  .ok());
  ASSERT_EQ(::setenv("HF_HUB_CACHE", cache.c_str(), 1), 0);
  StartSharer(sharer_, {}, "kvwire-test/tiny-sharer");
  if (!HasFatalFailure()) {
    StartReceiver({"--model_dir=kvwire-test/tiny-receiver",
                   "--fuser_dir=kvwire-test/C2C_Fuser/tiny_pair_Fuser@main"});
  }
  ::unsetenv("HF_HUB_CACHE");
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_THAT(receiver_.process->Stderr(),
              AllOf(HasSubstr("--model_dir=kvwire-test/tiny-receiver: Hugging "
                              "Face kvwire-test/tiny-receiver revision main"),
                    HasSubstr("--fuser_dir=kvwire-test/C2C_Fuser/"
                              "tiny_pair_Fuser@main: Hugging Face "
                              "kvwire-test/C2C_Fuser folder tiny_pair_Fuser")));

  auto stub = Stub();
  const v1::AnswerRequest request = Request(Spec(v1::SCHEME_INT8), "e2e-hub");
  const AnswerResult r = Answer(*stub, request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.mode(), v1::ANSWER_MODE_C2C);
  EXPECT_FALSE(r.response.fell_back()) << r.response.fallback_reason();
  const std::vector<uint32_t> expected = Reference(request);
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(Ids(r.response), expected);
}

TEST_F(ReceiverE2eTest, AbsentFuserIdExitsWithTheDownloadCommand) {
  const std::string cache = test_util::MakeTempDir("empty-hub");
  ASSERT_EQ(::setenv("HF_HUB_CACHE", cache.c_str(), 1), 0);
  auto child = ChildProcess::Start(
      {KVWIRE_RECEIVER_BINARY, "--model_dir=" + assets_->receiver_dir,
       "--fuser_dir=nics-efc/C2C_Fuser/qwen3_0.6b+qwen2.5_0.5b_Fuser",
       "--listen_address=127.0.0.1:0",
       "--metrics_address=", "--allow_insecure"},
      test_util::MakeTempDir("receiver") + "/stderr.log");
  ::unsetenv("HF_HUB_CACHE");
  ASSERT_TRUE(child.ok());
  auto status = (*child)->Wait(kExitTimeout);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 1);
  EXPECT_THAT((*child)->Stderr(),
              AllOf(HasSubstr("NOT_FOUND: --fuser_dir: "),
                    HasSubstr("models--nics-efc--C2C_Fuser"),
                    HasSubstr("hf download nics-efc/C2C_Fuser --include "
                              "'qwen3_0.6b+qwen2.5_0.5b_Fuser/*'"),
                    Not(HasSubstr("huggingface-cli"))));
}

TEST_F(ReceiverE2eTest, RefusesToStartWithoutTlsOrModel) {
  for (const auto& argv : std::vector<std::vector<std::string>>{
           {KVWIRE_RECEIVER_BINARY, "--model_dir=" + assets_->receiver_dir,
            "--listen_address=127.0.0.1:0", "--metrics_address="},
           {KVWIRE_RECEIVER_BINARY, "--model_dir=/nonexistent",
            "--listen_address=127.0.0.1:0",
            "--metrics_address=", "--allow_insecure"}}) {
    auto child = ChildProcess::Start(
        argv, test_util::MakeTempDir("receiver") + "/stderr.log");
    ASSERT_TRUE(child.ok());
    auto status = (*child)->Wait(kExitTimeout);
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_TRUE(WIFEXITED(*status));
    EXPECT_EQ(WEXITSTATUS(*status), 1) << (*child)->Stderr();
  }
}

// grpc.health.v1 of the receiver's own service: SERVING, NOT_SERVING.
constexpr char kReceiverHealthName[] = "kvwire.v1.Receiver";
constexpr int kHealthServing = 1;
constexpr int kHealthNotServing = 2;

// /readyz on the metrics port (and the gRPC health of kvwire.v1.Receiver)
// says whether the receiver can answer as configured: with --fallback=fail
// every C2C answer needs the sharer, so it is not ready while the sharer is
// unreachable, and becomes ready once the sharer serves.
TEST_F(ReceiverE2eTest, ReadyzWaitsForTheSharerWhereAnswersNeedIt) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  const int sharer_port = sharer_.port;
  sharer_.process.reset();
  ASSERT_NO_FATAL_FAILURE(StartReceiver(
      {"--fallback=fail"}, absl::StrCat("127.0.0.1:", sharer_port)));
  auto get = [this](const std::string& path) {
    auto r = test_util::HttpRequest("127.0.0.1", receiver_.metrics_port, "GET",
                                    path);
    EXPECT_TRUE(r.ok()) << path << ": " << r.status();
    return r.value_or(test_util::HttpResponse());
  };
  EXPECT_EQ(get("/healthz").status, 200);
  const test_util::HttpResponse not_ready = get("/readyz");
  EXPECT_EQ(not_ready.status, 503);
  EXPECT_THAT(not_ready.body, HasSubstr("sharer: "));
  Stub();
  EXPECT_EQ(test_util::HealthCheck(channel_, kReceiverHealthName).value_or(-1),
            kHealthNotServing);

  ASSERT_NO_FATAL_FAILURE(StartSharer(
      sharer_, {absl::StrCat("--listen_address=127.0.0.1:", sharer_port)}));
  EXPECT_TRUE(
      WaitFor([&] { return get("/readyz").status == 200; }, absl::Seconds(10)))
      << get("/readyz").body;
  EXPECT_EQ(test_util::HealthCheck(channel_, kReceiverHealthName).value_or(-1),
            kHealthServing);
  auto stub = Stub();
  const AnswerResult fused = Answer(*stub, Request(Spec(v1::SCHEME_INT4)));
  ASSERT_TRUE(fused.status.ok()) << fused.status.error_message();
  EXPECT_FALSE(fused.response.fell_back());

  // The sharer goes away again: not ready again within a few checks.
  sharer_.process.reset();
  EXPECT_TRUE(
      WaitFor([&] { return get("/readyz").status == 503; }, absl::Seconds(10)));
  EXPECT_EQ(get("/healthz").status, 200);
}

TEST_F(ReceiverE2eTest, ReadyzIgnoresTheSharerWhenAnswersFallBack) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  const std::string dead = absl::StrCat("127.0.0.1:", sharer_.port);
  sharer_.process.reset();
  // Default policy receiver-only: answers still come, so it is ready.
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}, dead));
  auto readyz = test_util::HttpRequest("127.0.0.1", receiver_.metrics_port,
                                       "GET", "/readyz");
  ASSERT_TRUE(readyz.ok()) << readyz.status();
  EXPECT_EQ(readyz->status, 200) << readyz->body;
  // Unless told to wait for the sharer anyway.
  receiver_.process.reset();
  ASSERT_NO_FATAL_FAILURE(
      StartReceiver({"--ready_requires_sharer=true"}, dead));
  readyz = test_util::HttpRequest("127.0.0.1", receiver_.metrics_port, "GET",
                                  "/readyz");
  ASSERT_TRUE(readyz.ok()) << readyz.status();
  EXPECT_EQ(readyz->status, 503);
}

TEST_F(ReceiverE2eTest, DrainMakesReadyz503BeforeTheProcessStops) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  ASSERT_NO_FATAL_FAILURE(StartReceiver({"--shutdown_grace_seconds=3"}));
  auto status_of = [this](const std::string& path) {
    auto r = test_util::HttpRequest("127.0.0.1", receiver_.metrics_port, "GET",
                                    path, absl::Seconds(2));
    return r.ok() ? r->status : 0;
  };
  ASSERT_EQ(status_of("/readyz"), 200);
  ASSERT_TRUE(receiver_.process->Signal(SIGTERM).ok());
  EXPECT_TRUE(
      WaitFor([&] { return status_of("/readyz") == 503; }, absl::Seconds(2)));
  // Still alive while it drains.
  EXPECT_EQ(status_of("/healthz"), 200);
  auto exit_status = receiver_.process->Wait(kExitTimeout);
  ASSERT_TRUE(exit_status.ok()) << exit_status.status();
  EXPECT_EQ(WEXITSTATUS(*exit_status), 0);
}

TEST_F(ReceiverE2eTest, LivePageMovedToUiLiveWithRedirects) {
  ASSERT_NO_FATAL_FAILURE(StartSharer(sharer_, {}));
  ASSERT_NO_FATAL_FAILURE(StartReceiver({}));
  for (const auto& [old_path, new_path] :
       std::vector<std::pair<std::string, std::string>>{
           {"/live", "/ui/live"}, {"/live/data.json", "/ui/live/data.json"}}) {
    auto moved = test_util::HttpRequest("127.0.0.1", receiver_.metrics_port,
                                        "GET", old_path);
    ASSERT_TRUE(moved.ok()) << moved.status();
    EXPECT_EQ(moved->status, 301) << old_path;
    EXPECT_EQ(moved->headers["location"], new_path);
    EXPECT_TRUE(
        test_util::HttpGet("127.0.0.1", receiver_.metrics_port, new_path).ok())
        << new_path;
  }
  const std::string text = Scrape(receiver_);
  EXPECT_THAT(text, HasSubstr("kvwire_model_info{"));
  EXPECT_THAT(text, HasSubstr("role=\"receiver\""));
  EXPECT_GT(MetricValue(text, "process_resident_memory_bytes", {}).value_or(0),
            0);
}

}  // namespace
}  // namespace kvwire
