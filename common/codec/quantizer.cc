#include "common/codec/quantizer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/codec/cpu_quantize.h"
#ifdef KVWIRE_WITH_CUDA
#include "common/codec/cuda_codec.h"
#endif
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {
namespace {

constexpr float kFp16Max = 65504.0f;

// ------------------------------------------------------------ granularity

// How a [H, T, D] block is viewed so that each scale covers one slice along
// `reduce_dim` of `work`. `keep` is the scale shape broadcastable against
// `work`; `scale` is the stored scale shape.
struct Layout {
  std::vector<int64_t> work;
  int64_t reduce_dim = 1;
  std::vector<int64_t> keep;
  std::vector<int64_t> scale;
};

Layout MakeLayout(const QuantParams& params, int64_t heads, int64_t tokens,
                  int64_t head_dim) {
  Layout l;
  switch (params.granularity) {
    case v1::GRANULARITY_PER_LAYER:
      l.work = {1, heads * tokens * head_dim};
      l.keep = {1, 1};
      l.scale = {1};
      break;
    case v1::GRANULARITY_PER_HEAD:
      l.work = {heads, tokens * head_dim};
      l.keep = {heads, 1};
      l.scale = {heads};
      break;
    case v1::GRANULARITY_PER_TOKEN:
      l.work = {heads * tokens, head_dim};
      l.keep = {heads * tokens, 1};
      l.scale = {heads, tokens};
      break;
    case v1::GRANULARITY_PER_CHANNEL:
      l.work = {heads, tokens, head_dim};
      l.keep = {heads, 1, head_dim};
      l.scale = {heads, head_dim};
      break;
    case v1::GRANULARITY_PER_GROUP:
    default: {  // ValidateQuantParams rejects everything else.
      const int64_t groups = head_dim / params.group_size;
      l.work = {heads * tokens * groups, params.group_size};
      l.keep = {heads * tokens * groups, 1};
      l.scale = {heads, tokens, groups};
      break;
    }
  }
  return l;
}

bool IsSupportedFloat(at::ScalarType t) {
  return t == at::kBFloat16 || t == at::kHalf || t == at::kFloat;
}

// Validates params and dimensions and that the value count is representable.
absl::StatusOr<int64_t> CheckedValueCount(const QuantParams& params,
                                          int64_t heads, int64_t tokens,
                                          int64_t head_dim) {
  RETURN_IF_ERROR(ValidateQuantParams(params, heads, tokens, head_dim));
  // Each dimension is at most 2^24; keep the product (and its byte size at
  // 16 bits per value) far from int64 overflow.
  constexpr int64_t kMaxValues = int64_t{1} << 56;
  if (tokens != 0 && heads * tokens > kMaxValues / head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block [", heads, ", ", tokens, ", ", head_dim, "] is too large"));
  }
  return heads * tokens * head_dim;
}

// ------------------------------------------------------------ fp16 scales

// fp32 -> fp16, rounding up to the next fp16 value when the conversion
// rounded down. `v` must be positive (or inf/NaN, which pass through).
at::Tensor RoundUpToHalf(const at::Tensor& v) {
  const at::Tensor h = v.to(at::kHalf);
  const at::Tensor below = h.to(at::kFloat).lt(v);
  return h.view(at::kShort).add(below.to(at::kShort)).view(at::kHalf);
}

// fp32 -> fp16, rounding toward -inf (the result never exceeds `v`).
at::Tensor RoundDownToHalf(const at::Tensor& v) {
  const at::Tensor h = v.to(at::kHalf);
  const at::Tensor above = h.to(at::kFloat).gt(v).to(at::kShort);
  const at::Tensor bits = h.view(at::kShort);
  // h > v can only happen with h > 0 (step the magnitude down) or with h
  // negative or -0 (step the magnitude up); +0 never exceeds a value that
  // rounds to it, since conversion keeps the sign.
  const at::Tensor step = bits.gt(0).to(at::kShort).mul(-2).add(1);
  return bits.add(above.mul(step)).view(at::kHalf);
}

// ------------------------------------------------------------ tables

at::Tensor FloatTensor(const std::vector<float>& values,
                       const at::Device& device) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())},
                           at::TensorOptions().dtype(at::kFloat));
  if (!values.empty()) {
    std::memcpy(t.data_ptr<float>(), values.data(),
                values.size() * sizeof(float));
  }
  return t.to(device);
}

