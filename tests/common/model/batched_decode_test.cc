// KvSlotPool and BatchedDecodeAccelerator (batched_decode.h) on random tiny
// checkpoints: slots are handed out zeroed, returned with the cache's last
// copy, and fall back to own allocations when full; concurrent requests'
// decode steps run as one forward and each gets the tokens it would get
// alone; idle slots are never written by others' steps.
#include "common/model/batched_decode.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/model/decoder.h"
#include "gtest/gtest.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

namespace kvwire {
namespace {

constexpr int64_t kVocab = 128;

std::unique_ptr<Decoder> LoadTinyQwen3(const std::string& name) {
  ModelConfig c =
      MakeModelConfig(ModelArch::kQwen3, kVocab, 32, 64, 3, 4, 2, 16);
  c.eos_token_ids = {kVocab - 1};
  c.tie_word_embeddings = true;
  const std::string dir = absl::StrCat(::testing::TempDir(), "/kvwire_batch_",
                                       ::getpid(), "_", name);
  TinyCheckpointOptions options;
  options.config = c;
  options.dtype = SafetensorsDtype::kF32;
  options.seed = 5;
  options.init_std = 0.2;  // Spread logits: clear argmax decisions.
  const absl::Status written = WriteRandomCheckpoint(dir, options);
  EXPECT_TRUE(written.ok()) << written;
  auto decoder = Decoder::Load(dir);
  EXPECT_TRUE(decoder.ok()) << decoder.status();
  return decoder.ok() ? std::move(*decoder) : nullptr;
}

std::vector<int64_t> Prompt(int64_t n, int64_t seed) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < n; ++i) {
    t.push_back((i * 29 + seed * 13 + 7) % (kVocab - 1));
  }
  return t;
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

class BatchedDecodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    decoder_ = LoadTinyQwen3("model");
    ASSERT_NE(decoder_, nullptr);
  }
  std::unique_ptr<Decoder> decoder_;
};

