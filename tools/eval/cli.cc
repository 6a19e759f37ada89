#include "tools/eval/cli.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/hub_cache.h"
#include "common/service/security.h"
#include "common/status_macros.h"
#include "tools/eval/dataset.h"
#include "tools/eval/runner.h"

namespace kvwire {
namespace eval {

const char kEvalUsage[] =
    R"(accuracy against measured bytes on OpenBookQA and ARC-Challenge
for receiver-only, sharer-only, text-to-text and C2C at any transfer spec,
with the C2C reference evaluator's protocol (exact prompt, Qwen chat template
with thinking disabled, greedy decoding of 64 new tokens, its answer
extraction; ARC items whose answerKey is not A-D are skipped and counted).

Usage:
  kvwire-eval --grid=GRID.yaml --out=DIR [datasets] [backend]
  kvwire-eval --method=c2c --scheme=int8,int4 --selection=back \
      --proportion=0.5,0.25 --out=DIR [datasets] [backend]
  kvwire-eval --plots_only --out=DIR        # redraw CSV + PNGs from results
  kvwire-eval --grid=GRID.yaml --list       # print the expanded runs

Datasets (JSONL, AI2's original form or a Hugging Face `datasets` export):
  --openbookqa=FILE --arc_challenge=FILE   (override the grid's `datasets:`)
  --datasets=openbookqa,arc_challenge      (run only these)   --limit=N

Backends:
  --backend=inprocess (default): sharer, codec, fuser and receiver in this
      process. --receiver_dir, --sharer_dir, --fuser_dir (Hugging Face model
      directories and a C2C fuser checkpoint), --tokenizer_dir,
      --sharer_tokenizer_dir (each a directory, or a Hugging Face id
      OWNER/NAME[/SUBFOLDER][@REVISION] resolved offline from the hub
      cache: HF_HUB_CACHE, else HF_HOME/hub; `hf download OWNER/NAME`
      fetches it), --token_alignment, --alignment_strategy,
      --device, --dtype, --threads, --t2t_max_new_tokens. Grid runs may
      switch to another sharer/fuser/alignment (`sharers:`, `sharer:`,
      `token_alignment:`; ${VAR}s in paths from --grid_var or the
      environment); a pair the models refuse (e.g. another vocabulary with
      alignment off) is a REFUSED row, and the grid goes on.
  --backend=grpc: the receiver service's Answer RPC at --target (bytes and
      times include the network). --use_tls, --tls_ca, --tls_cert,
      --tls_key, --tls_server_name, --allow_insecure, --auth_token_file,
      --rpc_timeout_s, --fallback, and --receiver_layers/--sharer_layers for
      schedules indexed by receiver layer. The model pair is the receiver
      service's flags: runs with `sharer`/`token_alignment`/
      `alignment_strategy` are refused before any question.

Output under --out (rerunning the same command resumes; Ctrl-C stops after
the current question):
  DIR/<dataset>/<run>/predictions.jsonl  one line per question
  DIR/<dataset>/<run>/summary.json       accuracy, 95% Wilson interval, answer
                                         distribution, mean output length,
                                         mean bytes, latency
  DIR/<dataset>/budget_curve.csv, budget_curve.png, latency_vs_bytes.png
  DIR/budget_curve.csv                   every dataset

Grid files: see tools/eval/grid.h and tools/eval/grids/prototype_m0_m8.yaml.
Full guide: docs/EVALUATION.md.)";

namespace {

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    part = absl::StripAsciiWhitespace(part);
    if (!part.empty()) out.emplace_back(part);
  }
  return out;
}

}  // namespace

absl::StatusOr<Grid> GridFromConfig(const CliConfig& c) {
  const bool single = !c.methods.empty() || !c.schemes.empty() ||
                      !c.granularities.empty() || !c.selections.empty() ||
                      !c.proportions.empty() || !c.min_tokens.empty() ||
                      !c.schedules.empty() || !c.zstd.empty();
  if (!c.grid.empty()) {
    if (single) {
      return absl::InvalidArgumentError(
          "give either --grid or the single-run lists (--method, --scheme, "
          "...), not both");
    }
    ASSIGN_OR_RETURN(GridVariables vars, ParseGridVariables(c.grid_vars));
    return LoadGridFile(c.grid, vars);
  }
  if (!c.grid_vars.empty()) {
    return absl::InvalidArgumentError("--grid_var needs --grid");
  }
  YAML::Node block;
  block["name"] = "cli";
  const std::pair<const char*, const std::string*> lists[] = {
      {"method", &c.methods},
      {"scheme", &c.schemes},
      {"granularity", &c.granularities},
      {"selection", &c.selections},
      {"proportion", &c.proportions},
      {"min_tokens", &c.min_tokens},
      {"schedule", &c.schedules},
      {"zstd", &c.zstd}};
  for (const auto& [key, value] : lists) {
    const std::vector<std::string> items = SplitList(*value);
    if (items.empty()) continue;
    YAML::Node seq(YAML::NodeType::Sequence);
    for (const std::string& item : items) seq.push_back(item);
    block[key] = seq;
  }
  if (!block["method"].IsDefined()) block["method"] = "c2c";
  block["max_new_tokens"] = c.max_new_tokens;
  YAML::Node root;
  root["name"] = "cli";
  root["runs"].push_back(block);
  YAML::Emitter emitter;
  emitter << root;
  ASSIGN_OR_RETURN(
      Grid grid,
      ParseGridYaml(emitter.c_str(), std::filesystem::current_path().string()));
  grid.name = "cli";
  return grid;
}

