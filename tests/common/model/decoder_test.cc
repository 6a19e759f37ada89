// Decoder behaviour on random checkpoints written by the tiny-checkpoint
// generator: incremental decode == full forward, batched == unbatched,
// layer streaming, in-place cache access, sampling, EOS, errors.
// Numerical parity with Hugging Face is in golden_test.cc.
#include "common/model/decoder.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/isfinite.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kVocab = 128;

ModelConfig TinyConfig(ModelArch arch) {
  ModelConfig c = MakeModelConfig(
      arch, kVocab, 32, 64, 2, 4, 2,
      arch == ModelArch::kQwen3 || arch == ModelArch::kGemma3 ? 16 : 0);
  c.eos_token_ids = {kVocab - 1};
  if (arch == ModelArch::kGemma3) {
    // One sliding layer with a window shorter than most test sequences,
    // one full layer with its own RoPE; both soft-cappings on.
    c.layers[0].sliding_window = 5;
    c.layers[1] = LayerConfig{"full_attention", 0, c.rope};
    c.query_pre_attn_scalar = 12;
    c.attn_logit_softcapping = 20;
    c.final_logit_softcapping = 15;
  } else if (arch == ModelArch::kMistral) {
    for (LayerConfig& layer : c.layers) layer.sliding_window = 6;
  }
  if (arch == ModelArch::kLlama) {
    c.rope = RopeConfig{RopeType::kLlama3, 10000.0, 8.0, 1.0, 4.0, 64};
    c.tie_word_embeddings = false;
    SetUniformLayers(c);
  } else {
    c.tie_word_embeddings = true;
  }
  return c;
}

std::string MakeModel(const std::string& name, const ModelConfig& config,
                      SafetensorsDtype dtype = SafetensorsDtype::kF32,
                      int shards = 1, uint64_t seed = 1) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/kvwire_dec_", ::getpid(), "_", name);
  TinyCheckpointOptions options;
  options.config = config;
  options.dtype = dtype;
  options.num_shards = shards;
  options.seed = seed;
  options.init_std = 0.2;  // Spread logits: clear argmax decisions.
  options.bias_std = 0.1;
  const absl::Status status = WriteRandomCheckpoint(dir, options);
  EXPECT_TRUE(status.ok()) << status;
  return dir;
}

// KVWIRE_TEST_DEVICE=cuda runs these tests on the GPU (SDPA path with
// LibTorch >= 2); CI uses the CPU.
c10::Device TestDevice() {
  const char* env = std::getenv("KVWIRE_TEST_DEVICE");
  auto device = ParseModelDevice(env != nullptr ? env : "cpu");
  EXPECT_TRUE(device.ok()) << device.status();
  return device.ok() ? *device : c10::Device(c10::kCPU);
}

std::unique_ptr<Decoder> LoadOrDie(const std::string& dir,
                                   at::ScalarType dtype = at::kFloat) {
  DecoderOptions options;
  options.dtype = dtype;
  options.device = TestDevice();
  auto decoder = Decoder::Load(dir, options);
  EXPECT_TRUE(decoder.ok()) << decoder.status();
  return decoder.ok() ? std::move(*decoder) : nullptr;
}

std::vector<int64_t> Tokens(int64_t n, int64_t salt = 0) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < n; ++i)
    t.push_back((i * 29 + 7 + salt * 13) % (kVocab - 1));
  return t;
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU).to(at::kFloat) - b.to(at::kCPU).to(at::kFloat))
      .abs()
      .max()
      .item<double>();
}

class DecoderArchTest : public ::testing::TestWithParam<ModelArch> {
 protected:
  void SetUp() override {
    dir_ = MakeModel(ModelTypeName(GetParam()), TinyConfig(GetParam()));
    decoder_ = LoadOrDie(dir_);
    ASSERT_NE(decoder_, nullptr);
  }
  std::string dir_;
  std::unique_ptr<Decoder> decoder_;
};

TEST_P(DecoderArchTest, PrefillShapesAndFiniteLogits) {
  EXPECT_EQ(decoder_->config().arch, GetParam());
  auto cache = decoder_->NewCache(32);
  ASSERT_TRUE(cache.ok());
  auto all = decoder_->Prefill(Tokens(10), *cache, nullptr, LogitsMode::kAll);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->sizes(), (std::vector<int64_t>{10, kVocab}));
  EXPECT_EQ(all->scalar_type(), at::kFloat);
  EXPECT_TRUE(at::isfinite(*all).all().item<bool>());
  EXPECT_EQ(cache->length(), 10);
  const int64_t head_dim = decoder_->config().head_dim;
  EXPECT_EQ(cache->Keys(1).sizes(), (std::vector<int64_t>{2, 10, head_dim}));
}

