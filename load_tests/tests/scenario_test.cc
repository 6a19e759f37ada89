#include "load_tests/scenario.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace load {
namespace {

using ::testing::HasSubstr;

TEST(ScenarioTest, ParsesAFullFile) {
  auto config = ParseLoadConfigYaml(R"(
name: mix
target: 127.0.0.1:50051
rpc: share
mode: open
rate: [2, 4.5]
arrivals: poisson
warmup_seconds: 0.5
duration_seconds: 3
requests: 100
max_in_flight: 8
deadline_seconds: 20
seed: 9
question_file: questions.txt
scenarios:
  - name: bf16-512
    spec: bf16
    prompt_tokens: 512
    weight: 2
  - spec:
      scheme: int4
      granularity: per_group
      group_size: 32
      asymmetric: true
      selection: {mode: knorm_topk, proportion: 0.5}
      entropy: {coder: zstd, level: 3}
      layer_overrides:
        - {range: {first: 0, last: 1}, scheme: int8}
    prompt_tokens: 128
)");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->name, "mix");
  EXPECT_EQ(config->rpc, RpcKind::kShare);
  EXPECT_EQ(config->mode, LoopMode::kOpen);
  EXPECT_THAT(config->rates, ::testing::ElementsAre(2, 4.5));
  EXPECT_EQ(config->max_requests, 100);
  EXPECT_EQ(config->max_in_flight, 8);
  EXPECT_EQ(config->seed, 9u);
  ASSERT_EQ(config->scenarios.size(), 2u);
  const Scenario& a = config->scenarios[0];
  EXPECT_EQ(a.name, "bf16-512");
  EXPECT_EQ(a.spec.scheme(), v1::SCHEME_BF16);
  EXPECT_EQ(a.spec_label, "bf16");
  EXPECT_EQ(a.weight, 2);
  const Scenario& b = config->scenarios[1];
  EXPECT_EQ(b.spec.scheme(), v1::SCHEME_INT4);
  EXPECT_EQ(b.spec.granularity(), v1::GRANULARITY_PER_GROUP);
  EXPECT_EQ(b.spec.group_size(), 32u);
  EXPECT_TRUE(b.spec.asymmetric());
  EXPECT_EQ(b.spec.selection().mode(), v1::SELECTION_KNORM_TOPK);
  EXPECT_DOUBLE_EQ(b.spec.selection().proportion(), 0.5);
  EXPECT_EQ(b.spec.entropy().coder(), v1::ENTROPY_CODER_ZSTD);
  ASSERT_EQ(b.spec.layer_overrides_size(), 1);
  EXPECT_EQ(b.spec.layer_overrides(0).scheme(), v1::SCHEME_INT8);
  EXPECT_EQ(b.spec.layer_overrides(0).range().last(), 1u);
  EXPECT_EQ(b.spec_label, "int4+mixed/per_group@0.5+zstd");
  EXPECT_EQ(b.name, "int4+mixed/per_group@0.5+zstd-128");
  EXPECT_TRUE(ValidateLoadConfig(*config).ok());
}

TEST(ScenarioTest, OpenAiChatTakesAUrlAndAModel) {
  auto c = ParseLoadConfigYaml(R"(
rpc: openai_chat
target: https://kvwire.example.com
model: Qwen/Qwen3-0.6B
kvwire_extension: false
scenarios:
  - {name: chat-256, prompt_tokens: 256, max_new_tokens: 32}
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rpc, RpcKind::kOpenAiChat);
  EXPECT_EQ(c->model, "Qwen/Qwen3-0.6B");
  EXPECT_FALSE(c->kvwire_extension);
  // No spec travels without kvwire's extension: no spec label either.
  EXPECT_EQ(c->scenarios[0].spec_label, "chat");
  EXPECT_EQ(RpcKindName(c->rpc), "openai_chat");
  EXPECT_TRUE(ValidateLoadConfig(*c).ok());
  LoadConfig grpc_target = *c;
  grpc_target.target = "127.0.0.1:8080";
  EXPECT_EQ(ValidateLoadConfig(grpc_target).code(),
            absl::StatusCode::kInvalidArgument);
  LoadConfig url_for_grpc = *c;
  url_for_grpc.rpc = RpcKind::kAnswer;
  EXPECT_EQ(ValidateLoadConfig(url_for_grpc).code(),
            absl::StatusCode::kInvalidArgument);
  auto file = LoadConfigFile(std::string(KVWIRE_LOAD_SCENARIO_DIR) +
                             "/openai_chat.yaml");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->rpc, RpcKind::kOpenAiChat);
  EXPECT_TRUE(file->kvwire_extension);
}

TEST(ScenarioTest, ShortNamesAndFullEnumNames) {
  auto a = ParseSpecYaml("fp8");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->scheme(), v1::SCHEME_FP8_E4M3);
  auto b = ParseSpecYaml("{scheme: SCHEME_NF4, granularity: kivi}");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->scheme(), v1::SCHEME_NF4);
  EXPECT_EQ(b->granularity(), v1::GRANULARITY_KIVI);
  auto c = ParseSpecYaml("{scheme: int8, granularity: head}");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->granularity(), v1::GRANULARITY_PER_HEAD);
}

TEST(ScenarioTest, SpecWithInvalidUtf8IsRefusedNotAborted) {
  // Found by fuzz/scenario_fuzzer.cc: json::dump threw out of the parser
  // (std::terminate in kvwire-load).
  for (const char* text : {"\xff", "{scheme: \"int8\xff\"}"}) {
    const auto spec = ParseSpecYaml(text);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument)
        << spec.status();
  }
}

