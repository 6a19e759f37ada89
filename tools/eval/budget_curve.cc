#include "tools/eval/budget_curve.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace eval {
namespace {

namespace fs = std::filesystem;

int MethodOrder(const std::string& method) {
  if (method == "receiver-only") return 0;
  if (method == "sharer-only") return 1;
  if (method == "text-to-text") return 2;
  return 3;
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  return absl::StrCat("\"", absl::StrReplaceAll(s, {{"\"", "\"\""}}), "\"");
}

std::string Num(double v, int decimals) {
  return absl::StrFormat("%.*f", decimals, v);
}

// Gnuplot string literal (double-quoted; backslashes and quotes escaped).
std::string GpString(const std::string& s) {
  return absl::StrCat(
      "\"", absl::StrReplaceAll(s, {{"\\", "\\\\"}, {"\"", "\\\""}}), "\"");
}

std::string ShellQuote(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "'\\''"}}), "'");
}

const char* ColorFor(const std::string& selection, size_t fallback_index) {
  static const std::map<std::string, const char*>* colors =
      new std::map<std::string, const char*>{
          {"all", "#1f77b4"},
          {"front", "#d62728"},
          {"back", "#2ca02c"},
          {"random", "#7f7f7f"},
          {"knorm_topk", "#9467bd"},
          {"vnorm_topk", "#ff7f0e"},
          {"proj_vnorm_topk", "#8c564b"},
          {"delta_proj_vnorm_topk", "#e377c2"},
          {"receiver_attention", "#17becf"},
          {"receiver_vnorm", "#bcbd22"},
          {"budget", "#000080"}};
  static const char* const kCycle[] = {"#1b9e77", "#d95f02", "#7570b3",
                                       "#e7298a", "#66a61e", "#e6ab02"};
  auto it = colors->find(selection);
  if (it != colors->end()) return it->second;
  return kCycle[fallback_index % 6];
}

int PointTypeFor(const std::string& scheme) {
  if (scheme == "bf16") return 5;      // Filled square.
  if (scheme == "fp16") return 4;      // Square.
  if (scheme == "int8") return 7;      // Filled circle.
  if (scheme == "int4") return 9;      // Filled triangle.
  if (scheme == "int2") return 11;     // Filled down-triangle.
  if (scheme == "nf4") return 13;      // Filled diamond.
  if (scheme == "fp8_e4m3") return 6;  // Circle.
  if (scheme == "fp8_e5m2") return 8;  // Triangle.
  return 3;
}

int DashTypeFor(const RunSummary& s) {
  if (!s.run.schedule.empty()) return 2;
  if (s.run.zstd_level > 0) return 3;
  if (s.run.min_tokens > 0) return 4;
  return 1;
}

struct Point {
  double bytes = 0;
  const RunSummary* summary = nullptr;
};

std::string DataRow(const Point& p) {
  const RunSummary& s = *p.summary;
  return absl::StrCat(Num(p.bytes, 1), "\t", Num(100 * s.accuracy, 4), "\t",
                      Num(100 * s.ci95.low, 4), "\t", Num(100 * s.ci95.high, 4),
                      "\t", Num(s.mean_timings.total, 6), "\t",
                      Num(s.p50_total_seconds, 6), "\t",
                      Num(s.p90_total_seconds, 6), "\t", s.run.run_id, "\n");
}

}  // namespace