TEST_P(DecoderArchTest, IncrementalDecodeMatchesFullForward) {
  const std::vector<int64_t> tokens = Tokens(14);
  auto full_cache = decoder_->NewCache(16);
  ASSERT_TRUE(full_cache.ok());
  auto full = decoder_->Prefill(tokens, *full_cache, nullptr, LogitsMode::kAll);
  ASSERT_TRUE(full.ok()) << full.status();

  auto cache = decoder_->NewCache(16);
  ASSERT_TRUE(cache.ok());
  auto first = decoder_->Prefill(absl::MakeConstSpan(tokens).subspan(0, 5),
                                 *cache, nullptr, LogitsMode::kAll);
  ASSERT_TRUE(first.ok());
  EXPECT_LT(MaxDiff(*first, full->narrow(0, 0, 5)), 1e-5);
  for (size_t i = 5; i < tokens.size(); ++i) {
    auto step = decoder_->DecodeStep(tokens[i], *cache);
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_LT(MaxDiff(*step, full->select(0, i)), 1e-5) << "position " << i;
  }
  for (int64_t l = 0; l < decoder_->config().num_hidden_layers; ++l) {
    EXPECT_LT(MaxDiff(cache->Keys(l), full_cache->Keys(l)), 1e-5);
    EXPECT_LT(MaxDiff(cache->Values(l), full_cache->Values(l)), 1e-5);
  }
}

TEST_P(DecoderArchTest, ChunkedPrefillMatchesFullForward) {
  const std::vector<int64_t> tokens = Tokens(12);
  auto full_cache = decoder_->NewCache(12);
  auto full = decoder_->Prefill(tokens, *full_cache, nullptr, LogitsMode::kAll);
  ASSERT_TRUE(full.ok());
  auto cache = decoder_->NewCache(12);
  ASSERT_TRUE(
      decoder_->Prefill(absl::MakeConstSpan(tokens).subspan(0, 4), *cache)
          .ok());
  auto rest = decoder_->Prefill(absl::MakeConstSpan(tokens).subspan(4), *cache,
                                nullptr, LogitsMode::kAll);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_LT(MaxDiff(*rest, full->narrow(0, 4, 8)), 1e-5);
}

TEST_P(DecoderArchTest, BatchedMatchesUnbatched) {
  const std::vector<std::vector<int64_t>> prompts = {
      Tokens(12, 0), Tokens(7, 1), Tokens(3, 2)};
  auto batch_cache = decoder_->NewCache(20, 3);
  ASSERT_TRUE(batch_cache.ok());
  auto batch = decoder_->PrefillBatch(prompts, *batch_cache);
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_EQ(batch->sizes(), (std::vector<int64_t>{3, kVocab}));
  std::vector<KvCache> singles;
  for (size_t b = 0; b < prompts.size(); ++b) {
    auto cache = decoder_->NewCache(20);
    auto logits = decoder_->Prefill(prompts[b], *cache);
    ASSERT_TRUE(logits.ok());
    EXPECT_LT(MaxDiff(*logits, batch->select(0, b)), 1e-5) << "row " << b;
    EXPECT_EQ(batch_cache->length(b), static_cast<int64_t>(prompts[b].size()));
    singles.push_back(std::move(*cache));
  }
  // Rows now have different lengths: decode steps scatter per row.
  for (int step = 0; step < 3; ++step) {
    const std::vector<int64_t> next = {5 + step, 9 + step, 40 + step};
    auto logits = decoder_->DecodeStepBatch(next, *batch_cache);
    ASSERT_TRUE(logits.ok()) << logits.status();
    for (size_t b = 0; b < prompts.size(); ++b) {
      auto single = decoder_->DecodeStep(next[b], singles[b]);
      ASSERT_TRUE(single.ok());
      EXPECT_LT(MaxDiff(*single, logits->select(0, b)), 1e-5)
          << "step " << step << " row " << b;
    }
  }
  // A padded multi-token chunk on rows of different lengths.
  const std::vector<std::vector<int64_t>> chunk = {{1, 2}, {3}, {4, 5}};
  auto chunk_logits = decoder_->PrefillBatch(chunk, *batch_cache);
  ASSERT_TRUE(chunk_logits.ok()) << chunk_logits.status();
  for (size_t b = 0; b < prompts.size(); ++b) {
    auto single = decoder_->Prefill(chunk[b], singles[b]);
    ASSERT_TRUE(single.ok());
    EXPECT_LT(MaxDiff(*single, chunk_logits->select(0, b)), 1e-5)
        << "row " << b;
    EXPECT_EQ(batch_cache->length(b), singles[b].length());
    for (int64_t l = 0; l < decoder_->config().num_hidden_layers; ++l) {
      EXPECT_LT(MaxDiff(batch_cache->Keys(l, b), singles[b].Keys(l)), 1e-5);
      EXPECT_LT(MaxDiff(batch_cache->Values(l, b), singles[b].Values(l)), 1e-5);
    }
  }
}

