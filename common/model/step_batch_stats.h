// What the accelerators that batch across requests (step_batcher.h) report
// of each batch, for metrics. Torch-free, so the engines' option structs
// and the services can carry an observer.
#ifndef KVWIRE_COMMON_MODEL_STEP_BATCH_STATS_H_
#define KVWIRE_COMMON_MODEL_STEP_BATCH_STATS_H_

#include <cstdint>
#include <functional>

namespace kvwire {

// One batch: its size and its steps' longest queue time (from a caller's
// request to the start of the batch).
struct StepBatchStats {
  int64_t items = 0;
  double max_wait_seconds = 0;
};
// Called on the leading caller's thread before each batch runs; must be
// cheap and thread-safe.
using StepBatchObserver = std::function<void(const StepBatchStats& stats)>;

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_STEP_BATCH_STATS_H_