absl::StatusOr<std::vector<RunSummary>> ReadSummaries(
    const std::string& dataset_dir) {
  std::vector<RunSummary> out;
  std::error_code ec;
  if (!fs::is_directory(dataset_dir, ec)) return out;
  for (const auto& entry : fs::directory_iterator(dataset_dir, ec)) {
    if (!entry.is_directory()) continue;
    const std::string path = (entry.path() / "summary.json").string();
    if (!IsRegularFile(path)) continue;
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      return absl::DataLossError(absl::StrCat(path, ": ", e.what()));
    }
    absl::StatusOr<RunSummary> s = SummaryFromJson(j);
    if (!s.ok()) {
      return absl::DataLossError(
          absl::StrCat(path, ": ", s.status().message()));
    }
    out.push_back(*std::move(s));
  }
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot list ", dataset_dir, ": ", ec.message()));
  }
  std::sort(out.begin(), out.end(),
            [](const RunSummary& a, const RunSummary& b) {
              const int ma = MethodOrder(a.run.method);
              const int mb = MethodOrder(b.run.method);
              if (ma != mb) return ma < mb;
              if (a.run.series != b.run.series) {
                return a.run.series < b.run.series;
              }
              if (a.mean_bytes != b.mean_bytes) {
                return a.mean_bytes < b.mean_bytes;
              }
              return a.run.run_id < b.run.run_id;
            });
  return out;
}

std::string BudgetCurveCsv(const std::vector<RunSummary>& summaries) {
  std::string csv =
      "dataset,run_id,method,series,scheme,granularity,selection,proportion,"
      "min_tokens,schedule,zstd_level,budget_bytes,n,expected,complete,"
      "correct,accuracy,ci95_low,ci95_high,mean_bytes,mean_wire_bytes,"
      "mean_serialized_bytes,mean_payload_bytes,mean_scale_bytes,"
      "mean_index_bytes,mean_header_bytes,mean_raw_kv_bytes,mean_text_bytes,"
      "mean_tokens_sent,mean_layers_sent,mean_prompt_tokens,"
      "mean_output_tokens,mean_total_seconds,p50_total_seconds,"
      "p90_total_seconds,mean_ttft_seconds,mean_sharer_compute_seconds,"
      "mean_encode_seconds,mean_decode_seconds,mean_fuse_seconds,"
      "mean_receiver_prefill_seconds,fell_back,skipped_items,sharer,"
      "token_alignment,alignment_strategy,refused\n";
  for (const RunSummary& s : summaries) {
    const RunInfo& r = s.run;
    const bool c2c = r.method == "c2c";
    std::vector<std::string> f = {
        CsvField(r.dataset),
        CsvField(r.run_id),
        CsvField(r.method),
        CsvField(r.series),
        CsvField(c2c ? r.scheme : ""),
        CsvField(c2c ? r.granularity : ""),
        CsvField(c2c ? r.selection : ""),
        c2c ? absl::StrFormat("%g", r.proportion) : "",
        c2c ? absl::StrCat(r.min_tokens) : "",
        CsvField(r.schedule),
        c2c ? absl::StrCat(r.zstd_level) : "",
        c2c ? absl::StrCat(r.budget_bytes) : "",
        absl::StrCat(s.n),
        absl::StrCat(s.expected),
        s.complete ? "true" : "false",
        absl::StrCat(s.correct),
        Num(s.accuracy, 6),
        Num(s.ci95.low, 6),
        Num(s.ci95.high, 6),
        Num(s.mean_bytes, 3),
        Num(s.mean_wire_bytes, 3),
        Num(s.mean_serialized_bytes, 3),
        Num(s.mean_payload_bytes, 3),
        Num(s.mean_scale_bytes, 3),
        Num(s.mean_index_bytes, 3),
        Num(s.mean_header_bytes, 3),
        Num(s.mean_raw_kv_bytes, 3),
        Num(s.mean_text_bytes, 3),
        Num(s.mean_tokens_sent, 3),
        Num(s.mean_layers_sent, 3),
        Num(s.mean_prompt_tokens, 3),
        Num(s.mean_output_tokens, 3),
        Num(s.mean_timings.total, 6),
        Num(s.p50_total_seconds, 6),
        Num(s.p90_total_seconds, 6),
        Num(s.mean_timings.time_to_first_token, 6),
        Num(s.mean_timings.sharer_compute, 6),
        Num(s.mean_timings.encode, 6),
        Num(s.mean_timings.decode, 6),
        Num(s.mean_timings.fuse, 6),
        Num(s.mean_timings.receiver_prefill, 6),
        absl::StrCat(s.fell_back),
        absl::StrCat(s.skipped_items),
        CsvField(r.sharer),
        CsvField(r.token_alignment),
        CsvField(r.alignment_strategy),
        CsvField(s.refused)};
    absl::StrAppend(&csv, absl::StrJoin(f, ","), "\n");
  }
  return csv;
}