// All 256 decoded values of an FP8 row's format, indexed by code; one
// table per kFp8 row, built on first use.
const std::vector<float>& Fp8DecodeTable(v1::Scheme scheme) {
  static const auto* const kTables = [] {
    auto* tables = new std::map<v1::Scheme, std::vector<float>>;
    for (const SchemeInfo& row : kSchemeTable) {
      if (row.kind != SchemeKind::kFp8) continue;
      std::vector<float>& t = (*tables)[row.scheme];
      t.resize(256);
      for (int c = 0; c < 256; ++c) {
        t[c] = DecodeFp8(static_cast<uint8_t>(c), row.scheme);
      }
    }
    return tables;
  }();
  return kTables->at(scheme);
}

// Non-negative finite values, ascending; entry i is the value of code i.
std::vector<float> Fp8PositiveTable(v1::Scheme scheme) {
  const std::vector<float>& all = Fp8DecodeTable(scheme);
  return std::vector<float>(all.begin(),
                            all.begin() + Fp8MaxFiniteCode(scheme) + 1);
}

// The values of a kCodebook row's codes, indexed by code.
std::vector<float> CodebookValues(const SchemeInfo& row) {
  return std::vector<float>(row.codebook, row.codebook + (1 << row.bits));
}

// The wire dtype of a passthrough row.
at::ScalarType PassthroughDtype(const SchemeInfo& row) {
  return row.format == FloatFormat::kBf16 ? at::kBFloat16 : at::kHalf;
}

// ------------------------------------------------------------ encoders

// `w` in fp32, as a fresh tensor that may be modified in place.
at::Tensor FloatCopy(const at::Tensor& w) {
  // Converting first is much faster than mixed-dtype arithmetic on CPU.
  return w.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
}

// Integer-valued fp32 codes in [0, 255] (or [-128, 127] when `centered`) to
// uint8. Float -> int8 conversion is several times faster than float ->
// uint8 on CPU; the XOR maps two's complement to offset binary (q + 128).
at::Tensor CodesToBytes(at::Tensor& y, bool centered, int bits) {
  if (bits < 8) return y.to(at::kChar).view(at::kByte);
  if (!centered) y.sub_(128);
  return y.to(at::kChar).view(at::kByte).bitwise_xor_(0x80);
}

// Symmetric or asymmetric integer codes of `w` (any float dtype) given fp32
// `scale` (and `zero`) broadcastable against it.
at::Tensor EncodeInt(const at::Tensor& w, const at::Tensor& scale,
                     const at::Tensor& zero, int bits, bool asymmetric) {
  at::Tensor y = FloatCopy(w);
  if (asymmetric) {
    y.sub_(zero).div_(scale).round_().clamp_(0, (1 << bits) - 1);
    return CodesToBytes(y, /*centered=*/false, bits);
  }
  const int qmax = (1 << (bits - 1)) - 1;
  y.div_(scale).round_().clamp_(-qmax, qmax);
  // Offset binary: code = q + 2^(bits-1).
  if (bits < 8) y.add_(1 << (bits - 1));
  return CodesToBytes(y, /*centered=*/true, bits);
}

// OCP FP8 codes of `w / scale`, round to nearest even, saturating.
at::Tensor EncodeFp8Tensor(const at::Tensor& w, const at::Tensor& scale,
                           v1::Scheme scheme) {
  const at::Tensor table = FloatTensor(Fp8PositiveTable(scheme), w.device());
  const int64_t n = table.numel();
  const at::Tensor y = FloatCopy(w).div_(scale);
  const at::Tensor a = y.abs();
  // idx = number of table values < a, so table[idx-1] < a <= table[idx].
  const at::Tensor idx =
      at::bucketize(a, table, /*out_int32=*/true, /*right=*/false);
  const at::Tensor hi = idx.clamp_max(n - 1);
  const at::Tensor lo = idx.sub(1).clamp_min_(0);
  const at::Tensor t_hi = table.index_select(0, hi.reshape({-1})).view_as(a);
  const at::Tensor t_lo = table.index_select(0, lo.reshape({-1})).view_as(a);
  const at::Tensor d_hi = t_hi.sub(a);
  const at::Tensor d_lo = a.sub(t_lo);
  // Codes of adjacent values differ by one, so exactly one of lo and hi has
  // an even mantissa LSB; ties go to it.
  const at::Tensor hi_even = hi.bitwise_and(1).eq(0);
  const at::Tensor take_hi =
      d_hi.lt(d_lo).logical_or_(d_hi.eq(d_lo).logical_and_(hi_even));
  // hi - lo is 1, or 0 at the ends (a == 0 or a beyond the largest value).
  const at::Tensor mag = hi.sub(lo).mul_(take_hi).add_(lo);  // 0..126.
  return mag.to(at::kChar).view(at::kByte).add_(
      at::signbit(y).to(at::kByte).mul_(128));
}

