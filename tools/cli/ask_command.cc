// `kvwire-cli ask`: its flags and the command (a kvwire.v1.Receiver
// client; no Torch). Linked only where the services are built.
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/codec/scheme.h"
#include "common/file_util.h"
#include "common/protocol/answer_validation.h"
#include "common/service/security.h"
#include "tools/cli/ask.h"

// ask.
ABSL_FLAG(std::string, target, "127.0.0.1:50052",
          "ask: the receiver (host:port, dns:///host:port, ipv4:...)");
ABSL_FLAG(std::string, question, "", "ask: the question");
ABSL_FLAG(std::string, choices, "",
          "ask: multiple-choice options separated by '|' (labelled A, B, ...)");
ABSL_FLAG(std::string, system, "", "ask: an optional system message");
ABSL_FLAG(std::string, mode, "c2c",
          "ask: c2c, receiver-only, text-to-text, sharer-only");
ABSL_FLAG(std::string, scheme, "int8",
          "ask: bf16, fp16, fp8_e4m3, fp8_e5m2, int8, int4, int2, nf4");
ABSL_FLAG(std::string, granularity, "head",
          "ask: layer, head, token, channel, group, kivi");
ABSL_FLAG(int, group_size, 0, "ask: values per group (granularity=group)");
ABSL_FLAG(bool, asymmetric, false, "ask: INT schemes with a zero point");
ABSL_FLAG(std::string, selection, "all",
          "ask: token selection: all, front, back, random, knorm_topk, "
          "vnorm_topk, or receiver (receiver-guided: the receiver scores the "
          "prompt from its own cache)");
ABSL_FLAG(double, proportion, 0, "ask: fraction of prompt tokens to send");
ABSL_FLAG(int, min_tokens, 0, "ask: send at least this many tokens");
ABSL_FLAG(uint64_t, selection_seed, 0, "ask: seed of selection=random");
ABSL_FLAG(bool, shared_selection, false,
          "ask: norm selections shared across layers (one index list)");
ABSL_FLAG(std::string, sharer_layers, "",
          "ask: comma-separated sharer layers to send (default: all)");
ABSL_FLAG(int, zstd, -1,
          "ask: zstd level over each block's values (-1: off, 0: default)");
ABSL_FLAG(uint64_t, budget_bytes, 0,
          "ask: max_payload_bytes, a bound on the whole stream (0: none)");
ABSL_FLAG(bool, budget_mixed, false,
          "ask: the budget planner may mix precisions per layer");
ABSL_FLAG(int, chunk_size_bytes, 0, "ask: largest KvChunk (0: 1 MiB)");
ABSL_FLAG(int, max_new_tokens, 64, "ask: tokens to generate");
ABSL_FLAG(double, temperature, 0, "ask: sampling temperature (0: greedy)");
ABSL_FLAG(int, top_k, 0, "ask: top-k sampling (0: off)");
ABSL_FLAG(double, top_p, 0, "ask: top-p sampling (0: off)");
ABSL_FLAG(uint64_t, sample_seed, 0, "ask: sampling seed");
ABSL_FLAG(std::string, fallback, "server",
          "ask: when the sharer path fails: receiver-only, fail, or server "
          "(the receiver's default)");
ABSL_FLAG(std::string, compare, "",
          "ask: ask once per comma-separated spec and print one table: "
          "receiver-only or SCHEME[@PROPORTION[:MODE]] (e.g. "
          "receiver-only,bf16,int8,int4,int4@0.5); other spec flags apply "
          "to each");
ABSL_FLAG(bool, stream, false, "ask: print tokens as they are generated");
ABSL_FLAG(std::string, trace_out, "",
          "ask: ask for the request's timeline and write it to this file as "
          "a Chrome trace (chrome://tracing, ui.perfetto.dev); also printed");
