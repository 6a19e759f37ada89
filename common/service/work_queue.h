// A fixed pool of worker threads fed by a bounded FIFO queue: the admission
// control of the kvwire servers. A request either starts on an idle worker,
// waits in the queue (until a worker takes it, it is cancelled, or its
// deadline passes: a timer drops expired items at their deadline, so they
// never hold a queue slot past it), or is refused at once with
// RESOURCE_EXHAUSTED when the queue is full. Items that leave the queue without
// running are told why (Drop), exactly once.
//
// Dynamic batching (Options::max_batch > 1 and a BatchRunner): a worker that
// takes an item also takes compatible items waiting behind it (FIFO, up to
// max_batch, while padding stays within max_padding) and runs them together.
// Nothing waits to form a batch: batches form only when requests queue up,
// i.e. under load, where they raise throughput.
#ifndef KVWIRE_COMMON_SERVICE_WORK_QUEUE_H_
#define KVWIRE_COMMON_SERVICE_WORK_QUEUE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace kvwire {

class QueueMetrics;

// One unit of work. Exactly one of Run and Drop is called, once.
class WorkItem {
 public:
  virtual ~WorkItem() = default;
  // Runs on a worker thread; `queue_wait` is the time spent queued.
  virtual void Run(absl::Duration queue_wait) = 0;
  // The item left the queue without running: CANCELLED (WorkQueue::Cancel),
  // DEADLINE_EXCEEDED (its deadline passed before a worker was free) or
  // UNAVAILABLE (shutdown). Called on the thread that caused it; must not
  // call back into the queue.
  virtual void Drop(absl::Status why) = 0;
  // Batching weight (e.g. prompt tokens); 0 never batches this item.
  virtual int64_t BatchSize() const { return 0; }
};

// Runs several items as one batch on a worker thread; must end each of them
// as Run would (the queue calls neither Run nor Drop on them). `waits[i]` is
// items[i]'s time in the queue.
using BatchRunner =
    std::function<void(const std::vector<std::shared_ptr<WorkItem>>& items,
                       const std::vector<absl::Duration>& waits)>;

class WorkQueue {
 public:
  struct Options {
    int workers = 1;            // >= 1.
    int queue_capacity = 16;    // Items that may wait; >= 0.
    std::string name = "work";  // Thread names and messages.
    // Most items run together (1: no batching).
    int max_batch = 1;
    // A batch is padded to its largest item: it may hold at most
    // (1 + max_padding) x the sum of its items' BatchSize() after padding.
    double max_padding = 0.5;
  };

  // Starts the workers. `metrics` (optional, not owned) gets depth, busy
  // workers, waits, batch sizes and rejections. `batch_runner` enables
  // batching when options.max_batch > 1.
  explicit WorkQueue(const Options& options, QueueMetrics* metrics = nullptr,
                     BatchRunner batch_runner = nullptr);
  // Shutdown().
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Admits `item` with `deadline` (absl::InfiniteFuture() for none). OK: it
  // will Run or be Dropped. RESOURCE_EXHAUSTED when every worker is busy and
  // the queue is full; UNAVAILABLE after Shutdown. On error nothing is
  // called on `item`.
  absl::Status Submit(std::shared_ptr<WorkItem> item, absl::Time deadline);

  // Removes `item` if it is still queued and Drops it with CANCELLED;
  // returns whether it did. A running item is not affected (stop it through
  // its own state).
  bool Cancel(const WorkItem* item);

  // Stops admitting, Drops queued items with UNAVAILABLE, and waits for the
  // running ones to return. Idempotent.
  void Shutdown();

  int workers() const { return options_.workers; }
  int queue_capacity() const { return options_.queue_capacity; }
  int64_t queued() const;
  int64_t busy() const;

 private:
  struct Entry {
    std::shared_ptr<WorkItem> item;
    absl::Time deadline;
    absl::Time enqueued;
  };
  void WorkerLoop();
  // Drops queued items as their deadlines pass (one thread per queue).
  void ExpiryLoop();
  // Moves the items whose deadline is at or before `now` out of the queue.
  std::vector<Entry> TakeExpiredLocked(absl::Time now);
  static void DropExpired(Entry& entry, absl::Time now);
  void PublishLocked();
  // Moves items that may join `head`'s batch out of the queue.
  std::vector<Entry> TakeBatchLocked(const Entry& head, absl::Time now);

  const Options options_;
  QueueMetrics* const metrics_;
  const BatchRunner batch_runner_;
  mutable std::mutex mu_;
  std::condition_variable cv_;         // Workers: an item or stopping.
  std::condition_variable expiry_cv_;  // ExpiryLoop: the queue changed.
  std::deque<Entry> queue_;
  int64_t busy_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;  // Workers, then the expiry thread.
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_WORK_QUEUE_H_
