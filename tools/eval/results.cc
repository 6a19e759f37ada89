#include "tools/eval/results.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvwire {
namespace eval {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

ordered_json TimingsToJson(const RecordTimings& t) {
  return ordered_json{{"sharer_compute", t.sharer_compute},
                      {"selection", t.selection},
                      {"encode", t.encode},
                      {"transfer", t.transfer},
                      {"decode", t.decode},
                      {"fuse", t.fuse},
                      {"receiver_prefill", t.receiver_prefill},
                      {"time_to_first_token", t.time_to_first_token},
                      {"generation", t.generation},
                      {"total", t.total},
                      {"wall", t.wall}};
}

RecordTimings TimingsFromJson(const json& j) {
  RecordTimings t;
  if (!j.is_object()) return t;
  t.sharer_compute = j.value("sharer_compute", 0.0);
  t.selection = j.value("selection", 0.0);
  t.encode = j.value("encode", 0.0);
  t.transfer = j.value("transfer", 0.0);
  t.decode = j.value("decode", 0.0);
  t.fuse = j.value("fuse", 0.0);
  t.receiver_prefill = j.value("receiver_prefill", 0.0);
  t.time_to_first_token = j.value("time_to_first_token", 0.0);
  t.generation = j.value("generation", 0.0);
  t.total = j.value("total", 0.0);
  t.wall = j.value("wall", 0.0);
  return t;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  // Linear interpolation between closest ranks (numpy's default).
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

ordered_json CountsToJson(const std::map<std::string, int64_t>& m) {
  ordered_json j = ordered_json::object();
  for (const auto& [k, v] : m) j[k] = v;
  return j;
}

std::map<std::string, int64_t> CountsFromJson(const json& j) {
  std::map<std::string, int64_t> m;
  if (!j.is_object()) return m;
  for (auto it = j.begin(); it != j.end(); ++it) {
    m[it.key()] = it.value().get<int64_t>();
  }
  return m;
}

}  // namespace

ordered_json RecordToJson(const QuestionRecord& r) {
  ordered_json j;
  j["question_id"] = r.question_id;
  j["index"] = r.index;
  j["gold"] = r.gold;
  j["prediction"] = r.prediction;
  j["correct"] = r.correct;
  j["extraction_stage"] = r.extraction_stage;
  j["prompt_tokens"] = r.prompt_tokens;
  j["output_tokens"] = r.output_tokens;
  j["wire_bytes"] = r.wire_bytes;
  j["serialized_bytes"] = r.serialized_bytes;
  j["payload_bytes"] = r.payload_bytes;
  j["scale_bytes"] = r.scale_bytes;
  j["index_bytes"] = r.index_bytes;
  j["header_bytes"] = r.header_bytes;
  j["raw_kv_bytes"] = r.raw_kv_bytes;
  j["chunks"] = r.chunks;
  j["tokens_sent"] = r.tokens_sent;
  j["layers_sent"] = r.layers_sent;
  j["transfer_prompt_tokens"] = r.transfer_prompt_tokens;
  j["text_bytes"] = r.text_bytes;
  j["fell_back"] = r.fell_back;
  if (!r.fallback_reason.empty()) j["fallback_reason"] = r.fallback_reason;
  j["raw_output"] = r.raw_output;
  if (!r.background_text.empty()) j["background_text"] = r.background_text;
  j["timings"] = TimingsToJson(r.timings);
  return j;
}

absl::StatusOr<QuestionRecord> RecordFromJson(const json& j) {
  if (!j.is_object() || !j.contains("question_id") ||
      !j["question_id"].is_string()) {
    return absl::DataLossError("record has no question_id");
  }
  QuestionRecord r;
  try {
    r.question_id = j["question_id"].get<std::string>();
    r.index = j.value("index", 0);
    r.gold = j.value("gold", "");
    r.prediction = j.value("prediction", "");
    r.extraction_stage = j.value("extraction_stage", 0);
    r.correct = j.value("correct", false);
    r.prompt_tokens = j.value("prompt_tokens", int64_t{-1});
    r.output_tokens = j.value("output_tokens", int64_t{0});
    r.raw_output = j.value("raw_output", "");
    r.wire_bytes = j.value("wire_bytes", uint64_t{0});
    r.serialized_bytes = j.value("serialized_bytes", uint64_t{0});
    r.payload_bytes = j.value("payload_bytes", uint64_t{0});
    r.scale_bytes = j.value("scale_bytes", uint64_t{0});
    r.index_bytes = j.value("index_bytes", uint64_t{0});
    r.header_bytes = j.value("header_bytes", uint64_t{0});
    r.raw_kv_bytes = j.value("raw_kv_bytes", uint64_t{0});
    r.chunks = j.value("chunks", uint64_t{0});
    r.tokens_sent = j.value("tokens_sent", uint32_t{0});
    r.layers_sent = j.value("layers_sent", uint32_t{0});
    r.transfer_prompt_tokens = j.value("transfer_prompt_tokens", uint32_t{0});
    r.text_bytes = j.value("text_bytes", uint64_t{0});
    r.background_text = j.value("background_text", "");
    r.fell_back = j.value("fell_back", false);
    r.fallback_reason = j.value("fallback_reason", "");
    if (j.contains("timings")) r.timings = TimingsFromJson(j["timings"]);
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("malformed record: ", e.what()));
  }
  return r;
}

