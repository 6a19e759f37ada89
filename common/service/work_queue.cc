// Bounded worker pool.
#include "common/service/work_queue.h"

#include <pthread.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/service/metrics.h"

namespace kvwire {

WorkQueue::WorkQueue(const Options& options, QueueMetrics* metrics,
                     BatchRunner batch_runner)
    : options_{std::max(1, options.workers),
               std::max(0, options.queue_capacity), options.name,
               std::max(1, options.max_batch),
               std::max(0.0, options.max_padding)},
      metrics_(metrics),
      batch_runner_(std::move(batch_runner)) {
  if (metrics_ != nullptr) {
    metrics_->SetCapacity(options_.workers, options_.queue_capacity);
    metrics_->SetDepth(0);
    metrics_->SetBusyWorkers(0);
  }
  threads_.reserve(options_.workers + 1);
  for (int i = 0; i < options_.workers; ++i) {
    threads_.emplace_back([this, i] {
      // Linux limits thread names to 15 characters.
      const std::string name =
          absl::StrCat(options_.name.substr(0, 10), "-", i).substr(0, 15);
      pthread_setname_np(pthread_self(), name.c_str());
      WorkerLoop();
    });
  }
  threads_.emplace_back([this] {
    const std::string name =
        absl::StrCat(options_.name.substr(0, 10), "-exp").substr(0, 15);
    pthread_setname_np(pthread_self(), name.c_str());
    ExpiryLoop();
  });
}

WorkQueue::~WorkQueue() { Shutdown(); }

void WorkQueue::PublishLocked() {
  if (metrics_ == nullptr) return;
  metrics_->SetDepth(static_cast<int64_t>(queue_.size()));
  metrics_->SetBusyWorkers(busy_);
}

absl::Status WorkQueue::Submit(std::shared_ptr<WorkItem> item,
                               absl::Time deadline) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) {
    return absl::UnavailableError(
        absl::StrCat(options_.name, " is shutting down"));
  }
  // An idle worker takes the item at once, so only items beyond the idle
  // workers occupy queue slots.
  const int64_t idle = options_.workers - busy_;
  const int64_t waiting_for_worker =
      static_cast<int64_t>(queue_.size()) - std::max<int64_t>(idle, 0);
  if (waiting_for_worker >= options_.queue_capacity) {
    if (metrics_ != nullptr) metrics_->CountRejected();
    return absl::ResourceExhaustedError(absl::StrCat(
        options_.name, " overloaded: ", options_.workers, " worker",
        options_.workers == 1 ? "" : "s", " busy and ", options_.queue_capacity,
        " request", options_.queue_capacity == 1 ? "" : "s",
        " queued; retry later or raise --workers/--queue_size"));
  }
  queue_.push_back(Entry{std::move(item), deadline, absl::Now()});
  PublishLocked();
  cv_.notify_one();
  if (deadline != absl::InfiniteFuture()) expiry_cv_.notify_one();
  return absl::OkStatus();
}

bool WorkQueue::Cancel(const WorkItem* item) {
  std::shared_ptr<WorkItem> removed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it =
        std::find_if(queue_.begin(), queue_.end(),
                     [item](const Entry& e) { return e.item.get() == item; });
    if (it == queue_.end()) return false;
    removed = std::move(it->item);
    queue_.erase(it);
    PublishLocked();
  }
  removed->Drop(absl::CancelledError("cancelled while queued"));
  return true;
}

std::vector<WorkQueue::Entry> WorkQueue::TakeBatchLocked(const Entry& head,
                                                         absl::Time now) {
  std::vector<Entry> batch;
  const int64_t head_size = head.item->BatchSize();
  if (options_.max_batch <= 1 || !batch_runner_ || head_size <= 0) {
    return batch;
  }
  int64_t count = 1, sum = head_size, largest = head_size;
  for (auto it = queue_.begin();
       it != queue_.end() && count < options_.max_batch;) {
    const int64_t size = it->item->BatchSize();
    const int64_t new_largest = std::max(largest, size);
    const double padded = static_cast<double>(new_largest) * (count + 1);
    if (size <= 0 || now >= it->deadline ||
        padded >
            (1.0 + options_.max_padding) * static_cast<double>(sum + size)) {
      ++it;
      continue;
    }
    ++count;
    sum += size;
    largest = new_largest;
    batch.push_back(std::move(*it));
    it = queue_.erase(it);
  }
  return batch;
}

void WorkQueue::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // Stopping and nothing left.
    Entry entry = std::move(queue_.front());
    queue_.pop_front();
    const absl::Time now = absl::Now();
    if (now >= entry.deadline) {  // Expired before the expiry thread saw it.
      PublishLocked();
      lock.unlock();
      DropExpired(entry, now);
      entry.item.reset();
      lock.lock();
      continue;
    }
    std::vector<Entry> others = TakeBatchLocked(entry, now);
    ++busy_;
    PublishLocked();
    lock.unlock();
    const absl::Duration wait = now - entry.enqueued;
    if (metrics_ != nullptr) {
      metrics_->ObserveWait(absl::ToDoubleSeconds(wait));
      for (const Entry& e : others) {
        metrics_->ObserveWait(absl::ToDoubleSeconds(now - e.enqueued));
      }
      metrics_->ObserveBatch(static_cast<int64_t>(others.size()) + 1);
    }
    if (others.empty()) {
      entry.item->Run(wait);
    } else {
      std::vector<std::shared_ptr<WorkItem>> items{std::move(entry.item)};
      std::vector<absl::Duration> waits{wait};
      for (Entry& e : others) {
        items.push_back(std::move(e.item));
        waits.push_back(now - e.enqueued);
      }
      others.clear();
      batch_runner_(items, waits);
    }
    entry.item.reset();
    lock.lock();
    --busy_;
    PublishLocked();
  }
}

std::vector<WorkQueue::Entry> WorkQueue::TakeExpiredLocked(absl::Time now) {
  std::vector<Entry> expired;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (now >= it->deadline) {
      expired.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  return expired;
}

void WorkQueue::DropExpired(Entry& entry, absl::Time now) {
  entry.item->Drop(absl::DeadlineExceededError(
      absl::StrCat("deadline expired after waiting ",
                   absl::FormatDuration(now - entry.enqueued),
                   " in the queue for a worker")));
}

void WorkQueue::ExpiryLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    absl::Time earliest = absl::InfiniteFuture();
    for (const Entry& e : queue_) earliest = std::min(earliest, e.deadline);
    if (earliest == absl::InfiniteFuture()) {
      expiry_cv_.wait(lock);
    } else {
      expiry_cv_.wait_until(lock, absl::ToChronoTime(earliest));
    }
    if (stopping_) return;
    const absl::Time now = absl::Now();
    std::vector<Entry> expired = TakeExpiredLocked(now);
    if (expired.empty()) continue;
    PublishLocked();
    lock.unlock();
    for (Entry& e : expired) DropExpired(e, now);
    expired.clear();
    lock.lock();
  }
}

void WorkQueue::Shutdown() {
  std::deque<Entry> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
    dropped.swap(queue_);
    PublishLocked();
  }
  cv_.notify_all();
  expiry_cv_.notify_all();
  for (Entry& e : dropped) {
    e.item->Drop(absl::UnavailableError(
        absl::StrCat(options_.name, " is shutting down")));
  }
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
}

int64_t WorkQueue::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queue_.size());
}

int64_t WorkQueue::busy() const {
  std::lock_guard<std::mutex> lock(mu_);
  return busy_;
}

}  // namespace kvwire
