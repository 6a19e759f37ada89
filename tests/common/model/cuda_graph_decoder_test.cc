// CudaGraphDecoder (CUDA builds only; skipped without a CUDA device): graph
// replay of the static decode step, and CudaGraphPrefill's replay of padded
// prompt prefills, against the eager decoder on random tiny Qwen3 models in
// fp32 and bf16, and the fused kernels against ATen.
#include "common/model/cuda_graph_decoder.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAFunctions.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/model/batched_prefill.h"
#include "common/model/decoder.h"
#include "gtest/gtest.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

namespace kvwire {
namespace {

constexpr int64_t kVocab = 256;

bool HaveCuda() { return c10::cuda::device_count() > 0; }

std::string MakeModel(const std::string& name, int64_t window) {
  ModelConfig c =
      MakeModelConfig(ModelArch::kQwen3, kVocab, 64, 128, 3, 4, 2, 32);
  c.tie_word_embeddings = true;
  c.eos_token_ids = {kVocab - 1};
  if (window > 0) {
    c.layers[1].attention_type = "sliding_attention";
    c.layers[1].sliding_window = window;
  }
  const std::string dir = absl::StrCat(::testing::TempDir(), "/kvwire_graph_",
                                       ::getpid(), "_", name);
  TinyCheckpointOptions options;
  options.config = c;
  options.dtype = SafetensorsDtype::kF32;
  options.seed = 11;
  options.init_std = 0.2;  // Spread logits: clear argmax decisions.
  options.bias_std = 0.1;
  const absl::Status status = WriteRandomCheckpoint(dir, options);
  EXPECT_TRUE(status.ok()) << status;
  return dir;
}

std::unique_ptr<Decoder> Load(const std::string& dir, at::ScalarType dtype) {
  DecoderOptions options;
  options.dtype = dtype;
  options.device = c10::Device(c10::kCUDA, 0);
  auto decoder = Decoder::Load(dir, options);
  EXPECT_TRUE(decoder.ok()) << decoder.status();
  return decoder.ok() ? std::move(*decoder) : nullptr;
}

std::vector<int64_t> Tokens(int64_t n) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back((i * 37 + 5) % (kVocab - 1));
  return t;
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU).to(at::kFloat) - b.to(at::kCPU).to(at::kFloat))
      .abs()
      .max()
      .item<double>();
}

class CudaGraphDecoderTest : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  }
  // Logit tolerance: fp32 noise vs bf16 rounding of a differently ordered
  // attention/RMSNorm reduction.
  double Tolerance() const { return GetParam() == at::kFloat ? 1e-3 : 0.15; }
};

TEST_P(CudaGraphDecoderTest, GreedyGenerateMatchesEager) {
  for (int64_t window : {0, 5}) {
    SCOPED_TRACE(absl::StrCat("window ", window));
    auto decoder =
        Load(MakeModel(absl::StrCat("gen", window), window), GetParam());
    ASSERT_NE(decoder, nullptr);
    GenerationOptions options;
    options.max_new_tokens = 32;
    options.eos_token_ids = std::vector<int64_t>{};
    const std::vector<int64_t> prompt = Tokens(7);
    auto eager = decoder->Generate(prompt, options);
    ASSERT_TRUE(eager.ok()) << eager.status();

    CudaGraphDecoderOptions graph_options;
    graph_options.min_span = 8;  // Spans 8, 16, 32, then the capacity.
    auto graphs = InstallCudaGraphDecoder(*decoder, graph_options);
    ASSERT_NE(graphs, nullptr);
    auto replayed = decoder->Generate(prompt, options);
    ASSERT_TRUE(replayed.ok()) << replayed.status();
    EXPECT_EQ(replayed->tokens, eager->tokens);
    EXPECT_EQ(graphs->replays(), options.max_new_tokens - 1);
    EXPECT_GE(graphs->captures(), 3);
    EXPECT_EQ(graphs->declined(), 0);

    // Again: same cache shape; the graphs are reused if the allocator hands
    // back the same storage, recaptured otherwise; tokens are the same.
    auto again = decoder->Generate(prompt, options);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->tokens, eager->tokens);
  }
}