uint64_t PlottedBytes(absl::string_view method, const QuestionRecord& r) {
  if (method == "c2c") return r.wire_bytes;
  if (method == "text-to-text") return r.text_bytes;
  return 0;
}

Interval WilsonInterval(int64_t successes, int64_t n, double z) {
  if (n <= 0) return Interval{0, 1};
  successes = std::clamp<int64_t>(successes, 0, n);
  const double nn = static_cast<double>(n);
  const double p = static_cast<double>(successes) / nn;
  const double z2 = z * z;
  const double denom = 1 + z2 / nn;
  const double center = (p + z2 / (2 * nn)) / denom;
  const double half =
      z * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn)) / denom;
  // Exact ends where rounding would leave 1e-17 residues.
  return Interval{successes == 0 ? 0.0 : std::max(0.0, center - half),
                  successes == n ? 1.0 : std::min(1.0, center + half)};
}

RunSummary Summarize(const RunInfo& run,
                     const std::vector<QuestionRecord>& records,
                     int64_t expected, int64_t skipped_items) {
  RunSummary s;
  s.run = run;
  s.expected = expected;
  s.skipped_items = skipped_items;
  s.n = static_cast<int64_t>(records.size());
  s.complete = s.n >= expected;
  for (const char* letter : {"A", "B", "C", "D", "none"}) {
    s.predictions[letter] = 0;
  }
  std::vector<double> totals;
  for (const QuestionRecord& r : records) {
    s.correct += r.correct ? 1 : 0;
    s.predictions[r.prediction.empty() ? "none" : r.prediction]++;
    s.gold[r.gold]++;
    s.extraction_stages[std::to_string(r.extraction_stage)]++;
    s.mean_output_tokens += static_cast<double>(r.output_tokens);
    s.mean_output_chars += static_cast<double>(r.raw_output.size());
    s.mean_prompt_tokens +=
        static_cast<double>(std::max<int64_t>(0, r.prompt_tokens));
    s.mean_bytes += static_cast<double>(PlottedBytes(run.method, r));
    s.mean_wire_bytes += static_cast<double>(r.wire_bytes);
    s.mean_serialized_bytes += static_cast<double>(r.serialized_bytes);
    s.mean_payload_bytes += static_cast<double>(r.payload_bytes);
    s.mean_scale_bytes += static_cast<double>(r.scale_bytes);
    s.mean_index_bytes += static_cast<double>(r.index_bytes);
    s.mean_header_bytes += static_cast<double>(r.header_bytes);
    s.mean_raw_kv_bytes += static_cast<double>(r.raw_kv_bytes);
    s.mean_text_bytes += static_cast<double>(r.text_bytes);
    s.mean_tokens_sent += static_cast<double>(r.tokens_sent);
    s.mean_layers_sent += static_cast<double>(r.layers_sent);
    s.fell_back += r.fell_back ? 1 : 0;
    RecordTimings& m = s.mean_timings;
    const RecordTimings& t = r.timings;
    m.sharer_compute += t.sharer_compute;
    m.selection += t.selection;
    m.encode += t.encode;
    m.transfer += t.transfer;
    m.decode += t.decode;
    m.fuse += t.fuse;
    m.receiver_prefill += t.receiver_prefill;
    m.time_to_first_token += t.time_to_first_token;
    m.generation += t.generation;
    m.total += t.total;
    m.wall += t.wall;
    totals.push_back(t.total);
  }
  if (s.n > 0) {
    const double n = static_cast<double>(s.n);
    s.accuracy = static_cast<double>(s.correct) / n;
    for (double* v : {&s.mean_output_tokens,
                      &s.mean_output_chars,
                      &s.mean_prompt_tokens,
                      &s.mean_bytes,
                      &s.mean_wire_bytes,
                      &s.mean_serialized_bytes,
                      &s.mean_payload_bytes,
                      &s.mean_scale_bytes,
                      &s.mean_index_bytes,
                      &s.mean_header_bytes,
                      &s.mean_raw_kv_bytes,
                      &s.mean_text_bytes,
                      &s.mean_tokens_sent,
                      &s.mean_layers_sent,
                      &s.mean_timings.sharer_compute,
                      &s.mean_timings.selection,
                      &s.mean_timings.encode,
                      &s.mean_timings.transfer,
                      &s.mean_timings.decode,
                      &s.mean_timings.fuse,
                      &s.mean_timings.receiver_prefill,
                      &s.mean_timings.time_to_first_token,
                      &s.mean_timings.generation,
                      &s.mean_timings.total,
                      &s.mean_timings.wall}) {
      *v /= n;
    }
  }
  s.ci95 = WilsonInterval(s.correct, s.n);
  s.p50_total_seconds = Percentile(totals, 0.5);
  s.p90_total_seconds = Percentile(totals, 0.9);
  return s;
}

