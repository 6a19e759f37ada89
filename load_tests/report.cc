#include "load_tests/report.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace kvwire {
namespace load {
namespace {

using nlohmann::json;

double PerRequest(int64_t total, int64_t requests) {
  return requests > 0 ? static_cast<double>(total) / requests : 0;
}

double Rate(double amount, double seconds) {
  return seconds > 0 ? amount / seconds : 0;
}

std::string ModeName(LoopMode mode) {
  return mode == LoopMode::kOpen ? "open" : "closed";
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  return absl::StrCat("\"", absl::StrReplaceAll(s, {{"\"", "\"\""}}), "\"");
}

std::string ErrorsText(const ScenarioStats& s) {
  std::vector<std::string> parts;
  for (const auto& [code, n] : s.errors)
    parts.push_back(absl::StrCat(code, ":", n));
  return absl::StrJoin(parts, ";");
}

// Runs a command; its exit status.
int RunCommand(const std::string& command) {
  const int rc = std::system(command.c_str());
  if (rc == -1) return -1;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

std::string TtftDefinition(const LoadConfig& config) {
  const std::string from = config.mode == LoopMode::kOpen
                               ? "from the intended send time"
                               : "from the send time";
  switch (config.rpc) {
    case RpcKind::kShare:
      return absl::StrCat("time to the first KV block or fragment, ", from);
    case RpcKind::kAnswerStream:
      return absl::StrCat("time to the first streamed token, ", from);
    case RpcKind::kOpenAiChat:
      return absl::StrCat("time to the first SSE chunk with content, ", from,
                          " (a new connection's TCP and TLS set-up included)");
    case RpcKind::kAnswer:
      break;
  }
  return "wait before sending + the server's time_to_first_token";
}

std::string InterTokenDefinition(RpcKind rpc) {
  switch (rpc) {
    case RpcKind::kAnswerStream:
      return "gap between consecutive token events, pooled over requests";
    case RpcKind::kOpenAiChat:
      return "gap between consecutive SSE chunks with content, pooled over "
             "requests";
    default:
      break;
  }
  return "not measured (no token stream)";
}

bool StreamsTokens(RpcKind rpc) {
  return rpc == RpcKind::kAnswerStream || rpc == RpcKind::kOpenAiChat;
}

}  // namespace

json DistributionJson(const LatencySamples& samples) {
  json j = json::object();
  j["count"] = samples.count();
  for (double p : kReportedPercentiles) {
    j[PercentileLabel(p)] = samples.Percentile(p);
  }
  j["max"] = samples.Max();
  j["min"] = samples.Min();
  j["mean"] = samples.Mean();
  return j;
}

json StatsJson(const ScenarioStats& s, double seconds) {
  json j = json::object();
  j["requests"] = s.total();
  j["ok"] = s.ok;
  j["errors"] = s.error_count();
  j["errors_by_status"] = json::object();
  for (const auto& [code, n] : s.errors) j["errors_by_status"][code] = n;
  j["error_examples"] = json::object();
  for (const auto& [code, message] : s.error_examples) {
    j["error_examples"][code] = message;
  }
  j["measured_seconds"] = seconds;
  j["throughput_rps"] = Rate(s.ok, seconds);
  j["latency_seconds"] = DistributionJson(s.latency);
  j["ttft_seconds"] = DistributionJson(s.ttft);
  j["inter_token_seconds"] = DistributionJson(s.inter_token);
  j["service_time_seconds"] = DistributionJson(s.service_time);
  j["stream_seconds"] = DistributionJson(s.stream_time);
  // Payload rate of the streaming phase alone (first block -> last chunk),
  // per call: the transport's speed, without the prefill before it.
  j["stream_payload_bytes_per_second_p50"] =
      s.stream_time.Percentile(50) > 0
          ? PerRequest(s.payload_bytes, s.ok) / s.stream_time.Percentile(50)
          : 0.0;
  j["raw_bytes"] = s.raw_bytes;
  j["payload_bytes"] = s.payload_bytes;
  j["serialized_bytes"] = s.serialized_bytes;
  j["wire_bytes"] = s.wire_bytes;
  j["payload_bytes_per_request"] = PerRequest(s.payload_bytes, s.ok);
  j["wire_bytes_per_request"] = PerRequest(s.wire_bytes, s.ok);
  j["raw_bytes_per_request"] = PerRequest(s.raw_bytes, s.ok);
  j["wire_bytes_per_second"] = Rate(static_cast<double>(s.wire_bytes), seconds);
  j["payload_bytes_per_second"] =
      Rate(static_cast<double>(s.payload_bytes), seconds);
  j["compression_ratio"] =
      s.serialized_bytes > 0
          ? static_cast<double>(s.raw_bytes) / s.serialized_bytes
          : 0.0;
  j["prompt_tokens_per_request"] = PerRequest(s.prompt_tokens, s.ok);
  j["tokens_sent_per_request"] = PerRequest(s.tokens_sent, s.ok);
  j["generated_tokens"] = s.generated_tokens;
  j["fallbacks"] = s.fallbacks;
  return j;
}

json ReportJson(const LoadConfig& config, const RunResult& result) {
  json j = json::object();
  j["tool"] = "kvwire-load";
  j["name"] = config.name;
  j["target"] = config.target;
  j["rpc"] = RpcKindName(config.rpc);
  j["mode"] = ModeName(config.mode);
  j["arrivals"] = config.uniform_arrivals ? "uniform" : "poisson";
  j["finished_at"] =
      absl::FormatTime(absl::RFC3339_sec, absl::Now(), absl::UTCTimeZone());
  j["wall_seconds"] = result.wall_seconds;
  j["warmup_seconds"] = config.warmup_seconds;
  j["duration_seconds"] = config.duration_seconds;
  j["max_requests"] = config.max_requests;
  j["deadline_seconds"] = config.deadline_seconds;
  j["seed"] = config.seed;
  j["latency_definition"] =
      config.mode == LoopMode::kOpen
          ? "completion - intended send time (coordinated-omission corrected)"
          : "completion - send time";
  j["ttft_definition"] = TtftDefinition(config);
  j["inter_token_definition"] = InterTokenDefinition(config.rpc);
  if (config.rpc == RpcKind::kOpenAiChat) {
    j["model"] = config.model;
    j["kvwire_extension"] = config.kvwire_extension;
  }
  json scenarios = json::array();
  for (const Scenario& s : config.scenarios) {
    scenarios.push_back({{"name", s.name},
                         {"spec", s.spec_label},
                         {"spec_proto", s.spec.ShortDebugString()},
                         {"prompt_tokens", s.prompt_tokens},
                         {"weight", s.weight}});
  }
  j["scenarios"] = scenarios;
  if (result.sharer_info.has_model()) {
    const v1::ModelInfo& m = result.sharer_info.model();
    j["sharer"] = {{"name", m.name()},
                   {"architecture", m.architecture()},
                   {"fingerprint", m.fingerprint()},
                   {"num_layers", m.num_layers()},
                   {"num_kv_heads", m.num_kv_heads()},
                   {"head_dim", m.head_dim()},
                   {"version", result.sharer_info.version()}};
  }
  j["totals_including_warmup"] = {
      {"requests", result.requests_including_warmup},
      {"ok", result.ok_including_warmup},
      {"wire_bytes", result.wire_bytes_including_warmup},
      {"serialized_bytes", result.serialized_bytes_including_warmup},
      {"payload_bytes", result.payload_bytes_including_warmup}};
  json points = json::array();
  for (const PointResult& p : result.points) {
    json pj = json::object();
    pj["label"] = p.label;
    pj["load"] = p.load;
    pj["offered_rate"] = p.offered_rate;
    pj["measured_seconds"] = p.measured_seconds;
    pj["max_backlog"] = p.max_backlog;
    pj["late_sends"] = p.late_sends;
    pj["warmup_requests"] = p.warmup_requests;
    pj["all"] = StatsJson(p.all, p.measured_seconds);
    json sj = json::array();
    for (size_t i = 0; i < p.scenarios.size(); ++i) {
      json one = StatsJson(p.scenarios[i], p.measured_seconds);
      one["name"] = config.scenarios[i].name;
      one["spec"] = config.scenarios[i].spec_label;
      one["prompt_tokens"] = config.scenarios[i].prompt_tokens;
      sj.push_back(one);
    }
    pj["scenarios"] = sj;
    points.push_back(pj);
  }
  j["points"] = points;
  return j;
}

std::string ReportCsv(const LoadConfig& config, const RunResult& result) {
  std::string out =
      "point,load,scenario,spec,prompt_tokens,requests,ok,errors,"
      "errors_by_status,throughput_rps,latency_p50_ms,latency_p90_ms,"
      "latency_p99_ms,latency_p99.9_ms,latency_max_ms,ttft_p50_ms,"
      "ttft_p99_ms,wire_MBps,payload_MBps,payload_bytes_per_request,"
      "wire_bytes_per_request,compression_ratio,tokens_sent_per_request,"
      "fallbacks,ttft_p90_ms,itl_p50_ms,itl_p90_ms,itl_p99_ms,"
      "generated_tokens\n";
  auto row = [&](const PointResult& p, const std::string& name,
                 const std::string& spec, int prompt_tokens,
                 const ScenarioStats& s) {
    const double secs = p.measured_seconds;
    absl::StrAppend(
        &out,
        absl::StrFormat(
            "%s,%g,%s,%s,%d,%d,%d,%d,%s,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,"
            "%.3f,%.3f,%.3f,%.1f,%.1f,%.3f,%.1f,%d,%.3f,%.3f,%.3f,%.3f,%d\n",
            CsvField(p.label), p.load, CsvField(name), CsvField(spec),
            prompt_tokens, s.total(), s.ok, s.error_count(),
            CsvField(ErrorsText(s)), Rate(s.ok, secs),
            s.latency.Percentile(50) * 1e3, s.latency.Percentile(90) * 1e3,
            s.latency.Percentile(99) * 1e3, s.latency.Percentile(99.9) * 1e3,
            s.latency.Max() * 1e3, s.ttft.Percentile(50) * 1e3,
            s.ttft.Percentile(99) * 1e3, Rate(s.wire_bytes, secs) / 1e6,
            Rate(s.payload_bytes, secs) / 1e6,
            PerRequest(s.payload_bytes, s.ok), PerRequest(s.wire_bytes, s.ok),
            s.serialized_bytes > 0
                ? static_cast<double>(s.raw_bytes) / s.serialized_bytes
                : 0.0,
            PerRequest(s.tokens_sent, s.ok), s.fallbacks,
            s.ttft.Percentile(90) * 1e3, s.inter_token.Percentile(50) * 1e3,
            s.inter_token.Percentile(90) * 1e3,
            s.inter_token.Percentile(99) * 1e3, s.generated_tokens));
  };
  for (const PointResult& p : result.points) {
    for (size_t i = 0; i < p.scenarios.size(); ++i) {
      const Scenario& sc = config.scenarios[i];
      row(p, sc.name, sc.spec_label, sc.prompt_tokens, p.scenarios[i]);
    }
    row(p, "ALL", "", 0, p.all);
  }
  return out;
}

std::string SummaryText(const LoadConfig& config, const RunResult& result) {
  std::string out = absl::StrFormat(
      "kvwire-load %s: %s %s-loop against %s, %.1fs wall\n", config.name,
      RpcKindName(config.rpc), ModeName(config.mode), config.target,
      result.wall_seconds);
  absl::StrAppend(
      &out, absl::StrFormat("%-18s %-22s %7s %6s %9s %9s %9s %9s %9s %9s "
                            "%10s %11s\n",
                            "point", "scenario", "ok", "err", "req/s", "p50 ms",
                            "p90 ms", "p99 ms", "p99.9 ms", "ttft p50",
                            "wire MB/s", "payload B/req"));
  auto line = [&](const PointResult& p, const std::string& name,
                  const ScenarioStats& s) {
    const double secs = p.measured_seconds;
    absl::StrAppend(
        &out,
        absl::StrFormat(
            "%-18s %-22s %7d %6d %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %10.2f "
            "%11.0f\n",
            p.label, name.substr(0, 22), s.ok, s.error_count(),
            Rate(s.ok, secs), s.latency.Percentile(50) * 1e3,
            s.latency.Percentile(90) * 1e3, s.latency.Percentile(99) * 1e3,
            s.latency.Percentile(99.9) * 1e3, s.ttft.Percentile(50) * 1e3,
            Rate(s.wire_bytes, secs) / 1e6, PerRequest(s.payload_bytes, s.ok)));
  };
  for (const PointResult& p : result.points) {
    for (size_t i = 0; i < p.scenarios.size(); ++i) {
      line(p, config.scenarios[i].name, p.scenarios[i]);
    }
    if (p.scenarios.size() > 1) line(p, "ALL", p.all);
    if (!p.all.errors.empty()) {
      absl::StrAppend(&out, "  errors: ", ErrorsText(p.all), "\n");
      for (const auto& [code, message] : p.all.error_examples) {
        absl::StrAppend(&out, "    ", code, ": ", message, "\n");
      }
    }
    if (p.max_backlog > 0) {
      absl::StrAppend(&out, "  generator backlog reached ", p.max_backlog,
                      " (max_in_flight); latencies include the wait\n");
    }
  }
  if (config.rpc == RpcKind::kShare) return out;
  // Time to first token and, for streams, the gaps between tokens.
  absl::StrAppend(
      &out, "\n",
      absl::StrFormat("%-18s %-22s %9s %9s %9s %9s %9s %9s %9s\n", "point",
                      "scenario", "ttft p50", "ttft p90", "ttft p99", "itl p50",
                      "itl p90", "itl p99", "tokens"));
  auto token_line = [&](const PointResult& p, const std::string& name,
                        const ScenarioStats& s) {
    const bool itl = StreamsTokens(config.rpc);
    auto ms = [](double seconds) {
      return absl::StrFormat("%.2f", seconds * 1e3);
    };
    absl::StrAppend(
        &out,
        absl::StrFormat("%-18s %-22s %9s %9s %9s %9s %9s %9s %9d\n", p.label,
                        name.substr(0, 22), ms(s.ttft.Percentile(50)),
                        ms(s.ttft.Percentile(90)), ms(s.ttft.Percentile(99)),
                        itl ? ms(s.inter_token.Percentile(50)) : "-",
                        itl ? ms(s.inter_token.Percentile(90)) : "-",
                        itl ? ms(s.inter_token.Percentile(99)) : "-",
                        s.generated_tokens));
  };
  for (const PointResult& p : result.points) {
    for (size_t i = 0; i < p.scenarios.size(); ++i) {
      token_line(p, config.scenarios[i].name, p.scenarios[i]);
    }
    if (p.scenarios.size() > 1) token_line(p, "ALL", p.all);
  }
  absl::StrAppend(&out, "(ms; ttft: ", TtftDefinition(config), ")\n");
  return out;
}

absl::Status WriteReport(const std::string& out_dir, const LoadConfig& config,
                         const RunResult& result, bool plots) {
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  }
  auto write = [&](const std::string& name,
                   const std::string& text) -> absl::Status {
    std::ofstream f(out_dir + "/" + name);
    f << text;
    if (!f) return absl::UnavailableError(absl::StrCat("cannot write ", name));
    return absl::OkStatus();
  };
  if (absl::Status st =
          write("report.json", ReportJson(config, result).dump(2) + "\n");
      !st.ok()) {
    return st;
  }
  if (absl::Status st = write("report.csv", ReportCsv(config, result));
      !st.ok()) {
    return st;
  }
  if (!plots) return absl::OkStatus();

