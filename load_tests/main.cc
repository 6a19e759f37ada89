// kvwire-load: a bounded load generator for kvwire-receiver (Answer,
// AnswerStream, or OpenAI chat.completions over HTTP with SSE) and
// kvwire-sharer (Share, transfer only). Closed loop (N
// concurrent clients) or open loop (Poisson arrivals at a target rate,
// latency measured from the intended send time), warm-up, duration or
// request count, weighted scenarios of transfer spec x prompt length from a
// YAML file, prompts drawn from a question file. Writes report.json,
// report.csv and PNG plots (gnuplot) and prints a summary, with time to
// first token and inter-token latency percentiles for streams. It refuses
// targets that are neither loopback nor inside a network namespace named
// with --netns, unless --allow_remote_target opts in to a real deployment.
#include <csignal>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/service/channel.h"
#include "common/service/security.h"
#include "load_tests/http_client.h"
#include "load_tests/load_runner.h"
#include "load_tests/openai_chat.h"
#include "load_tests/report.h"
#include "load_tests/scenario.h"
#include "load_tests/target_guard.h"

ABSL_FLAG(std::string, scenario_file, "",
          "YAML scenario file (see load_tests/scenarios/). Flags below "
          "override its values; without it --spec and --prompt_tokens "
          "define the scenarios.");
ABSL_FLAG(std::string, target, "",
          "host:port of the service under load; for --rpc=openai_chat the "
          "base URL (http://host:port or https://host; a URL without a "
          "path gets /v1/chat/completions).");
ABSL_FLAG(std::string, rpc, "",
          "share (sharer, transfer only), answer or answer_stream "
          "(receiver), or openai_chat (POST /v1/chat/completions, streaming "
          "SSE, to kvwire-receiver's HTTP endpoint or any OpenAI-compatible "
          "server; see --kvwire_extension). Default: the file's, else "
          "share.");
ABSL_FLAG(std::string, model, "",
          "openai_chat: the request's \"model\" (default: the file's, else "
          "the first model GET /v1/models lists).");
ABSL_FLAG(std::string, kvwire_extension, "",
          "openai_chat: true sends each scenario's transfer spec and answer "
          "mode in kvwire-receiver's \"kvwire\" request object (and reads "
          "the transfer bytes its last chunk reports); false sends plain "
          "OpenAI requests, for other OpenAI-compatible servers. Default: "
          "the file's, else true.");
ABSL_FLAG(std::string, mode, "", "closed or open (default: the file's).");
ABSL_FLAG(std::string, concurrency, "",
          "Closed loop: comma-separated concurrent clients, one load point "
          "each (e.g. 1,2,4,8).");
ABSL_FLAG(std::string, rate, "",
          "Open loop: comma-separated target rates in requests/s, one load "
          "point each.");
ABSL_FLAG(double, duration_seconds, -1, "Measured seconds per load point.");
ABSL_FLAG(int64_t, requests, -1,
          "Measured requests per load point (0: duration only); the point "
          "ends at whichever bound comes first.");
ABSL_FLAG(double, warmup_seconds, -1, "Unmeasured warm-up per load point.");
ABSL_FLAG(int, max_in_flight, -1, "Open loop: outstanding-call cap.");
ABSL_FLAG(double, deadline_seconds, -1, "Per-call deadline.");
ABSL_FLAG(int64_t, seed, -1, "Seed of arrivals, scenario mix and prompts.");
ABSL_FLAG(std::string, question_file, "",
          "Questions, one per line or JSON lines (default: the file's, else "
          "load_tests/data/questions.txt next to the source tree).");
ABSL_FLAG(std::string, spec, "",
          "Without a scenario file: comma-separated specs, each a scheme "
          "name (bf16,int8,int4,...) or a YAML map as in scenario files "
          "('{scheme: int4, selection: {mode: knorm_topk, proportion: "
          "0.5}}'), crossed with --prompt_tokens.");