TEST_P(DecoderArchTest, GenerateBatchMatchesGenerate) {
  const std::vector<std::vector<int64_t>> prompts = {Tokens(9, 3), Tokens(4, 4),
                                                     Tokens(6, 5)};
  for (bool sample : {false, true}) {
    GenerationOptions options;
    options.max_new_tokens = 8;
    options.eos_token_ids = std::vector<int64_t>{};
    if (sample) {
      options.sampling.temperature = 0.8;
      options.sampling.top_k = 20;
      options.sampling.top_p = 0.9;
      options.sampling.seed = 7;
    }
    auto batch = decoder_->GenerateBatch(prompts, options);
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (size_t b = 0; b < prompts.size(); ++b) {
      GenerationOptions single_options = options;
      single_options.sampling.seed = options.sampling.seed + b;
      auto single = decoder_->Generate(prompts[b], single_options);
      ASSERT_TRUE(single.ok());
      EXPECT_EQ(single->tokens, (*batch)[b].tokens) << "row " << b;
      EXPECT_EQ(single->tokens.size(), 8u);
    }
  }
}

TEST_P(DecoderArchTest, LayerCallbackStreamsEachLayerAsComputed) {
  auto cache = decoder_->NewCache(16);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE(decoder_->Prefill(Tokens(3), *cache).ok());
  std::vector<LayerKv> seen;
  LayerCallback record = [&](const LayerKv& kv) {
    seen.push_back(
        {kv.layer, kv.row, kv.start, kv.keys.clone(), kv.values.clone()});
    return absl::OkStatus();
  };
  auto logits = decoder_->Prefill(Tokens(5, 1), *cache, record);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const int64_t layers = decoder_->config().num_hidden_layers;
  ASSERT_EQ(static_cast<int64_t>(seen.size()), layers);
  for (int64_t l = 0; l < layers; ++l) {
    EXPECT_EQ(seen[l].layer, l);
    EXPECT_EQ(seen[l].start, 3);
    EXPECT_EQ(seen[l].keys.size(1), 5);
    EXPECT_TRUE(at::equal(seen[l].keys, cache->Keys(l).narrow(1, 3, 5)));
    EXPECT_TRUE(at::equal(seen[l].values, cache->Values(l).narrow(1, 3, 5)));
  }
  // An error from the callback aborts the forward; the cache keeps its length.
  int calls = 0;
  LayerCallback fail = [&](const LayerKv&) {
    ++calls;
    return absl::CancelledError("stream closed");
  };
  auto aborted = decoder_->Prefill(Tokens(2), *cache, fail);
  ASSERT_FALSE(aborted.ok());
  EXPECT_EQ(aborted.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(cache->length(), 8);
}

TEST_P(DecoderArchTest, CacheSlicesCanBeReadWrittenAndModifiedInPlace) {
  const std::vector<int64_t> tokens = Tokens(6);
  auto a = decoder_->NewCache(10);
  auto b = decoder_->NewCache(10);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(decoder_->Prefill(tokens, *a).ok());
  // Copy a's cache into b through Read/Write, as a receiver would.
  for (int64_t l = 0; l < decoder_->config().num_hidden_layers; ++l) {
    auto kv = a->Read(l, 0, 6);
    ASSERT_TRUE(kv.ok()) << kv.status();
    ASSERT_TRUE(b->Write(l, 0, kv->first, kv->second).ok());
  }
  EXPECT_EQ(b->length(), 6);
  auto la = decoder_->DecodeStep(11, *a);
  auto lb = decoder_->DecodeStep(11, *b);
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_TRUE(at::equal(*la, *lb));

  // Fuse-like in-place update of a slice (outside any inference guard).
  ASSERT_TRUE(a->SetLength(0, 6).ok());
  ASSERT_TRUE(b->SetLength(0, 6).ok());
  a->Keys(0).narrow(1, 2, 3).mul_(0.5);
  a->Values(1).narrow(1, 0, 2).add_(0.25);
  auto la2 = decoder_->DecodeStep(11, *a);
  auto lb2 = decoder_->DecodeStep(11, *b);
  ASSERT_TRUE(la2.ok() && lb2.ok());
  EXPECT_TRUE(at::equal(*lb2, *lb));  // Truncate + redo is reproducible.
  EXPECT_GT(MaxDiff(*la2, *lb2), 1e-4);

  // Range checks.
  EXPECT_FALSE(a->Read(0, 5, 3).ok());
  EXPECT_FALSE(a->Read(9, 0, 1).ok());
  EXPECT_FALSE(
      a->Write(0, 9, a->Keys(0).narrow(1, 0, 2), a->Values(0).narrow(1, 0, 2))
          .ok());
  EXPECT_FALSE(a->Write(0, 0, a->Keys(0), a->Keys(0).narrow(1, 0, 1)).ok());
  EXPECT_FALSE(a->SetLength(0, 11).ok());
  EXPECT_FALSE(a->Keys(99).defined());
}

TEST_P(DecoderArchTest, SamplingOptions) {
  const std::vector<int64_t> prompt = Tokens(5, 6);
  GenerationOptions greedy;
  greedy.max_new_tokens = 10;
  greedy.eos_token_ids = std::vector<int64_t>{};
  auto g = decoder_->Generate(prompt, greedy);
  ASSERT_TRUE(g.ok());

  GenerationOptions top1 = greedy;
  top1.sampling.temperature = 1.0;
  top1.sampling.top_k = 1;
  auto k1 = decoder_->Generate(prompt, top1);
  ASSERT_TRUE(k1.ok());
  EXPECT_EQ(k1->tokens, g->tokens);

  GenerationOptions nucleus = greedy;
  nucleus.sampling.temperature = 1.0;
  nucleus.sampling.top_p = 1e-6;
  auto p = decoder_->Generate(prompt, nucleus);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->tokens, g->tokens);

  GenerationOptions hot = greedy;
  hot.sampling.temperature = 1.5;
  hot.sampling.seed = 3;
  auto s1 = decoder_->Generate(prompt, hot);
  auto s2 = decoder_->Generate(prompt, hot);
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_EQ(s1->tokens, s2->tokens);
  bool differs = false;
  for (uint64_t seed = 4; seed < 10 && !differs; ++seed) {
    hot.sampling.seed = seed;
    auto s = decoder_->Generate(prompt, hot);
    ASSERT_TRUE(s.ok());
    differs = s->tokens != s1->tokens;
  }
  EXPECT_TRUE(differs);

  // Tiny positive temperatures are greedy in the limit: no overflow into
  // NaN probabilities (which used to pick the last id of the vocabulary).
  for (double t : {1e-6, 1e-30, 1e-38, 1e-39, 1e-300}) {
    GenerationOptions cold = greedy;
    cold.sampling.temperature = t;
    auto c = decoder_->Generate(prompt, cold);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->tokens, g->tokens) << "temperature " << t;
  }

  GenerationOptions bad = greedy;
  bad.sampling.temperature = 1.0;
  bad.sampling.top_p = 0.0;
  EXPECT_FALSE(decoder_->Generate(prompt, bad).ok());
}

