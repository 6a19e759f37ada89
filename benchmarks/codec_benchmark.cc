// Codec throughput on one CPU core, in GB/s of bf16 input (the figure the
// foundation issue targets: >= 2 GB/s per core for INT8/INT4 per-head encode).
//   kvwire_codec_benchmark --benchmark_filter=Quantize
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <vector>

#include "common/codec/kv_codec.h"
#include "common/codec/quantizer.h"
#include "common/codec/synthetic_kv.h"

namespace kvwire {
namespace {

struct Case {
  v1::Scheme scheme;
  v1::Granularity granularity;
  bool asymmetric;
};

const Case kCases[] = {
    {v1::SCHEME_BF16, v1::GRANULARITY_PER_HEAD, false},
    {v1::SCHEME_INT8, v1::GRANULARITY_PER_HEAD, false},
    {v1::SCHEME_INT8, v1::GRANULARITY_PER_TOKEN, false},
    {v1::SCHEME_INT8, v1::GRANULARITY_PER_CHANNEL, false},
    {v1::SCHEME_INT4, v1::GRANULARITY_PER_HEAD, false},
    {v1::SCHEME_INT4, v1::GRANULARITY_PER_GROUP, false},
    {v1::SCHEME_INT4, v1::GRANULARITY_PER_TOKEN, true},
    {v1::SCHEME_INT2, v1::GRANULARITY_PER_GROUP, true},
    {v1::SCHEME_NF4, v1::GRANULARITY_PER_GROUP, false},
    {v1::SCHEME_FP8_E4M3, v1::GRANULARITY_PER_TOKEN, false},
};

QuantParams ParamsOf(const Case& c) {
  QuantParams p;
  p.scheme = c.scheme;
  p.granularity = c.granularity;
  p.asymmetric = c.asymmetric;
  p.group_size = 32;
  return p;
}

// One layer's keys of a 4096-token prompt at Qwen2.5-0.5B's KV shape: 1 MiB.
const at::Tensor& LayerKeys() {
  static const at::Tensor keys = [] {
    SyntheticKvOptions o;
    o.layers = 1;
    o.tokens = 4096;
    return MakeSyntheticKv(o)[0].first;
  }();
  return keys;
}

void Label(benchmark::State& state, const Case& c) {
  state.SetLabel(SchemeName(c.scheme) + "/" + GranularityName(c.granularity) +
                 (c.asymmetric ? "/asym" : ""));
}

void BM_Quantize(benchmark::State& state) {
  at::set_num_threads(1);
  const Case& c = kCases[state.range(0)];
  const at::Tensor& x = LayerKeys();
  for (auto _ : state) {
    auto q = Quantize(x, ParamsOf(c));
    benchmark::DoNotOptimize(q);
  }
  state.SetBytesProcessed(state.iterations() * x.nbytes());
  Label(state, c);
}
BENCHMARK(BM_Quantize)
    ->DenseRange(0, std::size(kCases) - 1)
    ->Unit(benchmark::kMicrosecond);

// The ATen reference path (what CUDA tensors use) on the same input: the
// baseline the fused CPU kernel is compared against.
void BM_QuantizeReference(benchmark::State& state) {
  at::set_num_threads(1);
  const Case& c = kCases[state.range(0)];
  const at::Tensor& x = LayerKeys();
  for (auto _ : state) {
    auto q = QuantizeReference(x, ParamsOf(c));
    benchmark::DoNotOptimize(q);
  }
  state.SetBytesProcessed(state.iterations() * x.nbytes());
  Label(state, c);
}
BENCHMARK(BM_QuantizeReference)
    ->DenseRange(0, std::size(kCases) - 1)
    ->Unit(benchmark::kMicrosecond);

void BM_Dequantize(benchmark::State& state) {
  at::set_num_threads(1);
  const Case& c = kCases[state.range(0)];
  const at::Tensor& x = LayerKeys();
  const QuantizedTensor q = *Quantize(x, ParamsOf(c));
  for (auto _ : state) {
    auto y = Dequantize(q, ParamsOf(c), x.size(0), x.size(1), x.size(2),
                        at::kBFloat16);
    benchmark::DoNotOptimize(y);
  }
  state.SetBytesProcessed(state.iterations() * x.nbytes());
  Label(state, c);
}
BENCHMARK(BM_Dequantize)
    ->DenseRange(0, std::size(kCases) - 1)
    ->Unit(benchmark::kMicrosecond);

// The whole sharer-side path for a 1024-token Qwen2.5-0.5B cache: selection,
// quantization, packing, CRC, protobuf framing.
void BM_EncodeStream(benchmark::State& state) {
  at::set_num_threads(1);
  const Case& c = kCases[state.range(0)];
  SyntheticKvOptions o;
  o.tokens = 1024;
  const auto cache = MakeSyntheticKv(o);
  const v1::ModelInfo model = SyntheticModelInfo(o);
  v1::TransferSpec spec;
  spec.set_scheme(c.scheme);
  spec.set_granularity(c.granularity);
  spec.set_asymmetric(c.asymmetric);
  int64_t bytes = 0;
  for (auto _ : state) {
    auto encoder = *KvStreamEncoder::Create(model, 1024, spec, "bench");
    std::vector<v1::KvChunk> chunks;
    (void)encoder->Start(&chunks);
    for (size_t l = 0; l < cache.size(); ++l) {
      (void)encoder->AddLayer(l, cache[l].first, cache[l].second, &chunks);
    }
    benchmark::DoNotOptimize(encoder->Finish(0));
    bytes = encoder->accounting().total().total();
  }
  state.SetBytesProcessed(state.iterations() * 2 * 24 * 2 * 1024 * 64 * 2);
  state.counters["wire_bytes"] = bytes;
  Label(state, c);
}
BENCHMARK(BM_EncodeStream)
    ->DenseRange(0, std::size(kCases) - 1)
    ->Unit(benchmark::kMillisecond);

void BM_DecodeStream(benchmark::State& state) {
  at::set_num_threads(1);
  const Case& c = kCases[state.range(0)];
  SyntheticKvOptions o;
  o.tokens = 1024;
  const auto cache = MakeSyntheticKv(o);
  v1::TransferSpec spec;
  spec.set_scheme(c.scheme);
  spec.set_granularity(c.granularity);
  spec.set_asymmetric(c.asymmetric);
  auto encoder =
      *KvStreamEncoder::Create(SyntheticModelInfo(o), 1024, spec, "b");
  std::vector<v1::KvChunk> chunks;
  (void)encoder->Start(&chunks);
  for (size_t l = 0; l < cache.size(); ++l) {
    (void)encoder->AddLayer(l, cache[l].first, cache[l].second, &chunks);
  }
  chunks.push_back(*encoder->Finish(0));
  for (auto _ : state) {
    KvStreamDecoder decoder(at::kBFloat16, at::kCPU);
    for (const auto& chunk : chunks)
      benchmark::DoNotOptimize(decoder.Consume(chunk));
  }
  state.SetBytesProcessed(state.iterations() * 2 * 24 * 2 * 1024 * 64 * 2);
  Label(state, c);
}
BENCHMARK(BM_DecodeStream)
    ->DenseRange(0, std::size(kCases) - 1)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvwire

BENCHMARK_MAIN();
