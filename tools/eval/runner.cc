#include "tools/eval/runner.h"

#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/codec/scheme.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tools/eval/answer_extraction.h"
#include "tools/eval/progress.h"

namespace kvwire {
namespace eval {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

json SpecJson(const v1::TransferSpec& spec) {
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(spec, &text, options).ok()) {
    return json::object();
  }
  return json::parse(text, nullptr, /*allow_exceptions=*/false);
}

absl::Status MakeDirs(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

// What must match for a directory's answers to be resumed.
json Identity(const Dataset& dataset, const ResolvedRun& run,
              const AnswerBackend& backend) {
  json identity{{"dataset", DatasetKindName(dataset.kind)},
                {"run_id", run.spec.id},
                {"method", EvalMethodName(run.spec.method)},
                {"transfer_spec", SpecJson(run.transfer)},
                {"selection_strategy", run.selection_strategy},
                {"max_new_tokens", run.spec.max_new_tokens},
                {"backend", backend.kind()}};
  // Only runs with their own pair carry one (older run.json files match).
  if (!run.spec.pair.empty()) identity["pair"] = run.spec.pair.Describe();
  return identity;
}

RunInfo InfoOf(const Dataset& dataset, const ResolvedRun& run) {
  const RunSpec& r = run.spec;
  RunInfo info;
  info.dataset = DatasetKindName(dataset.kind);
  info.run_id = r.id;
  info.method = EvalMethodName(r.method);
  info.series = r.series;
  info.anchor_id = r.anchor_id;
  if (r.method == EvalMethod::kC2C) {
    info.scheme = SchemeName(r.scheme);
    info.granularity = GranularityName(r.granularity);
    info.selection = r.selection;
    info.proportion = r.proportion;
    info.min_tokens = r.min_tokens;
    info.schedule = r.schedule.has_value() ? r.schedule->name : "";
    info.zstd_level = r.zstd_level;
    info.budget_bytes = r.budget_bytes;
    info.transfer_spec = SpecJson(run.transfer);
  }
  info.sharer = r.pair.sharer;
  info.token_alignment = r.pair.token_alignment;
  info.alignment_strategy = r.pair.alignment_strategy;
  return info;
}

struct LoadedPredictions {
  std::vector<QuestionRecord> records;  // First record of each id.
  int64_t duplicates = 0;
  bool torn_line_dropped = false;
};

// Reads predictions.jsonl, truncating a torn (unparsable, unterminated)
// last line. A bad line anywhere else is DATA_LOSS.
absl::StatusOr<LoadedPredictions> LoadPredictions(const std::string& path) {
  LoadedPredictions out;
  if (!IsRegularFile(path)) return out;
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  std::set<std::string> seen;
  size_t pos = 0;
  size_t good_end = 0;
  int line_no = 0;
  bool needs_newline = false;
  while (pos < text.size()) {
    ++line_no;
    const size_t nl = text.find('\n', pos);
    const bool terminated = nl != std::string::npos;
    const size_t end = terminated ? nl : text.size();
    const std::string line = text.substr(pos, end - pos);
    const size_t next = terminated ? nl + 1 : text.size();
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      pos = next;
      good_end = next;
      continue;
    }
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    absl::StatusOr<QuestionRecord> record =
        j.is_discarded() ? absl::StatusOr<QuestionRecord>(
                               absl::DataLossError("not valid JSON"))
                         : RecordFromJson(j);
    if (!record.ok()) {
      if (!terminated) {
        out.torn_line_dropped = true;
        break;
      }
      return absl::DataLossError(
          absl::StrCat(path, ":", line_no, ": ", record.status().message(),
                       " (fix or delete the line, or rerun with --overwrite)"));
    }
    if (seen.insert(record->question_id).second) {
      out.records.push_back(*std::move(record));
    } else {
      ++out.duplicates;
    }
    pos = next;
    good_end = next;
    needs_newline = !terminated;
  }
  std::error_code ec;
  if (out.torn_line_dropped) {
    fs::resize_file(path, good_end, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot truncate ", path, ": ", ec.message()));
    }
  } else if (needs_newline) {
    std::ofstream fix(path, std::ios::binary | std::ios::app);
    fix << "\n";
    if (!fix)
      return absl::UnavailableError(absl::StrCat("cannot write ", path));
  }
  return out;
}

QuestionRecord MakeRecord(const EvalItem& item, int index,
                          const BackendAnswer& a, double wall_seconds) {
  QuestionRecord r;
  r.question_id = item.id;
  r.index = index;
  r.gold = item.answer;
  const Extraction e = ExtractAnswerDetailed(a.text);
  r.prediction = e.letter;
  r.extraction_stage = e.stage;
  r.correct = !e.letter.empty() && e.letter == item.answer;
  r.prompt_tokens = a.prompt_tokens;
  r.output_tokens = static_cast<int64_t>(a.token_ids.size());
  r.raw_output = a.text;
  if (a.has_transfer) {
    const v1::TransferReport& t = a.transfer;
    r.wire_bytes = t.wire_bytes();
    r.serialized_bytes = t.serialized_bytes();
    r.payload_bytes = t.payload_bytes();
    r.scale_bytes = t.scale_bytes();
    r.index_bytes = t.index_bytes();
    r.header_bytes = t.header_bytes();
    r.raw_kv_bytes = t.raw_kv_bytes();
    r.tokens_sent = t.tokens_sent();
    r.layers_sent = t.layers_sent();
    r.transfer_prompt_tokens = t.prompt_tokens();
  }
  r.chunks = a.chunks;
  r.text_bytes = a.text_bytes;
  r.background_text = a.background_text;
  r.fell_back = a.fell_back;
  r.fallback_reason = a.fallback_reason;
  const v1::StageTimings& t = a.timings;
  r.timings.sharer_compute = t.sharer_compute_seconds();
  r.timings.selection = a.selection_seconds;
  r.timings.encode = t.encode_seconds();
  r.timings.transfer = t.transfer_seconds();
  r.timings.decode = t.decode_seconds();
  r.timings.fuse = t.fuse_seconds();
  r.timings.receiver_prefill = t.receiver_prefill_seconds();
  r.timings.time_to_first_token = t.time_to_first_token_seconds();
  r.timings.generation = t.generation_seconds();
  r.timings.total = t.total_seconds() > 0 ? t.total_seconds() : wall_seconds;
  r.timings.wall = wall_seconds;
  return r;
}

absl::Status WriteSummary(const fs::path& dir, const RunSummary& summary) {
  return WriteStringToFile((dir / "summary.json").string(),
                           SummaryToJson(summary).dump(2) + "\n");
}

void Note(const RunOptions& options, const std::string& message) {
  if (options.log != nullptr) *options.log << message << "\n" << std::flush;
}

absl::Status DumpPrompts(const Dataset& dataset, const fs::path& dir,
                         const RunOptions& options) {
  std::string out;
  for (const EvalItem* item : SelectItems(dataset, options.limit)) {
    const std::string prompt = BuildEvalPrompt(item->question, item->choices);
    json j{
        {"question_id", item->id}, {"gold", item->answer}, {"prompt", prompt}};
    if (options.renderer != nullptr) {
      ASSIGN_OR_RETURN(std::string rendered, options.renderer->Render(prompt));
      j["rendered"] = rendered;
      j["prompt_tokens"] =
          options.renderer->tokenizer().Encode(rendered, false).size();
    }
    absl::StrAppend(&out, j.dump(), "\n");
  }
  return WriteStringToFile((dir / "prompts.jsonl").string(), out);
}

}  // namespace