TEST_P(DecoderArchTest, StopsOnAnyEosId) {
  const std::vector<int64_t> prompt = Tokens(4, 7);
  GenerationOptions options;
  options.max_new_tokens = 12;
  options.eos_token_ids = std::vector<int64_t>{};
  auto g = decoder_->Generate(prompt, options);
  ASSERT_TRUE(g.ok());
  ASSERT_EQ(g->tokens.size(), 12u);
  EXPECT_EQ(g->finish_reason, FinishReason::kLength);
  options.eos_token_ids = std::vector<int64_t>{kVocab + 5, g->tokens[3]};
  auto stopped = decoder_->Generate(prompt, options);
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->finish_reason, FinishReason::kEos);
  ASSERT_LE(stopped->tokens.size(), 4u);
  EXPECT_EQ(stopped->tokens.back(), g->tokens[3]);
  EXPECT_TRUE(std::equal(stopped->tokens.begin(), stopped->tokens.end(),
                         g->tokens.begin()));
}

TEST_P(DecoderArchTest, ContinuesGenerationFromAPrefilledCache) {
  // The receiver's flow: prefill [0, L-1), then generate from token L-1.
  const std::vector<int64_t> prompt = Tokens(8, 8);
  GenerationOptions options;
  options.max_new_tokens = 6;
  options.eos_token_ids = std::vector<int64_t>{};
  auto direct = decoder_->Generate(prompt, options);
  ASSERT_TRUE(direct.ok());
  auto cache = decoder_->NewCache(16);
  ASSERT_TRUE(decoder_
                  ->Prefill(absl::MakeConstSpan(prompt).subspan(0, 7), *cache,
                            nullptr, LogitsMode::kNone)
                  .ok());
  auto continued = decoder_->Generate(
      *cache, absl::MakeConstSpan(prompt).subspan(7), options);
  ASSERT_TRUE(continued.ok()) << continued.status();
  EXPECT_EQ(continued->tokens, direct->tokens);
  EXPECT_EQ(cache->length(), 8 + 5);
}

