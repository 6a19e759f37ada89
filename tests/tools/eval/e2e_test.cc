// End to end through the in-process pipeline: the fixture grid on the
// fixture datasets with tiny random models made by the project's generators
// (tests/common/engine/test_assets.h: a Qwen3-style receiver, a
// Qwen2-style sharer, a C2C fuser, a byte-level tokenizer carrying the real
// Qwen3 / Qwen2.5 chat templates). Checks the machinery, not accuracy: every
// file is written, the byte columns equal what the pipeline reported, prompt
// lengths match the local template rendering, and a rerun asks nothing.
// Then M7's machinery: a grid that switches sharers, fusers and token
// alignment per run, with a sharer of another vocabulary whose alignment-off
// runs are refused rows.
#include <stdlib.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/model/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/engine/test_assets.h"
#include "tests/common/hub_cache_testing.h"
#include "tests/tools/eval/test_util.h"
#include "tools/eval/cli.h"
#include "tools/eval/inprocess_backend.h"
#include "tools/eval/prompt.h"
#include "tools/eval/runner.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

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
  absl::Status CheckPairSupported(const PairOverride& pair) const override {
    return inner_->CheckPairSupported(pair);
  }
  absl::Status UsePair(const PairOverride& pair) override {
    return inner_->UsePair(pair);
  }
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