std::vector<const EvalItem*> SelectItems(const Dataset& dataset, int limit) {
  std::vector<const EvalItem*> items;
  for (const EvalItem& item : dataset.items) {
    if (limit > 0 && static_cast<int>(items.size()) >= limit) break;
    items.push_back(&item);
  }
  return items;
}

std::string EvalRequestId(const std::string& dataset, const std::string& run_id,
                          const std::string& item_id) {
  // common/protocol's request_id limit (AnswerRequest and ShareRequest).
  constexpr size_t kMaxRequestIdBytes = 64;
  std::string id = absl::StrCat(dataset, "/", run_id, "/", item_id);
  if (id.size() <= kMaxRequestIdBytes) return id;
  uint64_t h = 14695981039346656037ull;  // FNV-1a, 64 bits.
  for (unsigned char c : run_id) {
    h ^= c;
    h *= 1099511628211ull;
  }
  id = absl::StrCat(dataset, "/", absl::StrFormat("%016x", h), "/", item_id);
  if (id.size() > kMaxRequestIdBytes) id.resize(kMaxRequestIdBytes);
  return id;
}

absl::StatusOr<RunSummary> RunOne(const Dataset& dataset,
                                  const ResolvedRun& run,
                                  AnswerBackend& backend,
                                  const RunOptions& options) {
  if (options.out_dir.empty()) {
    return absl::InvalidArgumentError("no output directory");
  }
  const std::string ds_name = DatasetKindName(dataset.kind);
  const fs::path dir = fs::path(options.out_dir) / ds_name / run.spec.id;
  RETURN_IF_ERROR(MakeDirs(dir));
  const std::string predictions = (dir / "predictions.jsonl").string();
  const std::string run_json = (dir / "run.json").string();

  // Identity check (resume) or a fresh start.
  const json identity = Identity(dataset, run, backend);
  if (IsRegularFile(run_json)) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(run_json));
    const json old = json::parse(text, nullptr, false);
    const json old_identity =
        old.is_object() && old.contains("identity") ? old["identity"] : json();
    if (old_identity != identity) {
      if (!options.overwrite) {
        return absl::FailedPreconditionError(absl::StrCat(
            dir.string(),
            " holds answers of a different run configuration (run.json "
            "identity ",
            old_identity.dump(), " vs now ", identity.dump(),
            "); use another --out or --overwrite"));
      }
      Note(options, absl::StrCat("overwriting ", dir.string()));
      std::error_code ec;
      fs::remove(predictions, ec);
    }
  }
  if (options.overwrite) {
    std::error_code ec;
    fs::remove(predictions, ec);
  }
  json meta{{"identity", identity},
            {"blocks", run.spec.blocks},
            {"series", run.spec.series},
            {"anchor_id", run.spec.anchor_id},
            {"grid", options.grid_name},
            {"dataset_path", dataset.path},
            {"backend_description", backend.Describe()},
            {"generation",
             {{"greedy", true}, {"max_new_tokens", run.spec.max_new_tokens}}}};
  RETURN_IF_ERROR(WriteStringToFile(run_json, meta.dump(2) + "\n"));

  ASSIGN_OR_RETURN(LoadedPredictions loaded, LoadPredictions(predictions));
  if (loaded.torn_line_dropped) {
    Note(options, absl::StrCat(predictions,
                               ": dropped a torn last line (interrupted "
                               "write); that question is asked again"));
  }
  if (loaded.duplicates > 0) {
    Note(options, absl::StrCat(predictions, ": ignoring ", loaded.duplicates,
                               " duplicate question ids"));
  }
  absl::flat_hash_map<std::string, QuestionRecord> done;
  for (QuestionRecord& r : loaded.records) {
    std::string id = r.question_id;
    done.emplace(std::move(id), std::move(r));
  }

  const std::vector<const EvalItem*> items =
      SelectItems(dataset, options.limit);
  int64_t already = 0;
  int64_t correct = 0;
  for (const EvalItem* item : items) {
    auto it = done.find(item->id);
    if (it != done.end()) {
      ++already;
      correct += it->second.correct ? 1 : 0;
    }
  }
  const RunInfo info = InfoOf(dataset, run);
  auto summarize = [&]() {
    std::vector<QuestionRecord> records;
    for (const EvalItem* item : items) {
      auto it = done.find(item->id);
      if (it != done.end()) records.push_back(it->second);
    }
    return Summarize(info, records, static_cast<int64_t>(items.size()),
                     static_cast<int64_t>(dataset.skipped.size()));
  };

  std::unique_ptr<ProgressBar> bar;
  if (options.progress && options.log != nullptr) {
    bar = std::make_unique<ProgressBar>(
        options.log, options.progress_interactive,
        absl::StrCat(ds_name, " ", run.spec.id),
        static_cast<int64_t>(items.size()), already);
  }
  std::ofstream out;
  bool cancelled = false;
  bool warned_prompt = false;
  absl::Status failure;
  int64_t finished = already;
  for (size_t i = 0; i < items.size(); ++i) {
    const EvalItem& item = *items[i];
    if (done.contains(item.id)) continue;
    if (options.stop_requested && options.stop_requested()) {
      cancelled = true;
      break;
    }
    if (!out.is_open()) {
      out.open(predictions, std::ios::binary | std::ios::app);
      if (!out) {
        return absl::UnavailableError(
            absl::StrCat("cannot append to ", predictions));
      }
    }
    BackendRequest request;
    request.request_id = EvalRequestId(ds_name, run.spec.id, item.id);
    const std::string prompt = BuildEvalPrompt(item.question, item.choices);
    request.messages = {ChatMessage{"user", prompt, std::nullopt}};
    request.background_question = item.question;
    request.method = run.spec.method;
    request.spec = run.transfer;
    request.selection_strategy = run.selection_strategy;
    request.max_new_tokens = run.spec.max_new_tokens;
    const auto t0 = Clock::now();
    absl::StatusOr<BackendAnswer> answer = backend.Answer(request);
    const double wall =
        std::chrono::duration<double>(Clock::now() - t0).count();
    if (!answer.ok()) {
      failure =
          absl::Status(answer.status().code(),
                       absl::StrCat(ds_name, " ", run.spec.id, ": question ",
                                    item.id, " (", dataset.path, ":", item.line,
                                    "): ", answer.status().message()));
      break;
    }
    QuestionRecord record =
        MakeRecord(item, static_cast<int>(i), *answer, wall);
    if (options.renderer != nullptr &&
        (record.prompt_tokens < 0 || !warned_prompt)) {
      absl::StatusOr<std::vector<uint32_t>> ids =
          options.renderer->Tokenize(prompt);
      if (ids.ok()) {
        const int64_t local = static_cast<int64_t>(ids->size());
        if (record.prompt_tokens < 0) {
          record.prompt_tokens = local;
        } else if (record.prompt_tokens != local &&
                   (run.spec.method == EvalMethod::kReceiverOnly ||
                    run.spec.method == EvalMethod::kC2C)) {
          Note(options,
               absl::StrCat("note: the backend's receiver read ",
                            record.prompt_tokens,
                            " prompt tokens, the local template gives ", local,
                            " (different tokenizer or template?)"));
        }
        warned_prompt = true;
      }
    }
    out << RecordToJson(record).dump() << "\n";
    out.flush();
    if (!out) {
      return absl::UnavailableError(absl::StrCat("cannot write ", predictions));
    }
    correct += record.correct ? 1 : 0;
    done.emplace(item.id, std::move(record));
    ++finished;
    if (bar) bar->Update(finished, correct);
  }
  if (bar) bar->Finish();
  const RunSummary summary = summarize();
  RETURN_IF_ERROR(WriteSummary(dir, summary));
  if (!failure.ok()) return failure;
  if (summary.fell_back > 0) {
    Note(options, absl::StrCat("warning: ", summary.fell_back,
                               " answers fell back to receiver-only"));
  }
  if (cancelled) {
    return absl::CancelledError(absl::StrCat(
        "interrupted after ", finished, " of ", items.size(), " questions of ",
        ds_name, " ", run.spec.id, "; rerun the same command to resume"));
  }
  return summary;
}