TEST_P(DecoderArchTest, RejectsBadInput) {
  auto cache = decoder_->NewCache(4);
  ASSERT_TRUE(cache.ok());
  auto r = decoder_->Prefill(std::vector<int64_t>{1, kVocab}, *cache);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("vocabulary"));
  EXPECT_FALSE(decoder_->Prefill(std::vector<int64_t>{}, *cache).ok());
  r = decoder_->Prefill(Tokens(5), *cache);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache->length(), 0);
  auto batch = decoder_->NewCache(4, 2);
  EXPECT_FALSE(decoder_->Prefill(Tokens(2), *batch).ok());
  KvCache empty;
  EXPECT_FALSE(decoder_->DecodeStep(1, empty).ok());
  GenerationOptions options;
  options.max_new_tokens = 10;
  auto small = decoder_->NewCache(5);
  EXPECT_FALSE(decoder_->Generate(*small, Tokens(3), options).ok());
  EXPECT_FALSE(decoder_->NewCache(0).ok());
}

TEST_P(DecoderArchTest, PrefillAtContiguousPositionsIsPrefill) {
  const std::vector<int64_t> tokens = Tokens(9, 3);
  auto plain = decoder_->NewCache(16);
  auto at = decoder_->NewCache(16);
  ASSERT_TRUE(plain.ok() && at.ok());
  auto expected = decoder_->Prefill(tokens, *plain, nullptr, LogitsMode::kAll);
  std::vector<int64_t> positions;
  for (int64_t i = 0; i < 9; ++i) positions.push_back(i);
  auto got =
      decoder_->PrefillAt(tokens, positions, *at, nullptr, LogitsMode::kAll);
  ASSERT_TRUE(expected.ok() && got.ok()) << got.status();
  EXPECT_EQ(MaxDiff(*got, *expected), 0.0);
  EXPECT_EQ(at->length(), 9);
  EXPECT_EQ(at->rope_offset(), 0);
  EXPECT_EQ(MaxDiff(at->storage(), plain->storage()), 0.0);
}

TEST_P(DecoderArchTest, PrefillAtShiftedPositionsKeepsRelativeAttention) {
  // RoPE attention depends only on position differences: a sequence run at
  // positions [s, s + n) gives the logits of [0, n) (up to rounding), and
  // its keys are those of [0, n) rotated further.
  const std::vector<int64_t> tokens = Tokens(10, 4);
  auto plain = decoder_->NewCache(16);
  auto shifted = decoder_->NewCache(16);
  ASSERT_TRUE(plain.ok() && shifted.ok());
  auto expected = decoder_->Prefill(tokens, *plain, nullptr, LogitsMode::kAll);
  std::vector<int64_t> positions;
  for (int64_t i = 0; i < 10; ++i) positions.push_back(37 + i);
  auto got = decoder_->PrefillAt(tokens, positions, *shifted, nullptr,
                                 LogitsMode::kAll);
  ASSERT_TRUE(expected.ok() && got.ok()) << got.status();
  EXPECT_LT(MaxDiff(*got, *expected), 1e-3);
  EXPECT_EQ(shifted->length(), 10);
  EXPECT_EQ(shifted->rope_offset(), 37);
  EXPECT_GT(MaxDiff(shifted->Keys(0), plain->Keys(0)), 1e-3);
  EXPECT_LT(MaxDiff(shifted->Values(0), plain->Values(0)), 1e-5);
  // The offset carries into decode steps: still the unshifted logits.
  auto a = decoder_->DecodeStep(5, *plain);
  auto b = decoder_->DecodeStep(5, *shifted);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LT(MaxDiff(*a, *b), 1e-3);
}

