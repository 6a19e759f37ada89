// kvwire-sharer-batch-bench: does batching concurrent prefills help the
// sharer's throughput? For `--requests` prompts of each length in
// `--tokens`, times (a) one worker prefilling them one after another, (b)
// `--workers` threads prefilling concurrently (what kvwire-sharer does with
// --workers), and (c) Decoder::PrefillBatch over groups of `--batch` rows,
// each with the per-layer callback the service uses. Prints one JSON object.
// Results: docs/perf/sharer.md.
//
//   kvwire-sharer-batch-bench --preset=qwen2.5-0.5b --device=cuda
//       --tokens=32,128,512 --requests=16 --workers=1,2,4 --batch=4,16
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/model/decoder.h"
#include "nlohmann/json.hpp"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

ABSL_FLAG(std::string, model_dir, "",
          "Model directory; empty: write a random --preset model to --out.");
ABSL_FLAG(std::string, preset, "qwen2.5-0.5b",
          "Shape preset for a random model (qwen2.5-0.5b, qwen3-0.6b, "
          "llama-3.2-1b).");
ABSL_FLAG(int64_t, layers, 0, "Override the preset's layer count (0: keep).");
ABSL_FLAG(std::string, out, "/tmp/kvwire_batch_bench_model",
          "Where the random model is written.");
ABSL_FLAG(std::string, device, "cpu", "cpu | cuda | cuda:N");
ABSL_FLAG(std::string, dtype, "auto", "auto (bf16 on CUDA, fp32 on CPU)");
ABSL_FLAG(std::string, tokens, "32,128,512", "Prompt lengths.");
ABSL_FLAG(int, requests, 8, "Prompts per measurement.");
ABSL_FLAG(std::string, workers, "1,2,4", "Concurrent worker counts.");
ABSL_FLAG(std::string, batch, "4,8", "PrefillBatch sizes.");
ABSL_FLAG(int, intra_op_threads, 0,
          "at::set_num_threads per thread (0: keep).");
ABSL_FLAG(int, iters, 3, "Timed repetitions (median).");

namespace kvwire {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::vector<int> ParseList(const std::string& text) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int v = 0;
    if (absl::SimpleAtoi(part, &v)) out.push_back(v);
  }
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The per-layer callback the service installs (it only queues views).
absl::Status OnLayer(const LayerKv& kv) {
  return kv.keys.defined() ? absl::OkStatus() : absl::InternalError("no keys");
}

void Sync(const at::Tensor& logits) { (void)logits.to(at::kCPU); }

absl::Status PrefillOne(const Decoder& d, const std::vector<int64_t>& ids) {
  auto cache = d.NewCache(static_cast<int64_t>(ids.size()));
  if (!cache.ok()) return cache.status();
  auto logits = d.Prefill(ids, *cache, OnLayer, LogitsMode::kLast);
  if (!logits.ok()) return logits.status();
  Sync(*logits);
  return absl::OkStatus();
}

absl::StatusOr<double> TimeWorkers(const Decoder& d,
                                   const std::vector<std::vector<int64_t>>& p,
                                   int workers, int threads) {
  std::vector<double> runs;
  for (int it = 0; it < absl::GetFlag(FLAGS_iters) + 1; ++it) {
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    const auto start = Clock::now();
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w) {
      pool.emplace_back([&] {
        if (threads > 0) at::set_num_threads(threads);
        c10::InferenceMode guard;
        for (size_t i; (i = next.fetch_add(1)) < p.size();) {
          if (!PrefillOne(d, p[i]).ok()) failed = true;
        }
      });
    }
    for (auto& t : pool) t.join();
    if (failed) return absl::InternalError("prefill failed");
    if (it > 0)
      runs.push_back(
          std::chrono::duration<double>(Clock::now() - start).count());
  }
  return Median(runs);
}

