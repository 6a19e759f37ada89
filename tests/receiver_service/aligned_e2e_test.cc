// End-to-end tests of a pair with different tokenizers: kvwire-receiver
// (a Qwen3 receiver with the real Qwen3 tokenizer) and kvwire-sharer (a
// Llama-3.2 sharer whose tokenizer only the receiver holds), the real
// binaries on 127.0.0.1, over the token-aligned goldens' models and fuser
// (tests/data/aligned/; its recipe says is_do_alignment: true). Answers in
// every mode equal the in-process C2cPipeline over the same files, the
// sharer's stream covers the sharer's own tokens at their aligned
// positions and carries only the fused (message) tokens, and the bad
// configurations are refused with precise errors: a fuser that needs
// alignment without the sharer's tokenizer, or with alignment off, at
// start; a pair of vocabularies without alignment, per request, naming
// both models.
#include <grpcpp/client_context.h>
#include <sys/wait.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/service/channel.h"
#include "common/service/grpc_status.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "tests/common/engine/aligned_goldens.h"
#include "tests/common/service/testing_util.h"
#include "tests/receiver_service/pipeline_reference.h"

namespace kvwire {
namespace {

using test_util::ChildProcess;
using ::testing::HasSubstr;

constexpr absl::Duration kStartTimeout = absl::Seconds(60);
const std::vector<std::pair<std::string, std::string>> kMessages = {
    {"system", "You answer in one short sentence."},
    {"user", "Which gas do plants take in to make their food?"}};

struct Service {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
};

class AlignedE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto goldens = LoadAlignedGoldens("qwen3-llama3.2");
    ASSERT_TRUE(goldens.ok()) << goldens.status();
    assets_ = new ReferenceAssets();
    assets_->receiver_dir = goldens->receiver_dir;
    assets_->sharer_dir = goldens->sharer_dir;
    assets_->fuser_dir = goldens->fuser_dir;
    assets_->tokenizer_dir = goldens->tokenizer_dir;
    assets_->sharer_tokenizer_dir = goldens->sharer_tokenizer_dir;
  }

  void TearDown() override {
    if (!HasFailure()) return;
    for (const Service* s : {&sharer_, &receiver_}) {
      if (s->process != nullptr) std::cerr << s->process->Stderr() << "\n";
    }
  }

  static absl::StatusOr<Service> Start(std::vector<std::string> argv,
                                       const std::string& ready) {
    Service service;
    ASSIGN_OR_RETURN(service.process,
                     ChildProcess::Start(
                         argv, test_util::MakeTempDir("svc") + "/stderr.log"));
    auto line = service.process->WaitForLine(ready, kStartTimeout);
    if (!line.ok()) {
      return absl::Status(line.status().code(),
                          absl::StrCat(line.status().message(), "\n",
                                       service.process->Stderr()));
    }
    service.port = std::stoi((*line)["grpc_port"]);
    return service;
  }

  void StartSharer() {
    auto s = Start({KVWIRE_SHARER_BINARY, "--model_dir=" + assets_->sharer_dir,
                    "--listen_address=127.0.0.1:0", "--metrics_address=",
                    "--intra_op_threads=1", "--allow_insecure"},
                   "kvwire-sharer ready");
    ASSERT_TRUE(s.ok()) << s.status();
    sharer_ = *std::move(s);
  }

  std::vector<std::string> ReceiverArgv(std::vector<std::string> flags) const {
    std::vector<std::string> argv = {
        KVWIRE_RECEIVER_BINARY,
        "--model_dir=" + assets_->receiver_dir,
        "--tokenizer_dir=" + assets_->tokenizer_dir,
        "--fuser_dir=" + assets_->fuser_dir,
        "--listen_address=127.0.0.1:0",
        "--metrics_address=",
        "--intra_op_threads=1",
        "--allow_insecure",
        "--sharer_allow_insecure",
        absl::StrCat("--sharer_target=127.0.0.1:", sharer_.port)};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return argv;
  }

  void StartReceiver(std::vector<std::string> flags) {
    auto r = Start(ReceiverArgv(std::move(flags)), "kvwire-receiver ready");
    ASSERT_TRUE(r.ok()) << r.status();
    receiver_ = *std::move(r);
    ChannelOptions options;
    options.security.allow_insecure = true;
    auto channel = CreateKvwireChannel(
        absl::StrCat("127.0.0.1:", receiver_.port), options);
    ASSERT_TRUE(channel.ok()) << channel.status();
    stub_ = v1::Receiver::NewStub(*channel);
  }

  // What a receiver started with `flags` prints before exiting non-zero.
  std::string RefusedAtStart(std::vector<std::string> flags) {
    auto child =
        ChildProcess::Start(ReceiverArgv(std::move(flags)),
                            test_util::MakeTempDir("svc") + "/stderr.log");
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return "";
    auto status = (*child)->Wait(absl::Seconds(60));
    EXPECT_TRUE(status.ok()) << status.status();
    EXPECT_TRUE(status.ok() && WIFEXITED(*status) && WEXITSTATUS(*status) != 0)
        << (*child)->Stderr();
    return (*child)->Stderr();
  }