TEST_P(CudaGraphDecoderTest, RopeOffsetOfAGappedPrefillIsReplayed) {
  // PrefillAt with gaps (C2C token alignment) leaves a RoPE offset; the
  // graph decoder and batched decode read it from a device tensor, so the
  // graphs captured for offset 0 serve it too.
  for (int64_t window : {0, 5}) {
    SCOPED_TRACE(absl::StrCat("window ", window));
    auto decoder =
        Load(MakeModel(absl::StrCat("offset", window), window), GetParam());
    ASSERT_NE(decoder, nullptr);
    GenerationOptions options;
    options.max_new_tokens = 24;
    options.eos_token_ids = std::vector<int64_t>{};
    const std::vector<int64_t> prompt = Tokens(8);
    const std::vector<int64_t> positions = {0, 1, 2, 6, 7, 8, 9, 10};
    auto run = [&]() -> std::vector<int64_t> {
      auto cache = decoder->NewCache(40);
      EXPECT_TRUE(cache.ok());
      EXPECT_TRUE(decoder
                      ->PrefillAt(absl::MakeConstSpan(prompt).subspan(0, 7),
                                  absl::MakeConstSpan(positions).subspan(0, 7),
                                  *cache, nullptr, LogitsMode::kNone)
                      .ok());
      EXPECT_EQ(cache->rope_offset(), 3);
      auto out = decoder->Generate(*cache, {prompt.back()}, options);
      EXPECT_TRUE(out.ok()) << out.status();
      return out.ok() ? out->tokens : std::vector<int64_t>{};
    };
    const std::vector<int64_t> eager = run();
    auto graphs = InstallCudaGraphDecoder(*decoder);
    ASSERT_NE(graphs, nullptr);
    EXPECT_EQ(run(), eager);
    EXPECT_EQ(graphs->replays(), options.max_new_tokens);
    // Batched decode over a slot pool, graph step runner.
    auto pool = KvSlotPool::Create(*decoder, 2, 40);
    ASSERT_TRUE(pool.ok());
    decoder->SetSlotPool(*pool);
    auto batched = std::make_shared<BatchedDecodeAccelerator>(
        *pool, BatchedDecodeOptions{}, CudaGraphStepRunner(), graphs);
    decoder->SetDecodeAccelerator(batched);
    EXPECT_EQ(run(), eager);
    EXPECT_EQ(batched->steps(), options.max_new_tokens);
    decoder->SetDecodeAccelerator(nullptr);
    decoder->SetSlotPool(nullptr);
  }
}

TEST_P(CudaGraphDecoderTest, StepLogitsAndCacheMatchEager) {
  auto decoder = Load(MakeModel("steps", 6), GetParam());
  ASSERT_NE(decoder, nullptr);
  constexpr int64_t kCapacity = 70;
  const std::vector<int64_t> prompt = Tokens(5);
  auto eager_cache = decoder->NewCache(kCapacity);
  auto graph_cache = decoder->NewCache(kCapacity);
  ASSERT_TRUE(eager_cache.ok() && graph_cache.ok());
  ASSERT_TRUE(decoder->Prefill(prompt, *eager_cache).ok());
  ASSERT_TRUE(decoder->Prefill(prompt, *graph_cache).ok());

  CudaGraphDecoderOptions graph_options;
  graph_options.min_span = 16;
  auto graphs =
      std::make_shared<CudaGraphDecoder>(decoder.get(), graph_options);
  int64_t token = prompt.back();
  for (int64_t pos = 5; pos < kCapacity; ++pos) {
    SCOPED_TRACE(absl::StrCat("position ", pos));
    decoder->SetDecodeAccelerator(nullptr);
    auto expected = decoder->DecodeStep(token, *eager_cache);
    ASSERT_TRUE(expected.ok()) << expected.status();
    decoder->SetDecodeAccelerator(graphs);
    auto got = decoder->DecodeStep(token, *graph_cache);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(graph_cache->length(), pos + 1);
    EXPECT_LT(MaxDiff(*got, *expected), Tolerance());
    token = expected->argmax().item<int64_t>();
    EXPECT_EQ(got->argmax().item<int64_t>(), token);
  }
  EXPECT_EQ(graphs->replays(), kCapacity - 5);
  EXPECT_LT(MaxDiff(graph_cache->storage(), eager_cache->storage()),
            GetParam() == at::kFloat ? 1e-4 : 0.1);
}

