// Decoder::StaticDecodeStep (the position-independent decode step that the
// CUDA-graph decoder captures) against the eager DecodeStep, on random
// checkpoints: same logits, same cache contents, same greedy tokens, across
// span buckets and sliding windows, for one token and for chunks of tokens;
// the DecodeAccelerator and PrefillAccelerator hooks; and DecodeStepKernels
// as replacements of single steps of the layer.
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/tensor.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/decoder.h"
#include "gtest/gtest.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

namespace kvwire {
namespace {

constexpr int64_t kVocab = 128;

struct Variant {
  std::string name;
  ModelArch arch;
  int64_t window;  // > 0: every other layer slides with this window.
};

ModelConfig VariantConfig(const Variant& v) {
  ModelConfig c = MakeModelConfig(
      v.arch, kVocab, 32, 64, 3, 4, 2,
      v.arch == ModelArch::kQwen3 || v.arch == ModelArch::kGemma3 ? 16 : 0);
  c.eos_token_ids = {kVocab - 1};
  if (v.arch == ModelArch::kGemma3) {
    // A full layer between sliding ones, each with its RoPE; the fused
    // kernels must decline Gemma's norms.
    c.layers[1] = LayerConfig{"full_attention", 0, c.rope};
    c.final_logit_softcapping = 15;
  }
  if (v.arch == ModelArch::kLlama) {
    c.rope = RopeConfig{RopeType::kLlama3, 10000.0, 8.0, 1.0, 4.0, 64};
    c.tie_word_embeddings = false;
    SetUniformLayers(c);
  } else {
    c.tie_word_embeddings = true;
  }
  if (v.window > 0) {
    for (size_t i = 0; i < c.layers.size(); i += 2) {
      c.layers[i].attention_type = "sliding_attention";
      c.layers[i].sliding_window = v.window;
    }
  }
  return c;
}

std::unique_ptr<Decoder> LoadVariant(const Variant& v) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/kvwire_static_",
                                       ::getpid(), "_", v.name);
  TinyCheckpointOptions options;
  options.config = VariantConfig(v);
  options.dtype = SafetensorsDtype::kF32;
  options.seed = 7;
  options.init_std = 0.2;  // Spread logits: clear argmax decisions.
  options.bias_std = 0.1;
  const absl::Status written = WriteRandomCheckpoint(dir, options);
  EXPECT_TRUE(written.ok()) << written;
  DecoderOptions decoder_options;
  decoder_options.dtype = at::kFloat;
  const char* env = std::getenv("KVWIRE_TEST_DEVICE");
  auto device = ParseModelDevice(env != nullptr ? env : "cpu");
  EXPECT_TRUE(device.ok());
  if (device.ok()) decoder_options.device = *device;
  auto decoder = Decoder::Load(dir, decoder_options);
  EXPECT_TRUE(decoder.ok()) << decoder.status();
  return decoder.ok() ? std::move(*decoder) : nullptr;
}

std::vector<int64_t> Tokens(int64_t n) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back((i * 29 + 7) % (kVocab - 1));
  return t;
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU).to(at::kFloat) - b.to(at::kCPU).to(at::kFloat))
      .abs()
      .max()
      .item<double>();
}

class StaticDecodeTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    decoder_ = LoadVariant(GetParam());
    ASSERT_NE(decoder_, nullptr);
  }
  std::unique_ptr<Decoder> decoder_;
};

TEST(StaticDecodeSpanTest, PowerOfTwoBucketsWithinCapacity) {
  EXPECT_EQ(StaticDecodeSpan(0, 100, 8), 8);
  EXPECT_EQ(StaticDecodeSpan(7, 100, 8), 8);
  EXPECT_EQ(StaticDecodeSpan(8, 100, 8), 16);
  EXPECT_EQ(StaticDecodeSpan(63, 100, 8), 64);
  EXPECT_EQ(StaticDecodeSpan(64, 100, 8), 100);
  EXPECT_EQ(StaticDecodeSpan(99, 100, 8), 100);
  EXPECT_EQ(StaticDecodeSpan(3, 4096), 64);
}

