// Wire encodings of a set of selected token indices (KvBlock.token_indices
// and KvHeader.shared_token_indices). Pure C++: no Torch.
//
// An index set is strictly ascending and every index is < T (the prompt's
// token count). Encodings (kvwire.proto, IndexEncoding):
//  * ALL: the set is exactly 0..T-1; no bytes.
//  * BITMAP: ceil(T/8) bytes; token i is bit (i % 8) of byte i / 8, least
//    significant bit first. Padding bits past T in the last byte are zero.
//  * DELTA_VARINT: unsigned LEB128 varints of idx[0], then of
//    idx[i] - idx[i-1] - 1 for i >= 1. Each varint is at most 5 bytes and
//    must fit in 32 bits; non-minimal encodings within 5 bytes are accepted
//    by the decoder but never produced by the encoder.
//  * SHARED: the header's shared selection; resolved by the caller, never
//    by this module.
#ifndef KVWIRE_COMMON_CODEC_INDEX_CODING_H_
#define KVWIRE_COMMON_CODEC_INDEX_CODING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// Largest token count T the index codec (and token selection) accepts.
// Matches the codec's block dimension limit; bounds every allocation the
// decoder makes, whatever the input.
constexpr uint32_t kMaxIndexTokens = uint32_t{1} << 24;

struct EncodedIndices {
  v1::IndexEncoding encoding = v1::INDEX_ENCODING_UNSPECIFIED;
  std::string bytes;
};

// Encodes `indices` (strictly ascending, each < total_tokens). Returns ALL
// (no bytes) when the set is 0..T-1; otherwise the smaller of BITMAP and
// DELTA_VARINT, BITMAP on a tie. An empty set with T > 0 is DELTA_VARINT
// with no bytes.
// INVALID_ARGUMENT: not strictly ascending, an index >= total_tokens, or
// total_tokens > kMaxIndexTokens.
absl::StatusOr<EncodedIndices> EncodeTokenIndices(
    absl::Span<const uint32_t> indices, uint32_t total_tokens);

// Decodes and fully validates an index set of exactly `expected_count`
// indices out of `total_tokens`. Never crashes and allocates at most
// O(min(expected_count, T)) memory, whatever the input.
// DATA_LOSS: the bytes are corrupt (ALL with bytes or with expected_count !=
// T; bitmap of the wrong length, with non-zero padding bits or the wrong
// number of set bits; varint truncated, longer than 5 bytes or overflowing
// 32 bits; an index >= T; a count different from expected_count).
// INVALID_ARGUMENT: UNSPECIFIED, SHARED (the caller resolves it) or unknown
// encodings, or total_tokens > kMaxIndexTokens.
absl::StatusOr<std::vector<uint32_t>> DecodeTokenIndices(
    v1::IndexEncoding encoding, absl::string_view bytes, uint32_t total_tokens,
    uint32_t expected_count);

// Upper bound of the encoded size of any set of `selected` indices out of
// `total_tokens`: 0 when selected == total_tokens (ALL), else ceil(T/8) (the
// bitmap size; the encoder never picks anything larger).
int64_t EncodedIndexBytesUpperBound(uint32_t selected, uint32_t total_tokens);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_INDEX_CODING_H_