ABSL_FLAG(std::string, prompt_tokens, "",
          "Without a scenario file: comma-separated prompt lengths.");
ABSL_FLAG(std::string, out_dir, "",
          "Where report.json, report.csv and the plots go (default "
          "load-results/<name>-<UTC time>).");
ABSL_FLAG(bool, plots, true, "Draw PNG plots with gnuplot.");
ABSL_FLAG(bool, progress, true, "Live progress line on stderr.");
ABSL_FLAG(std::string, netns, "",
          "Comma-separated network namespaces (under /run/netns) whose "
          "addresses may be targeted besides loopback.");
ABSL_FLAG(bool, http_keep_alive, true,
          "openai_chat: reuse HTTP connections the server keeps open, as "
          "OpenAI clients do; false opens one per request (its TCP and TLS "
          "set-up then counts in every time to first token).");
ABSL_FLAG(bool, allow_remote_target, false,
          "Opt in to loading a target that is neither loopback nor in a "
          "--netns namespace (a real deployment). Off by default so that a "
          "mistyped address never floods someone else's host; CI never "
          "sets it.");
ABSL_FLAG(double, max_total_seconds, 3600,
          "Hard cap on the whole run (at most 7200).");
ABSL_FLAG(bool, fail_on_errors, false, "Exit 3 if any measured call failed.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM roots that verify the server (TLS; default: the system "
          "roots). TLS is the default for gRPC targets and https:// URLs.");
ABSL_FLAG(std::string, tls_cert, "", "Client certificate (mutual TLS).");
ABSL_FLAG(std::string, tls_key, "", "Client key (mutual TLS).");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name to verify the server certificate against (e.g. when "
          "dialling an IP address).");
ABSL_FLAG(bool, allow_insecure, false,
          "Plaintext: a gRPC channel without TLS (against --allow_insecure "
          "servers) or an http:// URL.");
ABSL_FLAG(std::string, auth_token_file, "",
          "File with the bearer token to send (the services' "
          "--auth_token_file); gRPC metadata or the HTTP Authorization "
          "header.");
ABSL_FLAG(std::string, auth_token, "",
          "The bearer token itself (prefer --auth_token_file: command lines "
          "are visible to other users).");