TEST_F(BatchedDecodeTest, PoolHandsOutZeroedSlotsAndTakesThemBack) {
  auto pool = KvSlotPool::Create(*decoder_, 2, 32);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->storage().sizes(),
            (std::vector<int64_t>{3, 2, 2, 2, 33, 16}));
  decoder_->SetSlotPool(*pool);
  {
    auto a = decoder_->NewCache(20);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_NE(a->slot_lease(), nullptr);
    EXPECT_EQ(a->slot_lease()->slot, 0);
    EXPECT_EQ(a->capacity(), 20);
    ASSERT_TRUE(decoder_->Prefill(Prompt(5, 1), *a).ok());
    EXPECT_GT(a->Keys(0).abs().sum().item<double>(), 0.0);

    auto b = decoder_->NewCache(32);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->slot_lease()->slot, 1);
    EXPECT_EQ((*pool)->in_use(), 2);
    // Full: an allocation of its own. Too large: likewise.
    auto own = decoder_->NewCache(8);
    ASSERT_TRUE(own.ok());
    EXPECT_EQ(own->slot_lease(), nullptr);
    EXPECT_EQ((*pool)->Acquire(8).status().code(),
              absl::StatusCode::kResourceExhausted);
    EXPECT_EQ((*pool)->Acquire(33).status().code(),
              absl::StatusCode::kOutOfRange);

    KvCache copy = *a;  // Shares the slot.
    *a = KvCache();
    EXPECT_EQ((*pool)->in_use(), 2);
  }
  EXPECT_EQ((*pool)->in_use(), 0);
  // A slot comes back zeroed.
  auto again = decoder_->NewCache(20);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->slot_lease()->slot, 0);
  EXPECT_EQ(again->storage().abs().sum().item<double>(), 0.0);
  EXPECT_EQ(KvSlotPool::Create(*decoder_, 0, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  decoder_->SetSlotPool(nullptr);
}

TEST_F(BatchedDecodeTest, ConcurrentRequestsStepTogetherAndGetTheirOwnTokens) {
  constexpr int kRequests = 4;
  GenerationOptions options;
  options.max_new_tokens = 12;
  options.eos_token_ids = std::vector<int64_t>{};
  std::vector<std::vector<int64_t>> prompts, expected;
  for (int r = 0; r < kRequests; ++r) {
    prompts.push_back(Prompt(3 + 2 * r, r));  // Different lengths.
    auto alone = decoder_->Generate(prompts.back(), options);
    ASSERT_TRUE(alone.ok()) << alone.status();
    expected.push_back(alone->tokens);
  }

  auto pool = KvSlotPool::Create(*decoder_, 8, 64);
  ASSERT_TRUE(pool.ok());
  BatchedDecodeOptions batch_options;
  batch_options.min_span = 8;
  // Wait for all four before each step, so the batching is deterministic.
  batch_options.gather_rows = kRequests;
  batch_options.gather_window = absl::Seconds(10);
  auto batched =
      std::make_shared<BatchedDecodeAccelerator>(*pool, batch_options);
  decoder_->SetSlotPool(*pool);
  decoder_->SetDecodeAccelerator(batched);

  std::vector<std::vector<int64_t>> got(kRequests);
  std::vector<absl::Status> statuses(kRequests);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRequests; ++r) {
    threads.emplace_back([&, r] {
      auto result = decoder_->Generate(prompts[r], options);
      statuses[r] = result.status();
      if (result.ok()) got[r] = result->tokens;
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kRequests; ++r) {
    ASSERT_TRUE(statuses[r].ok()) << statuses[r];
    EXPECT_EQ(got[r], expected[r]) << "request " << r;
  }
  // Every step after the first token went through the batcher, four rows
  // per forward.
  EXPECT_EQ(batched->steps(), kRequests * (options.max_new_tokens - 1));
  EXPECT_EQ(batched->max_batch(), kRequests);
  EXPECT_EQ(batched->batches(), options.max_new_tokens - 1);
  EXPECT_EQ((*pool)->in_use(), 0);
  decoder_->SetDecodeAccelerator(nullptr);
  decoder_->SetSlotPool(nullptr);
}

TEST_F(BatchedDecodeTest, IdleSlotsAreNotWrittenAndOtherCachesFallBack) {
  auto pool = KvSlotPool::Create(*decoder_, 4, 16);
  ASSERT_TRUE(pool.ok());
  auto batched = std::make_shared<BatchedDecodeAccelerator>(
      *pool, BatchedDecodeOptions{}, nullptr,
      std::make_shared<StaticDecodeAccelerator>());
  decoder_->SetSlotPool(*pool);
  auto idle = decoder_->NewCache(16);  // Slot 0: prefilled, then idle.
  auto busy = decoder_->NewCache(16);  // Slot 1: steps.
  ASSERT_TRUE(idle.ok() && busy.ok());
  ASSERT_TRUE(decoder_->Prefill(Prompt(6, 2), *idle).ok());
  const at::Tensor before = idle->storage().clone();

  auto reference = decoder_->NewCache(16);  // Slot 2, eager.
  ASSERT_TRUE(reference.ok());
  ASSERT_TRUE(decoder_->Prefill(Prompt(4, 3), *busy).ok());
  ASSERT_TRUE(decoder_->Prefill(Prompt(4, 3), *reference).ok());
  decoder_->SetDecodeAccelerator(batched);
  for (int64_t token : {5, 9, 11}) {
    auto stepped = decoder_->DecodeStep(token, *busy);
    ASSERT_TRUE(stepped.ok()) << stepped.status();
    decoder_->SetDecodeAccelerator(nullptr);
    auto eager = decoder_->DecodeStep(token, *reference);
    decoder_->SetDecodeAccelerator(batched);
    ASSERT_TRUE(eager.ok());
    EXPECT_LT(MaxDiff(*stepped, *eager), 1e-5);
  }
  EXPECT_EQ(busy->length(), 7);
  EXPECT_EQ(batched->steps(), 3);
  // Slot 0 ran idle rows in those forwards: only its scratch position
  // (outside its cache) changed.
  EXPECT_EQ(MaxDiff(idle->storage(), before), 0.0);

  // A cache of its own goes to the fallback accelerator.
  decoder_->SetSlotPool(nullptr);
  auto own = decoder_->NewCache(16);
  ASSERT_TRUE(own.ok());
  ASSERT_TRUE(decoder_->Prefill(Prompt(4, 3), *own).ok());
  auto fallback = decoder_->DecodeStep(5, *own);
  ASSERT_TRUE(fallback.ok()) << fallback.status();
  EXPECT_EQ(batched->steps(), 3);
  decoder_->SetDecodeAccelerator(nullptr);
}

TEST_F(BatchedDecodeTest, RowsStepAtTheirOwnRopeOffsets) {
  auto pool = KvSlotPool::Create(*decoder_, 4, 32);
  ASSERT_TRUE(pool.ok());
  auto batched = std::make_shared<BatchedDecodeAccelerator>(
      *pool, BatchedDecodeOptions{}, nullptr, nullptr);
  decoder_->SetSlotPool(*pool);
  auto gapped = decoder_->NewCache(32);  // Slot 0: gapped prefill.
  auto plain = decoder_->NewCache(32);   // Slot 1: offset 0.
  ASSERT_TRUE(gapped.ok() && plain.ok());
  ASSERT_NE(gapped->slot_lease(), nullptr);
  const std::vector<int64_t> prompt = Prompt(5, 4);
  const std::vector<int64_t> positions = {0, 2, 3, 7, 10};
  ASSERT_TRUE(decoder_->PrefillAt(prompt, positions, *gapped).ok());
  ASSERT_TRUE(decoder_->Prefill(prompt, *plain).ok());
  decoder_->SetSlotPool(nullptr);
  auto gapped_ref = decoder_->NewCache(32);
  auto plain_ref = decoder_->NewCache(32);
  ASSERT_TRUE(gapped_ref.ok() && plain_ref.ok());
  ASSERT_TRUE(decoder_->PrefillAt(prompt, positions, *gapped_ref).ok());
  ASSERT_TRUE(decoder_->Prefill(prompt, *plain_ref).ok());

  // Both rows step together in one forward; each equals its eager step.
  for (int64_t token : {3, 8, 21}) {
    decoder_->SetDecodeAccelerator(batched);
    at::Tensor a, b;
    std::thread other([&] {
      auto r = decoder_->DecodeStep(token, *plain);
      ASSERT_TRUE(r.ok()) << r.status();
      b = *r;
    });
    auto r = decoder_->DecodeStep(token, *gapped);
    other.join();
    ASSERT_TRUE(r.ok()) << r.status();
    a = *r;
    decoder_->SetDecodeAccelerator(nullptr);
    auto ea = decoder_->DecodeStep(token, *gapped_ref);
    auto eb = decoder_->DecodeStep(token, *plain_ref);
    ASSERT_TRUE(ea.ok() && eb.ok());
    EXPECT_LT(MaxDiff(a, *ea), 1e-5);
    EXPECT_LT(MaxDiff(b, *eb), 1e-5);
  }
  EXPECT_EQ(batched->steps(), 6);
  EXPECT_EQ(gapped->rope_offset(), 6);
}

}  // namespace
}  // namespace kvwire
