// Quantization parameters of one KV block and the facts derived from them
// (bits per code, scale shapes, packed sizes). Every per-scheme fact comes
// from the scheme table (scheme_table.h). Pure C++: no Torch.
#ifndef KVWIRE_COMMON_CODEC_SCHEME_H_
#define KVWIRE_COMMON_CODEC_SCHEME_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/codec/scheme_table.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// Fully resolved parameters for encoding one [heads, tokens, head_dim] block.
struct QuantParams {
  v1::Scheme scheme = v1::SCHEME_INT8;
  // Never UNSPECIFIED or KIVI here; see ResolveGranularity.
  v1::Granularity granularity = v1::GRANULARITY_PER_HEAD;
  int group_size = 32;  // PER_GROUP only.
  // Schemes whose row has zero_points (INT) only; ignored otherwise.
  bool asymmetric = false;
};

constexpr int kDefaultGroupSize = 32;
constexpr double kScaleEpsilon = 1e-6;  // The prototype's eps.

// Shorthands for the scheme's row (scheme_table.h); an unknown scheme or
// UNSPECIFIED has 0 bits and no kind, scales or zero points.
// Bits per value on the wire: 16, 8, 4 or 2.
int BitsPerValue(v1::Scheme scheme);
bool IsPassthrough(v1::Scheme scheme);  // SchemeKind::kPassthrough.
bool IsIntScheme(v1::Scheme scheme);    // SchemeKind::kInt.
bool IsFp8Scheme(v1::Scheme scheme);    // SchemeKind::kFp8.
// Whether blocks of this scheme carry scales (everything but passthrough).
bool HasScales(v1::Scheme scheme);
// Whether blocks carry zero points: asymmetric, and the row has them.
bool HasZeroPoints(const QuantParams& params);

// Maps a TransferSpec granularity to the one a block of `part` uses:
// UNSPECIFIED -> PER_HEAD; KIVI -> PER_CHANNEL for keys, PER_TOKEN for values.
v1::Granularity ResolveGranularity(v1::Granularity granularity,
                                   v1::KvPart part);

// Checks that `params` can encode a [heads, tokens, head_dim] block.
// INVALID_ARGUMENT: unknown scheme or granularity, group size not dividing
// head_dim, empty or oversized dimensions. UNIMPLEMENTED: a scheme whose row
// this build cannot encode (no CPU support).
absl::Status ValidateQuantParams(const QuantParams& params, int64_t heads,
                                 int64_t tokens, int64_t head_dim);

// Number of scales (and of zero points, when present) of a block.
int64_t ScaleCount(const QuantParams& params, int64_t heads, int64_t tokens,
                   int64_t head_dim);
// Shape of a block's scales (and zero points): [1], [heads], [heads,
// tokens], [heads, head_dim] or [heads, tokens, head_dim / group_size].
std::vector<int64_t> ScaleShape(const QuantParams& params, int64_t heads,
                                int64_t tokens, int64_t head_dim);
// Bytes of the packed codes of `num_values` values (before entropy coding).
int64_t PackedValueBytes(v1::Scheme scheme, int64_t num_values);

// Short lower-case names: the scheme row's name ("bf16", "int8", "nf4", ...;
// "unknown(N)" without a row); "layer", "head", "token", "channel", "group",
// "kivi"; "all", "front", "back", "random", "knorm_topk", "vnorm_topk",
// "explicit".
std::string SchemeName(v1::Scheme scheme);
std::string GranularityName(v1::Granularity granularity);
std::string SelectionModeName(v1::SelectionMode mode);
// Parsers accept those names, case-insensitively, and ParseScheme also a
// row's aliases ("fp8" for fp8_e4m3, "fp32"/"none" as bf16 passthrough like
// the prototype); INVALID_ARGUMENT, listing the known names, otherwise.
absl::StatusOr<v1::Scheme> ParseScheme(absl::string_view name);
absl::StatusOr<v1::Granularity> ParseGranularity(absl::string_view name);
absl::StatusOr<v1::SelectionMode> ParseSelectionMode(absl::string_view name);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_SCHEME_H_
