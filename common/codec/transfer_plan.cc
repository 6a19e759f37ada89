#include "common/codec/transfer_plan.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/codec/index_coding.h"
#include "common/codec/layer_schedule.h"
#include "common/codec/token_selection.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

constexpr int kVarintMax = 5;  // uint32 varint.
// KvChunk tag + length, KvBlockFragment index/count tags + varints, data tag
// + length: the most a fragment's framing can take besides its data.
constexpr int64_t kFragmentOverhead =
    (1 + kVarintMax) + 2 * (1 + kVarintMax) + (1 + kVarintMax);

int64_t VarintSize(uint64_t v) {
  int64_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// Serialized size of a KvChunk wrapping a message of `size` bytes.
int64_t ChunkWrapBytes(int64_t size) { return 1 + VarintSize(size) + size; }

// Serialized size of a proto3 bytes field (number < 16) of `n` bytes: it is
// omitted when empty. Lets the predictor size messages without allocating
// their payloads.
int64_t BytesFieldSize(int64_t n) { return n == 0 ? 0 : 1 + VarintSize(n) + n; }

bool IsValidScheme(v1::Scheme s) { return BitsPerValue(s) != 0; }

absl::Status ValidateScheme(v1::Scheme s, absl::string_view field) {
  if (!IsValidScheme(s)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": unknown scheme ", static_cast<int>(s)));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t FragmentCapacity(uint32_t chunk_size) {
  return static_cast<int64_t>(chunk_size) - kFragmentOverhead;
}

int64_t ChunkedBlockBytes(int64_t block_bytes, uint32_t chunk_size) {
  if (ChunkWrapBytes(block_bytes) <= chunk_size) {
    return ChunkWrapBytes(block_bytes);
  }
  const int64_t capacity = FragmentCapacity(chunk_size);
  const int64_t count = (block_bytes + capacity - 1) / capacity;
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t data = std::min(capacity, block_bytes - i * capacity);
    v1::KvBlockFragment f;
    f.set_index(static_cast<uint32_t>(i));
    f.set_count(static_cast<uint32_t>(count));
    total += ChunkWrapBytes(f.ByteSizeLong() + BytesFieldSize(data));
  }
  return total;
}

