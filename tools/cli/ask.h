// `kvwire-cli ask`: asks a question (or a multiple-choice item) through a
// running kvwire-receiver with a chosen transfer spec and prints the answer
// with a table of bytes and stage times (or JSON). With several specs it
// asks once per spec and prints one comparison table. Torch-free.
#ifndef KVWIRE_TOOLS_CLI_ASK_H_
#define KVWIRE_TOOLS_CLI_ASK_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/service/channel.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// The question, or a multiple-choice item: the question, then one line per
// choice ("A. ...", "B. ..."), then an instruction to answer with the
// letter. INVALID_ARGUMENT for an empty question or more than 26 choices.
absl::StatusOr<std::string> FormatQuestion(
    const std::string& question, const std::vector<std::string>& choices);

// One entry of a comparison: "receiver-only", or
// SCHEME[@PROPORTION[:MODE]] ("bf16", "int4@0.5", "int4@0.5:knorm_topk";
// MODE defaults to back), applied on top of `base` (its granularity,
// zstd, layers, ...). Sets the request's mode and spec.
absl::Status ApplySpecShorthand(absl::string_view shorthand,
                                v1::AnswerRequest* request);

struct AskOptions {
  std::string target = "127.0.0.1:50052";
  ChannelOptions channel;  // Security (TLS, token, plaintext).
  double timeout_seconds = 120;
  // AnswerStream: print tokens as they arrive (single question only).
  bool stream = false;
  bool json = false;
};

struct AskResult {
  std::string label;  // The spec shorthand, or "" for a single ask.
  v1::AnswerRequest request;
  v1::AnswerResponse response;
};

// Asks `request` once. Streaming prints each token's text to stdout as it
// arrives. The receiver's status on failure.
absl::StatusOr<v1::AnswerResponse> Ask(const AskOptions& options,
                                       const v1::AnswerRequest& request);

// Human-readable answer, bytes and stage-time tables of one response.
std::string FormatAnswer(const v1::AnswerResponse& response);
// One row per result: spec, mode, tokens sent, bytes, compression, times,
// fallback and the start of the answer.
std::string FormatComparison(const std::vector<AskResult>& results);
// JSON: one response object, or an array of {label, response} for several.
std::string AnswerJson(const v1::AnswerResponse& response);
std::string ComparisonJson(const std::vector<AskResult>& results);

// The response's timeline (AnswerResponse.trace) as Chrome trace JSON: one
// complete event per interval, one thread per track; times in microseconds
// since the receiver got the request.
std::string ChromeTraceJson(const v1::AnswerResponse& response);
// The same as a text table, in start order.
std::string FormatTrace(const v1::AnswerResponse& response);

// `kvwire-cli ask`: reads the ask flags (ask_command.cc), asks, prints
// (`json`: JSON). Returns the process exit code (2 for bad flags).
int RunAskCommand(bool json);

}  // namespace kvwire

#endif  // KVWIRE_TOOLS_CLI_ASK_H_
