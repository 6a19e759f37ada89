#include "common/codec/kv_codec.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/codec/entropy.h"
#ifdef KVWIRE_WITH_CUDA
#include "common/codec/cuda_codec.h"
#endif
#include "common/clock.h"
#include "common/codec/quantizer.h"
#include "common/codec/scheme.h"
#include "common/codec/token_selection.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "kvwire's wire format is little-endian; so must the host be");

namespace kvwire {
namespace {

// A decoded block may not expand beyond this many bytes (defends memory
// against hostile metadata; real blocks are far smaller).
constexpr int64_t kMaxRawBlockBytes = int64_t{1} << 30;

std::string TensorBytes(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return std::string();
  const at::Tensor cpu = t.to(at::kCPU).contiguous();
  return std::string(static_cast<const char*>(cpu.data_ptr()), cpu.nbytes());
}

// Wraps `bytes` (kept alive by the caller) as a CPU tensor and moves it to
// `device` (a copy there; a view on the CPU).
at::Tensor BytesTensor(const std::string& bytes, at::ScalarType dtype,
                       at::IntArrayRef shape, at::Device device) {
  at::Tensor t = at::from_blob(const_cast<char*>(bytes.data()), shape,
                               at::TensorOptions().dtype(dtype));
  return device.is_cpu() ? t : t.to(device);
}

absl::Status CheckLayerTensor(const at::Tensor& t, const v1::ModelInfo& model,
                              uint32_t total_tokens, absl::string_view what) {
  if (!t.defined() || t.dim() != 3 || t.size(0) != model.num_kv_heads() ||
      t.size(1) != total_tokens || t.size(2) != model.head_dim()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must be [", model.num_kv_heads(), ", ", total_tokens, ", ",
        model.head_dim(), "], got ",
        t.defined() ? c10::str(t.sizes()) : std::string("undefined")));
  }
  if (!at::isFloatingType(t.scalar_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be floating point"));
  }
  return absl::OkStatus();
}

// EncodeBlock of x's tokens at `token_index` (int64 on x's device; all of
// them when undefined). On CUDA the fused kernels gather, quantize and pack
// in one pass and only the packed bytes and scales come to the host;
// otherwise the tokens are gathered with index_select and Quantize runs.
absl::StatusOr<v1::KvBlock> EncodeSelectedBlock(
    const at::Tensor& x, const at::Tensor& token_index, uint32_t layer,
    v1::KvPart part, const QuantParams& params, const EncodedIndices& indices,
    const v1::EntropyStage& entropy) {
  std::string values, scales, zero_points;
  bool encoded = false;
#ifdef KVWIRE_WITH_CUDA
  if (x.defined() && x.is_cuda()) {
    HostQuantizedBlock host;
    const absl::StatusOr<bool> done = Guarded(
        absl::StrCat("encoding ", layer),
        [&] { return CudaQuantizeToHost(x, token_index, params, &host); });
    if (!done.ok()) return done.status();
    if (*done) {
      values = std::move(host.values);
      scales = std::move(host.scales);
      zero_points = std::move(host.zero_points);
      encoded = true;
    }
  }
#endif
  int64_t heads = 0, tokens = 0, head_dim = 0;
  if (encoded) {  // x is a 3-D CUDA tensor.
    heads = x.size(0);
    tokens = token_index.defined() ? token_index.numel() : x.size(1);
    head_dim = x.size(2);
  } else {
    at::Tensor selected = x;
    if (token_index.defined()) {
      RETURN_IF_ERROR(Guarded("gathering tokens", [&] {
        selected = x.index_select(1, token_index);
        return absl::OkStatus();
      }));
    }
    ASSIGN_OR_RETURN(QuantizedTensor q, Quantize(selected, params));
    RETURN_IF_ERROR(Guarded(absl::StrCat("encoding ", layer), [&] {
      values = TensorBytes(q.packed);
      scales = TensorBytes(q.scales);
      if (HasZeroPoints(params)) zero_points = TensorBytes(q.zero_points);
      return absl::OkStatus();
    }));
    heads = selected.size(0);
    tokens = selected.size(1);
    head_dim = selected.size(2);
  }
  v1::KvBlock block;
  RETURN_IF_ERROR(
      Guarded(absl::StrCat("encoding ", layer), [&]() -> absl::Status {
        block = BlockMetadata(layer, part, params, static_cast<uint32_t>(heads),
                              static_cast<uint32_t>(head_dim),
                              static_cast<uint32_t>(tokens), indices.encoding);
        if (indices.encoding == v1::INDEX_ENCODING_BITMAP ||
            indices.encoding == v1::INDEX_ENCODING_DELTA_VARINT) {
          block.set_token_indices(indices.bytes);
        }
        block.set_scales(std::move(scales));
        if (HasZeroPoints(params))
          block.set_zero_points(std::move(zero_points));
        block.set_values_raw_size(static_cast<uint32_t>(values.size()));
        block.set_entropy(v1::ENTROPY_CODER_NONE);
        if (entropy.coder() == v1::ENTROPY_CODER_ZSTD) {
          ASSIGN_OR_RETURN(std::string packed,
                           ZstdCompress(values, entropy.level()));
          if (packed.size() < values.size()) {
            values = std::move(packed);
            block.set_entropy(v1::ENTROPY_CODER_ZSTD);
          }
        }
        block.set_values(std::move(values));
        return absl::OkStatus();
      }));
  block.set_crc32c(BlockChecksum(block));
  return block;
}

}  // namespace

absl::StatusOr<v1::KvBlock> EncodeBlock(const at::Tensor& x, uint32_t layer,
                                        v1::KvPart part,
                                        const QuantParams& params,
                                        const EncodedIndices& indices,
                                        const v1::EntropyStage& entropy) {
  return EncodeSelectedBlock(x, at::Tensor(), layer, part, params, indices,
                             entropy);
}

absl::StatusOr<at::Tensor> DecodeBlockValues(const v1::KvBlock& block,
                                             at::ScalarType dtype,
                                             at::Device device) {
  QuantParams params;
  params.scheme = block.scheme();
  params.granularity = block.granularity();
  params.group_size = static_cast<int>(block.group_size());
  params.asymmetric = block.asymmetric();
  const int64_t heads = block.kv_heads(), tokens = block.selected_tokens(),
                dim = block.head_dim();
  if (absl::Status s = ValidateQuantParams(params, heads, tokens, dim);
      !s.ok()) {
    return absl::DataLossError(absl::StrCat("block metadata: ", s.message()));
  }
  if (params.asymmetric && !HasZeroPoints(params)) {
    return absl::DataLossError("block marks a non-INT scheme asymmetric");
  }
  const int64_t raw_size =
      PackedValueBytes(params.scheme, heads * tokens * dim);
  if (raw_size > kMaxRawBlockBytes || raw_size != block.values_raw_size()) {
    return absl::DataLossError(absl::StrCat(
        "block declares ", block.values_raw_size(), " value bytes, its shape [",
        heads, ", ", tokens, ", ", dim, "] at ", SchemeName(params.scheme),
        " needs ", raw_size));
  }
  std::string decompressed;
  const std::string* values = &block.values();
  switch (block.entropy()) {
    case v1::ENTROPY_CODER_NONE:
    case v1::ENTROPY_CODER_UNSPECIFIED:
      break;
    case v1::ENTROPY_CODER_ZSTD: {
      ASSIGN_OR_RETURN(decompressed, ZstdDecompress(block.values(), raw_size));
      values = &decompressed;
      break;
    }
    default:
      return absl::DataLossError(absl::StrCat(
          "unknown entropy coder ", static_cast<int>(block.entropy())));
  }
  if (static_cast<int64_t>(values->size()) != raw_size) {
    return absl::DataLossError(absl::StrCat(
        "block carries ", values->size(), " value bytes, expected ", raw_size));
  }
  const int64_t scale_bytes = ScaleCount(params, heads, tokens, dim) * 2;
  const int64_t zero_bytes = HasZeroPoints(params) ? scale_bytes : 0;
  if (static_cast<int64_t>(block.scales().size()) != scale_bytes ||
      static_cast<int64_t>(block.zero_points().size()) != zero_bytes) {
    return absl::DataLossError(
        absl::StrCat("block carries ", block.scales().size(), " scale and ",
                     block.zero_points().size(), " zero-point bytes, expected ",
                     scale_bytes, " and ", zero_bytes));
  }
#ifdef KVWIRE_WITH_CUDA
  if (device.is_cuda()) {
    at::Tensor out;
    const absl::StatusOr<bool> done = Guarded("decoding block", [&] {
      return CudaDequantizeFromHost(*values, block.scales(),
                                    block.zero_points(), params, heads, tokens,
                                    dim, dtype, device, &out);
    });
    if (!done.ok()) return done.status();
    if (*done) return out;
  }
#endif
  return Guarded("decoding block", [&]() -> absl::StatusOr<at::Tensor> {
    QuantizedTensor q;
    q.packed = BytesTensor(*values, at::kByte, {raw_size}, device);
    if (scale_bytes > 0) {
      const std::vector<int64_t> shape = ScaleShape(params, heads, tokens, dim);
      q.scales = BytesTensor(block.scales(), at::kHalf, shape, device);
      if (zero_bytes > 0) {
        q.zero_points =
            BytesTensor(block.zero_points(), at::kHalf, shape, device);
      }
    }
    ASSIGN_OR_RETURN(at::Tensor out,
                     Dequantize(q, params, heads, tokens, dim, dtype));
    // On the CPU the inputs are views of `block`'s strings; Dequantize's
    // output never aliases them.
    return out;
  });
}

// ------------------------------------------------------------ encoder

KvStreamEncoder::KvStreamEncoder(const v1::ModelInfo& model, TransferPlan plan,
                                 std::string request_id)
    : model_(model),
      plan_(std::move(plan)),
      request_id_(std::move(request_id)),
      writer_(plan_.spec.chunk_size_bytes()) {}

absl::StatusOr<std::unique_ptr<KvStreamEncoder>> KvStreamEncoder::Create(
    const v1::ModelInfo& model, uint32_t total_tokens,
    const v1::TransferSpec& spec, std::string request_id) {
  if (request_id.size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("request id of ", request_id.size(), " bytes exceeds ",
                     kMaxRequestIdBytes));
  }
  ASSIGN_OR_RETURN(TransferPlan plan, PlanTransfer(model, total_tokens, spec));
  auto encoder = std::unique_ptr<KvStreamEncoder>(
      new KvStreamEncoder(model, std::move(plan), std::move(request_id)));
  encoder->predicted_bytes_ =
      PredictStreamBytes(model, encoder->plan_, encoder->request_id_.size());
  for (const LayerTransfer& lt : encoder->plan_.layers) {
    encoder->done_[lt.layer] = false;
  }
  return encoder;
}

