// Encoding a model's KV cache into a KvChunk stream, layer by layer as the
// model produces it, and decoding such a stream back into tensors. This is
// the codec's top level; it knows protobuf messages but nothing of gRPC.
//
// Errors: INVALID_ARGUMENT for bad specs or tensors (wrong shape, dtype,
// non-finite values), RESOURCE_EXHAUSTED when a byte budget cannot be met,
// DATA_LOSS for corrupt, truncated or inconsistent streams, FAILED_PRECONDITION
// for calls out of order. c10::Error never escapes.
#ifndef KVWIRE_COMMON_CODEC_KV_CODEC_H_
#define KVWIRE_COMMON_CODEC_KV_CODEC_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/codec/index_coding.h"
#include "common/codec/kv_stream.h"
#include "common/codec/transfer_plan.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// Encodes one block: `x` is the [kv_heads, n, head_dim] tensor of the
// selected tokens. `indices` is written into the block unless `encoding` is
// ALL or SHARED. The values are entropy-coded when that makes them smaller.
absl::StatusOr<v1::KvBlock> EncodeBlock(const at::Tensor& x, uint32_t layer,
                                        v1::KvPart part,
                                        const QuantParams& params,
                                        const EncodedIndices& indices,
                                        const v1::EntropyStage& entropy);

// Validates every size of `block` against its own metadata and dequantizes
// its values to [kv_heads, selected_tokens, head_dim] of `dtype` on `device`.
// Does not check the CRC (KvChunkReader does).
absl::StatusOr<at::Tensor> DecodeBlockValues(const v1::KvBlock& block,
                                             at::ScalarType dtype,
                                             at::Device device);

// One computed layer's keys and values, [kv_heads, T, head_dim] each.
struct LayerTensors {
  uint32_t layer = 0;
  at::Tensor keys;
  at::Tensor values;
};

// DecodeBlockValues for several blocks at once, in order. On CUDA their
// bytes go to the device in one host-to-device copy.
absl::StatusOr<std::vector<at::Tensor>> DecodeBlocksValues(
    absl::Span<const v1::KvBlock* const> blocks, at::ScalarType dtype,
    at::Device device);

// Streams one KV cache. Create() resolves the spec and applies the byte
// budget; Start() emits the header; AddLayer() encodes each planned layer
// as soon as it is computed; Finish() emits the trailer. Not thread-safe.
class KvStreamEncoder {
 public:
  static absl::StatusOr<std::unique_ptr<KvStreamEncoder>> Create(
      const v1::ModelInfo& model, uint32_t total_tokens,
      const v1::TransferSpec& spec, std::string request_id);

  // Appends the header, unless the selection needs every layer first (then
  // AddLayer of the last planned layer emits it).
  absl::Status Start(std::vector<v1::KvChunk>* out);
  // `keys` and `values` are [kv_heads, T, head_dim], any float dtype and
  // device; they must not be modified until the chunks they produce are
  // appended. Layers outside the plan are ignored.
  absl::Status AddLayer(uint32_t layer, const at::Tensor& keys,
                        const at::Tensor& values,
                        std::vector<v1::KvChunk>* out);
  // AddLayer for several layers at once, in order; the chunks are the same.
  // On CUDA their blocks are quantized together and reach the host in one
  // device-to-host copy (one synchronization instead of two per layer).
  absl::Status AddLayers(absl::Span<const LayerTensors> layers,
                         std::vector<v1::KvChunk>* out);
  // The trailer; FAILED_PRECONDITION if a planned layer is missing.
  absl::StatusOr<v1::KvChunk> Finish(double compute_seconds);

  const TransferPlan& plan() const { return plan_; }
  const ByteAccounting& accounting() const { return writer_.accounting(); }
  double encode_seconds() const { return encode_seconds_; }
  // The exact bound the plan was checked against.
  int64_t predicted_bytes() const { return predicted_bytes_; }

