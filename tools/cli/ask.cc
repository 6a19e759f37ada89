// kvwire-cli ask: a client of kvwire.v1.Receiver.
#include "tools/cli/ask.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/client_context.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/codec/scheme.h"
#include "common/protocol/answer_validation.h"
#include "common/service/grpc_status.h"
#include "common/service/security.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

std::string Thousands(uint64_t v) {
  std::string digits = absl::StrCat(v);
  std::string out;
  const int n = static_cast<int>(digits.size());
  for (int i = 0; i < n; ++i) {
    if (i > 0 && (n - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string Ms(double seconds) {
  return absl::StrFormat("%.1f", seconds * 1e3);
}

std::string OneLine(std::string text, size_t max_chars) {
  text = absl::StrReplaceAll(text, {{"\n", " "}, {"\r", " "}, {"\t", " "}});
  if (text.size() <= max_chars) return text;
  size_t cut = max_chars - 3;
  // Do not split a UTF-8 character.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  return text.substr(0, cut) + "...";
}

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(m, &out, options).ok()) {
    return "{}";
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> FormatQuestion(
    const std::string& question, const std::vector<std::string>& choices) {
  if (absl::StripAsciiWhitespace(question).empty()) {
    return absl::InvalidArgumentError("--question is empty");
  }
  if (choices.empty()) return question;
  if (choices.size() > 26) {
    return absl::InvalidArgumentError("at most 26 choices");
  }
  std::string out = absl::StrCat(question, "\n");
  for (size_t i = 0; i < choices.size(); ++i) {
    absl::StrAppend(&out, "\n", std::string(1, static_cast<char>('A' + i)),
                    ". ", choices[i]);
  }
  absl::StrAppend(&out,
                  "\n\nAnswer with the letter of the correct option only.");
  return out;
}

absl::Status ApplySpecShorthand(absl::string_view shorthand,
                                v1::AnswerRequest* request) {
  const std::string s =
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(shorthand));
  if (s == "receiver-only" || s == "receiver_only") {
    request->set_mode(v1::ANSWER_MODE_RECEIVER_ONLY);
    return absl::OkStatus();
  }
  request->set_mode(v1::ANSWER_MODE_C2C);
  const std::vector<std::string> at = absl::StrSplit(s, '@');
  if (at.size() > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad spec '", shorthand, "' (SCHEME[@P[:MODE]])"));
  }
  auto scheme = ParseScheme(at[0]);
  if (!scheme.ok()) return scheme.status();
  v1::TransferSpec* spec = request->mutable_spec();
  spec->set_scheme(*scheme);
  if (at.size() == 2) {
    const std::vector<std::string> parts = absl::StrSplit(at[1], ':');
    double p = 0;
    if (parts.size() > 2 || !absl::SimpleAtod(parts[0], &p) || p <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad proportion in '", shorthand, "' (SCHEME@P[:MODE], P > 0)"));
    }
    v1::SelectionMode mode = v1::SELECTION_BACK;
    if (parts.size() == 2) {
      if (parts[1] == "receiver") {
        mode = v1::SELECTION_EXPLICIT;  // Receiver-guided.
      } else {
        auto m = ParseSelectionMode(parts[1]);
        if (!m.ok()) return m.status();
        mode = *m;
      }
    }
    spec->mutable_selection()->set_mode(mode);
    spec->mutable_selection()->set_proportion(p);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::AnswerResponse> Ask(const AskOptions& options,
                                       const v1::AnswerRequest& request) {
  auto channel = CreateKvwireChannel(options.target, options.channel);
  if (!channel.ok()) return channel.status();
  auto stub = v1::Receiver::NewStub(*channel);
  grpc::ClientContext context;
  context.set_deadline(
      absl::ToChronoTime(absl::Now() + absl::Seconds(options.timeout_seconds)));
  AttachBearerToken(&context, options.channel.security.auth_token);
  if (!options.stream) {
    v1::AnswerResponse response;
    const grpc::Status st = stub->Answer(&context, request, &response);
    if (!st.ok()) return FromGrpcStatus(st);
    return response;
  }
  auto reader = stub->AnswerStream(&context, request);
  v1::AnswerEvent event;
  v1::AnswerResponse response;
  bool streamed = false;
  while (reader->Read(&event)) {
    if (event.has_token()) {
      std::cout << event.token().text() << std::flush;
      streamed = true;
    } else if (event.has_final()) {
      response = event.final();
    }
  }
  if (streamed) std::cout << "\n\n";
  const grpc::Status st = reader->Finish();
  if (!st.ok()) return FromGrpcStatus(st);
  return response;
}

std::string FormatAnswer(const v1::AnswerResponse& r) {
  std::string out = absl::StrCat(
      "Answer (", AnswerModeName(r.mode()), ", ", r.token_ids_size(),
      " tokens):\n  ", absl::StrReplaceAll(r.text(), {{"\n", "\n  "}}), "\n");
  if (r.fell_back()) {
    absl::StrAppend(&out, "\nFELL BACK to receiver-only: ", r.fallback_reason(),
                    "\n");
  }
  const v1::TransferReport& t = r.transfer();
  if (r.mode() == v1::ANSWER_MODE_TEXT_TO_TEXT) {
    absl::StrAppend(
        &out, "\nSharer's background (", r.background_token_ids_size(),
        " tokens, ", Thousands(t.serialized_bytes()), " bytes serialized, ",
        Thousands(t.wire_bytes()), " on the wire):\n  ",
        absl::StrReplaceAll(r.background_text(), {{"\n", "\n  "}}), "\n");
  } else if (r.mode() == v1::ANSWER_MODE_SHARER_ONLY) {
    absl::StrAppend(&out,
                    "\nSharer's answer: ", Thousands(t.serialized_bytes()),
                    " bytes serialized (GenerateResponse), ",
                    Thousands(t.wire_bytes()), " on the wire\n");
  } else if (t.serialized_bytes() > 0) {
    absl::StrAppend(&out, "\nTransfer: ", DescribeTransferSpec(t.spec()), "\n");
    auto row = [&](const std::string& name, const std::string& value,
                   const std::string& note = "") {
      std::string line = absl::StrFormat("  %-22s %14s  %s", name, value, note);
      absl::StrAppend(&out, absl::StripTrailingAsciiWhitespace(line), "\n");
    };
    row("prompt tokens", Thousands(t.prompt_tokens()));
    row("tokens sent", Thousands(t.tokens_sent()),
        absl::StrCat("over ", t.layers_sent(), " layers"));
    row("raw KV (16-bit)", Thousands(t.raw_kv_bytes()), "bytes");
    row("payload", Thousands(t.payload_bytes()), "bytes");
    row("scales", Thousands(t.scale_bytes()), "bytes");
    row("token indices", Thousands(t.index_bytes()), "bytes");
    row("headers, framing", Thousands(t.header_bytes()), "bytes (+ trailer)");
    row("serialized", Thousands(t.serialized_bytes()),
        t.raw_kv_bytes() > 0
            ? absl::StrFormat("bytes (%.2fx smaller than raw)",
                              static_cast<double>(t.raw_kv_bytes()) /
                                  static_cast<double>(t.serialized_bytes()))
            : "bytes (received before the failure)");
    row("on the wire", Thousands(t.wire_bytes()),
        "bytes (+ 5-byte gRPC prefix per message)");
  }
  const v1::StageTimings& s = r.timings();
  absl::StrAppend(&out, "\nStage times (ms):\n");
  auto stage = [&](const std::string& name, double seconds) {
    absl::StrAppendFormat(&out, "  %-22s %10s\n", name, Ms(seconds));
  };
  stage("sharer compute", s.sharer_compute_seconds());
  if (r.mode() == v1::ANSWER_MODE_TEXT_TO_TEXT ||
      r.mode() == v1::ANSWER_MODE_SHARER_ONLY) {
    stage("sharer Generate call", s.sharer_generation_seconds());
  }
  stage("encode", s.encode_seconds());
  stage("transfer", s.transfer_seconds());
  stage("decode", s.decode_seconds());
  stage("fuse", s.fuse_seconds());
  stage("receiver prefill", s.receiver_prefill_seconds());
  stage("time to first token", s.time_to_first_token_seconds());
  stage("generation", s.generation_seconds());
  stage("total", s.total_seconds());
  return out;
}

std::string FormatComparison(const std::vector<AskResult>& results) {
  uint64_t bf16_raw = 0;
  for (const AskResult& r : results) {
    bf16_raw =
        std::max<uint64_t>(bf16_raw, r.response.transfer().raw_kv_bytes());
  }
  std::string out =
      absl::StrFormat("%-22s %-13s %7s %11s %11s %7s %9s %9s %9s  %s\n", "spec",
                      "mode", "tokens", "serialized", "wire", "vs raw",
                      "ttft ms", "total ms", "fell back", "answer");
  for (const AskResult& r : results) {
    const v1::TransferReport& t = r.response.transfer();
    const v1::StageTimings& s = r.response.timings();
    const bool sent = t.raw_kv_bytes() > 0;
    absl::StrAppendFormat(
        &out, "%-22s %-13s %7s %11s %11s %7s %9s %9s %9s  %s\n", r.label,
        AnswerModeName(r.response.mode()),
        sent ? Thousands(t.tokens_sent()) : "-",
        sent ? Thousands(t.serialized_bytes()) : "-",
        sent ? Thousands(t.wire_bytes()) : "-",
        sent && t.wire_bytes() > 0
            ? absl::StrFormat("%.2fx", static_cast<double>(bf16_raw) /
                                           static_cast<double>(t.wire_bytes()))
            : "-",
        Ms(s.time_to_first_token_seconds()), Ms(s.total_seconds()),
        r.response.fell_back() ? "YES" : "no", OneLine(r.response.text(), 40));
  }
  absl::StrAppend(&out,
                  "\ntokens: prompt tokens sent, summed over sent layers; "
                  "vs raw: the 16-bit KV of all layers and tokens / wire "
                  "bytes.\n");
  for (const AskResult& r : results) {
    if (r.response.fell_back()) {
      absl::StrAppend(&out, r.label,
                      " fell back: ", r.response.fallback_reason(), "\n");
    }
  }
  return out;
}

std::string ChromeTraceJson(const v1::AnswerResponse& response) {
  nlohmann::json events = nlohmann::json::array();
  std::map<std::string, int> tids;
  for (const v1::TraceEvent& e : response.trace()) {
    auto [it, added] =
        tids.emplace(e.track(), static_cast<int>(tids.size()) + 1);
    if (added) {
      events.push_back({{"name", "thread_name"},
                        {"ph", "M"},
                        {"pid", 1},
                        {"tid", it->second},
                        {"args", {{"name", e.track()}}}});
    }
    events.push_back({{"name", e.name()},
                      {"cat", e.track()},
                      {"ph", "X"},
                      {"pid", 1},
                      {"tid", it->second},
                      {"ts", e.start_seconds() * 1e6},
                      {"dur", (e.end_seconds() - e.start_seconds()) * 1e6}});
  }
  nlohmann::json trace = {
      {"traceEvents", events},
      {"displayTimeUnit", "ms"},
      {"otherData",
       {{"request_id", response.request_id()},
        {"total_seconds", response.timings().total_seconds()}}}};
  return trace.dump(1);
}

std::string FormatTrace(const v1::AnswerResponse& response) {
  std::vector<const v1::TraceEvent*> events;
  for (const v1::TraceEvent& e : response.trace()) events.push_back(&e);
  std::stable_sort(events.begin(), events.end(),
                   [](const v1::TraceEvent* a, const v1::TraceEvent* b) {
                     return a->start_seconds() < b->start_seconds();
                   });
  std::string out = "\nTimeline (ms since the receiver got the request):\n";
  for (const v1::TraceEvent* e : events) {
    absl::StrAppendFormat(&out, "  %9.3f %9.3f  %-16s %s\n",
                          e->start_seconds() * 1e3, e->end_seconds() * 1e3,
                          e->track(), e->name());
  }
  return out;
}

std::string AnswerJson(const v1::AnswerResponse& response) {
  return ToJson(response);
}

std::string ComparisonJson(const std::vector<AskResult>& results) {
  std::string out = "[\n";
  for (size_t i = 0; i < results.size(); ++i) {
    absl::StrAppend(&out, "{\"label\": \"", results[i].label,
                    "\", \"response\": ", ToJson(results[i].response), "}",
                    i + 1 < results.size() ? ",\n" : "\n");
  }
  absl::StrAppend(&out, "]");
  return out;
}

}  // namespace kvwire
