// The OpenAI wire format of kvwire-load's OpenAI mode: request bodies, SSE
// framing split at every byte, chat.completion.chunk parsing, error bodies
// and the stream accumulator's token times.
#include "load_tests/openai_chat.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace load {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class SseParserTest : public ::testing::Test {
 protected:
  // Feeds `text` in pieces of `piece` bytes.
  std::vector<SseEvent> Parse(const std::string& text, size_t piece) {
    SseParser parser;
    std::vector<SseEvent> events;
    for (size_t i = 0; i < text.size(); i += piece) {
      EXPECT_TRUE(parser.Feed(text.substr(i, piece), &events).ok());
    }
    return events;
  }
};

TEST_F(SseParserTest, SplitsEventsWhateverThePiecesAndLineEndings) {
  const std::string text =
      ": comment\n"
      "data: {\"a\":1}\n\n"
      "event: update\r\n"
      "data:two\r\n"
      "data: lines\r\n"
      "id: 7\r\n"
      "\r\n"
      "data: cr\r\r"
      "data: [DONE]\n\n";
  for (size_t piece : {1, 2, 3, 7, 1000}) {
    const std::vector<SseEvent> events = Parse(text, piece);
    ASSERT_EQ(events.size(), 4u) << "piece " << piece;
    EXPECT_EQ(events[0].data, "{\"a\":1}");
    EXPECT_EQ(events[0].event, "");
    EXPECT_EQ(events[1].event, "update");
    EXPECT_EQ(events[1].data, "two\nlines");
    EXPECT_EQ(events[2].data, "cr");
    EXPECT_EQ(events[3].data, "[DONE]");
  }
}

TEST_F(SseParserTest, KeepsAnUnfinishedEventUntilItsBlankLine) {
  SseParser parser;
  std::vector<SseEvent> events;
  ASSERT_TRUE(parser.Feed("data: partial", &events).ok());
  EXPECT_TRUE(events.empty());
  ASSERT_TRUE(parser.Feed("\n", &events).ok());
  EXPECT_TRUE(events.empty());
  ASSERT_TRUE(parser.Feed("\n", &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data, "partial");
}

TEST_F(SseParserTest, IgnoresBlankLinesWithoutDataAndUnknownFields) {
  EXPECT_TRUE(Parse("\n\nretry: 10\nfoo: bar\n\n", 1).empty());
}

TEST_F(SseParserTest, RefusesAnEventOverTheLimit) {
  SseParser parser;
  std::vector<SseEvent> events;
  const std::string big(SseParser::kMaxEventBytes + 1, 'x');
  EXPECT_EQ(parser.Feed(absl::StrCat("data: ", big), &events).code(),
            absl::StatusCode::kInvalidArgument);
}

class ChatChunkTest : public ::testing::Test {};

TEST_F(ChatChunkTest, ReadsContentFinishReasonAndUsage) {
  auto chunk = ParseChatCompletionChunk(
      R"({"id":"c1","object":"chat.completion.chunk","created":1,)"
      R"("model":"m","choices":[{"index":0,"delta":{"content":"Hi"},)"
      R"("finish_reason":null}]})");
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_EQ(chunk->content, "Hi");
  EXPECT_EQ(chunk->finish_reason, "");
  EXPECT_FALSE(chunk->completion_tokens.has_value());

  auto last = ParseChatCompletionChunk(
      R"({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],)"
      R"("usage":null})");
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->content, "");
  EXPECT_EQ(last->finish_reason, "stop");

  auto usage = ParseChatCompletionChunk(
      R"({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,)"
      R"("total_tokens":17}})");
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(usage->completion_tokens, 5);
  EXPECT_EQ(usage->prompt_tokens, 12);
}

TEST_F(ChatChunkTest, RoleOnlyAndNullContentCarryNoToken) {
  auto role = ParseChatCompletionChunk(
      R"({"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]})");
  ASSERT_TRUE(role.ok()) << role.status();
  EXPECT_EQ(role->content, "");
}

