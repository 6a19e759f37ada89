#include "common/model/batched_prefill.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/StreamGuard.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {

struct BatchedPrefillAccelerator::Pending : BatchItem {
  Pending(absl::Span<const int64_t> token_ids, const KvCache& cache,
          bool want_logits, c10::Stream stream)
      : BatchItem(stream),
        token_ids(token_ids),
        cache(cache),
        want_logits(want_logits) {}
  absl::Span<const int64_t> token_ids;
  const KvCache& cache;
  bool want_logits;
  absl::Status status;  // Written by the leader.
  at::Tensor logits;
};

BatchedPrefillAccelerator::BatchedPrefillAccelerator(
    BatchedPrefillOptions options, StepRunner runner,
    std::shared_ptr<PrefillAccelerator> fallback)
    : options_(std::move(options)),
      runner_(std::move(runner)),
      fallback_(std::move(fallback)),
      batcher_(StepBatcherOptions{std::max<int64_t>(1, options_.max_rows),
                                  options_.gathering}) {
  options_.max_rows = std::max<int64_t>(1, options_.max_rows);
  options_.bucket = std::max<int64_t>(1, options_.bucket);
  options_.max_tokens =
      std::max<int64_t>(
          1, (options_.max_tokens + options_.bucket - 1) / options_.bucket) *
      options_.bucket;
}

absl::StatusOr<AcceleratedPrefill> BatchedPrefillAccelerator::Prefill(
    const Decoder& decoder, absl::Span<const int64_t> token_ids,
    const KvCache& cache, bool want_logits) {
  const int64_t n = static_cast<int64_t>(token_ids.size());
  // Staging rows start at position 0: only empty caches without offsets.
  const bool fits = n >= 1 && n <= options_.max_tokens &&
                    cache.batch_size() == 1 && cache.rope_offset(0) == 0 &&
                    cache.length(0) == 0 && cache.storage().defined() &&
                    cache.storage().device() == decoder.device() &&
                    n <= cache.capacity();
  if (!fits) {
    if (fallback_ != nullptr) {
      return fallback_->Prefill(decoder, token_ids, cache, want_logits);
    }
    return AcceleratedPrefill{};
  }
  Pending mine(token_ids, cache, want_logits, CurrentStream(decoder.device()));
  batcher_.Run(&mine, [&](const std::vector<BatchItem*>& batch) {
    std::vector<Pending*> prefills;
    for (BatchItem* item : batch) {
      prefills.push_back(static_cast<Pending*>(item));
    }
    RunBatch(decoder, prefills);
  });
  if (!mine.status.ok()) return mine.status;
  return AcceleratedPrefill{true, mine.logits};
}

