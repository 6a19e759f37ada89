// Scalar definitions of the non-uniform number formats: OCP FP8 (E4M3,
// E5M2) and the QLoRA NF4 codebook. Pure C++: no Torch.
#ifndef KVWIRE_COMMON_CODEC_NUMBER_FORMATS_H_
#define KVWIRE_COMMON_CODEC_NUMBER_FORMATS_H_

#include <array>
#include <cstdint>

#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// Decode follows the OCP FP8 spec: E4M3 has no infinities and code 0x7F/0xFF
// is NaN; E5M2 is IEEE-754-like. A non-FP8 scheme is treated as E4M3.
float DecodeFp8(uint8_t code, v1::Scheme fp8_scheme);
// Round to nearest even, saturating finite values (and Inf) to +-max; NaN ->
// the NaN code with the input's sign.
uint8_t EncodeFp8(float value, v1::Scheme fp8_scheme);
float Fp8MaxFinite(v1::Scheme fp8_scheme);        // 448 or 57344.
uint8_t Fp8MaxFiniteCode(v1::Scheme fp8_scheme);  // 0x7E or 0x7B.

// The 16 NF4 values of QLoRA (Dettmers et al., 2023), ascending, and the 15
// midpoints between neighbours.
const std::array<float, 16>& Nf4Codebook();
const std::array<float, 15>& Nf4Midpoints();
// Index of the nearest codebook value to y (ties to the lower index): the
// number of midpoints strictly below y.
uint8_t Nf4CodeOf(float y);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_NUMBER_FORMATS_H_