TEST_F(ChatChunkTest, ReadsKvwireTransferReports) {
  auto chunk = ParseChatCompletionChunk(
      R"({"choices":[{"delta":{},"finish_reason":"stop"}],"kvwire":{)"
      R"("mode":"c2c","fell_back":true,"transfer":{"payload_bytes":"1000",)"
      R"("wire_bytes":"1234","prompt_tokens":32,"tokens_sent":96,)"
      R"("a_newer_field":7}}})");
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  ASSERT_TRUE(chunk->transfer.has_value());
  EXPECT_EQ(chunk->transfer->payload_bytes(), 1000u);
  EXPECT_EQ(chunk->transfer->wire_bytes(), 1234u);
  EXPECT_EQ(chunk->transfer->tokens_sent(), 96u);
  EXPECT_TRUE(chunk->fell_back);
  EXPECT_EQ(ParseChatCompletionChunk(
                R"({"kvwire":{"transfer":{"payload_bytes":"many"}}})")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ChatChunkTest, ReadsErrorObjects) {
  auto error = ParseChatCompletionChunk(
      R"({"error":{"message":"overloaded","type":"server_error"}})");
  ASSERT_TRUE(error.ok()) << error.status();
  EXPECT_EQ(error->error, "server_error: overloaded");
  auto plain = ParseChatCompletionChunk(R"({"error":"boom"})");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->error, "boom");
}