namespace {

absl::StatusOr<std::vector<Dataset>> LoadDatasets(const CliConfig& c,
                                                  const Grid& grid) {
  std::vector<std::pair<std::string, std::string>> paths = grid.datasets;
  auto set = [&](const std::string& name, const std::string& path) {
    if (path.empty()) return;
    for (auto& [n, p] : paths) {
      if (n == name) {
        p = path;
        return;
      }
    }
    paths.emplace_back(name, path);
  };
  set("openbookqa", c.openbookqa);
  set("arc_challenge", c.arc_challenge);
  std::set<std::string> wanted;
  for (const std::string& name : SplitList(c.datasets)) {
    ASSIGN_OR_RETURN(DatasetKind kind, ParseDatasetKind(name));
    wanted.insert(DatasetKindName(kind));
  }
  std::vector<Dataset> out;
  for (const auto& [name, path] : paths) {
    if (!wanted.empty() && !wanted.count(name)) continue;
    ASSIGN_OR_RETURN(DatasetKind kind, ParseDatasetKind(name));
    ASSIGN_OR_RETURN(Dataset ds, LoadDataset(path, kind));
    out.push_back(std::move(ds));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        "no dataset: give --openbookqa and/or --arc_challenge, or a grid "
        "with `datasets:`");
  }
  return out;
}

void PrintResults(const GridResult& result, std::ostream& out) {
  int refused = 0;
  for (const RunSummary& s : result.summaries) {
    if (!s.refused.empty()) {
      ++refused;
      out << absl::StrFormat("%-14s %-44s REFUSED  %s\n", s.run.dataset,
                             s.run.run_id, s.refused);
      continue;
    }
    out << absl::StrFormat(
        "%-14s %-44s acc %5.1f%% [%5.1f, %5.1f] n=%-5d bytes/q %10.0f  "
        "tokens sent %7.0f  %.3f s/q%s\n",
        s.run.dataset, s.run.run_id, 100 * s.accuracy, 100 * s.ci95.low,
        100 * s.ci95.high, s.n, s.mean_bytes, s.mean_tokens_sent,
        s.mean_timings.total, s.complete ? "" : "  (incomplete)");
  }
  for (const CurveFiles& c : result.curves) {
    out << "wrote " << c.csv << "\n";
    for (const std::string& png : c.pngs) out << "wrote " << png << "\n";
    if (!c.plot_error.empty()) out << "no plots: " << c.plot_error << "\n";
  }
  if (!result.combined_csv.empty()) {
    out << "wrote " << result.combined_csv << "\n";
  }
  if (refused > 0) {
    out << refused
        << " run(s) REFUSED: the backend would not load their model pair "
           "(the `refused` column of budget_curve.csv and summary.json)\n";
  }
}

}  // namespace

