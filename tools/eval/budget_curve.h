// Budget curves: accuracy against measured bytes per question, per dataset,
// from the summary.json files under <out>/<dataset>/*/ (so every run ever
// written there is included, whatever grid produced it).
//
//  * budget_curve.csv: one row per run (settings, n, accuracy and its 95%
//    Wilson interval, mean bytes of every kind, tokens sent, latency).
//  * budget_curve.png: accuracy (%) vs bytes per question on a log axis,
//    one line per series (selection mode / scheme; each series also gets its
//    full-transfer point), receiver-only and sharer-only as horizontal
//    reference lines, text-to-text as a point at its text bytes.
//  * latency_vs_bytes.png: mean seconds per question vs bytes, same series.
// The PNGs are drawn by gnuplot (Debian package gnuplot-nox) from a script
// and data files written to <out>/<dataset>/plots/, which can be edited and
// re-run by hand.
#ifndef KVWIRE_TOOLS_EVAL_BUDGET_CURVE_H_
#define KVWIRE_TOOLS_EVAL_BUDGET_CURVE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tools/eval/results.h"

namespace kvwire {
namespace eval {

// Every <dataset_dir>/*/summary.json, ordered by method, series, bytes.
absl::StatusOr<std::vector<RunSummary>> ReadSummaries(
    const std::string& dataset_dir);

// The CSV (header + one row per summary); `with_dataset` adds a first column.
std::string BudgetCurveCsv(const std::vector<RunSummary>& summaries);

struct PlotOptions {
  bool enabled = true;
  std::string gnuplot = "gnuplot";  // Executable.
};

struct CurveFiles {
  std::string csv;
  std::vector<std::string> pngs;  // Empty when plotting is off or failed.
  std::string script;
  std::string plot_error;  // Why no PNG was drawn, if so.
};

// Writes budget_curve.csv, the gnuplot script and data, and (if enabled and
// gnuplot runs) the two PNGs for `dataset_dir`. A gnuplot failure is not an
// error: it is reported in CurveFiles::plot_error.
absl::StatusOr<CurveFiles> WriteBudgetCurve(const std::string& dataset_dir,
                                            const std::string& dataset_name,
                                            const PlotOptions& options);

// The gnuplot script for `summaries` (data files under `data_dir`, which is
// relative to where gnuplot runs); exposed for tests. Also fills `data`
// with (file name, contents) pairs to write.
std::string GnuplotScript(
    const std::vector<RunSummary>& summaries, const std::string& dataset_name,
    const std::string& data_dir,
    std::vector<std::pair<std::string, std::string>>* data);

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_BUDGET_CURVE_H_
