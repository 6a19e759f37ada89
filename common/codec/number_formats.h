// Scalar definitions of the non-uniform number formats: OCP FP8 (E4M3,
// E5M2) and codebooks (the QLoRA NF4 codebook is the scheme table's). Pure
// C++: no Torch.
#ifndef KVWIRE_COMMON_CODEC_NUMBER_FORMATS_H_
#define KVWIRE_COMMON_CODEC_NUMBER_FORMATS_H_

#include <array>
#include <cstdint>
#include <vector>

#include "common/codec/scheme_table.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// Decode follows the OCP FP8 spec: E4M3 has no infinities and code 0x7F/0xFF
// is NaN; E5M2 is IEEE-754-like. A non-FP8 scheme is treated as E4M3.
float DecodeFp8(uint8_t code, v1::Scheme fp8_scheme);
// Round to nearest even, saturating finite values (and Inf) to +-max; NaN ->
// the NaN code with the input's sign.
uint8_t EncodeFp8(float value, v1::Scheme fp8_scheme);
// 448 or 57344: the value of the largest finite code (0x7E or 0x7B), which
// scheme_table_test checks against the rows' code_max.
float Fp8MaxFinite(v1::Scheme fp8_scheme);
uint8_t Fp8MaxFiniteCode(v1::Scheme fp8_scheme);

// The 2^bits - 1 midpoints between neighbouring values of a kCodebook row's
// codebook, (cb[i] + cb[i + 1]) * 0.5f in fp32; empty for other rows.
std::vector<float> CodebookMidpoints(const SchemeInfo& row);
// Index of the nearest codebook value to y (ties to the lower index): the
// number of the `count` ascending midpoints strictly below y.
inline uint8_t CodebookCodeOf(float y, const float* midpoints, int count) {
  uint8_t code = 0;
  for (int i = 0; i < count; ++i) code += midpoints[i] < y;
  return code;
}

// The NF4 row's 16 values (kNf4Codebook), its 15 midpoints, and
// CodebookCodeOf over them.
const std::array<float, 16>& Nf4Codebook();
const std::array<float, 15>& Nf4Midpoints();
uint8_t Nf4CodeOf(float y);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_NUMBER_FORMATS_H_
