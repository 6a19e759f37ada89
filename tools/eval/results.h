// What a run writes: one JSON line per question (predictions.jsonl) and a
// summary (summary.json), plus the statistics behind it (Wilson interval).
#ifndef KVWIRE_TOOLS_EVAL_RESULTS_H_
#define KVWIRE_TOOLS_EVAL_RESULTS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace eval {

// Per-stage seconds of one answer (StageTimings plus what the eval adds).
struct RecordTimings {
  double sharer_compute = 0;  // Sharer prefill (+ text-to-text generation).
  double selection = 0;       // In-process selection scoring.
  double encode = 0;
  double transfer = 0;
  double decode = 0;
  double fuse = 0;
  double receiver_prefill = 0;
  double time_to_first_token = 0;
  double generation = 0;
  double total = 0;  // As the backend measured it.
  double wall = 0;   // Around the backend call, as kvwire-eval saw it.
};

// One line of predictions.jsonl.
struct QuestionRecord {
  std::string question_id;
  int index = 0;  // Position among the dataset's scored items.
  std::string gold;
  std::string prediction;  // "" when nothing was extracted.
  int extraction_stage = 0;
  bool correct = false;
  int64_t prompt_tokens = -1;  // What the answering model read.
  int64_t output_tokens = 0;
  std::string raw_output;
  // C2C: the KV stream (TransferReport). wire_bytes: serialized KvChunks +
  // gRPC message framing.
  uint64_t wire_bytes = 0;
  uint64_t serialized_bytes = 0;
  uint64_t payload_bytes = 0;
  uint64_t scale_bytes = 0;
  uint64_t index_bytes = 0;
  uint64_t header_bytes = 0;
  uint64_t raw_kv_bytes = 0;
  uint64_t chunks = 0;
  uint32_t tokens_sent = 0;  // Summed over sent layers.
  uint32_t layers_sent = 0;
  uint32_t transfer_prompt_tokens = 0;  // T the cache covered.
  // Text-to-text: the sharer's message.
  uint64_t text_bytes = 0;
  std::string background_text;
  bool fell_back = false;
  std::string fallback_reason;
  RecordTimings timings;
};

// Keys in a fixed, readable order (ids and scores first, texts last).
nlohmann::ordered_json RecordToJson(const QuestionRecord& record);
absl::StatusOr<QuestionRecord> RecordFromJson(const nlohmann::json& j);

// The bytes a run's point sits at on the budget curve: the KV stream's wire
// bytes for C2C, the text message for text-to-text, 0 for the baselines.
uint64_t PlottedBytes(absl::string_view method, const QuestionRecord& record);

struct Interval {
  double low = 0;
  double high = 1;
};

// Wilson score interval for `successes` of `n` (z = 1.96: 95%). n = 0 gives
// [0, 1].
Interval WilsonInterval(int64_t successes, int64_t n,
                        double z = 1.959963984540054);

// The run settings a summary carries (for the budget curve).
struct RunInfo {
  std::string dataset;
  std::string run_id;
  std::string method;
  std::string series;
  std::string anchor_id;
  std::string scheme;
  std::string granularity;
  std::string selection;
  double proportion = 1.0;
  uint32_t min_tokens = 0;
  std::string schedule;
  int zstd_level = 0;
  uint64_t budget_bytes = 0;
  nlohmann::json transfer_spec;  // As resolved, proto JSON.
  // The run's model pair (grid `sharer` / `token_alignment` /
  // `alignment_strategy`); empty: the backend's own.
  std::string sharer;
  std::string token_alignment;
  std::string alignment_strategy;
};

struct RunSummary {
  RunInfo run;
  // Non-empty: the backend refused the run's model pair before any question
  // (e.g. "FAILED_PRECONDITION: ... do not share a vocabulary ..."); n is 0
  // and the run is not plotted. summary.json: "refused".
  std::string refused;
  int64_t n = 0;         // Answered questions.
  int64_t expected = 0;  // Questions the run covers (after --limit).
  bool complete = false;
  int64_t skipped_items = 0;  // Dataset items with an answerKey outside A-D.
  int64_t correct = 0;
  double accuracy = 0;
  Interval ci95;
  // "A".."D" and "none" (nothing extracted); gold letters likewise.
  std::map<std::string, int64_t> predictions;
  std::map<std::string, int64_t> gold;
  std::map<std::string, int64_t> extraction_stages;  // "0".."4"
  double mean_output_tokens = 0;
  double mean_output_chars = 0;
  double mean_prompt_tokens = 0;
  double mean_bytes = 0;  // PlottedBytes.
  double mean_wire_bytes = 0;
  double mean_serialized_bytes = 0;
  double mean_payload_bytes = 0;
  double mean_scale_bytes = 0;
  double mean_index_bytes = 0;
  double mean_header_bytes = 0;
  double mean_raw_kv_bytes = 0;
  double mean_text_bytes = 0;
  double mean_tokens_sent = 0;
  double mean_layers_sent = 0;
  int64_t fell_back = 0;
  RecordTimings mean_timings;
  double p50_total_seconds = 0;
  double p90_total_seconds = 0;
};

// Aggregates `records` (one per question). `run.method` decides what
// mean_bytes measures.
RunSummary Summarize(const RunInfo& run,
                     const std::vector<QuestionRecord>& records,
                     int64_t expected, int64_t skipped_items);

nlohmann::ordered_json SummaryToJson(const RunSummary& summary);
absl::StatusOr<RunSummary> SummaryFromJson(const nlohmann::json& j);

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_RESULTS_H_
