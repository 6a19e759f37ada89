// kvwire-model-bench: prefill throughput and decode latency of the C++
// decoder on a Hugging Face model directory, plus optional numerical parity
// against reference logits/tokens recorded by tools/gen_model_goldens.py.
// Prints one JSON object on stdout.
//
//   kvwire-model-bench --model_dir=/tmp/qwen3 --device=cuda --dtype=bf16
//       --prompt_len=512 --decode_tokens=64
//       --parity=/tmp/qwen3/parity.safetensors
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/flags_help.h"
#include "common/model/decoder.h"
#include "common/model/safetensors.h"
#include "nlohmann/json.hpp"

#ifdef KVWIRE_WITH_CUDA
#include "common/model/cuda_graph_decoder.h"
#endif

ABSL_FLAG(std::string, model_dir, "", "Hugging Face model directory.");
ABSL_FLAG(std::string, device, "cpu", "cpu | cuda | cuda:N");
ABSL_FLAG(std::string, dtype, "bf16", "bf16 | fp16 | fp32");
ABSL_FLAG(std::string, attention, "auto", "auto | plain | sdpa");
ABSL_FLAG(int64_t, prompt_len, 512, "Prompt tokens for the prefill timing.");
ABSL_FLAG(int64_t, decode_tokens, 64, "Greedy tokens for the decode timing.");
ABSL_FLAG(int64_t, batch, 0,
          "If > 0, also time GenerateBatch with this many rows.");
ABSL_FLAG(int64_t, batch_prompt_len, 128, "Prompt length per row for --batch.");
ABSL_FLAG(int, warmup, 1, "Untimed warm-up runs.");
ABSL_FLAG(int, iters, 3, "Timed runs (the median is reported).");
ABSL_FLAG(std::string, parity, "",
          "Safetensors with input_ids [T] and logits [T, V] (and optionally "
          "ref_fp32_logits, greedy_tokens, keys.<l>/values.<l>) to compare.");
ABSL_FLAG(bool, perf, true, "Run the timing part.");
ABSL_FLAG(bool, parity_accelerated, true,
          "CUDA builds on a CUDA device, with --parity: also generate the "
          "greedy tokens through the CUDA-graph prefill + decode and through "
          "batched decode over a slot pool, and compare them.");
ABSL_FLAG(int64_t, sliding_window_override, 0,
          "> 0: DecoderOptions::sliding_window_override (C2C's Gemma-3 "
          "4096).");
ABSL_FLAG(bool, graph_decode, true,
          "CUDA builds on a CUDA device: also time decode with CUDA-graph "
          "replay (CudaGraphDecoder) and report it beside the eager numbers.");
ABSL_FLAG(bool, fused_kernels, true,
          "With --graph_decode: fused RMSNorm/RoPE/SiLU kernels in the graph.");

