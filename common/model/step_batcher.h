// StepBatcher: gathers concurrent callers' model steps into batches, for the
// accelerators that batch across requests (batched_decode.h,
// batched_prefill.h). Callers keep their own threads and loops; each hands
// its step to Run and blocks. Whichever waiting caller finds no batch
// running leads: it takes every queued step on its own stream (up to
// max_items; the rest wait for the next batch), runs them with the given
// function, and wakes their callers. While a batch runs, new steps queue up,
// so the device being busy is what gathers them; no thread of its own.
//
// Queue time (from Run to the start of the batch that contains the step)
// and batch sizes go to an optional observer, for metrics.
//
// Thread-safe. Owns nothing but its queue of pointers to callers' items.
#ifndef KVWIRE_COMMON_MODEL_STEP_BATCHER_H_
#define KVWIRE_COMMON_MODEL_STEP_BATCHER_H_

#include <c10/core/Stream.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "absl/time/time.h"
#include "common/model/step_batch_stats.h"

namespace kvwire {

// How a batch is gathered and who hears of it; part of every batching
// accelerator's options.
struct StepGathering {
  // Before running, the leader waits up to `window` for `items` steps to
  // be queued (0: run whatever is queued; the device being busy is what
  // gathers steps). For tests and tuning.
  absl::Duration window = absl::ZeroDuration();
  int64_t items = 1;
  // Called by the leader before each batch runs (may be empty).
  StepBatchObserver observer;
};

struct StepBatcherOptions {
  // Steps per batch (at least 1).
  int64_t max_items = 1;
  StepGathering gathering;
};

// One caller's step; callers derive their inputs and results from it.
struct BatchItem {
  explicit BatchItem(c10::Stream stream) : stream(stream) {}
  c10::Stream stream;
  std::chrono::steady_clock::time_point queued;
  bool done = false;  // Set by the batcher.
};

class StepBatcher {
 public:
  using Runner = std::function<void(const std::vector<BatchItem*>& batch)>;

  explicit StepBatcher(StepBatcherOptions options);

  // Queues `item` and returns once a batch containing it has run (`run`
  // fills every item of its batch, on the leading caller's thread).
  void Run(BatchItem* item, const Runner& run);

  // Steps waiting for a batch now.
  int64_t queued() const;
  // Counters: steps run, batches run, the largest batch.
  int64_t steps() const;
  int64_t batches() const;
  int64_t max_batch() const;

 private:
  StepBatcherOptions options_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::vector<BatchItem*> queue_;                    // Guarded by mu_.
  bool running_ = false;                             // Guarded by mu_.
  int64_t steps_ = 0, batches_ = 0, max_batch_ = 0;  // Guarded by mu_.
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_STEP_BATCHER_H_