namespace {

// A run whose model pair the backend refused: its summary says why, with
// no answers (an earlier directory of the same run keeps its predictions).
absl::StatusOr<RunSummary> WriteRefused(const Dataset& dataset,
                                        const ResolvedRun& run,
                                        const absl::Status& why,
                                        const RunOptions& options) {
  const std::string ds_name = DatasetKindName(dataset.kind);
  const fs::path dir = fs::path(options.out_dir) / ds_name / run.spec.id;
  RETURN_IF_ERROR(MakeDirs(dir));
  RunSummary summary = Summarize(
      InfoOf(dataset, run), {},
      static_cast<int64_t>(SelectItems(dataset, options.limit).size()),
      static_cast<int64_t>(dataset.skipped.size()));
  summary.refused = why.ToString();
  RETURN_IF_ERROR(WriteSummary(dir, summary));
  return summary;
}

absl::StatusOr<std::string> WriteCombinedCsv(
    const std::string& out_dir, const std::vector<std::string>& datasets) {
  std::vector<RunSummary> all;
  for (const std::string& ds : datasets) {
    ASSIGN_OR_RETURN(std::vector<RunSummary> s,
                     ReadSummaries((fs::path(out_dir) / ds).string()));
    all.insert(all.end(), s.begin(), s.end());
  }
  const std::string path = (fs::path(out_dir) / "budget_curve.csv").string();
  RETURN_IF_ERROR(WriteStringToFile(path, BudgetCurveCsv(all)));
  return path;
}

}  // namespace