ordered_json SummaryToJson(const RunSummary& s) {
  const RunInfo& r = s.run;
  ordered_json run{{"dataset", r.dataset},
                   {"run_id", r.run_id},
                   {"method", r.method},
                   {"series", r.series},
                   {"anchor_id", r.anchor_id},
                   {"scheme", r.scheme},
                   {"granularity", r.granularity},
                   {"selection", r.selection},
                   {"proportion", r.proportion},
                   {"min_tokens", r.min_tokens},
                   {"schedule", r.schedule},
                   {"zstd_level", r.zstd_level},
                   {"budget_bytes", r.budget_bytes},
                   {"transfer_spec", r.transfer_spec},
                   {"sharer", r.sharer},
                   {"token_alignment", r.token_alignment},
                   {"alignment_strategy", r.alignment_strategy}};
  return ordered_json{
      {"run", run},
      {"refused", s.refused},
      {"n", s.n},
      {"expected", s.expected},
      {"complete", s.complete},
      {"skipped_items", s.skipped_items},
      {"correct", s.correct},
      {"accuracy", s.accuracy},
      {"ci95",
       {{"low", s.ci95.low}, {"high", s.ci95.high}, {"method", "wilson"}}},
      {"answer_distribution", CountsToJson(s.predictions)},
      {"gold_distribution", CountsToJson(s.gold)},
      {"extraction_stages", CountsToJson(s.extraction_stages)},
      {"mean_output_tokens", s.mean_output_tokens},
      {"mean_output_chars", s.mean_output_chars},
      {"mean_prompt_tokens", s.mean_prompt_tokens},
      {"bytes",
       {{"mean_plotted", s.mean_bytes},
        {"mean_wire", s.mean_wire_bytes},
        {"mean_serialized", s.mean_serialized_bytes},
        {"mean_payload", s.mean_payload_bytes},
        {"mean_scale", s.mean_scale_bytes},
        {"mean_index", s.mean_index_bytes},
        {"mean_header", s.mean_header_bytes},
        {"mean_raw_kv", s.mean_raw_kv_bytes},
        {"mean_text", s.mean_text_bytes},
        {"mean_tokens_sent", s.mean_tokens_sent},
        {"mean_layers_sent", s.mean_layers_sent}}},
      {"fell_back", s.fell_back},
      {"latency_seconds",
       {{"mean", TimingsToJson(s.mean_timings)},
        {"p50_total", s.p50_total_seconds},
        {"p90_total", s.p90_total_seconds}}}};
}

