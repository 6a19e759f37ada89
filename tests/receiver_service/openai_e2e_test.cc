// End-to-end tests of the receiver's OpenAI-compatible HTTP API: the real
// kvwire-sharer and kvwire-receiver binaries on 127.0.0.1 (ports from their
// ready lines, a bearer token on the receiver), called over plain HTTP from
// here, and from Node.js by the official `openai` client and by
// @grpc/grpc-js speaking kvwire.v1 from the .proto
// (tests/js/openai_clients_test.cjs; packages from scripts/openai_clients.sh,
// the ctest fixture). Their answers must equal this process's C++ gRPC
// answers to the same requests: one path behind both front ends.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/service/channel.h"
#include "common/service/security.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/common/service/testing_util.h"
#include "tests/receiver_service/pipeline_reference.h"

#ifndef KVWIRE_OPENAI_NPM_MODULES_DEFAULT
#define KVWIRE_OPENAI_NPM_MODULES_DEFAULT ""
#endif

namespace kvwire {
namespace {

using nlohmann::json;
using test_util::ChildProcess;
using ::testing::HasSubstr;

constexpr absl::Duration kStartTimeout = absl::Seconds(60);
constexpr char kToken[] = "openai-e2e-token";
constexpr char kQuestion[] =
    "Which gas do plants take in from the air to make their food, and "
    "why is sunlight needed?";
constexpr int kMaxTokens = 12;

using Service = test_util::StartedService;

struct HttpReply {
  int status = 0;
  std::string head;  // Status line and headers.
  std::string body;
};

// Connects to 127.0.0.1:`port`; -1 on failure.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return -1;
  }
  return fd;
}

std::string RequestText(const std::string& method, const std::string& path,
                        const std::string& body, const std::string& token) {
  std::string headers;
  if (!token.empty()) {
    headers = absl::StrCat("Authorization: Bearer ", token, "\r\n");
  }
  return absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                      headers, "Content-Type: application/json\r\n",
                      "Content-Length: ", body.size(), "\r\n\r\n", body);
}

// One request over a fresh connection, read until the server closes it.
HttpReply Exchange(int port, const std::string& request) {
  HttpReply reply;
  const int fd = Connect(port);
  if (fd < 0) return reply;
  timeval timeout{120, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  (void)!write(fd, request.data(), request.size());
  std::string all;
  char buffer[8192];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) all.append(buffer, n);
  close(fd);
  const size_t split = all.find("\r\n\r\n");
  if (split == std::string::npos) return reply;
  reply.head = all.substr(0, split);
  reply.body = all.substr(split + 4);
  std::vector<std::string> words = absl::StrSplit(reply.head, ' ');
  if (words.size() > 1) (void)absl::SimpleAtoi(words[1], &reply.status);
  return reply;
}

// The name the receiver serves by default: its model directory's.
std::string g_model;

json ChatBody(json extra = json::object()) {
  json body = {{"model", g_model},
               {"messages", {{{"role", "user"}, {"content", kQuestion}}}},
               {"max_tokens", kMaxTokens}};
  for (const auto& [key, value] : extra.items()) body[key] = value;
  return body;
}

