// Unit tests of the OpenAI chat-completions JSON <-> kvwire.v1 mapping.
#include "receiver_service/openai_mapping.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

constexpr char kModel[] = "Qwen3-0.6B";

class OpenAiMappingTest : public ::testing::Test {
 protected:
  static json Body(json extra = json::object()) {
    json body = {{"model", kModel},
                 {"messages", {{{"role", "user"}, {"content", "Hi?"}}}}};
    for (const auto& [key, value] : extra.items()) body[key] = value;
    return body;
  }

  static absl::StatusOr<ChatCompletionRequest> Parse(const json& body) {
    return ParseChatCompletionRequest(body.dump(), kModel);
  }

  // The OpenAI error of a request that must fail.
  static OpenAiError ErrorOf(const json& body) {
    auto parsed = Parse(body);
    EXPECT_FALSE(parsed.ok()) << body.dump();
    return OpenAiErrorFromStatus(parsed.status());
  }
};

TEST_F(OpenAiMappingTest, MapsMessagesAndSamplingToTheAnswerRequest) {
  auto parsed =
      Parse(Body({{"messages",
                   {{{"role", "developer"}, {"content", "Be brief."}},
                    {{"role", "user"},
                     {"content",
                      {{{"type", "text"}, {"text", "Why is "}},
                       {{"type", "text"}, {"text", "the sky blue?"}}}}},
                    {{"role", "assistant"}, {"content", "Rayleigh."}},
                    {{"role", "user"}, {"content", "More?"}}}},
                  {"max_completion_tokens", 17},
                  {"temperature", 0.7},
                  {"top_p", 0.9},
                  {"seed", 42},
                  {"user", "someone"}}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const v1::AnswerRequest& a = parsed->answer;
  ASSERT_EQ(a.messages_size(), 4);
  EXPECT_EQ(a.messages(0).role(), "system");
  EXPECT_EQ(a.messages(1).content(), "Why is the sky blue?");
  EXPECT_EQ(a.messages(2).role(), "assistant");
  EXPECT_EQ(a.generation().max_new_tokens(), 17u);
  EXPECT_FLOAT_EQ(a.generation().temperature(), 0.7f);
  EXPECT_FLOAT_EQ(a.generation().top_p(), 0.9f);
  EXPECT_EQ(a.generation().seed(), 42u);
  EXPECT_FALSE(parsed->stream);
  EXPECT_TRUE(a.question().empty());
}

TEST_F(OpenAiMappingTest, LeavesOmittedSamplingAtKvwireDefaultsWhenAbsent) {
  auto parsed = Parse(Body({{"temperature", nullptr}}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->answer.generation().max_new_tokens(), 0u);  // 64
  EXPECT_EQ(parsed->answer.generation().temperature(), 0);      // Greedy.
  EXPECT_EQ(parsed->answer.mode(), v1::ANSWER_MODE_UNSPECIFIED);
}

TEST_F(OpenAiMappingTest, MapsTheKvwireExtensionWithShortAndProtoNames) {
  auto parsed =
      Parse(Body({{"kvwire",
                   {{"mode", "c2c"},
                    {"fallback", "fail"},
                    {"request_id", "abc"},
                    {"trace", true},
                    {"top_k", 5},
                    {"spec",
                     {{"scheme", "int4"},
                      {"granularity", "head"},
                      {"selection", {{"mode", "back"}, {"proportion", 0.5}}},
                      {"layer_overrides",
                       {{{"layers", {0, 1}}, {"scheme", "SCHEME_INT8"}}}},
                      {"max_payload_bytes", "200000"}}}}}}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const v1::AnswerRequest& a = parsed->answer;
  EXPECT_EQ(a.mode(), v1::ANSWER_MODE_C2C);
  EXPECT_EQ(a.fallback(), v1::FALLBACK_POLICY_FAIL);
  EXPECT_EQ(a.request_id(), "abc");
  EXPECT_TRUE(a.trace());
  EXPECT_EQ(a.generation().top_k(), 5u);
  EXPECT_EQ(a.spec().scheme(), v1::SCHEME_INT4);
  EXPECT_EQ(a.spec().granularity(), v1::GRANULARITY_PER_HEAD);
  EXPECT_EQ(a.spec().selection().mode(), v1::SELECTION_BACK);
  EXPECT_DOUBLE_EQ(a.spec().selection().proportion(), 0.5);
  ASSERT_EQ(a.spec().layer_overrides_size(), 1);
  EXPECT_EQ(a.spec().layer_overrides(0).scheme(), v1::SCHEME_INT8);
  EXPECT_EQ(a.spec().max_payload_bytes(), 200000u);
}

TEST_F(OpenAiMappingTest, ReadsStreamOptionsAndStopSequences) {
  auto parsed = Parse(Body({{"stream", true},
                            {"stream_options", {{"include_usage", true}}},
                            {"stop", {"\n\n", "END"}}}));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->stream);
  EXPECT_TRUE(parsed->include_usage);
  EXPECT_THAT(parsed->stop, ::testing::ElementsAre("\n\n", "END"));
  auto single = Parse(Body({{"stop", "END"}}));
  ASSERT_TRUE(single.ok());
  EXPECT_THAT(single->stop, ::testing::ElementsAre("END"));
}

TEST_F(OpenAiMappingTest, RejectsUnknownAndUnsupportedFieldsWithTheirParam) {
  struct Case {
    json extra;
    std::string param;
  };
  const std::vector<Case> cases = {
      {{{"bogus", 1}}, "bogus"},
      {{{"n", 2}}, "n"},
      {{{"tools", json::array()}}, "tools"},
      {{{"logprobs", true}}, "logprobs"},
      {{{"presence_penalty", 0.5}}, "presence_penalty"},
      {{{"temperature", 3}}, "temperature"},
      {{{"temperature", "hot"}}, "temperature"},
      {{{"top_p", 1.5}}, "top_p"},
      {{{"max_tokens", 0}}, "max_tokens"},
      {{{"max_tokens", -3}}, "max_tokens"},
      {{{"seed", -1}}, "seed"},
      {{{"stop", {"a", "b", "c", "d", "e"}}}, "stop"},
      {{{"stop", ""}}, "stop"},
      {{{"stream", "yes"}}, "stream"},
      {{{"stream_options", {{"include_usage", true}}}}, "stream_options"},
      // Keys are read in order: max_completion_tokens, then max_tokens.
      {{{"max_tokens", 5}, {"max_completion_tokens", 6}}, "max_tokens"},
      {{{"messages", json::array()}}, "messages"},
      {{{"messages", {{{"role", "tool"}, {"content", "x"}}}}},
       "messages[0].role"},
      {{{"messages", {{{"role", "user"}, {"content", 5}}}}},
       "messages[0].content"},
      {{{"messages",
         {{{"role", "user"},
           {"content", {{{"type", "image_url"}, {"image_url", "x"}}}}}}}},
       "messages[0].content[0]"},
      {{{"messages",
         {{{"role", "user"}, {"content", "x"}, {"tool_calls", 1}}}}},
       "messages[0].tool_calls"},
      {{{"kvwire", {{"mode", "telepathy"}}}}, "kvwire.mode"},
      {{{"kvwire", {{"colour", "blue"}}}}, "kvwire.colour"},
      {{{"kvwire", {{"spec", {{"scheme", "int3"}}}}}}, "kvwire.spec.scheme"},
      {{{"kvwire", {{"spec", {{"no_such_field", 1}}}}}}, "kvwire.spec"},
  };
  for (const Case& c : cases) {
    const OpenAiError error = ErrorOf(Body(c.extra));
    EXPECT_EQ(error.http_status, 400) << c.extra.dump();
    EXPECT_EQ(error.body["error"]["type"], "invalid_request_error")
        << c.extra.dump();
    EXPECT_EQ(error.body["error"]["param"], c.param) << c.extra.dump();
    EXPECT_TRUE(error.body["error"]["message"].is_string());
    EXPECT_TRUE(error.body["error"].contains("code"));
  }
}

TEST_F(OpenAiMappingTest, AcceptsOpenAiFieldsAtTheirDefaults) {
  auto parsed = Parse(Body({{"n", 1},
                            {"presence_penalty", 0},
                            {"frequency_penalty", 0.0},
                            {"logprobs", false},
                            {"response_format", {{"type", "text"}}}}));
  EXPECT_TRUE(parsed.ok()) << parsed.status();
}

TEST_F(OpenAiMappingTest, RejectsAnotherModelWith404ModelNotFound) {
  const OpenAiError error = ErrorOf(Body({{"model", "gpt-4o"}}));
  EXPECT_EQ(error.http_status, 404);
  EXPECT_EQ(error.body["error"]["code"], "model_not_found");
  EXPECT_EQ(error.body["error"]["param"], "model");
  EXPECT_THAT(error.body["error"]["message"].get<std::string>(),
              HasSubstr(kModel));
  json no_model = Body();
  no_model.erase("model");
  EXPECT_EQ(ErrorOf(no_model).body["error"]["param"], "model");
}

TEST_F(OpenAiMappingTest, RejectsBodiesThatAreNotJsonObjects) {
  for (const std::string body : {"", "{", "[1]", "\"x\""}) {
    auto parsed = ParseChatCompletionRequest(body, kModel);
    ASSERT_FALSE(parsed.ok()) << body;
    const OpenAiError error = OpenAiErrorFromStatus(parsed.status());
    EXPECT_EQ(error.http_status, 400);
    EXPECT_TRUE(error.body["error"]["param"].is_null());
  }
}

TEST_F(OpenAiMappingTest, MapsStatusCodesToHttpStatusesAndErrorTypes) {
  struct Case {
    absl::Status status;
    int http;
    std::string type;
    std::string code;
  };
  const std::vector<Case> cases = {
      {absl::UnauthenticatedError("invalid bearer token"), 401,
       "invalid_request_error", "invalid_api_key"},
      {absl::ResourceExhaustedError("queue full"), 429, "rate_limit_error",
       "rate_limit_exceeded"},
      {absl::UnavailableError("shutting down"), 503, "server_error",
       "service_unavailable"},
      {absl::DeadlineExceededError("late"), 504, "server_error", "timeout"},
      {absl::InternalError("boom"), 500, "server_error", ""},
      {absl::FailedPreconditionError("no template"), 400,
       "invalid_request_error", ""},
  };
  for (const Case& c : cases) {
    const OpenAiError error = OpenAiErrorFromStatus(c.status);
    EXPECT_EQ(error.http_status, c.http) << c.status;
    EXPECT_EQ(error.body["error"]["type"], c.type) << c.status;
    EXPECT_EQ(error.body["error"]["message"], std::string(c.status.message()));
    if (c.code.empty()) {
      EXPECT_TRUE(error.body["error"]["code"].is_null()) << c.status;
    } else {
      EXPECT_EQ(error.body["error"]["code"], c.code) << c.status;
    }
  }
}

TEST_F(OpenAiMappingTest, BuildsCompletionChunkAndUsageObjects) {
  v1::AnswerResponse response;
  response.set_request_id("r1");
  response.set_text("Blue.");
  response.set_mode(v1::ANSWER_MODE_C2C);
  response.add_token_ids(7);
  response.add_token_ids(8);
  response.mutable_transfer()->set_wire_bytes(1234);
  response.mutable_transfer()->mutable_spec()->set_scheme(v1::SCHEME_INT4);
  response.mutable_timings()->set_total_seconds(0.5);
  CompletionInfo info{"chatcmpl-r1", 1700000000, kModel, 20, 2, "length"};

  const json c = ChatCompletionJson(info, "Blue.", response);
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["id"], "chatcmpl-r1");
  EXPECT_EQ(c["created"], 1700000000);
  EXPECT_EQ(c["model"], kModel);
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "Blue.");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c["usage"], json({{"prompt_tokens", 20},
                              {"completion_tokens", 2},
                              {"total_tokens", 22}}));
  EXPECT_EQ(c["kvwire"]["mode"], "c2c");
  EXPECT_EQ(c["kvwire"]["token_ids"], json({7, 8}));
  EXPECT_EQ(c["kvwire"]["transfer"]["wire_bytes"], "1234");  // proto3 JSON.
  EXPECT_EQ(c["kvwire"]["transfer"]["spec"]["scheme"], "SCHEME_INT4");
  EXPECT_EQ(c["kvwire"]["timings"]["total_seconds"], 0.5);

  const json first = ChatCompletionChunkJson(info, "Bl", true, "");
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"],
            json({{"role", "assistant"}, {"content", "Bl"}}));
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json last = ChatCompletionChunkJson(info, "", false, "stop");
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  const json usage = UsageChunkJson(info);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 22);

  const json models = ModelListJson(kModel, 5);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], kModel);
  EXPECT_EQ(models["data"][0]["object"], "model");
}

