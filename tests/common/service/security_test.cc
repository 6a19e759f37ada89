// Credentials construction and the bearer-token check.
#include "common/service/security.h"

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/service/testing_util.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

TEST(BearerTokenAuthTest, DisabledAcceptsEverything) {
  BearerTokenAuth auth("");
  EXPECT_FALSE(auth.enabled());
  EXPECT_TRUE(auth.CheckHeader(nullptr).ok());
}

TEST(BearerTokenAuthTest, ChecksTheToken) {
  BearerTokenAuth auth("s3cret");
  EXPECT_TRUE(auth.enabled());
  absl::string_view good = "Bearer s3cret";
  absl::string_view lower = "bearer s3cret";
  absl::string_view wrong = "Bearer s3cre";
  absl::string_view longer = "Bearer s3cret!";
  absl::string_view basic = "Basic czNjcmV0";
  EXPECT_TRUE(auth.CheckHeader(&good).ok());
  EXPECT_TRUE(auth.CheckHeader(&lower).ok());
  for (const absl::string_view* bad : {&wrong, &longer, &basic}) {
    EXPECT_EQ(auth.CheckHeader(bad).code(), absl::StatusCode::kUnauthenticated)
        << *bad;
  }
  const absl::Status missing = auth.CheckHeader(nullptr);
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(missing.message()), HasSubstr("missing"));
  // The token never appears in messages.
  EXPECT_THAT(std::string(auth.CheckHeader(&wrong).message()),
              ::testing::Not(HasSubstr("s3cret")));
}

TEST(SecurityTest, PlaintextNeedsExplicitPermission) {
  ServerSecurityOptions server;
  const auto refused = MakeServerCredentials(server);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("--allow_insecure"));
  server.allow_insecure = true;
  EXPECT_TRUE(MakeServerCredentials(server).ok());

  ClientSecurityOptions client;
  EXPECT_EQ(MakeChannelCredentials(client).status().code(),
            absl::StatusCode::kFailedPrecondition);
  client.allow_insecure = true;
  EXPECT_TRUE(MakeChannelCredentials(client).ok());
}

TEST(SecurityTest, IncompleteTlsIsRejected) {
  ServerSecurityOptions server;
  server.tls_cert_path = "/nonexistent/cert.pem";
  EXPECT_EQ(MakeServerCredentials(server).status().code(),
            absl::StatusCode::kInvalidArgument);
  server.tls_key_path = "/nonexistent/key.pem";
  EXPECT_EQ(MakeServerCredentials(server).status().code(),
            absl::StatusCode::kNotFound);
  ServerSecurityOptions ca_only;
  ca_only.tls_client_ca_path = "/nonexistent/ca.pem";
  EXPECT_EQ(MakeServerCredentials(ca_only).status().code(),
            absl::StatusCode::kInvalidArgument);
  ClientSecurityOptions client;
  client.tls_cert_path = "/nonexistent/cert.pem";
  EXPECT_EQ(MakeChannelCredentials(client).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SecurityTest, TlsFromGeneratedCertificates) {
  auto pki = test_util::MakeTestPki(test_util::MakeTempDir("pki"));
  ASSERT_TRUE(pki.ok()) << pki.status();
  ServerSecurityOptions server;
  server.tls_cert_path = pki->server_cert;
  server.tls_key_path = pki->server_key;
  server.tls_client_ca_path = pki->ca_cert;
  server.auth_token = "t";
  EXPECT_TRUE(MakeServerCredentials(server).ok());
  EXPECT_EQ(DescribeSecurity(server), "mutual TLS, bearer token");
  ClientSecurityOptions client;
  client.tls_ca_path = pki->ca_cert;
  client.tls_cert_path = pki->client_cert;
  client.tls_key_path = pki->client_key;
  EXPECT_TRUE(client.tls_enabled());
  EXPECT_TRUE(MakeChannelCredentials(client).ok());
  EXPECT_EQ(DescribeSecurity(client), "mutual TLS, no bearer token");
}

TEST(SecurityTest, KeyThatDoesNotMatchTheCertificateIsNamed) {
  // Issue 14: gRPC reported this as "cannot listen ... (address in use or
  // invalid?)" when the server started.
  auto pki = test_util::MakeTestPki(test_util::MakeTempDir("pki"));
  ASSERT_TRUE(pki.ok()) << pki.status();
  ServerSecurityOptions server;
  server.tls_cert_path = pki->server_cert;
  server.tls_key_path = pki->client_key;
  const auto mismatched = MakeServerCredentials(server);
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(mismatched.status().message()),
              ::testing::AllOf(::testing::HasSubstr("does not match"),
                               ::testing::HasSubstr(pki->client_key),
                               ::testing::HasSubstr(pki->server_cert)));
  server.tls_key_path = pki->ca_cert;  // Not a key at all.
  EXPECT_THAT(std::string(MakeServerCredentials(server).status().message()),
              ::testing::HasSubstr("no (unencrypted) PEM private key"));
  ClientSecurityOptions client;
  client.tls_ca_path = pki->ca_cert;
  client.tls_cert_path = pki->client_cert;
  client.tls_key_path = pki->server_key;
  EXPECT_EQ(MakeChannelCredentials(client).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SecurityTest, ReadSecretFileStripsTrailingNewline) {
  const std::string path = test_util::MakeTempDir("secret") + "/token";
  std::ofstream(path) << "abc\n";
  auto token = ReadSecretFile(path);
  ASSERT_TRUE(token.ok());
  EXPECT_EQ(*token, "abc");
  const std::string empty = test_util::MakeTempDir("secret") + "/empty";
  std::ofstream(empty) << "\n";
  EXPECT_EQ(ReadSecretFile(empty).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadSecretFile("/nonexistent/token").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvwire
