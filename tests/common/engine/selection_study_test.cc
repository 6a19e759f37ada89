// Comparison of token-selection modes in the in-process pipeline (issue 4
// §2): the sharer-side wire modes, the projector-aware modes
// (proj_vnorm_topk, delta_proj_vnorm_topk) and the receiver-guided ones, at
// equal token budgets (so equal bytes up to index encoding). For each mode
// and proportion p it measures, on tiny random models (test_assets.h; two
// model seeds x three prompts):
//   * bytes: the serialized KvChunk stream (INT8 per-head);
//   * fused-KV error vs the full transfer: ||F_mode - F_full||_F /
//     ||F_full - R||_F over every fused receiver layer and position, where
//     F_full is C2C's own unquantized fusion of every token (direct path) and
//     R the receiver's own KV (0: as good as the full transfer, 1: as if
//     nothing were fused), separately for K and V;
//   * selection overlap: Jaccard of the selected positions between modes,
//     averaged over sharer layers, prompts and seeds.
// With KVWIRE_SELECTION_REPORT=<path> it writes the tables as markdown
// (docs/perf/selection.md quotes them).
#include <ATen/ATen.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/engine/pipeline.h"
#include "gtest/gtest.h"
#include "tests/common/engine/test_assets.h"

namespace kvwire {
namespace {

struct Mode {
  std::string name;
  v1::SelectionMode wire = v1::SELECTION_ALL;
  bool shared = false;
  SelectionStrategy strategy = SelectionStrategy::kSpec;
};

std::vector<Mode> Modes() {
  return {
      {"front", v1::SELECTION_FRONT},
      {"back", v1::SELECTION_BACK},
      {"random", v1::SELECTION_RANDOM},
      {"knorm_topk", v1::SELECTION_KNORM_TOPK},
      {"vnorm_topk", v1::SELECTION_VNORM_TOPK},
      {"vnorm_topk (shared)", v1::SELECTION_VNORM_TOPK, true},
      {"proj_vnorm_topk", v1::SELECTION_ALL, false,
       SelectionStrategy::kProjVNormTopK},
      {"delta_proj_vnorm_topk", v1::SELECTION_ALL, false,
       SelectionStrategy::kDeltaProjVNormTopK},
      {"receiver_attention", v1::SELECTION_ALL, false,
       SelectionStrategy::kReceiverAttention},
      {"receiver_vnorm", v1::SELECTION_ALL, false,
       SelectionStrategy::kReceiverVNorm},
  };
}

const std::vector<std::string>& Questions() {
  static const auto* q = new std::vector<std::string>{
      "Which of these would help a plant grow in a dark room? A. a lamp B. "
      "a fan C. a rock D. more soil. Think about what plants need for "
      "photosynthesis and why light matters.",
      "A student drops a ball and a feather in a vacuum chamber. Which lands "
      "first? A. the ball B. the feather C. both at the same time D. "
      "neither, they float.",
      "Why does ice float on water? A. it is colder B. it is less dense C. "
      "it is heavier D. water pushes it up because of salt.",
  };
  return *q;
}

struct Cell {
  double err_k = 0, err_v = 0, bytes = 0, tokens = 0;
  int n = 0;
};

double Error(const std::map<int, std::pair<at::Tensor, at::Tensor>>& mine,
             const std::map<int, std::pair<at::Tensor, at::Tensor>>& full,
             const std::map<int, std::pair<at::Tensor, at::Tensor>>& own,
             bool values) {
  double num = 0, den = 0;
  for (const auto& [t, kv] : full) {
    const at::Tensor f = values ? kv.second : kv.first;
    const at::Tensor m = values ? mine.at(t).second : mine.at(t).first;
    const at::Tensor o = values ? own.at(t).second : own.at(t).first;
    num += (m - f).pow(2).sum().item<double>();
    den += (f - o).pow(2).sum().item<double>();
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

TEST(SelectionStudyTest, ModesAtEqualBudgets) {
  const std::vector<double> proportions = {0.5, 0.25, 0.1};
  const std::vector<Mode> modes = Modes();
  std::map<std::pair<std::string, double>, Cell> cells;
  std::map<std::pair<std::string, std::string>, std::pair<double, int>> jac;
  Cell full_int8;
  int prompts = 0;
  int64_t prompt_tokens = 0;
  for (uint64_t seed : {1u, 2u}) {
    const std::string root = MakeTempDir("kvwire-selection");
    TinyPipelineOptions to;
    to.seed = seed;
    auto assets = MakeTinyPipeline(root, to);
    ASSERT_TRUE(assets.ok()) << assets.status();
    PipelineOptions o;
    o.receiver.model.dir = assets->receiver_dir;
    o.sharer.model.dir = assets->sharer_dir;
    o.receiver.fuser_dir = assets->fuser_dir;
    auto loaded = C2cPipeline::Load(o);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    const C2cPipeline& p = **loaded;
    for (const std::string& q : Questions()) {
      PipelineRequest base;
      base.messages = {ChatMessage{"user", q, std::nullopt}};
      base.mode = PipelineMode::kC2C;
      base.generation.max_new_tokens = 1;
      base.capture_layers = {0, 1, 2, 3};
      base.spec.set_scheme(v1::SCHEME_INT8);
      PipelineRequest own_req = base;
      own_req.mode = PipelineMode::kReceiverOnly;
      auto own = p.Answer(own_req);
      PipelineRequest full_req = base;
      full_req.direct_transfer = true;
      auto full = p.Answer(full_req);
      auto all8 = p.Answer(base);
      ASSERT_TRUE(own.ok() && full.ok() && all8.ok());
      ++prompts;
      prompt_tokens += all8->transfer->prompt_tokens;
      full_int8.err_k +=
          Error(all8->captured, full->captured, own->captured, false);
      full_int8.err_v +=
          Error(all8->captured, full->captured, own->captured, true);
      full_int8.bytes += static_cast<double>(all8->transfer->serialized_bytes);
      full_int8.tokens += all8->transfer->tokens_sent;
      ++full_int8.n;
      for (double prop : proportions) {
        std::map<std::string, std::map<uint32_t, std::vector<uint32_t>>> sel;
        for (const Mode& m : modes) {
          PipelineRequest r = base;
          r.selection = m.strategy;
          v1::TokenSelection* s = r.spec.mutable_selection();
          s->set_mode(m.wire);
          s->set_proportion(prop);
          s->set_seed(seed);
          s->set_shared_across_layers(m.shared);
          auto res = p.Answer(r);
          ASSERT_TRUE(res.ok()) << m.name << ": " << res.status();
          Cell& c = cells[{m.name, prop}];
          c.err_k += Error(res->captured, full->captured, own->captured, false);
          c.err_v += Error(res->captured, full->captured, own->captured, true);
          c.bytes += static_cast<double>(res->transfer->serialized_bytes);
          c.tokens += res->transfer->tokens_sent;
          ++c.n;
          sel[m.name] = res->transfer->selected;
        }
        if (prop != 0.25) continue;
        for (const Mode& a : modes) {
          for (const Mode& b : modes) {
            double sum = 0;
            for (const auto& [layer, positions] : sel[a.name]) {
              sum += Jaccard(positions, sel[b.name].at(layer));
            }
            auto& j = jac[{a.name, b.name}];
            j.first += sum / static_cast<double>(sel[a.name].size());
            ++j.second;
          }
        }
      }
    }
  }

  // Sanity: a full INT8 transfer is close to the unquantized one; every
  // partial mode loses something; the delta mode, which picks the positions
  // with the largest fusion residual, loses the least V.
  EXPECT_LT(full_int8.err_v / full_int8.n, 0.05);
  for (double prop : proportions) {
    double best_other = 1e9;
    for (const Mode& m : modes) {
      const Cell& c = cells[{m.name, prop}];
      EXPECT_GT(c.err_v / c.n, 0.0) << m.name;
      EXPECT_LT(c.err_v / c.n, 1.5) << m.name;
      if (m.name != "delta_proj_vnorm_topk") {
        best_other = std::min(best_other, c.err_v / c.n);
      }
    }
    const Cell& d = cells[{"delta_proj_vnorm_topk", prop}];
    EXPECT_LE(d.err_v / d.n, best_other + 1e-9) << "p=" << prop;
  }
  for (const Mode& m : modes) {
    const auto& self = jac[std::make_pair(m.name, m.name)];
    EXPECT_NEAR(self.first / self.second, 1.0, 1e-12);
  }

  const char* out = std::getenv("KVWIRE_SELECTION_REPORT");
  if (out == nullptr) return;
  std::string md;
  absl::StrAppendFormat(
      &md,
      "Prompts: %d (3 questions x 2 model seeds), mean %.1f fused positions "
      "(L-1) per prompt. Scheme INT8 per-head. Full INT8 transfer: %.0f "
      "bytes, K error %.4f, V error %.4f.\n\n",
      prompts, static_cast<double>(prompt_tokens) / prompts,
      full_int8.bytes / full_int8.n, full_int8.err_k / full_int8.n,
      full_int8.err_v / full_int8.n);
  md +=
      "| mode | p | tokens sent (sum over 3 layers) | bytes | K error | V "
      "error |\n";
  md += "|---|---|---|---|---|---|\n";
  for (double prop : proportions) {
    for (const Mode& m : modes) {
      const Cell& c = cells[{m.name, prop}];
      absl::StrAppendFormat(&md, "| %s | %.2f | %.1f | %.0f | %.3f | %.3f |\n",
                            m.name, prop, c.tokens / c.n, c.bytes / c.n,
                            c.err_k / c.n, c.err_v / c.n);
    }
  }
  md += "\nJaccard overlap of the selected positions at p = 0.25:\n\n| |";
  for (const Mode& b : modes) md += " " + b.name + " |";
  md += "\n|---|";
  for (size_t i = 0; i < modes.size(); ++i) md += "---|";
  md += "\n";
  for (const Mode& a : modes) {
    md += "| " + a.name + " |";
    for (const Mode& b : modes) {
      const auto& j = jac[{a.name, b.name}];
      absl::StrAppendFormat(&md, " %.2f |", j.first / j.second);
    }
    md += "\n";
  }
  std::ofstream(out) << md;
}

}  // namespace
}  // namespace kvwire