  // Data for gnuplot: per point (ALL), and bytes per request per scenario.
  const bool open = config.mode == LoopMode::kOpen;
  std::string points =
      "# load throughput_rps p50_ms p90_ms p99_ms p999_ms "
      "wire_MBps payload_MBps ttft_p50_ms ttft_p90_ms ttft_p99_ms "
      "itl_p50_ms itl_p90_ms itl_p99_ms\n";
  for (const PointResult& p : result.points) {
    const ScenarioStats& s = p.all;
    absl::StrAppend(
        &points,
        absl::StrFormat(
            "%g %.4f %.4f %.4f %.4f %.4f %.4f %.4f %.4f %.4f %.4f %.4f %.4f "
            "%.4f\n",
            p.load, Rate(s.ok, p.measured_seconds),
            s.latency.Percentile(50) * 1e3, s.latency.Percentile(90) * 1e3,
            s.latency.Percentile(99) * 1e3, s.latency.Percentile(99.9) * 1e3,
            Rate(s.wire_bytes, p.measured_seconds) / 1e6,
            Rate(s.payload_bytes, p.measured_seconds) / 1e6,
            s.ttft.Percentile(50) * 1e3, s.ttft.Percentile(90) * 1e3,
            s.ttft.Percentile(99) * 1e3, s.inter_token.Percentile(50) * 1e3,
            s.inter_token.Percentile(90) * 1e3,
            s.inter_token.Percentile(99) * 1e3));
  }
  std::map<std::string, ScenarioStats> by_scenario;
  std::vector<std::string> order;
  for (const PointResult& p : result.points) {
    for (size_t i = 0; i < p.scenarios.size(); ++i) {
      const std::string& name = config.scenarios[i].name;
      if (by_scenario.count(name) == 0) order.push_back(name);
      by_scenario[name].Merge(p.scenarios[i]);
    }
  }
  std::string bytes =
      "# scenario payload_KiB_per_request wire_KiB_per_request "
      "raw_KiB_per_request\n";
  for (const std::string& name : order) {
    const ScenarioStats& s = by_scenario[name];
    absl::StrAppend(&bytes,
                    absl::StrFormat("\"%s\" %.3f %.3f %.3f\n", name,
                                    PerRequest(s.payload_bytes, s.ok) / 1024,
                                    PerRequest(s.wire_bytes, s.ok) / 1024,
                                    PerRequest(s.raw_bytes, s.ok) / 1024));
  }
  if (absl::Status st = write("points.dat", points); !st.ok()) return st;
  if (absl::Status st = write("bytes_by_spec.dat", bytes); !st.ok()) return st;
  const std::string xlabel =
      open ? "offered load (requests/s, Poisson)" : "concurrent clients";
  const std::string title =
      absl::StrCat(config.name, " (", RpcKindName(config.rpc), ", ",
                   ModeName(config.mode), " loop)");
  std::string script = absl::StrCat(
      "# Generated by kvwire-load; run: gnuplot plots.gp\n",
      "set terminal pngcairo size 960,600 noenhanced\n",
      "set grid\nset key top left\n", "set output 'latency_vs_load.png'\n",
      "set title '", title, ": latency vs load'\n", "set xlabel '", xlabel,
      "'\nset ylabel 'latency (ms)'\n",
      "plot 'points.dat' using 1:3 with linespoints title 'p50', \\\n",
      "     '' using 1:4 with linespoints title 'p90', \\\n",
      "     '' using 1:5 with linespoints title 'p99', \\\n",
      "     '' using 1:6 with linespoints title 'p99.9'\n",
      "set output 'throughput_vs_load.png'\n", "set title '", title,
      ": throughput vs ", open ? "offered load" : "concurrency", "'\n",
      "set ylabel 'completed requests/s'\nset y2label 'wire MB/s'\n",
      "set ytics nomirror\nset y2tics\n",
      "plot 'points.dat' using 1:2 with linespoints title 'requests/s', \\\n",
      "     '' using 1:7 axes x1y2 with linespoints title 'wire MB/s'\n",
      "unset y2tics\nunset y2label\nset ytics mirror\n",
      "set output 'ttft_itl_vs_load.png'\n", "set title '", title,
      ": time to first token and inter-token latency'\n",
      "set ylabel 'time to first token (ms)'\n",
      StreamsTokens(config.rpc)
          ? "set y2label 'inter-token latency (ms)'\nset ytics nomirror\n"
            "set y2tics\n"
          : "",
      "plot 'points.dat' using 1:9 with linespoints title 'TTFT p50', \\\n",
      "     '' using 1:10 with linespoints title 'TTFT p90', \\\n",
      "     '' using 1:11 with linespoints title 'TTFT p99'",
      StreamsTokens(config.rpc)
          ? ", \\\n     '' using 1:12 axes x1y2 with linespoints dt 2 title "
            "'ITL p50', \\\n     '' using 1:13 axes x1y2 with linespoints "
            "dt 2 title 'ITL p90', \\\n     '' using 1:14 axes x1y2 with "
            "linespoints dt 2 title 'ITL p99'\n"
          : "\n",
      "unset y2tics\nunset y2label\nset ytics mirror\n",
      "set output 'bytes_per_request_by_spec.png'\n", "set title '", title,
      ": bytes per request by scenario'\n",
      "set style data histograms\nset style histogram clustered gap 1\n",
      "set style fill solid 0.8 border -1\nset boxwidth 0.9\n",
      "set xtics rotate by -30\nset xlabel ''\nset ylabel 'KiB per request'\n",
      "set key top right\nset yrange [0:*]\n",
      "plot 'bytes_by_spec.dat' using 2:xtic(1) title 'payload', \\\n",
      "     '' using 3 title 'wire (gRPC framed)', \\\n",
      "     '' using 4 title 'raw 16-bit KV'\n");
  if (absl::Status st = write("plots.gp", script); !st.ok()) return st;
  if (RunCommand("command -v gnuplot >/dev/null 2>&1") != 0) {
    return absl::FailedPreconditionError(
        "gnuplot not found: wrote plots.gp and the .dat files but no PNGs "
        "(apt-get install gnuplot-nox)");
  }
  const int rc = RunCommand(
      absl::StrCat("cd '", out_dir, "' && gnuplot plots.gp 2>gnuplot.log"));
  if (rc != 0) {
    return absl::InternalError(absl::StrCat(
        "gnuplot failed (exit ", rc, "); see ", out_dir, "/gnuplot.log"));
  }
  return absl::OkStatus();
}

}  // namespace load
}  // namespace kvwire
