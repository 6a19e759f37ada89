// Concurrent answers through the receiver's batching across requests
// (batched prefill, fusion and decode over the KV slot pool, on the CPU),
// end to end: real kvwire-sharer and kvwire-receiver processes on loopback.
// A mixed load (prompt lengths, C2C specs and selections, receiver-only and
// text-to-text, generation lengths) sent at once, with calls cancelled and
// deadlines expiring mid-batch, must give every surviving request the
// greedy tokens the same request gets answered alone by a receiver without
// batching; afterwards no KV slot is left held, batches of more than one
// request ran, no step waited long for the model, and the receiver still
// answers. (Per-row logits within 1e-4 of a batch-1 forward are checked at
// the model level, tests/common/model/batched_decode_test.cc.)
#include <grpcpp/client_context.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/service/channel.h"
#include "gtest/gtest.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "tests/common/service/testing_util.h"
#include "tests/receiver_service/pipeline_reference.h"

namespace kvwire {
namespace {

using test_util::MetricValue;
using test_util::ScrapeMetrics;
using test_util::StartedService;

constexpr absl::Duration kStartTimeout = absl::Seconds(60);

const char* const kQuestions[] = {
    "Why is the sky blue?",
    "Which gas do plants take in from the air to make their food, and why is "
    "sunlight needed?",
    "A ball is dropped from a tall tower. Ignoring the air, how does its "
    "speed change each second while it falls, and what would change on the "
    "Moon, where gravity is about one sixth as strong?",
};

v1::AnswerRequest Request(int index) {
  v1::AnswerRequest r;
  r.set_request_id(absl::StrCat("load-", index));
  r.set_question(kQuestions[index % 3]);
  r.mutable_generation()->set_max_new_tokens(6 + 2 * (index % 5));
  v1::TransferSpec& spec = *r.mutable_spec();
  switch (index % 6) {
    case 0:
      spec.set_scheme(v1::SCHEME_INT4);
      break;
    case 1:
      spec.set_scheme(v1::SCHEME_INT8);
      spec.mutable_selection()->set_mode(v1::SELECTION_KNORM_TOPK);
      spec.mutable_selection()->set_proportion(0.5);
      break;
    case 2:
      r.set_mode(v1::ANSWER_MODE_RECEIVER_ONLY);
      break;
    case 3:
      spec.set_scheme(v1::SCHEME_NF4);
      spec.mutable_selection()->set_mode(v1::SELECTION_BACK);
      spec.mutable_selection()->set_proportion(0.25);
      break;
    case 4:
      r.set_mode(v1::ANSWER_MODE_TEXT_TO_TEXT);
      break;
    default:
      spec.set_scheme(v1::SCHEME_FP8_E4M3);
      break;
  }
  return r;
}

class ConcurrentE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto assets = MakeReferenceAssets(test_util::MakeTempDir("assets"));
    ASSERT_TRUE(assets.ok()) << assets.status();
    assets_ = new ReferenceAssets(*assets);
    auto sharer = test_util::StartService(
        {KVWIRE_SHARER_BINARY, "--model_dir=" + assets_->sharer_dir,
         "--listen_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
         "--intra_op_threads=1", "--workers=4", "--queue_size=64",
         "--allow_insecure"},
        "kvwire-sharer ready", kStartTimeout);
    ASSERT_TRUE(sharer.ok()) << sharer.status();
    sharer_ = new StartedService(*std::move(sharer));
    // The reference answers one request at a time, without batching (the
    // CPU default); the other batches prefills, fusions and decode steps
    // across eight workers.
    serial_ = StartReceiver({"--workers=1"});
    batched_ = StartReceiver(
        {"--workers=8", "--queue_size=64", "--decode_batch_slots=8",
         "--prefill_batch_rows=4", "--fusion_batch_requests=4"});
  }

  static void TearDownTestSuite() {
    delete batched_;
    delete serial_;
    delete sharer_;
    delete assets_;
  }