at::Tensor EncodeCodebookTensor(const at::Tensor& w, const at::Tensor& scale,
                                const SchemeInfo& row) {
  const at::Tensor mid = FloatTensor(CodebookMidpoints(row), w.device());
  // Number of midpoints strictly below y: ties go to the lower index.
  return at::bucketize(FloatCopy(w).div_(scale), mid, /*out_int32=*/true,
                       /*right=*/false)
      .to(at::kChar)
      .view(at::kByte);
}

// ------------------------------------------------------------ helpers

std::string ShapeString(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    absl::StrAppend(&s, i ? ", " : "", sizes[i]);
  }
  return s + "]";
}

// Reads a few boolean 0-d tensors with a single device->host transfer.
std::vector<bool> ReadFlags(const std::vector<at::Tensor>& flags) {
  const at::Tensor host = at::stack(flags).to(at::kCPU);
  std::vector<bool> out(flags.size());
  const bool* p = host.data_ptr<bool>();
  for (size_t i = 0; i < flags.size(); ++i) out[i] = p[i];
  return out;
}

// A 0-d fp32 tensor on `like`'s device. Dividing by it is a true division
// everywhere, whereas CUDA turns division by a CPU scalar into multiplication
// by its reciprocal, which can differ in the last bit from the CPU result.
at::Tensor DeviceScalar(double value, const at::Tensor& like) {
  return at::full({}, value, like.options().dtype(at::kFloat));
}

at::Tensor AllFinite(const at::Tensor& t) { return at::isfinite(t).all(); }

absl::StatusOr<QuantizedTensor> QuantizeImpl(const at::Tensor& x,
                                             const QuantParams& params,
                                             bool allow_fused) {
  if (!x.defined()) return absl::InvalidArgumentError("input is undefined");
  if (x.dim() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("input must be [heads, tokens, head_dim], got ",
                     ShapeString(x.sizes())));
  }
  if (!IsSupportedFloat(x.scalar_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat("input dtype must be bf16, fp16 or fp32, got ",
                     c10::toString(x.scalar_type())));
  }
  const int64_t heads = x.size(0), tokens = x.size(1), head_dim = x.size(2);
  RETURN_IF_ERROR(CheckedValueCount(params, heads, tokens, head_dim).status());
  // Valid params have a row.
  const SchemeInfo& row = *FindScheme(params.scheme);
  const at::Tensor xc = x.contiguous();
  QuantizedTensor out;

  if (row.kind == SchemeKind::kPassthrough) {
    const at::ScalarType wire = PassthroughDtype(row);
    // Always a copy: the packed bytes must not alias the caller's tensor.
    const at::Tensor converted =
        xc.to(wire, /*non_blocking=*/false, /*copy=*/true);
    // On the CPU a fused scan; elsewhere amax/amin, which propagate NaN and
    // are much faster than isfinite.
    const bool finite =
        converted.numel() == 0 ||
        (converted.device().is_cpu() && wire == at::kBFloat16
             ? CpuAllFinite(converted.data_ptr(), CpuInput::kBf16,
                            converted.numel())
             : ReadFlags(
                   {AllFinite(at::amax(converted))
                        .logical_and(AllFinite(at::amin(converted)))})[0]);
    if (!finite) {
      return absl::InvalidArgumentError(
          absl::StrCat("input contains NaN or Inf (or values beyond ",
                       SchemeName(params.scheme), " range)"));
    }
    out.packed = converted.view({-1}).view(at::kByte);
    return out;
  }

  const int bits = row.bits;
  const bool asymmetric = HasZeroPoints(params);
  const Layout layout = MakeLayout(params, heads, tokens, head_dim);

#ifdef KVWIRE_WITH_CUDA
  // The fused CUDA kernels (bit-identical to the CPU kernel and to what
  // follows); they decline what they do not handle, NaN/Inf and fp16
  // overflow included, and the ATen path below takes over.
  if (allow_fused && xc.is_cuda()) {
    QuantizedTensor fast;
    ASSIGN_OR_RETURN(const bool done,
                     CudaQuantizeTensor(xc, at::Tensor(), params, &fast));
    if (done) return fast;
  }
