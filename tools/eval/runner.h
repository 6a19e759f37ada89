// Runs evaluation runs and grids: for each dataset and run, ask the backend
// every question, append one JSON line per answer to
// <out>/<dataset>/<run_id>/predictions.jsonl (flushed after each, so an
// interrupted run loses at most the question in flight), and write
// summary.json; after each dataset, the budget curve CSV and plots.
//
// Resuming: a rerun reads predictions.jsonl, drops a torn last line, and
// asks only the questions whose id is not there yet. run.json records the
// run's identity (method, resolved TransferSpec, selection strategy,
// max_new_tokens, backend kind); resuming a directory written with a
// different identity is refused unless `overwrite` is set (which starts the
// run over).
#ifndef KVWIRE_TOOLS_EVAL_RUNNER_H_
#define KVWIRE_TOOLS_EVAL_RUNNER_H_

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/eval/backend.h"
#include "tools/eval/budget_curve.h"
#include "tools/eval/dataset.h"
#include "tools/eval/grid.h"
#include "tools/eval/prompt.h"
#include "tools/eval/results.h"

namespace kvwire {
namespace eval {

struct RunOptions {
  std::string out_dir;  // Required.
  int limit = 0;        // First N scored items of each dataset (0: all).
  bool overwrite = false;
  bool progress = true;
  bool progress_interactive = false;  // Redraw in place (a terminal).
  std::ostream* log = nullptr;        // Progress and notes; nullptr: none.
  // Optional: the receiver's tokenizer + template, to record prompt lengths
  // the backend does not report and to dump prompts.
  const PromptRenderer* renderer = nullptr;
  bool dump_prompts = false;  // <out>/<dataset>/prompts.jsonl
  // Polled before each question; true stops the run cleanly (CANCELLED).
  std::function<bool()> stop_requested;
  PlotOptions plots;
  std::string grid_name;  // Recorded in run.json.
};

// The request id of one question: "<dataset>/<run id>/<item id>", or, when
// that exceeds the 64 bytes the protocol allows (long grid ids such as
// M7's "-sharer_NAME-align_MODE"), "<dataset>/<16 hex digits of the run
// id's FNV-1a hash>/<item id>", cut to 64 bytes. Stable across runs.
std::string EvalRequestId(const std::string& dataset, const std::string& run_id,
                          const std::string& item_id);

// The items a run covers (the first `limit`, or all).
std::vector<const EvalItem*> SelectItems(const Dataset& dataset, int limit);

// One run on one dataset. CANCELLED when stop_requested fired (the summary
// of what is done is still written).
absl::StatusOr<RunSummary> RunOne(const Dataset& dataset,
                                  const ResolvedRun& run,
                                  AnswerBackend& backend,
                                  const RunOptions& options);

struct GridResult {
  std::vector<RunSummary> summaries;
  std::vector<CurveFiles> curves;  // One per dataset.
  std::string combined_csv;        // <out>/budget_curve.csv (all datasets).
};

// Every run of `grid` on every dataset, then the curves. Runs are resolved
// against backend.layout() first, so a bad schedule fails before any
// question is asked. CANCELLED as RunOne (curves are still written).
absl::StatusOr<GridResult> RunGrid(const Grid& grid,
                                   const std::vector<Dataset>& datasets,
                                   AnswerBackend& backend,
                                   const RunOptions& options);

// Rewrites the curves (CSV + plots) of every dataset directory under
// `out_dir` from the summaries there, without running anything.
absl::StatusOr<GridResult> RewriteCurves(const std::string& out_dir,
                                         const PlotOptions& plots);

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_RUNNER_H_
