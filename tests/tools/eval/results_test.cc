#include "tools/eval/results.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/eval/budget_curve.h"
#include "tools/eval/progress.h"

namespace kvwire {
namespace eval {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(WilsonTest, KnownValues) {
  Interval i = WilsonInterval(0, 0);
  EXPECT_DOUBLE_EQ(i.low, 0);
  EXPECT_DOUBLE_EQ(i.high, 1);
  i = WilsonInterval(50, 100);
  EXPECT_NEAR(i.low, 0.403832, 1e-6);
  EXPECT_NEAR(i.high, 0.596168, 1e-6);
  i = WilsonInterval(0, 10);
  EXPECT_DOUBLE_EQ(i.low, 0);
  EXPECT_NEAR(i.high, 0.277532, 1e-6);  // z^2 / (n + z^2).
  i = WilsonInterval(10, 10);
  EXPECT_NEAR(i.low, 0.722468, 1e-6);
  EXPECT_DOUBLE_EQ(i.high, 1);
  // The paper's C2C OpenBookQA accuracy: 263 / 500.
  i = WilsonInterval(263, 500);
  EXPECT_NEAR(i.low, 0.482202, 1e-6);
  EXPECT_NEAR(i.high, 0.569402, 1e-6);
}

QuestionRecord Rec(const std::string& id, const std::string& gold,
                   const std::string& pred, uint64_t wire, double total) {
  QuestionRecord r;
  r.question_id = id;
  r.gold = gold;
  r.prediction = pred;
  r.correct = pred == gold;
  r.prompt_tokens = 120;
  r.output_tokens = 8;
  r.raw_output = "The correct answer is " + pred;
  r.wire_bytes = wire;
  r.serialized_bytes = wire - 25;
  r.payload_bytes = wire / 2;
  r.tokens_sent = 300;
  r.timings.total = total;
  r.text_bytes = 77;
  return r;
}

TEST(SummaryTest, AggregatesRecords) {
  RunInfo info;
  info.dataset = "openbookqa";
  info.run_id = "c2c-int8-head-all";
  info.method = "c2c";
  const std::vector<QuestionRecord> records = {
      Rec("1", "A", "A", 1000, 0.1), Rec("2", "B", "C", 2000, 0.2),
      Rec("3", "C", "", 3000, 0.3), Rec("4", "D", "D", 4000, 0.4)};
  const RunSummary s = Summarize(info, records, /*expected=*/5,
                                 /*skipped_items=*/2);
  EXPECT_EQ(s.n, 4);
  EXPECT_FALSE(s.complete);
  EXPECT_EQ(s.correct, 2);
  EXPECT_DOUBLE_EQ(s.accuracy, 0.5);
  EXPECT_NEAR(s.ci95.low, WilsonInterval(2, 4).low, 1e-12);
  EXPECT_EQ(s.predictions.at("A"), 1);
  EXPECT_EQ(s.predictions.at("B"), 0);
  EXPECT_EQ(s.predictions.at("C"), 1);
  EXPECT_EQ(s.predictions.at("none"), 1);
  EXPECT_EQ(s.gold.at("B"), 1);
  EXPECT_DOUBLE_EQ(s.mean_bytes, 2500);  // C2C: the wire bytes.
  EXPECT_DOUBLE_EQ(s.mean_wire_bytes, 2500);
  EXPECT_DOUBLE_EQ(s.mean_serialized_bytes, 2475);
  EXPECT_DOUBLE_EQ(s.mean_payload_bytes, 1250);
  EXPECT_DOUBLE_EQ(s.mean_tokens_sent, 300);
  EXPECT_DOUBLE_EQ(s.mean_output_tokens, 8);
  EXPECT_DOUBLE_EQ(s.mean_prompt_tokens, 120);
  EXPECT_NEAR(s.mean_timings.total, 0.25, 1e-12);
  EXPECT_NEAR(s.p50_total_seconds, 0.25, 1e-12);
  EXPECT_NEAR(s.p90_total_seconds, 0.37, 1e-12);
  EXPECT_EQ(s.skipped_items, 2);

  info.method = "text-to-text";
  EXPECT_DOUBLE_EQ(Summarize(info, records, 4, 0).mean_bytes, 77);
  info.method = "receiver-only";
  EXPECT_DOUBLE_EQ(Summarize(info, records, 4, 0).mean_bytes, 0);
}

TEST(SummaryTest, JsonRoundTrip) {
  RunInfo info;
  info.dataset = "arc_challenge";
  info.run_id = "c2c-int4-head-back-p0.5";
  info.method = "c2c";
  info.series = "back int4";
  info.anchor_id = "c2c-int4-head-all";
  info.scheme = "int4";
  info.granularity = "head";
  info.selection = "back";
  info.proportion = 0.5;
  info.zstd_level = 3;
  const RunSummary s = Summarize(info, {Rec("1", "A", "A", 1000, 0.1)}, 1, 0);
  auto back = SummaryFromJson(SummaryToJson(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(SummaryToJson(*back), SummaryToJson(s));
  const nlohmann::json j = SummaryToJson(s);
  EXPECT_EQ(j["ci95"]["method"], "wilson");
  EXPECT_EQ(j["answer_distribution"]["A"], 1);
  EXPECT_EQ(j["bytes"]["mean_wire"], 1000.0);
}

TEST(RecordTest, JsonRoundTrip) {
  QuestionRecord r = Rec("q-1", "B", "B", 12345, 0.5);
  r.background_text = "some background";
  r.fell_back = true;
  r.fallback_reason = "sharer down";
  r.extraction_stage = 2;
  auto back = RecordFromJson(RecordToJson(r));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(RecordToJson(*back), RecordToJson(r));
  EXPECT_FALSE(RecordFromJson(nlohmann::json::object()).ok());
  EXPECT_FALSE(
      RecordFromJson(nlohmann::json{{"question_id", "x"}, {"index", "bad"}})
          .ok());
}

std::vector<RunSummary> CurveSummaries() {
  std::vector<RunSummary> out;
  auto add = [&](const std::string& id, const std::string& method,
                 const std::string& series, const std::string& anchor,
                 uint64_t bytes, const std::string& pred) {
    RunInfo info;
    info.dataset = "openbookqa";
    info.run_id = id;
    info.method = method;
    info.series = series;
    info.anchor_id = anchor;
    info.scheme = "int8";
    info.granularity = "head";
    info.selection = series.substr(0, series.find(' '));
    QuestionRecord r = Rec("1", "A", pred, bytes, 0.2);
    out.push_back(Summarize(info, {r, Rec("2", "B", "B", bytes, 0.4)}, 2, 0));
  };
  add("receiver-only", "receiver-only", "receiver-only", "", 0, "C");
  add("sharer-only", "sharer-only", "sharer-only", "", 0, "A");
  add("text-to-text", "text-to-text", "text-to-text", "", 0, "A");
  add("c2c-int8-head-all", "c2c", "all int8", "", 40000, "A");
  add("c2c-int8-head-back-p0.5", "c2c", "back int8", "c2c-int8-head-all", 20000,
      "A");
  add("c2c-int8-head-back-p0.25", "c2c", "back int8", "c2c-int8-head-all",
      10000, "C");
  return out;
}

TEST(BudgetCurveTest, CsvHasOneRowPerRun) {
  const std::string csv = BudgetCurveCsv(CurveSummaries());
  std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 7u);
  EXPECT_THAT(lines[0], HasSubstr("dataset,run_id,method,series,scheme"));
  EXPECT_THAT(lines[0], HasSubstr("accuracy,ci95_low,ci95_high,mean_bytes,"
                                  "mean_wire_bytes"));
  // receiver-only: no C2C columns, bytes 0, accuracy 0.5.
  EXPECT_THAT(lines[1], HasSubstr("openbookqa,receiver-only,receiver-only,"
                                  "receiver-only,,,,,,,,,2,2,true,1,"
                                  "0.500000,"));
  EXPECT_THAT(lines[6],
              HasSubstr("c2c-int8-head-back-p0.25,c2c,back int8,int8,head,"
                        "back,1,0,,0,0,2,2,true,1,0.500000"));
  EXPECT_THAT(lines[6], HasSubstr(",10000.000,10000.000,9975.000,5000.000,"));
}

TEST(BudgetCurveTest, GnuplotScriptDrawsSeriesBaselinesAndAnchors) {
  std::vector<RunSummary> s = CurveSummaries();
  s[2].mean_bytes = 300;  // Text-to-text at its text bytes.
  std::vector<std::pair<std::string, std::string>> data;
  const std::string gp = GnuplotScript(s, "openbookqa", "plots", &data);
  EXPECT_THAT(gp, HasSubstr("set logscale x 10"));
  EXPECT_THAT(gp, HasSubstr("set output \"budget_curve.png\""));
  EXPECT_THAT(gp, HasSubstr("set output \"latency_vs_bytes.png\""));
  EXPECT_THAT(gp, HasSubstr("title \"receiver-only 50.0% (n=2)\""));
  EXPECT_THAT(gp, HasSubstr("title \"sharer-only 100.0% (n=2)\""));
  EXPECT_THAT(gp, HasSubstr("\"plots/text_to_text.dat\" using 1:2:3:4"));
  EXPECT_THAT(gp, HasSubstr("title \"back int8\""));
  EXPECT_THAT(gp, HasSubstr("title \"all int8\""));
  EXPECT_THAT(gp, HasSubstr("\\n"));
  EXPECT_THAT(gp, Not(HasSubstr("\\\\n")));
  // The back series carries its full-transfer point (the anchor), sorted.
  bool found = false;
  for (const auto& [name, text] : data) {
    if (text.find("# series: back int8") == std::string::npos) continue;
    found = true;
    std::vector<std::string> rows =
        absl::StrSplit(text, '\n', absl::SkipEmpty());
    ASSERT_EQ(rows.size(), 5u);  // 2 comment lines + 3 points.
    EXPECT_THAT(rows[2], HasSubstr("10000.0\t50.0000"));
    EXPECT_THAT(rows[3], HasSubstr("20000.0\t100.0000"));
    EXPECT_THAT(rows[4], HasSubstr("40000.0\t100.0000"));
    EXPECT_THAT(rows[4], HasSubstr("c2c-int8-head-all"));
  }
  EXPECT_TRUE(found);
}

TEST(ProgressTest, RendersRateAndEta) {
  std::ostringstream out;
  ProgressBar bar(&out, /*interactive=*/false, "obqa run", 10, 4);
  EXPECT_THAT(bar.Render(), HasSubstr("obqa run [#########"));
  EXPECT_THAT(bar.Render(), HasSubstr("4/10  40.0%"));
  bar.Update(5, 3);
  EXPECT_THAT(out.str(), HasSubstr("5/10"));
  EXPECT_THAT(out.str(), HasSubstr("acc 60.0%"));
  EXPECT_THAT(out.str(), HasSubstr("ETA "));
  bar.Finish();
  EXPECT_EQ(FormatDuration(3725), "1:02:05");
  EXPECT_EQ(FormatDuration(65), "01:05");
  EXPECT_EQ(FormatDuration(-1), "--:--");
}

}  // namespace
}  // namespace eval
}  // namespace kvwire