TEST_P(StaticDecodeTest, MatchesEagerDecodeStepAcrossSpanBuckets) {
  constexpr int64_t kCapacity = 40;
  const std::vector<int64_t> prompt = Tokens(5);
  auto eager = decoder_->NewCache(kCapacity);
  auto fixed = decoder_->NewCache(kCapacity);
  ASSERT_TRUE(eager.ok() && fixed.ok());
  ASSERT_TRUE(decoder_->Prefill(prompt, *eager).ok());
  ASSERT_TRUE(decoder_->Prefill(prompt, *fixed).ok());

  const auto index =
      at::TensorOptions().dtype(at::kLong).device(decoder_->device());
  StaticDecodeIo io;
  io.token = at::empty({1}, index);
  io.position = at::empty({1}, index);
  io.logits = at::empty({kVocab}, index.dtype(at::kFloat));
  int64_t token = prompt.back();
  for (int64_t pos = 5; pos < kCapacity; ++pos) {
    SCOPED_TRACE(absl::StrCat("position ", pos));
    auto expected = decoder_->DecodeStep(token, *eager);
    ASSERT_TRUE(expected.ok()) << expected.status();
    io.token.fill_(token);
    io.position.fill_(pos);
    // Minimum span 4: buckets 8, 16, 32 and then the capacity.
    const int64_t span = StaticDecodeSpan(pos, kCapacity, 4);
    ASSERT_TRUE(decoder_->StaticDecodeStep(io, fixed->storage(), span).ok());
    ASSERT_TRUE(fixed->SetLength(0, pos + 1).ok());
    EXPECT_LT(MaxDiff(io.logits, *expected), 1e-5);
    EXPECT_EQ(io.logits.argmax().item<int64_t>(),
              expected->argmax().item<int64_t>());
    token = expected->argmax().item<int64_t>();
  }
  // Same K/V in both caches, and nothing written past the last position.
  EXPECT_LT(MaxDiff(fixed->storage(), eager->storage()), 1e-5);
}

TEST_P(StaticDecodeTest, AcceleratedGenerateMatchesEager) {
  GenerationOptions options;
  options.max_new_tokens = 30;
  options.eos_token_ids = std::vector<int64_t>{};
  const std::vector<int64_t> prompt = Tokens(9);
  auto expected = decoder_->Generate(prompt, options);
  ASSERT_TRUE(expected.ok()) << expected.status();

  auto accelerator = std::make_shared<StaticDecodeAccelerator>(/*min_span=*/8);
  decoder_->SetDecodeAccelerator(accelerator);
  auto got = decoder_->Generate(prompt, options);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tokens, expected->tokens);
  // One step per generated token after the first, plus none for the
  // nine-token first forward (it is not a one-token step).
  EXPECT_EQ(accelerator->steps(), options.max_new_tokens - 1);

  // DecodeStep and one-token Prefill go through it too; lengths advance.
  auto cache = decoder_->NewCache(16);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE(decoder_->Prefill(Tokens(3), *cache).ok());
  auto logits = decoder_->DecodeStep(5, *cache);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_EQ(logits->sizes(), (std::vector<int64_t>{kVocab}));
  EXPECT_EQ(cache->length(), 4);
  EXPECT_EQ(accelerator->steps(), options.max_new_tokens);

  decoder_->SetDecodeAccelerator(nullptr);
  EXPECT_EQ(decoder_->decode_accelerator(), nullptr);
}

TEST_P(StaticDecodeTest, RejectsMismatchedBuffers) {
  auto cache = decoder_->NewCache(8);
  ASSERT_TRUE(cache.ok());
  StaticDecodeIo io;
  io.token = at::full({1}, 1, at::kLong);
  io.position = at::full({1}, 0, at::kLong);
  io.logits = at::empty({kVocab}, at::kFloat);
  if (decoder_->device().is_cpu()) {
    EXPECT_TRUE(decoder_->StaticDecodeStep(io, cache->storage(), 8).ok());
  }
  EXPECT_FALSE(decoder_->StaticDecodeStep(io, cache->storage(), 9).ok());
  EXPECT_FALSE(decoder_->StaticDecodeStep(io, cache->storage(), 0).ok());
  auto batch2 = decoder_->NewCache(8, 2);
  ASSERT_TRUE(batch2.ok());
  EXPECT_FALSE(decoder_->StaticDecodeStep(io, batch2->storage(), 8).ok());
  io.logits = at::empty({kVocab + 1}, at::kFloat);
  EXPECT_FALSE(decoder_->StaticDecodeStep(io, cache->storage(), 8).ok());
}