  static StartedService* StartReceiver(std::vector<std::string> flags) {
    std::vector<std::string> argv = {
        KVWIRE_RECEIVER_BINARY,
        "--model_dir=" + assets_->receiver_dir,
        "--fuser_dir=" + assets_->fuser_dir,
        "--listen_address=127.0.0.1:0",
        "--metrics_address=127.0.0.1:0",
        "--intra_op_threads=1",
        "--text_to_text_max_new_tokens=12",
        absl::StrCat("--sharer_target=127.0.0.1:", sharer_->port),
        "--allow_insecure",
        "--sharer_allow_insecure"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto receiver =
        test_util::StartService(argv, "kvwire-receiver ready", kStartTimeout);
    EXPECT_TRUE(receiver.ok()) << receiver.status();
    return receiver.ok() ? new StartedService(*std::move(receiver)) : nullptr;
  }

  static std::unique_ptr<v1::Receiver::Stub> Stub(const StartedService& s) {
    ChannelOptions options;
    options.security.allow_insecure = true;
    auto channel =
        CreateKvwireChannel(absl::StrCat("127.0.0.1:", s.port), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    return v1::Receiver::NewStub(*channel);
  }

  static grpc::Status Answer(v1::Receiver::Stub& stub,
                             const v1::AnswerRequest& request,
                             v1::AnswerResponse* response,
                             absl::Duration deadline = absl::Seconds(120)) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    return stub.Answer(&context, request, response);
  }

  static ReferenceAssets* assets_;
  static StartedService* sharer_;
  static StartedService* serial_;
  static StartedService* batched_;
};

ReferenceAssets* ConcurrentE2eTest::assets_ = nullptr;
StartedService* ConcurrentE2eTest::sharer_ = nullptr;
StartedService* ConcurrentE2eTest::serial_ = nullptr;
StartedService* ConcurrentE2eTest::batched_ = nullptr;

std::vector<uint32_t> Ids(const v1::AnswerResponse& r) {
  return std::vector<uint32_t>(r.token_ids().begin(), r.token_ids().end());
}

TEST_F(ConcurrentE2eTest, ConcurrentAnswersEqualTheSameRequestsAnsweredAlone) {
  ASSERT_NE(serial_, nullptr);
  ASSERT_NE(batched_, nullptr);
  constexpr int kRequests = 12;
  // One at a time, on the receiver without batching.
  auto serial = Stub(*serial_);
  std::vector<std::vector<uint32_t>> expected(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    v1::AnswerResponse response;
    const grpc::Status status = Answer(*serial, Request(i), &response);
    ASSERT_TRUE(status.ok()) << i << ": " << status.error_message();
    expected[i] = Ids(response);
    ASSERT_FALSE(expected[i].empty());
  }

  // All at once on the batching receiver, with two streams cancelled after
  // their first token and two calls whose deadline passes mid-batch.
  auto batched = Stub(*batched_);
  std::vector<grpc::Status> statuses(kRequests);
  std::vector<v1::AnswerResponse> responses(kRequests);
  std::vector<grpc::Status> cut(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back(
        [&, i] { statuses[i] = Answer(*batched, Request(i), &responses[i]); });
  }
  for (int c = 0; c < 2; ++c) {
    threads.emplace_back([&, c] {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
      v1::AnswerRequest request = Request(c);
      request.mutable_generation()->set_max_new_tokens(40);
      auto reader = batched->AnswerStream(&context, request);
      v1::AnswerEvent first;
      if (reader->Read(&first)) context.TryCancel();
      while (reader->Read(&first)) {
      }
      cut[c] = reader->Finish();
    });
    threads.emplace_back([&, c] {
      // Too long to finish in time, so the deadline passes while it runs.
      v1::AnswerRequest request = Request(c + 1);
      request.mutable_generation()->set_max_new_tokens(600);
      v1::AnswerResponse response;
      cut[2 + c] =
          Answer(*batched, request, &response, absl::Milliseconds(300));
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    EXPECT_EQ(Ids(responses[i]), expected[i]) << "request " << i;
  }
  for (int c = 0; c < 2; ++c) {
    EXPECT_EQ(cut[c].error_code(), grpc::StatusCode::CANCELLED)
        << cut[c].error_message();
    EXPECT_EQ(cut[2 + c].error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << cut[2 + c].error_message();
  }

  // Every slot comes back, also from the calls cut short.
  EXPECT_TRUE(test_util::WaitFor(
      [&] {
        return MetricValue(ScrapeMetrics(batched_->metrics_port),
                           "kvwire_kv_slots_in_use",
                           {{"role", "receiver"}}) == 0;
      },
      absl::Seconds(30)));
  const std::string metrics = ScrapeMetrics(batched_->metrics_port);
  EXPECT_EQ(MetricValue(metrics, "kvwire_kv_slots", {{"role", "receiver"}}), 8);
  for (const char* stage : {"prefill", "fuse", "decode"}) {
    const std::map<std::string, std::string> labels = {{"role", "receiver"},
                                                       {"stage", stage}};
    const double batches =
        MetricValue(metrics, "kvwire_model_batch_size_count", labels)
            .value_or(0);
    auto with_le = [&](const char* name, const char* le) {
      auto l = labels;
      l["le"] = le;
      return MetricValue(metrics, name, l).value_or(-1);
    };
    EXPECT_GT(batches, 0) << stage;
    // Some batch held more than one request. (Fusions come at the ends of
    // streams that finish apart, so whether two meet is timing; the fuser
    // test checks batches of them, RequestFusionBatcherTest.)
    if (std::string(stage) != "fuse") {
      EXPECT_LT(with_le("kvwire_model_batch_size_bucket", "1"), batches)
          << stage;
    }
    // No step waited for the model as long as 2.5 s.
    EXPECT_EQ(with_le("kvwire_model_batch_wait_seconds_bucket", "2.5"), batches)
        << stage;
  }

  // And the receiver answers as before.
  v1::AnswerResponse again;
  ASSERT_TRUE(Answer(*batched, Request(0), &again).ok());
  EXPECT_EQ(Ids(again), expected[0]);
}

}  // namespace
}  // namespace kvwire