namespace kvwire {
namespace load {
namespace {

template <typename T>
absl::StatusOr<std::vector<T>> ParseList(const std::string& text,
                                         absl::string_view what) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    T value{};
    bool ok;
    if constexpr (std::is_same_v<T, double>) {
      ok = absl::SimpleAtod(part, &value);
    } else {
      ok = absl::SimpleAtoi(part, &value);
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad ", what, " value '", part, "'"));
    }
    out.push_back(value);
  }
  return out;
}

absl::StatusOr<LoadConfig> BuildConfig() {
  LoadConfig config;
  const std::string file = absl::GetFlag(FLAGS_scenario_file);
  if (!file.empty()) {
    auto loaded = LoadConfigFile(file);
    if (!loaded.ok()) return loaded.status();
    config = *std::move(loaded);
  } else {
    const std::vector<std::string> specs = SplitSpecList(
        absl::GetFlag(FLAGS_spec).empty() ? "int8" : absl::GetFlag(FLAGS_spec));
    auto lengths = ParseList<int>(absl::GetFlag(FLAGS_prompt_tokens).empty()
                                      ? "256"
                                      : absl::GetFlag(FLAGS_prompt_tokens),
                                  "--prompt_tokens");
    if (!lengths.ok()) return lengths.status();
    for (const std::string& name : specs) {
      auto spec = ParseSpecYaml(name);
      if (!spec.ok()) return spec.status();
      for (int tokens : *lengths) {
        Scenario s;
        s.spec_label = absl::StartsWith(name, "{") ? SpecLabel(*spec) : name;
        s.name = absl::StrCat(s.spec_label, "-", tokens);
        s.spec = *spec;
        s.prompt_tokens = tokens;
        config.scenarios.push_back(s);
      }
    }
  }
  if (!absl::GetFlag(FLAGS_target).empty()) {
    config.target = absl::GetFlag(FLAGS_target);
  }
  if (!absl::GetFlag(FLAGS_model).empty()) {
    config.model = absl::GetFlag(FLAGS_model);
  }
  if (!absl::GetFlag(FLAGS_rpc).empty()) {
    auto rpc = ParseRpcKind(absl::GetFlag(FLAGS_rpc));
    if (!rpc.ok()) return rpc.status();
    config.rpc = *rpc;
  }
  const std::string extension = absl::GetFlag(FLAGS_kvwire_extension);
  if (extension == "true") {
    config.kvwire_extension = true;
  } else if (extension == "false") {
    config.kvwire_extension = false;
  } else if (!extension.empty()) {
    return absl::InvalidArgumentError(
        "--kvwire_extension must be true or false");
  }
  if (config.rpc == RpcKind::kOpenAiChat && !config.kvwire_extension &&
      absl::GetFlag(FLAGS_spec).empty()) {
    // No transfer spec travels over the OpenAI API: name the scenarios by
    // prompt length alone.
    for (Scenario& s : config.scenarios) {
      s.spec_label = "chat";
      s.name = absl::StrCat("chat-", s.prompt_tokens);
    }
  }
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "open") {
    config.mode = LoopMode::kOpen;
  } else if (mode == "closed") {
    config.mode = LoopMode::kClosed;
  } else if (!mode.empty()) {
    return absl::InvalidArgumentError("--mode must be closed or open");
  }
  if (!absl::GetFlag(FLAGS_concurrency).empty()) {
    auto v = ParseList<int>(absl::GetFlag(FLAGS_concurrency), "--concurrency");
    if (!v.ok()) return v.status();
    config.concurrency = *v;
    if (mode.empty() && absl::GetFlag(FLAGS_rate).empty()) {
      config.mode = LoopMode::kClosed;
    }
  }
  if (!absl::GetFlag(FLAGS_rate).empty()) {
    auto v = ParseList<double>(absl::GetFlag(FLAGS_rate), "--rate");
    if (!v.ok()) return v.status();
    config.rates = *v;
    if (mode.empty()) config.mode = LoopMode::kOpen;
  }
  if (absl::GetFlag(FLAGS_duration_seconds) >= 0) {
    config.duration_seconds = absl::GetFlag(FLAGS_duration_seconds);
  }
  if (absl::GetFlag(FLAGS_requests) >= 0) {
    config.max_requests = absl::GetFlag(FLAGS_requests);
  }
  if (absl::GetFlag(FLAGS_warmup_seconds) >= 0) {
    config.warmup_seconds = absl::GetFlag(FLAGS_warmup_seconds);
  }
  if (absl::GetFlag(FLAGS_max_in_flight) >= 0) {
    config.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  }
  if (absl::GetFlag(FLAGS_deadline_seconds) >= 0) {
    config.deadline_seconds = absl::GetFlag(FLAGS_deadline_seconds);
  }
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    config.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  }
  if (!absl::GetFlag(FLAGS_question_file).empty()) {
    config.question_file = absl::GetFlag(FLAGS_question_file);
  }
  if (config.question_file.empty()) {
    config.question_file =
        std::string(KVWIRE_LOAD_SOURCE_DIR) + "/data/questions.txt";
  }
  if (absl::Status st = ValidateLoadConfig(config); !st.ok()) return st;
  return config;
}

