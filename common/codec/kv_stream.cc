#include "common/codec/kv_stream.h"

#include <google/protobuf/io/coded_stream.h>

#include <cstring>
#include <deque>
#include <iterator>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec/scheme.h"
#include "common/codec/transfer_plan.h"
#include "common/crc32c.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

std::string BlockName(uint32_t layer, v1::KvPart part) {
  return absl::StrCat("layer ", layer, " ",
                      part == v1::KV_PART_KEY     ? "K"
                      : part == v1::KV_PART_VALUE ? "V"
                                                  : "?",
                      " block");
}

uint32_t ExtendU32(uint32_t crc, uint32_t v) {
  unsigned char le[4] = {
      static_cast<unsigned char>(v), static_cast<unsigned char>(v >> 8),
      static_cast<unsigned char>(v >> 16), static_cast<unsigned char>(v >> 24)};
  return Crc32cExtend(crc, le, 4);
}

uint32_t ExtendBytes(uint32_t crc, const std::string& bytes) {
  crc = ExtendU32(crc, static_cast<uint32_t>(bytes.size()));
  return Crc32cExtend(crc, bytes.data(), bytes.size());
}

}  // namespace

ByteCounts& ByteCounts::operator+=(const ByteCounts& o) {
  payload += o.payload;
  scale += o.scale;
  index += o.index;
  header += o.header;
  return *this;
}

void ByteAccounting::Add(std::optional<uint32_t> layer,
                         const ByteCounts& counts) {
  total_ += counts;
  if (layer.has_value()) {
    per_layer_[*layer] += counts;
  } else {
    stream_level_ += counts;
  }
}

ByteCounts BlockByteCounts(const v1::KvBlock& block, int64_t chunk_bytes) {
  ByteCounts c;
  c.payload = block.values().size();
  c.scale = block.scales().size() + block.zero_points().size();
  c.index = block.token_indices().size();
  c.header = chunk_bytes - c.payload - c.scale - c.index;
  return c;
}

int64_t BlockEntryBytes(int64_t block_bytes) {
  return 1 +
         google::protobuf::io::CodedOutputStream::VarintSize64(
             static_cast<uint64_t>(block_bytes)) +
         block_bytes;
}

uint32_t BlockChecksum(const v1::KvBlock& block) {
  uint32_t crc = 0;
  for (uint32_t v :
       {block.layer(), static_cast<uint32_t>(block.part()),
        static_cast<uint32_t>(block.scheme()),
        static_cast<uint32_t>(block.granularity()), block.group_size(),
        static_cast<uint32_t>(block.asymmetric()), block.kv_heads(),
        block.head_dim(), block.selected_tokens(),
        static_cast<uint32_t>(block.index_encoding()),
        static_cast<uint32_t>(block.entropy()), block.values_raw_size()}) {
    crc = ExtendU32(crc, v);
  }
  crc = ExtendBytes(crc, block.token_indices());
  crc = ExtendBytes(crc, block.scales());
  crc = ExtendBytes(crc, block.zero_points());
  crc = ExtendBytes(crc, block.values());
  return crc;
}

v1::KvChunk TakeNextMessage(std::deque<v1::KvChunk>& pending,
                            int64_t max_blocks, int64_t max_bytes,
                            int64_t* merged) {
  v1::KvChunk first = std::move(pending.front());
  pending.pop_front();
  if (merged != nullptr) *merged = 0;
  if (max_blocks <= 1 || !first.has_block() || pending.empty() ||
      !pending.front().has_block()) {
    return first;
  }
  int64_t bytes = BlockEntryBytes(first.block().ByteSizeLong());
  v1::KvChunk batch;
  // Moves (swaps) the blocks' bytes, never copies them.
  *batch.add_blocks() = std::move(*first.mutable_block());
  while (batch.blocks_size() < max_blocks && !pending.empty() &&
         pending.front().has_block()) {
    const int64_t entry =
        BlockEntryBytes(pending.front().block().ByteSizeLong());
    if (bytes + entry > max_bytes) break;
    bytes += entry;
    *batch.add_blocks() = std::move(*pending.front().mutable_block());
    pending.pop_front();
  }
  if (batch.blocks_size() == 1) {
    // Nothing joined it: send the block as it came.
    *first.mutable_block() = std::move(*batch.mutable_blocks(0));
    return first;
  }
  if (merged != nullptr) *merged = batch.blocks_size() - 1;
  return batch;
}