TEST_P(CudaGraphDecoderTest, FusedKernelsMatchAten) {
  const auto options =
      at::TensorOptions().dtype(GetParam()).device(c10::kCUDA, 0);
  const DecodeStepKernels fused = FusedDecodeKernels();
  // RMSNorm over a hidden row and over per-head rows.
  for (auto shape : {std::vector<int64_t>{1, 1, 1024},
                     std::vector<int64_t>{1, 1, 16, 128}}) {
    const at::Tensor x = at::randn(shape, options) * 3;
    const at::Tensor w = at::randn({shape.back()}, options) * 0.1 + 1;
    const at::Tensor xf = x.to(at::kFloat);
    const at::Tensor ref =
        w * (xf * (xf.pow(2).mean(-1, true) + 1e-6).rsqrt()).to(GetParam());
    const at::Tensor got = fused.rms_norm(x, w, 1e-6);
    EXPECT_EQ(got.sizes(), x.sizes());
    // One unit in the last place of the output at most.
    EXPECT_LE(MaxDiff(got, ref),
              GetParam() == at::kFloat ? 1e-5 : 0.0079 * MaxDiff(ref, ref * 0));
  }
  // RoPE: bitwise equal (same roundings, no reductions).
  const at::Tensor q = at::randn({1, 16, 1, 128}, options);
  const at::Tensor cs = at::randn({1, 1, 1, 128}, options);
  const at::Tensor sn = at::randn({1, 1, 1, 128}, options);
  const at::Tensor rot =
      at::cat({q.narrow(-1, 64, 64).neg(), q.narrow(-1, 0, 64)}, -1);
  EXPECT_EQ(MaxDiff(fused.rope(q, cs, sn), q * cs + rot * sn), 0.0);
  // Per-position RoPE of a prefill chunk (x [1, H, T, D] viewed from
  // [1, T, H, D], cos/sin [1, 1, T, D]): bitwise equal too.
  const at::Tensor qt = at::randn({1, 9, 16, 128}, options).transpose(1, 2);
  const at::Tensor cst = at::randn({1, 1, 9, 128}, options);
  const at::Tensor snt = at::randn({1, 1, 9, 128}, options);
  const at::Tensor rott =
      at::cat({qt.narrow(-1, 64, 64).neg(), qt.narrow(-1, 0, 64)}, -1);
  EXPECT_EQ(MaxDiff(fused.rope(qt, cst, snt), qt * cst + rott * snt), 0.0);
  // QKV to cache (2 rows x 3 tokens, 4 query and 2 KV heads of 128): the
  // same values as the separate fused RMSNorm and RoPE kernels and the
  // cache writes they replace, bit for bit.
  {
    const int64_t b = 2, t = 3, h = 4, hkv = 2, d = 128, cap = 9;
    const at::Tensor qkv = at::randn({b, t, (h + 2 * hkv) * d}, options);
    const at::Tensor qn = at::randn({d}, options) * 0.1 + 1;
    const at::Tensor kn = at::randn({d}, options) * 0.1 + 1;
    const at::Tensor cs2 = at::randn({b, 1, t, d}, options);
    const at::Tensor sn2 = at::randn({b, 1, t, d}, options);
    const at::Tensor pos = at::tensor(std::vector<int64_t>{0, 1, 2, 5, 6, 7},
                                      at::TensorOptions().dtype(at::kLong))
                               .view({b, t})
                               .to(options.device());
    const at::Tensor storage = at::zeros({2, b, hkv, cap, d}, options);
    const at::Tensor got_q =
        fused.qkv_to_cache(qkv, qn, kn, 1e-6, cs2, sn2, pos,
                           storage.select(0, 0), storage.select(0, 1));
    ASSERT_TRUE(got_q.defined());
    const at::Tensor q = fused.rope(
        fused.rms_norm(qkv.narrow(-1, 0, h * d).reshape({b, t, h, d}), qn, 1e-6)
            .transpose(1, 2),
        cs2, sn2);
    const at::Tensor k = fused.rope(
        fused
            .rms_norm(qkv.narrow(-1, h * d, hkv * d).reshape({b, t, hkv, d}),
                      kn, 1e-6)
            .transpose(1, 2),
        cs2, sn2);
    const at::Tensor v = qkv.narrow(-1, (h + hkv) * d, hkv * d)
                             .reshape({b, t, hkv, d})
                             .transpose(1, 2);
    EXPECT_EQ(MaxDiff(got_q, q), 0.0);
    const at::Tensor index =
        pos.view({b, 1, t, 1}).expand({b, hkv, t, d}).contiguous();
    EXPECT_EQ(MaxDiff(storage.select(0, 0).gather(2, index), k), 0.0);
    EXPECT_EQ(MaxDiff(storage.select(0, 1).gather(2, index), v), 0.0);
    // Positions not written stay zero.
    EXPECT_EQ(storage.select(3, 3).abs().max().item<double>(), 0.0);
  }
  // SiLU * up: bitwise equal up to expf's last-place rounding.
  const at::Tensor gu = at::randn({1, 1, 2 * 3072}, options) * 4;
  const at::Tensor ref_mlp =
      at::silu(gu.narrow(-1, 0, 3072)) * gu.narrow(-1, 3072, 3072);
  EXPECT_LE(
      MaxDiff(fused.silu_mul(gu), ref_mlp),
      GetParam() == at::kFloat ? 1e-5 : 0.0079 * MaxDiff(ref_mlp, ref_mlp * 0));
}

