#include "common/codec/entropy.h"

#include <zstd.h>

#include "absl/strings/str_cat.h"

namespace kvwire {

absl::StatusOr<std::string> ZstdCompress(absl::string_view data, int level) {
  if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("zstd level ", level, " outside [", ZSTD_minCLevel(), ", ",
                     ZSTD_maxCLevel(), "]"));
  }
  std::string out(ZSTD_compressBound(data.size()), '\0');
  const size_t n =
      ZSTD_compress(out.data(), out.size(), data.data(), data.size(), level);
  if (ZSTD_isError(n)) {
    return absl::InternalError(
        absl::StrCat("zstd compression failed: ", ZSTD_getErrorName(n)));
  }
  out.resize(n);
  return out;
}

absl::StatusOr<std::string> ZstdDecompress(absl::string_view frame,
                                           size_t expected_size) {
  const unsigned long long declared =
      ZSTD_getFrameContentSize(frame.data(), frame.size());
  if (declared == ZSTD_CONTENTSIZE_ERROR) {
    return absl::DataLossError("zstd frame header is corrupt");
  }
  if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != expected_size) {
    return absl::DataLossError(absl::StrCat("zstd frame declares ", declared,
                                            " bytes, block expects ",
                                            expected_size));
  }
  std::string out(expected_size, '\0');
  const size_t n =
      ZSTD_decompress(out.data(), out.size(), frame.data(), frame.size());
  if (ZSTD_isError(n)) {
    return absl::DataLossError(
        absl::StrCat("zstd decompression failed: ", ZSTD_getErrorName(n)));
  }
  if (n != expected_size) {
    return absl::DataLossError(absl::StrCat(
        "zstd frame expands to ", n, " bytes, block expects ", expected_size));
  }
  return out;
}

}  // namespace kvwire