TEST_P(StaticDecodeTest, MultiTokenStepMatchesEagerPrefillAfterAPrefix) {
  // Five tokens at positions [4, 9) over a span of 16, after a 4-token
  // prefix: the same K/V and last-token logits as an eager forward, and a
  // chosen row's logits equal the eager kAll row.
  constexpr int64_t kCapacity = 16;
  const std::vector<int64_t> prompt = Tokens(9);
  const std::vector<int64_t> prefix(prompt.begin(), prompt.begin() + 4);
  const std::vector<int64_t> chunk(prompt.begin() + 4, prompt.end());
  auto eager = decoder_->NewCache(kCapacity);
  auto fixed = decoder_->NewCache(kCapacity);
  ASSERT_TRUE(eager.ok() && fixed.ok());
  ASSERT_TRUE(decoder_->Prefill(prefix, *eager).ok());
  ASSERT_TRUE(decoder_->Prefill(prefix, *fixed).ok());
  auto expected = decoder_->Prefill(chunk, *eager, nullptr, LogitsMode::kAll);
  ASSERT_TRUE(expected.ok()) << expected.status();

  const auto index =
      at::TensorOptions().dtype(at::kLong).device(decoder_->device());
  StaticDecodeIo io;
  io.token = at::tensor(chunk, at::kLong).to(decoder_->device());
  io.position = at::full({1}, 4, index);
  io.logits = at::empty({kVocab}, index.dtype(at::kFloat));
  ASSERT_TRUE(decoder_->StaticDecodeStep(io, fixed->storage(), 16).ok());
  EXPECT_LT(MaxDiff(io.logits, expected->select(0, 4)), 1e-5);
  EXPECT_LT(MaxDiff(fixed->storage(), eager->storage()), 1e-5);

  io.logits_row = at::full({1}, 2, index);
  ASSERT_TRUE(decoder_->StaticDecodeStep(io, fixed->storage(), 16).ok());
  EXPECT_LT(MaxDiff(io.logits, expected->select(0, 2)), 1e-5);
  // More tokens than the span: refused.
  EXPECT_FALSE(decoder_->StaticDecodeStep(io, fixed->storage(), 4).ok());
}

TEST_P(StaticDecodeTest, StepKernelsReplaceSingleStepsOfTheLayer) {
  // DecodeStepKernels that compute the ATen reference and count their calls:
  // each replaces one step of every layer (the norms, RoPE of queries and
  // keys, the MLP activation; qkv_to_cache here declines, so the step runs
  // its ATen ops through the other kernels), and the results are the plain
  // step's bit for bit.
  int64_t norms = 0, ropes = 0, activations = 0, qkv = 0;
  DecodeStepKernels kernels;
  kernels.rms_norm = [&](const at::Tensor& x, const at::Tensor& weight,
                         double eps) {
    ++norms;
    const at::Tensor xf = x.to(at::kFloat);
    const at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
    return weight * (xf * (variance + eps).rsqrt()).to(x.scalar_type());
  };
  kernels.rope = [&](const at::Tensor& x, const at::Tensor& cos,
                     const at::Tensor& sin) {
    ++ropes;
    const int64_t half = x.size(-1) / 2;
    return x * cos +
           at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)},
                   -1) *
               sin;
  };
  kernels.silu_mul = [&](const at::Tensor& gate_up) {
    ++activations;
    const int64_t n = gate_up.size(-1) / 2;
    return at::silu(gate_up.narrow(-1, 0, n)) * gate_up.narrow(-1, n, n);
  };
  kernels.qkv_to_cache = [&](const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, double, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&) {
    ++qkv;
    return at::Tensor();
  };
  constexpr int64_t kCapacity = 16;
  const std::vector<int64_t> prompt = Tokens(6);
  auto plain = decoder_->NewCache(kCapacity, 2);
  auto fused = decoder_->NewCache(kCapacity, 2);
  ASSERT_TRUE(plain.ok() && fused.ok());
  const auto index =
      at::TensorOptions().dtype(at::kLong).device(decoder_->device());
  StaticDecodeIo io;
  io.token = at::tensor(prompt, at::kLong).to(decoder_->device());
  io.position =
      at::tensor(std::vector<int64_t>{0, 5}, at::kLong).to(decoder_->device());
  io.logits = at::empty({2 * kVocab}, index.dtype(at::kFloat));
  ASSERT_TRUE(decoder_->StaticDecodeStep(io, plain->storage(), 8).ok());
  const at::Tensor expected = io.logits.clone();
  ASSERT_TRUE(
      decoder_->StaticDecodeStep(io, fused->storage(), 8, &kernels).ok());
  EXPECT_TRUE(io.logits.equal(expected));
  EXPECT_TRUE(fused->storage().equal(plain->storage()));

  const int64_t layers = decoder_->config().num_hidden_layers;
  const bool qk_norm = decoder_->config().qk_norm;
  if (decoder_->config().norm_plus_one) {
    // Gemma: the kernels implement the Llama-style norm and SiLU, so the
    // norms, the QKV step (its q/k norm) and the GeLU run as ATen ops;
    // RoPE is shared.
    EXPECT_EQ(qkv + norms + activations, 0);
    EXPECT_EQ(ropes, 2 * layers);
    return;
  }
  EXPECT_EQ(qkv, layers);
  EXPECT_EQ(norms, layers * (qk_norm ? 4 : 2) + 1);
  EXPECT_EQ(ropes, 2 * layers);
  EXPECT_EQ(activations, layers);
}