  static v1::AnswerRequest Request(v1::AnswerMode mode,
                                   v1::Scheme scheme = v1::SCHEME_BF16) {
    v1::AnswerRequest r;
    r.set_request_id(absl::StrCat("aligned-", mode));
    for (const auto& [role, content] : kMessages) {
      v1::ChatMessage* m = r.add_messages();
      m->set_role(role);
      m->set_content(content);
    }
    r.set_mode(mode);
    r.set_fallback(v1::FALLBACK_POLICY_FAIL);
    r.mutable_spec()->set_scheme(scheme);
    r.mutable_generation()->set_max_new_tokens(8);
    return r;
  }

  absl::StatusOr<v1::AnswerResponse> Answer(const v1::AnswerRequest& r) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
    v1::AnswerResponse response;
    const grpc::Status status = stub_->Answer(&context, r, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  static std::vector<uint32_t> Ids(const v1::AnswerResponse& r) {
    return std::vector<uint32_t>(r.token_ids().begin(), r.token_ids().end());
  }

  static ReferenceAssets* assets_;
  Service sharer_;
  Service receiver_;
  std::unique_ptr<v1::Receiver::Stub> stub_;
};

ReferenceAssets* AlignedE2eTest::assets_ = nullptr;

TEST_F(AlignedE2eTest, EveryModeEqualsTheInProcessPipeline) {
  ASSERT_NO_FATAL_FAILURE(StartSharer());
  ASSERT_NO_FATAL_FAILURE(StartReceiver(
      {"--sharer_tokenizer_dir=" + assets_->sharer_tokenizer_dir}));
  for (const auto& [mode, name] :
       std::vector<std::pair<v1::AnswerMode, std::string>>{
           {v1::ANSWER_MODE_C2C, "c2c"},
           {v1::ANSWER_MODE_RECEIVER_ONLY, "receiver-only"},
           {v1::ANSWER_MODE_SHARER_ONLY, "sharer-only"},
           {v1::ANSWER_MODE_TEXT_TO_TEXT, "text-to-text"}}) {
    SCOPED_TRACE(name);
    const v1::AnswerRequest request = Request(mode);
    auto got = Answer(request);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->mode(), mode);
    EXPECT_FALSE(got->fell_back());
    std::vector<std::pair<std::string, std::string>> messages = kMessages;
    auto want = ReferenceAnswer(*assets_, messages, name, request.spec(),
                                request.generation(), request.request_id());
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(Ids(*got), want->token_ids);
    EXPECT_EQ(got->text(), want->text);
    if (mode == v1::ANSWER_MODE_C2C) {
      // The stream covers the sharer's own tokens and carries only the
      // fused (message) ones, as the in-process transfer does.
      EXPECT_EQ(got->transfer().prompt_tokens(), want->prompt_tokens);
      EXPECT_EQ(got->transfer().tokens_sent(), want->tokens_sent);
      EXPECT_EQ(got->transfer().payload_bytes(), want->payload_bytes);
      EXPECT_GT(got->transfer().tokens_sent(), 0u);
      EXPECT_LT(
          got->transfer().tokens_sent(),
          got->transfer().prompt_tokens() * got->transfer().layers_sent());
    }
  }
}

TEST_F(AlignedE2eTest, AFuserThatNeedsAlignmentIsRefusedWithoutIt) {
  ASSERT_NO_FATAL_FAILURE(StartSharer());
  // No sharer tokenizer: the fuser's recipe asks for alignment.
  EXPECT_THAT(RefusedAtStart({}), HasSubstr("--sharer_tokenizer_dir"));
  EXPECT_THAT(
      RefusedAtStart({"--sharer_tokenizer_dir=" + assets_->sharer_tokenizer_dir,
                      "--token_alignment=off"}),
      HasSubstr("is_do_alignment: true"));
}

TEST_F(AlignedE2eTest, DifferentVocabulariesWithoutAlignmentNameBothModels) {
  ASSERT_NO_FATAL_FAILURE(StartSharer());
  // The same fuser with a recipe that does not align.
  const std::string fuser = test_util::MakeTempDir("fuser");
  ASSERT_EQ(std::system(("cp -r " + assets_->fuser_dir + "/. " + fuser +
                         " && sed -i 's/\"is_do_alignment\": true/"
                         "\"is_do_alignment\": false/' " +
                         fuser + "/config.json")
                            .c_str()),
            0);
  ASSERT_NO_FATAL_FAILURE(StartReceiver({"--fuser_dir=" + fuser}));
  auto got = Answer(Request(v1::ANSWER_MODE_C2C));
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(got.status().message(), HasSubstr("Qwen3ForCausalLM"));
  EXPECT_THAT(got.status().message(), HasSubstr("LlamaForCausalLM"));
  EXPECT_THAT(got.status().message(), HasSubstr("do not share a vocabulary"));
}

}  // namespace
}  // namespace kvwire
