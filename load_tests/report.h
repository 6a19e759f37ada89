// kvwire-load's outputs: a JSON report (everything), a CSV table (one row
// per load point and scenario, plus an "ALL" row per point), PNG plots
// drawn by gnuplot (latency vs load, throughput vs load, time to first
// token and inter-token latency vs load, bytes per request by spec) and a
// text summary. Latencies are reported as p50, p90, p99 (p99.9, max).
#ifndef KVWIRE_LOAD_TESTS_REPORT_H_
#define KVWIRE_LOAD_TESTS_REPORT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "load_tests/load_runner.h"
#include "load_tests/scenario.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace load {

// The JSON of one distribution: p50, p90, p99, p99.9, max, min, mean
// (seconds) and count.
nlohmann::json DistributionJson(const LatencySamples& samples);
// The JSON of one scenario's (or a point's overall) counters over
// `seconds` of measured time.
nlohmann::json StatsJson(const ScenarioStats& stats, double seconds);
nlohmann::json ReportJson(const LoadConfig& config, const RunResult& result);

// The CSV text.
std::string ReportCsv(const LoadConfig& config, const RunResult& result);

// A few lines per point for stdout.
std::string SummaryText(const LoadConfig& config, const RunResult& result);

// Writes report.json, report.csv and (with `plots`) the gnuplot data,
// script and PNGs into `out_dir` (created). A missing gnuplot is reported
// as FAILED_PRECONDITION after the JSON and CSV are written.
absl::Status WriteReport(const std::string& out_dir, const LoadConfig& config,
                         const RunResult& result, bool plots);

}  // namespace load
}  // namespace kvwire

#endif  // KVWIRE_LOAD_TESTS_REPORT_H_
