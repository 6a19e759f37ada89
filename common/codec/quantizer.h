// Quantizes one KV block ([kv_heads, tokens, head_dim], bf16/fp16/fp32, on
// any device) into packed codes plus fp16 scales (and zero points), and back.
// Written with ATen ops so the same code runs on CPU and CUDA tensors; fused
// CPU and (KVWIRE_WITH_CUDA) CUDA kernels take over where they apply.
//
// Code layout (docs/PROTOCOL.md is normative):
//  * BF16/FP16 passthrough: the tensor converted to that dtype, raw
//    little-endian bytes; no scales.
//  * INT symmetric: qmax = 2^(b-1)-1, scale = max(absmax/qmax, 1e-6) rounded
//    *up* to fp16, q = clamp(round_half_even(x/scale), -qmax, qmax); the code
//    stored is q + 2^(b-1) (offset binary, so INT4 codes are 1..15).
//  * INT asymmetric: scale = max((max-min)/(2^b-1), 1e-6) rounded up to fp16,
//    zero point z = min rounded to fp16, code = clamp(round((x-z)/scale), 0,
//    2^b-1); x^ = code*scale + z.
//  * FP8 E4M3/E5M2: scale = max(absmax/fp8_max, 1e-6) rounded up to fp16,
//    code = the OCP FP8 encoding of x/scale (round to nearest even,
//    saturating to +-fp8_max).
//  * NF4: scale = max(absmax, 1e-6) rounded up to fp16, code = index of the
//    nearest QLoRA NF4 codebook value to x/scale (ties to the lower index).
//  * 4-bit codes: two per byte, element 2i in the low nibble. 2-bit codes:
//    four per byte, element 4i in bits 0-1. A partial last byte is
//    zero-padded.
// Scale tensors have the granularity's shape: PER_LAYER [1], PER_HEAD [H],
// PER_TOKEN [H,T], PER_CHANNEL [H,D], PER_GROUP [H,T,D/G].
//
// Errors: INVALID_ARGUMENT for bad shapes/dtypes/params, non-finite inputs or
// scales that overflow fp16; c10::Error never escapes.
#ifndef KVWIRE_COMMON_CODEC_QUANTIZER_H_
#define KVWIRE_COMMON_CODEC_QUANTIZER_H_

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>

#include "absl/status/statusor.h"
#include "common/codec/number_formats.h"
#include "common/codec/scheme.h"

namespace kvwire {

struct QuantizedTensor {
  at::Tensor packed;       // uint8 [PackedValueBytes], input's device.
  at::Tensor scales;       // fp16, granularity shape; undefined if none.
  at::Tensor zero_points;  // fp16, same shape; asymmetric INT only.
};

// `x` must be 3-D [heads, tokens, head_dim] of bf16, fp16 or fp32.
absl::StatusOr<QuantizedTensor> Quantize(const at::Tensor& x,
                                         const QuantParams& params);

// Quantize through ATen ops only, never the fused kernels that Quantize uses
// for contiguous bf16/fp32 CPU input (cpu_quantize.h) and, in CUDA builds,
// for CUDA input (cuda_quantize.h): the reference both must match bit for
// bit (and the fallback for whatever the kernels do not handle).
absl::StatusOr<QuantizedTensor> QuantizeReference(const at::Tensor& x,
                                                  const QuantParams& params);

// Inverse of Quantize. `packed`, `scales` and `zero_points` must have exactly
// the sizes the params and shape imply (INVALID_ARGUMENT otherwise). Returns
// [heads, tokens, head_dim] of `dtype` on `q.packed`'s device.
absl::StatusOr<at::Tensor> Dequantize(const QuantizedTensor& q,
                                      const QuantParams& params, int64_t heads,
                                      int64_t tokens, int64_t head_dim,
                                      at::ScalarType dtype);

// Bit packing of uint8 codes (each < 2^bits) into bytes, and back; bits is
// 8, 4 or 2. Unpack returns `count` codes.
at::Tensor PackCodes(const at::Tensor& codes, int bits);
at::Tensor UnpackCodes(const at::Tensor& packed, int bits, int64_t count);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_QUANTIZER_H_