absl::Status KvStreamEncoder::EmitHeader(const std::vector<uint32_t>* shared,
                                         std::vector<v1::KvChunk>* out) {
  v1::KvHeader h = PlanHeader(model_, plan_, request_id_);
  if (shared != nullptr) {
    ASSIGN_OR_RETURN(shared_encoded_,
                     EncodeTokenIndices(*shared, plan_.total_tokens));
    h.set_shared_index_encoding(shared_encoded_.encoding);
    h.set_shared_token_indices(shared_encoded_.bytes);
    h.set_shared_selected_tokens(static_cast<uint32_t>(shared->size()));
    shared_encoded_.encoding = v1::INDEX_ENCODING_SHARED;
    shared_encoded_.bytes.clear();
  }
  header_sent_ = true;
  return writer_.AddHeader(std::move(h), out);
}

absl::Status KvStreamEncoder::Start(std::vector<v1::KvChunk>* out) {
  if (started_) return absl::FailedPreconditionError("Start called twice");
  started_ = true;
  const auto start = std::chrono::steady_clock::now();
  if (plan_.shared_selection && !plan_.needs_scores) {
    ASSIGN_OR_RETURN(shared_indices_,
                     SelectTokens(plan_.spec.selection(), plan_.total_tokens,
                                  at::Tensor(), at::Tensor()));
    RETURN_IF_ERROR(EmitHeader(&shared_indices_, out));
  } else if (!plan_.needs_all_layers) {
    RETURN_IF_ERROR(EmitHeader(nullptr, out));
  }
  encode_seconds_ += SecondsSince(start);
  return absl::OkStatus();
}

