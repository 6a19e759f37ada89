// TLS credentials and bearer-token authentication.
#include "common/service/security.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"

namespace kvwire {
namespace {

constexpr absl::string_view kAuthorizationHeader = "authorization";
constexpr absl::string_view kBearerPrefix = "Bearer ";

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Length is not secret-independent here, but the token's length is not
  // the secret; every byte of the longer string is still visited.
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

// gRPC refuses a certificate whose key does not match only when the server
// starts, reported as a failure to listen: check the pair here instead and
// name the files. INVALID_ARGUMENT for unreadable PEM or a mismatch.
absl::Status CheckKeyMatchesCertificate(const std::string& cert_pem,
                                        const std::string& key_pem,
                                        absl::string_view cert_path,
                                        absl::string_view key_path) {
  std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())),
      &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_path, " holds no PEM certificate"));
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())),
      &BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr),
      &EVP_PKEY_free);
  if (key == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat(key_path, " holds no (unencrypted) PEM private key"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("the private key ", key_path,
                     " does not match the certificate ", cert_path));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  std::string secret(absl::StripTrailingAsciiWhitespace(*text));
  if (secret.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is empty"));
  }
  return secret;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& o) {
  if (o.tls_cert_path.empty() != o.tls_key_path.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both a certificate and a private key (--tls_cert and "
        "--tls_key)");
  }
  if (!o.tls_client_ca_path.empty() && o.tls_cert_path.empty()) {
    return absl::InvalidArgumentError(
        "mutual TLS (--tls_client_ca) needs a server certificate "
        "(--tls_cert, --tls_key)");
  }
  if (o.tls_cert_path.empty()) {
    if (!o.allow_insecure) {
      return absl::FailedPreconditionError(
          "no TLS certificate given and plaintext not allowed: pass --tls_cert "
          "and --tls_key, or --allow_insecure to serve plaintext");
    }
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions ssl(
      GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadFileToString(o.tls_cert_path);
  if (!cert.ok()) return cert.status();
  auto key = ReadFileToString(o.tls_key_path);
  if (!key.ok()) return key.status();
  if (absl::Status st = CheckKeyMatchesCertificate(*cert, *key, o.tls_cert_path,
                                                   o.tls_key_path);
      !st.ok()) {
    return st;
  }
  pair.cert_chain = *std::move(cert);
  pair.private_key = *std::move(key);
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!o.tls_client_ca_path.empty()) {
    auto ca = ReadFileToString(o.tls_client_ca_path);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
    ssl.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const ClientSecurityOptions& o) {
  if (o.tls_cert_path.empty() != o.tls_key_path.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs both the certificate and its key");
  }
  if (!o.tls_enabled()) {
    if (!o.allow_insecure) {
      return absl::FailedPreconditionError(
          "no TLS configured and plaintext not allowed: give a CA "
          "(--tls_ca) or use_tls, or allow_insecure for plaintext");
    }
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  if (!o.tls_ca_path.empty()) {
    auto ca = ReadFileToString(o.tls_ca_path);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (!o.tls_cert_path.empty()) {
    auto cert = ReadFileToString(o.tls_cert_path);
    if (!cert.ok()) return cert.status();
    auto key = ReadFileToString(o.tls_key_path);
    if (!key.ok()) return key.status();
    if (absl::Status st = CheckKeyMatchesCertificate(
            *cert, *key, o.tls_cert_path, o.tls_key_path);
        !st.ok()) {
      return st;
    }
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

std::string DescribeSecurity(const ServerSecurityOptions& o) {
  std::vector<std::string> parts;
  if (o.tls_cert_path.empty()) {
    parts.push_back(o.allow_insecure ? "plaintext" : "none (refused)");
  } else {
    parts.push_back(o.tls_client_ca_path.empty() ? "TLS" : "mutual TLS");
  }
  parts.push_back(o.auth_token.empty() ? "no bearer token" : "bearer token");
  return absl::StrJoin(parts, ", ");
}

std::string DescribeSecurity(const ClientSecurityOptions& o) {
  std::vector<std::string> parts;
  if (!o.tls_enabled()) {
    parts.push_back(o.allow_insecure ? "plaintext" : "none (refused)");
  } else {
    parts.push_back(o.tls_cert_path.empty() ? "TLS" : "mutual TLS");
  }
  parts.push_back(o.auth_token.empty() ? "no bearer token" : "bearer token");
  return absl::StrJoin(parts, ", ");
}

void AttachBearerToken(grpc::ClientContext* context, absl::string_view token) {
  if (token.empty()) return;
  context->AddMetadata(std::string(kAuthorizationHeader),
                       absl::StrCat(kBearerPrefix, token));
}

absl::Status BearerTokenAuth::CheckHeader(
    const absl::string_view* authorization) const {
  if (token_.empty()) return absl::OkStatus();
  if (authorization == nullptr) {
    return absl::UnauthenticatedError(
        "missing bearer token (send 'authorization: Bearer <token>')");
  }
  absl::string_view value = *authorization;
  // The scheme name is case-insensitive (RFC 7235).
  if (value.size() < kBearerPrefix.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kBearerPrefix.size()),
                              kBearerPrefix)) {
    return absl::UnauthenticatedError(
        "authorization metadata is not a bearer token");
  }
  value.remove_prefix(kBearerPrefix.size());
  if (!ConstantTimeEquals(value, token_)) {
    return absl::UnauthenticatedError("invalid bearer token");
  }
  return absl::OkStatus();
}

absl::Status BearerTokenAuth::Check(
    const grpc::ServerContextBase& context) const {
  if (token_.empty()) return absl::OkStatus();
  const auto& md = context.client_metadata();
  auto range = md.equal_range(grpc::string_ref(kAuthorizationHeader.data(),
                                               kAuthorizationHeader.size()));
  if (range.first == range.second) return CheckHeader(nullptr);
  // Any one matching value authenticates the call.
  absl::Status last;
  for (auto it = range.first; it != range.second; ++it) {
    const absl::string_view value(it->second.data(), it->second.size());
    last = CheckHeader(&value);
    if (last.ok()) return last;
  }
  return last;
}

}  // namespace kvwire