TEST_P(DecoderArchTest, GappedPrefillAtContinuesAtTheNextPosition) {
  // Tokens at positions with a gap (C2C's aligned inputs without padding).
  // The gap lies further back than the sliding windows (Gemma3 5, Mistral
  // 6) reach from the later calls, whose earlier keys count as sitting at
  // index + offset (decoder.h).
  const std::vector<int64_t> tokens = Tokens(12, 5);
  const std::vector<int64_t> positions = {0, 1, 4,  5,  6,  7,
                                          8, 9, 10, 11, 12, 13};
  auto all = decoder_->NewCache(24);
  ASSERT_TRUE(all.ok());
  auto reference =
      decoder_->PrefillAt(tokens, positions, *all, nullptr, LogitsMode::kAll);
  ASSERT_TRUE(reference.ok()) << reference.status();
  EXPECT_EQ(all->length(), 12);
  EXPECT_EQ(all->rope_offset(), 2);

  // Prefix, then the rest token by token: the same logits.
  auto cache = decoder_->NewCache(24);
  ASSERT_TRUE(cache.ok());
  auto first = decoder_->PrefillAt(absl::MakeConstSpan(tokens).subspan(0, 9),
                                   absl::MakeConstSpan(positions).subspan(0, 9),
                                   *cache, nullptr, LogitsMode::kAll);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_LT(MaxDiff(*first, reference->narrow(0, 0, 9)), 1e-5);
  EXPECT_EQ(cache->rope_offset(), 2);
  for (int64_t i = 9; i < 12; ++i) {
    auto step = decoder_->PrefillAt(
        absl::MakeConstSpan(tokens).subspan(i, 1),
        absl::MakeConstSpan(positions).subspan(i, 1), *cache);
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_LT(MaxDiff(*step, reference->select(0, i)), 1e-5) << i;
  }
  EXPECT_EQ(cache->rope_offset(), 2);
  EXPECT_LT(MaxDiff(cache->storage(), all->storage()), 1e-5);

  // Generate continues at positions 14, 15, ...: equal to feeding its
  // tokens through PrefillAt at those positions.
  GenerationOptions options;
  options.max_new_tokens = 6;
  options.eos_token_ids = std::vector<int64_t>{};
  auto gen_cache = decoder_->NewCache(24);
  ASSERT_TRUE(gen_cache.ok());
  ASSERT_TRUE(decoder_
                  ->PrefillAt(absl::MakeConstSpan(tokens).subspan(0, 11),
                              absl::MakeConstSpan(positions).subspan(0, 11),
                              *gen_cache, nullptr, LogitsMode::kNone)
                  .ok());
  auto generated = decoder_->Generate(
      *gen_cache, absl::MakeConstSpan(tokens).subspan(11), options);
  ASSERT_TRUE(generated.ok()) << generated.status();
  EXPECT_EQ(gen_cache->length(), 12 + 5);
  EXPECT_EQ(gen_cache->rope_offset(), 2);
  std::vector<int64_t> seq = tokens, pos = positions;
  for (size_t k = 0; k + 1 < generated->tokens.size(); ++k) {
    seq.push_back(generated->tokens[k]);
    pos.push_back(14 + static_cast<int64_t>(k));
  }
  auto check = decoder_->NewCache(24);
  ASSERT_TRUE(check.ok());
  auto logits =
      decoder_->PrefillAt(seq, pos, *check, nullptr, LogitsMode::kAll);
  ASSERT_TRUE(logits.ok()) << logits.status();
  for (size_t k = 0; k < generated->tokens.size(); ++k) {
    EXPECT_EQ(logits->select(0, 11 + k).argmax().item<int64_t>(),
              generated->tokens[k])
        << k;
  }
  EXPECT_LT(MaxDiff(check->storage().narrow(4, 0, 17),
                    gen_cache->storage().narrow(4, 0, 17)),
            1e-5);

  // Batched decode honours each row's offset: row 0 (offset 6) steps as a
  // batch-1 cache with that offset does, row 1 (offset 0) as without.
  auto rows = decoder_->NewCache(24, 2);
  ASSERT_TRUE(rows.ok());
  ASSERT_TRUE(decoder_->PrefillBatch({tokens, Tokens(3, 1)}, *rows).ok());
  ASSERT_TRUE(rows->SetRopeOffset(0, 6).ok());
  auto batched = decoder_->DecodeStepBatch({5, 5}, *rows);
  ASSERT_TRUE(batched.ok()) << batched.status();
  auto fresh = decoder_->NewCache(24);
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE(decoder_->Prefill(tokens, *fresh).ok());
  ASSERT_TRUE(fresh->SetRopeOffset(0, 6).ok());
  auto fresh_step = decoder_->DecodeStep(5, *fresh);
  ASSERT_TRUE(fresh_step.ok());
  EXPECT_LT(MaxDiff(batched->select(0, 0), *fresh_step), 1e-5);
}