absl::Status KvStreamEncoder::EncodeLayer(const LayerTransfer& lt,
                                          const at::Tensor& keys,
                                          const at::Tensor& values,
                                          std::vector<v1::KvChunk>* out) {
  EncodedIndices indices;
  const bool all_tokens =
      plan_.selected_tokens == plan_.total_tokens &&
      plan_.spec.selection().mode() != v1::SELECTION_EXPLICIT;
  std::vector<uint32_t> own;
  const std::vector<uint32_t>* selected = nullptr;
  if (all_tokens) {
    indices.encoding = v1::INDEX_ENCODING_ALL;
  } else if (plan_.shared_selection) {
    indices = shared_encoded_;
    selected = &shared_indices_;
  } else {
    ASSIGN_OR_RETURN(own, SelectTokens(plan_.spec.selection(),
                                       plan_.total_tokens, keys, values));
    ASSIGN_OR_RETURN(indices, EncodeTokenIndices(own, plan_.total_tokens));
    selected = &own;
  }
  // The gather happens inside EncodeSelectedBlock: fused into the CUDA
  // kernels, index_select elsewhere.
  at::Tensor idx;
  if (selected != nullptr) {
    RETURN_IF_ERROR(Guarded("gathering tokens", [&] {
      idx = at::tensor(std::vector<int64_t>(selected->begin(), selected->end()),
                       at::TensorOptions().dtype(at::kLong))
                .to(keys.device());
      return absl::OkStatus();
    }));
  }
  ASSIGN_OR_RETURN(
      v1::KvBlock kb,
      EncodeSelectedBlock(keys, idx, lt.layer, v1::KV_PART_KEY, lt.key_params,
                          indices, plan_.spec.entropy()));
  RETURN_IF_ERROR(writer_.AddBlock(std::move(kb), out));
  ASSIGN_OR_RETURN(
      v1::KvBlock vb,
      EncodeSelectedBlock(values, idx, lt.layer, v1::KV_PART_VALUE,
                          lt.value_params, indices, plan_.spec.entropy()));
  return writer_.AddBlock(std::move(vb), out);
}

