// The gRPC backend against a fake Receiver service in the same process: what
// it sends (messages, mode, spec, generation, fallback, bearer token), what
// it makes of the response (bytes, times, fallbacks) and of errors.
#include "tools/eval/grpc_backend.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_context.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/tools/eval/test_util.h"
#include "tools/eval/dataset.h"
#include "tools/eval/prompt.h"
#include "tools/eval/runner.h"

namespace kvwire {
namespace eval {
namespace {

using ::kvwire::eval::testing::FixturePath;
using ::kvwire::eval::testing::Lines;
using ::kvwire::eval::testing::ReadAll;
using ::kvwire::eval::testing::TempDir;
using ::testing::HasSubstr;

class FakeReceiver final : public v1::Receiver::Service {
 public:
  grpc::Status Answer(grpc::ServerContext* context,
                      const v1::AnswerRequest* request,
                      v1::AnswerResponse* response) override {
    absl::MutexLock lock(&mu_);
    requests_.push_back(*request);
    auto auth = context->client_metadata().find("authorization");
    authorization_ =
        auth == context->client_metadata().end()
            ? ""
            : std::string(auth->second.data(), auth->second.size());
    if (fail_)
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "sharer down");
    const uint64_t n = requests_.size();
    response->set_request_id(request->request_id());
    response->set_text("The correct answer is B.");
    for (uint32_t id : {10u, 11u, 12u}) response->add_token_ids(id);
    response->set_mode(request->mode());
    if (request->mode() == v1::ANSWER_MODE_C2C) {
      v1::TransferReport* t = response->mutable_transfer();
      *t->mutable_spec() = request->spec();
      t->set_raw_kv_bytes(50000 + n);
      t->set_payload_bytes(25000 + n);
      t->set_scale_bytes(192);
      t->set_index_bytes(0);
      t->set_header_bytes(2100 + n);
      t->set_serialized_bytes(27400 + 2 * n);
      t->set_wire_bytes(27440 + 2 * n);
      t->set_prompt_tokens(117);
      t->set_tokens_sent(2808);
      t->set_layers_sent(24);
      response->set_fell_back(n == 2);
      if (n == 2) response->set_fallback_reason("UNAVAILABLE: test");
    }
    v1::StageTimings* s = response->mutable_timings();
    s->set_sharer_compute_seconds(0.02);
    s->set_transfer_seconds(0.005 * n);
    s->set_total_seconds(0.3);
    return grpc::Status::OK;
  }

  std::vector<v1::AnswerRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  std::string authorization() {
    absl::MutexLock lock(&mu_);
    return authorization_;
  }
  void set_fail(bool fail) {
    absl::MutexLock lock(&mu_);
    fail_ = fail;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::AnswerRequest> requests_;
  std::string authorization_;
  bool fail_ = false;
};

class GrpcBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override { server_->Shutdown(); }

  std::unique_ptr<AnswerBackend> Backend() {
    GrpcBackendOptions o;
    o.target = "127.0.0.1:" + std::to_string(port_);
    o.channel.security.allow_insecure = true;
    o.channel.security.auth_token = "secret-token";
    o.timeout_seconds = 10;
    auto b = CreateGrpcBackend(o);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *std::move(b) : nullptr;
  }

  FakeReceiver service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(GrpcBackendTest, RunRecordsWhatTheReceiverReported) {
  auto ds =
      LoadDataset(FixturePath("obqa_ai2.jsonl"), DatasetKind::kOpenBookQA);
  ASSERT_TRUE(ds.ok()) << ds.status();
  auto backend = Backend();
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->kind(), "grpc");
  EXPECT_THAT(backend->Describe(), HasSubstr("127.0.0.1"));

  RunSpec spec;
  spec.scheme = v1::SCHEME_INT4;
  spec.selection = "back";
  spec.proportion = 0.5;
  spec.id = RunId(spec);
  auto run = ResolveRun(spec, backend->layout());
  ASSERT_TRUE(run.ok()) << run.status();
  RunOptions options;
  options.out_dir = TempDir("eval-grpc");
  options.limit = 3;
  auto summary = RunOne(*ds, *run, *backend, options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->n, 3);
  EXPECT_EQ(summary->fell_back, 1);

  const std::vector<v1::AnswerRequest> requests = service_.requests();
  ASSERT_EQ(requests.size(), 3u);
  const v1::AnswerRequest& r = requests[0];
  EXPECT_EQ(r.request_id(), "openbookqa/" + spec.id + "/fx-obqa-1");
  ASSERT_EQ(r.messages_size(), 1);
  EXPECT_EQ(r.messages(0).role(), "user");
  EXPECT_EQ(r.messages(0).content(),
            BuildEvalPrompt(ds->items[0].question, ds->items[0].choices));
  EXPECT_EQ(r.mode(), v1::ANSWER_MODE_C2C);
  EXPECT_EQ(r.spec().scheme(), v1::SCHEME_INT4);
  EXPECT_EQ(r.spec().selection().mode(), v1::SELECTION_BACK);
  EXPECT_DOUBLE_EQ(r.spec().selection().proportion(), 0.5);
  EXPECT_EQ(r.generation().max_new_tokens(), 64u);
  EXPECT_EQ(r.generation().temperature(), 0.0f);
  EXPECT_EQ(r.fallback(), v1::FALLBACK_POLICY_FAIL);
  EXPECT_EQ(service_.authorization(), "Bearer secret-token");