#endif
  // The fused CPU kernel (bit-identical to what follows). On NaN/Inf or fp16
  // overflow it declines, and the ATen path below reports the error.
  if (allow_fused && xc.device().is_cpu() &&
      (xc.scalar_type() == at::kBFloat16 || xc.scalar_type() == at::kFloat) &&
      CpuQuantizeSupports(params)) {
    const int64_t n_scales = ScaleCount(params, heads, tokens, head_dim);
    const auto u8 = at::TensorOptions().dtype(at::kByte);
    const auto f16 = at::TensorOptions().dtype(at::kHalf);
    QuantizedTensor fast;
    fast.packed = at::empty(
        {PackedValueBytes(params.scheme, heads * tokens * head_dim)}, u8);
    fast.scales = at::empty({n_scales}, f16);
    if (asymmetric) fast.zero_points = at::empty({n_scales}, f16);
    CpuQuantizeOutput buffers;
    buffers.packed = fast.packed.data_ptr<uint8_t>();
    buffers.scales = reinterpret_cast<uint16_t*>(fast.scales.data_ptr());
    if (asymmetric) {
      buffers.zero_points =
          reinterpret_cast<uint16_t*>(fast.zero_points.data_ptr());
    }
    if (CpuQuantize(xc.data_ptr(),
                    xc.scalar_type() == at::kBFloat16 ? CpuInput::kBf16
                                                      : CpuInput::kFp32,
                    heads, tokens, head_dim, params, buffers)) {
      fast.scales = fast.scales.view(layout.scale);
      if (asymmetric) fast.zero_points = fast.zero_points.view(layout.scale);
      return fast;
    }
  }
  const at::Tensor w = xc.view(layout.work);
  const auto fopts = at::TensorOptions().dtype(at::kFloat).device(x.device());

  // Reductions: min and max are exact, so reducing in the input dtype and
  // widening gives the fp32 result. Both propagate NaN.
  at::Tensor mn, mx;
  if (w.size(layout.reduce_dim) == 0) {
    mn = at::zeros(layout.keep, fopts);
    mx = at::zeros(layout.keep, fopts);
  } else {
    mn = at::amin(w, {layout.reduce_dim}, /*keepdim=*/true).to(at::kFloat);
    mx = at::amax(w, {layout.reduce_dim}, /*keepdim=*/true).to(at::kFloat);
  }

  at::Tensor scale_h, zero_h;
  if (asymmetric) {
    zero_h = RoundDownToHalf(mn);
    const double levels = (1 << bits) - 1;
    scale_h = RoundUpToHalf(mx.sub(zero_h.to(at::kFloat))
                                .div_(DeviceScalar(levels, mx))
                                .clamp_min_(kScaleEpsilon));
  } else {
    const double qmax = row.code_max;
    const at::Tensor absmax = at::maximum(mx, mn.neg());
    scale_h = RoundUpToHalf(
        absmax.div(DeviceScalar(qmax, absmax)).clamp_min_(kScaleEpsilon));
  }

  std::vector<at::Tensor> flags = {AllFinite(mn).logical_and(AllFinite(mx)),
                                   AllFinite(scale_h)};
  if (asymmetric) flags.push_back(AllFinite(zero_h));
  const std::vector<bool> ok = ReadFlags(flags);
  if (!ok[0]) return absl::InvalidArgumentError("input contains NaN or Inf");
  if (!ok[1]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a ", SchemeName(params.scheme), " scale exceeds the fp16 maximum ",
        kFp16Max, "; the input's magnitude is too large for this scheme"));
  }
  if (asymmetric && !ok[2]) {
    return absl::InvalidArgumentError(
        absl::StrCat("a zero point (block minimum) is below -", kFp16Max,
                     ", which fp16 cannot hold"));
  }

  const at::Tensor scale = scale_h.to(at::kFloat);
  at::Tensor codes;
  switch (row.kind) {
    case SchemeKind::kInt:
      codes = EncodeInt(w, scale, asymmetric ? zero_h.to(at::kFloat) : scale,
                        bits, asymmetric);
      break;
    case SchemeKind::kFp8:
      codes = EncodeFp8Tensor(w, scale, params.scheme);
      break;
    case SchemeKind::kCodebook:
      codes = EncodeCodebookTensor(w, scale, row);
      break;
    case SchemeKind::kPassthrough:  // Returned above.
      return absl::InternalError("passthrough has no codes");
  }
  out.packed = PackCodes(codes.reshape({-1}), bits);
  if (!out.packed.defined()) return absl::InternalError("packing failed");
  out.scales = scale_h.reshape(layout.scale);
  if (asymmetric) out.zero_points = zero_h.reshape(layout.scale);
  return out;
}