absl::StatusOr<double> TimeBatches(const Decoder& d,
                                   const std::vector<std::vector<int64_t>>& p,
                                   int batch, int threads) {
  if (threads > 0) at::set_num_threads(threads);
  c10::InferenceMode guard;
  std::vector<double> runs;
  for (int it = 0; it < absl::GetFlag(FLAGS_iters) + 1; ++it) {
    const auto start = Clock::now();
    for (size_t i = 0; i < p.size(); i += batch) {
      std::vector<std::vector<int64_t>> rows(
          p.begin() + i, p.begin() + std::min(p.size(), i + batch));
      auto cache = d.NewCache(static_cast<int64_t>(rows[0].size()),
                              static_cast<int64_t>(rows.size()));
      if (!cache.ok()) return cache.status();
      auto logits = d.PrefillBatch(rows, *cache, OnLayer, LogitsMode::kLast);
      if (!logits.ok()) return logits.status();
      Sync(*logits);
    }
    if (it > 0)
      runs.push_back(
          std::chrono::duration<double>(Clock::now() - start).count());
  }
  return Median(runs);
}

absl::Status Main() {
  std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  if (model_dir.empty()) {
    auto config = PresetModelConfig(absl::GetFlag(FLAGS_preset));
    if (!config.ok()) return config.status();
    if (absl::GetFlag(FLAGS_layers) > 0) {
      config->num_hidden_layers = absl::GetFlag(FLAGS_layers);
      SetUniformLayers(*config);
    }
    TinyCheckpointOptions options;
    options.config = *config;
    options.dtype = SafetensorsDtype::kBF16;
    model_dir = absl::GetFlag(FLAGS_out);
    if (auto st = WriteRandomCheckpoint(model_dir, options); !st.ok())
      return st;
  }
  auto device = ParseModelDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) return device.status();
  DecoderOptions options;
  options.device = *device;
  options.dtype = device->is_cuda() ? at::kBFloat16 : at::kFloat;
  if (absl::GetFlag(FLAGS_dtype) != "auto") {
    auto dtype = ParseModelDtype(absl::GetFlag(FLAGS_dtype));
    if (!dtype.ok()) return dtype.status();
    options.dtype = *dtype;
  }
  auto decoder = Decoder::Load(model_dir, options);
  if (!decoder.ok()) return decoder.status();
  const Decoder& d = **decoder;
  const int threads = absl::GetFlag(FLAGS_intra_op_threads);

  Json out;
  out["device"] = absl::GetFlag(FLAGS_device);
  out["model"] = model_dir;
  out["layers"] = d.config().num_hidden_layers;
  out["hidden"] = d.config().hidden_size;
  out["requests"] = absl::GetFlag(FLAGS_requests);
  out["intra_op_threads"] = threads > 0 ? threads : at::get_num_threads();
  std::mt19937 rng(1);
  for (int t : ParseList(absl::GetFlag(FLAGS_tokens))) {
    std::vector<std::vector<int64_t>> prompts(absl::GetFlag(FLAGS_requests));
    for (auto& p : prompts) {
      p.resize(t);
      for (auto& id : p) id = rng() % d.config().vocab_size;
    }
    const double total_tokens = static_cast<double>(t) * prompts.size();
    Json row;
    row["tokens"] = t;
    for (int w : ParseList(absl::GetFlag(FLAGS_workers))) {
      auto s = TimeWorkers(d, prompts, w, threads);
      if (!s.ok()) return s.status();
      row[absl::StrCat("workers_", w, "_tok_per_s")] = total_tokens / *s;
    }
    for (int b : ParseList(absl::GetFlag(FLAGS_batch))) {
      auto s = TimeBatches(d, prompts, b, threads);
      if (!s.ok()) return s.status();
      row[absl::StrCat("batch_", b, "_tok_per_s")] = total_tokens / *s;
    }
    out["results"].push_back(row);
    std::cerr << row.dump() << std::endl;
  }
  std::cout << out.dump(2) << std::endl;
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvwire

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Measures sequential, concurrent-worker and batched prefill "
      "throughput of a sharer model.");
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = kvwire::Main();
  if (!status.ok()) {
    std::cerr << status << std::endl;
    return 1;
  }
  return 0;
}
