// Optional lossless stage over a block's packed values (zstd).
#ifndef KVWIRE_COMMON_CODEC_ENTROPY_H_
#define KVWIRE_COMMON_CODEC_ENTROPY_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {

// Compresses `data` as one zstd frame at `level` (0 = zstd's default).
// INVALID_ARGUMENT for a level outside zstd's range; INTERNAL on failure.
absl::StatusOr<std::string> ZstdCompress(absl::string_view data, int level);

// Decompresses one frame that must expand to exactly `expected_size` bytes.
// DATA_LOSS for corrupt frames or any size mismatch; the output buffer is
// never larger than `expected_size`, so a hostile frame cannot balloon memory.
absl::StatusOr<std::string> ZstdDecompress(absl::string_view frame,
                                           size_t expected_size);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_ENTROPY_H_
