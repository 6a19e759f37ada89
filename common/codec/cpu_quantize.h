// Fused CPU encoder for contiguous bf16 or fp32 blocks: one pass for the
// per-scale minimum and maximum, scales rounded to fp16 exactly as
// Quantize's ATen path rounds them, one pass for codes and bit packing.
// Quantize() uses it for CPU tensors; the ATen path stays the reference (and
// the CUDA path), and tests require the two to agree bit for bit.
// Pure C++: no Torch.
#ifndef KVWIRE_COMMON_CODEC_CPU_QUANTIZE_H_
#define KVWIRE_COMMON_CODEC_CPU_QUANTIZE_H_

#include <cstdint>

#include "common/codec/scheme.h"

namespace kvwire {

enum class CpuInput { kBf16, kFp32 };

// Output buffers, sized by the caller: `packed` PackedValueBytes(scheme,
// H*T*D) bytes; `scales` and (asymmetric INT) `zero_points` ScaleCount()
// fp16 values.
struct CpuQuantizeOutput {
  uint8_t* packed = nullptr;
  uint16_t* scales = nullptr;
  uint16_t* zero_points = nullptr;
};

// Whether CpuQuantize handles `params` (schemes with scales; every
// granularity).
bool CpuQuantizeSupports(const QuantParams& params);

// Encodes the [heads, tokens, head_dim] block at `data`. Returns false, with
// the output unspecified, when the input holds NaN or Inf or a scale or zero
// point overflows fp16; the caller then produces the precise error.
bool CpuQuantize(const void* data, CpuInput input, int64_t heads,
                 int64_t tokens, int64_t head_dim, const QuantParams& params,
                 const CpuQuantizeOutput& out);

// Whether all `count` values at `data` are finite.
bool CpuAllFinite(const void* data, CpuInput input, int64_t count);

// IEEE fp32 <-> fp16 (round to nearest even), as ATen converts.
uint16_t FloatToHalfBits(float value);
float HalfBitsToFloat(uint16_t bits);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_CPU_QUANTIZE_H_