std::vector<v1::KvChunk> BatchBlockChunks(std::vector<v1::KvChunk> chunks,
                                          int64_t max_blocks,
                                          int64_t max_bytes) {
  std::deque<v1::KvChunk> pending(std::make_move_iterator(chunks.begin()),
                                  std::make_move_iterator(chunks.end()));
  std::vector<v1::KvChunk> out;
  while (!pending.empty()) {
    out.push_back(TakeNextMessage(pending, max_blocks, max_bytes));
  }
  return out;
}

absl::Status KvChunkWriter::AddHeader(v1::KvHeader header,
                                      std::vector<v1::KvChunk>* out) {
  v1::KvChunk chunk;
  *chunk.mutable_header() = std::move(header);
  const int64_t size = chunk.ByteSizeLong();
  if (size > chunk_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("stream header of ", size,
                     " bytes exceeds chunk_size_bytes ", chunk_size_));
  }
  ByteCounts c;
  c.index = chunk.header().shared_token_indices().size();
  c.header = size - c.index;
  accounting_.Add(std::nullopt, c);
  accounting_.CountChunk();
  out->push_back(std::move(chunk));
  return absl::OkStatus();
}

absl::Status KvChunkWriter::AddBlock(v1::KvBlock block,
                                     std::vector<v1::KvChunk>* out) {
  const uint32_t layer = block.layer();
  const std::string name = BlockName(layer, block.part());
  const int64_t block_bytes = block.ByteSizeLong();
  const int64_t framed = ChunkedBlockBytes(block_bytes, chunk_size_);
  const ByteCounts counts = BlockByteCounts(block, framed);
  const size_t first = out->size();
  const int64_t single_chunk_bytes = BlockEntryBytes(block_bytes);
  if (single_chunk_bytes <= chunk_size_) {
    v1::KvChunk chunk;
    *chunk.mutable_block() = std::move(block);
    out->push_back(std::move(chunk));
  } else {
    const std::string data = block.SerializeAsString();
    const int64_t capacity = FragmentCapacity(chunk_size_);
    const int64_t count = (block_bytes + capacity - 1) / capacity;
    for (int64_t i = 0; i < count; ++i) {
      v1::KvChunk chunk;
      v1::KvBlockFragment* f = chunk.mutable_fragment();
      f->set_index(static_cast<uint32_t>(i));
      f->set_count(static_cast<uint32_t>(count));
      f->set_data(data.substr(i * capacity, capacity));
      out->push_back(std::move(chunk));
    }
  }
  int64_t actual = 0;
  for (size_t i = first; i < out->size(); ++i) {
    actual += (*out)[i].ByteSizeLong();
    accounting_.CountChunk();
  }
  if (actual != framed) {
    return absl::InternalError(absl::StrCat(
        "framing of ", name, " took ", actual, " bytes, predicted ", framed));
  }
  accounting_.Add(layer, counts);
  ++blocks_;
  return absl::OkStatus();
}

v1::KvChunk KvChunkWriter::MakeTrailer(v1::TransferStats stats) {
  const ByteCounts& t = accounting_.total();
  stats.set_payload_bytes(t.payload);
  stats.set_scale_bytes(t.scale);
  stats.set_index_bytes(t.index);
  stats.set_header_bytes(t.header);
  stats.set_serialized_bytes(t.total());
  stats.set_blocks(static_cast<uint32_t>(blocks_));
  stats.set_chunks(static_cast<uint32_t>(accounting_.chunks()));
  v1::KvChunk chunk;
  *chunk.mutable_trailer()->mutable_stats() = std::move(stats);
  return chunk;
}