// M7 in process: the fixture pair plus a "wide" sharer (the fixture
// sharer's shapes and tokenizer in a Llama model with a vocabulary of 384
// instead of 320: another family with another size, so only token
// alignment can pair it with the receiver) and a copy of the fuser
// whose recipe says is_do_alignment: true. Alignment on works for both
// sharers (for the same-vocabulary one, it aligns the Qwen3 template's
// tokens with the Qwen2.5 template's); off is refused for the wide sharer,
// by the vocabulary check (plain fuser) or by the aligned recipe, and those
// runs are refused rows while the grid goes on.
TEST_F(EndToEndTest, SharerAndAlignmentAxesSwitchPairsAndRecordRefusals) {
  const std::string wide = *root_ + "/models/sharer-wide";
  TinyCheckpointOptions s;
  s.config = MakeModelConfig(ModelArch::kLlama, 384, 32, 64, 3, 4, 2, 0);
  s.config.eos_token_ids = {assets_->im_end};
  s.config.bos_token_id = 256;
  s.seed = 77;
  s.dtype = SafetensorsDtype::kF32;
  s.init_std = 0.2;
  ASSERT_TRUE(WriteRandomCheckpoint(wide, s).ok());
  fs::copy_file(assets_->receiver_dir + "/tokenizer.json",
                wide + "/tokenizer.json");
  fs::copy_file(assets_->sharer_dir + "/tokenizer_config.json",
                wide + "/tokenizer_config.json");
  const std::string aligned_fuser = *root_ + "/models/fuser-aligned";
  fs::copy(assets_->fuser_dir, aligned_fuser, fs::copy_options::recursive);
  json recipe = json::parse(ReadAll(aligned_fuser + "/config.json"));
  recipe["model"]["is_do_alignment"] = true;
  recipe["model"]["alignment_strategy"] = "first";
  ASSERT_TRUE(
      WriteStringToFile(aligned_fuser + "/config.json", recipe.dump(2)).ok());

  auto grid = ParseGridYaml(R"(
sharers:
  # The fixture sharer has only its template; alignment also needs its
  # tokenizer.json: the wide sharer's directory has both (same tokenizer).
  same: {sharer_dir: "${H5_SAME}", sharer_tokenizer_dir: "${H5_WIDE}"}
  wide: {sharer_dir: "${H5_WIDE}", fuser_dir: "${H5_ALIGNED_FUSER}"}
  wide_plain: {sharer_dir: "${H5_WIDE}"}
runs:
  - name: own
    scheme: int8
  - name: m7
    method: [sharer-only, c2c]
    scheme: int8
    sharer: [same, wide]
    token_alignment: [on, off]
  - name: recipe_decides
    scheme: int8
    sharer: [wide, wide_plain]
    token_alignment: auto
)",
                            "/",
                            {{"H5_SAME", assets_->sharer_dir},
                             {"H5_WIDE", wide},
                             {"H5_ALIGNED_FUSER", aligned_fuser}});
  ASSERT_TRUE(grid.ok()) << grid.status();
  ASSERT_TRUE(grid->notes.empty());

  InProcessBackendOptions o;
  o.receiver_dir = assets_->receiver_dir;
  o.sharer_dir = assets_->sharer_dir;
  o.fuser_dir = assets_->fuser_dir;
  o.threads = 1;
  auto inner = CreateInProcessBackend(o);
  ASSERT_TRUE(inner.ok()) << inner.status();
  RecordingBackend backend(*std::move(inner));
  auto ds = LoadDataset(RepoDir() + "/tests/data/eval/obqa_ai2.jsonl",
                        DatasetKind::kOpenBookQA);
  ASSERT_TRUE(ds.ok()) << ds.status();
  auto renderer = PromptRenderer::FromDirectory(assets_->receiver_dir);
  ASSERT_TRUE(renderer.ok()) << renderer.status();

  RunOptions options;
  options.out_dir = *root_ + "/out-m7";
  options.limit = 2;
  options.renderer = renderer->get();
  options.plots.enabled = false;
  std::ostringstream log;
  options.log = &log;
  auto result = RunGrid(*grid, {*ds}, backend, options);
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << log.str();

  const std::map<std::string, std::string> refused_because = {
      {"c2c-int8-head-all-sharer_wide-align_off",
       "trained with token alignment"},
      {"c2c-int8-head-all-sharer_wide_plain-align_auto",
       "do not share a vocabulary"}};
  const std::set<std::string> answered = {
      "c2c-int8-head-all",
      "sharer-only-sharer_same",
      "sharer-only-sharer_wide",
      "c2c-int8-head-all-sharer_same-align_on",
      "c2c-int8-head-all-sharer_same-align_off",
      "c2c-int8-head-all-sharer_wide-align_on",
      "c2c-int8-head-all-sharer_wide-align_auto"};
  ASSERT_EQ(result->summaries.size(), answered.size() + refused_because.size());
  EXPECT_EQ(backend.calls(), static_cast<int>(answered.size()) * 2);
  const std::string dir = options.out_dir + "/openbookqa";
  for (const RunSummary& summary : result->summaries) {
    const std::string& id = summary.run.run_id;
    SCOPED_TRACE(id);
    const json j = json::parse(ReadAll(dir + "/" + id + "/summary.json"));
    if (auto it = refused_because.find(id); it != refused_because.end()) {
      EXPECT_THAT(summary.refused, ::testing::HasSubstr("FAILED_PRECONDITION"));
      EXPECT_THAT(summary.refused, ::testing::HasSubstr(it->second));
      EXPECT_EQ(summary.n, 0);
      EXPECT_EQ(summary.expected, 2);
      EXPECT_EQ(j["refused"], summary.refused);
      EXPECT_EQ(j["run"]["sharer"], id.find("wide_plain") != std::string::npos
                                        ? "wide_plain"
                                        : "wide");
      EXPECT_FALSE(fs::exists(dir + "/" + id + "/predictions.jsonl"));
      continue;
    }
    ASSERT_TRUE(answered.count(id)) << "unexpected run";
    EXPECT_EQ(summary.refused, "");
    EXPECT_EQ(j["refused"], "");
    EXPECT_EQ(summary.n, 2);
    EXPECT_EQ(Lines(ReadAll(dir + "/" + id + "/predictions.jsonl")).size(), 2u);
    for (const EvalItem* item : SelectItems(*ds, 2)) {
      const BackendAnswer& a =
          backend.answers().at("openbookqa/" + id + "/" + item->id);
      const bool c2c = id.rfind("c2c", 0) == 0;
      EXPECT_EQ(a.has_transfer, c2c);
      if (!c2c) continue;
      EXPECT_GT(a.transfer.wire_bytes(), 0u);
      // The receiver read its own rendering, whichever the sharer.
      auto ids =
          (*renderer)->Tokenize(BuildEvalPrompt(item->question, item->choices));
      ASSERT_TRUE(ids.ok());
      EXPECT_EQ(a.prompt_tokens, static_cast<int64_t>(ids->size()));
    }
  }
  // The refused rows are in the CSV, with the reason.
  const std::vector<std::string> csv =
      Lines(ReadAll(dir + "/budget_curve.csv"));
  EXPECT_EQ(csv.size(), 1 + result->summaries.size());
  EXPECT_THAT(csv[0], ::testing::EndsWith(
                          "sharer,token_alignment,alignment_strategy,refused"));
  int refused_rows = 0;
  for (const std::string& line : csv) {
    if (line.find("do not share a vocabulary") != std::string::npos ||
        line.find("trained with token alignment") != std::string::npos) {
      ++refused_rows;
    }
  }
  EXPECT_EQ(refused_rows, 2);
  EXPECT_THAT(log.str(), ::testing::HasSubstr("REFUSED"));
}