  const std::string path =
      options.out_dir + "/openbookqa/" + spec.id + "/predictions.jsonl";
  const std::vector<std::string> lines = Lines(ReadAll(path));
  ASSERT_EQ(lines.size(), 3u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const nlohmann::json j = nlohmann::json::parse(lines[i]);
    const uint64_t n = i + 1;
    EXPECT_EQ(j["wire_bytes"], 27440 + 2 * n);
    EXPECT_EQ(j["serialized_bytes"], 27400 + 2 * n);
    EXPECT_EQ(j["payload_bytes"], 25000 + n);
    EXPECT_EQ(j["header_bytes"], 2100 + n);
    EXPECT_EQ(j["raw_kv_bytes"], 50000 + n);
    EXPECT_EQ(j["tokens_sent"], 2808);
    EXPECT_EQ(j["layers_sent"], 24);
    EXPECT_EQ(j["transfer_prompt_tokens"], 117);
    EXPECT_EQ(j["output_tokens"], 3);
    EXPECT_EQ(j["prediction"], "B");
    EXPECT_EQ(j["fell_back"], n == 2);
    EXPECT_DOUBLE_EQ(j["timings"]["transfer"].get<double>(), 0.005 * n);
    EXPECT_DOUBLE_EQ(j["timings"]["total"].get<double>(), 0.3);
    // No local tokenizer was given: the prompt length is unknown.
    EXPECT_EQ(j["prompt_tokens"], -1);
  }
}

TEST_F(GrpcBackendTest, ModesAndErrors) {
  auto backend = Backend();
  ASSERT_NE(backend, nullptr);
  BackendRequest request;
  request.request_id = "r1";
  request.messages = {ChatMessage{"user", "hello", std::nullopt}};
  request.method = EvalMethod::kReceiverOnly;
  request.spec.set_scheme(v1::SCHEME_INT8);  // Not sent for receiver-only.
  auto a = backend->Answer(request);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->has_transfer);
  EXPECT_EQ(service_.requests().back().mode(), v1::ANSWER_MODE_RECEIVER_ONLY);
  EXPECT_FALSE(service_.requests().back().has_spec());

  request.method = EvalMethod::kSharerOnly;
  auto sharer = backend->Answer(request);
  ASSERT_TRUE(sharer.ok()) << sharer.status();
  EXPECT_EQ(service_.requests().back().mode(), v1::ANSWER_MODE_SHARER_ONLY);
  EXPECT_FALSE(service_.requests().back().has_spec());
  EXPECT_FALSE(sharer->has_transfer);  // What crossed is text, not KV.
  request.method = EvalMethod::kC2C;
  request.selection_strategy = "proj_vnorm_topk";
  EXPECT_EQ(backend->Answer(request).status().code(),
            absl::StatusCode::kInvalidArgument);
  request.selection_strategy = "spec";
  service_.set_fail(true);
  auto failed = backend->Answer(request);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(failed.status().message(), HasSubstr("Receiver.Answer(r1)"));
  EXPECT_THAT(failed.status().message(), HasSubstr("sharer down"));
}

// The sharer, fuser and alignment are the receiver service's flags: a grid
// run that asks for its own pair is refused before any question.
TEST_F(GrpcBackendTest, PerRunModelPairsAreRefusedBeforeAnyQuestion) {
  auto ds =
      LoadDataset(FixturePath("obqa_ai2.jsonl"), DatasetKind::kOpenBookQA);
  ASSERT_TRUE(ds.ok()) << ds.status();
  auto backend = Backend();
  ASSERT_NE(backend, nullptr);
  EXPECT_TRUE(backend->CheckPairSupported(PairOverride()).ok());
  EXPECT_TRUE(backend->UsePair(PairOverride()).ok());
  auto grid = ParseGridYaml(R"(
sharers:
  other: {sharer_dir: /models/other}
runs:
  - name: plain
    scheme: int8
  - name: m7
    scheme: int8
    sharer: other
    token_alignment: [on, off]
)",
                            "/tmp");
  ASSERT_TRUE(grid.ok()) << grid.status();
  for (const RunSpec& run : grid->runs) {
    const absl::Status st = backend->CheckPairSupported(run.pair);
    if (run.pair.empty()) {
      EXPECT_TRUE(st.ok()) << st;
    } else {
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << run.id;
      EXPECT_THAT(st.message(), HasSubstr("--token_alignment"));
      EXPECT_THAT(st.message(), HasSubstr("--fuser_dir"));
    }
  }
  PairOverride alignment_only;
  alignment_only.token_alignment = "on";
  EXPECT_EQ(backend->UsePair(alignment_only).code(),
            absl::StatusCode::kInvalidArgument);
  RunOptions options;
  options.out_dir = TempDir("eval-grpc-pairs");
  options.limit = 2;
  auto result = RunGrid(*grid, {*ds}, *backend, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(),
              HasSubstr("c2c-int8-head-all-sharer_other-align_on"));
  EXPECT_TRUE(service_.requests().empty());  // Nothing was asked.
}

TEST(GrpcBackendOptionsTest, Refusals) {
  GrpcBackendOptions o;
  EXPECT_EQ(CreateGrpcBackend(o).status().code(),
            absl::StatusCode::kInvalidArgument);  // No target.
  o.target = "127.0.0.1:1";
  EXPECT_FALSE(CreateGrpcBackend(o).ok());  // Plaintext not allowed.
  o.channel.security.allow_insecure = true;
  o.fallback = "sometimes";
  EXPECT_EQ(CreateGrpcBackend(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.fallback = "receiver-only";
  o.receiver_layers = 28;
  o.sharer_layers = 24;
  auto b = CreateGrpcBackend(o);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->layout().layer_map.size(), 28u);
  EXPECT_EQ((*b)->layout().layer_map[27], 23);
}

}  // namespace
}  // namespace eval
}  // namespace kvwire
