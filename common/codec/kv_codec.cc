#include "common/codec/kv_codec.h"

#include <ATen/ATen.h>

#include <algorithm>
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

// One block to encode: x's tokens at `token_index` (int64 on x's device;
// all of them when undefined).
struct BlockToEncode {
  at::Tensor x;
  at::Tensor token_index;
  uint32_t layer = 0;
  v1::KvPart part = v1::KV_PART_KEY;
  QuantParams params;
  const EncodedIndices* indices = nullptr;
};

// A block's wire bytes and the shape they encode.
struct BlockBytes {
  std::string values, scales, zero_points;
  int64_t heads = 0, tokens = 0, head_dim = 0;
};

// The ATen path: index_select, then Quantize.
absl::StatusOr<BlockBytes> QuantizeBlockBytes(const BlockToEncode& b) {
  at::Tensor selected = b.x;
  if (b.token_index.defined()) {
    RETURN_IF_ERROR(Guarded("gathering tokens", [&] {
      selected = b.x.index_select(1, b.token_index);
      return absl::OkStatus();
    }));
  }
  ASSIGN_OR_RETURN(QuantizedTensor q, Quantize(selected, b.params));
  BlockBytes bytes;
  RETURN_IF_ERROR(Guarded(absl::StrCat("encoding ", b.layer), [&] {
    bytes.values = TensorBytes(q.packed);
    bytes.scales = TensorBytes(q.scales);
    if (HasZeroPoints(b.params)) bytes.zero_points = TensorBytes(q.zero_points);
    bytes.heads = selected.size(0);
    bytes.tokens = selected.size(1);
    bytes.head_dim = selected.size(2);
    return absl::OkStatus();
  }));
  return bytes;
}