namespace kvwire {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

absl::Status Parity(const Decoder& decoder, const std::string& path,
                    Json& out) {
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  c10::InferenceMode guard;
  auto ids_t = (*file)->GetTensor("input_ids");
  if (!ids_t.ok()) return ids_t.status();
  const at::Tensor ids_flat = ids_t->to(at::kLong).reshape(-1).contiguous();
  std::vector<int64_t> ids(ids_flat.data_ptr<int64_t>(),
                           ids_flat.data_ptr<int64_t>() + ids_flat.numel());
  auto cache = decoder.NewCache(static_cast<int64_t>(ids.size()) + 1);
  if (!cache.ok()) return cache.status();
  auto logits = decoder.Prefill(ids, *cache, nullptr, LogitsMode::kAll);
  if (!logits.ok()) return logits.status();
  const at::Tensor ours = logits->to(at::kCPU);
  Json p;
  p["tokens"] = ids.size();
  auto ref = (*file)->GetTensor("logits");
  if (ref.ok()) {
    const at::Tensor r = ref->to(at::kFloat);
    if (r.sizes() != ours.sizes()) {
      return absl::InvalidArgumentError("reference logits have another shape");
    }
    const at::Tensor diff = (ours - r).abs();
    p["logits_max_abs_diff"] = diff.max().item<double>();
    p["logits_mean_abs_diff"] = diff.mean().item<double>();
    p["logits_max_abs_ref"] = r.abs().max().item<double>();
    p["argmax_agreement"] =
        ours.argmax(-1).eq(r.argmax(-1)).to(at::kFloat).mean().item<double>();
    auto ref32 = (*file)->GetTensor("ref_fp32_logits");
    if (ref32.ok()) {
      const at::Tensor f = ref32->to(at::kFloat);
      p["ours_vs_fp32_max_abs"] = (ours - f).abs().max().item<double>();
      p["ours_vs_fp32_mean_abs"] = (ours - f).abs().mean().item<double>();
      p["hf_vs_fp32_max_abs"] = (r - f).abs().max().item<double>();
      p["hf_vs_fp32_mean_abs"] = (r - f).abs().mean().item<double>();
    }
  }
  for (int64_t l = 0; l < decoder.config().num_hidden_layers; ++l) {
    auto k = (*file)->GetTensor(absl::StrCat("keys.", l));
    auto v = (*file)->GetTensor(absl::StrCat("values.", l));
    if (!k.ok() || !v.ok()) continue;
    const double dk =
        (cache->Keys(l).to(at::kCPU).to(at::kFloat) - k->to(at::kFloat))
            .abs()
            .max()
            .item<double>();
    const double dv =
        (cache->Values(l).to(at::kCPU).to(at::kFloat) - v->to(at::kFloat))
            .abs()
            .max()
            .item<double>();
    p["kv_max_abs_diff"] =
        std::max(p.value("kv_max_abs_diff", 0.0), std::max(dk, dv));
  }
  auto last = (*file)->GetTensor("last_logits");
  if (last.ok()) {
    const at::Tensor r = last->to(at::kFloat).reshape(-1);
    const at::Tensor o = ours.select(0, ours.size(0) - 1);
    p["last_logits_max_abs_diff"] = (o - r).abs().max().item<double>();
    p["last_logits_max_abs_ref"] = r.abs().max().item<double>();
  }
  auto greedy = (*file)->GetTensor("greedy_tokens");
  if (greedy.ok()) {
    const at::Tensor g = greedy->to(at::kLong).reshape(-1).contiguous();
    GenerationOptions opts;
    opts.max_new_tokens = g.numel();
    opts.eos_token_ids = std::vector<int64_t>{};
    auto result = decoder.Generate(ids, opts);
    if (!result.ok()) return result.status();
    int64_t same = 0;
    while (same < g.numel() &&
           same < static_cast<int64_t>(result->tokens.size()) &&
           result->tokens[same] == g.data_ptr<int64_t>()[same]) {
      ++same;
    }
    p["greedy_tokens"] = g.numel();
    p["greedy_matching_prefix"] = same;
    p["greedy_ours"] = result->tokens;
  }
  out["parity"] = p;
  return absl::OkStatus();
}

// The greedy tokens of `path` generated through the CUDA accelerators: the
// CUDA-graph prefill (prompt <= 1024 tokens) and decode, then batched decode
// over a slot pool (CUDA-graph step runner). Leaves `decoder` without them.
absl::Status AcceleratedParity(Decoder& decoder, const std::string& path,
                               Json& out) {
#ifdef KVWIRE_WITH_CUDA
  if (!decoder.device().is_cuda()) return absl::OkStatus();
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  auto ids_t = (*file)->GetTensor("input_ids");
  auto greedy = (*file)->GetTensor("greedy_tokens");
  if (!ids_t.ok() || !greedy.ok()) return absl::OkStatus();
  const at::Tensor ids_flat = ids_t->to(at::kLong).reshape(-1).contiguous();
  const std::vector<int64_t> ids(
      ids_flat.data_ptr<int64_t>(),
      ids_flat.data_ptr<int64_t>() + ids_flat.numel());
  const at::Tensor g = greedy->to(at::kLong).reshape(-1).contiguous();
  const std::vector<int64_t> expected(g.data_ptr<int64_t>(),
                                      g.data_ptr<int64_t>() + g.numel());
  GenerationOptions opts;
  opts.max_new_tokens = g.numel();
  opts.eos_token_ids = std::vector<int64_t>{};
  auto prefix = [&](const std::vector<int64_t>& got) {
    int64_t same = 0;
    while (same < static_cast<int64_t>(expected.size()) &&
           same < static_cast<int64_t>(got.size()) &&
           got[same] == expected[same]) {
      ++same;
    }
    return same;
  };
  Json& p = out["parity"];
  CudaGraphPrefillOptions prefill_options;
  prefill_options.max_tokens = 1024;
  auto prefill = std::make_shared<CudaGraphPrefill>(&decoder, prefill_options);
  auto graphs = std::make_shared<CudaGraphDecoder>(&decoder);
  decoder.SetPrefillAccelerator(prefill);
  decoder.SetDecodeAccelerator(graphs);
  auto graph = decoder.Generate(ids, opts);
  if (!graph.ok()) return graph.status();
  p["graph_greedy_matching_prefix"] = prefix(graph->tokens);
  p["graph_prefill_replays"] = prefill->replays();
  p["graph_decode_replays"] = graphs->replays();
  // Batched decode: the cache comes from a slot pool, its steps go through
  // the batcher (one request: rows of 1, the CUDA-graph step runner).
  auto pool = KvSlotPool::Create(
      decoder, 2, static_cast<int64_t>(ids.size()) + g.numel() + 1);
  if (!pool.ok()) return pool.status();
  decoder.SetSlotPool(*pool);
  auto batched = std::make_shared<BatchedDecodeAccelerator>(
      *pool, BatchedDecodeOptions{}, CudaGraphStepRunner(), graphs);
  decoder.SetDecodeAccelerator(batched);
  auto cache = decoder.NewCache(static_cast<int64_t>(ids.size()) + g.numel());
  if (!cache.ok()) return cache.status();
  auto prefilled =
      decoder.Prefill(absl::MakeConstSpan(ids).subspan(0, ids.size() - 1),
                      *cache, nullptr, LogitsMode::kNone);
  if (!prefilled.ok()) return prefilled.status();
  auto pooled = decoder.Generate(*cache, {ids.back()}, opts);
  if (!pooled.ok()) return pooled.status();
  p["batched_greedy_matching_prefix"] = prefix(pooled->tokens);
  p["batched_steps"] = batched->steps();
  decoder.SetDecodeAccelerator(nullptr);
  decoder.SetPrefillAccelerator(nullptr);
  decoder.SetSlotPool(nullptr);
#endif
  return absl::OkStatus();
}

// Bytes of weights one decode step reads (every layer's matrices, norms and
// biases, the final norm and the LM head; one embedding row), for the
// weight-streaming floor: bytes / HBM bandwidth. From the model family's
// weight list, so every architecture counts what it loads.
int64_t WeightBytesPerToken(const Decoder& decoder) {
  const ModelConfig& c = decoder.config();
  int64_t elements = 0;
  for (const WeightSpec& spec : ExpectedWeights(c)) {
    if (spec.slot == WeightSpec::Slot::kEmbedding) {
      elements += c.hidden_size;  // One row per token.
      // A tied LM head reads the whole matrix.
      if (c.tie_word_embeddings) elements += c.vocab_size * c.hidden_size;
      continue;
    }
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    elements += n;
  }
  return elements * static_cast<int64_t>(c10::elementSize(decoder.dtype()));
}

struct GenerateTiming {
  double prefill_s = 0;
  double generate_s = 0;
  std::vector<int64_t> tokens;
};

// Median prefill time of `prompt` and median Generate time (prefill + n
// greedy tokens) over the timed runs.
absl::StatusOr<GenerateTiming> TimeGenerate(const Decoder& decoder,
                                            const std::vector<int64_t>& prompt,
                                            const GenerationOptions& opts) {
  const int warmup = absl::GetFlag(FLAGS_warmup);
  const int iters = std::max(absl::GetFlag(FLAGS_iters), 1);
  const int64_t n = opts.max_new_tokens;
  std::vector<double> prefill, generate;
  GenerateTiming timing;
  for (int i = 0; i < warmup + iters; ++i) {
    auto cache = decoder.NewCache(static_cast<int64_t>(prompt.size()) + n);
    if (!cache.ok()) return cache.status();
    const auto t0 = Clock::now();
    auto logits = decoder.Prefill(prompt, *cache);
    if (!logits.ok()) return logits.status();
    (void)logits->to(at::kCPU);  // Synchronizes.
    const auto t1 = Clock::now();
    auto result = decoder.Generate(prompt, opts);
    if (!result.ok()) return result.status();
    const auto t2 = Clock::now();
    if (i >= warmup) {
      prefill.push_back(Seconds(t0, t1));
      generate.push_back(Seconds(t1, t2));
    }
    timing.tokens = result->tokens;
  }
  timing.prefill_s = Median(prefill);
  timing.generate_s = Median(generate);
  return timing;
}

absl::Status Perf(Decoder& decoder, Json& out) {
  const int64_t vocab = decoder.config().vocab_size;
  const int64_t prompt_len = absl::GetFlag(FLAGS_prompt_len);
  const int64_t n = std::max<int64_t>(absl::GetFlag(FLAGS_decode_tokens), 2);
  std::vector<int64_t> prompt(prompt_len);
  for (int64_t i = 0; i < prompt_len; ++i) prompt[i] = (i * 7919 + 13) % vocab;
  const int warmup = absl::GetFlag(FLAGS_warmup);
  const int iters = std::max(absl::GetFlag(FLAGS_iters), 1);
  GenerationOptions opts;
  opts.max_new_tokens = n;
  opts.eos_token_ids = std::vector<int64_t>{};
  // Eager first (this tool installs no accelerator of its own).
  absl::StatusOr<GenerateTiming> eager = TimeGenerate(decoder, prompt, opts);
  if (!eager.ok()) return eager.status();
  const double t_prefill = eager->prefill_s;
  const double t_generate = eager->generate_s;
  Json p;
  p["prompt_len"] = prompt_len;
  p["decode_tokens"] = n;
  p["prefill_s"] = t_prefill;
  p["prefill_tokens_per_s"] = prompt_len / t_prefill;
  p["generate_s"] = t_generate;
  p["decode_ms_per_token"] = 1e3 * (t_generate - t_prefill) / (n - 1);
  // Weight-streaming floor: bytes read per token / HBM bandwidth (datasheet
  // H100 SXM 3.35 TB/s, H200 4.8 TB/s); KV bytes at the last position.
  const ModelConfig& c = decoder.config();
  const int64_t weight_bytes = WeightBytesPerToken(decoder);
  const int64_t kv_bytes =
      2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim *
      (prompt_len + n) *
      static_cast<int64_t>(c10::elementSize(decoder.dtype()));
  p["weight_bytes_per_token"] = weight_bytes;
  p["kv_bytes_per_token_at_end"] = kv_bytes;
  p["hbm_floor_ms_h100"] = 1e3 * (weight_bytes + kv_bytes) / 3.35e12;
  p["hbm_floor_ms_h200"] = 1e3 * (weight_bytes + kv_bytes) / 4.8e12;
#ifdef KVWIRE_WITH_CUDA
  if (absl::GetFlag(FLAGS_graph_decode) && decoder.device().is_cuda()) {
    CudaGraphDecoderOptions graph_options;
    graph_options.fused_kernels = absl::GetFlag(FLAGS_fused_kernels);
    auto graphs = std::make_shared<CudaGraphDecoder>(&decoder, graph_options);
    decoder.SetDecodeAccelerator(graphs);
    absl::StatusOr<GenerateTiming> graph = TimeGenerate(decoder, prompt, opts);
    decoder.SetDecodeAccelerator(nullptr);
    if (!graph.ok()) return graph.status();
    p["graph_fused_kernels"] = graph_options.fused_kernels;
    p["graph_generate_s"] = graph->generate_s;
    p["graph_decode_ms_per_token"] =
        1e3 * (graph->generate_s - graph->prefill_s) / (n - 1);
    p["graph_tokens_match_eager"] = graph->tokens == eager->tokens;
    size_t same = 0;
    while (same < graph->tokens.size() && same < eager->tokens.size() &&
           graph->tokens[same] == eager->tokens[same]) {
      ++same;
    }
    // Random weights give near-tied logits: bf16 rounding may flip one.
    p["graph_tokens_matching_prefix"] = same;
    p["graph_replays"] = graphs->replays();
    p["graph_captures"] = graphs->captures();
    p["graph_declined"] = graphs->declined();
  }
#endif
  const int64_t batch = absl::GetFlag(FLAGS_batch);
  if (batch > 0) {
    const int64_t len = absl::GetFlag(FLAGS_batch_prompt_len);
    std::vector<std::vector<int64_t>> prompts(batch);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < len; ++i) {
        prompts[b].push_back((i * 7919 + b * 104729 + 13) % vocab);
      }
    }
    std::vector<double> times;
    for (int i = 0; i < warmup + iters; ++i) {
      const auto t0 = Clock::now();
      auto results = decoder.GenerateBatch(prompts, opts);
      if (!results.ok()) return results.status();
      if (i >= warmup) times.push_back(Seconds(t0, Clock::now()));
    }
    p["batch"] = batch;
    p["batch_prompt_len"] = len;
    p["batch_generate_s"] = Median(times);
    p["batch_tokens_per_s"] = batch * n / Median(times);
  }
  out["perf"] = p;
  return absl::OkStatus();
}