// The client's TLS and token from the flags, with kvwire-cli's rules: TLS
// (system roots unless --tls_ca) unless plaintext is asked for, the token
// from --auth_token_file or --auth_token.
absl::StatusOr<ClientSecurityOptions> SecurityFromFlags() {
  ClientSecurityOptions security;
  security.tls_ca_path = absl::GetFlag(FLAGS_tls_ca);
  security.tls_cert_path = absl::GetFlag(FLAGS_tls_cert);
  security.tls_key_path = absl::GetFlag(FLAGS_tls_key);
  security.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  security.allow_insecure = absl::GetFlag(FLAGS_allow_insecure);
  security.use_tls = !security.allow_insecure;
  security.auth_token = absl::GetFlag(FLAGS_auth_token);
  if (!absl::GetFlag(FLAGS_auth_token_file).empty()) {
    if (!security.auth_token.empty()) {
      return absl::InvalidArgumentError(
          "give --auth_token_file or --auth_token, not both");
    }
    auto token = ReadSecretFile(absl::GetFlag(FLAGS_auth_token_file));
    if (!token.ok()) {
      return absl::Status(
          token.status().code(),
          absl::StrCat("--auth_token_file: ", token.status().message()));
    }
    security.auth_token = *token;
  }
  return security;
}

// The first model the server lists at GET /v1/models (beside the chat
// path: .../v1/chat/completions -> .../v1/models). Errors of
// HttpClient::Send, FirstModelId, or UNAVAILABLE for a non-2xx answer.
absl::StatusOr<std::string> DiscoverModel(const HttpClient& client,
                                          const HttpUrl& chat_url,
                                          const std::string& token) {
  HttpRequest request;
  request.method = "GET";
  request.url = chat_url;
  const size_t at = chat_url.path.rfind("/chat/completions");
  request.url.path = at == std::string::npos
                         ? "/v1/models"
                         : chat_url.path.substr(0, at) + "/models";
  if (!token.empty()) {
    request.headers.emplace_back("Authorization",
                                 absl::StrCat("Bearer ", token));
  }
  std::string body;
  auto head = client.Send(
      request, absl::Now() + absl::Seconds(30), nullptr,
      [&body](absl::string_view bytes) {
        if (body.size() < (1 << 20)) body.append(bytes.data(), bytes.size());
        return absl::OkStatus();
      },
      nullptr);
  if (!head.ok()) {
    return absl::Status(
        head.status().code(),
        absl::StrCat("GET ", request.url.path, ": ", head.status().message()));
  }
  if (head->status / 100 != 2) {
    return absl::UnavailableError(absl::StrCat("GET ", request.url.path,
                                               ": HTTP ", head->status, " ",
                                               ErrorMessageFromBody(body)));
  }
  return FirstModelId(body);
}

