// The runner with a fake backend: files, resume after an interruption (no
// duplicates, only missing questions asked), torn lines, identity checks,
// summaries and curves.
#include "tools/eval/runner.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/tools/eval/fake_backend.h"
#include "tests/tools/eval/test_util.h"
#include "tools/eval/cli.h"

namespace kvwire {
namespace eval {
namespace {

namespace fs = std::filesystem;
using ::kvwire::eval::testing::FakeBackend;
using ::kvwire::eval::testing::FixturePath;
using ::kvwire::eval::testing::Lines;
using ::kvwire::eval::testing::ReadAll;
using ::kvwire::eval::testing::RepoDir;
using ::kvwire::eval::testing::TempDir;
using ::testing::HasSubstr;
using json = nlohmann::json;

Dataset Obqa() {
  auto ds = LoadDataset(FixturePath("obqa_hf.jsonl"), DatasetKind::kOpenBookQA);
  EXPECT_TRUE(ds.ok()) << ds.status();
  return *ds;
}

ResolvedRun C2cRun(const std::string& selection = "all", double p = 1.0) {
  RunSpec spec;
  spec.method = EvalMethod::kC2C;
  spec.scheme = v1::SCHEME_INT8;
  spec.selection = selection;
  spec.proportion = p;
  spec.id = RunId(spec);
  spec.series = SeriesLabel(spec);
  auto r = ResolveRun(spec, {});
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

std::vector<json> ReadRecords(const std::string& path) {
  std::vector<json> out;
  for (const std::string& line : Lines(ReadAll(path))) {
    out.push_back(json::parse(line));
  }
  return out;
}

RunOptions Options(const std::string& out) {
  RunOptions o;
  o.out_dir = out;
  o.plots.enabled = false;
  return o;
}

TEST(RunnerTest, WritesOneRecordPerQuestionAndASummary) {
  const std::string out = TempDir("eval-run");
  const Dataset ds = Obqa();
  FakeBackend backend;
  const ResolvedRun run = C2cRun();
  auto summary = RunOne(ds, run, backend, Options(out));
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->n, 6);
  EXPECT_TRUE(summary->complete);
  const std::string dir = out + "/openbookqa/c2c-int8-head-all";
  const std::vector<json> records = ReadRecords(dir + "/predictions.jsonl");
  ASSERT_EQ(records.size(), 6u);
  double wire = 0;
  int correct = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    const json& r = records[i];
    EXPECT_EQ(r["question_id"], ds.items[i].id);
    EXPECT_EQ(r["gold"], ds.items[i].answer);
    EXPECT_EQ(r["index"], i);
    // The byte columns are exactly what the backend reported.
    const BackendAnswer& a =
        backend.answers().at("openbookqa/c2c-int8-head-all/" + ds.items[i].id);
    EXPECT_EQ(r["wire_bytes"], a.transfer.wire_bytes());
    EXPECT_EQ(r["serialized_bytes"], a.transfer.serialized_bytes());
    EXPECT_EQ(r["payload_bytes"], a.transfer.payload_bytes());
    EXPECT_EQ(r["scale_bytes"], a.transfer.scale_bytes());
    EXPECT_EQ(r["index_bytes"], a.transfer.index_bytes());
    EXPECT_EQ(r["header_bytes"], a.transfer.header_bytes());
    EXPECT_EQ(r["tokens_sent"], a.transfer.tokens_sent());
    EXPECT_EQ(r["prompt_tokens"], a.prompt_tokens);
    EXPECT_EQ(r["output_tokens"], a.token_ids.size());
    EXPECT_EQ(r["raw_output"], a.text);
    EXPECT_EQ(r["prediction"], a.text.substr(a.text.size() - 1));
    EXPECT_DOUBLE_EQ(r["timings"]["total"].get<double>(),
                     a.timings.total_seconds());
    EXPECT_DOUBLE_EQ(r["timings"]["encode"].get<double>(), 0.001);
    wire += r["wire_bytes"].get<double>();
    correct += r["correct"].get<bool>() ? 1 : 0;
  }
  const json s = json::parse(ReadAll(dir + "/summary.json"));
  EXPECT_EQ(s["n"], 6);
  EXPECT_EQ(s["correct"], correct);
  EXPECT_DOUBLE_EQ(s["bytes"]["mean_wire"].get<double>(), wire / 6);
  EXPECT_DOUBLE_EQ(s["bytes"]["mean_plotted"].get<double>(), wire / 6);
  EXPECT_EQ(s["run"]["method"], "c2c");
  EXPECT_EQ(s["run"]["transfer_spec"]["scheme"], "SCHEME_INT8");
  const json meta = json::parse(ReadAll(dir + "/run.json"));
  EXPECT_EQ(meta["identity"]["backend"], "fake");
  EXPECT_EQ(meta["generation"]["max_new_tokens"], 64);
}

TEST(RunnerTest, ResumesAfterAFailureWithoutDuplicates) {
  const std::string out = TempDir("eval-resume");
  const Dataset ds = Obqa();
  const ResolvedRun run = C2cRun("back", 0.5);
  FakeBackend first;
  first.set_fail_after(3);
  auto failed = RunOne(ds, run, first, Options(out));
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(failed.status().message(), HasSubstr("question fx-obqa-4"));
  EXPECT_THAT(failed.status().message(), HasSubstr("obqa_hf.jsonl:4"));
  const std::string dir = out + "/openbookqa/" + run.spec.id;
  EXPECT_EQ(ReadRecords(dir + "/predictions.jsonl").size(), 3u);
  // The partial summary is there too.
  EXPECT_EQ(json::parse(ReadAll(dir + "/summary.json"))["complete"], false);

  FakeBackend second;
  auto done = RunOne(ds, run, second, Options(out));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(second.calls(), 3);  // Only the missing questions.
  const std::vector<json> records = ReadRecords(dir + "/predictions.jsonl");
  ASSERT_EQ(records.size(), 6u);
  std::set<std::string> ids;
  for (const json& r : records) ids.insert(r["question_id"]);
  EXPECT_EQ(ids.size(), 6u);
  EXPECT_TRUE(done->complete);

  // A third run asks nothing.
  FakeBackend third;
  ASSERT_TRUE(RunOne(ds, run, third, Options(out)).ok());
  EXPECT_EQ(third.calls(), 0);
  EXPECT_EQ(ReadRecords(dir + "/predictions.jsonl").size(), 6u);
}

TEST(RunnerTest, StopRequestCancelsCleanlyAndResumes) {
  const std::string out = TempDir("eval-stop");
  const Dataset ds = Obqa();
  const ResolvedRun run = C2cRun();
  FakeBackend backend;
  RunOptions o = Options(out);
  o.stop_requested = [&] { return backend.calls() >= 2; };
  auto r = RunOne(ds, run, backend, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  const std::string path =
      out + "/openbookqa/c2c-int8-head-all/predictions.jsonl";
  EXPECT_EQ(ReadRecords(path).size(), 2u);
  FakeBackend again;
  ASSERT_TRUE(RunOne(ds, run, again, Options(out)).ok());
  EXPECT_EQ(again.calls(), 4);
  EXPECT_EQ(ReadRecords(path).size(), 6u);
}

TEST(RunnerTest, DropsATornLastLine) {
  const std::string out = TempDir("eval-torn");
  const Dataset ds = Obqa();
  const ResolvedRun run = C2cRun();
  FakeBackend first;
  first.set_fail_after(2);
  ASSERT_FALSE(RunOne(ds, run, first, Options(out)).ok());
  const std::string path =
      out + "/openbookqa/c2c-int8-head-all/predictions.jsonl";
  {
    std::ofstream f(path, std::ios::app);
    f << R"({"question_id": "fx-obqa-3", "gold": "A", "pred)";  // Torn.
  }
  FakeBackend second;
  ASSERT_TRUE(RunOne(ds, run, second, Options(out)).ok());
  EXPECT_EQ(second.calls(), 4);
  const std::vector<json> records = ReadRecords(path);  // All parse.
  ASSERT_EQ(records.size(), 6u);
  EXPECT_EQ(records[2]["question_id"], "fx-obqa-3");

  // A bad line in the middle is an error, not silently dropped.
  std::string text = ReadAll(path);
  text.insert(text.find('\n') + 1, "garbage\n");
  std::ofstream(path, std::ios::trunc) << text;
  FakeBackend third;
  auto bad = RunOne(ds, run, third, Options(out));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bad.status().message(), HasSubstr("predictions.jsonl:2"));
}

TEST(RunnerTest, RefusesToMixConfigurationsUnlessOverwriting) {
  const std::string out = TempDir("eval-identity");
  const Dataset ds = Obqa();
  const ResolvedRun run = C2cRun();
  FakeBackend a("fake");
  ASSERT_TRUE(RunOne(ds, run, a, Options(out)).ok());
  FakeBackend b("other-backend");
  auto refused = RunOne(ds, run, b, Options(out));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  RunOptions o = Options(out);
  o.overwrite = true;
  ASSERT_TRUE(RunOne(ds, run, b, o).ok());
  EXPECT_EQ(b.calls(), 6);
  EXPECT_EQ(ReadRecords(out + "/openbookqa/c2c-int8-head-all/predictions.jsonl")
                .size(),
            6u);
}

// Request ids stay within the protocol's 64 bytes for M7's long run ids.
TEST(RunnerTest, RequestIdsFitTheProtocolLimit) {
  EXPECT_EQ(EvalRequestId("openbookqa", "c2c-int8-head-all", "q1"),
            "openbookqa/c2c-int8-head-all/q1");
  const std::string long_run =
      "c2c-int8-head-all-sharer_llama3.2_1b-align_on_first-max8";
  const std::string id = EvalRequestId("arc_challenge", long_run, "Mercury_7");
  EXPECT_LE(id.size(), 64u);
  EXPECT_THAT(id,
              ::testing::MatchesRegex("arc_challenge/[0-9a-f]{16}/Mercury_7"));
  EXPECT_EQ(id, EvalRequestId("arc_challenge", long_run, "Mercury_7"));
  EXPECT_NE(id, EvalRequestId("arc_challenge", long_run + "x", "Mercury_7"));
  EXPECT_LE(
      EvalRequestId("arc_challenge", long_run, std::string(80, 'q')).size(),
      64u);

  // What the backend receives.
  RunSpec spec;
  spec.scheme = v1::SCHEME_INT8;
  spec.pair.sharer = "a_rather_long_sharer_name";
  spec.pair.token_alignment = "on";
  spec.id = RunId(spec);
  auto run = ResolveRun(spec, {});
  ASSERT_TRUE(run.ok()) << run.status();
  FakeBackend backend;
  RunOptions o = Options(TempDir("eval-reqid"));
  o.limit = 2;
  ASSERT_TRUE(RunOne(Obqa(), *run, backend, o).ok());
  ASSERT_EQ(backend.answers().size(), 2u);
  for (const auto& [request_id, answer] : backend.answers()) {
    EXPECT_LE(request_id.size(), 64u) << request_id;
  }
}

TEST(RunnerTest, LimitTakesTheFirstItems) {
  const std::string out = TempDir("eval-limit");
  const Dataset ds = Obqa();
  FakeBackend backend;
  RunOptions o = Options(out);
  o.limit = 2;
  auto s = RunOne(ds, C2cRun(), backend, o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->n, 2);
  EXPECT_EQ(s->expected, 2);
  EXPECT_TRUE(s->complete);
  // Raising the limit later continues from there.
  o.limit = 0;
  FakeBackend more;
  s = RunOne(ds, C2cRun(), more, o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(more.calls(), 4);
  EXPECT_EQ(s->n, 6);
}

TEST(RunnerTest, GridOnFixturesWritesCurves) {
  const std::string out = TempDir("eval-grid");
  auto grid = LoadGridFile(RepoDir() + "/tools/eval/grids/fixture_small.yaml");
  ASSERT_TRUE(grid.ok()) << grid.status();
  std::vector<Dataset> datasets;
  for (const auto& [name, path] : grid->datasets) {
    auto ds = LoadDataset(path, *ParseDatasetKind(name));
    ASSERT_TRUE(ds.ok()) << ds.status();
    datasets.push_back(*ds);
  }
  FakeBackend backend;
  RunOptions o = Options(out);
  o.dump_prompts = true;
  o.plots.enabled = true;  // A missing gnuplot is reported, not an error.
  std::ostringstream log;
  o.log = &log;
  auto result = RunGrid(*grid, datasets, backend, o);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->summaries.size(), 2 * grid->runs.size());
  EXPECT_EQ(backend.calls(), static_cast<int>(grid->runs.size()) * (6 + 5));
  for (const char* ds : {"openbookqa", "arc_challenge"}) {
    const std::string dir = out + "/" + ds;
    const std::vector<std::string> csv =
        Lines(ReadAll(dir + "/budget_curve.csv"));
    EXPECT_EQ(csv.size(), 1 + grid->runs.size()) << ds;
    EXPECT_TRUE(fs::exists(dir + "/budget_curve.gp"));
    EXPECT_TRUE(fs::exists(dir + "/plots/text_to_text.dat"));
    EXPECT_EQ(Lines(ReadAll(dir + "/prompts.jsonl")).size(),
              std::string(ds) == "openbookqa" ? 6u : 5u);
    for (const RunSpec& r : grid->runs) {
      EXPECT_TRUE(fs::exists(dir + "/" + r.id + "/summary.json")) << r.id;
    }
  }
  // arc_challenge's summaries count the two skipped items.
  const json s =
      json::parse(ReadAll(out + "/arc_challenge/receiver-only/summary.json"));
  EXPECT_EQ(s["skipped_items"], 2);
  EXPECT_EQ(s["n"], 5);
  EXPECT_EQ(Lines(ReadAll(out + "/budget_curve.csv")).size(),
            1 + 2 * grid->runs.size());
  if (result->curves[0].plot_error.empty()) {
    EXPECT_EQ(result->curves[0].pngs.size(), 2u);
  } else {
    EXPECT_THAT(log.str(), HasSubstr("gnuplot"));
  }

  // The CLI can redraw everything from the results alone.
  CliConfig c;
  c.out = out;
  c.plots_only = true;
  c.plots = false;
  std::ostringstream cli_out, cli_err;
  EXPECT_EQ(RunEvalCli(c, cli_out, cli_err), 0) << cli_err.str();
  EXPECT_THAT(cli_out.str(), HasSubstr("c2c-int8-head-back-p0.25"));
  EXPECT_THAT(cli_out.str(), HasSubstr("budget_curve.csv"));
}

TEST(CliTest, ListsThePrototypeGrid) {
  CliConfig c;
  c.grid = RepoDir() + "/tools/eval/grids/prototype_m0_m8.yaml";
  c.list = true;
  std::ostringstream out, err;
  EXPECT_EQ(RunEvalCli(c, out, err), 0) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("36 runs"));
  EXPECT_THAT(out.str(), HasSubstr("c2c-int8-head-all-int8_last8_fp16"));
}

TEST(CliTest, UsageErrors) {
  std::ostringstream out, err;
  CliConfig c;
  c.schemes = "int8";
  EXPECT_EQ(RunEvalCli(c, out, err), 2);  // No --out.
  c.out = TempDir("eval-cli");
  EXPECT_EQ(RunEvalCli(c, out, err), 2);  // No dataset.
  EXPECT_THAT(err.str(), HasSubstr("no dataset"));
  c.openbookqa = FixturePath("obqa_ai2.jsonl");
  EXPECT_EQ(RunEvalCli(c, out, err), 2);  // No --receiver_dir.
  c.backend = "carrier-pigeon";
  c.inprocess.receiver_dir = "/nonexistent";
  EXPECT_EQ(RunEvalCli(c, out, err), 2);
  EXPECT_THAT(err.str(), HasSubstr("unknown --backend"));
  c.backend = "grpc";
  EXPECT_EQ(RunEvalCli(c, out, err), 2);  // No --target.
}

}  // namespace
}  // namespace eval
}  // namespace kvwire