absl::StatusOr<KvChunkReader::Event> KvChunkReader::Consume(
    const v1::KvChunk& chunk) {
  if (has_trailer_) {
    return absl::DataLossError("chunk received after the stream trailer");
  }
  const int64_t chunk_bytes = chunk.ByteSizeLong();
  if (fragment_count_ != 0 && chunk.body_case() != v1::KvChunk::kFragment) {
    return absl::DataLossError(
        absl::StrCat("block fragments interrupted after ", next_fragment_,
                     " of ", fragment_count_));
  }
  if (chunk.blocks_size() > 0) {
    if (chunk.body_case() != v1::KvChunk::BODY_NOT_SET) {
      return absl::DataLossError(
          "KvChunk carries both a batch of blocks and another body");
    }
    accounting_.CountChunk();
    Event e;
    e.kind = Event::Kind::kBlockBatch;
    e.blocks.reserve(chunk.blocks_size());
    const int n = chunk.blocks_size();
    int64_t charged = 0;
    for (int i = 0; i < n; ++i) {
      const v1::KvBlock& block = chunk.blocks(i);
      // Each block is charged what its own KvChunk{block} would have been;
      // the last also takes whatever else the message carried (unknown
      // fields), so that the total stays the sum of serialized sizes.
      const int64_t entry_bytes = i + 1 < n
                                      ? BlockEntryBytes(block.ByteSizeLong())
                                      : chunk_bytes - charged;
      charged += entry_bytes;
      absl::StatusOr<Event> accepted = AcceptBlock(block, entry_bytes);
      if (!accepted.ok()) {
        return absl::Status(
            accepted.status().code(),
            absl::StrCat(accepted.status().message(), " (block ", i + 1,
                         " of a ", n, "-block message)"));
      }
      e.blocks.push_back(std::move(accepted->block));
    }
    return e;
  }
  switch (chunk.body_case()) {
    case v1::KvChunk::kHeader: {
      if (has_header_) return absl::DataLossError("second stream header");
      const v1::KvHeader& h = chunk.header();
      if (h.protocol_version() != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "unsupported kvwire protocol version ", h.protocol_version()));
      }
      if (h.token_count() == 0 || h.model().num_kv_heads() == 0 ||
          h.model().head_dim() == 0) {
        return absl::DataLossError("stream header has empty dimensions");
      }
      for (const v1::LayerPlan& lp : h.layers()) {
        if (lp.selected_tokens() > h.token_count()) {
          return absl::DataLossError(absl::StrCat(
              "header plans ", lp.selected_tokens(), " tokens for layer ",
              lp.layer(), " of a ", h.token_count(), "-token prompt"));
        }
        if (!expected_tokens_.emplace(lp.layer(), lp.selected_tokens())
                 .second) {
          return absl::DataLossError(
              absl::StrCat("header lists layer ", lp.layer(), " twice"));
        }
      }
      header_ = h;
      has_header_ = true;
      ByteCounts c;
      c.index = h.shared_token_indices().size();
      c.header = chunk_bytes - c.index;
      accounting_.Add(std::nullopt, c);
      accounting_.CountChunk();
      Event e;
      e.kind = Event::Kind::kHeader;
      e.header = &header_;
      return e;
    }
    case v1::KvChunk::kBlock:
      accounting_.CountChunk();
      return AcceptBlock(chunk.block(), chunk_bytes);
    case v1::KvChunk::kFragment: {
      const v1::KvBlockFragment& f = chunk.fragment();
      if (fragment_count_ == 0) {
        if (f.index() != 0 || f.count() < 2) {
          return absl::DataLossError(
              absl::StrCat("fragment ", f.index(), " of ", f.count(),
                           " does not start a fragmented block"));
        }
        fragment_count_ = f.count();
        next_fragment_ = 0;
        fragment_data_.clear();
        fragment_chunk_bytes_ = 0;
      }
      if (f.index() != next_fragment_ || f.count() != fragment_count_) {
        return absl::DataLossError(absl::StrCat(
            "expected fragment ", next_fragment_, " of ", fragment_count_,
            ", got ", f.index(), " of ", f.count()));
      }
      if (static_cast<int64_t>(fragment_data_.size() + f.data().size()) >
          max_block_bytes_) {
        return absl::DataLossError(absl::StrCat("fragmented block exceeds ",
                                                max_block_bytes_, " bytes"));
      }
      fragment_data_.append(f.data());
      fragment_chunk_bytes_ += chunk_bytes;
      accounting_.CountChunk();
      if (++next_fragment_ < fragment_count_) return Event{};
      fragment_count_ = 0;
      v1::KvBlock block;
      if (!block.ParseFromString(fragment_data_)) {
        return absl::DataLossError("reassembled fragments are not a KvBlock");
      }
      fragment_data_.clear();
      return AcceptBlock(std::move(block), fragment_chunk_bytes_);
    }
    case v1::KvChunk::kTrailer: {
      RETURN_IF_ERROR(CheckAllBlocksArrived());
      const v1::TransferStats& s = chunk.trailer().stats();
      if (static_cast<int64_t>(s.serialized_bytes()) !=
          accounting_.total().total()) {
        return absl::DataLossError(absl::StrCat(
            "trailer reports ", s.serialized_bytes(),
            " serialized bytes, stream carried ", accounting_.total().total()));
      }
      if (s.blocks() != seen_blocks_.size()) {
        return absl::DataLossError(absl::StrCat("trailer reports ", s.blocks(),
                                                " blocks, stream carried ",
                                                seen_blocks_.size()));
      }
      has_trailer_ = true;
      trailer_stats_ = s;
      Event e;
      e.kind = Event::Kind::kTrailer;
      e.stats = &trailer_stats_;
      return e;
    }
    default:
      return absl::DataLossError("empty KvChunk");
  }
}

