// Which prompt tokens of a KV block are sent (TokenSelection in
// kvwire.proto), following the research prototype's rules
// (rosetta/utils/kv_select.py):
//  * k = SelectedTokenCount(T, proportion, min_tokens).
//  * FRONT keeps the first k tokens, BACK the last k.
//  * RANDOM draws k distinct tokens reproducibly from `seed` (see below).
//  * KNORM_TOPK / VNORM_TOPK score token t by the mean over heads of
//    ||K[h, t, :]||_2 (resp. V), computed in fp32 on the unquantized block,
//    and keep the k best; ties go to the lower index.
//  * EXPLICIT keeps `indices` as given (any order, no duplicates).
// Every selection is returned sorted ascending.
//
// RANDOM is specified exactly so that every implementation (and every
// device) draws the same set: rng = std::mt19937_64(seed); a partial
// Fisher-Yates shuffle over perm = [0, 1, ..., T-1]: for i in [0, k),
// n = T - i, r = UniformBelow(rng, n), swap(perm[i], perm[i + r]); the
// selection is perm[0..k) sorted. UniformBelow(rng, n) draws x = rng()
// until x >= (2^64 mod n) and returns x mod n (unbiased rejection).
// Torch's RNG is never used.
//
// Errors are absl::Status; c10::Error never escapes.
#ifndef KVWIRE_COMMON_CODEC_TOKEN_SELECTION_H_
#define KVWIRE_COMMON_CODEC_TOKEN_SELECTION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// Number of tokens a proportional selection keeps out of `total_tokens`:
//  * proportion >= 1 keeps every token. So does proportion <= 0 (or NaN):
//    proto3's default 0 means "unset", i.e. keep everything.
//  * Otherwise k = max(min_tokens, round_half_even(proportion * T)), capped
//    at T (Python's round(), as in the prototype).
// Returns 0 for total_tokens <= 0.
int64_t SelectedTokenCount(int64_t total_tokens, double proportion,
                           uint32_t min_tokens);

// Whether `mode` scores tokens from the KV tensors (the norm top-k modes).
bool SelectionNeedsScores(v1::SelectionMode mode);

// Selects tokens of a block of `total_tokens` tokens. `keys` and `values`
// are [kv_heads, T, head_dim] of any floating dtype on any device; only the
// one a norm mode scores must be defined (both may be undefined for other
// modes). For the norm modes the selection scores this block alone
// (per-layer); for a selection shared by all layers, average
// TokenNormScores over layers and call SelectTokensByScores.
// INVALID_ARGUMENT: unknown mode, NaN proportion, total_tokens >
// kMaxIndexTokens, EXPLICIT indices >= T or duplicated, a missing or
// mis-shaped score tensor, non-finite scores.
absl::StatusOr<std::vector<uint32_t>> SelectTokens(
    const v1::TokenSelection& selection, uint32_t total_tokens,
    const at::Tensor& keys, const at::Tensor& values);

// The k of `selection` applied to precomputed [T] scores (any float dtype and
// device): the k highest-scoring tokens, ties to the lower index, ascending.
// INVALID_ARGUMENT: scores not 1-D of total_tokens elements, non-finite
// scores, NaN proportion, total_tokens > kMaxIndexTokens.
absl::StatusOr<std::vector<uint32_t>> SelectTokensByScores(
    const v1::TokenSelection& selection, uint32_t total_tokens,
    const at::Tensor& scores);

// Per-token score of a [heads, T, head_dim] floating tensor: the mean over
// heads of the L2 norm over head_dim, computed in fp32. Returns a [T] fp32
// tensor on x's device, or an undefined tensor if x is undefined, not 3-D,
// not floating point or has no heads (never throws).
at::Tensor TokenNormScores(const at::Tensor& x);

// Indices of the k largest of the 1-D `scores` (copied to the CPU as fp32),
// ties broken toward the lower index, returned ascending. k is clamped to
// [0, numel]. NaN scores rank below every other score. Returns an empty
// vector if scores is undefined or not 1-D (never throws).
std::vector<uint32_t> TopKTokens(const at::Tensor& scores, int64_t k);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_TOKEN_SELECTION_H_