absl::StatusOr<RunSummary> SummaryFromJson(const json& j) {
  RunSummary s;
  try {
    const json& r = j.at("run");
    s.run.dataset = r.value("dataset", "");
    s.run.run_id = r.at("run_id").get<std::string>();
    s.run.method = r.at("method").get<std::string>();
    s.run.series = r.value("series", "");
    s.run.anchor_id = r.value("anchor_id", "");
    s.run.scheme = r.value("scheme", "");
    s.run.granularity = r.value("granularity", "");
    s.run.selection = r.value("selection", "");
    s.run.proportion = r.value("proportion", 1.0);
    s.run.min_tokens = r.value("min_tokens", uint32_t{0});
    s.run.schedule = r.value("schedule", "");
    s.run.zstd_level = r.value("zstd_level", 0);
    s.run.budget_bytes = r.value("budget_bytes", uint64_t{0});
    if (r.contains("transfer_spec")) s.run.transfer_spec = r["transfer_spec"];
    s.run.sharer = r.value("sharer", "");
    s.run.token_alignment = r.value("token_alignment", "");
    s.run.alignment_strategy = r.value("alignment_strategy", "");
    s.refused = j.value("refused", "");
    s.n = j.at("n").get<int64_t>();
    s.expected = j.value("expected", s.n);
    s.complete = j.value("complete", false);
    s.skipped_items = j.value("skipped_items", int64_t{0});
    s.correct = j.at("correct").get<int64_t>();
    s.accuracy = j.at("accuracy").get<double>();
    s.ci95.low = j.at("ci95").at("low").get<double>();
    s.ci95.high = j.at("ci95").at("high").get<double>();
    s.predictions = CountsFromJson(j.value("answer_distribution", json()));
    s.gold = CountsFromJson(j.value("gold_distribution", json()));
    s.extraction_stages = CountsFromJson(j.value("extraction_stages", json()));
    s.mean_output_tokens = j.value("mean_output_tokens", 0.0);
    s.mean_output_chars = j.value("mean_output_chars", 0.0);
    s.mean_prompt_tokens = j.value("mean_prompt_tokens", 0.0);
    const json& b = j.at("bytes");
    s.mean_bytes = b.value("mean_plotted", 0.0);
    s.mean_wire_bytes = b.value("mean_wire", 0.0);
    s.mean_serialized_bytes = b.value("mean_serialized", 0.0);
    s.mean_payload_bytes = b.value("mean_payload", 0.0);
    s.mean_scale_bytes = b.value("mean_scale", 0.0);
    s.mean_index_bytes = b.value("mean_index", 0.0);
    s.mean_header_bytes = b.value("mean_header", 0.0);
    s.mean_raw_kv_bytes = b.value("mean_raw_kv", 0.0);
    s.mean_text_bytes = b.value("mean_text", 0.0);
    s.mean_tokens_sent = b.value("mean_tokens_sent", 0.0);
    s.mean_layers_sent = b.value("mean_layers_sent", 0.0);
    s.fell_back = j.value("fell_back", int64_t{0});
    const json& lat = j.at("latency_seconds");
    s.mean_timings = TimingsFromJson(lat.value("mean", json()));
    s.p50_total_seconds = lat.value("p50_total", 0.0);
    s.p90_total_seconds = lat.value("p90_total", 0.0);
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("malformed summary: ", e.what()));
  }
  return s;
}

}  // namespace eval
}  // namespace kvwire