absl::Status Run() {
  DecoderOptions options;
  auto dtype = ParseModelDtype(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return dtype.status();
  auto device = ParseModelDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) return device.status();
  options.dtype = *dtype;
  options.device = *device;
  const std::string attention = absl::GetFlag(FLAGS_attention);
  options.attention = attention == "plain"  ? AttentionImpl::kPlain
                      : attention == "sdpa" ? AttentionImpl::kSdpa
                                            : AttentionImpl::kAuto;
  options.sliding_window_override =
      absl::GetFlag(FLAGS_sliding_window_override);
  const auto t0 = Clock::now();
  auto decoder = Decoder::Load(absl::GetFlag(FLAGS_model_dir), options);
  if (!decoder.ok()) return decoder.status();
  Json out;
  out["model_dir"] = absl::GetFlag(FLAGS_model_dir);
  out["architecture"] = (*decoder)->config().architecture;
  out["device"] = absl::GetFlag(FLAGS_device);
  out["dtype"] = absl::GetFlag(FLAGS_dtype);
  out["sdpa"] = (*decoder)->uses_sdpa();
  out["load_s"] = Seconds(t0, Clock::now());
  if (!absl::GetFlag(FLAGS_parity).empty()) {
    absl::Status s = Parity(**decoder, absl::GetFlag(FLAGS_parity), out);
    if (!s.ok()) out["parity_error"] = s.ToString();
    if (s.ok() && absl::GetFlag(FLAGS_parity_accelerated)) {
      s = AcceleratedParity(**decoder, absl::GetFlag(FLAGS_parity), out);
      if (!s.ok()) out["parity_accelerated_error"] = s.ToString();
    }
  }
  if (absl::GetFlag(FLAGS_perf)) {
    absl::Status s = Perf(**decoder, out);
    if (!s.ok()) out["perf_error"] = s.ToString();
  }
  std::cout << out.dump() << std::endl;
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvwire

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Times and checks the C++ decoder on a model directory.");
  kvwire::HelpListsFlagsOf({"tools/model_bench/main.cc"});
  absl::ParseCommandLine(argc, argv);
  try {
    const absl::Status status = kvwire::Run();
    if (!status.ok()) {
      std::cerr << "kvwire-model-bench: " << status << "\n";
      return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "kvwire-model-bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
