// Throughput of the fused CUDA codec kernels (cuda_quantize.h) against the
// ATen-on-GPU reference path (QuantizeReference), on a large KV cache: 28
// layers x K,V x 8 KV heads x 4096 tokens x 128 dims of bf16 (470 MB).
// Timed with CUDA events around whole passes over the cache (manual time).
// Counters: in_GBps (bf16 input read), io_GBps (input + packed output and
// scales written), peak_frac (io_GBps over the card's datasheet bandwidth:
// H100 SXM 3.35 TB/s, H200 4.8 TB/s; 0 when the card is not recognized).
//   kvwire_cuda_codec_benchmark --benchmark_filter=Kernel
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <string>
#include <vector>

#include "common/codec/cuda_codec.h"
#include "common/codec/cuda_quantize.h"
#include "common/codec/quantizer.h"

namespace kvwire {
namespace {

constexpr int64_t kLayers = 28, kHeads = 8, kTokens = 4096, kDim = 128;
constexpr int64_t kBlocks = 2 * kLayers;  // K and V of every layer.

struct Case {
  v1::Scheme scheme;
  v1::Granularity granularity;
  bool asymmetric;
};

const Case kCases[] = {
    {v1::SCHEME_INT8, v1::GRANULARITY_PER_TOKEN, false},
    {v1::SCHEME_INT8, v1::GRANULARITY_PER_HEAD, false},
    {v1::SCHEME_INT8, v1::GRANULARITY_PER_CHANNEL, false},
    {v1::SCHEME_INT4, v1::GRANULARITY_PER_TOKEN, true},
    {v1::SCHEME_INT4, v1::GRANULARITY_PER_GROUP, false},
    {v1::SCHEME_INT4, v1::GRANULARITY_PER_HEAD, false},
    {v1::SCHEME_INT2, v1::GRANULARITY_PER_GROUP, true},
    {v1::SCHEME_NF4, v1::GRANULARITY_PER_GROUP, false},
    {v1::SCHEME_FP8_E4M3, v1::GRANULARITY_PER_TOKEN, false},
    {v1::SCHEME_FP8_E5M2, v1::GRANULARITY_PER_HEAD, false},
};

QuantParams ParamsOf(const Case& c) {
  QuantParams p;
  p.scheme = c.scheme;
  p.granularity = c.granularity;
  p.asymmetric = c.asymmetric;
  p.group_size = 32;
  return p;
}

// Every case is a scheme with scales, so the kernels take it.
CudaQuantParams CudaParamsOf(const Case& c) {
  return *ToCudaQuantParams(ParamsOf(c));
}

// The whole cache, [kBlocks, heads, tokens, dim] bf16 on the GPU.
const at::Tensor& Cache() {
  static const at::Tensor cache =
      at::randn({kBlocks, kHeads, kTokens, kDim},
                at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
  return cache;
}

double PeakBytesPerSecond() {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 0;
  const std::string name = prop.name;
  if (name.find("H200") != std::string::npos) return 4.8e12;
  if (name.find("H100") != std::string::npos) return 3.35e12;
  return 0;
}

struct Timer {
  cudaEvent_t start, stop;
  cudaStream_t stream;
  Timer() : stream(at::cuda::getCurrentCUDAStream().stream()) {
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
  }
  ~Timer() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  void Start() { cudaEventRecord(start, stream); }
  double Stop() {
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    return ms / 1e3;
  }
};

void Report(benchmark::State& state, const Case& c, int64_t in_bytes,
            int64_t out_bytes, double seconds, const char* path) {
  const double in = static_cast<double>(in_bytes) * state.iterations();
  const double io =
      static_cast<double>(in_bytes + out_bytes) * state.iterations();
  state.counters["in_GBps"] = in / seconds / 1e9;
  state.counters["io_GBps"] = io / seconds / 1e9;
  const double peak = PeakBytesPerSecond();
  state.counters["peak_frac"] = peak > 0 ? io / seconds / peak : 0;
  state.SetLabel(std::string(path) + " " + SchemeName(c.scheme) + "/" +
                 GranularityName(c.granularity) +
                 (c.asymmetric ? "/asym" : ""));
}

// Device buffers for one block (or the whole cache as one block).
struct Outputs {
  at::Tensor packed, scales, zeros, workspace, flag;
  CudaQuantizeOutput out;
  Outputs(const CudaQuantParams& p, int64_t heads, int64_t tokens) {
    const auto u8 = at::TensorOptions().dtype(at::kByte).device(at::kCUDA);
    const int64_t n = CudaScaleCount(p, heads, tokens, kDim);
    packed = at::empty({(heads * tokens * kDim * p.bits + 7) / 8}, u8);
    scales = at::empty({2 * n + 16}, u8);
    zeros = at::empty({2 * n + 16}, u8);
    workspace = at::empty(
        {CudaQuantizeWorkspaceBytes(p, heads, tokens, kDim) + 16}, u8);
    flag = at::empty({16}, u8);
    out.packed = packed.data_ptr<uint8_t>();
    out.scales = reinterpret_cast<uint16_t*>(scales.data_ptr());
    out.zero_points = reinterpret_cast<uint16_t*>(zeros.data_ptr());
  }
  int64_t Bytes(const CudaQuantParams& p, int64_t heads, int64_t tokens) const {
    const int64_t n = CudaScaleCount(p, heads, tokens, kDim);
    return packed.numel() +
           2 * n * (p.code == CudaCode::kIntAsymmetric ? 2 : 1);
  }
};

CudaBlockView View(const at::Tensor& block) {
  CudaBlockView v;
  v.data = block.data_ptr();
  v.dtype = CudaDtype::kBf16;
  v.heads = block.size(0);
  v.tokens = block.size(1);
  v.head_dim = block.size(2);
  v.head_stride = block.stride(0);
  v.token_stride = block.stride(1);
  return v;
}

// The raw kernels, one launch sequence per block (56 blocks of 8 MiB), no
// host synchronization between blocks.
void BM_KernelQuantizePerBlock(benchmark::State& state) {
  const Case& c = kCases[state.range(0)];
  const CudaQuantParams p = CudaParamsOf(c);
  const at::Tensor& cache = Cache();
  Outputs o(p, kHeads, kTokens);
  Timer timer;
  double seconds = 0;
  for (auto _ : state) {
    timer.Start();
    for (int64_t b = 0; b < kBlocks; ++b) {
      CudaQuantize(View(cache[b]), p, o.out, o.workspace.data_ptr(),
                   reinterpret_cast<int32_t*>(o.flag.data_ptr()), timer.stream);
    }
    const double s = timer.Stop();
    seconds += s;
    state.SetIterationTime(s);
  }
  Report(state, c, cache.nbytes(), kBlocks * o.Bytes(p, kHeads, kTokens),
         seconds, "kernel/block");
}
BENCHMARK(BM_KernelQuantizePerBlock)
    ->DenseRange(0, std::size(kCases) - 1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// The whole cache as one [56*8, 4096, 128] block: one launch sequence.
void BM_KernelQuantizeWholeCache(benchmark::State& state) {
  const Case& c = kCases[state.range(0)];
  const CudaQuantParams p = CudaParamsOf(c);
  const at::Tensor all = Cache().view({kBlocks * kHeads, kTokens, kDim});
  Outputs o(p, kBlocks * kHeads, kTokens);
  Timer timer;
  double seconds = 0;
  for (auto _ : state) {
    timer.Start();
    CudaQuantize(View(all), p, o.out, o.workspace.data_ptr(),
                 reinterpret_cast<int32_t*>(o.flag.data_ptr()), timer.stream);
    const double s = timer.Stop();
    seconds += s;
    state.SetIterationTime(s);
  }
  Report(state, c, all.nbytes(), o.Bytes(p, kBlocks * kHeads, kTokens), seconds,
         "kernel/whole");
}
BENCHMARK(BM_KernelQuantizeWholeCache)
    ->DenseRange(0, std::size(kCases) - 1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// Quantize with half the tokens selected (every other one): the gather fused
// into the kernel vs index_select + the ATen reference.
void BM_KernelQuantizeSelectedHalf(benchmark::State& state) {
  const Case& c = kCases[state.range(0)];
  const CudaQuantParams p = CudaParamsOf(c);
  const at::Tensor& cache = Cache();
  const at::Tensor idx = at::arange(
      0, kTokens, 2, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
  Outputs o(p, kHeads, kTokens / 2);
  Timer timer;
  double seconds = 0;
  for (auto _ : state) {
    timer.Start();
    for (int64_t b = 0; b < kBlocks; ++b) {
      CudaBlockView v = View(cache[b]);
      v.tokens = idx.numel();
      v.token_index = idx.data_ptr<int64_t>();
      CudaQuantize(v, p, o.out, o.workspace.data_ptr(),
                   reinterpret_cast<int32_t*>(o.flag.data_ptr()), timer.stream);
    }
    const double s = timer.Stop();
    seconds += s;
    state.SetIterationTime(s);
  }
  Report(state, c, cache.nbytes() / 2,
         kBlocks * o.Bytes(p, kHeads, kTokens / 2), seconds,
         "kernel/select-half");
}
BENCHMARK(BM_KernelQuantizeSelectedHalf)
    ->DenseRange(0, std::size(kCases) - 1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

void BM_KernelDequantizePerBlock(benchmark::State& state) {
  const Case& c = kCases[state.range(0)];
  const CudaQuantParams p = CudaParamsOf(c);
  const at::Tensor& cache = Cache();
  Outputs o(p, kHeads, kTokens);
  CudaQuantize(View(cache[0]), p, o.out, o.workspace.data_ptr(),
               reinterpret_cast<int32_t*>(o.flag.data_ptr()),
               at::cuda::getCurrentCUDAStream().stream());
  at::Tensor out = at::empty({kHeads, kTokens, kDim}, cache.options());
  CudaDequantizeInput in;
  in.packed = o.out.packed;
  in.scales = o.out.scales;
  in.zero_points = o.out.zero_points;
  Timer timer;
  double seconds = 0;
  for (auto _ : state) {
    timer.Start();
    for (int64_t b = 0; b < kBlocks; ++b) {
      CudaDequantize(in, p, kHeads, kTokens, kDim, CudaDtype::kBf16,
                     out.data_ptr(), timer.stream);
    }
    const double s = timer.Stop();
    seconds += s;
    state.SetIterationTime(s);
  }
  // "in" here is the bf16 output written; io adds the codes read.
  Report(state, c, cache.nbytes(), kBlocks * o.Bytes(p, kHeads, kTokens),
         seconds, "kernel/dequant");
}
BENCHMARK(BM_KernelDequantizePerBlock)
    ->DenseRange(0, std::size(kCases) - 1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// Through the public API per block: Quantize() on a CUDA tensor (kernels,
// then one 4-byte flag read and sync per block)...
void BM_QuantizeApiPerBlock(benchmark::State& state) {
  const Case& c = kCases[state.range(0)];
  const at::Tensor& cache = Cache();
  Timer timer;
  double seconds = 0;
  for (auto _ : state) {
    timer.Start();
    for (int64_t b = 0; b < kBlocks; ++b) {
      auto q = Quantize(cache[b], ParamsOf(c));
      benchmark::DoNotOptimize(q);
    }
    const double s = timer.Stop();
    seconds += s;
    state.SetIterationTime(s);
  }
  Report(state, c, cache.nbytes(), 0, seconds, "api/Quantize");
}
BENCHMARK(BM_QuantizeApiPerBlock)
    ->DenseRange(0, std::size(kCases) - 1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// ... the ATen reference on the same GPU tensors (the previous CUDA path) ...
void BM_AtenReferencePerBlock(benchmark::State& state) {
  const Case& c = kCases[state.range(0)];
  const at::Tensor& cache = Cache();
  Timer timer;
  double seconds = 0;
  for (auto _ : state) {
    timer.Start();
    for (int64_t b = 0; b < kBlocks; ++b) {
      auto q = QuantizeReference(cache[b], ParamsOf(c));
      benchmark::DoNotOptimize(q);
    }
    const double s = timer.Stop();
    seconds += s;
    state.SetIterationTime(s);
  }
  Report(state, c, cache.nbytes(), 0, seconds, "aten/QuantizeReference");
}
BENCHMARK(BM_AtenReferencePerBlock)
    ->DenseRange(0, std::size(kCases) - 1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// ... and the stream encoder's entry point: kernels plus the copy of the
// packed bytes and scales to host strings (pinned staging).
void BM_EncodeToHostPerBlock(benchmark::State& state) {
  const Case& c = kCases[state.range(0)];
  const at::Tensor& cache = Cache();
  Timer timer;
  double seconds = 0;
  HostQuantizedBlock host;
  for (auto _ : state) {
    timer.Start();
    for (int64_t b = 0; b < kBlocks; ++b) {
      auto done =
          CudaQuantizeToHost(cache[b], at::Tensor(), ParamsOf(c), &host);
      benchmark::DoNotOptimize(done);
    }
    const double s = timer.Stop();
    seconds += s;
    state.SetIterationTime(s);
  }
  Report(state, c, cache.nbytes(), 0, seconds, "api/ToHost");
}
BENCHMARK(BM_EncodeToHostPerBlock)
    ->DenseRange(0, std::size(kCases) - 1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvwire

int main(int argc, char** argv) {
  if (!at::hasCUDA()) {
    std::printf("kvwire_cuda_codec_benchmark: no CUDA device, skipping\n");
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
