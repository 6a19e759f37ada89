// Batched decode across requests: concurrent requests' single-token decode
// steps run as one forward over a pool of KV cache slots.
//
// A decode step of a small model reads every weight once whatever the batch,
// so B requests stepping together cost about what one costs. KvSlotPool owns
// one cache storage of `slots` rows; Decoder::NewCache hands batch-1 caches
// out of it (Decoder::SetSlotPool). BatchedDecodeAccelerator, the decoder's
// DecodeAccelerator, queues each pooled cache's step; whichever waiting
// thread finds the device idle runs every queued step (of callers on its
// stream) as one Decoder::StaticDecodeStep over pool rows [0, R), R the
// smallest power of two above the highest busy slot, and hands each caller
// its row's logits. Callers keep their own loop (sampling, stop tokens,
// cancellation); nothing else changes for them.
//
// Idle rows inside [0, R) step a dummy token at their scratch position (the
// pool's last position, never part of a cache), so slots owned by requests
// that are prefilling or fusing are never written by someone else's step.
//
// Results: each row equals a batch-1 static step up to the order of
// floating-point reductions (GEMMs over R rows); greedy tokens match unless
// two logits are within that noise.
//
// Threading: both classes are thread-safe. Errors: absl::Status; c10::Error
// never escapes.
#ifndef KVWIRE_COMMON_MODEL_BATCHED_DECODE_H_
#define KVWIRE_COMMON_MODEL_BATCHED_DECODE_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Stream.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/model/decoder.h"
#include "common/model/step_batcher.h"

namespace kvwire {

// A cache's claim on a pool slot; released when the cache's last copy goes
// (it keeps the pool alive until then).
struct KvSlotLease {
  std::shared_ptr<KvSlotPool> pool;
  int64_t slot = 0;
  ~KvSlotLease();
};

class KvSlotPool : public std::enable_shared_from_this<KvSlotPool> {
 public:
  // One zeroed storage [layers, 2, slots, kv_heads, capacity + 1, head_dim]
  // for `decoder`'s model (dtype and device); position `capacity` of each
  // slot is scratch. INVALID_ARGUMENT for non-positive sizes; allocation
  // failures as INTERNAL / RESOURCE_EXHAUSTED from the decoder.
  static absl::StatusOr<std::shared_ptr<KvSlotPool>> Create(
      const Decoder& decoder, int64_t slots, int64_t capacity);
  ~KvSlotPool();

  // A zeroed batch-1 cache of `capacity` positions in the lowest free slot.
  // RESOURCE_EXHAUSTED when every slot is taken, OUT_OF_RANGE when
  // `capacity` exceeds the pool's.
  absl::StatusOr<KvCache> Acquire(int64_t capacity);

  int64_t slots() const { return slots_; }
  int64_t capacity() const { return capacity_; }
  int64_t in_use() const;
  const at::Tensor& storage() const { return storage_; }

 private:
  friend struct KvSlotLease;
  KvSlotPool(at::Tensor storage, int64_t slots, int64_t capacity);
  void Release(int64_t slot);

  const at::Tensor storage_;
  const int64_t slots_;
  const int64_t capacity_;
  mutable std::mutex mu_;
  std::vector<bool> busy_;  // Guarded by mu_.
};

struct BatchedDecodeOptions {
  // Smallest key span (spans are powers of two, see StaticDecodeSpan).
  int64_t min_span = 64;
  StepGathering gathering;
};

// The current stream of `device` (batches gather the steps of one stream).
c10::Stream CurrentStream(c10::Device device);

class BatchedDecodeAccelerator : public DecodeAccelerator {
 public:
  // Runs Decoder::StaticDecodeStep (or its CUDA-graph replay) over `storage`
  // (pool rows [0, rows)) with io's tensors of those rows.
  using StepRunner = std::function<absl::Status(
      const Decoder& decoder, const StaticDecodeIo& io,
      const at::Tensor& storage, int64_t span)>;

  // `pool` must be the decoder's slot pool. Steps of caches outside it go
  // to `fallback` (declined when null). A null `runner` runs the static
  // step eagerly.
  BatchedDecodeAccelerator(
      std::shared_ptr<KvSlotPool> pool, BatchedDecodeOptions options = {},
      StepRunner runner = nullptr,
      std::shared_ptr<DecodeAccelerator> fallback = nullptr);

  absl::StatusOr<at::Tensor> DecodeStep(const Decoder& decoder,
                                        int64_t token_id,
                                        const KvCache& cache) override;

  // Counters (for tests, benchmarks and metrics).
  int64_t steps() const;    // Rows served.
  int64_t batches() const;  // Forwards run.
  int64_t max_batch() const;

 private:
  struct Pending;
  // Runs `batch` as one forward; fills each Pending's result.
  void RunBatch(const Decoder& decoder, const std::vector<Pending*>& batch);

  std::shared_ptr<KvSlotPool> pool_;
  BatchedDecodeOptions options_;
  StepRunner runner_;
  std::shared_ptr<DecodeAccelerator> fallback_;
  StepBatcher batcher_;
  // Step inputs and outputs over all slots (the runner sees rows [0, R)).
  // Written only by the leading thread.
  StaticDecodeIo io_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_BATCHED_DECODE_H_
