// Batching across requests on random tiny checkpoints. KvSlotPool and
// BatchedDecodeAccelerator (batched_decode.h): slots are handed out zeroed,
// returned with the cache's last copy, and fall back to own allocations when
// full; concurrent requests' decode steps run as one forward and each gets
// the tokens it would get alone; idle slots are never written by others'
// steps. BatchedPrefillAccelerator (batched_prefill.h): concurrent prompts
// of different lengths prefill in one padded forward and each gets the
// cache and logits of its own prefill. StepBatcher: oldest steps first, so
// none starves.
#include "common/model/batched_decode.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/model/batched_prefill.h"
#include "common/model/decoder.h"
#include "common/model/step_batcher.h"
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

// Polls `condition` every millisecond for up to 10 s.
bool WaitUpTo10s(const std::function<bool()>& condition) {
  for (int i = 0; i < 10000; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return condition();
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
  batch_options.gathering.items = kRequests;
  batch_options.gathering.window = absl::Seconds(10);
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

TEST_F(BatchedDecodeTest,
       ConcurrentPrefillsRunAsOneForwardWithTheirOwnResults) {
  constexpr int kRequests = 5;  // Padded to 8 rows, two of them > a bucket.
  const std::vector<int64_t> lengths = {3, 9, 17, 2, 12};
  std::vector<std::vector<int64_t>> prompts;
  std::vector<at::Tensor> expected_logits;
  std::vector<KvCache> expected_caches;
  for (int r = 0; r < kRequests; ++r) {
    prompts.push_back(Prompt(lengths[r], r + 1));
    auto cache = decoder_->NewCache(32);
    ASSERT_TRUE(cache.ok());
    auto logits = decoder_->Prefill(prompts[r], *cache);
    ASSERT_TRUE(logits.ok()) << logits.status();
    expected_logits.push_back(*logits);
    expected_caches.push_back(*cache);
  }

  BatchedPrefillOptions options;
  options.max_rows = 8;
  options.max_tokens = 24;
  options.bucket = 8;
  // Wait for all of them, so that they run as one forward.
  options.gathering.items = kRequests;
  options.gathering.window = absl::Seconds(10);
  std::vector<StepBatchStats> observed;
  std::mutex observed_mu;
  options.gathering.observer = [&](const StepBatchStats& stats) {
    std::lock_guard<std::mutex> lock(observed_mu);
    observed.push_back(stats);
  };
  auto batched = std::make_shared<BatchedPrefillAccelerator>(options);
  decoder_->SetPrefillAccelerator(batched);
  std::vector<KvCache> caches(kRequests);
  std::vector<at::Tensor> logits(kRequests);
  std::vector<absl::Status> statuses(kRequests);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRequests; ++r) {
    threads.emplace_back([&, r] {
      auto cache = decoder_->NewCache(32);
      if (!cache.ok()) {
        statuses[r] = cache.status();
        return;
      }
      caches[r] = *cache;
      auto result = decoder_->Prefill(prompts[r], caches[r]);
      statuses[r] = result.status();
      if (result.ok()) logits[r] = *result;
    });
  }
  for (auto& t : threads) t.join();
  decoder_->SetPrefillAccelerator(nullptr);
  for (int r = 0; r < kRequests; ++r) {
    ASSERT_TRUE(statuses[r].ok()) << statuses[r];
    EXPECT_EQ(caches[r].length(), lengths[r]);
    EXPECT_LT(MaxDiff(logits[r], expected_logits[r]), 1e-4) << "request " << r;
    for (int64_t l = 0; l < caches[r].num_layers(); ++l) {
      EXPECT_LT(MaxDiff(caches[r].Keys(l), expected_caches[r].Keys(l)), 1e-4);
      EXPECT_LT(MaxDiff(caches[r].Values(l), expected_caches[r].Values(l)),
                1e-4);
    }
    // The greedy token each prefill leads to is the same.
    EXPECT_EQ(logits[r].argmax().item<int64_t>(),
              expected_logits[r].argmax().item<int64_t>());
  }
  EXPECT_EQ(batched->prefills(), kRequests);
  EXPECT_EQ(batched->batches(), 1);
  EXPECT_EQ(batched->max_batch(), kRequests);
  ASSERT_EQ(observed.size(), 1u);
  EXPECT_EQ(observed[0].items, kRequests);
  EXPECT_GE(observed[0].max_wait_seconds, 0.0);
}

TEST_F(BatchedDecodeTest, PrefillsItCannotServeGoToTheFallback) {
  BatchedPrefillOptions options;
  options.max_tokens = 8;
  options.bucket = 8;
  auto fallback = std::make_shared<StaticPrefillAccelerator>(64);
  auto batched =
      std::make_shared<BatchedPrefillAccelerator>(options, nullptr, fallback);
  decoder_->SetPrefillAccelerator(batched);
  auto longer = decoder_->NewCache(32);
  auto shorter = decoder_->NewCache(32);
  ASSERT_TRUE(longer.ok() && shorter.ok());
  ASSERT_TRUE(decoder_->Prefill(Prompt(12, 1), *longer).ok());
  EXPECT_EQ(fallback->prefills(), 1);
  EXPECT_EQ(batched->prefills(), 0);
  ASSERT_TRUE(decoder_->Prefill(Prompt(6, 1), *shorter).ok());
  EXPECT_EQ(batched->prefills(), 1);
  EXPECT_EQ(fallback->prefills(), 1);
  decoder_->SetPrefillAccelerator(nullptr);
}

TEST_F(BatchedDecodeTest,
       InstallRequestBatchingChainsInFrontAndRefusesBadSizes) {
  RequestBatchingOptions options;
  options.decode_slots = -1;
  EXPECT_EQ(InstallRequestBatching(*decoder_, options).code(),
            absl::StatusCode::kInvalidArgument);
  options.decode_slots = 2;
  options.slot_capacity = 32;
  options.prefill_rows = 4;
  options.prefill_max_tokens = 16;
  ASSERT_TRUE(InstallRequestBatching(*decoder_, options).ok());
  ASSERT_NE(decoder_->slot_pool(), nullptr);
  EXPECT_EQ(decoder_->slot_pool()->slots(), 2);
  EXPECT_NE(
      dynamic_cast<BatchedDecodeAccelerator*>(decoder_->decode_accelerator()),
      nullptr);
  EXPECT_NE(
      dynamic_cast<BatchedPrefillAccelerator*>(decoder_->prefill_accelerator()),
      nullptr);
  // Generation through both equals the plain decoder's.
  GenerationOptions generation;
  generation.max_new_tokens = 6;
  generation.eos_token_ids = std::vector<int64_t>{};
  auto batched = decoder_->Generate(Prompt(7, 3), generation);
  ASSERT_TRUE(batched.ok()) << batched.status();
  decoder_->SetDecodeAccelerator(nullptr);
  decoder_->SetPrefillAccelerator(nullptr);
  decoder_->SetSlotPool(nullptr);
  auto plain = decoder_->Generate(Prompt(7, 3), generation);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(batched->tokens, plain->tokens);
}

TEST(StepBatcherTest, OldestStepsRunFirstSoNoneWaitsMoreThanItsTurn) {
  // Step 0 holds the model while steps 1..5 queue in that order; then they
  // run oldest first, two at a time: no step waits more batches than its
  // place in the queue.
  struct Step : BatchItem {
    Step(c10::Stream stream, int id) : BatchItem(stream), id(id) {}
    int id;
  };
  StepBatcherOptions options;
  options.max_items = 2;
  StepBatcher batcher(options);
  const c10::Stream stream = CurrentStream(c10::Device(c10::kCPU));
  std::mutex mu;
  std::condition_variable changed;
  bool release = false;                 // Guarded by mu.
  std::vector<std::vector<int>> order;  // Guarded by mu: each batch's ids.
  auto run = [&](const std::vector<BatchItem*>& batch) {
    std::unique_lock<std::mutex> lock(mu);
    order.emplace_back();
    for (BatchItem* item : batch) {
      order.back().push_back(static_cast<Step*>(item)->id);
    }
    changed.wait(lock, [&] { return release; });
  };
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    Step step(stream, 0);
    batcher.Run(&step, run);
  });
  ASSERT_TRUE(WaitUpTo10s([&] {
    std::lock_guard<std::mutex> lock(mu);
    return order.size() == 1;
  }));
  for (int id = 1; id <= 5; ++id) {
    threads.emplace_back([&, id] {
      Step step(stream, id);
      batcher.Run(&step, run);
    });
    ASSERT_TRUE(WaitUpTo10s([&] { return batcher.queued() == id; }));
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  changed.notify_all();
  for (auto& t : threads) t.join();
  EXPECT_EQ(order, (std::vector<std::vector<int>>{{0}, {1, 2}, {3, 4}, {5}}));
  EXPECT_EQ(batcher.steps(), 6);
  EXPECT_EQ(batcher.batches(), 4);
  EXPECT_EQ(batcher.max_batch(), 2);
  EXPECT_EQ(batcher.queued(), 0);
}

}  // namespace
}  // namespace kvwire
