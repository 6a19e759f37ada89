#include "common/model/batched_decode.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {

c10::Stream CurrentStream(c10::Device device) {
  return c10::impl::VirtualGuardImpl(device.type()).getStream(device);
}

KvSlotLease::~KvSlotLease() {
  if (pool != nullptr) pool->Release(slot);
}

KvSlotPool::KvSlotPool(at::Tensor storage, int64_t slots, int64_t capacity)
    : storage_(std::move(storage)),
      slots_(slots),
      capacity_(capacity),
      busy_(slots, false) {}

KvSlotPool::~KvSlotPool() = default;

absl::StatusOr<std::shared_ptr<KvSlotPool>> KvSlotPool::Create(
    const Decoder& decoder, int64_t slots, int64_t capacity) {
  if (slots <= 0 || capacity <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a KV slot pool needs positive slots and capacity; got ",
                     slots, " and ", capacity));
  }
  // One extra position per slot: the scratch position idle rows write.
  ASSIGN_OR_RETURN(KvCache whole, decoder.NewCache(capacity + 1, slots,
                                                   CacheSource::kOwnStorage));
  return std::shared_ptr<KvSlotPool>(
      new KvSlotPool(whole.storage(), slots, capacity));
}

int64_t KvSlotPool::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count(busy_.begin(), busy_.end(), true);
}

absl::StatusOr<KvCache> KvSlotPool::Acquire(int64_t capacity) {
  if (capacity <= 0 || capacity > capacity_) {
    return absl::OutOfRangeError(
        absl::StrCat("a KV cache of ", capacity,
                     " positions does not fit the pool's ", capacity_));
  }
  int64_t slot = -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto free = std::find(busy_.begin(), busy_.end(), false);
    if (free == busy_.end()) {
      return absl::ResourceExhaustedError(
          absl::StrCat("all ", slots_, " KV cache slots are in use"));
    }
    *free = true;
    slot = free - busy_.begin();
  }
  auto lease = std::make_shared<KvSlotLease>();
  lease->pool = shared_from_this();
  lease->slot = slot;
  return Guarded("acquiring a KV cache slot", [&]() -> absl::StatusOr<KvCache> {
    c10::InferenceMode inference;
    const at::Tensor row = storage_.narrow(2, slot, 1);
    row.zero_();
    KvCache cache;
    cache.storage_ = row.narrow(4, 0, capacity);
    cache.lengths_.assign(1, 0);
    cache.rope_offsets_.assign(1, 0);
    cache.lease_ = std::move(lease);
    return cache;
  });
}

void KvSlotPool::Release(int64_t slot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (slot >= 0 && slot < slots_) busy_[slot] = false;
}

struct BatchedDecodeAccelerator::Pending : BatchItem {
  Pending(int64_t slot, int64_t token, int64_t position, int64_t rope_offset,
          c10::Stream stream)
      : BatchItem(stream),
        slot(slot),
        token(token),
        position(position),
        rope_offset(rope_offset) {}
  int64_t slot;
  int64_t token;
  int64_t position;
  int64_t rope_offset;
  absl::Status status;  // Written by the leader.
  at::Tensor logits;
};

BatchedDecodeAccelerator::BatchedDecodeAccelerator(
    std::shared_ptr<KvSlotPool> pool, BatchedDecodeOptions options,
    StepRunner runner, std::shared_ptr<DecodeAccelerator> fallback)
    : pool_(std::move(pool)),
      options_(options),
      runner_(std::move(runner)),
      fallback_(std::move(fallback)),
      batcher_(StepBatcherOptions{pool_->slots(), options.gathering}) {}

int64_t BatchedDecodeAccelerator::steps() const { return batcher_.steps(); }
int64_t BatchedDecodeAccelerator::batches() const { return batcher_.batches(); }
int64_t BatchedDecodeAccelerator::max_batch() const {
  return batcher_.max_batch();
}