int Main() {
  auto config = BuildConfig();
  if (!config.ok()) {
    std::cerr << "kvwire-load: " << config.status().message() << "\n";
    return 1;
  }
  TargetPolicy policy;
  policy.allowed_netns =
      absl::StrSplit(absl::GetFlag(FLAGS_netns), ',', absl::SkipEmpty());
  policy.allow_remote = absl::GetFlag(FLAGS_allow_remote_target);
  const bool openai = config->rpc == RpcKind::kOpenAiChat;
  HttpUrl chat_url;
  if (openai) {
    auto url = ParseHttpUrl(config->target);
    if (!url.ok()) {
      std::cerr << "kvwire-load: " << url.status().message() << "\n";
      return 1;
    }
    chat_url = *url;
    if (chat_url.path == "/") chat_url.path = "/v1/chat/completions";
  }
  if (absl::Status st = CheckTargetAllowed(
          openai ? chat_url.HostPort() : config->target, policy);
      !st.ok()) {
    std::cerr << "kvwire-load: " << st.message() << "\n";
    return 1;
  }
  auto questions = LoadQuestions(config->question_file);
  if (!questions.ok()) {
    std::cerr << "kvwire-load: " << questions.status().message() << "\n";
    return 1;
  }
  auto security = SecurityFromFlags();
  if (!security.ok()) {
    std::cerr << "kvwire-load: " << security.status().message() << "\n";
    return 1;
  }
  RunnerOptions options;
  options.auth_token = security->auth_token;
  if (openai) {
    auto client = HttpClient::Create(*security, chat_url.https,
                                     absl::GetFlag(FLAGS_http_keep_alive));
    if (!client.ok()) {
      std::cerr << "kvwire-load: " << client.status().message() << "\n";
      return 1;
    }
    options.http_client = *std::move(client);
    options.chat_url = chat_url;
    if (config->model.empty()) {
      auto model =
          DiscoverModel(*options.http_client, chat_url, security->auth_token);
      if (!model.ok()) {
        std::cerr << "kvwire-load: no --model given and "
                  << model.status().message() << "\n";
        return 1;
      }
      config->model = *model;
      std::cerr << "kvwire-load: model " << config->model
                << " (from GET /v1/models)\n";
    }
  } else {
    ChannelOptions channel_options;
    // One connection, every call multiplexed on it (as a receiver does).
    channel_options.load_balancing_policy = "round_robin";
    channel_options.security = *security;
    auto channel = CreateKvwireChannel(config->target, channel_options);
    if (!channel.ok()) {
      std::cerr << "kvwire-load: " << channel.status().message() << "\n";
      return 1;
    }
    options.channel = *channel;
  }
  if (policy.allow_remote) {
    std::cerr << "kvwire-load: --allow_remote_target: loading "
              << config->target << " (" << DescribeSecurity(*security) << ")\n";
  }
  options.config = *config;
  options.questions = *std::move(questions);
  options.progress = absl::GetFlag(FLAGS_progress);
  options.max_total_seconds =
      std::min(7200.0, std::max(1.0, absl::GetFlag(FLAGS_max_total_seconds)));
  auto result = RunLoad(options);
  if (!result.ok()) {
    std::cerr << "kvwire-load: " << result.status() << "\n";
    return 1;
  }
  std::string out_dir = absl::GetFlag(FLAGS_out_dir);
  if (out_dir.empty()) {
    out_dir = absl::StrCat(
        "load-results/", config->name, "-",
        absl::FormatTime("%Y%m%dT%H%M%SZ", absl::Now(), absl::UTCTimeZone()));
  }
  std::cout << SummaryText(*config, *result);
  const absl::Status written =
      WriteReport(out_dir, *config, *result, absl::GetFlag(FLAGS_plots));
  if (!written.ok()) {
    std::cerr << "kvwire-load: " << written.message() << "\n";
    if (!absl::IsFailedPrecondition(written)) return 1;
  }
  std::cout << "report: " << out_dir << "/report.json\n";
  if (absl::GetFlag(FLAGS_fail_on_errors)) {
    for (const PointResult& p : result->points) {
      if (p.all.error_count() > 0) return 3;
    }
  }
  return 0;
}

}  // namespace
}  // namespace load
}  // namespace kvwire

int main(int argc, char** argv) {
  // OpenSSL writes to https connections with write(2): a server that closes
  // early must fail that call, not kill the generator with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  absl::SetProgramUsageMessage(
      "bounded load generator for kvwire-receiver (Answer, AnswerStream) "
      "and kvwire-sharer (Share).\n\nExamples:\n"
      "  kvwire-load --target=127.0.0.1:50051 --allow_insecure --rpc=share "
      "--spec=bf16,int8,int4 --prompt_tokens=512 --concurrency=1,2,4 "
      "--duration_seconds=10\n"
      "  kvwire-load --scenario_file=load_tests/scenarios/receiver_mix.yaml "
      "--target=127.0.0.1:50052 --allow_insecure --rate=2,4,8\n"
      "  kvwire-load --rpc=openai_chat --target=http://127.0.0.1:8080 "
      "--allow_insecure --model=kvwire --prompt_tokens=256 "
      "--concurrency=1,4\n"
      "  kvwire-load --scenario_file=load_tests/scenarios/openai_chat.yaml "
      "--target=https://kvwire.example.com --allow_remote_target "
      "--auth_token_file=token");
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "load_tests/main.cc");
  };
  absl::SetFlagsUsageConfig(usage_config);
  absl::ParseCommandLine(argc, argv);
  return kvwire::load::Main();
}