absl::StatusOr<TransferPlan> ResolveTransferPlan(const v1::ModelInfo& model,
                                                 uint32_t total_tokens,
                                                 const v1::TransferSpec& in) {
  if (total_tokens == 0) {
    return absl::InvalidArgumentError("prompt has no tokens");
  }
  if (model.num_layers() == 0 || model.num_kv_heads() == 0 ||
      model.head_dim() == 0) {
    return absl::InvalidArgumentError(
        "model has no layers, KV heads or channels");
  }
  TransferPlan plan;
  plan.total_tokens = total_tokens;
  v1::TransferSpec& spec = plan.spec;
  spec = in;

  if (spec.scheme() == v1::SCHEME_UNSPECIFIED) spec.set_scheme(v1::SCHEME_INT8);
  RETURN_IF_ERROR(ValidateScheme(spec.scheme(), "scheme"));
  if (spec.granularity() == v1::GRANULARITY_UNSPECIFIED) {
    spec.set_granularity(v1::GRANULARITY_PER_HEAD);
  }
  if (!v1::Granularity_IsValid(spec.granularity())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "granularity: unknown value ", static_cast<int>(spec.granularity())));
  }
  if (spec.group_size() == 0) spec.set_group_size(kDefaultGroupSize);

  // Layers: explicit, in range, unique, ascending.
  const uint32_t num_layers = model.num_layers();
  if (spec.layers().empty()) {
    for (uint32_t l = 0; l < num_layers; ++l) spec.add_layers(l);
  } else {
    std::vector<uint32_t> layers(spec.layers().begin(), spec.layers().end());
    std::sort(layers.begin(), layers.end());
    for (size_t i = 0; i < layers.size(); ++i) {
      if (layers[i] >= num_layers) {
        return absl::InvalidArgumentError(
            absl::StrCat("layers: sharer layer ", layers[i],
                         " out of range (model has ", num_layers, ")"));
      }
      if (i > 0 && layers[i] == layers[i - 1]) {
        return absl::InvalidArgumentError(
            absl::StrCat("layers: layer ", layers[i], " listed twice"));
      }
    }
    spec.clear_layers();
    for (uint32_t l : layers) spec.add_layers(l);
  }
  for (const v1::LayerOverride& o : spec.layer_overrides()) {
    RETURN_IF_ERROR(ValidateScheme(o.scheme(), "layer_overrides.scheme"));
    for (uint32_t l : o.layers()) {
      if (l >= num_layers) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer_overrides: layer ", l,
                         " out of range (model has ", num_layers, ")"));
      }
    }
    if (o.has_range() && (o.range().first() > o.range().last() ||
                          o.range().last() >= num_layers)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer_overrides: range [", o.range().first(), ", ", o.range().last(),
          "] invalid for ", num_layers, " layers"));
    }
  }

  // Entropy stage and chunking.
  v1::EntropyStage* entropy = spec.mutable_entropy();
  if (entropy->coder() == v1::ENTROPY_CODER_UNSPECIFIED) {
    entropy->set_coder(v1::ENTROPY_CODER_NONE);
  }
  if (entropy->coder() == v1::ENTROPY_CODER_ZSTD) {
    if (entropy->level() == 0) entropy->set_level(kDefaultZstdLevel);
    if (entropy->level() < -7 || entropy->level() > 22) {
      return absl::InvalidArgumentError(absl::StrCat(
          "entropy.level ", entropy->level(), " outside zstd's [-7, 22]"));
    }
  } else if (entropy->coder() != v1::ENTROPY_CODER_NONE) {
    return absl::InvalidArgumentError(absl::StrCat(
        "entropy.coder: unknown value ", static_cast<int>(entropy->coder())));
  } else {
    entropy->set_level(0);
  }
  if (spec.chunk_size_bytes() == 0) {
    spec.set_chunk_size_bytes(kDefaultChunkSizeBytes);
  }
  if (spec.chunk_size_bytes() < kMinChunkSizeBytes ||
      spec.chunk_size_bytes() > kMaxChunkSizeBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_size_bytes ", spec.chunk_size_bytes(), " outside [",
                     kMinChunkSizeBytes, ", ", kMaxChunkSizeBytes, "]"));
  }

  // Token selection.
  v1::TokenSelection* sel = spec.mutable_selection();
  if (sel->mode() == v1::SELECTION_UNSPECIFIED)
    sel->set_mode(v1::SELECTION_ALL);
  if (!v1::SelectionMode_IsValid(sel->mode())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "selection.mode: unknown value ", static_cast<int>(sel->mode())));
  }
  if (!std::isfinite(sel->proportion()) || sel->proportion() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "selection.proportion ", sel->proportion(), " must be in [0, 1]"));
  }
  if (sel->mode() == v1::SELECTION_EXPLICIT) {
    if (sel->indices().empty()) {
      return absl::InvalidArgumentError(
          "selection.indices must not be empty in EXPLICIT mode");
    }
    std::set<uint32_t> seen;
    for (uint32_t i : sel->indices()) {
      if (i >= total_tokens) {
        return absl::InvalidArgumentError(absl::StrCat(
            "selection.indices: token ", i, " out of range (prompt has ",
            total_tokens, " tokens)"));
      }
      if (!seen.insert(i).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("selection.indices: token ", i, " listed twice"));
      }
    }
    plan.selected_tokens = static_cast<uint32_t>(seen.size());
  } else if (sel->mode() == v1::SELECTION_ALL) {
    plan.selected_tokens = total_tokens;
  } else {
    plan.selected_tokens = static_cast<uint32_t>(
        SelectedTokenCount(total_tokens, sel->proportion(), sel->min_tokens()));
  }
  plan.needs_scores = SelectionNeedsScores(sel->mode());
  const bool all_tokens = plan.selected_tokens == total_tokens &&
                          sel->mode() != v1::SELECTION_EXPLICIT;
  plan.shared_selection =
      !all_tokens && (!plan.needs_scores || sel->shared_across_layers());
  plan.needs_all_layers = plan.needs_scores && plan.shared_selection;

  const LayerSchedule schedule = ScheduleFromSpec(spec);
  for (uint32_t l : spec.layers()) {
    LayerTransfer lt;
    lt.layer = l;
    lt.scheme = ResolveScheme(schedule, l);
    for (auto [part, params] :
         {std::make_pair(v1::KV_PART_KEY, &lt.key_params),
          std::make_pair(v1::KV_PART_VALUE, &lt.value_params)}) {
      params->scheme = lt.scheme;
      params->granularity = ResolveGranularity(spec.granularity(), part);
      params->group_size = static_cast<int>(spec.group_size());
      params->asymmetric = spec.asymmetric();
      // Only schemes with zero points encode asymmetrically (the block
      // header must not claim it otherwise).
      params->asymmetric = HasZeroPoints(*params);
      RETURN_IF_ERROR(ValidateQuantParams(*params, model.num_kv_heads(),
                                          plan.selected_tokens,
                                          model.head_dim()));
    }
    plan.layers.push_back(lt);
  }
  return plan;
}

