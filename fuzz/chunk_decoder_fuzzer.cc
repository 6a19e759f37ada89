// Fuzzes the receiving side of a KvChunk stream: framing, batches of
// blocks, reassembly, checksums, index decoding, zstd and dequantization. Input
// format: a sequence of [u32 little-endian length][serialized KvChunk] records.
// Checksums are recomputed for blocks half of the time (by a flag bit), so
// the fuzzer also reaches the decoding behind the CRC check.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>

#include "common/codec/kv_codec.h"
#include "google/protobuf/stubs/logging.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool init = [] {
    at::set_num_threads(1);
    // Invalid UTF-8 in string fields is expected input; keep the log quiet.
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)init;
  if (size < 1) return 0;
  const bool fix_checksums = data[0] & 1;
  ++data;
  --size;
  kvwire::KvStreamDecoder decoder(at::kFloat, at::kCPU);
  while (size >= 4) {
    uint32_t len;
    std::memcpy(&len, data, 4);
    data += 4;
    size -= 4;
    if (len > size) len = static_cast<uint32_t>(size);
    kvwire::v1::KvChunk chunk;
    if (!chunk.ParseFromArray(data, static_cast<int>(len))) return 0;
    data += len;
    size -= len;
    if (fix_checksums && chunk.has_block()) {
      chunk.mutable_block()->set_crc32c(kvwire::BlockChecksum(chunk.block()));
    }
    if (fix_checksums) {
      for (kvwire::v1::KvBlock& block : *chunk.mutable_blocks()) {
        block.set_crc32c(kvwire::BlockChecksum(block));
      }
    }
    // ConsumeAll: a batch of blocks (KvChunk.blocks) may complete several
    // layers.
    auto layers = decoder.ConsumeAll(chunk);
    if (!layers.ok()) return 0;
  }
  (void)decoder.Finish();
  return 0;
}