// The block around `bytes`: metadata, indices, entropy stage, checksum.
absl::StatusOr<v1::KvBlock> AssembleBlock(const BlockToEncode& b,
                                          BlockBytes bytes,
                                          const v1::EntropyStage& entropy) {
  v1::KvBlock block;
  RETURN_IF_ERROR(
      Guarded(absl::StrCat("encoding ", b.layer), [&]() -> absl::Status {
        const EncodedIndices& indices = *b.indices;
        block = BlockMetadata(
            b.layer, b.part, b.params, static_cast<uint32_t>(bytes.heads),
            static_cast<uint32_t>(bytes.head_dim),
            static_cast<uint32_t>(bytes.tokens), indices.encoding);
        if (indices.encoding == v1::INDEX_ENCODING_BITMAP ||
            indices.encoding == v1::INDEX_ENCODING_DELTA_VARINT) {
          block.set_token_indices(indices.bytes);
        }
        block.set_scales(std::move(bytes.scales));
        if (HasZeroPoints(b.params)) {
          block.set_zero_points(std::move(bytes.zero_points));
        }
        std::string values = std::move(bytes.values);
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

// Encodes `blocks`, in order. On CUDA the fused kernels gather, quantize and
// pack every block in one pass each, and the whole batch's codes and scales
// come to the host in one copy; blocks they do not apply to, and blocks
// elsewhere, take the ATen path.
absl::StatusOr<std::vector<v1::KvBlock>> EncodeBlocks(
    absl::Span<const BlockToEncode> blocks, const v1::EntropyStage& entropy) {
  std::vector<std::optional<BlockBytes>> fused(blocks.size());
#ifdef KVWIRE_WITH_CUDA
  const bool any_cuda = std::any_of(
      blocks.begin(), blocks.end(),
      [](const BlockToEncode& b) { return b.x.defined() && b.x.is_cuda(); });
  if (any_cuda) {
    std::vector<CudaBlockToEncode> cuda;
    for (const BlockToEncode& b : blocks) {
      cuda.push_back({b.x, b.token_index, b.params});
    }
    ASSIGN_OR_RETURN(auto host, Guarded("encoding on the GPU", [&] {
                       return CudaQuantizeBlocksToHost(cuda);
                     }));
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (!host[i].has_value()) continue;
      const BlockToEncode& b = blocks[i];
      BlockBytes& bytes = fused[i].emplace();
      bytes.values = std::move(host[i]->values);
      bytes.scales = std::move(host[i]->scales);
      bytes.zero_points = std::move(host[i]->zero_points);
      bytes.heads = b.x.size(0);
      bytes.tokens =
          b.token_index.defined() ? b.token_index.numel() : b.x.size(1);
      bytes.head_dim = b.x.size(2);
    }
  }
#endif
  std::vector<v1::KvBlock> out;
  out.reserve(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    BlockBytes bytes;
    if (fused[i].has_value()) {
      bytes = *std::move(fused[i]);
    } else {
      ASSIGN_OR_RETURN(bytes, QuantizeBlockBytes(blocks[i]));
    }
    ASSIGN_OR_RETURN(v1::KvBlock block,
                     AssembleBlock(blocks[i], std::move(bytes), entropy));
    out.push_back(std::move(block));
  }
  return out;
}

}  // namespace

absl::StatusOr<v1::KvBlock> EncodeBlock(const at::Tensor& x, uint32_t layer,
                                        v1::KvPart part,
                                        const QuantParams& params,
                                        const EncodedIndices& indices,
                                        const v1::EntropyStage& entropy) {
  const BlockToEncode block{x, at::Tensor(), layer, part, params, &indices};
  ASSIGN_OR_RETURN(std::vector<v1::KvBlock> out,
                   EncodeBlocks({&block, 1}, entropy));
  return std::move(out.front());
}

namespace {

// A block's values ready to dequantize: metadata checked against every
// size, entropy stage undone.
struct BlockToDecode {
  const v1::KvBlock* block = nullptr;
  QuantParams params;
  int64_t heads = 0, tokens = 0, head_dim = 0;
  int64_t scale_bytes = 0, zero_bytes = 0;
  std::string decompressed;  // When the block is entropy-coded.
  const std::string& values() const {
    return block->entropy() == v1::ENTROPY_CODER_ZSTD ? decompressed
                                                      : block->values();
  }
};

absl::Status PrepareDecode(const v1::KvBlock& block, BlockToDecode* out) {
  BlockToDecode& d = *out;
  d.block = &block;
  d.params.scheme = block.scheme();
  d.params.granularity = block.granularity();
  d.params.group_size = static_cast<int>(block.group_size());
  d.params.asymmetric = block.asymmetric();
  d.heads = block.kv_heads();
  d.tokens = block.selected_tokens();
  d.head_dim = block.head_dim();
  if (absl::Status s =
          ValidateQuantParams(d.params, d.heads, d.tokens, d.head_dim);
      !s.ok()) {
    return absl::DataLossError(absl::StrCat("block metadata: ", s.message()));
  }
  if (d.params.asymmetric && !HasZeroPoints(d.params)) {
    return absl::DataLossError("block marks a non-INT scheme asymmetric");
  }
  const int64_t raw_size =
      PackedValueBytes(d.params.scheme, d.heads * d.tokens * d.head_dim);
  if (raw_size > kMaxRawBlockBytes || raw_size != block.values_raw_size()) {
    return absl::DataLossError(absl::StrCat(
        "block declares ", block.values_raw_size(), " value bytes, its shape [",
        d.heads, ", ", d.tokens, ", ", d.head_dim, "] at ",
        SchemeName(d.params.scheme), " needs ", raw_size));
  }
  switch (block.entropy()) {
    case v1::ENTROPY_CODER_NONE:
    case v1::ENTROPY_CODER_UNSPECIFIED:
      break;
    case v1::ENTROPY_CODER_ZSTD: {
      ASSIGN_OR_RETURN(d.decompressed,
                       ZstdDecompress(block.values(), raw_size));
      break;
    }
    default:
      return absl::DataLossError(absl::StrCat(
          "unknown entropy coder ", static_cast<int>(block.entropy())));
  }
  if (static_cast<int64_t>(d.values().size()) != raw_size) {
    return absl::DataLossError(absl::StrCat("block carries ", d.values().size(),
                                            " value bytes, expected ",
                                            raw_size));
  }
  d.scale_bytes = ScaleCount(d.params, d.heads, d.tokens, d.head_dim) * 2;
  d.zero_bytes = HasZeroPoints(d.params) ? d.scale_bytes : 0;
  if (static_cast<int64_t>(block.scales().size()) != d.scale_bytes ||
      static_cast<int64_t>(block.zero_points().size()) != d.zero_bytes) {
    return absl::DataLossError(
        absl::StrCat("block carries ", block.scales().size(), " scale and ",
                     block.zero_points().size(), " zero-point bytes, expected ",
                     d.scale_bytes, " and ", d.zero_bytes));
  }
  return absl::OkStatus();
}

// The ATen path of one prepared block.
absl::StatusOr<at::Tensor> DequantizeBlockAten(const BlockToDecode& d,
                                               at::ScalarType dtype,
                                               at::Device device) {
  return Guarded("decoding block", [&]() -> absl::StatusOr<at::Tensor> {
    QuantizedTensor q;
    const std::string& values = d.values();
    q.packed = BytesTensor(values, at::kByte,
                           {static_cast<int64_t>(values.size())}, device);
    if (d.scale_bytes > 0) {
      const std::vector<int64_t> shape =
          ScaleShape(d.params, d.heads, d.tokens, d.head_dim);
      q.scales = BytesTensor(d.block->scales(), at::kHalf, shape, device);
      if (d.zero_bytes > 0) {
        q.zero_points =
            BytesTensor(d.block->zero_points(), at::kHalf, shape, device);
      }
    }
    // On the CPU the inputs are views of the block's strings; Dequantize's
    // output never aliases them.
    return Dequantize(q, d.params, d.heads, d.tokens, d.head_dim, dtype);
  });
}

}  // namespace

absl::StatusOr<std::vector<at::Tensor>> DecodeBlocksValues(
    absl::Span<const v1::KvBlock* const> blocks, at::ScalarType dtype,
    at::Device device) {
  std::vector<BlockToDecode> prepared(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    RETURN_IF_ERROR(PrepareDecode(*blocks[i], &prepared[i]));
  }
  std::vector<std::optional<at::Tensor>> fused(blocks.size());
#ifdef KVWIRE_WITH_CUDA
  if (device.is_cuda()) {
    std::vector<CudaBlockToDecode> cuda;
    for (const BlockToDecode& d : prepared) {
      cuda.push_back({&d.values(), &d.block->scales(), &d.block->zero_points(),
                      d.params, d.heads, d.tokens, d.head_dim});
    }
    ASSIGN_OR_RETURN(fused, Guarded("decoding blocks", [&] {
                       return CudaDequantizeBlocksFromHost(cuda, dtype, device);
                     }));
  }
#endif
  std::vector<at::Tensor> out;
  out.reserve(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (fused[i].has_value()) {
      out.push_back(*std::move(fused[i]));
    } else {
      ASSIGN_OR_RETURN(at::Tensor t,
                       DequantizeBlockAten(prepared[i], dtype, device));
      out.push_back(std::move(t));
    }
  }
  return out;
}

absl::StatusOr<at::Tensor> DecodeBlockValues(const v1::KvBlock& block,
                                             at::ScalarType dtype,
                                             at::Device device) {
  const v1::KvBlock* one = &block;
  ASSIGN_OR_RETURN(std::vector<at::Tensor> out,
                   DecodeBlocksValues({&one, 1}, dtype, device));
  return std::move(out.front());
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

absl::Status KvStreamEncoder::EncodeLayers(
    const std::vector<PlannedLayer>& layers, std::vector<v1::KvChunk>* out) {
  const bool all_tokens =
      plan_.selected_tokens == plan_.total_tokens &&
      plan_.spec.selection().mode() != v1::SELECTION_EXPLICIT;
  // Per layer: its index encoding and, unless every token goes, the device
  // tensor of the positions the gather reads (fused into the CUDA kernels,
  // index_select elsewhere).
  std::vector<EncodedIndices> indices(layers.size());
  std::vector<BlockToEncode> blocks;
  for (size_t i = 0; i < layers.size(); ++i) {
    const PlannedLayer& l = layers[i];
    std::vector<uint32_t> own;
    const std::vector<uint32_t>* selected = nullptr;
    if (all_tokens) {
      indices[i].encoding = v1::INDEX_ENCODING_ALL;
    } else if (plan_.shared_selection) {
      indices[i] = shared_encoded_;
      selected = &shared_indices_;
    } else {
      ASSIGN_OR_RETURN(own, SelectTokens(plan_.spec.selection(),
                                         plan_.total_tokens, l.keys, l.values));
      ASSIGN_OR_RETURN(indices[i], EncodeTokenIndices(own, plan_.total_tokens));
      selected = &own;
    }
    at::Tensor idx;
    if (selected != nullptr) {
      RETURN_IF_ERROR(Guarded("gathering tokens", [&] {
        idx =
            at::tensor(std::vector<int64_t>(selected->begin(), selected->end()),
                       at::TensorOptions().dtype(at::kLong))
                .to(l.keys.device());
        return absl::OkStatus();
      }));
    }
    blocks.push_back({l.keys, idx, l.transfer->layer, v1::KV_PART_KEY,
                      l.transfer->key_params, &indices[i]});
    blocks.push_back({l.values, idx, l.transfer->layer, v1::KV_PART_VALUE,
                      l.transfer->value_params, &indices[i]});
  }
  ASSIGN_OR_RETURN(std::vector<v1::KvBlock> encoded,
                   EncodeBlocks(blocks, plan_.spec.entropy()));
  for (v1::KvBlock& block : encoded) {
    RETURN_IF_ERROR(writer_.AddBlock(std::move(block), out));
  }
  return absl::OkStatus();
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
  std::vector<PlannedLayer> layers;
  for (const LayerTransfer& lt : plan_.layers) {
    const auto& kv = buffered_.at(lt.layer);
    layers.push_back({&lt, kv.first, kv.second});
  }
  RETURN_IF_ERROR(EncodeLayers(layers, out));
  buffered_.clear();
  return absl::OkStatus();
}

absl::Status KvStreamEncoder::AddLayer(uint32_t layer, const at::Tensor& keys,
                                       const at::Tensor& values,
                                       std::vector<v1::KvChunk>* out) {
  const LayerTensors one{layer, keys, values};
  return AddLayers({&one, 1}, out);
}

absl::Status KvStreamEncoder::AddLayers(absl::Span<const LayerTensors> layers,
                                        std::vector<v1::KvChunk>* out) {
  if (!started_) return absl::FailedPreconditionError("AddLayer before Start");
  std::vector<PlannedLayer> planned;
  for (const LayerTensors& l : layers) {
    auto it = done_.find(l.layer);
    if (it == done_.end()) continue;  // Not planned.
    if (it->second) {
      return absl::FailedPreconditionError(
          absl::StrCat("layer ", l.layer, " added twice"));
    }
    RETURN_IF_ERROR(
        CheckLayerTensor(l.keys, model_, plan_.total_tokens, "keys"));
    RETURN_IF_ERROR(
        CheckLayerTensor(l.values, model_, plan_.total_tokens, "values"));
    it->second = true;
    for (const LayerTransfer& lt : plan_.layers) {
      if (lt.layer == l.layer) planned.push_back({&lt, l.keys, l.values});
    }
  }
  const auto start = std::chrono::steady_clock::now();
  absl::Status status;
  if (plan_.needs_all_layers) {
    for (const PlannedLayer& l : planned) {
      buffered_[l.transfer->layer] = {l.keys, l.values};
    }
    if (!planned.empty() && buffered_.size() == plan_.layers.size()) {
      status = EmitBufferedLayers(out);
    }
  } else if (!planned.empty()) {
    status = EncodeLayers(planned, out);
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

KvStreamDecoder::KvStreamDecoder(at::ScalarType dtype, at::Device device,
                                 bool defer_decode)
    : dtype_(dtype), device_(device), defer_(defer_decode) {}

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
  ASSIGN_OR_RETURN(std::vector<DecodedLayer> layers, ConsumeAll(chunk));
  if (layers.size() > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("a batch of blocks completed ", layers.size(),
                     " layers at once; consume it with ConsumeAll"));
  }
  if (layers.empty()) return std::optional<DecodedLayer>();
  return std::optional<DecodedLayer>(std::move(layers.front()));
}

absl::StatusOr<std::vector<DecodedLayer>> KvStreamDecoder::ConsumeAll(
    const v1::KvChunk& chunk) {
  ASSIGN_OR_RETURN(KvChunkReader::Event event, reader_.Consume(chunk));
  std::vector<DecodedLayer> layers;
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
      return layers;
    }
    case KvChunkReader::Event::Kind::kTrailer:
      stats_ = *event.stats;
      return layers;
    case KvChunkReader::Event::Kind::kNone:
      return layers;
    case KvChunkReader::Event::Kind::kBlock: {
      ASSIGN_OR_RETURN(std::optional<DecodedLayer> layer,
                       ConsumeBlock(std::move(event.block)));
      if (layer.has_value()) layers.push_back(*std::move(layer));
      return layers;
    }
    case KvChunkReader::Event::Kind::kBlockBatch:
      for (v1::KvBlock& block : event.blocks) {
        ASSIGN_OR_RETURN(std::optional<DecodedLayer> layer,
                         ConsumeBlock(std::move(block)));
        if (layer.has_value()) layers.push_back(*std::move(layer));
      }
      return layers;
  }
  return layers;
}

absl::StatusOr<std::optional<DecodedLayer>> KvStreamDecoder::ConsumeBlock(
    v1::KvBlock block) {
  const auto start = std::chrono::steady_clock::now();
  auto indices = BlockIndices(block);
  if (!indices.ok()) {
    return absl::DataLossError(absl::StrCat(
        "layer ", block.layer(), " indices: ", indices.status().message()));
  }
  if (defer_) {
    held_.push_back({std::move(block), *std::move(indices)});
    decode_seconds_ += SecondsSince(start);
    return std::optional<DecodedLayer>();
  }
  ASSIGN_OR_RETURN(at::Tensor tensor,
                   DecodeBlockValues(block, dtype_, device_));
  auto layer = AddBlock(block, *std::move(indices), std::move(tensor));
  decode_seconds_ += SecondsSince(start);
  return layer;
}

absl::StatusOr<std::optional<DecodedLayer>> KvStreamDecoder::AddBlock(
    const v1::KvBlock& block, std::vector<uint32_t> indices,
    at::Tensor tensor) {
  DecodedLayer& layer = pending_[block.layer()];
  layer.layer = block.layer();
  if (layer.token_indices.empty()) {
    layer.token_indices = std::move(indices);
  } else if (layer.token_indices != indices) {
    return absl::DataLossError(absl::StrCat(
        "layer ", block.layer(), " K and V blocks select different tokens"));
  }
  (block.part() == v1::KV_PART_KEY ? layer.keys : layer.values) =
      std::move(tensor);
  if (layer.keys.defined() && layer.values.defined()) {
    DecodedLayer done = std::move(layer);
    pending_.erase(block.layer());
    return std::optional<DecodedLayer>(std::move(done));
  }
  return std::optional<DecodedLayer>();
}

absl::StatusOr<std::vector<DecodedLayer>> KvStreamDecoder::DecodeHeld() {
  const auto start = std::chrono::steady_clock::now();
  std::vector<HeldBlock> held = std::move(held_);
  held_.clear();
  std::vector<const v1::KvBlock*> blocks;
  for (const HeldBlock& h : held) blocks.push_back(&h.block);
  ASSIGN_OR_RETURN(std::vector<at::Tensor> tensors,
                   DecodeBlocksValues(blocks, dtype_, device_));
  std::vector<DecodedLayer> layers;
  for (size_t i = 0; i < held.size(); ++i) {
    ASSIGN_OR_RETURN(std::optional<DecodedLayer> layer,
                     AddBlock(held[i].block, std::move(held[i].indices),
                              std::move(tensors[i])));
    if (layer.has_value()) layers.push_back(*std::move(layer));
  }
  decode_seconds_ += SecondsSince(start);
  return layers;
}

}  // namespace kvwire
