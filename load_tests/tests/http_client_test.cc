// kvwire-load's HTTP/1.1 client: URL and response-head parsing, chunked
// decoding split at every byte, and POSTs to a fake OpenAI server on
// loopback (chunked and read-to-close bodies, errors, deadlines, cancel).
#include "load_tests/http_client.h"

#include <thread>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "load_tests/tests/fake_openai_server.h"

namespace kvwire {
namespace load {
namespace {

using ::testing::HasSubstr;

class HttpUrlTest : public ::testing::Test {};

TEST_F(HttpUrlTest, ParsesSchemesPortsAndPaths) {
  auto plain = ParseHttpUrl("http://127.0.0.1:8080/v1/chat/completions");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->https);
  EXPECT_EQ(plain->host, "127.0.0.1");
  EXPECT_EQ(plain->port, 8080);
  EXPECT_EQ(plain->path, "/v1/chat/completions");
  EXPECT_EQ(plain->HostPort(), "127.0.0.1:8080");

  auto tls = ParseHttpUrl("https://api.example.com");
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_TRUE(tls->https);
  EXPECT_EQ(tls->port, 443);
  EXPECT_EQ(tls->path, "/");

  auto v6 = ParseHttpUrl("http://[::1]:9/x?y=1");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->path, "/x?y=1");
  EXPECT_EQ(v6->HostPort(), "[::1]:9");
  EXPECT_EQ(ParseHttpUrl("http://[::1]")->port, 80);
}

TEST_F(HttpUrlTest, RefusesOtherSchemesCredentialsAndBadPorts) {
  for (const char* bad :
       {"ftp://x", "127.0.0.1:80", "http://", "http://:80", "http://h:0",
        "http://h:99999", "http://h:", "http://user:pw@h/", "http://[::1"}) {
    EXPECT_EQ(ParseHttpUrl(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

class ResponseHeadTest : public ::testing::Test {};

TEST_F(ResponseHeadTest, ParsesStatusAndLowerCasesHeaderNames) {
  auto head = ParseResponseHead(
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
      "Transfer-Encoding:  chunked \r\n");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->reason, "OK");
  EXPECT_EQ(head->Header("content-type"), "text/event-stream");
  EXPECT_EQ(head->Header("transfer-encoding"), "chunked");
  EXPECT_EQ(head->Header("missing"), "");
  EXPECT_EQ(ParseResponseHead("HTTP/1.0 404 \r\n")->status, 404);
}

TEST_F(ResponseHeadTest, RefusesWhatIsNotHttp) {
  for (const char* bad : {"", "SSH-2.0-OpenSSH", "HTTP/1.1 abc OK",
                          "HTTP/1.1 200 OK\r\nno colon", "HTTP/2 200"}) {
    EXPECT_EQ(ParseResponseHead(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

class ChunkedDecoderTest : public ::testing::Test {};

TEST_F(ChunkedDecoderTest, DecodesWhateverThePieces) {
  const std::string body =
      "5\r\nhello\r\n7;ext=1\r\n, world\r\nA\r\n0123456789\r\n0\r\n"
      "Trailer: x\r\n\r\n";
  for (size_t piece : {1, 2, 5, 1000}) {
    ChunkedDecoder decoder;
    std::string out;
    for (size_t i = 0; i < body.size(); i += piece) {
      ASSERT_TRUE(decoder.Feed(body.substr(i, piece), &out).ok());
    }
    EXPECT_EQ(out, "hello, world0123456789") << "piece " << piece;
    EXPECT_TRUE(decoder.finished());
  }
}

TEST_F(ChunkedDecoderTest, RefusesBadSizesAndMissingCrlf) {
  for (const char* bad :
       {"zz\r\nab\r\n", "2\r\nabX\r\n", "\r\n", "1234567890abcdef0\r\n"}) {
    ChunkedDecoder decoder;
    std::string out;
    EXPECT_EQ(decoder.Feed(bad, &out).code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

class HttpClientTest : public ::testing::Test {
 protected:
  std::unique_ptr<HttpClient> PlainClient() {
    ClientSecurityOptions security;
    security.allow_insecure = true;
    auto client = HttpClient::Create(security, /*https=*/false);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  HttpRequest Request(const std::string& base, const std::string& path) {
    HttpRequest request;
    request.url = *ParseHttpUrl(base + path);
    request.body = "{\"model\":\"m\"}";
    return request;
  }

  // Sends and collects the body.
  absl::StatusOr<HttpResponseHead> SendAndCollect(
      const HttpClient& client, const HttpRequest& request, std::string* body,
      absl::Duration timeout = absl::Seconds(10)) {
    return client.Send(
        request, absl::Now() + timeout, nullptr,
        [body](absl::string_view bytes) {
          body->append(bytes.data(), bytes.size());
          return absl::OkStatus();
        },
        nullptr);
  }
};

TEST_F(HttpClientTest, StreamsAChunkedSseBody) {
  FakeOpenAiServer server({});
  auto client = PlainClient();
  ASSERT_NE(client, nullptr);
  HttpRequest request = Request(server.url(), "/v1/chat/completions");
  request.headers.emplace_back("Authorization", "Bearer t");
  std::string body;
  auto head = SendAndCollect(*client, request, &body);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->Header("content-type"), "text/event-stream");
  EXPECT_THAT(body, HasSubstr("\"content\":\"tok2 \""));
  EXPECT_THAT(body, HasSubstr("data: [DONE]\n\n"));
  EXPECT_EQ(body.find("\r\n0\r\n"), std::string::npos);  // De-chunked.
  EXPECT_EQ(server.last_body(), "{\"model\":\"m\"}");
  EXPECT_THAT(server.last_head(), HasSubstr("Authorization: Bearer t"));
  EXPECT_THAT(server.last_head(), HasSubstr("Content-Length: 13"));
}

TEST_F(HttpClientTest, GetSendsNoBody) {
  FakeOpenAiServer server({});
  auto client = PlainClient();
  ASSERT_NE(client, nullptr);
  HttpRequest request = Request(server.url(), "/v1/models");
  request.method = "GET";
  std::string body;
  auto head = SendAndCollect(*client, request, &body);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_THAT(body, HasSubstr("\"fake-model\""));
  EXPECT_THAT(server.last_head(), ::testing::StartsWith("GET /v1/models "));
  EXPECT_THAT(server.last_head(), ::testing::Not(HasSubstr("Content-Length")));
  EXPECT_EQ(server.last_body(), "");
}

TEST_F(HttpClientTest, ReusesConnectionsTheServerKeepsOpen) {
  FakeOpenAiServer::Behaviour behaviour;
  behaviour.keep_alive = true;
  FakeOpenAiServer server(behaviour);
  auto client = PlainClient();
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 3; ++i) {
    std::string body;
    auto head = SendAndCollect(
        *client, Request(server.url(), "/v1/chat/completions"), &body);
    ASSERT_TRUE(head.ok()) << head.status();
    EXPECT_THAT(body, HasSubstr("data: [DONE]\n\n"));
    EXPECT_THAT(server.last_head(),
                ::testing::Not(HasSubstr("Connection: close")));
  }
  EXPECT_EQ(server.requests(), 3);
  EXPECT_EQ(server.connections(), 1);
}

TEST_F(HttpClientTest, RetriesOnceWhenAKeptConnectionWasClosed) {
  FakeOpenAiServer::Behaviour behaviour;
  behaviour.keep_alive = true;
  behaviour.close_after_response = true;  // Says keep-alive, then closes.
  FakeOpenAiServer server(behaviour);
  auto client = PlainClient();
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 3; ++i) {
    std::string body;
    auto head = SendAndCollect(
        *client, Request(server.url(), "/v1/chat/completions"), &body);
    ASSERT_TRUE(head.ok()) << "request " << i << ": " << head.status();
    EXPECT_THAT(body, HasSubstr("data: [DONE]\n\n"));
  }
  EXPECT_EQ(server.requests(), 3);
  EXPECT_EQ(server.connections(), 3);
}

TEST_F(HttpClientTest, KeepAliveOffClosesEveryConnection) {
  FakeOpenAiServer::Behaviour behaviour;
  behaviour.keep_alive = true;
  FakeOpenAiServer server(behaviour);
  ClientSecurityOptions security;
  security.allow_insecure = true;
  auto client = HttpClient::Create(security, /*https=*/false,
                                   /*keep_alive=*/false);
  ASSERT_TRUE(client.ok()) << client.status();
  for (int i = 0; i < 2; ++i) {
    std::string body;
    auto head = SendAndCollect(
        **client, Request(server.url(), "/v1/chat/completions"), &body);
    ASSERT_TRUE(head.ok()) << head.status();
    EXPECT_THAT(server.last_head(), HasSubstr("Connection: close"));
  }
  EXPECT_EQ(server.connections(), 2);
}

TEST_F(HttpClientTest, ReadsABodyThatEndsAtClose) {
  FakeOpenAiServer::Behaviour behaviour;
  behaviour.chunked = false;
  FakeOpenAiServer server(behaviour);
  auto client = PlainClient();
  ASSERT_NE(client, nullptr);
  std::string body;
  auto head = SendAndCollect(
      *client, Request(server.url(), "/v1/chat/completions"), &body);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_THAT(body, HasSubstr("data: [DONE]\n\n"));
}

TEST_F(HttpClientTest, ReturnsErrorStatusesWithTheirBody) {
  FakeOpenAiServer server({});
  auto client = PlainClient();
  ASSERT_NE(client, nullptr);
  std::string body;
  auto head =
      SendAndCollect(*client, Request(server.url(), "/elsewhere"), &body);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 404);
  EXPECT_EQ(body, "not found");  // Exactly Content-Length bytes.
}

TEST_F(HttpClientTest, ConnectionRefusedIsUnavailable) {
  int port;
  {
    FakeOpenAiServer server({});
    port = server.port();
  }
  auto client = PlainClient();
  ASSERT_NE(client, nullptr);
  std::string body;
  auto head = SendAndCollect(
      *client,
      Request(absl::StrCat("http://127.0.0.1:", port), "/v1/chat/completions"),
      &body);
  EXPECT_EQ(head.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(HttpClientTest, DeadlineAndCancelStopASlowStream) {
  FakeOpenAiServer::Behaviour slow;
  slow.tokens = 50;
  slow.gap = absl::Milliseconds(100);
  FakeOpenAiServer server(slow);
  auto client = PlainClient();
  ASSERT_NE(client, nullptr);
  std::string body;
  const absl::Time start = absl::Now();
  auto head =
      SendAndCollect(*client, Request(server.url(), "/v1/chat/completions"),
                     &body, absl::Milliseconds(300));
  EXPECT_EQ(head.status().code(), absl::StatusCode::kDeadlineExceeded)
      << head.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));

  HttpCancel cancel;
  std::thread canceller([&cancel] {
    absl::SleepFor(absl::Milliseconds(200));
    cancel.Cancel();
  });
  auto cancelled = client->Send(
      Request(server.url(), "/v1/chat/completions"),
      absl::Now() + absl::Seconds(30), nullptr,
      [](absl::string_view) { return absl::OkStatus(); }, &cancel);
  canceller.join();
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled)
      << cancelled.status();
}

TEST_F(HttpClientTest, CallbackErrorsStopTheCall) {
  FakeOpenAiServer server({});
  auto client = PlainClient();
  ASSERT_NE(client, nullptr);
  auto head = client->Send(
      Request(server.url(), "/v1/chat/completions"),
      absl::Now() + absl::Seconds(10), nullptr,
      [](absl::string_view) { return absl::DataLossError("stop"); }, nullptr);
  EXPECT_EQ(head.status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(HttpClientTest, PlaintextNeedsAllowInsecureAndTlsFilesNeedHttps) {
  ClientSecurityOptions security;
  EXPECT_EQ(HttpClient::Create(security, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  security.allow_insecure = true;
  security.tls_ca_path = "/nonexistent/ca.pem";
  EXPECT_EQ(HttpClient::Create(security, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpClient::Create(security, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  ClientSecurityOptions half;
  half.tls_cert_path = "/tmp/cert.pem";
  EXPECT_EQ(HttpClient::Create(half, true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HttpClientTest, HttpsToAPlaintextServerFailsTheHandshake) {
  FakeOpenAiServer::Behaviour plaintext;
  plaintext.greeting = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n";
  FakeOpenAiServer server(plaintext);
  ClientSecurityOptions security;
  auto client = HttpClient::Create(security, /*https=*/true);
  ASSERT_TRUE(client.ok()) << client.status();
  HttpRequest request;
  request.url = *ParseHttpUrl(absl::StrCat("https://127.0.0.1:", server.port(),
                                           "/v1/chat/completions"));
  auto head = (*client)->Send(
      request, absl::Now() + absl::Seconds(5), nullptr,
      [](absl::string_view) { return absl::OkStatus(); }, nullptr);
  EXPECT_EQ(head.status().code(), absl::StatusCode::kUnavailable)
      << head.status();
  EXPECT_THAT(head.status().message(), HasSubstr("TLS handshake"));
}

}  // namespace
}  // namespace load
}  // namespace kvwire
