// The quantization scheme table: one row per v1::Scheme holding every fact
// the codec, the services and the tools need about a scheme (its names, bits
// per value, code family, scale layout, codebook and which back ends
// implement it), in the manner of ggml's type_traits[]. Everything else
// derives from it: BitsPerValue, IsIntScheme, ..., SchemeName, ParseScheme
// and ValidateQuantParams (scheme.h), the quantizers' dispatch (quantizer.cc,
// cpu_quantize.cc, cuda_codec.cc), the metric label set
// (common/service/metrics.cc), the YAML scheme names of the load generator,
// the codec report's scheme list and what a sharer advertises
// (SupportedSchemes).
//
// Adding a scheme: its proto enumerator, one row here, and kernels for its
// kind (a new kInt, kFp8 or kCodebook row reuses the existing ones on the
// CPU; set cuda_fused only once cuda_quantize.cu handles it).
// scheme_table_test fails while a proto enumerator has no row.
//
// Header-only, and free of Torch and of the generated protobuf code, so that
// kvwire_service (metric labels) and kvwire_load_lib (YAML), which link
// neither, can read it. For that reason v1::Scheme is declared opaquely
// below (kvwire.pb.h defines it as `enum Scheme : int`; a mismatch is a
// compile error wherever both are seen) and rows name their enumerator by
// number; scheme_table_test checks each number against the proto's name.
#ifndef KVWIRE_COMMON_CODEC_SCHEME_TABLE_H_
#define KVWIRE_COMMON_CODEC_SCHEME_TABLE_H_

#include <array>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace kvwire {
namespace v1 {
enum Scheme : int;  // Defined in kvwire/v1/kvwire.pb.h.
}  // namespace v1

// How a scheme turns values into codes; selects the quantize and dequantize
// routines (quantizer.h documents each family's exact arithmetic).
enum class SchemeKind {
  kPassthrough,  // 16-bit floats as they are; no scales.
  kInt,          // Uniform integer codes of x / scale (or (x - zero) / scale).
  kFp8,          // OCP FP8 encodings of x / scale.
  kCodebook,     // Index of the nearest codebook value to x / scale.
};

// The float format of a passthrough or FP8 row's codes.
enum class FloatFormat { kNone, kBf16, kFp16, kFp8E4M3, kFp8E5M2 };

// The QLoRA NF4 codebook (Dettmers et al., 2023), ascending.
inline constexpr std::array<float, 16> kNf4Codebook = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// One row of the table. Rows are plain constants; nothing here owns memory.
struct SchemeInfo {
  v1::Scheme scheme;
  // Canonical lower-case name: the proto enumerator without "SCHEME_". It is
  // SchemeName(), the metric label and the codec report's label.
  const char* name;
  // Further names ParseScheme accepts (ASCII case-insensitive); unused
  // entries are nullptr.
  std::array<const char*, 4> aliases;
  int bits;  // Per value on the wire: 16, 8, 4 or 2.
  SchemeKind kind;
  FloatFormat format;  // kNone for kInt and kCodebook.
  // Whether blocks carry fp16 scales (of the granularity's shape).
  bool has_scales;
  // Whether asymmetric encoding (fp16 zero points beside the scales) exists;
  // a request for it is ignored otherwise.
  bool zero_points;
  // The code magnitude a symmetric scale maps the block's absolute maximum
  // onto (scale = absmax / code_max): 2^(bits-1) - 1 for kInt, the largest
  // finite value for kFp8, the largest |codebook value| for kCodebook; 0
  // without scales.
  float code_max;
  // kCodebook: the 2^bits values of code 0, 1, ..., ascending; else nullptr.
  const float* codebook;
  bool cpu;         // Encoded and decoded on the host (the ATen path).
  bool cpu_fused;   // The fused CPU encoder (cpu_quantize.h) handles it.
  bool cuda_fused;  // The fused CUDA kernels (cuda_quantize.h) handle it.
  const char* description;
};

