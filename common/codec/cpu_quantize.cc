#include "common/codec/cpu_quantize.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/codec/number_formats.h"

// AVX2 and baseline clones of the hot loops, picked at load time. Clang 14
// cannot multiversion templates; clang builds (the fuzzer's) get one version.
#if defined(__clang__)
#define KVWIRE_MULTIVERSION
#else
#define KVWIRE_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#endif

namespace kvwire {
namespace {

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// fp32 -> fp16 rounded up when round-to-nearest went down (scales).
uint16_t RoundUpToHalfBits(float v) {
  uint16_t h = FloatToHalfBits(v);
  if (HalfBitsToFloat(h) < v) ++h;
  return h;
}

// fp32 -> fp16 rounded toward -inf (asymmetric zero points).
uint16_t RoundDownToHalfBits(float v) {
  uint16_t h = FloatToHalfBits(v);
  if (HalfBitsToFloat(h) > v) {
    h = static_cast<int16_t>(h) > 0 ? h - 1 : h + 1;
  }
  return h;
}

bool HalfIsFinite(uint16_t h) { return (h & 0x7C00) != 0x7C00; }

// Round half to even for |v| < 2^22 (codes never exceed 2^8): adding and
// subtracting 1.5 * 2^23 leaves the integer part in the mantissa under the
// default rounding mode. Unlike nearbyintf it vectorizes without SSE4.1.
inline float RoundHalfEven(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

template <CpuInput kInput>
inline float Load(const void* data, int64_t i) {
  if constexpr (kInput == CpuInput::kBf16) {
    const uint16_t b = static_cast<const uint16_t*>(data)[i];
    return BitsFloat(static_cast<uint32_t>(b) << 16);
  } else {
    return static_cast<const float*>(data)[i];
  }
}

// Scale index of element (row, d), a row being one (head, token).
struct ScaleMap {
  v1::Granularity granularity;
  int64_t tokens, head_dim, group_size;
  // First scale of `row` and the stride to apply per element d:
  // index = base + (per_channel ? d : per_group ? d / G : 0).
  int64_t Base(int64_t row) const {
    switch (granularity) {
      case v1::GRANULARITY_PER_LAYER:
        return 0;
      case v1::GRANULARITY_PER_HEAD:
        return row / tokens;
      case v1::GRANULARITY_PER_TOKEN:
        return row;
      case v1::GRANULARITY_PER_CHANNEL:
        return (row / tokens) * head_dim;
      default:
        return row * (head_dim / group_size);
    }
  }
  int64_t Offset(int64_t d) const {
    if (granularity == v1::GRANULARITY_PER_CHANNEL) return d;
    if (granularity == v1::GRANULARITY_PER_GROUP) return d / group_size;
    return 0;
  }
};

// Pass 1: per-scale min and max; false if any value is NaN or Inf.
template <CpuInput kInput>
KVWIRE_MULTIVERSION bool MinMax(const void* data, int64_t rows,
                                int64_t head_dim, const ScaleMap& map,
                                float* mn, float* mx) {
  std::vector<float> rmin(head_dim), rmax(head_dim);
  bool finite = true;
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t base = row * head_dim;
    float lo = std::numeric_limits<float>::infinity();
    float hi = -lo;
    uint32_t bad = 0;
    for (int64_t d = 0; d < head_dim; ++d) {
      const float v = Load<kInput>(data, base + d);
      bad |= ((FloatBits(v) & 0x7F800000u) == 0x7F800000u);
      rmin[d] = v;
      rmax[d] = v;
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    finite &= bad == 0;
    const int64_t s = map.Base(row);
    if (map.granularity == v1::GRANULARITY_PER_CHANNEL ||
        map.granularity == v1::GRANULARITY_PER_GROUP) {
      for (int64_t d = 0; d < head_dim; ++d) {
        float& m0 = mn[s + map.Offset(d)];
        float& m1 = mx[s + map.Offset(d)];
        m0 = rmin[d] < m0 ? rmin[d] : m0;
        m1 = rmax[d] > m1 ? rmax[d] : m1;
      }
    } else {
      mn[s] = lo < mn[s] ? lo : mn[s];
      mx[s] = hi > mx[s] ? hi : mx[s];
    }
  }
  return finite;
}

// Pass 2 for INT schemes: code = clamp(round((x - zero) / scale), lo, hi)
// + offset, one row at a time with per-element scale and zero arrays.
template <CpuInput kInput>
KVWIRE_MULTIVERSION void EncodeIntRow(const void* data, int64_t base,
                                      int64_t head_dim, const float* scale,
                                      const float* zero, float lo, float hi,
                                      float offset, uint8_t* codes) {
  for (int64_t d = 0; d < head_dim; ++d) {
    float y = (Load<kInput>(data, base + d) - zero[d]) / scale[d];
    y = RoundHalfEven(y);
    y = y < lo ? lo : y;
    y = y > hi ? hi : y;
    codes[d] = static_cast<uint8_t>(static_cast<int32_t>(y + offset));
  }
}

void PackRow(const uint8_t* codes, int64_t n, int bits, uint8_t* out) {
  if (bits == 8) {
    std::memcpy(out, codes, n);
  } else if (bits == 4) {
    for (int64_t i = 0; i + 1 < n; i += 2) {
      out[i / 2] = static_cast<uint8_t>(codes[i] | (codes[i + 1] << 4));
    }
    if (n % 2) out[n / 2] = codes[n - 1];
  } else {
    for (int64_t i = 0; i < n; i += 4) {
      uint8_t b = 0;
      for (int64_t j = 0; j < 4 && i + j < n; ++j) b |= codes[i + j] << (2 * j);
      out[i / 4] = b;
    }
  }
}

// Row-constant granularities (layer, head, token) share one scale over a
// contiguous span; these loops run over whole spans so they vectorize.
template <CpuInput kInput>
KVWIRE_MULTIVERSION bool MinMaxSpan(const void* data, int64_t begin, int64_t n,
                                    float* lo_out, float* hi_out) {
  constexpr int kLanes = 16;
  float lo[kLanes], hi[kLanes];
  uint32_t bad[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    lo[j] = std::numeric_limits<float>::infinity();
    hi[j] = -lo[j];
    bad[j] = 0;
  }
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float v = Load<kInput>(data, begin + i + j);
      bad[j] |= (FloatBits(v) & 0x7F800000u) == 0x7F800000u;
      lo[j] = v < lo[j] ? v : lo[j];
      hi[j] = v > hi[j] ? v : hi[j];
    }
  }
  for (; i < n; ++i) {
    const float v = Load<kInput>(data, begin + i);
    bad[0] |= (FloatBits(v) & 0x7F800000u) == 0x7F800000u;
    lo[0] = v < lo[0] ? v : lo[0];
    hi[0] = v > hi[0] ? v : hi[0];
  }
  uint32_t any_bad = 0;
  for (int j = 0; j < kLanes; ++j) {
    *lo_out = lo[j] < *lo_out ? lo[j] : *lo_out;
    *hi_out = hi[j] > *hi_out ? hi[j] : *hi_out;
    any_bad |= bad[j];
  }
  return any_bad == 0;
}

template <CpuInput kInput>
KVWIRE_MULTIVERSION void EncodeIntSpan(const void* data, int64_t begin,
                                       int64_t n, float scale, float zero,
                                       float lo, float hi, float offset,
                                       uint8_t* codes) {
  for (int64_t i = 0; i < n; ++i) {
    float y = (Load<kInput>(data, begin + i) - zero) / scale;
    y = RoundHalfEven(y);
    y = y < lo ? lo : y;
    y = y > hi ? hi : y;
    codes[i] = static_cast<uint8_t>(static_cast<int32_t>(y + offset));
  }
}

}  // namespace