TEST_F(ChatChunkTest, RefusesMalformedJsonAndWrongTypes) {
  for (const char* bad :
       {"not json", "[1,2]", R"({"choices":{}})",
        R"({"choices":[{"delta":{"content":5}}]})",
        R"({"choices":[{"delta":"x"}]})",
        R"({"usage":{"completion_tokens":"5"}})", R"({"choices":[7]})"}) {
    EXPECT_EQ(ParseChatCompletionChunk(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

class ChatRequestTest : public ::testing::Test {};

TEST_F(ChatRequestTest, BuildsAStreamingRequestWithUsage) {
  ChatRequestOptions options;
  options.model = "kvwire";
  options.system = "Be brief.";
  options.question = "Why is the sky \"blue\"?";
  options.max_tokens = 32;
  const nlohmann::json j =
      nlohmann::json::parse(BuildChatCompletionRequest(options));
  EXPECT_EQ(j["model"], "kvwire");
  EXPECT_EQ(j["stream"], true);
  EXPECT_EQ(j["max_tokens"], 32);
  EXPECT_EQ(j["temperature"], 0.0);
  EXPECT_EQ(j["stream_options"]["include_usage"], true);
  ASSERT_EQ(j["messages"].size(), 2u);
  EXPECT_EQ(j["messages"][0]["role"], "system");
  EXPECT_EQ(j["messages"][1]["role"], "user");
  EXPECT_EQ(j["messages"][1]["content"], "Why is the sky \"blue\"?");
}

TEST_F(ChatRequestTest, CarriesTheKvwireExtensionOnlyWhenAsked) {
  ChatRequestOptions options;
  options.model = "m";
  options.question = "q";
  EXPECT_FALSE(nlohmann::json::parse(BuildChatCompletionRequest(options))
                   .contains("kvwire"));
  options.kvwire_extension = true;
  options.spec.set_scheme(v1::SCHEME_INT4);
  options.spec.mutable_selection()->set_proportion(0.5);
  options.request_id = "load-0-1";
  nlohmann::json j = nlohmann::json::parse(BuildChatCompletionRequest(options));
  EXPECT_EQ(j["kvwire"]["mode"], "c2c");
  EXPECT_EQ(j["kvwire"]["request_id"], "load-0-1");
  EXPECT_EQ(j["kvwire"]["spec"]["scheme"], "SCHEME_INT4");
  EXPECT_DOUBLE_EQ(j["kvwire"]["spec"]["selection"]["proportion"], 0.5);
  // Receiver-only answers move no KV: no spec.
  options.mode = v1::ANSWER_MODE_RECEIVER_ONLY;
  j = nlohmann::json::parse(BuildChatCompletionRequest(options));
  EXPECT_EQ(j["kvwire"]["mode"], "receiver-only");
  EXPECT_FALSE(j["kvwire"].contains("spec"));
}

TEST_F(ChatRequestTest, InvalidUtf8IsReplacedNotThrown) {
  ChatRequestOptions options;
  options.model = "m";
  options.question = "bad \xff byte";
  EXPECT_THAT(BuildChatCompletionRequest(options), HasSubstr("bad "));
}

class ErrorBodyTest : public ::testing::Test {};

TEST_F(ErrorBodyTest, PrefersTheOpenAiErrorMessage) {
  EXPECT_EQ(ErrorMessageFromBody(
                R"({"error":{"message":"invalid bearer token","type":"x"}})"),
            "invalid bearer token");
  EXPECT_EQ(ErrorMessageFromBody(R"({"error":"short"})"), "short");
  EXPECT_EQ(ErrorMessageFromBody("  plain text\n"), "plain text");
}

class ModelListTest : public ::testing::Test {};

TEST_F(ModelListTest, TakesTheFirstModelId) {
  EXPECT_EQ(
      *FirstModelId(
          R"({"object":"list","data":[{"id":"Qwen/Qwen3-0.6B"},{"id":"b"}]})"),
      "Qwen/Qwen3-0.6B");
  EXPECT_EQ(FirstModelId(R"({"data":[]})").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(FirstModelId("[]").status().code(),
            absl::StatusCode::kInvalidArgument);
}

class ChatStreamAccumulatorTest : public ::testing::Test {};

TEST_F(ChatStreamAccumulatorTest, TimesEveryContentChunkAndCountsUsage) {
  ChatStreamAccumulator stream;
  ASSERT_TRUE(
      stream
          .Feed(
              "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
              1.0)
          .ok());
  EXPECT_TRUE(stream.token_times().empty());
  ASSERT_TRUE(
      stream
          .Feed("data: {\"choices\":[{\"delta\":{\"content\":\"A\"}}]}\n\nda",
                1.5)
          .ok());
  ASSERT_TRUE(
      stream
          .Feed("ta: {\"choices\":[{\"delta\":{\"content\":\"B\"}}]}\n\n", 1.6)
          .ok());
  ASSERT_TRUE(stream
                  .Feed("data: {\"choices\":[{\"delta\":{\"content\":\"C\"},"
                        "\"finish_reason\":\"stop\"}]}\n\n",
                        1.9)
                  .ok());
  EXPECT_EQ(stream.completion_tokens(), 3);  // No usage: the chunks.
  ASSERT_TRUE(stream
                  .Feed("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,"
                        "\"completion_tokens\":5}}\n\ndata: [DONE]\n\n",
                        2.0)
                  .ok());
  EXPECT_TRUE(stream.done());
  EXPECT_THAT(stream.token_times(), ElementsAre(1.5, 1.6, 1.9));
  EXPECT_EQ(stream.text(), "ABC");
  EXPECT_EQ(stream.finish_reason(), "stop");
  EXPECT_EQ(stream.completion_tokens(), 5);  // Usage wins.
  EXPECT_EQ(stream.prompt_tokens(), 4);
  const std::vector<double> gaps = InterTokenGaps(stream.token_times());
  ASSERT_EQ(gaps.size(), 2u);
  EXPECT_NEAR(gaps[0], 0.1, 1e-9);
  EXPECT_NEAR(gaps[1], 0.3, 1e-9);
}

TEST_F(ChatStreamAccumulatorTest,
       RecordsInStreamErrorsAndRefusesDataAfterDone) {
  ChatStreamAccumulator stream;
  ASSERT_TRUE(
      stream.Feed("data: {\"error\":{\"message\":\"overloaded\"}}\n\n", 0)
          .ok());
  EXPECT_EQ(stream.error(), "overloaded");
  ASSERT_TRUE(stream.Feed("data: [DONE]\n\n", 0).ok());
  EXPECT_EQ(stream.Feed("data: {}\n\n", 0).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ChatStreamAccumulatorTest, MalformedChunkIsAnError) {
  ChatStreamAccumulator stream;
  EXPECT_EQ(stream.Feed("data: {oops\n\n", 0).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ChatStreamAccumulatorTest, NoGapsForFewerThanTwoTokens) {
  EXPECT_TRUE(InterTokenGaps({}).empty());
  EXPECT_TRUE(InterTokenGaps({1.0}).empty());
}

}  // namespace
}  // namespace load
}  // namespace kvwire