int RunEvalCli(const CliConfig& c, std::ostream& out, std::ostream& err) {
  PlotOptions plots;
  plots.enabled = c.plots;
  plots.gnuplot = c.gnuplot;
  if (c.plots_only) {
    if (c.out.empty()) {
      err << "kvwire-eval: --plots_only needs --out\n";
      return 2;
    }
    absl::StatusOr<GridResult> result = RewriteCurves(c.out, plots);
    if (!result.ok()) {
      err << "kvwire-eval: " << result.status() << "\n";
      return 1;
    }
    PrintResults(*result, out);
    return 0;
  }
  absl::StatusOr<Grid> grid = GridFromConfig(c);
  if (!grid.ok()) {
    err << "kvwire-eval: " << grid.status() << "\n";
    return 2;
  }
  for (const std::string& note : grid->notes) err << "note: " << note << "\n";
  if (c.list) {
    out << "grid " << grid->name << ": " << grid->runs.size() << " runs\n";
    for (const RunSpec& r : grid->runs) {
      out << absl::StrFormat("  %-48s series \"%s\"  blocks %s\n", r.id,
                             r.series, absl::StrJoin(r.blocks, ","));
    }
    for (const auto& [name, path] : grid->datasets) {
      out << "  dataset " << name << ": " << path << "\n";
    }
    return 0;
  }
  if (c.out.empty()) {
    err << "kvwire-eval: --out is required\n";
    return 2;
  }
  absl::StatusOr<std::vector<Dataset>> datasets = LoadDatasets(c, *grid);
  if (!datasets.ok()) {
    err << "kvwire-eval: " << datasets.status() << "\n";
    return 2;
  }

  std::unique_ptr<AnswerBackend> backend;
  std::string tokenizer_dir = c.prompt_tokenizer_dir;
  // Hugging Face ids become their hub-cache snapshots (hub_cache.h).
  if (absl::Status st =
          ResolveModelDirFlags({{"--tokenizer_dir", &tokenizer_dir}});
      !st.ok()) {
    err << "kvwire-eval: " << st << "\n";
    return 2;
  }
  if (c.backend == "inprocess" || c.backend == "in-process") {
    if (c.inprocess.receiver_dir.empty()) {
      err << "kvwire-eval: --receiver_dir is required for the in-process "
             "backend\n";
      return 2;
    }
    InProcessBackendOptions inprocess = c.inprocess;
    if (absl::Status st = ResolveModelDirFlags(
            {{"--receiver_dir", &inprocess.receiver_dir},
             {"--sharer_dir", &inprocess.sharer_dir},
             {"--fuser_dir", &inprocess.fuser_dir},
             {"--tokenizer_dir", &inprocess.tokenizer_dir},
             {"--sharer_tokenizer_dir", &inprocess.sharer_tokenizer_dir}});
        !st.ok()) {
      err << "kvwire-eval: " << st << "\n";
      return 2;
    }
    err << "loading models...\n";
    absl::StatusOr<std::unique_ptr<AnswerBackend>> b =
        CreateInProcessBackend(inprocess);
    if (!b.ok()) {
      err << "kvwire-eval: " << b.status() << "\n";
      return 1;
    }
    backend = *std::move(b);
    if (tokenizer_dir.empty()) {
      tokenizer_dir = inprocess.tokenizer_dir.empty() ? inprocess.receiver_dir
                                                      : inprocess.tokenizer_dir;
    }
  } else if (c.backend == "grpc") {
    GrpcBackendOptions g = c.grpc;
    if (!c.auth_token_file.empty()) {
      absl::StatusOr<std::string> token = ReadSecretFile(c.auth_token_file);
      if (!token.ok()) {
        err << "kvwire-eval: " << token.status() << "\n";
        return 2;
      }
      g.channel.security.auth_token = *token;
    }
    absl::StatusOr<std::unique_ptr<AnswerBackend>> b = CreateGrpcBackend(g);
    if (!b.ok()) {
      err << "kvwire-eval: " << b.status() << "\n";
      return 2;
    }
    backend = *std::move(b);
  } else {
    err << "kvwire-eval: unknown --backend '" << c.backend
        << "' (inprocess, grpc)\n";
    return 2;
  }
  err << backend->Describe() << "\n";

  std::unique_ptr<PromptRenderer> renderer;
  if (!tokenizer_dir.empty() &&
      IsRegularFile(tokenizer_dir + "/tokenizer.json")) {
    absl::StatusOr<std::unique_ptr<PromptRenderer>> r =
        PromptRenderer::FromDirectory(tokenizer_dir);
    if (r.ok()) {
      renderer = *std::move(r);
    } else {
      err << "note: no local prompt rendering (" << r.status() << ")\n";
    }
  }

  RunOptions options;
  options.out_dir = c.out;
  options.limit = c.limit;
  options.overwrite = c.overwrite;
  options.progress = c.progress;
  options.progress_interactive = ::isatty(STDERR_FILENO) != 0;
  options.log = &err;
  options.renderer = renderer.get();
  options.dump_prompts = c.dump_prompts;
  options.stop_requested = c.stop_requested;
  options.plots = plots;
  options.grid_name = grid->name;
  absl::StatusOr<GridResult> result =
      RunGrid(*grid, *datasets, *backend, options);
  if (!result.ok()) {
    err << "kvwire-eval: " << result.status() << "\n";
    return absl::IsCancelled(result.status()) ? 130 : 1;
  }
  PrintResults(*result, out);
  return 0;
}

}  // namespace eval
}  // namespace kvwire