v1::KvBlock BlockMetadata(uint32_t layer, v1::KvPart part,
                          const QuantParams& params, uint32_t kv_heads,
                          uint32_t head_dim, uint32_t selected_tokens,
                          v1::IndexEncoding index_encoding) {
  v1::KvBlock b;
  b.set_layer(layer);
  b.set_part(part);
  b.set_scheme(params.scheme);
  b.set_granularity(params.granularity);
  if (params.granularity == v1::GRANULARITY_PER_GROUP) {
    b.set_group_size(params.group_size);
  }
  b.set_asymmetric(HasZeroPoints(params));
  b.set_kv_heads(kv_heads);
  b.set_head_dim(head_dim);
  b.set_selected_tokens(selected_tokens);
  b.set_index_encoding(index_encoding);
  return b;
}

v1::KvHeader PlanHeader(const v1::ModelInfo& model, const TransferPlan& plan,
                        std::string request_id) {
  v1::KvHeader h;
  h.set_protocol_version(1);
  h.set_request_id(std::move(request_id));
  *h.mutable_model() = model;
  h.set_token_count(plan.total_tokens);
  h.set_position_offset(0);
  *h.mutable_spec() = plan.spec;
  // Explicit indices travel once, as the shared selection.
  h.mutable_spec()->mutable_selection()->clear_indices();
  for (const LayerTransfer& lt : plan.layers) {
    v1::LayerPlan* lp = h.add_layers();
    lp->set_layer(lt.layer);
    lp->set_scheme(lt.scheme);
    lp->set_selected_tokens(plan.selected_tokens);
  }
  return h;
}

int64_t PredictStreamBytes(const v1::ModelInfo& model, const TransferPlan& plan,
                           size_t request_id_bytes) {
  const uint32_t chunk_size = plan.spec.chunk_size_bytes();
  const uint32_t heads = model.num_kv_heads();
  const uint32_t dim = model.head_dim();
  const uint32_t k = plan.selected_tokens;
  const bool all_tokens =
      k == plan.total_tokens &&
      plan.spec.selection().mode() != v1::SELECTION_EXPLICIT;
  const int64_t index_bytes =
      all_tokens ? 0 : EncodedIndexBytesUpperBound(k, plan.total_tokens);

  v1::KvHeader header_message =
      PlanHeader(model, plan, std::string(request_id_bytes, 'r'));
  v1::KvHeader* header = &header_message;
  if (plan.shared_selection) {
    header->set_shared_index_encoding(v1::INDEX_ENCODING_BITMAP);
    header->set_shared_selected_tokens(k);
  }
  const int64_t shared_index_bytes = plan.shared_selection ? index_bytes : 0;
  int64_t total = ChunkWrapBytes(header->ByteSizeLong() +
                                 BytesFieldSize(shared_index_bytes));

  for (const LayerTransfer& lt : plan.layers) {
    for (const auto& [part, params] :
         {std::make_pair(v1::KV_PART_KEY, lt.key_params),
          std::make_pair(v1::KV_PART_VALUE, lt.value_params)}) {
      v1::KvBlock b =
          BlockMetadata(lt.layer, part, params, heads, dim, k,
                        plan.shared_selection ? v1::INDEX_ENCODING_SHARED
                        : all_tokens          ? v1::INDEX_ENCODING_ALL
                                              : v1::INDEX_ENCODING_BITMAP);
      const int64_t values =
          PackedValueBytes(params.scheme, int64_t{heads} * k * dim);
      const int64_t scales = ScaleCount(params, heads, k, dim) * 2;
      b.set_entropy(plan.spec.entropy().coder());
      b.set_values_raw_size(static_cast<uint32_t>(values));
      b.set_crc32c(0xFFFFFFFFu);
      const int64_t block_bytes =
          b.ByteSizeLong() +
          BytesFieldSize(plan.shared_selection ? 0 : index_bytes) +
          BytesFieldSize(values) + BytesFieldSize(scales) +
          BytesFieldSize(HasZeroPoints(params) ? scales : 0);
      total += ChunkedBlockBytes(block_bytes, chunk_size);
    }
  }

  v1::KvChunk trailer;
  v1::TransferStats* s = trailer.mutable_trailer()->mutable_stats();
  s->set_raw_bytes(0);  // Every field has explicit presence: fixed size.
  s->set_payload_bytes(0);
  s->set_scale_bytes(0);
  s->set_index_bytes(0);
  s->set_header_bytes(0);
  s->set_serialized_bytes(0);
  s->set_blocks(0);
  s->set_chunks(0);
  s->set_selected_tokens(0);
  s->set_compute_seconds(0);
  s->set_encode_seconds(0);
  total += trailer.ByteSizeLong();
  return total;
}