TEST(ScenarioTest, SpecListsSplitOutsideBraces) {
  EXPECT_THAT(SplitSpecList("bf16, int8,{scheme: int4, selection: {mode: "
                            "knorm_topk, proportion: 0.5}},,nf4"),
              ::testing::ElementsAre(
                  "bf16", "int8",
                  "{scheme: int4, selection: {mode: knorm_topk, proportion: "
                  "0.5}}",
                  "nf4"));
  auto spec =
      ParseSpecYaml(SplitSpecList("x,{scheme: int4, selection: "
                                  "{proportion: 0.5}}")[1]);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(SpecLabel(*spec), "int4@0.5");
}

TEST(ScenarioTest, RejectsMistakes) {
  EXPECT_THAT(ParseSpecYaml("int3").status().message(),
              HasSubstr("bad transfer spec"));
  EXPECT_THAT(ParseSpecYaml("{scheme: int8, colour: red}").status().message(),
              HasSubstr("bad transfer spec"));
  EXPECT_THAT(ParseLoadConfigYaml("duration: 3").status().message(),
              HasSubstr("unknown key 'duration'"));
  EXPECT_THAT(ParseLoadConfigYaml("mode: sideways").status().message(),
              HasSubstr("mode must be"));
  EXPECT_THAT(ParseLoadConfigYaml("rpc: ping").status().message(),
              HasSubstr("unknown rpc"));
  EXPECT_THAT(ParseLoadConfigYaml("scenarios:\n  - {spec: int8, foo: 1}\n")
                  .status()
                  .message(),
              HasSubstr("unknown key 'foo'"));
  EXPECT_THAT(ParseLoadConfigYaml("concurrency: [1, x]").status().message(),
              HasSubstr("bad value 'x'"));
  EXPECT_FALSE(ParseLoadConfigYaml("[").ok());
  EXPECT_FALSE(ParseLoadConfigYaml("").ok());
}

LoadConfig Valid() {
  LoadConfig c;
  c.target = "127.0.0.1:1";
  Scenario s;
  s.name = "a";
  c.scenarios.push_back(s);
  return c;
}

TEST(ScenarioTest, ValidationEnforcesTheHardLimits) {
  EXPECT_TRUE(ValidateLoadConfig(Valid()).ok());
  LoadConfig c = Valid();
  c.target.clear();
  EXPECT_FALSE(ValidateLoadConfig(c).ok());
  c = Valid();
  c.concurrency = {kMaxConcurrency + 1};
  EXPECT_FALSE(ValidateLoadConfig(c).ok());
  c = Valid();
  c.mode = LoopMode::kOpen;
  EXPECT_FALSE(ValidateLoadConfig(c).ok());  // No rate.
  c.rates = {kMaxRate * 2};
  EXPECT_FALSE(ValidateLoadConfig(c).ok());
  c.rates = {10};
  EXPECT_TRUE(ValidateLoadConfig(c).ok());
  c = Valid();
  c.duration_seconds = kMaxPointSeconds + 1;
  EXPECT_FALSE(ValidateLoadConfig(c).ok());
  c = Valid();
  c.duration_seconds = 0;
  EXPECT_FALSE(ValidateLoadConfig(c).ok());
  c = Valid();
  c.max_requests = kMaxRequestsPerPoint + 1;
  EXPECT_FALSE(ValidateLoadConfig(c).ok());
  c = Valid();
  c.scenarios[0].prompt_tokens = kMaxPromptTokens + 1;
  EXPECT_FALSE(ValidateLoadConfig(c).ok());
  c = Valid();
  c.scenarios.push_back(c.scenarios[0]);
  EXPECT_THAT(ValidateLoadConfig(c).message(), HasSubstr("duplicate"));
  c = Valid();
  c.concurrency = std::vector<int>(kMaxLoadPoints + 1, 1);
  EXPECT_FALSE(ValidateLoadConfig(c).ok());
}

TEST(QuestionsTest, PlainLinesAndTheEvalJsonFormats) {
  const std::vector<std::string> q = ParseQuestions(
      "# comment\n\nWhat is up?\n"
      R"({"question": "A plain one?"})"
      "\n"
      R"({"question": {"stem": "An ARC one?", "choices": []}})"
      "\n"
      R"({"question_stem": "An OBQA one?"})"
      "\n"
      R"({"no": "question"})"
      "\n");
  EXPECT_THAT(q, ::testing::ElementsAre("What is up?", "A plain one?",
                                        "An ARC one?", "An OBQA one?"));
}

TEST(PromptSourceTest, TokenIdsHaveTheExactLengthAndFitTheVocabulary) {
  PromptSource source({"Why is the sky blue?", "What is 2+2?"}, 3);
  for (int n : {1, 7, 300, 8192}) {
    const std::vector<uint32_t> ids = source.TokenIds(n, 100);
    ASSERT_EQ(static_cast<int>(ids.size()), n);
    for (uint32_t id : ids) ASSERT_LT(id, 100u);
  }
  // Deterministic for a seed.
  PromptSource a({"x1", "y2", "z3"}, 5), b({"x1", "y2", "z3"}, 5);
  EXPECT_EQ(a.TokenIds(50, 256), b.TokenIds(50, 256));
}

TEST(PromptSourceTest, QuestionsGrowToTheRequestedLength) {
  PromptSource source({"Short question number one?", "Another question?"}, 1);
  const std::string short_q = source.Question(2, 4);
  EXPECT_LT(short_q.size(), 40u);
  const std::string long_q = source.Question(500, 4);
  EXPECT_GE(long_q.size(), 1900u);
  EXPECT_LE(long_q.size(), 2100u);
  EXPECT_THAT(long_q, HasSubstr("Question: "));
}

}  // namespace
}  // namespace load
}  // namespace kvwire