TEST_P(StaticDecodeTest, PrefillAcceleratorServesPromptPrefills) {
  const std::vector<int64_t> prompt = Tokens(11);
  auto eager = decoder_->NewCache(32);
  ASSERT_TRUE(eager.ok());
  std::vector<at::Tensor> eager_layers;
  auto expected =
      decoder_->Prefill(prompt, *eager, [&](const LayerKv& kv) -> absl::Status {
        eager_layers.push_back(kv.keys.clone());
        return absl::OkStatus();
      });
  ASSERT_TRUE(expected.ok()) << expected.status();

  auto accelerator = std::make_shared<StaticPrefillAccelerator>(16);
  decoder_->SetPrefillAccelerator(accelerator);
  auto cache = decoder_->NewCache(32);
  ASSERT_TRUE(cache.ok());
  std::vector<at::Tensor> layers;
  auto got =
      decoder_->Prefill(prompt, *cache, [&](const LayerKv& kv) -> absl::Status {
        EXPECT_EQ(kv.start, 0);
        EXPECT_FALSE(kv.queries.defined());
        layers.push_back(kv.keys.clone());
        return absl::OkStatus();
      });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(accelerator->prefills(), 1);
  EXPECT_EQ(cache->length(), 11);
  EXPECT_LT(MaxDiff(*got, *expected), 1e-5);
  EXPECT_LT(MaxDiff(cache->storage(), eager->storage()), 1e-5);
  ASSERT_EQ(layers.size(), eager_layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    EXPECT_LT(MaxDiff(layers[l], eager_layers[l]), 1e-5) << "layer " << l;
  }

  // Generation after an accelerated prefill equals eager generation.
  GenerationOptions options;
  options.max_new_tokens = 8;
  options.eos_token_ids = std::vector<int64_t>{};
  decoder_->SetPrefillAccelerator(nullptr);
  auto expected_tokens = decoder_->Generate(prompt, options);
  decoder_->SetPrefillAccelerator(accelerator);
  auto tokens = decoder_->Generate(prompt, options);
  ASSERT_TRUE(expected_tokens.ok() && tokens.ok());
  EXPECT_EQ(tokens->tokens, expected_tokens->tokens);
  EXPECT_EQ(accelerator->prefills(), 2);

  // Not served: longer than its capacity, a non-empty cache, one token, or
  // kAll logits; those run eagerly and still succeed.
  auto other = decoder_->NewCache(32);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(decoder_->Prefill(Tokens(20), *other).ok());
  ASSERT_TRUE(decoder_->Prefill(Tokens(3), *other).ok());
  EXPECT_EQ(other->length(), 23);
  other->Clear();
  ASSERT_TRUE(decoder_->Prefill(Tokens(1), *other).ok());
  other->Clear();
  ASSERT_TRUE(
      decoder_->Prefill(Tokens(4), *other, nullptr, LogitsMode::kAll).ok());
  EXPECT_EQ(accelerator->prefills(), 2);

  // A failing layer callback fails the prefill and leaves the length at 0.
  other->Clear();
  auto failed = decoder_->Prefill(Tokens(5), *other, [](const LayerKv&) {
    return absl::CancelledError("stop");
  });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(other->length(), 0);
  decoder_->SetPrefillAccelerator(nullptr);
}