absl::Status CheckSide(const at::Tensor& t, absl::string_view what,
                       bool expected, const std::vector<int64_t>& shape) {
  if (!expected) {
    if (t.defined() && t.numel() != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected ", what, " for this scheme"));
    }
    return absl::OkStatus();
  }
  if (!t.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " are missing"));
  }
  if (t.scalar_type() != at::kHalf) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must be fp16, got ", c10::toString(t.scalar_type())));
  }
  if (t.sizes() != at::IntArrayRef(shape)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " have shape ", ShapeString(t.sizes()),
                     ", expected ", ShapeString(shape)));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> DequantizeImpl(const QuantizedTensor& q,
                                          const QuantParams& params,
                                          int64_t heads, int64_t tokens,
                                          int64_t head_dim,
                                          at::ScalarType dtype) {
  ASSIGN_OR_RETURN(const int64_t count,
                   CheckedValueCount(params, heads, tokens, head_dim));
  if (!IsSupportedFloat(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output dtype must be bf16, fp16 or fp32, got ", c10::toString(dtype)));
  }
  if (!q.packed.defined()) {
    return absl::InvalidArgumentError("packed codes are undefined");
  }
  if (q.packed.scalar_type() != at::kByte || q.packed.dim() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("packed codes must be 1-D uint8, got ",
                     c10::toString(q.packed.scalar_type()), " ",
                     ShapeString(q.packed.sizes())));
  }
  const int64_t expected_bytes = PackedValueBytes(params.scheme, count);
  if (q.packed.numel() != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "packed codes have ", q.packed.numel(), " bytes, expected ",
        expected_bytes, " for ", SchemeName(params.scheme), " [", heads, ", ",
        tokens, ", ", head_dim, "]"));
  }
  const at::Device device = q.packed.device();
  const SchemeInfo& row = *FindScheme(params.scheme);  // Validated above.

  if (row.kind == SchemeKind::kPassthrough) {
    RETURN_IF_ERROR(CheckSide(q.scales, "scales", false, {}));
    RETURN_IF_ERROR(CheckSide(q.zero_points, "zero points", false, {}));
    const at::ScalarType wire = PassthroughDtype(row);
    at::Tensor bytes = q.packed.contiguous();
    if (bytes.storage_offset() % 2 != 0) bytes = bytes.clone();
    return bytes.view(wire)
        .view({heads, tokens, head_dim})
        .to(dtype, /*non_blocking=*/false, /*copy=*/true);
  }

  const Layout layout = MakeLayout(params, heads, tokens, head_dim);
  const bool asymmetric = HasZeroPoints(params);
  RETURN_IF_ERROR(CheckSide(q.scales, "scales", true, layout.scale));
  RETURN_IF_ERROR(
      CheckSide(q.zero_points, "zero points", asymmetric, layout.scale));
  const at::Tensor scale_h = q.scales.to(device);
  const at::Tensor zero_h =
      asymmetric ? q.zero_points.to(device) : at::Tensor();
  std::vector<at::Tensor> flags = {AllFinite(scale_h)};
  if (asymmetric) flags.push_back(AllFinite(zero_h));
  for (bool ok : ReadFlags(flags)) {
    if (!ok) {
      return absl::InvalidArgumentError("scales or zero points are not finite");
    }
  }

#ifdef KVWIRE_WITH_CUDA
  {
    at::Tensor fast;
    ASSIGN_OR_RETURN(
        const bool done,
        CudaDequantizeTensor(q, params, heads, tokens, head_dim, dtype, &fast));
    if (done) return fast;
  }
#endif
  const int bits = row.bits;
  const at::Tensor codes = UnpackCodes(q.packed, bits, count);
  if (!codes.defined()) return absl::InternalError("unpacking failed");
  const at::Tensor c = codes.view(layout.work);
  const at::Tensor scale = scale_h.to(at::kFloat).view(layout.keep);
  at::Tensor values;
  if (row.kind == SchemeKind::kInt) {
    values = c.to(at::kFloat);
    if (asymmetric) {
      // Separate multiply and add (no fused multiply-add) so CPU and CUDA
      // give identical results.
      values.mul_(scale).add_(zero_h.to(at::kFloat).view(layout.keep));
    } else {
      values.sub_(1 << (bits - 1)).mul_(scale);
    }
  } else {
    // kFp8 and kCodebook: a lookup of each code's value, times the scale.
    const at::Tensor table =
        row.kind == SchemeKind::kFp8
            ? FloatTensor(Fp8DecodeTable(params.scheme), device)
            : FloatTensor(CodebookValues(row), device);
    values = table.index_select(0, c.reshape({-1}).to(at::kInt))
                 .view(layout.work)
                 .mul_(scale);
  }
  return values.view({heads, tokens, head_dim}).to(dtype);
}

}  // namespace