TEST_P(DecoderArchTest, PrefillAtRejectsBadPositionsAndOffsetsFollowTheCache) {
  auto cache = decoder_->NewCache(16);
  ASSERT_TRUE(cache.ok());
  const std::vector<int64_t> tokens = Tokens(3);
  auto r = decoder_->PrefillAt(tokens, std::vector<int64_t>{0, 2, 2}, *cache);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = decoder_->PrefillAt(tokens, std::vector<int64_t>{0, 1}, *cache);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = decoder_->PrefillAt({}, {}, *cache);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(
      decoder_->PrefillAt(tokens, std::vector<int64_t>{2, 5, 6}, *cache).ok());
  EXPECT_EQ(cache->rope_offset(), 4);
  // The next position is 7: 6 is behind it.
  r = decoder_->PrefillAt(Tokens(1), std::vector<int64_t>{6}, *cache);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("next position 7"));
  EXPECT_EQ(cache->length(), 3);
  auto batch = decoder_->NewCache(16, 2);
  ASSERT_TRUE(batch.ok());
  r = decoder_->PrefillAt(tokens, std::vector<int64_t>{0, 1, 2}, *batch);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  // Copies own their offsets; SetLength keeps it, Clear resets it.
  KvCache copy = *cache;
  ASSERT_TRUE(copy.SetRopeOffset(0, 9).ok());
  EXPECT_EQ(cache->rope_offset(), 4);
  ASSERT_TRUE(cache->SetLength(0, 1).ok());
  EXPECT_EQ(cache->rope_offset(), 4);
  cache->Clear();
  EXPECT_EQ(cache->rope_offset(), 0);
  EXPECT_EQ(cache->SetRopeOffset(0, -1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->SetRopeOffset(1, 0).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache->rope_offset(5), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Archs, DecoderArchTest,
    ::testing::Values(ModelArch::kQwen2, ModelArch::kQwen3, ModelArch::kLlama,
                      ModelArch::kMistral, ModelArch::kGemma3),
    [](const auto& info) { return ModelTypeName(info.param); });

TEST(DecoderTest, DtypesAndShardedCheckpoints) {
  const ModelConfig config = TinyConfig(ModelArch::kQwen3);
  const std::string f32 = MakeModel("f32", config);
  const std::string bf16 =
      MakeModel("bf16_sharded", config, SafetensorsDtype::kBF16, 3);
  const std::string f16 = MakeModel("f16", config, SafetensorsDtype::kF16);
  const std::vector<int64_t> prompt = Tokens(8);
  auto run = [&](const std::string& dir, at::ScalarType dtype) {
    auto d = LoadOrDie(dir, dtype);
    auto cache = d->NewCache(8);
    auto logits = d->Prefill(prompt, *cache);
    EXPECT_TRUE(logits.ok()) << logits.status();
    EXPECT_EQ(cache->storage().scalar_type(), dtype);
    return *logits;
  };
  const at::Tensor ref = run(f32, at::kFloat);
  const double scale = ref.abs().max().item<double>();
  // Same seed, so the bf16/fp16 checkpoints hold the rounded fp32 weights.
  EXPECT_LT(MaxDiff(run(bf16, at::kFloat), ref), 0.05 * scale);
  EXPECT_LT(MaxDiff(run(bf16, at::kBFloat16), ref), 0.1 * scale);
  // (LibTorch 1.13 has no fp16 matmul on CPU: there, load the F16 file as
  // fp32.)
  EXPECT_LT(
      MaxDiff(run(f16, TestDevice().is_cuda() ? at::kHalf : at::kFloat), ref),
      0.05 * scale);
  EXPECT_LT(MaxDiff(run(f32, at::kBFloat16), ref), 0.1 * scale);
}

TEST(DecoderTest, MissingOrMisshapedTensorsAreNamed) {
  const std::string dir = MakeModel("missing", TinyConfig(ModelArch::kQwen2));
  const std::string path = dir + "/model.safetensors";
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  std::vector<std::string> names;
  std::vector<SafetensorsEntry> entries;
  for (const SafetensorsTensorInfo& info : (*file)->tensors()) {
    if (info.name == "model.layers.1.mlp.up_proj.weight" ||
        info.name == "model.layers.0.self_attn.k_proj.bias") {
      continue;
    }
    entries.push_back(
        {info.name, info.dtype, info.shape, (*file)->Bytes(info)});
  }
  ASSERT_TRUE(WriteSafetensors(path + ".new", entries).ok());
  file->reset();
  ASSERT_EQ(std::rename((path + ".new").c_str(), path.c_str()), 0);
  auto d = Decoder::Load(dir);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(d.status().message(),
              HasSubstr("model.layers.1.mlp.up_proj.weight"));
  EXPECT_THAT(d.status().message(),
              HasSubstr("model.layers.0.self_attn.k_proj.bias"));

  // A config that disagrees with the weights' shapes.
  ModelConfig wider = TinyConfig(ModelArch::kQwen2);
  const std::string dir2 = MakeModel("misshaped", wider);
  wider.intermediate_size = 96;
  std::ofstream(dir2 + "/config.json") << ModelConfigToJson(wider);
  d = Decoder::Load(dir2);
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(), HasSubstr("mlp.gate_proj.weight"));
}