TEST_P(StaticDecodeTest, RopeOffsetAfterGappedPrefillMatchesEager) {
  // A gapped PrefillAt (C2C token alignment) leaves a RoPE offset; the
  // static step reads it from io.rope_offset on the device.
  constexpr int64_t kCapacity = 24;
  const std::vector<int64_t> prompt = Tokens(6);
  const std::vector<int64_t> positions = {0, 3, 4, 8, 9, 11};
  auto eager = decoder_->NewCache(kCapacity);
  auto fixed = decoder_->NewCache(kCapacity);
  ASSERT_TRUE(eager.ok() && fixed.ok());
  ASSERT_TRUE(decoder_->PrefillAt(prompt, positions, *eager).ok());
  ASSERT_TRUE(decoder_->PrefillAt(prompt, positions, *fixed).ok());
  ASSERT_EQ(eager->rope_offset(), 6);

  const auto index =
      at::TensorOptions().dtype(at::kLong).device(decoder_->device());
  StaticDecodeIo io;
  io.token = at::empty({1}, index);
  io.position = at::empty({1}, index);
  io.rope_offset = at::full({1}, fixed->rope_offset(), index);
  io.logits = at::empty({kVocab}, index.dtype(at::kFloat));
  int64_t token = prompt.back();
  for (int64_t pos = 6; pos < 14; ++pos) {
    SCOPED_TRACE(absl::StrCat("index ", pos));
    auto expected = decoder_->DecodeStep(token, *eager);
    ASSERT_TRUE(expected.ok()) << expected.status();
    io.token.fill_(token);
    io.position.fill_(pos);
    ASSERT_TRUE(decoder_
                    ->StaticDecodeStep(io, fixed->storage(),
                                       StaticDecodeSpan(pos, kCapacity, 4))
                    .ok());
    ASSERT_TRUE(fixed->SetLength(0, pos + 1).ok());
    EXPECT_LT(MaxDiff(io.logits, *expected), 1e-5);
    token = expected->argmax().item<int64_t>();
  }
  EXPECT_LT(MaxDiff(fixed->storage(), eager->storage()), 1e-5);

  // Generate through the static accelerator after a gapped prefill: the
  // eager tokens.
  GenerationOptions options;
  options.max_new_tokens = 12;
  options.eos_token_ids = std::vector<int64_t>{};
  auto run = [&]() -> std::vector<int64_t> {
    auto cache = decoder_->NewCache(kCapacity);
    EXPECT_TRUE(cache.ok());
    EXPECT_TRUE(decoder_
                    ->PrefillAt(absl::MakeConstSpan(prompt).subspan(0, 5),
                                absl::MakeConstSpan(positions).subspan(0, 5),
                                *cache, nullptr, LogitsMode::kNone)
                    .ok());
    EXPECT_EQ(cache->rope_offset(), 5);
    // The last prompt token goes to the next position (10, not 11).
    auto out = decoder_->Generate(*cache, {prompt.back()}, options);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? out->tokens : std::vector<int64_t>{};
  };
  const std::vector<int64_t> expected_tokens = run();
  auto accelerator = std::make_shared<StaticDecodeAccelerator>(/*min_span=*/4);
  decoder_->SetDecodeAccelerator(accelerator);
  EXPECT_EQ(run(), expected_tokens);
  EXPECT_EQ(accelerator->steps(), options.max_new_tokens);
  decoder_->SetDecodeAccelerator(nullptr);

  // Prefill accelerators are not handed rows with an offset.
  auto prefill = std::make_shared<StaticPrefillAccelerator>(16);
  decoder_->SetPrefillAccelerator(prefill);
  auto cache = decoder_->NewCache(kCapacity);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE(cache->SetRopeOffset(0, 3).ok());
  ASSERT_TRUE(decoder_->Prefill(prompt, *cache).ok());
  cache->Clear();
  ASSERT_TRUE(decoder_->PrefillAt(prompt, positions, *cache).ok());
  EXPECT_EQ(prefill->prefills(), 0);
  decoder_->SetPrefillAccelerator(nullptr);
}

INSTANTIATE_TEST_SUITE_P(
    Models, StaticDecodeTest,
    ::testing::Values(Variant{"qwen3", ModelArch::kQwen3, 0},
                      Variant{"qwen2", ModelArch::kQwen2, 0},
                      Variant{"llama", ModelArch::kLlama, 0},
                      Variant{"qwen3_window", ModelArch::kQwen3, 6},
                      Variant{"gemma3_window", ModelArch::kGemma3, 6},
                      Variant{"mistral_window", ModelArch::kMistral, 5}),
    [](const ::testing::TestParamInfo<Variant>& info) {
      return info.param.name;
    });

}  // namespace
}  // namespace kvwire