// ------------------------------------------------------------ public API

absl::StatusOr<QuantizedTensor> Quantize(const at::Tensor& x,
                                         const QuantParams& params) {
  return Guarded("Quantize", [&] {
    at::NoGradGuard no_grad;
    return QuantizeImpl(x, params, /*allow_fused=*/true);
  });
}

absl::StatusOr<QuantizedTensor> QuantizeReference(const at::Tensor& x,
                                                  const QuantParams& params) {
  return Guarded("QuantizeReference", [&] {
    at::NoGradGuard no_grad;
    return QuantizeImpl(x, params, /*allow_fused=*/false);
  });
}

absl::StatusOr<at::Tensor> Dequantize(const QuantizedTensor& q,
                                      const QuantParams& params, int64_t heads,
                                      int64_t tokens, int64_t head_dim,
                                      at::ScalarType dtype) {
  return Guarded("Dequantize", [&] {
    at::NoGradGuard no_grad;
    return DequantizeImpl(q, params, heads, tokens, head_dim, dtype);
  });
}

at::Tensor PackCodes(const at::Tensor& codes, int bits) {
  try {
    if (!codes.defined() || codes.scalar_type() != at::kByte ||
        (bits != 8 && bits != 4 && bits != 2)) {
      return at::Tensor();
    }
    at::NoGradGuard no_grad;
    const at::Tensor c = codes.contiguous().view({-1});
    if (bits == 8) return c;
    const int64_t n = c.numel();
    const int64_t per_byte = 8 / bits;
    const int64_t full = n / per_byte;
    const int64_t rest = n % per_byte;
    at::Tensor out = at::empty({full + (rest ? 1 : 0)}, c.options());
    // out = v0 + v1 << bits + v2 << 2*bits + ... (disjoint bits: + is |).
    auto pack_rows = [&](const at::Tensor& v, at::Tensor o) {
      at::add_out(o, v.select(1, 0), v.select(1, 1), int64_t{1} << bits);
      for (int64_t k = 2; k < per_byte; ++k) {
        o.add_(v.select(1, k), int64_t{1} << (bits * k));
      }
    };
    if (full > 0) {
      pack_rows(c.narrow(0, 0, full * per_byte).view({full, per_byte}),
                out.narrow(0, 0, full));
    }
    if (rest > 0) {
      at::Tensor tail = at::zeros({1, per_byte}, c.options());
      tail.narrow(1, 0, rest)
          .copy_(c.narrow(0, full * per_byte, rest).view({1, rest}));
      pack_rows(tail, out.narrow(0, full, 1));
    }
    return out;
  } catch (const std::exception&) {
    return at::Tensor();
  }
}

at::Tensor UnpackCodes(const at::Tensor& packed, int bits, int64_t count) {
  try {
    if (!packed.defined() || packed.scalar_type() != at::kByte ||
        (bits != 8 && bits != 4 && bits != 2) || count < 0 ||
        count > (int64_t{1} << 60) ||
        packed.numel() != (count * bits + 7) / 8) {
      return at::Tensor();
    }
    at::NoGradGuard no_grad;
    const at::Tensor p = packed.contiguous().view({-1});
    if (bits == 8) return p;
    const int64_t per_byte = 8 / bits;
    const int64_t mask = (int64_t{1} << bits) - 1;
    at::Tensor out = at::empty({p.numel(), per_byte}, p.options());
    at::Tensor low = out.select(1, 0);
    at::bitwise_and_out(low, p, mask);
    for (int64_t k = 1; k < per_byte; ++k) {
      at::Tensor col = out.select(1, k);
      at::bitwise_right_shift_out(col, p, bits * k);
      if (k + 1 < per_byte) col.bitwise_and_(mask);
    }
    return out.view({-1}).narrow(0, 0, count);
  } catch (const std::exception&) {
    return at::Tensor();
  }
}

}  // namespace kvwire