// Models by name: kvwire-eval's --receiver_dir, --sharer_dir and --fuser_dir
// as Hugging Face ids (the fuser a subfolder of its repository) read from a
// hub cache; an id absent from it stops the run with the `hf download`
// command that fetches it.
TEST_F(EndToEndTest, HuggingFaceIdsThroughTheCommandLine) {
  const std::string cache = *root_ + "/hub";
  ASSERT_TRUE(test_util::StoreInHubCache(assets_->receiver_dir, cache,
                                         "kvwire-test/tiny-receiver")
                  .ok());
  ASSERT_TRUE(test_util::StoreInHubCache(assets_->sharer_dir, cache,
                                         "kvwire-test/tiny-sharer")
                  .ok());
  ASSERT_TRUE(test_util::StoreInHubCache(assets_->fuser_dir, cache,
                                         "kvwire-test/C2C_Fuser",
                                         "tiny_pair_Fuser")
                  .ok());
  CliConfig c;
  c.methods = "c2c";
  c.schemes = "int8";
  c.max_new_tokens = 4;
  c.openbookqa = RepoDir() + "/tests/data/eval/obqa_ai2.jsonl";
  c.limit = 1;
  c.out = *root_ + "/out-hub";
  c.progress = false;
  c.plots = false;
  c.inprocess.receiver_dir = "kvwire-test/tiny-receiver";
  c.inprocess.sharer_dir = "kvwire-test/tiny-sharer@main";
  c.inprocess.fuser_dir = "kvwire-test/C2C_Fuser/tiny_pair_Fuser";
  c.inprocess.threads = 1;
  ASSERT_EQ(::setenv("HF_HUB_CACHE", cache.c_str(), 1), 0);
  std::ostringstream out, err;
  const int rc = RunEvalCli(c, out, err);

  CliConfig absent = c;
  absent.out = *root_ + "/out-hub-absent";
  absent.inprocess.fuser_dir = "kvwire-test/C2C_Fuser/other_Fuser";
  std::ostringstream absent_out, absent_err;
  const int absent_rc = RunEvalCli(absent, absent_out, absent_err);
  ::unsetenv("HF_HUB_CACHE");

  EXPECT_EQ(rc, 0) << err.str();
  const std::string snapshot =
      absl::StrCat("/snapshots/", std::string(40, 'c'));
  EXPECT_THAT(
      err.str(),
      ::testing::AllOf(
          ::testing::HasSubstr(absl::StrCat("receiver=", cache,
                                            "/models--kvwire-test--tiny-"
                                            "receiver",
                                            snapshot)),
          ::testing::HasSubstr(absl::StrCat("fuser=", cache,
                                            "/models--kvwire-test--C2C_Fuser",
                                            snapshot, "/tiny_pair_Fuser"))));
  EXPECT_EQ(absent_rc, 2);
  EXPECT_THAT(
      absent_err.str(),
      ::testing::AllOf(::testing::HasSubstr("NOT_FOUND: --fuser_dir: "),
                       ::testing::HasSubstr("hf download kvwire-test/C2C_Fuser "
                                            "--include 'other_Fuser/*'")));
}

}  // namespace
}  // namespace eval
}  // namespace kvwire
