// Admission control: bounded queue, deadlines, cancellation, shutdown.
#include "common/service/work_queue.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/service/metrics.h"
#include "gtest/gtest.h"
#include "tests/common/service/testing_util.h"

namespace kvwire {
namespace {

// Runs until released; records how it ended.
class BlockingItem : public WorkItem {
 public:
  void Run(absl::Duration) override {
    started.Notify();
    release.WaitForNotification();
    ran = true;
    finished.Notify();
  }
  void Drop(absl::Status why) override {
    std::lock_guard<std::mutex> lock(mu);
    dropped = why;
    ++drops;
    finished.Notify();
  }

  absl::Notification started;
  absl::Notification release;
  absl::Notification finished;
  std::atomic<bool> ran{false};
  std::mutex mu;
  absl::Status dropped;
  int drops = 0;
};

TEST(WorkQueueTest, RejectsBeyondWorkersPlusQueue) {
  Metrics metrics;
  WorkQueue queue({/*workers=*/1, /*queue_capacity=*/1, "test"},
                  &metrics.Queue(ServiceRole::kSharer));
  auto a = std::make_shared<BlockingItem>();
  auto b = std::make_shared<BlockingItem>();
  auto c = std::make_shared<BlockingItem>();
  ASSERT_TRUE(queue.Submit(a, absl::InfiniteFuture()).ok());
  a->started.WaitForNotification();
  ASSERT_TRUE(queue.Submit(b, absl::InfiniteFuture()).ok());
  const absl::Status rejected = queue.Submit(c, absl::InfiniteFuture());
  EXPECT_EQ(rejected.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(rejected.message().find("overloaded"), absl::string_view::npos);
  EXPECT_EQ(queue.queued(), 1);
  EXPECT_EQ(queue.busy(), 1);
  const std::string text = metrics.SerializeText();
  EXPECT_EQ(test_util::MetricValue(text, "kvwire_queue_rejected_total",
                                   {{"role", "sharer"}}),
            1);
  EXPECT_EQ(
      test_util::MetricValue(text, "kvwire_queue_depth", {{"role", "sharer"}}),
      1);
  a->release.Notify();
  b->release.Notify();
  b->finished.WaitForNotification();
  EXPECT_TRUE(a->ran);
  EXPECT_TRUE(b->ran);
  EXPECT_EQ(c->drops, 0);  // Rejected items are never called.
}

TEST(WorkQueueTest, RunsUpToWorkersConcurrently) {
  WorkQueue queue({/*workers=*/3, /*queue_capacity=*/0, "test"});
  std::vector<std::shared_ptr<BlockingItem>> items;
  for (int i = 0; i < 3; ++i) {
    items.push_back(std::make_shared<BlockingItem>());
    ASSERT_TRUE(queue.Submit(items.back(), absl::InfiniteFuture()).ok()) << i;
  }
  for (auto& item : items) item->started.WaitForNotification();
  EXPECT_EQ(queue.busy(), 3);
  EXPECT_EQ(
      queue.Submit(std::make_shared<BlockingItem>(), absl::InfiniteFuture())
          .code(),
      absl::StatusCode::kResourceExhausted);
  for (auto& item : items) item->release.Notify();
  for (auto& item : items) item->finished.WaitForNotification();
}

TEST(WorkQueueTest, CancelRemovesQueuedItem) {
  WorkQueue queue({1, 4, "test"});
  auto a = std::make_shared<BlockingItem>();
  auto b = std::make_shared<BlockingItem>();
  ASSERT_TRUE(queue.Submit(a, absl::InfiniteFuture()).ok());
  a->started.WaitForNotification();
  ASSERT_TRUE(queue.Submit(b, absl::InfiniteFuture()).ok());
  EXPECT_TRUE(queue.Cancel(b.get()));
  EXPECT_FALSE(queue.Cancel(b.get()));
  EXPECT_FALSE(queue.Cancel(a.get()));  // Running: not affected.
  EXPECT_EQ(b->dropped.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(queue.queued(), 0);
  a->release.Notify();
  a->finished.WaitForNotification();
  EXPECT_FALSE(b->ran);
}

TEST(WorkQueueTest, ExpiredDeadlineIsDroppedNotRun) {
  WorkQueue queue({1, 4, "test"});
  auto a = std::make_shared<BlockingItem>();
  auto b = std::make_shared<BlockingItem>();
  ASSERT_TRUE(queue.Submit(a, absl::InfiniteFuture()).ok());
  a->started.WaitForNotification();
  // Already expired when the worker gets to it.
  ASSERT_TRUE(queue.Submit(b, absl::Now() - absl::Seconds(1)).ok());
  a->release.Notify();
  b->finished.WaitForNotification();
  EXPECT_FALSE(b->ran);
  EXPECT_EQ(b->dropped.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(WorkQueueTest, ExpiredItemsFreeTheirSlotsWhileEveryWorkerIsBusy) {
  // The repro of issue 14: the only worker is held; two queued items whose
  // deadlines pass must leave at their deadlines, not when a worker frees
  // up, so that new work is admitted again.
  Metrics metrics;
  WorkQueue queue({/*workers=*/1, /*queue_capacity=*/2, "test"},
                  &metrics.Queue(ServiceRole::kSharer));
  auto running = std::make_shared<BlockingItem>();
  ASSERT_TRUE(queue.Submit(running, absl::InfiniteFuture()).ok());
  running->started.WaitForNotification();
  auto b = std::make_shared<BlockingItem>();
  auto c = std::make_shared<BlockingItem>();
  const absl::Time submitted = absl::Now();
  ASSERT_TRUE(queue.Submit(b, submitted + absl::Milliseconds(200)).ok());
  ASSERT_TRUE(queue.Submit(c, submitted + absl::Milliseconds(300)).ok());
  EXPECT_EQ(
      queue.Submit(std::make_shared<BlockingItem>(), absl::InfiniteFuture())
          .code(),
      absl::StatusCode::kResourceExhausted);

  ASSERT_TRUE(b->finished.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(c->finished.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_GE(absl::Now() - submitted, absl::Milliseconds(300));
  EXPECT_EQ(b->dropped.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(c->dropped.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(running->finished.HasBeenNotified());
  EXPECT_EQ(queue.queued(), 0);
  EXPECT_EQ(test_util::MetricValue(metrics.SerializeText(),
                                   "kvwire_queue_depth", {{"role", "sharer"}}),
            0);
  auto d = std::make_shared<BlockingItem>();
  EXPECT_TRUE(queue.Submit(d, absl::InfiniteFuture()).ok());
  running->release.Notify();
  d->started.WaitForNotification();
  d->release.Notify();
  d->finished.WaitForNotification();
  EXPECT_TRUE(d->ran);
}
TEST(WorkQueueTest, ShutdownDropsQueuedAndWaitsForRunning) {
  auto queue = std::make_unique<WorkQueue>(WorkQueue::Options{1, 4, "test"});
  auto a = std::make_shared<BlockingItem>();
  auto b = std::make_shared<BlockingItem>();
  ASSERT_TRUE(queue->Submit(a, absl::InfiniteFuture()).ok());
  a->started.WaitForNotification();
  ASSERT_TRUE(queue->Submit(b, absl::InfiniteFuture()).ok());
  std::thread stopper([&] { queue->Shutdown(); });
  b->finished.WaitForNotification();
  EXPECT_EQ(b->dropped.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(
      queue->Submit(std::make_shared<BlockingItem>(), absl::InfiniteFuture())
          .code(),
      absl::StatusCode::kUnavailable);
  a->release.Notify();
  stopper.join();
  EXPECT_TRUE(a->ran);
  EXPECT_EQ(b->drops, 1);
}

// An item with a batching weight that records how it ran.
class SizedItem : public BlockingItem {
 public:
  explicit SizedItem(int64_t size) : size_(size) {}
  int64_t BatchSize() const override { return size_; }

 private:
  int64_t size_;
};

TEST(WorkQueueTest, BatchesQueuedItemsWithinThePaddingLimit) {
  Metrics metrics;
  std::mutex mu;
  std::vector<std::vector<WorkItem*>> batches;
  WorkQueue::Options options{1, 8, "test"};
  options.max_batch = 3;
  options.max_padding = 0.5;
  WorkQueue queue(options, &metrics.Queue(ServiceRole::kSharer),
                  [&](const std::vector<std::shared_ptr<WorkItem>>& items,
                      const std::vector<absl::Duration>& waits) {
                    EXPECT_EQ(items.size(), waits.size());
                    std::vector<WorkItem*> batch;
                    for (const auto& item : items) batch.push_back(item.get());
                    {
                      std::lock_guard<std::mutex> lock(mu);
                      batches.push_back(batch);
                    }
                    for (const auto& item : items) {
                      static_cast<SizedItem*>(item.get())->finished.Notify();
                    }
                  });
  auto blocker = std::make_shared<SizedItem>(10);
  ASSERT_TRUE(queue.Submit(blocker, absl::InfiniteFuture()).ok());
  blocker->started.WaitForNotification();
  // Queued behind the blocker: 10, 100 (too long to pad with 10s), 12, 9, 11.
  std::vector<std::shared_ptr<SizedItem>> items;
  for (int64_t size : {10, 100, 12, 9, 11}) {
    items.push_back(std::make_shared<SizedItem>(size));
    ASSERT_TRUE(queue.Submit(items.back(), absl::InfiniteFuture()).ok());
  }
  for (auto& item : items) item->release.Notify();  // Singles run at once.
  blocker->release.Notify();
  for (auto& item : items) item->finished.WaitForNotification();
  std::lock_guard<std::mutex> lock(mu);
  // First batch: 10 + 12 + 9 (max_batch 3; 100 skipped for padding); then
  // 100 + 11 would pad 11 to 100: 100 alone, then 11 alone. The runner only
  // sees batches of two or more; single items Run().
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0], (std::vector<WorkItem*>{items[0].get(), items[2].get(),
                                                items[3].get()}));
  EXPECT_TRUE(items[1]->ran);
  EXPECT_TRUE(items[4]->ran);
  EXPECT_EQ(
      test_util::MetricValue(metrics.SerializeText(), "kvwire_batch_size_sum",
                             {{"role", "sharer"}}),
      1 + 3 + 1 + 1);
}

}  // namespace
}  // namespace kvwire