absl::StatusOr<at::Tensor> BatchedDecodeAccelerator::DecodeStep(
    const Decoder& decoder, int64_t token_id, const KvCache& cache) {
  const KvSlotLease* lease = cache.slot_lease();
  if (lease == nullptr || lease->pool != pool_ || cache.batch_size() != 1 ||
      cache.length(0) >= cache.capacity()) {
    if (fallback_ != nullptr) {
      return fallback_->DecodeStep(decoder, token_id, cache);
    }
    return at::Tensor();
  }
  Pending mine(lease->slot, token_id, cache.length(0), cache.rope_offset(0),
               CurrentStream(decoder.device()));
  batcher_.Run(&mine, [&](const std::vector<BatchItem*>& batch) {
    std::vector<Pending*> steps;
    for (BatchItem* item : batch) steps.push_back(static_cast<Pending*>(item));
    RunBatch(decoder, steps);
  });
  if (!mine.status.ok()) return mine.status;
  return mine.logits;
}

void BatchedDecodeAccelerator::RunBatch(const Decoder& decoder,
                                        const std::vector<Pending*>& batch) {
  const int64_t slots = pool_->slots();
  const int64_t capacity = pool_->capacity();
  int64_t top = 0, last_position = 0;
  for (const Pending* p : batch) {
    top = std::max(top, p->slot + 1);
    last_position = std::max(last_position, p->position);
  }
  int64_t rows = 1;
  while (rows < top) rows *= 2;
  rows = std::min(rows, slots);
  const int64_t span =
      StaticDecodeSpan(last_position, capacity + 1, options_.min_span);
  // One upload per step: tokens, positions (idle rows step token 0 at the
  // scratch position), RoPE offsets (idle rows 0), then the busy slots whose
  // logits are handed out.
  const int64_t busy = static_cast<int64_t>(batch.size());
  std::vector<int64_t> host(3 * rows + busy, 0);
  std::fill(host.begin() + rows, host.begin() + 2 * rows, capacity);
  for (int64_t i = 0; i < busy; ++i) {
    const Pending* p = batch[i];
    host[p->slot] = p->token;
    host[rows + p->slot] = p->position;
    host[2 * rows + p->slot] = p->rope_offset;
    host[3 * rows + i] = p->slot;
  }
  at::Tensor out;
  const absl::Status status = Guarded("batched decode step", [&] {
    c10::InferenceMode inference;
    c10::StreamGuard stream_guard(batch.front()->stream);
    const c10::Device device = decoder.device();
    const auto index = at::TensorOptions().dtype(at::kLong).device(device);
    if (!io_.token.defined()) {
      io_.token = at::zeros({slots}, index);
      io_.position = at::zeros({slots}, index);
      io_.rope_offset = at::zeros({slots}, index);
      io_.logits = at::zeros({slots, decoder.config().vocab_size},
                             index.dtype(at::kFloat));
    }
    const at::Tensor uploaded =
        at::from_blob(host.data(), {static_cast<int64_t>(host.size())},
                      at::kLong)
            .to(device);
    StaticDecodeIo io;
    io.token = io_.token.narrow(0, 0, rows);
    io.position = io_.position.narrow(0, 0, rows);
    io.rope_offset = io_.rope_offset.narrow(0, 0, rows);
    io.logits = io_.logits.narrow(0, 0, rows);
    io.token.copy_(uploaded.narrow(0, 0, rows));
    io.position.copy_(uploaded.narrow(0, rows, rows));
    io.rope_offset.copy_(uploaded.narrow(0, 2 * rows, rows));
    const at::Tensor storage = pool_->storage().narrow(2, 0, rows);
    RETURN_IF_ERROR(runner_ ? runner_(decoder, io, storage, span)
                            : decoder.StaticDecodeStep(io, storage, span));
    out = io_.logits.index_select(0, uploaded.narrow(0, 3 * rows, busy));
    return absl::OkStatus();
  });
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i]->status = status;
    if (status.ok()) batch[i]->logits = out.select(0, i);
  }
}

}  // namespace kvwire
