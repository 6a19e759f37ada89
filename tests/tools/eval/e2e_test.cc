// End to end through the in-process pipeline: the fixture grid on the
// fixture datasets with tiny random models made by the project's generators
// (tests/common/engine/test_assets.h: a Qwen3-style receiver, a
// Qwen2-style sharer, a C2C fuser, a byte-level tokenizer carrying the real
// Qwen3 / Qwen2.5 chat templates). Checks the machinery, not accuracy: every
// file is written, the byte columns equal what the pipeline reported, prompt
// lengths match the local template rendering, and a rerun asks nothing.
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/engine/test_assets.h"
#include "tests/tools/eval/test_util.h"
#include "tools/eval/inprocess_backend.h"
#include "tools/eval/prompt.h"
#include "tools/eval/runner.h"

namespace kvwire {
namespace eval {
namespace {

namespace fs = std::filesystem;
using ::kvwire::eval::testing::Lines;
using ::kvwire::eval::testing::ReadAll;
using ::kvwire::eval::testing::RepoDir;
using ::kvwire::eval::testing::TempDir;
using json = nlohmann::json;

// Remembers every answer of the wrapped backend.
class RecordingBackend : public AnswerBackend {
 public:
  explicit RecordingBackend(std::unique_ptr<AnswerBackend> inner)
      : inner_(std::move(inner)) {}
  std::string kind() const override { return inner_->kind(); }
  std::string Describe() const override { return inner_->Describe(); }
  BackendLayout layout() const override { return inner_->layout(); }
  absl::StatusOr<BackendAnswer> Answer(const BackendRequest& r) override {
    ++calls_;
    absl::StatusOr<BackendAnswer> a = inner_->Answer(r);
    if (a.ok()) answers_[r.request_id] = *a;
    return a;
  }
  int calls() const { return calls_; }
  const std::map<std::string, BackendAnswer>& answers() const {
    return answers_;
  }

 private:
  std::unique_ptr<AnswerBackend> inner_;
  int calls_ = 0;
  std::map<std::string, BackendAnswer> answers_;
};

class EndToEndTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(TempDir("eval-e2e"));
    auto assets = MakeTinyPipeline(*root_ + "/models");
    ASSERT_TRUE(assets.ok()) << assets.status();
    assets_ = new TinyPipelineAssets(*assets);
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*root_, ec);
    delete assets_;
    delete root_;
  }

  static std::string* root_;
  static TinyPipelineAssets* assets_;
};

std::string* EndToEndTest::root_ = nullptr;
TinyPipelineAssets* EndToEndTest::assets_ = nullptr;

