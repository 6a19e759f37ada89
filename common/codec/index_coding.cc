#include "common/codec/index_coding.h"

#include <algorithm>
#include <cstddef>

#include "absl/numeric/bits.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvwire {
namespace {

constexpr int kMaxVarintBytes = 5;  // ceil(32 / 7).

int64_t BitmapBytes(uint32_t total_tokens) {
  return (static_cast<int64_t>(total_tokens) + 7) / 8;
}

int VarintSize(uint32_t value) {
  int size = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++size;
  }
  return size;
}

void AppendVarint(uint32_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

absl::Status CheckTotalTokens(uint32_t total_tokens) {
  if (total_tokens > kMaxIndexTokens) {
    return absl::InvalidArgumentError(absl::StrCat("token count ", total_tokens,
                                                   " exceeds the limit of ",
                                                   kMaxIndexTokens));
  }
  return absl::OkStatus();
}

absl::Status CountMismatch(absl::string_view what, uint64_t got,
                           uint32_t expected) {
  return absl::DataLossError(
      absl::StrCat(what, " holds ", got, " indices, expected ", expected));
}

absl::StatusOr<std::vector<uint32_t>> DecodeBitmap(absl::string_view bytes,
                                                   uint32_t total_tokens,
                                                   uint32_t expected_count) {
  const int64_t want = BitmapBytes(total_tokens);
  if (static_cast<int64_t>(bytes.size()) != want) {
    return absl::DataLossError(absl::StrCat("index bitmap has ", bytes.size(),
                                            " bytes, expected ", want, " for ",
                                            total_tokens, " tokens"));
  }
  const uint32_t tail_bits = total_tokens % 8;
  if (tail_bits != 0) {
    const uint8_t last = static_cast<uint8_t>(bytes.back());
    if ((last >> tail_bits) != 0) {
      return absl::DataLossError("index bitmap has non-zero padding bits");
    }
  }
  uint64_t count = 0;
  for (char c : bytes) {
    count += static_cast<uint64_t>(absl::popcount(static_cast<uint8_t>(c)));
  }
  if (count != expected_count) {
    return CountMismatch("index bitmap", count, expected_count);
  }
  std::vector<uint32_t> indices;
  indices.reserve(expected_count);
  for (size_t byte = 0; byte < bytes.size(); ++byte) {
    uint8_t bits = static_cast<uint8_t>(bytes[byte]);
    while (bits != 0) {
      const int bit = absl::countr_zero(bits);
      indices.push_back(static_cast<uint32_t>(byte * 8 + bit));
      bits = static_cast<uint8_t>(bits & (bits - 1));
    }
  }
  return indices;
}

absl::StatusOr<std::vector<uint32_t>> DecodeDeltaVarint(
    absl::string_view bytes, uint32_t total_tokens, uint32_t expected_count) {
  std::vector<uint32_t> indices;
  // Every index takes at least one byte.
  indices.reserve(std::min<size_t>(expected_count, bytes.size()));
  uint64_t next_min = 0;  // Smallest value the next index may take.
  size_t pos = 0;
  while (pos < bytes.size()) {
    uint64_t delta = 0;
    int length = 0;
    bool done = false;
    while (!done) {
      if (pos >= bytes.size()) {
        return absl::DataLossError(
            absl::StrCat("truncated varint in token indices at byte ", pos));
      }
      if (length == kMaxVarintBytes) {
        return absl::DataLossError(
            absl::StrCat("varint longer than ", kMaxVarintBytes,
                         " bytes in token indices at byte ", pos));
      }
      const uint8_t b = static_cast<uint8_t>(bytes[pos++]);
      delta |= static_cast<uint64_t>(b & 0x7F) << (7 * length);
      ++length;
      done = (b & 0x80) == 0;
    }
    if (delta > UINT32_MAX) {
      return absl::DataLossError(absl::StrCat(
          "varint overflows 32 bits in token indices before byte ", pos));
    }
    const uint64_t index = next_min + delta;
    if (index >= total_tokens) {
      return absl::DataLossError(absl::StrCat(
          "token index ", index, " out of range [0, ", total_tokens, ")"));
    }
    if (indices.size() >= expected_count) {
      return CountMismatch("delta-varint token indices", indices.size() + 1,
                           expected_count);
    }
    indices.push_back(static_cast<uint32_t>(index));
    next_min = index + 1;
  }
  if (indices.size() != expected_count) {
    return CountMismatch("delta-varint token indices", indices.size(),
                         expected_count);
  }
  return indices;
}

}  // namespace