void BatchedPrefillAccelerator::RunBatch(const Decoder& decoder,
                                         const std::vector<Pending*>& batch) {
  const int64_t count = static_cast<int64_t>(batch.size());
  int64_t rows = 1;
  while (rows < count) rows *= 2;
  rows = std::min(rows, options_.max_rows);
  int64_t longest = 0;
  bool any_logits = false;
  for (const Pending* p : batch) {
    longest = std::max<int64_t>(longest, p->token_ids.size());
    any_logits = any_logits || p->want_logits;
  }
  const int64_t tokens =
      (longest + options_.bucket - 1) / options_.bucket * options_.bucket;
  // One upload: the right-padded tokens (idle rows: token 0), then each
  // row's last real token.
  std::vector<int64_t> host(rows * tokens + rows, 0);
  for (int64_t b = 0; b < count; ++b) {
    const absl::Span<const int64_t> ids = batch[b]->token_ids;
    std::copy(ids.begin(), ids.end(), host.begin() + b * tokens);
    host[rows * tokens + b] = static_cast<int64_t>(ids.size()) - 1;
  }
  at::Tensor logits;
  const absl::Status status = Guarded("batched prefill", [&]() -> absl::Status {
    c10::InferenceMode inference;
    c10::StreamGuard stream_guard(batch.front()->stream);
    const c10::Device device = decoder.device();
    const int64_t max_rows = options_.max_rows;
    if (!staging_.defined()) {
      ASSIGN_OR_RETURN(KvCache staging,
                       decoder.NewCache(options_.max_tokens, max_rows,
                                        CacheSource::kOwnStorage));
      staging_ = staging.storage();
      const auto index = at::TensorOptions().dtype(at::kLong).device(device);
      io_.token = at::zeros({max_rows * options_.max_tokens}, index);
      io_.position = at::zeros({max_rows}, index);
      io_.logits_row = at::zeros({max_rows}, index);
      io_.logits = at::zeros({max_rows * decoder.config().vocab_size},
                             index.dtype(at::kFloat));
    }
    const at::Tensor uploaded =
        at::from_blob(host.data(), {static_cast<int64_t>(host.size())},
                      at::kLong)
            .to(device);
    const int64_t vocab = decoder.config().vocab_size;
    StaticDecodeIo io;
    io.token = io_.token.narrow(0, 0, rows * tokens);
    io.position = io_.position.narrow(0, 0, rows);
    io.logits_row = io_.logits_row.narrow(0, 0, rows);
    io.logits = io_.logits.narrow(0, 0, rows * vocab);
    io.token.copy_(uploaded.narrow(0, 0, rows * tokens));
    io.logits_row.copy_(uploaded.narrow(0, rows * tokens, rows));
    const at::Tensor storage = staging_.narrow(2, 0, rows);
    RETURN_IF_ERROR(runner_ ? runner_(decoder, io, storage, tokens)
                            : decoder.StaticDecodeStep(io, storage, tokens));
    for (int64_t b = 0; b < count; ++b) {
      RETURN_IF_ERROR(CopyCachePrefix(staging_.narrow(2, b, 1),
                                      batch[b]->cache.storage(),
                                      batch[b]->token_ids.size()));
    }
    if (any_logits) {
      logits = io.logits.view({rows, vocab}).narrow(0, 0, count).clone();
    }
    return absl::OkStatus();
  });
  for (int64_t b = 0; b < count; ++b) {
    batch[b]->status = status;
    if (status.ok() && batch[b]->want_logits) {
      batch[b]->logits = logits.select(0, b);
    }
  }
}

absl::Status InstallRequestBatching(
    Decoder& decoder, const RequestBatchingOptions& options,
    BatchedDecodeAccelerator::StepRunner decode_runner,
    BatchedDecodeAccelerator::StepRunner prefill_runner) {
  if (options.decode_slots < 0 || options.slot_capacity < 1 ||
      options.prefill_rows < 0 || options.prefill_max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request batching needs non-negative decode slots (",
        options.decode_slots, ") and prefill rows (", options.prefill_rows,
        ") and positive slot capacity (", options.slot_capacity,
        ") and prefill length (", options.prefill_max_tokens, ")"));
  }
  if (options.decode_slots > 0) {
    ASSIGN_OR_RETURN(std::shared_ptr<KvSlotPool> pool,
                     KvSlotPool::Create(decoder, options.decode_slots,
                                        options.slot_capacity));
    decoder.SetSlotPool(pool);
    BatchedDecodeOptions decode;
    decode.gathering.observer = options.decode_observer;
    decoder.SetDecodeAccelerator(std::make_shared<BatchedDecodeAccelerator>(
        pool, decode, std::move(decode_runner),
        decoder.shared_decode_accelerator()));
  }
  if (options.prefill_rows > 0) {
    BatchedPrefillOptions prefill;
    prefill.max_rows = options.prefill_rows;
    prefill.max_tokens = options.prefill_max_tokens;
    prefill.gathering.observer = options.prefill_observer;
    decoder.SetPrefillAccelerator(std::make_shared<BatchedPrefillAccelerator>(
        prefill, std::move(prefill_runner),
        decoder.shared_prefill_accelerator()));
  }
  return absl::OkStatus();
}

}  // namespace kvwire