TEST_F(EndToEndTest, FixtureGridThroughThePipeline) {
  InProcessBackendOptions o;
  o.receiver_dir = assets_->receiver_dir;
  o.sharer_dir = assets_->sharer_dir;
  o.fuser_dir = assets_->fuser_dir;
  o.text_to_text_max_new_tokens = 16;
  o.threads = 1;
  auto inner = CreateInProcessBackend(o);
  ASSERT_TRUE(inner.ok()) << inner.status();
  RecordingBackend backend(*std::move(inner));
  EXPECT_EQ(backend.layout().receiver_layers, 4);
  EXPECT_EQ(backend.layout().sharer_layers, 3);

  auto grid = LoadGridFile(RepoDir() + "/tools/eval/grids/fixture_small.yaml");
  ASSERT_TRUE(grid.ok()) << grid.status();
  std::vector<Dataset> datasets;
  for (const auto& [name, path] : grid->datasets) {
    auto ds = LoadDataset(path, *ParseDatasetKind(name));
    ASSERT_TRUE(ds.ok()) << ds.status();
    datasets.push_back(*ds);
  }
  auto renderer = PromptRenderer::FromDirectory(assets_->receiver_dir);
  ASSERT_TRUE(renderer.ok()) << renderer.status();

  const std::string out = *root_ + "/out";
  RunOptions options;
  options.out_dir = out;
  options.limit = 3;
  options.renderer = renderer->get();
  std::ostringstream log;
  options.log = &log;
  auto result = RunGrid(*grid, datasets, backend, options);
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << log.str();
  const int questions = static_cast<int>(grid->runs.size()) * 3 * 2;
  EXPECT_EQ(backend.calls(), questions);

  std::map<std::string, double> payload_by_run;  // openbookqa means
  for (const Dataset& ds : datasets) {
    const std::string name = DatasetKindName(ds.kind);
    const std::string dir = out + "/" + name;
    for (const RunSpec& run : grid->runs) {
      SCOPED_TRACE(name + " " + run.id);
      const std::string run_dir = dir + "/" + run.id;
      ASSERT_TRUE(fs::exists(run_dir + "/summary.json"));
      ASSERT_TRUE(fs::exists(run_dir + "/run.json"));
      const std::vector<std::string> lines =
          Lines(ReadAll(run_dir + "/predictions.jsonl"));
      ASSERT_EQ(lines.size(), 3u);
      double payload = 0;
      for (size_t i = 0; i < lines.size(); ++i) {
        const json r = json::parse(lines[i]);
        const EvalItem& item = ds.items[i];
        EXPECT_EQ(r["question_id"], item.id);
        const BackendAnswer& a =
            backend.answers().at(name + "/" + run.id + "/" + item.id);
        // Byte columns are what the pipeline reported.
        EXPECT_EQ(r["wire_bytes"], a.transfer.wire_bytes());
        EXPECT_EQ(r["serialized_bytes"], a.transfer.serialized_bytes());
        EXPECT_EQ(r["payload_bytes"], a.transfer.payload_bytes());
        EXPECT_EQ(r["scale_bytes"], a.transfer.scale_bytes());
        EXPECT_EQ(r["index_bytes"], a.transfer.index_bytes());
        EXPECT_EQ(r["header_bytes"], a.transfer.header_bytes());
        EXPECT_EQ(r["tokens_sent"], a.transfer.tokens_sent());
        EXPECT_EQ(r["chunks"], a.chunks);
        EXPECT_EQ(r["text_bytes"], a.text_bytes);
        EXPECT_EQ(r["raw_output"], a.text);
        EXPECT_EQ(r["output_tokens"], a.token_ids.size());
        EXPECT_LE(a.token_ids.size(), 64u);
        payload += r["payload_bytes"].get<double>();
        // Prompt lengths: the pipeline's receiver read exactly the local
        // rendering of the reference prompt.
        if (run.method == EvalMethod::kReceiverOnly ||
            run.method == EvalMethod::kC2C) {
          auto ids = (*renderer)->Tokenize(
              BuildEvalPrompt(item.question, item.choices));
          ASSERT_TRUE(ids.ok());
          EXPECT_EQ(r["prompt_tokens"], ids->size());
        }
        if (run.method == EvalMethod::kC2C) {
          EXPECT_TRUE(a.has_transfer);
          EXPECT_GT(a.transfer.wire_bytes(), a.transfer.serialized_bytes());
          // Serialized = payload + scales + indices + metadata + trailer.
          EXPECT_GT(a.transfer.serialized_bytes(),
                    a.transfer.payload_bytes() + a.transfer.scale_bytes() +
                        a.transfer.index_bytes() + a.transfer.header_bytes());
          EXPECT_EQ(r["transfer_prompt_tokens"],
                    r["prompt_tokens"].get<int64_t>() - 1);
        } else {
          EXPECT_FALSE(a.has_transfer);
          EXPECT_EQ(r["wire_bytes"], 0);
        }
        if (run.method == EvalMethod::kTextToText) {
          EXPECT_EQ(a.text_bytes, a.background_text.size());
          EXPECT_EQ(r.value("background_text", ""), a.background_text);
        }
      }
      if (name == "openbookqa") payload_by_run[run.id] = payload / 3;
      const json s = json::parse(ReadAll(run_dir + "/summary.json"));
      EXPECT_EQ(s["n"], 3);
      EXPECT_DOUBLE_EQ(s["bytes"]["mean_payload"].get<double>(), payload / 3);
    }
    const std::vector<std::string> csv =
        Lines(ReadAll(dir + "/budget_curve.csv"));
    EXPECT_EQ(csv.size(), 1 + grid->runs.size());
  }
  // Fewer bits or tokens, fewer payload bytes.
  EXPECT_GT(payload_by_run["c2c-bf16-head-all"],
            payload_by_run["c2c-int8-head-all"]);
  EXPECT_GT(payload_by_run["c2c-int8-head-all"],
            payload_by_run["c2c-int4-head-all"]);
  EXPECT_GT(payload_by_run["c2c-int8-head-all"],
            payload_by_run["c2c-int8-head-back-p0.5"]);
  EXPECT_GT(payload_by_run["c2c-int8-head-back-p0.5"],
            payload_by_run["c2c-int8-head-back-p0.25"]);
  // The mixed schedule sends one sharer layer at bf16 on top of int4.
  EXPECT_GT(payload_by_run["c2c-int4-head-all-last1_bf16"],
            payload_by_run["c2c-int4-head-all"]);
  EXPECT_TRUE(fs::exists(out + "/budget_curve.csv"));

  // A rerun resumes: nothing left to ask.
  auto again_inner = CreateInProcessBackend(o);
  ASSERT_TRUE(again_inner.ok());
  RecordingBackend again(*std::move(again_inner));
  auto rerun = RunGrid(*grid, datasets, again, options);
  ASSERT_TRUE(rerun.ok()) << rerun.status();
  EXPECT_EQ(again.calls(), 0);
}

}  // namespace
}  // namespace eval
}  // namespace kvwire
