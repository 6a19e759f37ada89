// What a kvwire-load run does: the target RPC, closed or open loop, the
// load points to sweep, time and count bounds, and the weighted scenarios
// (transfer spec x prompt length) whose requests are mixed at every load
// point, with prompts drawn from a question file. Read from a YAML scenario
// file (load_tests/scenarios/*.yaml documents the format) and overridden by
// flags.
#ifndef KVWIRE_LOAD_TESTS_SCENARIO_H_
#define KVWIRE_LOAD_TESTS_SCENARIO_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {
namespace load {

// Which RPC the generator calls.
enum class RpcKind {
  kShare,         // kvwire.v1.Sharer/Share (transfer only).
  kAnswer,        // kvwire.v1.Receiver/Answer (unary).
  kAnswerStream,  // kvwire.v1.Receiver/AnswerStream (TTFT measured here).
  // POST /v1/chat/completions with "stream": true (OpenAI wire format, SSE;
  // TTFT and inter-token latency measured from the chunks). The target is
  // an http:// or https:// URL; transfer specs are not sent.
  kOpenAiChat,
};
absl::StatusOr<RpcKind> ParseRpcKind(absl::string_view name);
// "share", "answer", "answer_stream", "openai_chat".
std::string RpcKindName(RpcKind rpc);

enum class LoopMode { kClosed, kOpen };

// Hard limits, whatever the file or flags say: a run always ends by itself.
inline constexpr int kMaxConcurrency = 512;
inline constexpr double kMaxRate = 5000;          // Requests per second.
inline constexpr double kMaxPointSeconds = 1800;  // Per load point.
inline constexpr double kMaxWarmupSeconds = 300;
inline constexpr int64_t kMaxRequestsPerPoint = 1000000;
inline constexpr int kMaxLoadPoints = 32;
inline constexpr int kMaxPromptTokens = 32768;
inline constexpr int kMaxInFlight = 4096;

struct Scenario {
  std::string name;
  double weight = 1;
  // The spec as written (short label for reports) and as sent.
  std::string spec_label;
  v1::TransferSpec spec;
  int prompt_tokens = 256;
  // Receiver RPCs only.
  v1::AnswerMode answer_mode = v1::ANSWER_MODE_C2C;
  uint32_t max_new_tokens = 16;
};

struct LoadConfig {
  std::string name = "kvwire-load";
  // "host:port" (or "ipv4:a:p,b:p"); for openai_chat an http(s):// URL,
  // whose path defaults to /v1/chat/completions.
  std::string target;
  // openai_chat: the request's "model" ("": the first of GET /v1/models).
  std::string model;
  // openai_chat: send each scenario's transfer spec and answer mode in
  // kvwire-receiver's "kvwire" request extension (off for other
  // OpenAI-compatible servers, which refuse unknown fields).
  bool kvwire_extension = true;
  RpcKind rpc = RpcKind::kShare;
  LoopMode mode = LoopMode::kClosed;
  std::vector<int> concurrency = {1};  // Closed loop: one point per value.
  std::vector<double> rates;           // Open loop: one point per value.
  bool uniform_arrivals = false;       // Open loop: fixed gaps, not Poisson.
  double warmup_seconds = 1;           // Before each load point, unmeasured.
  double duration_seconds = 10;        // Per load point.
  int64_t max_requests = 0;            // Per load point; 0: duration only.
  int max_in_flight = 256;             // Open loop: outstanding cap.
  double deadline_seconds = 60;        // Per request.
  uint64_t seed = 1;
  std::string question_file;
  double chars_per_token = 4;  // Receiver prompts: text length per token.
  std::vector<Scenario> scenarios;
};

// Parses a scenario file. INVALID_ARGUMENT with the offending key for
// malformed YAML, unknown keys, bad values or values beyond the hard
// limits. A spec is either a scheme name ("int8") or a map in the
// TransferSpec's field names where enum values may be given by their short
// names ({scheme: int4, granularity: per_group, group_size: 32,
// selection: {mode: knorm_topk, proportion: 0.5}}).
absl::StatusOr<LoadConfig> ParseLoadConfigYaml(absl::string_view yaml_text);
absl::StatusOr<LoadConfig> LoadConfigFile(const std::string& path);

// Parses one transfer spec in the scenario-file syntax (YAML text).
absl::StatusOr<v1::TransferSpec> ParseSpecYaml(absl::string_view yaml_text);

// A short label for a spec: "int4", "int4/per_group@0.5+zstd", ...
std::string SpecLabel(const v1::TransferSpec& spec);

// Splits "bf16,int8,{scheme: int4, selection: {proportion: 0.5}}" at the
// commas outside braces and brackets.
std::vector<std::string> SplitSpecList(absl::string_view text);

// Checks the limits above and internal consistency.
absl::Status ValidateLoadConfig(const LoadConfig& config);

// Questions, one per line, or JSON lines with a "question" string (or
// question.stem / question_stem, as the eval data sets). Blank lines and
// lines starting with '#' are skipped. INVALID_ARGUMENT if none.
absl::StatusOr<std::vector<std::string>> LoadQuestions(const std::string& path);
std::vector<std::string> ParseQuestions(absl::string_view text);

// Builds prompts from the question pool, deterministically for a seed.
class PromptSource {
 public:
  PromptSource(std::vector<std::string> questions, uint64_t seed);

  // Exactly `tokens` token ids below `vocab_size` for Share: the bytes of
  // randomly drawn questions (separated by newlines), one id per byte
  // modulo the vocabulary (a byte-level stand-in for a tokenizer; the
  // sharer only needs valid ids of the right count).
  std::vector<uint32_t> TokenIds(int tokens, uint32_t vocab_size);

  // A question for Answer whose text is about tokens * chars_per_token
  // characters: context lines drawn from the pool, then the question.
  std::string Question(int tokens, double chars_per_token);

 private:
  const std::string& Draw();
  std::vector<std::string> questions_;
  std::mt19937_64 rng_;
};

}  // namespace load
}  // namespace kvwire

#endif  // KVWIRE_LOAD_TESTS_SCENARIO_H_