absl::StatusOr<KvChunkReader::Event> KvChunkReader::AcceptBlock(
    v1::KvBlock block, int64_t chunk_bytes) {
  const std::string name = BlockName(block.layer(), block.part());
  if (!has_header_) {
    return absl::DataLossError(name + " arrived before the stream header");
  }
  if (block.part() != v1::KV_PART_KEY && block.part() != v1::KV_PART_VALUE) {
    return absl::DataLossError(name + " has no K/V part");
  }
  auto expected = expected_tokens_.find(block.layer());
  if (expected == expected_tokens_.end()) {
    return absl::DataLossError(name + " was not announced in the header");
  }
  if (!seen_blocks_.emplace(block.layer(), block.part()).second) {
    return absl::DataLossError(name + " received twice");
  }
  if (block.kv_heads() != header_.model().num_kv_heads() ||
      block.head_dim() != header_.model().head_dim()) {
    return absl::DataLossError(absl::StrCat(
        name, " shape [", block.kv_heads(), ", *, ", block.head_dim(),
        "] differs from the header's [", header_.model().num_kv_heads(),
        ", *, ", header_.model().head_dim(), "]"));
  }
  if (block.selected_tokens() != expected->second) {
    return absl::DataLossError(
        absl::StrCat(name, " carries ", block.selected_tokens(),
                     " tokens, header planned ", expected->second));
  }
  const uint32_t crc = BlockChecksum(block);
  if (crc != block.crc32c()) {
    return absl::DataLossError(
        absl::StrCat(name, " failed its CRC-32C check (computed ", crc,
                     ", carried ", block.crc32c(), ")"));
  }
  accounting_.Add(block.layer(), BlockByteCounts(block, chunk_bytes));
  Event e;
  e.kind = Event::Kind::kBlock;
  e.block = std::move(block);
  return e;
}

absl::Status KvChunkReader::Finish() const {
  RETURN_IF_ERROR(CheckAllBlocksArrived());
  if (!has_trailer_) {
    return absl::DataLossError("stream ended without its trailer");
  }
  return absl::OkStatus();
}

absl::Status KvChunkReader::CheckAllBlocksArrived() const {
  if (!has_header_) return absl::DataLossError("stream ended without a header");
  if (fragment_count_ != 0) {
    return absl::DataLossError("stream ended inside a fragmented block");
  }
  if (seen_blocks_.size() != 2 * expected_tokens_.size()) {
    return absl::DataLossError(
        absl::StrCat("stream carried ", seen_blocks_.size(), " of ",
                     2 * expected_tokens_.size(), " announced blocks"));
  }
  return absl::OkStatus();
}

}  // namespace kvwire
