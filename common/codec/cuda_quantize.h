// Fused CUDA encoder and decoder for KV blocks: token gather, per-scale
// minimum and maximum, fp16 scales rounded exactly as the CPU kernel
// (cpu_quantize.h) and the ATen reference round them, codes and bit packing,
// and the inverse. Bit-identical to the CPU path (the kernels are compiled
// with -fmad=false and use correctly rounded fp32 operations in the CPU
// kernel's order, except that each value's division by its scale is an
// exactly equivalent multiply and FMA: cuda_quantize.cu says why). Pure CUDA
// runtime: no Torch, no protobuf; only built with KVWIRE_WITH_CUDA.
// cuda_codec.h wires it behind Quantize, Dequantize and the stream
// encoder/decoder.
//
// Passes over the data:
//  * PER_TOKEN and PER_GROUP: one fused kernel; each scale's values are read
//    by a few neighbouring lanes of one warp, reduced with shuffles, then
//    coded and packed from registers (one read of the input, one write).
//  * PER_HEAD, PER_LAYER, PER_CHANNEL: a reduction kernel (block-level
//    reduction, then one atomic per block and scale), a tiny kernel turning
//    the minima and maxima into scales, and the coding kernel (two reads).
#ifndef KVWIRE_COMMON_CODEC_CUDA_QUANTIZE_H_
#define KVWIRE_COMMON_CODEC_CUDA_QUANTIZE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kvwire {

enum class CudaDtype { kBf16, kFp16, kFp32 };

// The code families of the schemes with scales (see quantizer.h).
enum class CudaCode { kIntSymmetric, kIntAsymmetric, kFp8E4M3, kFp8E5M2, kNf4 };

enum class CudaGranularity { kLayer, kHead, kToken, kChannel, kGroup };

struct CudaQuantParams {
  CudaCode code = CudaCode::kIntSymmetric;
  int bits = 8;  // 8, 4 or 2.
  CudaGranularity granularity = CudaGranularity::kHead;
  int group_size = 32;  // kGroup only.
};

// The block to encode, [heads, tokens, head_dim], read in place from device
// memory: element (h, t, d) is at data + h * head_stride + src(t) *
// token_stride + d (strides in elements), where src(t) = token_index[t] when
// token_index is set (a device array of `tokens` source positions: the token
// selection gathered in the same pass) and t otherwise.
struct CudaBlockView {
  const void* data = nullptr;
  CudaDtype dtype = CudaDtype::kBf16;
  int64_t heads = 0, tokens = 0, head_dim = 0;
  int64_t head_stride = 0, token_stride = 0;
  const int64_t* token_index = nullptr;
};

// Device output buffers, sized as for CpuQuantize: `packed`
// PackedValueBytes(scheme, H*T*D) bytes, `scales` and (asymmetric INT)
// `zero_points` ScaleCount() fp16 values.
struct CudaQuantizeOutput {
  uint8_t* packed = nullptr;
  uint16_t* scales = nullptr;
  uint16_t* zero_points = nullptr;
};

// Number of scales of a block (ScaleCount without protobuf).
int64_t CudaScaleCount(const CudaQuantParams& params, int64_t heads,
                       int64_t tokens, int64_t head_dim);

// Whether the kernels handle this block shape. They need every row of
// head_dim codes to fill whole bytes and a per-thread chunk of at most 32
// values dividing head_dim (always true for head_dim a multiple of 8), and,
// for PER_TOKEN/PER_GROUP, scales of at most 1024 values split over a power
// of two of lanes into whole bytes. Callers fall back to the ATen path
// otherwise.
bool CudaQuantizeSupports(const CudaQuantParams& params, int64_t head_dim);

// Whether a [heads, tokens, head_dim] block is small enough for the kernels'
// 32-bit index math (fewer than 2^31 values). Larger blocks take the ATen
// path.
bool CudaBlockFits(int64_t heads, int64_t tokens, int64_t head_dim);

// Device scratch CudaQuantize needs (0 for PER_TOKEN/PER_GROUP), 16-byte
// aligned by the caller.
int64_t CudaQuantizeWorkspaceBytes(const CudaQuantParams& params, int64_t heads,
                                   int64_t tokens, int64_t head_dim);

// Enqueues the encoder on `stream`. `*error_flag` (device memory) is zeroed
// first and becomes nonzero, once the stream reaches that point, if the input
// holds NaN or Inf or a scale or zero point overflows fp16; the outputs are
// then unspecified and the caller produces the precise error. Returns the
// launch error, if any (cudaErrorInvalidValue for unsupported params).
cudaError_t CudaQuantize(const CudaBlockView& input,
                         const CudaQuantParams& params,
                         const CudaQuantizeOutput& out, void* workspace,
                         int32_t* error_flag, cudaStream_t stream);

// Device inputs of the decoder, as CudaQuantize writes them.
struct CudaDequantizeInput {
  const uint8_t* packed = nullptr;
  const uint16_t* scales = nullptr;
  const uint16_t* zero_points = nullptr;  // Asymmetric INT only.
};

// Enqueues the decoder: writes the contiguous [heads, tokens, head_dim] block
// of `out_dtype` at `out` (device), bit-identical to the ATen reference's
// Dequantize on the CPU. Scales must be finite (the caller checks).
cudaError_t CudaDequantize(const CudaDequantizeInput& input,
                           const CudaQuantParams& params, int64_t heads,
                           int64_t tokens, int64_t head_dim,
                           CudaDtype out_dtype, void* out, cudaStream_t stream);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_CUDA_QUANTIZE_H_
