// Framing of a KvChunk stream: splitting blocks into fragments so no message
// exceeds the chunk size, exact byte accounting of what is serialized, and
// the receiving side's structural validation and reassembly. Pure protobuf:
// no Torch, no gRPC.
#ifndef KVWIRE_COMMON_CODEC_KV_STREAM_H_
#define KVWIRE_COMMON_CODEC_KV_STREAM_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// Serialized bytes by kind. header = everything that is not payload, scale
// or index bytes (metadata, protobuf tags and lengths, chunk framing).
struct ByteCounts {
  int64_t payload = 0;
  int64_t scale = 0;
  int64_t index = 0;
  int64_t header = 0;
  int64_t total() const { return payload + scale + index + header; }
  ByteCounts& operator+=(const ByteCounts& o);
};

// Per-layer and total byte counts of the chunks produced or consumed so far.
// The total equals the sum of KvChunk::ByteSizeLong() over those chunks.
class ByteAccounting {
 public:
  // `layer` is nullopt for stream-level messages (header, trailer).
  void Add(std::optional<uint32_t> layer, const ByteCounts& counts);
  const ByteCounts& total() const { return total_; }
  const ByteCounts& stream_level() const { return stream_level_; }
  const std::map<uint32_t, ByteCounts>& per_layer() const { return per_layer_; }
  int64_t chunks() const { return chunks_; }
  void CountChunk() { ++chunks_; }

 private:
  ByteCounts total_;
  ByteCounts stream_level_;
  std::map<uint32_t, ByteCounts> per_layer_;
  int64_t chunks_ = 0;
};

// Byte counts of one block, charged as it is framed in `chunk_bytes`.
ByteCounts BlockByteCounts(const v1::KvBlock& block, int64_t chunk_bytes);

// Serialized size of one block's entry in a KvChunk: as KvChunk.block or as
// one entry of KvChunk.blocks, a one-byte tag, the length, the block.
int64_t BlockEntryBytes(int64_t block_bytes);

// Produces the KvChunk messages of one stream. Not thread-safe.
class KvChunkWriter {
 public:
  explicit KvChunkWriter(uint32_t chunk_size) : chunk_size_(chunk_size) {}

  // Appends the header chunk. INVALID_ARGUMENT if it exceeds the chunk size.
  absl::Status AddHeader(v1::KvHeader header, std::vector<v1::KvChunk>* out);
  // Appends one KvChunk, or KvBlockFragments when the block does not fit.
  absl::Status AddBlock(v1::KvBlock block, std::vector<v1::KvChunk>* out);
  // The trailer: `stats` gets the byte figures of everything before it.
  v1::KvChunk MakeTrailer(v1::TransferStats stats);

  const ByteAccounting& accounting() const { return accounting_; }
  int64_t blocks() const { return blocks_; }

 private:
  uint32_t chunk_size_;
  ByteAccounting accounting_;
  int64_t blocks_ = 0;
};

// Consumes a KvChunk stream in order and validates its structure: one header
// first; blocks of layers the header announced, each (layer, part) once,
// with the header's shapes; fragments contiguous and complete; checksums; a
// trailer last whose figures match what arrived. Not thread-safe.
class KvChunkReader {
 public:
  struct Event {
    // kBlockBatch: a KvChunk whose `blocks` carried several whole blocks.
    enum class Kind { kNone, kHeader, kBlock, kBlockBatch, kTrailer };
    Kind kind = Kind::kNone;
    const v1::KvHeader* header = nullptr;      // kHeader; owned by the reader.
    v1::KvBlock block;                         // kBlock.
    std::vector<v1::KvBlock> blocks;           // kBlockBatch, in order.
    const v1::TransferStats* stats = nullptr;  // kTrailer.
  };

  // `max_block_bytes` caps a reassembled block (defends memory).
  explicit KvChunkReader(int64_t max_block_bytes = int64_t{1} << 31)
      : max_block_bytes_(max_block_bytes) {}

  // DATA_LOSS for anything out of order, corrupt or inconsistent;
  // INVALID_ARGUMENT for an unsupported protocol version. A batch of blocks
  // (KvChunk.blocks) is checked block by block, in order, exactly as if each
  // had come in its own KvChunk{block}; each is charged the bytes that
  // message would have had (the batch's size is their sum), and the batch
  // counts as one chunk.
  absl::StatusOr<Event> Consume(const v1::KvChunk& chunk);
  // DATA_LOSS unless the stream ended with a trailer after every block.
  absl::Status Finish() const;

  const v1::KvHeader& header() const { return header_; }
  bool has_header() const { return has_header_; }
  const ByteAccounting& accounting() const { return accounting_; }

 private:
  absl::StatusOr<Event> AcceptBlock(v1::KvBlock block, int64_t chunk_bytes);
  absl::Status CheckAllBlocksArrived() const;

  int64_t max_block_bytes_;
  bool has_header_ = false;
  bool has_trailer_ = false;
  v1::KvHeader header_;
  v1::TransferStats trailer_stats_;
  std::map<uint32_t, uint32_t> expected_tokens_;  // layer -> selected tokens
  std::set<std::pair<uint32_t, int>> seen_blocks_;
  // Fragment reassembly.
  std::string fragment_data_;
  uint32_t fragment_count_ = 0;
  uint32_t next_fragment_ = 0;
  int64_t fragment_chunk_bytes_ = 0;
  ByteAccounting accounting_;
};

// Takes the next message to send off the front of `pending` (non-empty):
// the front chunk as it is, or, when it is a KvChunk{block} and the chunks
// after it are too, up to `max_blocks` of them moved into one
// KvChunk{blocks} whose serialized size stays within `max_bytes` (the
// stream's chunk_size_bytes). A batch serializes to exactly the sum of the
// chunks it replaces. `*merged` (optional) gets the number of blocks that
// stopped being messages of their own (batch size - 1).
v1::KvChunk TakeNextMessage(std::deque<v1::KvChunk>& pending,
                            int64_t max_blocks, int64_t max_bytes,
                            int64_t* merged = nullptr);

// TakeNextMessage over a whole stream: the messages a sender batching every
// run of consecutive blocks would send.
std::vector<v1::KvChunk> BatchBlockChunks(std::vector<v1::KvChunk> chunks,
                                          int64_t max_blocks,
                                          int64_t max_bytes);

// Checksum of a block as docs/PROTOCOL.md defines it (crc32c field excluded).
uint32_t BlockChecksum(const v1::KvBlock& block);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_KV_STREAM_H_