// Row numbers are the v1::Scheme values (kvwire.proto), in that order. Laid
// out by hand, one row per scheme with its fields named.
// clang-format off
inline constexpr SchemeInfo kSchemeTable[] = {
    {v1::Scheme{1}, "bf16", {"bfloat16", "none", "fp32", "float32"},
     /*bits=*/16, SchemeKind::kPassthrough, FloatFormat::kBf16,
     /*has_scales=*/false, /*zero_points=*/false, /*code_max=*/0.0f,
     /*codebook=*/nullptr,
     /*cpu=*/true, /*cpu_fused=*/false, /*cuda_fused=*/false,
     "bfloat16 values as they are"},
    {v1::Scheme{2}, "fp16", {"float16"},
     /*bits=*/16, SchemeKind::kPassthrough, FloatFormat::kFp16,
     /*has_scales=*/false, /*zero_points=*/false, /*code_max=*/0.0f,
     /*codebook=*/nullptr,
     /*cpu=*/true, /*cpu_fused=*/false, /*cuda_fused=*/false,
     "IEEE half values as they are"},
    {v1::Scheme{3}, "fp8_e4m3", {"fp8"},
     /*bits=*/8, SchemeKind::kFp8, FloatFormat::kFp8E4M3,
     /*has_scales=*/true, /*zero_points=*/false, /*code_max=*/448.0f,
     /*codebook=*/nullptr,
     /*cpu=*/true, /*cpu_fused=*/true, /*cuda_fused=*/true,
     "OCP FP8 E4M3 codes (max 448, no inf) with an fp16 scale"},
    {v1::Scheme{4}, "fp8_e5m2", {},
     /*bits=*/8, SchemeKind::kFp8, FloatFormat::kFp8E5M2,
     /*has_scales=*/true, /*zero_points=*/false, /*code_max=*/57344.0f,
     /*codebook=*/nullptr,
     /*cpu=*/true, /*cpu_fused=*/true, /*cuda_fused=*/true,
     "OCP FP8 E5M2 codes (IEEE-like) with an fp16 scale"},
    {v1::Scheme{5}, "int8", {},
     /*bits=*/8, SchemeKind::kInt, FloatFormat::kNone,
     /*has_scales=*/true, /*zero_points=*/true, /*code_max=*/127.0f,
     /*codebook=*/nullptr,
     /*cpu=*/true, /*cpu_fused=*/true, /*cuda_fused=*/true,
     "8-bit integer codes with an fp16 scale (and zero point)"},
    {v1::Scheme{6}, "int4", {},
     /*bits=*/4, SchemeKind::kInt, FloatFormat::kNone,
     /*has_scales=*/true, /*zero_points=*/true, /*code_max=*/7.0f,
     /*codebook=*/nullptr,
     /*cpu=*/true, /*cpu_fused=*/true, /*cuda_fused=*/true,
     "4-bit integer codes, two per byte, fp16 scale (and zero point)"},
    {v1::Scheme{7}, "int2", {},
     /*bits=*/2, SchemeKind::kInt, FloatFormat::kNone,
     /*has_scales=*/true, /*zero_points=*/true, /*code_max=*/1.0f,
     /*codebook=*/nullptr,
     /*cpu=*/true, /*cpu_fused=*/true, /*cuda_fused=*/true,
     "2-bit integer codes, four per byte, fp16 scale (and zero point)"},
    {v1::Scheme{8}, "nf4", {},
     /*bits=*/4, SchemeKind::kCodebook, FloatFormat::kNone,
     /*has_scales=*/true, /*zero_points=*/false, /*code_max=*/1.0f,
     /*codebook=*/kNf4Codebook.data(),
     /*cpu=*/true, /*cpu_fused=*/true, /*cuda_fused=*/true,
     "QLoRA NormalFloat-4 codebook indices, two per byte, absmax scale"},
};
// clang-format on

// The row of `scheme`; nullptr for SCHEME_UNSPECIFIED and unknown values.
constexpr const SchemeInfo* FindScheme(v1::Scheme scheme) {
  for (const SchemeInfo& row : kSchemeTable) {
    if (row.scheme == scheme) return &row;
  }
  return nullptr;
}

// The row whose name or one of whose aliases is `name`, compared ASCII
// case-insensitively; nullptr if none.
inline const SchemeInfo* FindSchemeByName(absl::string_view name) {
  for (const SchemeInfo& row : kSchemeTable) {
    if (absl::EqualsIgnoreCase(name, row.name)) return &row;
    for (const char* alias : row.aliases) {
      if (alias != nullptr && absl::EqualsIgnoreCase(name, alias)) return &row;
    }
  }
  return nullptr;
}

// The schemes this build encodes and decodes: every row with CPU support, in
// table order. What a sharer advertises as the schemes it accepts (and a
// receiver may request); the fused CPU and CUDA kernels only speed up a
// subset and never change which schemes work.
inline std::vector<v1::Scheme> SupportedSchemes() {
  std::vector<v1::Scheme> out;
  for (const SchemeInfo& row : kSchemeTable) {
    if (row.cpu) out.push_back(row.scheme);
  }
  return out;
}

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_SCHEME_TABLE_H_