std::string GnuplotScript(
    const std::vector<RunSummary>& summaries, const std::string& dataset_name,
    const std::string& data_dir,
    std::vector<std::pair<std::string, std::string>>* data) {
  std::map<std::string, const RunSummary*> by_id;
  for (const RunSummary& s : summaries) by_id[s.run.run_id] = &s;

  // Series of C2C runs (ordered by first appearance), text-to-text points,
  // baseline lines.
  std::vector<std::string> order;
  std::map<std::string, std::vector<Point>> series;
  std::vector<const RunSummary*> baselines;
  std::vector<const RunSummary*> t2t;
  for (const RunSummary& s : summaries) {
    if (s.n == 0) continue;
    if (s.run.method == "receiver-only" || s.run.method == "sharer-only") {
      baselines.push_back(&s);
    } else if (s.run.method == "text-to-text") {
      t2t.push_back(&s);
    } else if (s.mean_bytes > 0) {
      const std::string& label = s.run.series;
      if (!series.count(label)) order.push_back(label);
      series[label].push_back(Point{s.mean_bytes, &s});
    }
  }
  // Each partial-selection series gets its full-transfer point.
  for (auto& [label, points] : series) {
    std::set<std::string> ids;
    for (const Point& p : points) ids.insert(p.summary->run.run_id);
    std::set<std::string> anchors;
    for (const Point& p : points) {
      const std::string& a = p.summary->run.anchor_id;
      if (!a.empty() && !ids.count(a)) anchors.insert(a);
    }
    for (const std::string& a : anchors) {
      auto it = by_id.find(a);
      if (it != by_id.end() && it->second->n > 0 &&
          it->second->mean_bytes > 0) {
        points.push_back(Point{it->second->mean_bytes, it->second});
      }
    }
    std::sort(points.begin(), points.end(),
              [](const Point& x, const Point& y) { return x.bytes < y.bytes; });
  }

  // Ranges.
  double xmin = std::numeric_limits<double>::infinity();
  double xmax = 0;
  double ymin = 100, ymax = 0;
  double lmin = std::numeric_limits<double>::infinity(), lmax = 0;
  auto take = [&](double bytes, const RunSummary& s) {
    if (bytes > 0) {
      xmin = std::min(xmin, bytes);
      xmax = std::max(xmax, bytes);
    }
    ymin = std::min(ymin, 100 * s.ci95.low);
    ymax = std::max(ymax, 100 * s.ci95.high);
    lmin = std::min(lmin, s.mean_timings.total);
    lmax = std::max(lmax, s.mean_timings.total);
  };
  int64_t max_n = 0;
  bool incomplete = false;
  for (const RunSummary& s : summaries) {
    if (s.n == 0) continue;
    max_n = std::max(max_n, s.n);
    incomplete |= !s.complete;
  }
  for (const auto& [label, points] : series) {
    for (const Point& p : points) take(p.bytes, *p.summary);
  }
  for (const RunSummary* s : t2t) take(s->mean_bytes, *s);
  for (const RunSummary* s : baselines) take(0, *s);
  if (!(xmax > 0)) {
    xmin = 1e3;
    xmax = 1e7;
  } else {
    xmin /= 2;
    xmax *= 2;
  }
  ymin = std::max(0.0, std::floor((ymin - 5) / 5) * 5);
  ymax = std::min(100.0, std::ceil((ymax + 5) / 5) * 5);
  if (ymax <= ymin) ymax = ymin + 10;
  // Keep points at exactly 0% / 100% off the frame.
  if (ymin <= 0) ymin = -2;
  if (ymax >= 100) ymax = 102;
  if (!std::isfinite(lmin)) {
    lmin = 0;
    lmax = 1;
  }

  // Data files.
  std::vector<std::string> series_files;
  for (size_t i = 0; i < order.size(); ++i) {
    std::string text = absl::StrCat(
        "# series: ", order[i],
        "\n# bytes\taccuracy%\tci_low%\tci_high%\tmean_s\tp50_s\tp90_s\trun\n");
    for (const Point& p : series[order[i]]) absl::StrAppend(&text, DataRow(p));
    const std::string name = absl::StrCat("series_", i, ".dat");
    data->emplace_back(name, std::move(text));
    series_files.push_back(name);
  }
  std::string t2t_text =
      "# text-to-text\n# bytes\taccuracy%\tci_low%\tci_high%\tmean_s\tp50_s\t"
      "p90_s\trun\n";
  for (const RunSummary* s : t2t) {
    if (s->mean_bytes > 0) {
      absl::StrAppend(&t2t_text, DataRow(Point{s->mean_bytes, s}));
    }
  }
  data->emplace_back("text_to_text.dat", t2t_text);
  const bool have_t2t =
      std::any_of(t2t.begin(), t2t.end(),
                  [](const RunSummary* s) { return s->mean_bytes > 0; });

  auto path = [&](const std::string& name) {
    return GpString(data_dir.empty() ? name
                                     : absl::StrCat(data_dir, "/", name));
  };
  // Plot clauses: `accuracy` picks the y column / reference values.
  auto clauses = [&](bool accuracy) {
    std::vector<std::string> c;
    int dash = 2;
    for (const RunSummary* b : baselines) {
      const double y = accuracy ? 100 * b->accuracy : b->mean_timings.total;
      const std::string color =
          b->run.method == "receiver-only" ? "#444444" : "#b8860b";
      c.push_back(absl::StrFormat(
          "%.6f with lines dt %d lw 2 lc rgb %s title %s", y, dash++,
          GpString(color),
          GpString(accuracy ? absl::StrFormat("%s %.1f%% (n=%d)", b->run.run_id,
                                              100 * b->accuracy, b->n)
                            : absl::StrFormat("%s %.3f s", b->run.run_id,
                                              b->mean_timings.total))));
    }
    if (have_t2t) {
      c.push_back(absl::StrCat(path("text_to_text.dat"),
                               accuracy ? " using 1:2:3:4 with yerrorbars"
                                        : " using 1:5 with points",
                               " pt 12 ps 2.5 lw 2 lc rgb \"#000000\" title ",
                               GpString("text-to-text (at its text bytes)")));
    }
    for (size_t i = 0; i < order.size(); ++i) {
      const RunSummary& first = *series[order[i]].front().summary;
      const std::string selection =
          first.run.budget_bytes > 0 ? "budget" : first.run.selection;
      const std::string color = ColorFor(selection, i);
      if (accuracy) {
        // Intervals thin and translucent ("#AARRGGBB"), under the lines.
        c.push_back(absl::StrCat(path(series_files[i]),
                                 " using 1:2:3:4 with yerrorbars ps 0 lw 1 "
                                 "dt 1 lc rgb ",
                                 GpString(absl::StrCat("#88", color.substr(1))),
                                 " notitle"));
      }
      c.push_back(absl::StrCat(
          path(series_files[i]), accuracy ? " using 1:2" : " using 1:5",
          " with linespoints lw 2 ps 1.4 pt ", PointTypeFor(first.run.scheme),
          " dt ", DashTypeFor(first), " lc rgb ", GpString(color), " title ",
          GpString(order[i])));
    }
    return absl::StrJoin(c, ", \\\n     ");
  };

  const std::string subtitle =
      absl::StrCat("n = ", max_n, " questions per run",
                   incomplete ? " (some runs incomplete)" : "");
  std::string gp;
  absl::StrAppend(
      &gp, "# Written by kvwire-eval; re-run with: gnuplot budget_curve.gp\n",
      "set terminal pngcairo size 1500,850 font \"DejaVu Sans,11\"\n",
      "set termoption noenhanced\n", "set datafile separator \"\\t\"\n",
      "set logscale x 10\n", "set format x \"%.0s %cB\"\n", "set mxtics 10\n",
      "set bars small\n", "set grid xtics ytics mxtics lc rgb \"#dddddd\"\n",
      "set key outside right top vertical Left reverse spacing 1.1 font "
      "\",10\"\n",
      "set bmargin 5\n",
      absl::StrFormat("set xrange [%.6g:%.6g]\n", xmin, xmax));
  absl::StrAppend(
      &gp, "\nset output \"budget_curve.png\"\n",
      absl::StrFormat(
          "set title %s\n",
          GpString(absl::StrCat(dataset_name,
                                ": accuracy vs measured bytes per question\\n",
                                subtitle))),
      "set xlabel \"bytes on the wire per question (log scale; text-to-text: "
      "its text message)\"\n",
      "set ylabel \"accuracy (%), 95% Wilson interval\"\n",
      absl::StrFormat("set yrange [%.6g:%.6g]\n", ymin, ymax), "plot ",
      clauses(true), "\n");
  absl::StrAppend(
      &gp, "\nset output \"latency_vs_bytes.png\"\n",
      absl::StrFormat(
          "set title %s\n",
          GpString(absl::StrCat(dataset_name,
                                ": latency vs measured bytes per question\\n",
                                subtitle))),
      "set ylabel \"mean seconds per question (end to end)\"\n",
      absl::StrFormat("set yrange [0:%.6g]\n", lmax > 0 ? lmax * 1.15 : 1.0),
      "plot ", clauses(false), "\n");
  // GpString escaped the "\n" in titles; gnuplot needs it as an escape.
  return absl::StrReplaceAll(gp, {{"\\\\n", "\\n"}});
}