// `name` on PATH, or "".
std::string FindOnPath(const std::string& name) {
  const char* path = getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "", ':')) {
    const std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

class OpenAiE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto assets = MakeReferenceAssets(test_util::MakeTempDir("assets"));
    ASSERT_TRUE(assets.ok()) << assets.status();
    assets_ = new ReferenceAssets(*assets);
    g_model = std::filesystem::path(assets_->receiver_dir)
                  .lexically_normal()
                  .filename();
    if (g_model.empty()) {
      g_model = std::filesystem::path(assets_->receiver_dir)
                    .lexically_normal()
                    .parent_path()
                    .filename();
    }
  }

  void TearDown() override {
    if (!HasFailure()) return;
    for (const auto& [name, service] :
         {std::make_pair("sharer", &sharer_),
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

  // Both services; the receiver with its HTTP API and a bearer token.
  void StartBoth(const std::vector<std::string>& sharer_flags = {},
                 const std::vector<std::string>& receiver_security = {
                     "--allow_insecure"}) {
    std::vector<std::string> sharer = {KVWIRE_SHARER_BINARY,
                                       "--model_dir=" + assets_->sharer_dir,
                                       "--listen_address=127.0.0.1:0",
                                       "--metrics_address=127.0.0.1:0",
                                       "--intra_op_threads=1",
                                       "--drain_timeout_seconds=5",
                                       "--allow_insecure"};
    sharer.insert(sharer.end(), sharer_flags.begin(), sharer_flags.end());
    ASSERT_NO_FATAL_FAILURE(
        StartService(sharer_, sharer, "kvwire-sharer ready"));
    std::vector<std::string> receiver = {
        KVWIRE_RECEIVER_BINARY,
        "--model_dir=" + assets_->receiver_dir,
        "--fuser_dir=" + assets_->fuser_dir,
        "--listen_address=127.0.0.1:0",
        "--metrics_address=127.0.0.1:0",
        "--http_address=127.0.0.1:0",
        "--intra_op_threads=1",
        "--drain_timeout_seconds=5",
        absl::StrCat("--sharer_target=127.0.0.1:", sharer_.port),
        "--sharer_allow_insecure",
        absl::StrCat("--auth_token=", kToken)};
    receiver.insert(receiver.end(), receiver_security.begin(),
                    receiver_security.end());
    ASSERT_NO_FATAL_FAILURE(
        StartService(receiver_, receiver, "kvwire-receiver ready"));
    ASSERT_GT(receiver_.http_port, 0);
  }

  // The C++ gRPC client's answer to `request`.
  v1::AnswerResponse GrpcAnswer(const v1::AnswerRequest& request) {
    ChannelOptions options;
    options.security.allow_insecure = true;
    auto channel = CreateKvwireChannel(
        absl::StrCat("127.0.0.1:", receiver_.port), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    auto stub = v1::Receiver::NewStub(*channel);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    AttachBearerToken(&context, kToken);
    v1::AnswerResponse response;
    const grpc::Status status = stub->Answer(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  static v1::AnswerRequest Int4HalfRequest() {
    v1::AnswerRequest r;
    r.set_request_id("cpp");
    r.set_question(kQuestion);
    r.set_mode(v1::ANSWER_MODE_C2C);
    r.mutable_spec()->set_scheme(v1::SCHEME_INT4);
    r.mutable_spec()->mutable_selection()->set_mode(v1::SELECTION_BACK);
    r.mutable_spec()->mutable_selection()->set_proportion(0.5);
    r.mutable_generation()->set_max_new_tokens(kMaxTokens);
    return r;
  }

  double RequestsTotal(const std::string& code) {
    auto text =
        test_util::HttpGet("127.0.0.1", receiver_.metrics_port, "/metrics");
    if (!text.ok()) return -1;
    return test_util::MetricValue(*text, "kvwire_requests_total",
                                  {{"role", "receiver"},
                                   {"method", "ChatCompletions"},
                                   {"code", code}})
        .value_or(-1);
  }

  static ReferenceAssets* assets_;
  Service sharer_;
  Service receiver_;
};

ReferenceAssets* OpenAiE2eTest::assets_ = nullptr;

// Two answers to one request carry the same serialized bytes; how many
// messages carried them may differ (the sharer batches blocks that wait
// for the network), so their wire bytes are serialized + 5 per message.
void ExpectSameBytes(const json& serialized, const json& wire,
                     const v1::TransferReport& expected) {
  EXPECT_EQ(serialized, absl::StrCat(expected.serialized_bytes()));
  uint64_t s = 0, w = 0;
  ASSERT_TRUE(serialized.is_string() &&
              absl::SimpleAtoi(serialized.get<std::string>(), &s))
      << serialized;
  ASSERT_TRUE(wire.is_string() && absl::SimpleAtoi(wire.get<std::string>(), &w))
      << wire;
  EXPECT_GT(w, s);
  EXPECT_EQ((w - s) % 5, 0u) << w << " - " << s;
  EXPECT_GE(w - s, 5u * 3);  // Header, blocks, trailer at least.
}

TEST_F(OpenAiE2eTest, AnswersCurlRequestsAsTheGrpcAnswerDoes) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  const v1::AnswerResponse expected = GrpcAnswer(Int4HalfRequest());
  ASSERT_FALSE(expected.fell_back()) << expected.fallback_reason();

  const json spec = {{"scheme", "int4"},
                     {"selection", {{"mode", "back"}, {"proportion", 0.5}}}};
  const HttpReply reply = Exchange(
      receiver_.http_port,
      RequestText(
          "POST", "/v1/chat/completions",
          ChatBody({{"kvwire",
                     {{"mode", "c2c"}, {"spec", spec}, {"request_id", "cpp"}}}})
              .dump(),
          kToken));
  ASSERT_EQ(reply.status, 200) << reply.head << "\n" << reply.body;
  const json completion = json::parse(reply.body);
  EXPECT_EQ(completion["id"], "chatcmpl-cpp");
  EXPECT_EQ(completion["object"], "chat.completion");
  EXPECT_EQ(completion["model"], g_model);
  EXPECT_EQ(completion["choices"][0]["message"]["content"], expected.text());
  EXPECT_EQ(completion["usage"]["completion_tokens"],
            expected.token_ids_size());
  EXPECT_EQ(completion["kvwire"]["token_ids"],
            json(std::vector<uint32_t>(expected.token_ids().begin(),
                                       expected.token_ids().end())));
  EXPECT_GT(completion["usage"]["prompt_tokens"].get<int>(), 0);
  ExpectSameBytes(completion["kvwire"]["transfer"]["serialized_bytes"],
                  completion["kvwire"]["transfer"]["wire_bytes"],
                  expected.transfer());
  EXPECT_EQ(completion["choices"][0]["finish_reason"],
            expected.token_ids_size() == kMaxTokens ? "length" : "stop");

  // Streamed: server-sent events whose deltas add up to the same text.
  const HttpReply streamed = Exchange(
      receiver_.http_port,
      RequestText(
          "POST", "/v1/chat/completions",
          ChatBody({{"stream", true},
                    {"stream_options", {{"include_usage", true}}},
                    {"kvwire", {{"spec", spec}, {"request_id", "cpp"}}}})
              .dump(),
          kToken));
  ASSERT_EQ(streamed.status, 200) << streamed.head << streamed.body;
  EXPECT_THAT(streamed.head, HasSubstr("text/event-stream"));
  std::string text;
  std::vector<std::string> events =
      absl::StrSplit(streamed.body, "\n\n", absl::SkipEmpty());
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "data: [DONE]");
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    ASSERT_TRUE(absl::StartsWith(events[i], "data: ")) << events[i];
    const json chunk = json::parse(events[i].substr(6));
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    if (chunk.contains("usage")) usage = chunk["usage"];
    for (const json& choice : chunk["choices"]) {
      text += choice["delta"].value("content", "");
    }
  }
  EXPECT_EQ(text, expected.text());
  EXPECT_EQ(usage["completion_tokens"], expected.token_ids_size());

  // Both counted where gRPC's calls are.
  EXPECT_EQ(RequestsTotal("OK"), 2);
}

TEST_F(OpenAiE2eTest, RefusesBadTokensModelsAndFieldsInOpenAisErrorShape) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  const int port = receiver_.http_port;
  const std::string body = ChatBody().dump();

  for (const std::string& token : {std::string(), std::string("nope")}) {
    const HttpReply reply = Exchange(
        port, RequestText("POST", "/v1/chat/completions", body, token));
    EXPECT_EQ(reply.status, 401) << reply.body;
    EXPECT_THAT(reply.head, HasSubstr("WWW-Authenticate: Bearer"));
    EXPECT_EQ(json::parse(reply.body)["error"]["code"], "invalid_api_key");
  }
  EXPECT_EQ(Exchange(port, RequestText("GET", "/v1/models", "", "")).status,
            401);

  const HttpReply models =
      Exchange(port, RequestText("GET", "/v1/models", "", kToken));
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(json::parse(models.body)["data"][0]["id"], g_model);

  const HttpReply other_model = Exchange(
      port, RequestText("POST", "/v1/chat/completions",
                        ChatBody({{"model", "gpt-4o"}}).dump(), kToken));
  EXPECT_EQ(other_model.status, 404);
  EXPECT_EQ(json::parse(other_model.body)["error"]["code"], "model_not_found");

  const HttpReply n2 =
      Exchange(port, RequestText("POST", "/v1/chat/completions",
                                 ChatBody({{"n", 2}}).dump(), kToken));
  EXPECT_EQ(n2.status, 400);
  const json error = json::parse(n2.body)["error"];
  EXPECT_EQ(error["type"], "invalid_request_error");
  EXPECT_EQ(error["param"], "n");

  // The receiver's own limits, as gRPC applies them (--max_new_tokens_limit).
  const HttpReply too_long = Exchange(
      port, RequestText("POST", "/v1/chat/completions",
                        ChatBody({{"max_tokens", 100000}}).dump(), kToken));
  EXPECT_EQ(too_long.status, 400);
  EXPECT_THAT(json::parse(too_long.body)["error"]["message"].get<std::string>(),
              HasSubstr("max_new_tokens"));

  EXPECT_EQ(
      Exchange(port, RequestText("GET", "/v1/nothing", "", kToken)).status,
      404);
  EXPECT_EQ(RequestsTotal("UNAUTHENTICATED"), 2);
  EXPECT_EQ(RequestsTotal("INVALID_ARGUMENT"), 2);
  EXPECT_EQ(RequestsTotal("NOT_FOUND"), 1);
}

TEST_F(OpenAiE2eTest, CancelsTheAnswerWhenTheHttpClientDisconnects) {
  // A sharer slow enough that the answer is still running when we leave.
  ASSERT_NO_FATAL_FAILURE(StartBoth({"--testing_layer_delay_ms=1000"}));
  const int fd = Connect(receiver_.http_port);
  ASSERT_GE(fd, 0);
  const std::string request = RequestText(
      "POST", "/v1/chat/completions",
      ChatBody({{"kvwire", {{"spec", {{"scheme", "int8"}}}}}}).dump(), kToken);
  ASSERT_EQ(write(fd, request.data(), request.size()),
            static_cast<ssize_t>(request.size()));
  absl::SleepFor(absl::Milliseconds(500));
  close(fd);
  EXPECT_TRUE(test_util::WaitFor(
      [&] { return RequestsTotal("CANCELLED") == 1; }, absl::Seconds(10)))
      << "CANCELLED=" << RequestsTotal("CANCELLED")
      << " OK=" << RequestsTotal("OK");
}

TEST_F(OpenAiE2eTest, AnswersGatewayTimeoutPastTheRequestTimeout) {
  ASSERT_NO_FATAL_FAILURE(
      StartBoth({"--testing_layer_delay_ms=1000"},
                {"--allow_insecure", "--http_request_timeout_seconds=1"}));
  const absl::Time start = absl::Now();
  const HttpReply reply = Exchange(
      receiver_.http_port,
      RequestText(
          "POST", "/v1/chat/completions",
          ChatBody({{"kvwire", {{"spec", {{"scheme", "int8"}}}}}}).dump(),
          kToken));
  EXPECT_EQ(reply.status, 504) << reply.body;
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_EQ(json::parse(reply.body, nullptr, false)["error"]["code"],
            "timeout");
  EXPECT_EQ(RequestsTotal("DEADLINE_EXCEEDED"), 1);
}

TEST_F(OpenAiE2eTest, AnswersTooManyRequestsWhenTheQueueIsFull) {
  // One worker, no queue, and a slow sharer: a second request finds no room.
  ASSERT_NO_FATAL_FAILURE(StartBoth({"--testing_layer_delay_ms=1000"},
                                    {"--allow_insecure", "--queue_size=0"}));
  const int busy = Connect(receiver_.http_port);
  ASSERT_GE(busy, 0);
  const std::string body =
      ChatBody({{"kvwire", {{"spec", {{"scheme", "int8"}}}}}}).dump();
  const std::string request =
      RequestText("POST", "/v1/chat/completions", body, kToken);
  ASSERT_EQ(write(busy, request.data(), request.size()),
            static_cast<ssize_t>(request.size()));
  ASSERT_TRUE(test_util::WaitFor(
      [&] {
        auto text =
            test_util::HttpGet("127.0.0.1", receiver_.metrics_port, "/metrics");
        return text.ok() && test_util::MetricValue(*text, "kvwire_workers_busy",
                                                   {{"role", "receiver"}}) == 1;
      },
      absl::Seconds(10)));

  const HttpReply refused = Exchange(receiver_.http_port, request);
  EXPECT_EQ(refused.status, 429) << refused.body;
  const json error = json::parse(refused.body, nullptr, false);
  ASSERT_FALSE(error.is_discarded()) << refused.body;
  EXPECT_EQ(error["error"]["type"], "rate_limit_error");
  EXPECT_EQ(error["error"]["code"], "rate_limit_exceeded");
  EXPECT_EQ(RequestsTotal("RESOURCE_EXHAUSTED"), 1);
  close(busy);
}

TEST_F(OpenAiE2eTest, ServesHttpsWithTheGrpcPortsCertificate) {
  const std::string curl = FindOnPath("curl");
  if (curl.empty()) GTEST_SKIP() << "curl is not on PATH";
  auto pki = test_util::MakeTestPki(test_util::MakeTempDir("pki"));
  ASSERT_TRUE(pki.ok()) << pki.status();
  ASSERT_NO_FATAL_FAILURE(StartBoth(
      {}, {"--tls_cert=" + pki->server_cert, "--tls_key=" + pki->server_key}));
  const std::string body_file = test_util::MakeTempDir("curl") + "/body.json";
  std::ofstream(body_file) << ChatBody().dump();
  const std::string command =
      absl::StrCat(curl, " -sS --max-time 60 --cacert ", pki->ca_cert,
                   " --resolve localhost:", receiver_.http_port,
                   ":127.0.0.1 https://localhost:", receiver_.http_port,
                   "/v1/chat/completions -H 'Authorization: Bearer ", kToken,
                   "' -H 'Content-Type: application/json' --data-binary @",
                   body_file, " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    output.append(buffer, n);
  }
  ASSERT_EQ(pclose(pipe), 0) << output;
  const json completion = json::parse(output, nullptr, false);
  ASSERT_FALSE(completion.is_discarded()) << output;
  EXPECT_EQ(completion["object"], "chat.completion") << output;
  EXPECT_EQ(completion["usage"]["completion_tokens"], kMaxTokens);

  // Plain HTTP on the HTTPS port gets no answer.
  EXPECT_EQ(Exchange(receiver_.http_port,
                     RequestText("GET", "/v1/models", "", kToken))
                .status,
            0);
}

TEST_F(OpenAiE2eTest, NodeOpenAiAndGrpcJsClientsGetTheCppClientsAnswer) {
  const std::string node = FindOnPath("node");
  if (node.empty()) GTEST_SKIP() << "node is not on PATH";
  const char* env_modules = getenv("KVWIRE_OPENAI_NPM_MODULES");
  const std::string modules =
      env_modules != nullptr ? env_modules : KVWIRE_OPENAI_NPM_MODULES_DEFAULT;
  ASSERT_EQ(access((modules + "/openai/package.json").c_str(), R_OK), 0)
      << "no openai package in " << modules
      << ": run scripts/openai_clients.sh (the ctest fixture does) or set "
         "KVWIRE_OPENAI_NPM_MODULES";
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  const v1::AnswerResponse expected = GrpcAnswer(Int4HalfRequest());
  ASSERT_FALSE(expected.fell_back()) << expected.fallback_reason();

  const std::string source = getenv("KVWIRE_SOURCE_DIR") != nullptr
                                 ? getenv("KVWIRE_SOURCE_DIR")
                                 : KVWIRE_SOURCE_DIR_DEFAULT;
  setenv("KVWIRE_HTTP_URL",
         absl::StrCat("http://127.0.0.1:", receiver_.http_port, "/v1").c_str(),
         1);
  setenv("KVWIRE_MODEL", g_model.c_str(), 1);
  setenv("KVWIRE_TOKEN", kToken, 1);
  setenv("KVWIRE_RECEIVER_TARGET",
         absl::StrCat("127.0.0.1:", receiver_.port).c_str(), 1);
  setenv("KVWIRE_SHARER_TARGET",
         absl::StrCat("127.0.0.1:", sharer_.port).c_str(), 1);
  setenv("KVWIRE_PROTO_DIR", (source + "/proto").c_str(), 1);
  setenv("KVWIRE_QUESTION", kQuestion, 1);
  setenv("KVWIRE_MAX_TOKENS", absl::StrCat(kMaxTokens).c_str(), 1);
  setenv("KVWIRE_REQUEST_ID", "cpp", 1);  // Int4HalfRequest's.
  const std::string command =
      absl::StrCat(node, " ", source, "/tests/js/openai_clients_test.cjs ",
                   modules, " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    output.append(buffer, n);
  }
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  const size_t at = output.find("KVWIRE_RESULT ");
  ASSERT_NE(at, std::string::npos) << output;
  const json result = json::parse(output.substr(at + 14));

  EXPECT_EQ(result["completion"]["text"], expected.text());
  EXPECT_EQ(result["completion"]["usage"]["completion_tokens"],
            expected.token_ids_size());
  ExpectSameBytes(result["completion"]["serialized_bytes"],
                  result["completion"]["wire_bytes"], expected.transfer());
  EXPECT_EQ(result["stream"]["text"], expected.text());
  EXPECT_EQ(result["stream"]["usage"]["completion_tokens"],
            expected.token_ids_size());
  EXPECT_EQ(result["grpc"]["text"], expected.text());
  const json ids(std::vector<uint32_t>(expected.token_ids().begin(),
                                       expected.token_ids().end()));
  EXPECT_EQ(result["completion"]["token_ids"], ids);
  EXPECT_EQ(result["stream"]["token_ids"], ids);
  EXPECT_EQ(result["grpc"]["token_ids"], ids);
  ExpectSameBytes(result["grpc"]["serialized_bytes"],
                  result["grpc"]["wire_bytes"], expected.transfer());
  EXPECT_EQ(result["errors"]["model"]["status"], 404);
  EXPECT_EQ(result["errors"]["n"]["param"], "n");
  EXPECT_EQ(result["errors"]["auth"]["status"], 401);
  std::cout << "node clients: " << result.dump() << "\n";
}

}  // namespace
}  // namespace kvwire