absl::Status KvStreamEncoder::EmitBufferedLayers(
    std::vector<v1::KvChunk>* out) {
  RETURN_IF_ERROR(Guarded("scoring tokens", [&]() -> absl::Status {
    // Shared norm selection: average each layer's per-token scores.
    at::Tensor sum;
    for (const auto& [layer, kv] : buffered_) {
      const at::Tensor& scored =
          plan_.spec.selection().mode() == v1::SELECTION_KNORM_TOPK ? kv.first
                                                                    : kv.second;
      at::Tensor s = TokenNormScores(scored);
      sum = sum.defined() ? sum + s : s;
    }
    sum = sum / static_cast<double>(buffered_.size());
    ASSIGN_OR_RETURN(
        shared_indices_,
        SelectTokensByScores(plan_.spec.selection(), plan_.total_tokens, sum));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(EmitHeader(&shared_indices_, out));
  for (const LayerTransfer& lt : plan_.layers) {
    const auto& kv = buffered_.at(lt.layer);
    RETURN_IF_ERROR(EncodeLayer(lt, kv.first, kv.second, out));
  }
  buffered_.clear();
  return absl::OkStatus();
}

absl::Status KvStreamEncoder::AddLayer(uint32_t layer, const at::Tensor& keys,
                                       const at::Tensor& values,
                                       std::vector<v1::KvChunk>* out) {
  if (!started_) return absl::FailedPreconditionError("AddLayer before Start");
  auto it = done_.find(layer);
  if (it == done_.end()) return absl::OkStatus();  // Not planned.
  if (it->second) {
    return absl::FailedPreconditionError(
        absl::StrCat("layer ", layer, " added twice"));
  }
  RETURN_IF_ERROR(CheckLayerTensor(keys, model_, plan_.total_tokens, "keys"));
  RETURN_IF_ERROR(
      CheckLayerTensor(values, model_, plan_.total_tokens, "values"));
  it->second = true;
  const auto start = std::chrono::steady_clock::now();
  absl::Status status;
  if (plan_.needs_all_layers) {
    buffered_[layer] = {keys, values};
    if (buffered_.size() == plan_.layers.size()) {
      status = EmitBufferedLayers(out);
    }
  } else {
    for (const LayerTransfer& lt : plan_.layers) {
      if (lt.layer == layer) status = EncodeLayer(lt, keys, values, out);
    }
  }
  encode_seconds_ += SecondsSince(start);
  return status;
}

absl::StatusOr<v1::KvChunk> KvStreamEncoder::Finish(double compute_seconds) {
  for (const auto& [layer, done] : done_) {
    if (!done) {
      return absl::FailedPreconditionError(
          absl::StrCat("layer ", layer, " was planned but never added"));
    }
  }
  if (!header_sent_) {
    return absl::FailedPreconditionError("Finish before the header was sent");
  }
  v1::TransferStats stats;
  const int64_t per_layer_raw = int64_t{2} * model_.num_kv_heads() *
                                plan_.total_tokens * model_.head_dim() * 2;
  stats.set_raw_bytes(per_layer_raw * plan_.layers.size());
  stats.set_selected_tokens(plan_.selected_tokens * plan_.layers.size());
  stats.set_compute_seconds(compute_seconds);
  stats.set_encode_seconds(encode_seconds_);
  v1::KvChunk trailer = writer_.MakeTrailer(std::move(stats));
  const int64_t total =
      writer_.accounting().total().total() + trailer.ByteSizeLong();
  if (plan_.spec.max_payload_bytes() != 0 &&
      static_cast<uint64_t>(total) > plan_.spec.max_payload_bytes()) {
    return absl::InternalError(
        absl::StrCat("stream of ", total, " bytes exceeds max_payload_bytes ",
                     plan_.spec.max_payload_bytes(), " (size prediction ",
                     predicted_bytes_, " was wrong)"));
  }
  return trailer;
}

// ------------------------------------------------------------ decoder

KvStreamDecoder::KvStreamDecoder(at::ScalarType dtype, at::Device device)
    : dtype_(dtype), device_(device) {}

absl::StatusOr<std::vector<uint32_t>> KvStreamDecoder::BlockIndices(
    const v1::KvBlock& block) {
  const v1::KvHeader& h = reader_.header();
  switch (block.index_encoding()) {
    case v1::INDEX_ENCODING_ALL: {
      if (block.selected_tokens() != h.token_count()) {
        return absl::DataLossError("ALL-token block has a partial selection");
      }
      std::vector<uint32_t> all(h.token_count());
      std::iota(all.begin(), all.end(), 0u);
      return all;
    }
    case v1::INDEX_ENCODING_SHARED:
      if (shared_indices_.size() != block.selected_tokens()) {
        return absl::DataLossError(absl::StrCat(
            "block refers to a shared selection of ", shared_indices_.size(),
            " tokens but carries ", block.selected_tokens()));
      }
      return shared_indices_;
    default:
      return DecodeTokenIndices(block.index_encoding(), block.token_indices(),
                                h.token_count(), block.selected_tokens());
  }
}

absl::StatusOr<std::optional<DecodedLayer>> KvStreamDecoder::Consume(
    const v1::KvChunk& chunk) {
  ASSIGN_OR_RETURN(KvChunkReader::Event event, reader_.Consume(chunk));
  const auto start = std::chrono::steady_clock::now();
  switch (event.kind) {
    case KvChunkReader::Event::Kind::kHeader: {
      const v1::KvHeader& h = *event.header;
      if (h.shared_selected_tokens() > 0 || !h.shared_token_indices().empty()) {
        auto decoded = DecodeTokenIndices(
            h.shared_index_encoding(), h.shared_token_indices(),
            h.token_count(), h.shared_selected_tokens());
        if (!decoded.ok()) {
          return absl::DataLossError(absl::StrCat("header's shared selection: ",
                                                  decoded.status().message()));
        }
        shared_indices_ = *std::move(decoded);
      }
      return std::optional<DecodedLayer>();
    }
    case KvChunkReader::Event::Kind::kTrailer:
      stats_ = *event.stats;
      return std::optional<DecodedLayer>();
    case KvChunkReader::Event::Kind::kNone:
      return std::optional<DecodedLayer>();
    case KvChunkReader::Event::Kind::kBlock:
      break;
  }
  const v1::KvBlock& block = event.block;
  auto indices = BlockIndices(block);
  if (!indices.ok()) {
    return absl::DataLossError(absl::StrCat(
        "layer ", block.layer(), " indices: ", indices.status().message()));
  }
  ASSIGN_OR_RETURN(at::Tensor tensor,
                   DecodeBlockValues(block, dtype_, device_));
  DecodedLayer& layer = pending_[block.layer()];
  layer.layer = block.layer();
  if (layer.token_indices.empty()) {
    layer.token_indices = *std::move(indices);
  } else if (layer.token_indices != *indices) {
    return absl::DataLossError(absl::StrCat(
        "layer ", block.layer(), " K and V blocks select different tokens"));
  }
  (block.part() == v1::KV_PART_KEY ? layer.keys : layer.values) =
      std::move(tensor);
  decode_seconds_ += SecondsSince(start);
  if (layer.keys.defined() && layer.values.defined()) {
    DecodedLayer done = std::move(layer);
    pending_.erase(block.layer());
    return std::optional<DecodedLayer>(std::move(done));
  }
  return std::optional<DecodedLayer>();
}

}  // namespace kvwire
