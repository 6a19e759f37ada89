// Batched prefill across requests: concurrent requests' prompt prefills run
// as one forward.
//
// A receiver under load prefills many short prompts at once; each alone
// leaves most of the GPU idle (a 118-token prompt of a 0.6B model is a few
// milliseconds of launches and small GEMMs). BatchedPrefillAccelerator, a
// PrefillAccelerator, queues each prefill (StepBatcher); the caller that
// finds the device idle runs up to max_rows queued prompts as one
// Decoder::StaticDecodeStep over a private staging cache of R rows (R the
// smallest power of two >= the batch), each row right-padded to T tokens
// (the longest prompt rounded up to `bucket`), then copies each row's K/V
// into its caller's cache and hands it its last real token's logits. A
// token attends only to earlier positions of its own row, so the padding
// changes nothing it computes.
//
// Results: each row equals a batch-1 prefill up to the order of
// floating-point reductions; greedy tokens match unless two logits are
// within that noise.
//
// Threading: thread-safe. Errors: absl::Status; c10::Error never escapes.
#ifndef KVWIRE_COMMON_MODEL_BATCHED_PREFILL_H_
#define KVWIRE_COMMON_MODEL_BATCHED_PREFILL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/model/batched_decode.h"
#include "common/model/decoder.h"
#include "common/model/step_batcher.h"

namespace kvwire {

struct BatchedPrefillOptions {
  // Prompts per forward (rows of the staging cache).
  int64_t max_rows = 8;
  // Longest prompt served (rounded up to `bucket`); longer ones go to the
  // fallback. Rows are padded to multiples of `bucket` tokens, so one
  // captured graph serves many lengths.
  int64_t max_tokens = 512;
  int64_t bucket = 32;
  StepGathering gathering;
};

class BatchedPrefillAccelerator : public PrefillAccelerator {
 public:
  using StepRunner = BatchedDecodeAccelerator::StepRunner;

  // A null `runner` runs the static step eagerly. Prefills it cannot serve
  // (too long, a RoPE offset, a cache of another model or device) go to
  // `fallback` (declined when null).
  explicit BatchedPrefillAccelerator(
      BatchedPrefillOptions options = {}, StepRunner runner = nullptr,
      std::shared_ptr<PrefillAccelerator> fallback = nullptr);

  absl::StatusOr<AcceleratedPrefill> Prefill(
      const Decoder& decoder, absl::Span<const int64_t> token_ids,
      const KvCache& cache, bool want_logits) override;

  const BatchedPrefillOptions& options() const { return options_; }
  // Counters (for tests, benchmarks and metrics).
  int64_t prefills() const { return batcher_.steps(); }
  int64_t batches() const { return batcher_.batches(); }
  int64_t max_batch() const { return batcher_.max_batch(); }

 private:
  struct Pending;
  void RunBatch(const Decoder& decoder, const std::vector<Pending*>& batch);

  BatchedPrefillOptions options_;
  StepRunner runner_;
  std::shared_ptr<PrefillAccelerator> fallback_;
  StepBatcher batcher_;
  // Written only by the leading thread: the staging storage
  // [layers, 2, max_rows, kv_heads, max_tokens, head_dim] and the step's
  // inputs and outputs over all rows (a batch uses the first R).
  at::Tensor staging_;
  StaticDecodeIo io_;
};

// Batching across concurrent requests, as the services install it.
struct RequestBatchingOptions {
  // > 0: a KvSlotPool of this many slots of slot_capacity positions, whose
  // caches' decode steps run batched (BatchedDecodeAccelerator).
  int64_t decode_slots = 0;
  int64_t slot_capacity = 1024;
  StepBatchObserver decode_observer;
  // > 0: prompts per batched prefill (BatchedPrefillAccelerator).
  int64_t prefill_rows = 0;
  int64_t prefill_max_tokens = 512;
  StepBatchObserver prefill_observer;
};

// Installs the slot pool, the batched decode and the batched prefill that
// `options` asks for on `decoder`, in front of the accelerators it already
// has (they serve what the batchers cannot: caches outside the pool, long
// prompts). Null runners run the static step eagerly (CPU; tests).
// Errors: INVALID_ARGUMENT for negative sizes; allocating the pool. Not
// thread-safe: call before sharing the decoder.
absl::Status InstallRequestBatching(
    Decoder& decoder, const RequestBatchingOptions& options,
    BatchedDecodeAccelerator::StepRunner decode_runner = nullptr,
    BatchedDecodeAccelerator::StepRunner prefill_runner = nullptr);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_BATCHED_PREFILL_H_