TEST_F(OpenAiMappingTest, SaysLengthOnlyWhenTheTokenLimitWasReached) {
  v1::AnswerResponse response;
  for (int i = 0; i < 5; ++i) response.add_token_ids(i);
  EXPECT_EQ(FinishReasonFor(response, 5, false), "length");
  EXPECT_EQ(FinishReasonFor(response, 6, false), "stop");
  EXPECT_EQ(FinishReasonFor(response, 5, true), "stop");
  EXPECT_EQ(FinishReasonFor(response, 0, false), "stop");  // Default 64.
}

TEST_F(OpenAiMappingTest, NamesTheServedModelFromTheModelDirFlag) {
  EXPECT_EQ(ServedModelNameFor("/models/Qwen3-0.6B/", true), "Qwen3-0.6B");
  EXPECT_EQ(ServedModelNameFor("receiver", true), "receiver");
  EXPECT_EQ(ServedModelNameFor("Qwen/Qwen3-0.6B", false), "Qwen/Qwen3-0.6B");
  EXPECT_EQ(ServedModelNameFor("Qwen/Qwen3-0.6B@abc123", false),
            "Qwen/Qwen3-0.6B");
}

TEST_F(OpenAiMappingTest, CutsTextAtTheFirstStopSequenceAcrossDeltas) {
  StopSequenceFilter filter({"END", "\n\n"});
  std::string shown;
  for (const char* delta : {"Hello", " wor", "ld E", "N", "D and more"}) {
    shown += filter.Push(delta);
  }
  EXPECT_TRUE(filter.stopped());
  EXPECT_EQ(shown, "Hello world ");
  EXPECT_EQ(filter.Push("x"), "");
  EXPECT_EQ(filter.Flush(), "");
}

TEST_F(OpenAiMappingTest, HoldsBackOnlyWhatMayStartAStopSequence) {
  StopSequenceFilter filter({"END"});
  EXPECT_EQ(filter.Push("abcE"), "abc");
  EXPECT_EQ(filter.Push("Nx"), "ENx");  // "ENx" is no stop after all.
  EXPECT_EQ(filter.Push("yyE"), "yy");
  EXPECT_EQ(filter.Flush(), "E");
  EXPECT_FALSE(filter.stopped());

  StopSequenceFilter none({});
  EXPECT_EQ(none.Push("anything"), "anything");
  EXPECT_EQ(none.Flush(), "");
}

TEST_F(OpenAiMappingTest, TrimsStreamedNewlinesAsTheFinalTextDoes) {
  NewlineTrimmer trimmer;
  std::string shown;
  for (const char* delta : {"\n", "\nA", "b\n", "\n", "c", "\n\n"}) {
    shown += trimmer.Push(delta);
  }
  EXPECT_EQ(shown, "Ab\n\nc");
}

}  // namespace
}  // namespace kvwire