 private:
  KvStreamEncoder(const v1::ModelInfo& model, TransferPlan plan,
                  std::string request_id);
  absl::Status EmitHeader(const std::vector<uint32_t>* shared,
                          std::vector<v1::KvChunk>* out);
  // A planned layer with its tensors.
  struct PlannedLayer {
    const LayerTransfer* transfer = nullptr;
    at::Tensor keys;
    at::Tensor values;
  };
  // Selects, encodes and frames `layers`' blocks, K then V per layer.
  absl::Status EncodeLayers(const std::vector<PlannedLayer>& layers,
                            std::vector<v1::KvChunk>* out);
  absl::Status EmitBufferedLayers(std::vector<v1::KvChunk>* out);

  v1::ModelInfo model_;
  TransferPlan plan_;
  std::string request_id_;
  KvChunkWriter writer_;
  bool started_ = false;
  bool header_sent_ = false;
  std::vector<uint32_t> shared_indices_;
  EncodedIndices shared_encoded_;
  std::map<uint32_t, std::pair<at::Tensor, at::Tensor>> buffered_;
  std::map<uint32_t, bool> done_;
  double encode_seconds_ = 0;
  int64_t predicted_bytes_ = 0;
};

// One decoded sharer layer: the selected token positions (ascending) and the
// dequantized keys and values at those positions.
struct DecodedLayer {
  uint32_t layer = 0;
  std::vector<uint32_t> token_indices;
  at::Tensor keys;    // [kv_heads, n, head_dim]
  at::Tensor values;  // [kv_heads, n, head_dim]
};

// Consumes a KvChunk stream and yields each layer once both its blocks have
// arrived and decoded. With `defer_decode`, Consume only validates and keeps
// the blocks (no device work while the stream arrives) and DecodeHeld
// decodes everything kept in one batch. Not thread-safe.
class KvStreamDecoder {
 public:
  KvStreamDecoder(at::ScalarType dtype, at::Device device,
                  bool defer_decode = false);

  // The layers `chunk` completes, in the order their last block arrived
  // (several for a batch of blocks, KvChunk.blocks; with defer_decode
  // none). Errors as KvChunkReader::Consume, and DATA_LOSS for blocks that
  // do not decode.
  absl::StatusOr<std::vector<DecodedLayer>> ConsumeAll(
      const v1::KvChunk& chunk);
  // ConsumeAll for callers that expect at most one layer per chunk (streams
  // without batches, or defer_decode): FAILED_PRECONDITION if a batch
  // completed more than one layer.
  absl::StatusOr<std::optional<DecodedLayer>> Consume(const v1::KvChunk& chunk);
  // The layers completed by the blocks kept so far (defer_decode), decoded
  // together (DecodeBlocksValues); DATA_LOSS as Consume.
  absl::StatusOr<std::vector<DecodedLayer>> DecodeHeld();
  // DATA_LOSS unless a complete stream (trailer included) was consumed.
  absl::Status Finish() const { return reader_.Finish(); }

  bool has_header() const { return reader_.has_header(); }
  const v1::KvHeader& header() const { return reader_.header(); }
  const std::optional<v1::TransferStats>& stats() const { return stats_; }
  const ByteAccounting& accounting() const { return reader_.accounting(); }
  double decode_seconds() const { return decode_seconds_; }

 private:
  absl::StatusOr<std::vector<uint32_t>> BlockIndices(const v1::KvBlock& block);
  // One checked block: kept (defer_decode) or decoded and paired.
  absl::StatusOr<std::optional<DecodedLayer>> ConsumeBlock(v1::KvBlock block);
  // Pairs a decoded block with its layer's other part; the layer once both
  // are in.
  absl::StatusOr<std::optional<DecodedLayer>> AddBlock(
      const v1::KvBlock& block, std::vector<uint32_t> indices,
      at::Tensor tensor);

  struct HeldBlock {
    v1::KvBlock block;
    std::vector<uint32_t> indices;
  };

  at::ScalarType dtype_;
  at::Device device_;
  bool defer_ = false;
  std::vector<HeldBlock> held_;
  KvChunkReader reader_;
  std::vector<uint32_t> shared_indices_;
  std::map<uint32_t, DecodedLayer> pending_;
  std::optional<v1::TransferStats> stats_;
  double decode_seconds_ = 0;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_KV_CODEC_H_
