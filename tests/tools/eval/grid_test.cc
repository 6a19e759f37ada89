#include "tools/eval/grid.h"

#include <stdlib.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/tools/eval/test_util.h"
#include "tools/eval/cli.h"

namespace kvwire {
namespace eval {
namespace {

using ::kvwire::eval::testing::RepoDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

std::vector<std::string> Ids(const Grid& grid) {
  std::vector<std::string> ids;
  for (const RunSpec& r : grid.runs) ids.push_back(r.id);
  return ids;
}

const RunSpec* Find(const Grid& grid, const std::string& id) {
  for (const RunSpec& r : grid.runs) {
    if (r.id == id) return &r;
  }
  return nullptr;
}

BackendLayout Qwen3Qwen25() {
  BackendLayout layout;
  layout.receiver_layers = 28;
  layout.sharer_layers = 24;
  return layout;
}

TEST(GridTest, ExpandsTheFixtureGrid) {
  auto grid = LoadGridFile(RepoDir() + "/tools/eval/grids/fixture_small.yaml");
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->name, "fixture_small");
  EXPECT_THAT(
      Ids(*grid),
      ElementsAre("receiver-only", "sharer-only", "text-to-text",
                  "c2c-bf16-head-all", "c2c-int8-head-all", "c2c-int4-head-all",
                  "c2c-int8-head-back-p0.5", "c2c-int8-head-vnorm_topk-p0.5",
                  "c2c-int8-head-back-p0.25", "c2c-int8-head-vnorm_topk-p0.25",
                  "c2c-int4-head-all-last1_bf16", "c2c-int8-head-all-zstd3"));
  ASSERT_EQ(grid->datasets.size(), 2u);
  EXPECT_EQ(grid->datasets[0].first, "openbookqa");
  EXPECT_EQ(grid->datasets[0].second,
            RepoDir() + "/tests/data/eval/obqa_ai2.jsonl");
  EXPECT_EQ(grid->datasets[1].first, "arc_challenge");
  const RunSpec* back = Find(*grid, "c2c-int8-head-back-p0.5");
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->series, "back int8");
  EXPECT_EQ(back->anchor_id, "c2c-int8-head-all");
  EXPECT_THAT(back->blocks, ElementsAre("selection"));
  EXPECT_EQ(Find(*grid, "c2c-int8-head-all")->anchor_id, "");
}

TEST(GridTest, ExpandsThePrototypeMatrix) {
  auto grid =
      LoadGridFile(RepoDir() + "/tools/eval/grids/prototype_m0_m8.yaml");
  ASSERT_TRUE(grid.ok()) << grid.status();
  // 3 baselines + bf16 + int8/int4 + M3 2x4 partial + M6 3 + M8 int8 5x3 +
  // M8 int4 2x2 (every p = 1 folds into the full-transfer run).
  EXPECT_EQ(grid->runs.size(), 36u);
  const std::set<std::string> ids = [&] {
    auto v = Ids(*grid);
    return std::set<std::string>(v.begin(), v.end());
  }();
  EXPECT_EQ(ids.size(), grid->runs.size());
  for (const char* id :
       {"receiver-only", "sharer-only", "text-to-text", "c2c-bf16-head-all",
        "c2c-int4-head-all", "c2c-int8-head-front-p0.75",
        "c2c-int8-head-back-p0.1", "c2c-int8-head-all-int8_last4_fp16",
        "c2c-int8-head-random-p0.25-min64",
        "c2c-int8-head-proj_vnorm_topk-p0.1-min64",
        "c2c-int4-head-vnorm_topk-p0.25-min64"}) {
    EXPECT_TRUE(ids.count(id)) << id;
  }
  EXPECT_FALSE(ids.count("c2c-int4-head-vnorm_topk-p0.1-min64"));
  // The full INT8 run is shared by M2, M3 and M8.
  const RunSpec* full = Find(*grid, "c2c-int8-head-all");
  ASSERT_NE(full, nullptr);
  EXPECT_THAT(full->blocks,
              ElementsAre("m2_ptq", "m3_pruning", "m8_selective_int8"));
  const RunSpec* m8 = Find(*grid, "c2c-int8-head-knorm_topk-p0.5-min64");
  ASSERT_NE(m8, nullptr);
  EXPECT_EQ(m8->series, "knorm_topk int8 min64");
  EXPECT_EQ(m8->anchor_id, "c2c-int8-head-all");
}

TEST(GridTest, ResolvesTransferSpecs) {
  auto grid =
      LoadGridFile(RepoDir() + "/tools/eval/grids/prototype_m0_m8.yaml");
  ASSERT_TRUE(grid.ok()) << grid.status();

  auto m3 = ResolveRun(*Find(*grid, "c2c-int8-head-back-p0.25"), {});
  ASSERT_TRUE(m3.ok()) << m3.status();
  EXPECT_EQ(m3->selection_strategy, "spec");
  EXPECT_EQ(m3->transfer.scheme(), v1::SCHEME_INT8);
  EXPECT_EQ(m3->transfer.granularity(), v1::GRANULARITY_PER_HEAD);
  EXPECT_EQ(m3->transfer.selection().mode(), v1::SELECTION_BACK);
  EXPECT_DOUBLE_EQ(m3->transfer.selection().proportion(), 0.25);
  EXPECT_EQ(m3->transfer.selection().min_tokens(), 0u);
  EXPECT_FALSE(m3->transfer.has_entropy());

  auto proj =
      ResolveRun(*Find(*grid, "c2c-int8-head-proj_vnorm_topk-p0.5-min64"), {});
  ASSERT_TRUE(proj.ok()) << proj.status();
  EXPECT_EQ(proj->selection_strategy, "proj_vnorm_topk");
  EXPECT_DOUBLE_EQ(proj->transfer.selection().proportion(), 0.5);
  EXPECT_EQ(proj->transfer.selection().min_tokens(), 64u);

  auto all = ResolveRun(*Find(*grid, "c2c-int8-head-all"), {});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->transfer.selection().mode(), v1::SELECTION_ALL);

  auto base = ResolveRun(*Find(*grid, "receiver-only"), {});
  ASSERT_TRUE(base.ok());
  EXPECT_EQ(base->transfer.ByteSizeLong(), 0u);
}

TEST(GridTest, TranslatesReceiverSchedulesToSharerLayers) {
  auto grid =
      LoadGridFile(RepoDir() + "/tools/eval/grids/prototype_m0_m8.yaml");
  ASSERT_TRUE(grid.ok()) << grid.status();
  const RunSpec& last4 = *Find(*grid, "c2c-int8-head-all-int8_last4_fp16");
  // Without layer counts it cannot be resolved.
  EXPECT_EQ(ResolveRun(last4, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto r = ResolveRun(last4, Qwen3Qwen25());
  ASSERT_TRUE(r.ok()) << r.status();
  // Receiver layers 24-27 read sharer layers 20-23 (last-aligned).
  EXPECT_EQ(r->transfer.scheme(), v1::SCHEME_INT8);
  ASSERT_EQ(r->transfer.layer_overrides_size(), 1);
  const v1::LayerOverride& o = r->transfer.layer_overrides(0);
  EXPECT_EQ(o.scheme(), v1::SCHEME_FP16);
  EXPECT_EQ(o.range().first(), 20u);
  EXPECT_EQ(o.range().last(), 23u);

  // The same schedule does not fit a 4-layer receiver.
  BackendLayout tiny;
  tiny.receiver_layers = 4;
  tiny.sharer_layers = 3;
  auto bad = ResolveRun(last4, tiny);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("receiver layer 27"));
}

TEST(GridTest, LastNSchedulesAndAxes) {
  const char* yaml = R"(
schedules:
  last1: {last: 1, scheme: bf16}
  sharer_first: {layers_of: sharer, overrides: [{layers: [0], scheme: int8}]}
defaults:
  granularity: token
runs:
  - name: a
    scheme: int4
    schedule: [none, last1, sharer_first]
    zstd: [false, true, 19]
)";
  auto grid = ParseGridYaml(yaml, "");
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_THAT(
      Ids(*grid),
      ElementsAre("c2c-int4-token-all", "c2c-int4-token-all-last1",
                  "c2c-int4-token-all-sharer_first", "c2c-int4-token-all-zstd3",
                  "c2c-int4-token-all-last1-zstd3",
                  "c2c-int4-token-all-sharer_first-zstd3",
                  "c2c-int4-token-all-zstd19",
                  "c2c-int4-token-all-last1-zstd19",
                  "c2c-int4-token-all-sharer_first-zstd19"));
  BackendLayout tiny;
  tiny.receiver_layers = 4;
  tiny.sharer_layers = 3;
  tiny.layer_map = {0, 0, 1, 2};
  auto last1 = ResolveRun(*Find(*grid, "c2c-int4-token-all-last1"), tiny);
  ASSERT_TRUE(last1.ok()) << last1.status();
  // Receiver layer 3 reads sharer layer 2.
  ASSERT_EQ(last1->transfer.layer_overrides_size(), 1);
  EXPECT_EQ(last1->transfer.layer_overrides(0).scheme(), v1::SCHEME_BF16);
  EXPECT_THAT(last1->transfer.layer_overrides(0).layers(), ElementsAre(2u));
  auto sharer = ResolveRun(*Find(*grid, "c2c-int4-token-all-sharer_first"),
                           BackendLayout{});
  ASSERT_TRUE(sharer.ok()) << sharer.status();
  EXPECT_EQ(sharer->transfer.layer_overrides(0).scheme(), v1::SCHEME_INT8);
  auto zstd = ResolveRun(*Find(*grid, "c2c-int4-token-all-zstd19"), {});
  ASSERT_TRUE(zstd.ok());
  EXPECT_EQ(zstd->transfer.entropy().coder(), v1::ENTROPY_CODER_ZSTD);
  EXPECT_EQ(zstd->transfer.entropy().level(), 19);
  EXPECT_EQ(zstd->transfer.granularity(), v1::GRANULARITY_PER_TOKEN);
}

TEST(GridTest, FullSelectionFoldsAndSettingsReachTheSpec) {
  const char* yaml = R"(
runs:
  - name: b
    method: [receiver-only, c2c]
    scheme: int2
    selection: random
    proportion: [0.5, 1]
    seed: 7
    min_tokens: 2
    asymmetric: true
    granularity: group
    group_size: 16
    budget_bytes: 5000
    budget_mixed_precision: true
    layers: [2, 0, 2]
    max_new_tokens: 32
)";
  auto grid = ParseGridYaml(yaml, "");
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_THAT(Ids(*grid),
              UnorderedElementsAre(
                  "receiver-only-max32",
                  "c2c-int2-group-g16-asym-random-p0.5-min2-seed7-"
                  "budget5000mp-layers0_2-max32",
                  "c2c-int2-group-g16-asym-all-budget5000mp-layers0_2-max32"));
  const RunSpec* r = Find(*grid,
                          "c2c-int2-group-g16-asym-random-p0.5-min2-seed7-"
                          "budget5000mp-layers0_2-max32");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->anchor_id, "");  // Budget runs have no p = 1 anchor.
  EXPECT_EQ(r->series, "budget int2/group16 asym min2 mixed layers");
  auto resolved = ResolveRun(*r, {});
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  const v1::TransferSpec& t = resolved->transfer;
  EXPECT_EQ(t.scheme(), v1::SCHEME_INT2);
  EXPECT_EQ(t.granularity(), v1::GRANULARITY_PER_GROUP);
  EXPECT_EQ(t.group_size(), 16u);
  EXPECT_TRUE(t.asymmetric());
  EXPECT_EQ(t.selection().mode(), v1::SELECTION_RANDOM);
  EXPECT_EQ(t.selection().seed(), 7u);
  EXPECT_EQ(t.selection().min_tokens(), 2u);
  EXPECT_EQ(t.max_payload_bytes(), 5000u);
  EXPECT_TRUE(t.budget_allow_mixed_precision());
  EXPECT_THAT(t.layers(), ElementsAre(0u, 2u));
  EXPECT_EQ(resolved->spec.max_new_tokens, 32);
}

struct BadGrid {
  const char* yaml;
  const char* message;
};

TEST(GridTest, ErrorsNameTheProblemAndLine) {
  const BadGrid cases[] = {
      {"runs: []", "`runs` must be a non-empty list"},
      {"foo: 1\nruns: [{name: a}]",
       "unknown key 'foo' in the grid (known: name"},
      {"runs:\n  - name: a\n    schemes: int8\n",
       "unknown key 'schemes' in a run block"},
      {"runs:\n  - name: a\n    scheme: int9\n", "(line 3)"},
      {"runs:\n  - scheme: int8\n", "a block needs a name"},
      {"runs:\n  - {name: a}\n  - {name: a}\n", "duplicate block 'a'"},
      {"runs:\n  - {name: a, scheme: []}\n", "`scheme` is an empty list"},
      {"runs:\n  - {name: a, selection: explicit}\n", "needs indices"},
      {"runs:\n  - {name: a, selection: best}\n", "in-process strategy"},
      {"runs:\n  - {name: a, proportion: 0}\n", "must be positive"},
      {"runs:\n  - {name: a, zstd: 40}\n", "zstd level"},
      {"runs:\n  - {name: a, schedule: nope}\n", "unknown schedule 'nope'"},
      {"runs:\n  - {name: a, method: magic}\n", "unknown method 'magic'"},
      {"schedules:\n  s: {layers_of: receiver, default: int4, overrides: "
       "[{layers: [1], scheme: fp16}]}\nruns:\n  - {name: a, scheme: int8, "
       "schedule: s}\n",
       "schedule 's' has default int4 but the run's scheme is int8"},
      {"schedules:\n  s: {last: 2, file: x.yaml}\nruns: [{name: a}]\n",
       "needs exactly one of"},
      {"schedules:\n  s: {overrides: [{scheme: fp16}]}\nruns: [{name: a}]\n",
       "neither layers nor range"},
      {"datasets: {mmlu: x.jsonl}\nruns: [{name: a}]\n",
       "unknown dataset 'mmlu'"},
      {"runs: [{name: 'a b'}]", "block name 'a b'"},
  };
  for (const BadGrid& c : cases) {
    auto grid = ParseGridYaml(c.yaml, "");
    ASSERT_FALSE(grid.ok()) << c.yaml;
    EXPECT_EQ(grid.status().code(), absl::StatusCode::kInvalidArgument)
        << c.yaml;
    EXPECT_THAT(grid.status().message(), HasSubstr(c.message)) << c.yaml;
  }
}

TEST(GridTest, PrototypeScheduleFilesLoad) {
  const std::string dir = ::kvwire::eval::testing::TempDir("eval-grid");
  ASSERT_FALSE(dir.empty());
  {
    std::ofstream f(dir + "/kv_layer_schedule_last2.yaml");
    f << "layer_schedule:\n  default: int8\n  overrides:\n"
         "    - layers: [26, 27]\n      scheme: fp16\n";
  }
  auto grid = ParseGridYaml(
      "runs:\n  - {name: m6, scheme: int8, schedule: "
      "kv_layer_schedule_last2.yaml}\n",
      dir);
  ASSERT_TRUE(grid.ok()) << grid.status();
  ASSERT_EQ(grid->runs.size(), 1u);
  EXPECT_EQ(grid->runs[0].id, "c2c-int8-head-all-kv_layer_schedule_last2");
  auto r = ResolveRun(grid->runs[0], Qwen3Qwen25());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->transfer.layer_overrides(0).range().first(), 22u);
  EXPECT_EQ(r->transfer.layer_overrides(0).range().last(), 23u);
}

TEST(GridTest, SingleRunFlagsBuildOneBlock) {
  CliConfig c;
  c.schemes = "int8, int4";
  c.selections = "back";
  c.proportions = "0.5,0.25";
  c.zstd = "3";
  auto grid = GridFromConfig(c);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_THAT(Ids(*grid), ElementsAre("c2c-int8-head-back-p0.5-zstd3",
                                      "c2c-int4-head-back-p0.5-zstd3",
                                      "c2c-int8-head-back-p0.25-zstd3",
                                      "c2c-int4-head-back-p0.25-zstd3"));
  c.grid = "x.yaml";
  EXPECT_EQ(GridFromConfig(c).status().code(),
            absl::StatusCode::kInvalidArgument);
  CliConfig baseline;
  baseline.methods = "receiver-only,t2t";
  auto g2 = GridFromConfig(baseline);
  ASSERT_TRUE(g2.ok()) << g2.status();
  EXPECT_THAT(Ids(*g2), ElementsAre("receiver-only", "text-to-text"));
}

// M7: named sharers swept against token alignment; ${VAR}s from the
// variables (then the environment); the id and series name the pair.
TEST(GridTest, SharerAndAlignmentAxes) {
  const std::string yaml = R"(
sharers:
  llama: {sharer_dir: "${H5_TEST_LLAMA}", fuser_dir: fusers/llama}
  gemma:
    sharer_dir: /models/gemma
    sharer_tokenizer_dir: /tok/gemma
    fuser_dir: /fusers/gemma
runs:
  - name: m7
    method: [receiver-only, sharer-only, c2c]
    scheme: int8
    sharer: [default, llama, gemma]
    token_alignment: [on, off]
    alignment_strategy: first
)";
  auto grid = ParseGridYaml(yaml, "/grids", {{"H5_TEST_LLAMA", "/m/llama"}});
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_TRUE(grid->notes.empty());
  EXPECT_THAT(
      Ids(*grid),
      UnorderedElementsAre(
          "receiver-only", "sharer-only", "sharer-only-sharer_llama",
          "sharer-only-sharer_gemma", "c2c-int8-head-all-align_on_first",
          "c2c-int8-head-all-align_off_first",
          "c2c-int8-head-all-sharer_llama-align_on_first",
          "c2c-int8-head-all-sharer_llama-align_off_first",
          "c2c-int8-head-all-sharer_gemma-align_on_first",
          "c2c-int8-head-all-sharer_gemma-align_off_first"));
  // Receiver-only has no pair; sharer-only keeps the sharer, no fuser.
  EXPECT_TRUE(Find(*grid, "receiver-only")->pair.empty());
  EXPECT_TRUE(Find(*grid, "sharer-only")->pair.empty());
  const RunSpec* alone = Find(*grid, "sharer-only-sharer_gemma");
  ASSERT_NE(alone, nullptr);
  EXPECT_EQ(alone->pair.sharer_dir, "/models/gemma");
  EXPECT_EQ(alone->pair.sharer_tokenizer_dir, "/tok/gemma");
  EXPECT_TRUE(alone->pair.no_fuser);
  EXPECT_EQ(alone->pair.fuser_dir, "");
  EXPECT_EQ(alone->pair.token_alignment, "");
  EXPECT_EQ(alone->series, "sharer-only gemma");
  const RunSpec* llama =
      Find(*grid, "c2c-int8-head-all-sharer_llama-align_off_first");
  ASSERT_NE(llama, nullptr);
  EXPECT_EQ(llama->pair.sharer, "llama");
  EXPECT_EQ(llama->pair.sharer_dir, "/m/llama");
  EXPECT_EQ(llama->pair.fuser_dir, "/grids/fusers/llama");  // Relative.
  EXPECT_FALSE(llama->pair.no_fuser);
  EXPECT_EQ(llama->pair.token_alignment, "off");
  EXPECT_EQ(llama->pair.alignment_strategy, "first");
  EXPECT_EQ(llama->series, "all int8 llama align off/first");
  // Only alignment: the backend's own sharer.
  const RunSpec* own = Find(*grid, "c2c-int8-head-all-align_on_first");
  ASSERT_NE(own, nullptr);
  EXPECT_EQ(own->pair.sharer, "");
  EXPECT_EQ(own->pair.sharer_dir, "");
  EXPECT_EQ(own->pair.token_alignment, "on");
  EXPECT_FALSE(own->pair.empty());
  EXPECT_THAT(own->pair.Describe(), HasSubstr("token_alignment=on/first"));
}

TEST(GridTest, UnsetSharerVariablesLeaveTheirRunsOutWithANote) {
  const std::string yaml = R"(
sharers:
  missing: {sharer_dir: "${H5_TEST_UNSET_DIR_1234}/model"}
runs:
  - name: base
    scheme: int8
  - name: m7
    method: [receiver-only, c2c]
    scheme: int8
    sharer: missing
    token_alignment: [on, off]
)";
  ::unsetenv("H5_TEST_UNSET_DIR_1234");
  auto grid = ParseGridYaml(yaml, "/grids");
  ASSERT_TRUE(grid.ok()) << grid.status();
  // receiver-only drops the sharer, so it stays.
  EXPECT_THAT(Ids(*grid), ElementsAre("c2c-int8-head-all", "receiver-only"));
  ASSERT_EQ(grid->notes.size(), 1u);
  EXPECT_THAT(grid->notes[0], HasSubstr("block m7"));
  EXPECT_THAT(grid->notes[0], HasSubstr("${H5_TEST_UNSET_DIR_1234}"));
  EXPECT_THAT(grid->notes[0],
              HasSubstr("--grid_var=H5_TEST_UNSET_DIR_1234=..."));
  // The environment is the fallback.
  ::setenv("H5_TEST_UNSET_DIR_1234", "/env", 1);
  auto from_env = ParseGridYaml(yaml, "/grids");
  ::unsetenv("H5_TEST_UNSET_DIR_1234");
  ASSERT_TRUE(from_env.ok()) << from_env.status();
  EXPECT_TRUE(from_env->notes.empty());
  const RunSpec* on =
      Find(*from_env, "c2c-int8-head-all-sharer_missing-align_on");
  ASSERT_NE(on, nullptr);
  EXPECT_EQ(on->pair.sharer_dir, "/env/model");
}

TEST(GridTest, SharerAndAlignmentErrors) {
  auto error = [](const std::string& yaml) {
    absl::StatusOr<Grid> g = ParseGridYaml(yaml, "/tmp");
    return g.ok() ? std::string("ok") : std::string(g.status().message());
  };
  EXPECT_THAT(error("runs: [{name: a, sharer: nope}]"),
              HasSubstr("unknown sharer 'nope' (known: default"));
  EXPECT_THAT(error("runs: [{name: a, token_alignment: maybe}]"),
              HasSubstr("`token_alignment` is auto, on or off"));
  EXPECT_THAT(error("runs: [{name: a, alignment_strategy: best}]"),
              HasSubstr("first or longest"));
  EXPECT_THAT(error("sharers: {x: {fuser_dir: /f}}\nruns: [{name: a}]"),
              HasSubstr("needs sharer_dir"));
  EXPECT_THAT(
      error("sharers: {x: {sharer_dir: /s, tokenizer: /t}}\nruns: [{name: a}]"),
      HasSubstr("unknown key 'tokenizer'"));
  EXPECT_THAT(error("sharers: {default: {sharer_dir: /s}}\nruns: [{name: a}]"),
              HasSubstr("not 'default'"));
  EXPECT_THAT(
      error("sharers: {x: {sharer_dir: \"${1BAD}\"}}\nruns: [{name: a}]"),
      HasSubstr("bad variable name '1BAD'"));
  // YAML's booleans are on/off.
  auto grid = ParseGridYaml(
      "runs: [{name: a, scheme: int8, token_alignment: [true, no, auto]}]",
      "/tmp");
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_THAT(Ids(*grid), ElementsAre("c2c-int8-head-all-align_on",
                                      "c2c-int8-head-all-align_off",
                                      "c2c-int8-head-all-align_auto"));
}