TEST(DecoderTest, TensorsTheArchitectureDoesNotUseAreAnError) {
  // Issue 14: a Qwen2 checkpoint relabelled LlamaForCausalLM loaded and
  // silently dropped its 72 attention biases (another model's answers).
  ModelConfig qwen2 = TinyConfig(ModelArch::kQwen2);
  const std::string dir = MakeModel("relabelled", qwen2);
  ModelConfig llama = qwen2;
  llama.arch = ModelArch::kLlama;
  llama.architecture = "LlamaForCausalLM";
  llama.model_type = "llama";
  llama.qkv_bias = false;  // Qwen2's config.json says nothing of biases.
  std::ofstream(dir + "/config.json") << ModelConfigToJson(llama);
  auto d = Decoder::Load(dir);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument)
      << d.status();
  EXPECT_THAT(d.status().message(),
              HasSubstr("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_THAT(d.status().message(), HasSubstr("LlamaForCausalLM"));
  EXPECT_THAT(d.status().message(),
              HasSubstr(absl::StrCat(3 * qwen2.num_hidden_layers)));
}

TEST(DecoderTest, UnknownArchitectureIsNamed) {
  const std::string dir = MakeModel("unknown", TinyConfig(ModelArch::kLlama));
  std::ofstream(dir + "/config.json")
      << R"({"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 32})";
  auto d = Decoder::Load(dir);
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(), HasSubstr("GPTNeoXForCausalLM"));
  EXPECT_FALSE(Decoder::Load(dir + "/nowhere").ok());
}

TEST(DecoderTest, ParsesDtypeAndDeviceNames) {
  EXPECT_EQ(*ParseModelDtype("bf16"), at::kBFloat16);
  EXPECT_EQ(*ParseModelDtype("float16"), at::kHalf);
  EXPECT_EQ(*ParseModelDtype("fp32"), at::kFloat);
  EXPECT_FALSE(ParseModelDtype("int8").ok());
  EXPECT_TRUE(ParseModelDevice("cpu")->is_cpu());
  EXPECT_EQ(ParseModelDevice("cuda:1")->index(), 1);
  EXPECT_FALSE(ParseModelDevice("tpu").ok());
}

}  // namespace
}  // namespace kvwire