namespace {

// Precision ladder for budget planning, most bits first.
constexpr v1::Scheme kLadder[] = {v1::SCHEME_BF16, v1::SCHEME_INT8,
                                  v1::SCHEME_INT4};

absl::StatusOr<TransferPlan> Replan(const v1::ModelInfo& model,
                                    uint32_t total_tokens,
                                    v1::TransferSpec spec) {
  spec.set_max_payload_bytes(0);
  return ResolveTransferPlan(model, total_tokens, spec);
}

void ForceScheme(v1::TransferSpec* spec, v1::Scheme scheme) {
  spec->set_scheme(scheme);
  spec->clear_layer_overrides();
}

}  // namespace

absl::StatusOr<TransferPlan> PlanTransfer(const v1::ModelInfo& model,
                                          uint32_t total_tokens,
                                          const v1::TransferSpec& spec) {
  ASSIGN_OR_RETURN(TransferPlan requested,
                   ResolveTransferPlan(model, total_tokens, spec));
  const uint64_t budget = spec.max_payload_bytes();
  if (budget == 0) return requested;
  auto fits = [&](const TransferPlan& p) {
    return static_cast<uint64_t>(PredictStreamBytes(model, p)) <= budget;
  };
  if (fits(requested)) return requested;

  // The requested precision is a ceiling: the most bits of any sent layer.
  int max_bits = 0;
  for (const LayerTransfer& lt : requested.layers) {
    max_bits = std::max(max_bits, BitsPerValue(lt.scheme));
  }
  std::vector<v1::Scheme> ladder;
  for (v1::Scheme s : kLadder) {
    if (BitsPerValue(s) <= max_bits) ladder.push_back(s);
  }
  if (ladder.empty()) ladder.push_back(v1::SCHEME_INT4);

  // 2. All requested tokens, stepping down the ladder.
  for (size_t rung = 0; rung < ladder.size(); ++rung) {
    v1::TransferSpec candidate = requested.spec;
    ForceScheme(&candidate, ladder[rung]);
    ASSIGN_OR_RETURN(TransferPlan plan, Replan(model, total_tokens, candidate));
    if (!fits(plan)) continue;
    if (spec.budget_allow_mixed_precision() && rung > 0) {
      const auto& layers = requested.spec.layers();
      for (int i = layers.size() - 1; i >= 0; --i) {
        v1::TransferSpec promoted = plan.spec;
        v1::LayerOverride* o = promoted.add_layer_overrides();
        o->add_layers(layers[i]);
        o->set_scheme(ladder[rung - 1]);
        ASSIGN_OR_RETURN(TransferPlan p, Replan(model, total_tokens, promoted));
        if (!fits(p)) break;
        plan = std::move(p);
      }
    }
    plan.spec.set_max_payload_bytes(budget);
    return plan;
  }

  // 3. Fewer tokens at the lowest rung.
  v1::TransferSpec base = requested.spec;
  ForceScheme(&base, ladder.back());
  v1::TokenSelection* sel = base.mutable_selection();
  if (sel->mode() == v1::SELECTION_ALL) sel->set_mode(v1::SELECTION_BACK);
  if (sel->mode() == v1::SELECTION_EXPLICIT) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "max_payload_bytes ", budget, " cannot carry the ",
        requested.selected_tokens, " explicitly selected tokens (needs ",
        PredictStreamBytes(model, requested),
        " bytes at the requested "
        "scheme); select fewer tokens"));
  }
  auto with_tokens = [&](uint32_t k) -> absl::StatusOr<TransferPlan> {
    v1::TransferSpec c = base;
    c.mutable_selection()->set_proportion(static_cast<double>(k) /
                                          total_tokens);
    c.mutable_selection()->set_min_tokens(0);
    return Replan(model, total_tokens, c);
  };
  ASSIGN_OR_RETURN(TransferPlan smallest, with_tokens(1));
  if (!fits(smallest)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("max_payload_bytes ", budget,
                     " is below the smallest possible "
                     "stream for this prompt (",
                     PredictStreamBytes(model, smallest),
                     " bytes: one token of ", requested.layers.size(),
                     " layers at ", SchemeName(ladder.back()), ")"));
  }
  uint32_t lo = 1, hi = std::max<uint32_t>(1, requested.selected_tokens);
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo + 1) / 2;
    ASSIGN_OR_RETURN(TransferPlan p, with_tokens(mid));
    if (fits(p) && p.selected_tokens == mid) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  ASSIGN_OR_RETURN(TransferPlan plan, with_tokens(lo));
  plan.spec.set_max_payload_bytes(budget);
  return plan;
}

}  // namespace kvwire