TEST(GridTest, ParsesGridVariables) {
  auto vars = ParseGridVariables("A=/x, B_2=/y=z,");
  ASSERT_TRUE(vars.ok()) << vars.status();
  EXPECT_EQ(vars->size(), 2u);
  EXPECT_EQ(vars->at("A"), "/x");
  EXPECT_EQ(vars->at("B_2"), "/y=z");
  EXPECT_EQ(ParseGridVariables("A").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseGridVariables("A-B=1").status().code(),
            absl::StatusCode::kInvalidArgument);
  // The CLI hands them to the grid; without a grid they are an error.
  CliConfig c;
  c.grid = RepoDir() + "/tools/eval/grids/prototype_m0_m8.yaml";
  c.grid_vars =
      "LLAMA_SHARER_DIR=/m/llama,LLAMA_FUSER_DIR=/f/llama,"
      "GEMMA_SHARER_DIR=/m/gemma,GEMMA_FUSER_DIR=/f/gemma";
  auto grid = GridFromConfig(c);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_TRUE(grid->notes.empty());
  const RunSpec* off =
      Find(*grid, "c2c-int8-head-all-sharer_gemma3_1b-align_off");
  ASSERT_NE(off, nullptr);
  EXPECT_EQ(off->pair.sharer_dir, "/m/gemma");
  EXPECT_EQ(off->pair.fuser_dir, "/f/gemma");
  CliConfig bad;
  bad.methods = "c2c";
  bad.grid_vars = "A=1";
  EXPECT_EQ(GridFromConfig(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The prototype grid's M7 block: each sharer alone and through C2C at bf16
// and INT8, alignment on and off; without its variables it is left out and
// everything else is unchanged.
TEST(GridTest, PrototypeM7Block) {
  const std::string path = RepoDir() + "/tools/eval/grids/prototype_m0_m8.yaml";
  for (const char* v : {"LLAMA_SHARER_DIR", "LLAMA_FUSER_DIR",
                        "GEMMA_SHARER_DIR", "GEMMA_FUSER_DIR"}) {
    ::unsetenv(v);
  }
  auto without = LoadGridFile(path);
  ASSERT_TRUE(without.ok()) << without.status();
  EXPECT_EQ(without->notes.size(), 2u);
  for (const RunSpec& r : without->runs) EXPECT_TRUE(r.pair.empty()) << r.id;
  auto with = LoadGridFile(path, {{"LLAMA_SHARER_DIR", "/l"},
                                  {"LLAMA_FUSER_DIR", "/lf"},
                                  {"GEMMA_SHARER_DIR", "/g"},
                                  {"GEMMA_FUSER_DIR", "/gf"}});
  ASSERT_TRUE(with.ok()) << with.status();
  std::vector<std::string> m7;
  for (const RunSpec& r : with->runs) {
    if (std::find(r.blocks.begin(), r.blocks.end(), "m7_heterogeneous") !=
        r.blocks.end()) {
      m7.push_back(r.id);
    }
  }
  EXPECT_EQ(with->runs.size(), without->runs.size() + m7.size());
  EXPECT_THAT(
      m7, UnorderedElementsAre("sharer-only-sharer_llama3.2_1b",
                               "sharer-only-sharer_gemma3_1b",
                               "c2c-bf16-head-all-sharer_llama3.2_1b-align_on",
                               "c2c-bf16-head-all-sharer_llama3.2_1b-align_off",
                               "c2c-int8-head-all-sharer_llama3.2_1b-align_on",
                               "c2c-int8-head-all-sharer_llama3.2_1b-align_off",
                               "c2c-bf16-head-all-sharer_gemma3_1b-align_on",
                               "c2c-bf16-head-all-sharer_gemma3_1b-align_off",
                               "c2c-int8-head-all-sharer_gemma3_1b-align_on",
                               "c2c-int8-head-all-sharer_gemma3_1b-align_off"));
}

}  // namespace
}  // namespace eval
}  // namespace kvwire