absl::StatusOr<CurveFiles> WriteBudgetCurve(const std::string& dataset_dir,
                                            const std::string& dataset_name,
                                            const PlotOptions& options) {
  ASSIGN_OR_RETURN(std::vector<RunSummary> summaries,
                   ReadSummaries(dataset_dir));
  CurveFiles files;
  files.csv = (fs::path(dataset_dir) / "budget_curve.csv").string();
  RETURN_IF_ERROR(WriteStringToFile(files.csv, BudgetCurveCsv(summaries)));

  const fs::path plot_dir = fs::path(dataset_dir) / "plots";
  std::error_code ec;
  fs::create_directories(plot_dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", plot_dir.string(), ": ", ec.message()));
  }
  // Refused runs have no point (their rows stay in the CSV).
  summaries.erase(
      std::remove_if(summaries.begin(), summaries.end(),
                     [](const RunSummary& s) { return !s.refused.empty(); }),
      summaries.end());
  std::vector<std::pair<std::string, std::string>> data;
  std::string script = GnuplotScript(summaries, dataset_name, "plots", &data);
  for (const auto& [name, text] : data) {
    RETURN_IF_ERROR(WriteStringToFile((plot_dir / name).string(), text));
  }
  files.script = (fs::path(dataset_dir) / "budget_curve.gp").string();
  RETURN_IF_ERROR(WriteStringToFile(files.script, script));
  if (!options.enabled) return files;

  const std::string log = (plot_dir / "gnuplot.log").string();
  const std::string command = absl::StrCat(
      "cd ", ShellQuote(dataset_dir), " && ", ShellQuote(options.gnuplot),
      " budget_curve.gp > ", ShellQuote(log), " 2>&1");
  const int rc = std::system(command.c_str());
  if (rc != 0) {
    absl::StatusOr<std::string> out = ReadFileToString(log);
    files.plot_error = absl::StrCat("gnuplot failed (exit ", rc,
                                    "; is gnuplot-nox installed?): ",
                                    out.ok() ? *out : std::string("no log"));
    return files;
  }
  for (const char* png : {"budget_curve.png", "latency_vs_bytes.png"}) {
    const std::string p = (fs::path(dataset_dir) / png).string();
    if (IsRegularFile(p)) files.pngs.push_back(p);
  }
  return files;
}

}  // namespace eval
}  // namespace kvwire