absl::StatusOr<EncodedIndices> EncodeTokenIndices(
    absl::Span<const uint32_t> indices, uint32_t total_tokens) {
  if (absl::Status s = CheckTotalTokens(total_tokens); !s.ok()) return s;
  int64_t varint_bytes = 0;
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] >= total_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("token index ", indices[i], " at position ", i,
                       " out of range [0, ", total_tokens, ")"));
    }
    if (i > 0 && indices[i] <= indices[i - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("token indices not strictly ascending at position ", i,
                       " (", indices[i - 1], " then ", indices[i], ")"));
    }
    varint_bytes +=
        VarintSize(i == 0 ? indices[0] : indices[i] - indices[i - 1] - 1);
  }
  EncodedIndices out;
  // Strictly ascending and < T: the set is 0..T-1 exactly when it has T
  // elements.
  if (indices.size() == total_tokens) {
    out.encoding = v1::INDEX_ENCODING_ALL;
    return out;
  }
  const int64_t bitmap_bytes = BitmapBytes(total_tokens);
  if (bitmap_bytes <= varint_bytes) {
    out.encoding = v1::INDEX_ENCODING_BITMAP;
    out.bytes.assign(static_cast<size_t>(bitmap_bytes), '\0');
    for (uint32_t index : indices) {
      out.bytes[index / 8] = static_cast<char>(
          static_cast<uint8_t>(out.bytes[index / 8]) | (1u << (index % 8)));
    }
  } else {
    out.encoding = v1::INDEX_ENCODING_DELTA_VARINT;
    out.bytes.reserve(static_cast<size_t>(varint_bytes));
    for (size_t i = 0; i < indices.size(); ++i) {
      AppendVarint(i == 0 ? indices[0] : indices[i] - indices[i - 1] - 1,
                   &out.bytes);
    }
  }
  return out;
}

absl::StatusOr<std::vector<uint32_t>> DecodeTokenIndices(
    v1::IndexEncoding encoding, absl::string_view bytes, uint32_t total_tokens,
    uint32_t expected_count) {
  switch (encoding) {
    case v1::INDEX_ENCODING_ALL:
    case v1::INDEX_ENCODING_BITMAP:
    case v1::INDEX_ENCODING_DELTA_VARINT:
      break;
    case v1::INDEX_ENCODING_SHARED:
      return absl::InvalidArgumentError(
          "INDEX_ENCODING_SHARED must be resolved against the header's shared "
          "selection by the caller");
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown or unspecified index encoding ",
                       static_cast<int>(encoding)));
  }
  if (absl::Status s = CheckTotalTokens(total_tokens); !s.ok()) return s;
  if (expected_count > total_tokens) {
    return absl::DataLossError(absl::StrCat("expected ", expected_count,
                                            " indices out of only ",
                                            total_tokens, " tokens"));
  }
  switch (encoding) {
    case v1::INDEX_ENCODING_ALL: {
      if (!bytes.empty()) {
        return absl::DataLossError(absl::StrCat("INDEX_ENCODING_ALL carries ",
                                                bytes.size(), " index bytes"));
      }
      if (expected_count != total_tokens) {
        return CountMismatch("INDEX_ENCODING_ALL", total_tokens,
                             expected_count);
      }
      std::vector<uint32_t> indices(total_tokens);
      for (uint32_t i = 0; i < total_tokens; ++i) indices[i] = i;
      return indices;
    }
    case v1::INDEX_ENCODING_BITMAP:
      return DecodeBitmap(bytes, total_tokens, expected_count);
    default:
      return DecodeDeltaVarint(bytes, total_tokens, expected_count);
  }
}

int64_t EncodedIndexBytesUpperBound(uint32_t selected, uint32_t total_tokens) {
  return selected == total_tokens ? 0 : BitmapBytes(total_tokens);
}

}  // namespace kvwire
