// kvwire-sharer-load: a bounded load generator for kvwire-sharer. Keeps
// --concurrency Share calls in flight until --requests have completed,
// reads every stream to the end, and prints one JSON object: calls/s,
// prompt tokens/s, wire bytes/s, latency percentiles, status counts.
// Loopback or lab use only.
//
//   kvwire-sharer-load --target=127.0.0.1:50051 --allow_insecure
//       --concurrency=32 --requests=512 --tokens=128 --scheme=int8
#include <grpcpp/client_context.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/codec/scheme.h"
#include "common/service/channel.h"
#include "common/service/grpc_status.h"
#include "common/service/security.h"
#include "kvwire/v1/kvwire.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Sharer address.");
ABSL_FLAG(int, concurrency, 8, "Calls in flight.");
ABSL_FLAG(int, requests, 64, "Calls in total.");
ABSL_FLAG(int, tokens, 128, "Prompt tokens per call (random ids).");
ABSL_FLAG(std::string, scheme, "int8", "Transfer scheme (bf16, int8, ...).");
ABSL_FLAG(double, deadline_seconds, 60, "Deadline of each call.");
ABSL_FLAG(uint32_t, max_blocks_per_message, 0,
          "ShareRequest.max_blocks_per_message: whole blocks the sharer may "
          "batch into one message (0 or 1: one per message).");
ABSL_FLAG(bool, allow_insecure, false, "Plaintext channel.");
ABSL_FLAG(std::string, tls_ca, "", "PEM roots for the server.");
ABSL_FLAG(std::string, tls_cert, "", "Client certificate (mutual TLS).");
ABSL_FLAG(std::string, tls_key, "", "Client key (mutual TLS).");
ABSL_FLAG(std::string, tls_server_name, "", "Expected server name.");
ABSL_FLAG(std::string, auth_token_file, "", "Bearer token file.");

namespace kvwire {
namespace {

int Run() {
  ChannelOptions options;
  options.security.allow_insecure = absl::GetFlag(FLAGS_allow_insecure);
  options.security.tls_ca_path = absl::GetFlag(FLAGS_tls_ca);
  options.security.tls_cert_path = absl::GetFlag(FLAGS_tls_cert);
  options.security.tls_key_path = absl::GetFlag(FLAGS_tls_key);
  options.security.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  std::string token;
  if (!absl::GetFlag(FLAGS_auth_token_file).empty()) {
    auto t = ReadSecretFile(absl::GetFlag(FLAGS_auth_token_file));
    if (!t.ok()) {
      std::cerr << t.status() << std::endl;
      return 1;
    }
    token = *t;
  }
  auto scheme = ParseScheme(absl::GetFlag(FLAGS_scheme));
  if (!scheme.ok()) {
    std::cerr << scheme.status() << std::endl;
    return 1;
  }
  auto channel = CreateKvwireChannel(absl::GetFlag(FLAGS_target), options);
  if (!channel.ok()) {
    std::cerr << channel.status() << std::endl;
    return 1;
  }
  auto stub = v1::Sharer::NewStub(*channel);
  {
    // Fetch the vocabulary size (and wait for the server).
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    context.set_wait_for_ready(true);
    AttachBearerToken(&context, token);
    v1::SharerInfo info;
    const grpc::Status s = stub->GetInfo(&context, v1::GetInfoRequest(), &info);
    if (!s.ok()) {
      std::cerr << "GetInfo: " << s.error_message() << std::endl;
      return 1;
    }
    std::mt19937 rng(1);
    std::vector<v1::ShareRequest> requests(64);
    for (auto& r : requests) {
      for (int i = 0; i < absl::GetFlag(FLAGS_tokens); ++i) {
        r.add_token_ids(rng() % info.model().vocab_size());
      }
      r.mutable_spec()->set_scheme(*scheme);
      r.set_max_blocks_per_message(absl::GetFlag(FLAGS_max_blocks_per_message));
    }
    std::atomic<int> next{0};
    std::mutex mu;
    std::vector<double> latencies;
    std::map<std::string, int> codes;
    int64_t wire_bytes = 0;
    int64_t messages = 0;
    const int total = absl::GetFlag(FLAGS_requests);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < absl::GetFlag(FLAGS_concurrency); ++c) {
      threads.emplace_back([&] {
        for (int i; (i = next.fetch_add(1)) < total;) {
          grpc::ClientContext call;
          call.set_deadline(absl::ToChronoTime(
              absl::Now() +
              absl::Seconds(absl::GetFlag(FLAGS_deadline_seconds))));
          AttachBearerToken(&call, token);
          const auto t0 = std::chrono::steady_clock::now();
          auto reader = stub->Share(&call, requests[i % requests.size()]);
          v1::KvChunk chunk;
          int64_t bytes = 0;
          int64_t count = 0;
          while (reader->Read(&chunk)) {
            bytes += chunk.ByteSizeLong() + 5;
            ++count;
          }
          const grpc::Status status = reader->Finish();
          const double seconds = std::chrono::duration<double>(
                                     std::chrono::steady_clock::now() - t0)
                                     .count();
          std::lock_guard<std::mutex> lock(mu);
          ++codes[std::string(StatusCodeName(status.error_code()))];
          if (status.ok()) {
            latencies.push_back(seconds);
            wire_bytes += bytes;
            messages += count;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    std::sort(latencies.begin(), latencies.end());
    auto pct = [&](double p) {
      return latencies.empty()
                 ? 0.0
                 : latencies[std::min(
                       latencies.size() - 1,
                       static_cast<size_t>(p * latencies.size()))];
    };
    std::cout << "{\"requests\": " << total
              << ", \"concurrency\": " << absl::GetFlag(FLAGS_concurrency)
              << ", \"tokens\": " << absl::GetFlag(FLAGS_tokens)
              << ", \"scheme\": \"" << absl::GetFlag(FLAGS_scheme)
              << "\", \"wall_s\": " << wall
              << ", \"calls_per_s\": " << latencies.size() / wall
              << ", \"prompt_tokens_per_s\": "
              << latencies.size() * absl::GetFlag(FLAGS_tokens) / wall
              << ", \"wire_MB_per_s\": " << wire_bytes / wall / 1e6
              << ", \"messages_per_call\": "
              << (latencies.empty()
                      ? 0.0
                      : static_cast<double>(messages) / latencies.size())
              << ", \"latency_p50_s\": " << pct(0.5)
              << ", \"latency_p99_s\": " << pct(0.99) << ", \"codes\": {";
    bool first = true;
    for (const auto& [code, n] : codes) {
      std::cout << (first ? "" : ", ") << "\"" << code << "\": " << n;
      first = false;
    }
    std::cout << "}}" << std::endl;
  }
  return 0;
}

}  // namespace
}  // namespace kvwire

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Bounded Share load against a kvwire-sharer; prints JSON.");
  absl::ParseCommandLine(argc, argv);
  return kvwire::Run();
}
