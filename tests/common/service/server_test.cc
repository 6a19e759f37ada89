// GrpcServer: health per service, credentials, shutdown; CreateKvwireChannel.
#include "common/service/server.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/service/channel.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/service/testing_util.h"

namespace kvwire {
namespace {

using test_util::HealthCheck;

constexpr int kServing = 1;
constexpr int kNotServing = 2;

ServerOptions LocalOptions() {
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.security.allow_insecure = true;
  options.drain_timeout = absl::Seconds(2);
  return options;
}

std::shared_ptr<grpc::Channel> Channel(int port,
                                       const ClientSecurityOptions& security) {
  ChannelOptions options;
  options.security = security;
  auto channel = CreateKvwireChannel(absl::StrCat("127.0.0.1:", port), options);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return channel.ok() ? *channel : nullptr;
}

ClientSecurityOptions Plaintext() {
  ClientSecurityOptions s;
  s.allow_insecure = true;
  return s;
}

TEST(GrpcServerTest, HealthPerServiceAndShutdown) {
  auto server = GrpcServer::Start(LocalOptions(), {}, {"kvwire.test.A"});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  auto channel = Channel((*server)->port(), Plaintext());
  EXPECT_EQ(HealthCheck(channel, "").value_or(-1), kServing);
  EXPECT_EQ(HealthCheck(channel, "kvwire.test.A").value_or(-1), kServing);
  EXPECT_EQ(HealthCheck(channel, "kvwire.test.B").status().code(),
            absl::StatusCode::kNotFound);
  (*server)->SetServing("kvwire.test.A", false);
  EXPECT_EQ(HealthCheck(channel, "kvwire.test.A").value_or(-1), kNotServing);
  (*server)->Shutdown();
  (*server)->Shutdown();  // Idempotent.
  EXPECT_FALSE(HealthCheck(channel, "", absl::Seconds(2)).ok());
}

TEST(GrpcServerTest, RefusesPlaintextUnlessAllowed) {
  ServerOptions options = LocalOptions();
  options.security.allow_insecure = false;
  EXPECT_EQ(GrpcServer::Start(options, {}, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(GrpcServerTest, ReportsUnusableAddress) {
  ServerOptions options = LocalOptions();
  options.listen_address = "256.1.2.3:1";
  EXPECT_EQ(GrpcServer::Start(options, {}, {}).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(GrpcServerTest, RefusesAPortAnotherServerListensOn) {
  auto first = GrpcServer::Start(LocalOptions(), {}, {});
  ASSERT_TRUE(first.ok()) << first.status();
  ServerOptions same_port = LocalOptions();
  same_port.listen_address = absl::StrCat("127.0.0.1:", (*first)->port());
  auto second = GrpcServer::Start(same_port, {}, {});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(),
              ::testing::HasSubstr("cannot listen on"));
  // The first one keeps serving.
  auto channel = Channel((*first)->port(), Plaintext());
  EXPECT_EQ(HealthCheck(channel, "").value_or(-1), kServing);
}

TEST(GrpcServerTest, MutualTlsAcceptsTrustedClientsOnly) {
  auto pki = test_util::MakeTestPki(test_util::MakeTempDir("pki"));
  ASSERT_TRUE(pki.ok()) << pki.status();
  ServerOptions options = LocalOptions();
  options.security.allow_insecure = false;
  options.security.tls_cert_path = pki->server_cert;
  options.security.tls_key_path = pki->server_key;
  options.security.tls_client_ca_path = pki->ca_cert;
  auto server = GrpcServer::Start(options, {}, {});
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  ClientSecurityOptions trusted;
  trusted.tls_ca_path = pki->ca_cert;
  trusted.tls_cert_path = pki->client_cert;
  trusted.tls_key_path = pki->client_key;
  trusted.tls_server_name = "localhost";
  EXPECT_EQ(HealthCheck(Channel(port, trusted), "").value_or(-1), kServing);

  ClientSecurityOptions no_cert = trusted;
  no_cert.tls_cert_path.clear();
  no_cert.tls_key_path.clear();
  EXPECT_EQ(
      HealthCheck(Channel(port, no_cert), "", absl::Seconds(3)).status().code(),
      absl::StatusCode::kUnavailable);

  ClientSecurityOptions rogue = trusted;
  rogue.tls_cert_path = pki->other_client_cert;
  rogue.tls_key_path = pki->other_client_key;
  EXPECT_EQ(
      HealthCheck(Channel(port, rogue), "", absl::Seconds(3)).status().code(),
      absl::StatusCode::kUnavailable);

  ClientSecurityOptions wrong_roots = trusted;
  wrong_roots.tls_ca_path = pki->other_ca_cert;
  EXPECT_EQ(HealthCheck(Channel(port, wrong_roots), "", absl::Seconds(3))
                .status()
                .code(),
            absl::StatusCode::kUnavailable);

  EXPECT_EQ(HealthCheck(Channel(port, Plaintext()), "", absl::Seconds(3))
                .status()
                .code(),
            absl::StatusCode::kUnavailable);
}

TEST(ChannelTest, ArgumentsCarryLimitsAndKeepalive) {
  ChannelOptions options;
  options.security.tls_server_name = "sharer.internal";
  grpc::ChannelArguments args = MakeChannelArguments(options);
  grpc_channel_args c = args.c_channel_args();
  std::map<std::string, std::string> found;
  for (size_t i = 0; i < c.num_args; ++i) {
    const grpc_arg& a = c.args[i];
    found[a.key] = a.type == GRPC_ARG_INTEGER  ? std::to_string(a.value.integer)
                   : a.type == GRPC_ARG_STRING ? std::string(a.value.string)
                                               : std::string("?");
  }
  EXPECT_EQ(found[GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH],
            std::to_string(kDefaultMaxMessageBytes));
  EXPECT_EQ(found[GRPC_ARG_KEEPALIVE_TIME_MS], "30000");
  EXPECT_EQ(found[GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS], "1");
  EXPECT_EQ(found[GRPC_SSL_TARGET_NAME_OVERRIDE_ARG], "sharer.internal");
  EXPECT_EQ(found[GRPC_ARG_LB_POLICY_NAME], "round_robin");
}

}  // namespace
}  // namespace kvwire