uint16_t FloatToHalfBits(float f) {
  // Maratyszcza's FP16 conversion (as in c10): exact round to nearest even.
  const float scale_to_inf = BitsFloat(0x77800000u);   // 2^112
  const float scale_to_zero = BitsFloat(0x08800000u);  // 2^-110
  float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
  const uint32_t w = FloatBits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = BitsFloat((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = FloatBits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) |
                               (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t man = h & 0x3FF;
  if (exp == 0x1F) return BitsFloat(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return BitsFloat(sign);
    // Subnormal: normalize.
    int e = -1;
    do {
      man <<= 1;
      ++e;
    } while ((man & 0x400) == 0);
    return BitsFloat(sign | ((112 - e) << 23) | ((man & 0x3FF) << 13));
  }
  return BitsFloat(sign | ((exp + 112) << 23) | (man << 13));
}

bool CpuAllFinite(const void* data, CpuInput input, int64_t count) {
  float lo = 0, hi = 0;
  return input == CpuInput::kBf16
             ? MinMaxSpan<CpuInput::kBf16>(data, 0, count, &lo, &hi)
             : MinMaxSpan<CpuInput::kFp32>(data, 0, count, &lo, &hi);
}

bool CpuQuantizeSupports(const QuantParams& params) {
  const SchemeInfo* info = FindScheme(params.scheme);
  return info != nullptr && info->cpu_fused;
}

bool CpuQuantize(const void* data, CpuInput input, int64_t heads,
                 int64_t tokens, int64_t head_dim, const QuantParams& params,
                 const CpuQuantizeOutput& out) {
  // The scheme's table row ("row" below is one (head, token) of the block).
  const SchemeInfo& info = *FindScheme(params.scheme);  // Supported.
  const ScaleMap map{params.granularity, tokens, head_dim, params.group_size};
  const int64_t rows = heads * tokens;
  const int64_t n_scales = ScaleCount(params, heads, tokens, head_dim);
  const int bits = info.bits;
  // Every granularity but PER_CHANNEL gives each scale one contiguous span
  // of elements (PER_GROUP: group_size values along head_dim).
  const bool row_constant = params.granularity != v1::GRANULARITY_PER_CHANNEL &&
                            params.granularity != v1::GRANULARITY_PER_GROUP;
  const int64_t span = params.granularity != v1::GRANULARITY_PER_CHANNEL &&
                               n_scales > 0 && rows > 0
                           ? rows * head_dim / n_scales
                           : 0;
  std::vector<float> mn(n_scales, std::numeric_limits<float>::infinity());
  std::vector<float> mx(n_scales, -std::numeric_limits<float>::infinity());
  if (rows == 0) {  // Empty block: the reference reduces to zeros.
    std::fill(mn.begin(), mn.end(), 0.0f);
    std::fill(mx.begin(), mx.end(), 0.0f);
  } else if (span > 0) {
    for (int64_t s = 0; s < n_scales; ++s) {
      const bool finite = input == CpuInput::kBf16
                              ? MinMaxSpan<CpuInput::kBf16>(
                                    data, s * span, span, &mn[s], &mx[s])
                              : MinMaxSpan<CpuInput::kFp32>(
                                    data, s * span, span, &mn[s], &mx[s]);
      if (!finite) return false;
    }
  } else {
    const bool finite = input == CpuInput::kBf16
                            ? MinMax<CpuInput::kBf16>(data, rows, head_dim, map,
                                                      mn.data(), mx.data())
                            : MinMax<CpuInput::kFp32>(data, rows, head_dim, map,
                                                      mn.data(), mx.data());
    if (!finite) return false;
  }

  // Scales (and zero points) exactly as the ATen reference computes them.
  const bool asymmetric = HasZeroPoints(params);
  const float eps = static_cast<float>(kScaleEpsilon);
  std::vector<float> scale(n_scales), zero(n_scales, 0.0f);
  for (int64_t s = 0; s < n_scales; ++s) {
    uint16_t scale_h;
    if (asymmetric) {
      const uint16_t zero_h = RoundDownToHalfBits(mn[s]);
      if (!HalfIsFinite(zero_h)) return false;
      zero[s] = HalfBitsToFloat(zero_h);
      out.zero_points[s] = zero_h;
      const float levels = static_cast<float>((1 << bits) - 1);
      scale_h = RoundUpToHalfBits(std::max((mx[s] - zero[s]) / levels, eps));
    } else {
      const float qmax = info.code_max;
      const float absmax = std::max(mx[s], -mn[s]);
      scale_h = RoundUpToHalfBits(std::max(absmax / qmax, eps));
    }
    if (!HalfIsFinite(scale_h)) return false;
    out.scales[s] = scale_h;
    scale[s] = HalfBitsToFloat(scale_h);
  }

  // Codes, packed straight into the output.
  std::vector<float> row_scale(head_dim), row_zero(head_dim, 0.0f);
  std::vector<uint8_t> codes(head_dim);
  const bool whole_bytes = (head_dim * bits) % 8 == 0;
  std::vector<uint8_t> all_codes;
  if (!whole_bytes) all_codes.resize(rows * head_dim);
  float lo, hi, offset;
  if (asymmetric) {
    lo = 0;
    hi = static_cast<float>((1 << bits) - 1);
    offset = 0;
  } else {
    const int qmax = (1 << (bits - 1)) - 1;
    lo = static_cast<float>(-qmax);
    hi = static_cast<float>(qmax);
    offset = static_cast<float>(1 << (bits - 1));
  }
  const bool is_int = info.kind == SchemeKind::kInt;
  if (span > 0 && is_int && (span * bits) % 8 == 0) {
    constexpr int64_t kChunk = 4096;  // Multiple of 4: whole packed bytes.
    std::vector<uint8_t> chunk_codes(kChunk);
    for (int64_t s = 0; s < n_scales; ++s) {
      for (int64_t i = 0; i < span; i += kChunk) {
        const int64_t n = std::min(kChunk, span - i);
        const int64_t first = s * span + i;
        uint8_t* dst = bits == 8 ? out.packed + first : chunk_codes.data();
        if (input == CpuInput::kBf16) {
          EncodeIntSpan<CpuInput::kBf16>(data, first, n, scale[s], zero[s], lo,
                                         hi, offset, dst);
        } else {
          EncodeIntSpan<CpuInput::kFp32>(data, first, n, scale[s], zero[s], lo,
                                         hi, offset, dst);
        }
        if (bits != 8) PackRow(dst, n, bits, out.packed + first * bits / 8);
      }
    }
    return true;
  }
  const std::vector<float> midpoints = CodebookMidpoints(info);
  int64_t last_base = -1;
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t base = map.Base(row);
    if (base != last_base || !row_constant) {
      for (int64_t d = 0; d < head_dim; ++d) {
        const int64_t s = base + map.Offset(d);
        row_scale[d] = scale[s];
        row_zero[d] = zero[s];
      }
      last_base = base;
    }
    uint8_t* row_codes =
        whole_bytes ? codes.data() : all_codes.data() + row * head_dim;
    const int64_t first = row * head_dim;
    if (is_int) {
      if (input == CpuInput::kBf16) {
        EncodeIntRow<CpuInput::kBf16>(data, first, head_dim, row_scale.data(),
                                      row_zero.data(), lo, hi, offset,
                                      row_codes);
      } else {
        EncodeIntRow<CpuInput::kFp32>(data, first, head_dim, row_scale.data(),
                                      row_zero.data(), lo, hi, offset,
                                      row_codes);
      }
    } else {
      for (int64_t d = 0; d < head_dim; ++d) {
        const float x = input == CpuInput::kBf16
                            ? Load<CpuInput::kBf16>(data, first + d)
                            : Load<CpuInput::kFp32>(data, first + d);
        const float y = x / row_scale[d];
        // kFp8 or kCodebook (kPassthrough has no fused encoder).
        row_codes[d] = info.kind == SchemeKind::kFp8
                           ? EncodeFp8(y, params.scheme)
                           : CodebookCodeOf(y, midpoints.data(),
                                            static_cast<int>(midpoints.size()));
      }
    }
    if (whole_bytes) {
      PackRow(row_codes, head_dim, bits, out.packed + first * bits / 8);
    }
  }
  if (!whole_bytes)
    PackRow(all_codes.data(), rows * head_dim, bits, out.packed);
  return true;
}

}  // namespace kvwire