ABSL_FLAG(std::string, request_id, "kvwire-cli", "ask: request id");
ABSL_FLAG(double, timeout_seconds, 300, "ask: deadline of each call");
ABSL_FLAG(std::string, tls_ca, "", "ask: PEM roots that verify the receiver");
ABSL_FLAG(std::string, tls_cert, "", "ask: PEM client certificate (mTLS)");
ABSL_FLAG(std::string, tls_key, "", "ask: PEM key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "ask: name the receiver's certificate is checked against");
ABSL_FLAG(bool, plaintext, false,
          "ask: talk plaintext to the receiver (no TLS configured)");
ABSL_FLAG(std::string, auth_token_file, "", "ask: file with the bearer token");
ABSL_FLAG(std::string, auth_token, "",
          "ask: the bearer token (prefer --auth_token_file)");

namespace kvwire {
namespace {

int Fail(const absl::Status& status) {
  std::cerr << "kvwire-cli ask: " << status << "\n";
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

absl::Status BuildRequest(v1::AnswerRequest* request) {
  std::vector<std::string> choices;
  if (!absl::GetFlag(FLAGS_choices).empty()) {
    choices = absl::StrSplit(absl::GetFlag(FLAGS_choices), '|');
  }
  auto question = FormatQuestion(absl::GetFlag(FLAGS_question), choices);
  if (!question.ok()) return question.status();
  request->set_request_id(absl::GetFlag(FLAGS_request_id));
  if (absl::GetFlag(FLAGS_system).empty()) {
    request->set_question(*question);
  } else {
    v1::ChatMessage* system = request->add_messages();
    system->set_role("system");
    system->set_content(absl::GetFlag(FLAGS_system));
    v1::ChatMessage* user = request->add_messages();
    user->set_role("user");
    user->set_content(*question);
  }
  v1::AnswerMode mode;
  if (auto st = ParseAnswerMode(absl::GetFlag(FLAGS_mode), &mode); !st.ok()) {
    return st;
  }
  request->set_mode(mode);
  v1::FallbackPolicy policy;
  if (auto st = ParseFallbackPolicy(absl::GetFlag(FLAGS_fallback), &policy);
      !st.ok()) {
    return st;
  }
  request->set_fallback(policy);
  v1::TransferSpec* spec = request->mutable_spec();
  auto scheme = ParseScheme(absl::GetFlag(FLAGS_scheme));
  if (!scheme.ok()) return scheme.status();
  spec->set_scheme(*scheme);
  auto granularity = ParseGranularity(absl::GetFlag(FLAGS_granularity));
  if (!granularity.ok()) return granularity.status();
  spec->set_granularity(*granularity);
  spec->set_group_size(absl::GetFlag(FLAGS_group_size));
  spec->set_asymmetric(absl::GetFlag(FLAGS_asymmetric));
  const std::string selection = absl::GetFlag(FLAGS_selection);
  if (selection == "receiver") {
    spec->mutable_selection()->set_mode(v1::SELECTION_EXPLICIT);
  } else {
    auto m = ParseSelectionMode(selection);
    if (!m.ok()) return m.status();
    spec->mutable_selection()->set_mode(*m);
  }
  spec->mutable_selection()->set_proportion(absl::GetFlag(FLAGS_proportion));
  spec->mutable_selection()->set_min_tokens(absl::GetFlag(FLAGS_min_tokens));
  spec->mutable_selection()->set_seed(absl::GetFlag(FLAGS_selection_seed));
  spec->mutable_selection()->set_shared_across_layers(
      absl::GetFlag(FLAGS_shared_selection));
  for (absl::string_view l : absl::StrSplit(absl::GetFlag(FLAGS_sharer_layers),
                                            ',', absl::SkipWhitespace())) {
    uint32_t layer = 0;
    if (!absl::SimpleAtoi(l, &layer)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--sharer_layers: '", l, "' is not a layer number"));
    }
    spec->add_layers(layer);
  }
  if (absl::GetFlag(FLAGS_zstd) >= 0) {
    spec->mutable_entropy()->set_coder(v1::ENTROPY_CODER_ZSTD);
    spec->mutable_entropy()->set_level(absl::GetFlag(FLAGS_zstd));
  }
  spec->set_max_payload_bytes(absl::GetFlag(FLAGS_budget_bytes));
  spec->set_budget_allow_mixed_precision(absl::GetFlag(FLAGS_budget_mixed));
  spec->set_chunk_size_bytes(absl::GetFlag(FLAGS_chunk_size_bytes));
  v1::GenerationParams* g = request->mutable_generation();
  if (absl::GetFlag(FLAGS_max_new_tokens) <= 0) {
    return absl::InvalidArgumentError("--max_new_tokens must be positive");
  }
  g->set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  g->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  g->set_top_k(absl::GetFlag(FLAGS_top_k));
  g->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  g->set_seed(absl::GetFlag(FLAGS_sample_seed));
  return absl::OkStatus();
}

}  // namespace

int RunAskCommand(bool json) {
  AskOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  options.timeout_seconds = absl::GetFlag(FLAGS_timeout_seconds);
  options.stream = absl::GetFlag(FLAGS_stream) && !json;
  options.json = json;
  ClientSecurityOptions& security = options.channel.security;
  security.tls_ca_path = absl::GetFlag(FLAGS_tls_ca);
  security.tls_cert_path = absl::GetFlag(FLAGS_tls_cert);
  security.tls_key_path = absl::GetFlag(FLAGS_tls_key);
  security.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  security.allow_insecure = absl::GetFlag(FLAGS_plaintext);
  security.use_tls = !security.allow_insecure;
  security.auth_token = absl::GetFlag(FLAGS_auth_token);
  if (!absl::GetFlag(FLAGS_auth_token_file).empty()) {
    auto token = ReadSecretFile(absl::GetFlag(FLAGS_auth_token_file));
    if (!token.ok()) return Fail(token.status());
    security.auth_token = *token;
  }
  v1::AnswerRequest base;
  if (auto st = BuildRequest(&base); !st.ok()) return Fail(st);

  const std::string compare = absl::GetFlag(FLAGS_compare);
  const std::string trace_out = absl::GetFlag(FLAGS_trace_out);
  if (!trace_out.empty()) base.set_trace(true);
  if (compare.empty()) {
    auto response = Ask(options, base);
    if (!response.ok()) return Fail(response.status());
    std::cout << (options.json ? AnswerJson(*response)
                               : FormatAnswer(*response))
              << std::endl;
    if (!trace_out.empty()) {
      if (auto st = WriteStringToFile(trace_out, ChromeTraceJson(*response));
          !st.ok()) {
        return Fail(st);
      }
      if (!options.json) std::cout << FormatTrace(*response);
      std::cerr << "wrote " << trace_out << std::endl;
    }
    return 0;
  }
  if (!trace_out.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--trace_out takes a single question, not --compare"));
  }
  options.stream = false;
  std::vector<AskResult> results;
  for (absl::string_view label :
       absl::StrSplit(compare, ',', absl::SkipWhitespace())) {
    AskResult r;
    r.label = std::string(label);
    r.request = base;
    if (auto st = ApplySpecShorthand(label, &r.request); !st.ok()) {
      return Fail(st);
    }
    r.request.set_request_id(
        absl::StrCat(absl::GetFlag(FLAGS_request_id), "-", label));
    auto response = Ask(options, r.request);
    if (!response.ok()) {
      return Fail(
          absl::Status(response.status().code(),
                       absl::StrCat(label, ": ", response.status().message())));
    }
    r.response = *std::move(response);
    if (!options.json) {
      std::cerr << "asked " << label << ": "
                << r.response.transfer().wire_bytes() << " bytes on the wire"
                << std::endl;
    }
    results.push_back(std::move(r));
  }
  std::cout << (options.json ? ComparisonJson(results)
                             : FormatComparison(results))
            << std::endl;
  return 0;
}

}  // namespace kvwire