TEST_P(CudaGraphDecoderTest, GraphPrefillMatchesEagerAndReusesBuckets) {
  for (int64_t window : {0, 5}) {
    SCOPED_TRACE(absl::StrCat("window ", window));
    auto decoder =
        Load(MakeModel(absl::StrCat("prefill", window), window), GetParam());
    ASSERT_NE(decoder, nullptr);
    CudaGraphPrefillOptions options;
    options.bucket = 16;
    options.max_tokens = 64;
    auto graphs = std::make_shared<CudaGraphPrefill>(decoder.get(), options);
    // 17 and 30 tokens share the 32 bucket; 9 is a bucket of its own.
    for (int64_t n : {17, 30, 9}) {
      SCOPED_TRACE(absl::StrCat(n, " tokens"));
      const std::vector<int64_t> prompt = Tokens(n);
      decoder->SetPrefillAccelerator(nullptr);
      auto eager_cache = decoder->NewCache(80);
      ASSERT_TRUE(eager_cache.ok());
      auto expected = decoder->Prefill(prompt, *eager_cache);
      ASSERT_TRUE(expected.ok()) << expected.status();

      decoder->SetPrefillAccelerator(graphs);
      auto cache = decoder->NewCache(80);
      ASSERT_TRUE(cache.ok());
      int layers = 0;
      auto got = decoder->Prefill(prompt, *cache, [&](const LayerKv& kv) {
        EXPECT_EQ(kv.keys.size(1), n);
        ++layers;
        return absl::OkStatus();
      });
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(layers, 3);
      EXPECT_EQ(cache->length(), n);
      EXPECT_LT(MaxDiff(*got, *expected), Tolerance());
      EXPECT_EQ(got->argmax().item<int64_t>(),
                expected->argmax().item<int64_t>());
      EXPECT_LT(MaxDiff(cache->storage(), eager_cache->storage()),
                GetParam() == at::kFloat ? 1e-4 : 0.1);

      // Greedy generation from the graph-prefilled prompt equals eager.
      GenerationOptions gen;
      gen.max_new_tokens = 12;
      gen.eos_token_ids = std::vector<int64_t>{};
      decoder->SetPrefillAccelerator(nullptr);
      auto eager_tokens = decoder->Generate(prompt, gen);
      decoder->SetPrefillAccelerator(graphs);
      auto graph_tokens = decoder->Generate(prompt, gen);
      ASSERT_TRUE(eager_tokens.ok() && graph_tokens.ok());
      EXPECT_EQ(graph_tokens->tokens, eager_tokens->tokens);
    }
    // Prefill and Generate both want the last logits: one graph per bucket
    // (32 and 16), each replayed twice per length.
    EXPECT_EQ(graphs->captures(), 2);
    EXPECT_EQ(graphs->replays(), 6);
    // Longer than max_tokens: declined, the eager path answers.
    auto cache = decoder->NewCache(80);
    ASSERT_TRUE(cache.ok());
    ASSERT_TRUE(decoder->Prefill(Tokens(70), *cache).ok());
    EXPECT_EQ(graphs->declined(), 1);
    decoder->SetPrefillAccelerator(nullptr);
  }
}

