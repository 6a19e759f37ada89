#include "common/model/step_batcher.h"

#include <algorithm>
#include <utility>

namespace kvwire {

StepBatcher::StepBatcher(StepBatcherOptions options)
    : options_(std::move(options)) {
  options_.max_items = std::max<int64_t>(1, options_.max_items);
}

void StepBatcher::Run(BatchItem* item, const Runner& run) {
  item->queued = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  queue_.push_back(item);
  changed_.notify_all();
  while (!item->done) {
    if (running_) {
      changed_.wait(lock);
      continue;
    }
    // Lead: run the queued steps of callers on this stream, oldest first.
    running_ = true;
    const StepGathering& gathering = options_.gathering;
    if (gathering.window > absl::ZeroDuration()) {
      changed_.wait_for(lock, absl::ToChronoNanoseconds(gathering.window), [&] {
        return static_cast<int64_t>(queue_.size()) >= gathering.items;
      });
    }
    std::vector<BatchItem*> batch, rest;
    for (BatchItem* queued : queue_) {
      const bool take = queued->stream == item->stream &&
                        static_cast<int64_t>(batch.size()) < options_.max_items;
      (take ? batch : rest).push_back(queued);
    }
    queue_ = std::move(rest);
    const int64_t size = static_cast<int64_t>(batch.size());
    steps_ += size;
    ++batches_;
    max_batch_ = std::max(max_batch_, size);
    lock.unlock();
    if (gathering.observer) {
      const auto now = std::chrono::steady_clock::now();
      StepBatchStats stats;
      stats.items = size;
      for (const BatchItem* step : batch) {
        stats.max_wait_seconds =
            std::max(stats.max_wait_seconds,
                     std::chrono::duration<double>(now - step->queued).count());
      }
      gathering.observer(stats);
    }
    run(batch);
    lock.lock();
    for (BatchItem* step : batch) step->done = true;
    running_ = false;
    changed_.notify_all();
  }
}

int64_t StepBatcher::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queue_.size());
}

int64_t StepBatcher::steps() const {
  std::lock_guard<std::mutex> lock(mu_);
  return steps_;
}

int64_t StepBatcher::batches() const {
  std::lock_guard<std::mutex> lock(mu_);
  return batches_;
}

int64_t StepBatcher::max_batch() const {
  std::lock_guard<std::mutex> lock(mu_);
  return max_batch_;
}

}  // namespace kvwire