absl::StatusOr<GridResult> RunGrid(const Grid& grid,
                                   const std::vector<Dataset>& datasets,
                                   AnswerBackend& backend,
                                   const RunOptions& options) {
  // Runs with their own model pair are resolved once the backend uses it
  // (their layer counts may differ); the others now, so a bad schedule
  // fails before any question.
  RETURN_IF_ERROR(backend.UsePair(PairOverride()));
  const BackendLayout layout = backend.layout();
  std::vector<ResolvedRun> runs;
  for (const RunSpec& spec : grid.runs) {
    if (absl::Status st = backend.CheckPairSupported(spec.pair); !st.ok()) {
      return absl::Status(st.code(),
                          absl::StrCat("run ", spec.id, ": ", st.message()));
    }
    if (!spec.pair.empty()) {
      ResolvedRun pending;
      pending.spec = spec;
      runs.push_back(std::move(pending));
      continue;
    }
    ASSIGN_OR_RETURN(ResolvedRun run, ResolveRun(spec, layout));
    runs.push_back(std::move(run));
  }
  GridResult result;
  std::vector<std::string> names;
  absl::Status stop;
  for (const Dataset& dataset : datasets) {
    const std::string ds_name = DatasetKindName(dataset.kind);
    names.push_back(ds_name);
    const fs::path ds_dir = fs::path(options.out_dir) / ds_name;
    RETURN_IF_ERROR(MakeDirs(ds_dir));
    Note(options,
         absl::StrCat(ds_name, ": ", dataset.items.size(), " scored items (",
                      dataset.skipped.size(),
                      " skipped: answerKey outside A-D) from ", dataset.path,
                      options.limit > 0
                          ? absl::StrCat("; first ", options.limit, " used")
                          : ""));
    if (options.dump_prompts)
      RETURN_IF_ERROR(DumpPrompts(dataset, ds_dir, options));
    for (size_t r = 0; r < runs.size() && stop.ok(); ++r) {
      const PairOverride& pair = runs[r].spec.pair;
      if (absl::Status st = backend.UsePair(pair); !st.ok()) {
        if (!absl::IsFailedPrecondition(st)) {
          stop = absl::Status(st.code(), absl::StrCat("run ", runs[r].spec.id,
                                                      ": ", st.message()));
          break;
        }
        absl::StatusOr<ResolvedRun> unresolved =
            ResolveRun(runs[r].spec, BackendLayout());
        absl::StatusOr<RunSummary> refused = WriteRefused(
            dataset, unresolved.ok() ? *unresolved : runs[r], st, options);
        if (!refused.ok()) {
          stop = refused.status();
          break;
        }
        Note(options, absl::StrCat(ds_name, " ", runs[r].spec.id,
                                   " REFUSED: ", st.ToString()));
        result.summaries.push_back(*std::move(refused));
        continue;
      }
      if (!pair.empty()) {
        absl::StatusOr<ResolvedRun> resolved =
            ResolveRun(runs[r].spec, backend.layout());
        if (!resolved.ok()) {
          stop = resolved.status();
          break;
        }
        runs[r] = *std::move(resolved);
      }
      absl::StatusOr<RunSummary> summary =
          RunOne(dataset, runs[r], backend, options);
      if (!summary.ok()) {
        stop = summary.status();
        break;
      }
      Note(options,
           absl::StrFormat("%s %-40s acc %.1f%% [%.1f, %.1f] n=%d  bytes/q "
                           "%.0f  %.3f s/q",
                           ds_name, runs[r].spec.id, 100 * summary->accuracy,
                           100 * summary->ci95.low, 100 * summary->ci95.high,
                           summary->n, summary->mean_bytes,
                           summary->mean_timings.total));
      result.summaries.push_back(*std::move(summary));
    }
    ASSIGN_OR_RETURN(CurveFiles curves,
                     WriteBudgetCurve(ds_dir.string(), ds_name, options.plots));
    if (!curves.plot_error.empty()) Note(options, curves.plot_error);
    result.curves.push_back(std::move(curves));
    if (!stop.ok()) break;
  }
  ASSIGN_OR_RETURN(result.combined_csv,
                   WriteCombinedCsv(options.out_dir, names));
  if (!stop.ok()) return stop;
  return result;
}

absl::StatusOr<GridResult> RewriteCurves(const std::string& out_dir,
                                         const PlotOptions& plots) {
  GridResult result;
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(out_dir, ec)) {
    if (!entry.is_directory()) continue;
    const std::string name = entry.path().filename().string();
    if (!ParseDatasetKind(name).ok()) continue;
    names.push_back(name);
  }
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot list ", out_dir, ": ", ec.message()));
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string dir = (fs::path(out_dir) / name).string();
    ASSIGN_OR_RETURN(CurveFiles curves, WriteBudgetCurve(dir, name, plots));
    ASSIGN_OR_RETURN(std::vector<RunSummary> s, ReadSummaries(dir));
    result.summaries.insert(result.summaries.end(), s.begin(), s.end());
    result.curves.push_back(std::move(curves));
  }
  ASSIGN_OR_RETURN(result.combined_csv, WriteCombinedCsv(out_dir, names));
  return result;
}

}  // namespace eval
}  // namespace kvwire
