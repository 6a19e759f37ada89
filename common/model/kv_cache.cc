// KvCache (decoder.h): storage views, reads, writes and lengths; the
// allocation of caches (Decoder::NewCache, from the slot pool or their own
// storage) and prefix copies between cache storages.
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/model/batched_decode.h"
#include "common/model/decoder.h"
#include "common/model/decoder_impl.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {

int64_t KvCache::length(int64_t row) const {
  return row >= 0 && row < batch_size() ? lengths_[row] : 0;
}

int64_t KvCache::rope_offset(int64_t row) const {
  return row >= 0 && row < static_cast<int64_t>(rope_offsets_.size())
             ? rope_offsets_[row]
             : 0;
}

absl::Status KvCache::SetRopeOffset(int64_t row, int64_t offset) {
  if (row < 0 || row >= batch_size()) {
    return absl::OutOfRangeError(absl::StrCat("KV cache has no row ", row));
  }
  if (offset < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RoPE offset ", offset, " is negative"));
  }
  rope_offsets_.resize(lengths_.size(), 0);
  rope_offsets_[row] = offset;
  return absl::OkStatus();
}

namespace {

// FAILED_PRECONDITION for an empty cache, OUT_OF_RANGE for a layer or row
// it lacks.
absl::Status CheckLayerRow(const KvCache& cache, int64_t layer, int64_t row) {
  if (!cache.defined()) {
    return absl::FailedPreconditionError("KV cache is empty");
  }
  if (layer < 0 || layer >= cache.num_layers() || row < 0 ||
      row >= cache.batch_size()) {
    return absl::OutOfRangeError(
        absl::StrCat("KV cache has no layer ", layer, " / row ", row));
  }
  return absl::OkStatus();
}

// Positions [0, length(row)) of layer `layer`'s keys (kv 0) or values (kv 1);
// undefined when out of range.
at::Tensor CacheView(const KvCache& cache, int64_t layer, int64_t kv,
                     int64_t row) {
  if (!CheckLayerRow(cache, layer, row).ok()) return at::Tensor();
  absl::StatusOr<at::Tensor> view =
      Guarded("KV cache view", [&]() -> absl::StatusOr<at::Tensor> {
        return cache.storage()
            .select(0, layer)
            .select(0, kv)
            .select(0, row)
            .narrow(1, 0, cache.length(row));
      });
  return view.ok() ? *std::move(view) : at::Tensor();
}

}  // namespace

at::Tensor KvCache::Keys(int64_t layer, int64_t row) const {
  return CacheView(*this, layer, 0, row);
}

at::Tensor KvCache::Values(int64_t layer, int64_t row) const {
  return CacheView(*this, layer, 1, row);
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>> KvCache::Read(
    int64_t layer, int64_t start, int64_t count, int64_t row) const {
  RETURN_IF_ERROR(CheckLayerRow(*this, layer, row));
  if (start < 0 || count < 0 || start + count > lengths_[row]) {
    return absl::OutOfRangeError(
        absl::StrCat("KV cache read [", start, ", ", start + count,
                     ") outside the row's ", lengths_[row], " tokens"));
  }
  return Guarded("KvCache::Read",
                 [&]() -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
                   const at::Tensor l = storage_.select(0, layer);
                   return std::make_pair(
                       l.select(0, 0).select(0, row).narrow(1, start, count),
                       l.select(0, 1).select(0, row).narrow(1, start, count));
                 });
}

absl::Status KvCache::Write(int64_t layer, int64_t start,
                            const at::Tensor& keys, const at::Tensor& values,
                            int64_t row) {
  RETURN_IF_ERROR(CheckLayerRow(*this, layer, row));
  if (!keys.defined() || !values.defined() || keys.dim() != 3 ||
      keys.sizes() != values.sizes() || keys.size(0) != num_kv_heads() ||
      keys.size(2) != head_dim()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache write needs keys and values of shape [", num_kv_heads(),
        ", n, ", head_dim(), "]; got ",
        keys.defined() ? ShapeString(keys.sizes()) : "undefined", " and ",
        values.defined() ? ShapeString(values.sizes()) : "undefined"));
  }
  const int64_t n = keys.size(1);
  if (start < 0 || start > lengths_[row] || start + n > capacity()) {
    return absl::OutOfRangeError(absl::StrCat(
        "KV cache write [", start, ", ", start + n, ") invalid for a row of ",
        lengths_[row], " tokens and capacity ", capacity()));
  }
  return Guarded("KvCache::Write", [&]() -> absl::Status {
    c10::NoGradGuard no_grad;
    const at::Tensor l = storage_.select(0, layer);
    l.select(0, 0).select(0, row).narrow(1, start, n).copy_(keys);
    l.select(0, 1).select(0, row).narrow(1, start, n).copy_(values);
    lengths_[row] = std::max(lengths_[row], start + n);
    return absl::OkStatus();
  });
}

absl::Status KvCache::SetLength(int64_t row, int64_t length) {
  if (row < 0 || row >= batch_size()) {
    return absl::OutOfRangeError(absl::StrCat("KV cache has no row ", row));
  }
  if (length < 0 || length > capacity()) {
    return absl::OutOfRangeError(absl::StrCat(
        "KV cache length ", length, " outside [0, ", capacity(), "]"));
  }
  lengths_[row] = length;
  return absl::OkStatus();
}

void KvCache::Clear() {
  std::fill(lengths_.begin(), lengths_.end(), 0);
  rope_offsets_.assign(lengths_.size(), 0);
}

absl::StatusOr<KvCache> Decoder::NewCache(int64_t capacity, int64_t batch,
                                          CacheSource source) const {
  if (capacity <= 0 || batch <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache capacity and batch must be positive; got ",
                     capacity, " and ", batch));
  }
  if (slot_pool_ != nullptr && batch == 1 && source == CacheSource::kAny) {
    absl::StatusOr<KvCache> pooled = slot_pool_->Acquire(capacity);
    // A full pool or a large cache: an allocation of its own.
    if (pooled.ok() || (!absl::IsResourceExhausted(pooled.status()) &&
                        !absl::IsOutOfRange(pooled.status()))) {
      return pooled;
    }
  }
  return Guarded("allocating the KV cache", [&]() -> absl::StatusOr<KvCache> {
    c10::NoGradGuard no_grad;
    KvCache cache;
    cache.storage_ = at::zeros(
        {config_.num_hidden_layers, 2, batch, config_.num_key_value_heads,
         capacity, config_.head_dim},
        at::TensorOptions().dtype(options_.dtype).device(options_.device));
    cache.lengths_.assign(batch, 0);
    cache.rope_offsets_.assign(batch, 0);
    return cache;
  });
}

absl::Status CopyCachePrefix(const at::Tensor& from_storage,
                             const at::Tensor& to_storage, int64_t n) {
  if (!from_storage.defined() || !to_storage.defined() ||
      from_storage.dim() != 6 || to_storage.dim() != 6 ||
      from_storage.size(2) != 1 || to_storage.size(2) != 1 ||
      from_storage.size(0) != to_storage.size(0) ||
      from_storage.size(3) != to_storage.size(3) ||
      from_storage.size(5) != to_storage.size(5) || n < 0 ||
      n > from_storage.size(4) || n > to_storage.size(4)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot copy ", n, " positions between these KV cache storages"));
  }
  return Guarded("copying a KV cache prefix", [&]() -> absl::Status {
    c10::InferenceMode inference;
    to_storage.narrow(4, 0, n).copy_(from_storage.narrow(4, 0, n));
    return absl::OkStatus();
  });
}

}  // namespace kvwire
