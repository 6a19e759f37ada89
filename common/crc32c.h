// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum carried
// by every KvBlock. Uses the SSE4.2 crc32 instruction when the CPU has it and
// a slicing-by-8 table otherwise; both give identical results.
#ifndef KVWIRE_COMMON_CRC32C_H_
#define KVWIRE_COMMON_CRC32C_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace kvwire {

// Extends `crc` (the value returned for the preceding bytes; 0 to start)
// over `size` bytes at `data`.
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size);

inline uint32_t Crc32c(absl::string_view bytes) {
  return Crc32cExtend(0, bytes.data(), bytes.size());
}

// The portable implementation, exposed so tests can compare the two paths.
uint32_t Crc32cExtendPortable(uint32_t crc, const void* data, size_t size);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CRC32C_H_