TEST_P(CudaGraphDecoderTest, BatchedGraphDecodeAcrossThreadsMatchesEager) {
  auto decoder = Load(MakeModel("batched", 5), GetParam());
  ASSERT_NE(decoder, nullptr);
  constexpr int kRequests = 5;  // Rows bucket 8: three idle rows.
  GenerationOptions options;
  options.max_new_tokens = 20;
  options.eos_token_ids = std::vector<int64_t>{};
  std::vector<std::vector<int64_t>> prompts, expected;
  for (int r = 0; r < kRequests; ++r) {
    prompts.push_back(Tokens(4 + 3 * r));
    auto alone = decoder->Generate(prompts.back(), options);
    ASSERT_TRUE(alone.ok()) << alone.status();
    expected.push_back(alone->tokens);
  }
  auto pool = KvSlotPool::Create(*decoder, 8, 64);
  ASSERT_TRUE(pool.ok()) << pool.status();
  BatchedDecodeOptions batch_options;
  batch_options.min_span = 16;
  batch_options.gathering.items = kRequests;
  batch_options.gathering.window = absl::Seconds(20);
  auto batched = std::make_shared<BatchedDecodeAccelerator>(
      *pool, batch_options, CudaGraphStepRunner());
  decoder->SetSlotPool(*pool);
  decoder->SetDecodeAccelerator(batched);
  std::vector<std::vector<int64_t>> got(kRequests);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRequests; ++r) {
    threads.emplace_back([&, r] {
      auto result = decoder->Generate(prompts[r], options);
      EXPECT_TRUE(result.ok()) << result.status();
      if (result.ok()) got[r] = result->tokens;
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kRequests; ++r) {
    EXPECT_EQ(got[r], expected[r]) << "request " << r;
  }
  EXPECT_EQ(batched->max_batch(), kRequests);
  EXPECT_EQ(batched->batches(), options.max_new_tokens - 1);
  decoder->SetDecodeAccelerator(nullptr);
  decoder->SetSlotPool(nullptr);
}

TEST_P(CudaGraphDecoderTest, BatchedGraphPrefillAcrossThreadsMatchesEager) {
  auto decoder = Load(MakeModel("batched_prefill", 5), GetParam());
  ASSERT_NE(decoder, nullptr);
  // Five prompts in one forward of 8 rows, padded to 32 tokens.
  const std::vector<int64_t> lengths = {3, 17, 30, 9, 24};
  const int requests = static_cast<int>(lengths.size());
  std::vector<at::Tensor> expected_logits;
  std::vector<KvCache> expected_caches;
  for (int64_t n : lengths) {
    auto cache = decoder->NewCache(48);
    ASSERT_TRUE(cache.ok());
    auto logits = decoder->Prefill(Tokens(n), *cache);
    ASSERT_TRUE(logits.ok()) << logits.status();
    expected_logits.push_back(*logits);
    expected_caches.push_back(*cache);
  }
  BatchedPrefillOptions options;
  options.max_rows = 8;
  options.max_tokens = 64;
  options.bucket = 16;
  options.gathering.items = requests;
  options.gathering.window = absl::Seconds(20);
  auto batched = std::make_shared<BatchedPrefillAccelerator>(
      options, CudaGraphStepRunner());
  decoder->SetPrefillAccelerator(batched);
  for (int round = 0; round < 2; ++round) {  // Capture, then replay.
    std::vector<KvCache> caches(requests);
    std::vector<at::Tensor> logits(requests);
    std::vector<std::thread> threads;
    for (int r = 0; r < requests; ++r) {
      threads.emplace_back([&, r] {
        auto cache = decoder->NewCache(48);
        ASSERT_TRUE(cache.ok());
        caches[r] = *cache;
        auto result = decoder->Prefill(Tokens(lengths[r]), caches[r]);
        ASSERT_TRUE(result.ok()) << result.status();
        logits[r] = *result;
      });
    }
    for (auto& t : threads) t.join();
    for (int r = 0; r < requests; ++r) {
      SCOPED_TRACE(absl::StrCat("round ", round, " request ", r));
      ASSERT_TRUE(logits[r].defined());
      EXPECT_LT(MaxDiff(logits[r], expected_logits[r]), Tolerance());
      EXPECT_EQ(logits[r].argmax().item<int64_t>(),
                expected_logits[r].argmax().item<int64_t>());
      EXPECT_LT(MaxDiff(caches[r].storage().narrow(4, 0, lengths[r]),
                        expected_caches[r].storage().narrow(4, 0, lengths[r])),
                GetParam() == at::kFloat ? 1e-4 : 0.1);
    }
  }
  EXPECT_EQ(batched->batches(), 2);
  EXPECT_EQ(batched->max_batch(), requests);
  decoder->SetPrefillAccelerator(nullptr);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGraphDecoderTest,
                         ::testing::Values(at::kFloat, at::kBFloat16),
                         [](const ::testing::TestParamInfo<at::ScalarType>& i) {
                           return i.param == at::kFloat ? std::string("fp32")
                                                        : std::string("bf16");
                         });

}  // namespace
}  // namespace kvwire
