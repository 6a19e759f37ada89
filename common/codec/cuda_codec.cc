#include "common/codec/cuda_codec.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec/cuda_quantize.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

constexpr int64_t kAlign = 16;

int64_t AlignUp(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

absl::Status CudaError(cudaError_t e, absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

}  // namespace

std::optional<CudaQuantParams> ToCudaQuantParams(const QuantParams& params) {
  const SchemeInfo* row = FindScheme(params.scheme);
  // Passthrough, unknown, or no kernel for the row: ATen.
  if (row == nullptr || !row->cuda_fused) return std::nullopt;
  CudaQuantParams p;
  p.bits = row->bits;
  p.group_size = params.group_size;
  switch (row->kind) {
    case SchemeKind::kInt:
      p.code = HasZeroPoints(params) ? CudaCode::kIntAsymmetric
                                     : CudaCode::kIntSymmetric;
      break;
    case SchemeKind::kFp8:
      if (row->format == FloatFormat::kFp8E4M3) {
        p.code = CudaCode::kFp8E4M3;
      } else if (row->format == FloatFormat::kFp8E5M2) {
        p.code = CudaCode::kFp8E5M2;
      } else {
        return std::nullopt;
      }
      break;
    case SchemeKind::kCodebook:
      // The kernels hold one codebook, NF4's (cuda_quantize.cu).
      if (row->codebook != kNf4Codebook.data()) return std::nullopt;
      p.code = CudaCode::kNf4;
      break;
    default:
      return std::nullopt;
  }
  switch (params.granularity) {
    case v1::GRANULARITY_PER_LAYER:
      p.granularity = CudaGranularity::kLayer;
      break;
    case v1::GRANULARITY_PER_HEAD:
      p.granularity = CudaGranularity::kHead;
      break;
    case v1::GRANULARITY_PER_TOKEN:
      p.granularity = CudaGranularity::kToken;
      break;
    case v1::GRANULARITY_PER_CHANNEL:
      p.granularity = CudaGranularity::kChannel;
      break;
    case v1::GRANULARITY_PER_GROUP:
      p.granularity = CudaGranularity::kGroup;
      break;
    default:
      return std::nullopt;
  }
  return p;
}

namespace {

std::optional<CudaDtype> ToCuda(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return CudaDtype::kBf16;
    case at::kHalf:
      return CudaDtype::kFp16;
    case at::kFloat:
      return CudaDtype::kFp32;
    default:
      return std::nullopt;
  }
}

// Byte offsets of one encoded block inside a single device buffer; the
// host-visible part (codes .. flag) is one contiguous prefix.
struct EncodeLayout {
  int64_t packed = 0, scales = 0, zeros = 0, flag = 0, host_bytes = 0;
  int64_t workspace = 0, total = 0;
  int64_t packed_bytes = 0, scale_bytes = 0, zero_bytes = 0;
};

EncodeLayout MakeEncodeLayout(const CudaQuantParams& cp, bool asymmetric,
                              int64_t heads, int64_t tokens, int64_t head_dim) {
  EncodeLayout l;
  l.packed_bytes = (heads * tokens * head_dim * cp.bits + 7) / 8;
  l.scale_bytes = 2 * CudaScaleCount(cp, heads, tokens, head_dim);
  l.zero_bytes = asymmetric ? l.scale_bytes : 0;
  l.scales = AlignUp(l.packed_bytes);
  l.zeros = l.scales + AlignUp(l.scale_bytes);
  l.flag = l.zeros + AlignUp(l.zero_bytes);
  l.host_bytes = l.flag + 4;
  l.workspace = AlignUp(l.host_bytes);
  l.total =
      l.workspace + CudaQuantizeWorkspaceBytes(cp, heads, tokens, head_dim);
  return l;
}

// A pinned host buffer per thread, grown on demand; `ready` is recorded
// after the last asynchronous copy out of it.
struct PinnedStaging {
  uint8_t* data = nullptr;
  int64_t size = 0;
  cudaEvent_t ready = nullptr;
  int ready_device = -1;

  ~PinnedStaging() {
    if (ready != nullptr) cudaEventDestroy(ready);
    if (data != nullptr) cudaFreeHost(data);
  }

  // Waits for earlier copies out of the buffer, then makes it `bytes` long.
  absl::StatusOr<uint8_t*> Get(int64_t bytes) {
    if (ready != nullptr) {
      cudaError_t e = cudaEventSynchronize(ready);
      if (e != cudaSuccess) return CudaError(e, "pinned staging");
    }
    if (bytes > size) {
      if (data != nullptr) cudaFreeHost(data);
      data = nullptr;
      size = 0;
      const int64_t grown = std::max<int64_t>(bytes, int64_t{1} << 20);
      cudaError_t e = cudaHostAlloc(reinterpret_cast<void**>(&data), grown,
                                    cudaHostAllocDefault);
      if (e != cudaSuccess) return CudaError(e, "cudaHostAlloc");
      size = grown;
    }
    return data;
  }

  absl::Status Record(int device, cudaStream_t stream) {
    if (ready != nullptr && ready_device != device) {
      cudaEventDestroy(ready);
      ready = nullptr;
    }
    if (ready == nullptr) {
      cudaError_t e = cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
      if (e != cudaSuccess) return CudaError(e, "cudaEventCreate");
      ready_device = device;
    }
    cudaError_t e = cudaEventRecord(ready, stream);
    return e == cudaSuccess ? absl::OkStatus()
                            : CudaError(e, "cudaEventRecord");
  }
};

PinnedStaging& Staging() {
  thread_local PinnedStaging staging;
  return staging;
}

// The checks shared by the encoders. Fills `view`, `cp`; false if the
// kernels do not apply. `xs` keeps a contiguous copy alive when needed.
bool PrepareEncode(const at::Tensor& x, const at::Tensor& token_index,
                   const QuantParams& params, at::Tensor* xs, at::Tensor* index,
                   CudaBlockView* view, CudaQuantParams* cp) {
  if (!x.defined() || !x.is_cuda() || x.dim() != 3) return false;
  const std::optional<CudaDtype> dtype = ToCuda(x.scalar_type());
  const std::optional<CudaQuantParams> p = ToCudaQuantParams(params);
  if (!dtype || !p) return false;
  const int64_t heads = x.size(0), head_dim = x.size(2);
  int64_t tokens = x.size(1);
  if (token_index.defined()) {
    if (token_index.scalar_type() != at::kLong || token_index.dim() != 1 ||
        token_index.device() != x.device()) {
      return false;
    }
    tokens = token_index.numel();
    *index = token_index.contiguous();
  }
  if (!ValidateQuantParams(params, heads, tokens, head_dim).ok() ||
      !CudaQuantizeSupports(*p, head_dim) ||
      !CudaBlockFits(heads, tokens, head_dim)) {
    return false;
  }
  *xs = x.stride(2) == 1 ? x : x.contiguous();
  view->data = xs->data_ptr();
  view->dtype = *dtype;
  view->heads = heads;
  view->tokens = tokens;
  view->head_dim = head_dim;
  view->head_stride = xs->stride(0);
  view->token_stride = xs->stride(1);
  view->token_index = index->defined() ? index->data_ptr<int64_t>() : nullptr;
  *cp = *p;
  return true;
}

// Enqueues the encoder: codes, scales, zero points and the flag at
// `layout`'s offsets from `host_part`, its scratch at `workspace`.
cudaError_t EnqueueEncode(const CudaBlockView& view, const CudaQuantParams& cp,
                          const EncodeLayout& layout, uint8_t* host_part,
                          uint8_t* workspace, cudaStream_t stream) {
  CudaQuantizeOutput out;
  out.packed = host_part + layout.packed;
  out.scales = reinterpret_cast<uint16_t*>(host_part + layout.scales);
  if (cp.code == CudaCode::kIntAsymmetric) {
    out.zero_points = reinterpret_cast<uint16_t*>(host_part + layout.zeros);
  }
  return CudaQuantize(view, cp, out, workspace,
                      reinterpret_cast<int32_t*>(host_part + layout.flag),
                      stream);
}

// Enqueues the encoder into a fresh device buffer laid out as `layout`.
absl::StatusOr<at::Tensor> LaunchEncode(const CudaBlockView& view,
                                        const CudaQuantParams& cp,
                                        const EncodeLayout& layout,
                                        const at::Device& device,
                                        cudaStream_t stream) {
  at::Tensor buffer = at::empty(
      {layout.total}, at::TensorOptions().dtype(at::kByte).device(device));
  uint8_t* base = buffer.data_ptr<uint8_t>();
  const cudaError_t e =
      EnqueueEncode(view, cp, layout, base, base + layout.workspace, stream);
  if (e != cudaSuccess) return CudaError(e, "CUDA quantize");
  return buffer;
}

}  // namespace

absl::StatusOr<bool> CudaQuantizeTensor(const at::Tensor& x,
                                        const at::Tensor& token_index,
                                        const QuantParams& params,
                                        QuantizedTensor* out) {
  at::Tensor xs, index;
  CudaBlockView view;
  CudaQuantParams cp;
  if (!PrepareEncode(x, token_index, params, &xs, &index, &view, &cp)) {
    return false;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream =
      c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const bool asymmetric = HasZeroPoints(params);
  const EncodeLayout l =
      MakeEncodeLayout(cp, asymmetric, view.heads, view.tokens, view.head_dim);
  absl::StatusOr<at::Tensor> buffer =
      LaunchEncode(view, cp, l, x.device(), stream);
  if (!buffer.ok()) return buffer.status();
  int32_t flag = 0;
  cudaError_t e = cudaMemcpyAsync(&flag, buffer->data_ptr<uint8_t>() + l.flag,
                                  sizeof(flag), cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) return CudaError(e, "CUDA quantize");
  if (flag != 0) return false;
  const std::vector<int64_t> shape =
      ScaleShape(params, view.heads, view.tokens, view.head_dim);
  out->packed = buffer->narrow(0, l.packed, l.packed_bytes);
  out->scales =
      buffer->narrow(0, l.scales, l.scale_bytes).view(at::kHalf).view(shape);
  out->zero_points = at::Tensor();
  if (asymmetric) {
    out->zero_points =
        buffer->narrow(0, l.zeros, l.zero_bytes).view(at::kHalf).view(shape);
  }
  return true;
}

absl::StatusOr<std::vector<std::optional<HostQuantizedBlock>>>
CudaQuantizeBlocksToHost(absl::Span<const CudaBlockToEncode> blocks) {
  std::vector<std::optional<HostQuantizedBlock>> results(blocks.size());
  // Per block: the inputs kept alive until the copy is done, and where its
  // host-visible bytes and its scratch go in the one device arena.
  struct Prepared {
    size_t index = 0;
    at::Tensor xs, token_index;
    CudaBlockView view;
    CudaQuantParams cp;
    EncodeLayout layout;
    int64_t host_offset = 0, workspace_offset = 0;
  };
  std::vector<Prepared> prepared;
  std::optional<at::Device> device;
  int64_t host_total = 0, workspace_total = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const CudaBlockToEncode& b = blocks[i];
    Prepared p;
    p.index = i;
    if ((device.has_value() && b.x.defined() && b.x.device() != *device) ||
        !PrepareEncode(b.x, b.token_index, b.params, &p.xs, &p.token_index,
                       &p.view, &p.cp)) {
      continue;  // nullopt: the caller's ATen path.
    }
    device = b.x.device();
    p.layout = MakeEncodeLayout(p.cp, HasZeroPoints(b.params), p.view.heads,
                                p.view.tokens, p.view.head_dim);
    p.host_offset = host_total;
    host_total += AlignUp(p.layout.host_bytes);
    p.workspace_offset = workspace_total;
    workspace_total += AlignUp(p.layout.total - p.layout.workspace);
    prepared.push_back(std::move(p));
  }
  if (prepared.empty()) return results;
  const c10::cuda::CUDAGuard guard(*device);
  const cudaStream_t stream =
      c10::cuda::getCurrentCUDAStream(device->index()).stream();
  // Every block's codes, scales, zero points and flag first, contiguous,
  // then the scratch: one device-to-host copy brings the whole batch.
  const at::Tensor arena =
      at::empty({host_total + workspace_total},
                at::TensorOptions().dtype(at::kByte).device(*device));
  uint8_t* base = arena.data_ptr<uint8_t>();
  for (const Prepared& p : prepared) {
    const cudaError_t e =
        EnqueueEncode(p.view, p.cp, p.layout, base + p.host_offset,
                      base + host_total + p.workspace_offset, stream);
    if (e != cudaSuccess) return CudaError(e, "CUDA quantize");
  }
  PinnedStaging& staging = Staging();
  absl::StatusOr<uint8_t*> host = staging.Get(host_total);
  if (!host.ok()) return host.status();
  cudaError_t e =
      cudaMemcpyAsync(*host, base, host_total, cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) return CudaError(e, "CUDA quantize copy");
  for (const Prepared& p : prepared) {
    const char* h = reinterpret_cast<const char*>(*host) + p.host_offset;
    int32_t flag;
    std::memcpy(&flag, h + p.layout.flag, sizeof(flag));
    if (flag != 0) continue;  // Non-finite input: the ATen path decides.
    HostQuantizedBlock& out = results[p.index].emplace();
    out.values.assign(h + p.layout.packed, p.layout.packed_bytes);
    out.scales.assign(h + p.layout.scales, p.layout.scale_bytes);
    out.zero_points.assign(h + p.layout.zeros, p.layout.zero_bytes);
  }
  return results;
}

absl::StatusOr<bool> CudaQuantizeToHost(const at::Tensor& x,
                                        const at::Tensor& token_index,
                                        const QuantParams& params,
                                        HostQuantizedBlock* out) {
  const CudaBlockToEncode block{x, token_index, params};
  ASSIGN_OR_RETURN(auto results, CudaQuantizeBlocksToHost({&block, 1}));
  if (!results[0].has_value()) return false;
  *out = *std::move(results[0]);
  return true;
}

absl::StatusOr<bool> CudaDequantizeTensor(
    const QuantizedTensor& q, const QuantParams& params, int64_t heads,
    int64_t tokens, int64_t head_dim, at::ScalarType dtype, at::Tensor* out) {
  if (!q.packed.defined() || !q.packed.is_cuda()) return false;
  const std::optional<CudaDtype> out_dtype = ToCuda(dtype);
  const std::optional<CudaQuantParams> cp = ToCudaQuantParams(params);
  if (!out_dtype || !cp || !CudaQuantizeSupports(*cp, head_dim) ||
      !CudaBlockFits(heads, tokens, head_dim)) {
    return false;
  }
  const at::Device device = q.packed.device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream =
      c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const at::Tensor packed = q.packed.contiguous();
  const at::Tensor scales = q.scales.to(device).contiguous();
  at::Tensor zeros;
  CudaDequantizeInput in;
  in.packed = packed.data_ptr<uint8_t>();
  in.scales = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  if (HasZeroPoints(params)) {
    zeros = q.zero_points.to(device).contiguous();
    in.zero_points = reinterpret_cast<const uint16_t*>(zeros.data_ptr());
  }
  at::Tensor result =
      at::empty({heads, tokens, head_dim},
                at::TensorOptions().dtype(dtype).device(device));
  const cudaError_t e = CudaDequantize(in, *cp, heads, tokens, head_dim,
                                       *out_dtype, result.data_ptr(), stream);
  if (e != cudaSuccess) return CudaError(e, "CUDA dequantize");
  *out = std::move(result);
  return true;
}

absl::StatusOr<std::vector<std::optional<at::Tensor>>>
CudaDequantizeBlocksFromHost(absl::Span<const CudaBlockToDecode> blocks,
                             at::ScalarType dtype, at::Device device) {
  std::vector<std::optional<at::Tensor>> results(blocks.size());
  const std::optional<CudaDtype> out_dtype = ToCuda(dtype);
  if (!device.is_cuda() || !out_dtype) return results;
  // Per block: its kernel parameters and where its codes, scales and zero
  // points sit in the one staging buffer (and the one device copy of it).
  struct Prepared {
    size_t index = 0;
    CudaQuantParams cp;
    int64_t values_at = 0, scales_at = 0, zeros_at = 0;
  };
  std::vector<Prepared> prepared;
  int64_t total = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const CudaBlockToDecode& b = blocks[i];
    const std::optional<CudaQuantParams> cp = ToCudaQuantParams(b.params);
    if (!cp || !CudaQuantizeSupports(*cp, b.head_dim) ||
        !CudaBlockFits(b.heads, b.tokens, b.head_dim)) {
      continue;
    }
    const bool asymmetric = cp->code == CudaCode::kIntAsymmetric;
    const int64_t n_scales = CudaScaleCount(*cp, b.heads, b.tokens, b.head_dim);
    if (static_cast<int64_t>(b.values->size()) !=
            (b.heads * b.tokens * b.head_dim * cp->bits + 7) / 8 ||
        static_cast<int64_t>(b.scales->size()) != 2 * n_scales ||
        static_cast<int64_t>(b.zero_points->size()) !=
            (asymmetric ? 2 * n_scales : 0)) {
      continue;
    }
    // Non-finite scales or zero points: the ATen path reports them.
    bool finite = true;
    for (const std::string* s : {b.scales, b.zero_points}) {
      for (size_t j = 0; j + 1 < s->size(); j += 2) {
        if (((*s)[j + 1] & 0x7C) == 0x7C) finite = false;
      }
    }
    if (!finite) continue;
    Prepared p;
    p.index = i;
    p.cp = *cp;
    p.values_at = total;
    p.scales_at = p.values_at + AlignUp(b.values->size());
    p.zeros_at = p.scales_at + AlignUp(b.scales->size());
    total = p.zeros_at + AlignUp(b.zero_points->size());
    prepared.push_back(p);
  }
  if (prepared.empty()) return results;
  if (device.index() < 0) {
    device = at::Device(at::kCUDA, c10::cuda::current_device());
  }
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream =
      c10::cuda::getCurrentCUDAStream(device.index()).stream();
  PinnedStaging& staging = Staging();
  total = std::max<int64_t>(total, 1);
  absl::StatusOr<uint8_t*> host = staging.Get(total);
  if (!host.ok()) return host.status();
  for (const Prepared& p : prepared) {
    const CudaBlockToDecode& b = blocks[p.index];
    std::memcpy(*host + p.values_at, b.values->data(), b.values->size());
    std::memcpy(*host + p.scales_at, b.scales->data(), b.scales->size());
    std::memcpy(*host + p.zeros_at, b.zero_points->data(),
                b.zero_points->size());
  }
  const at::Tensor buffer =
      at::empty({total}, at::TensorOptions().dtype(at::kByte).device(device));
  uint8_t* base = buffer.data_ptr<uint8_t>();
  cudaError_t e =
      cudaMemcpyAsync(base, *host, total, cudaMemcpyHostToDevice, stream);
  if (e != cudaSuccess) return CudaError(e, "CUDA decode copy");
  RETURN_IF_ERROR(staging.Record(device.index(), stream));
  for (const Prepared& p : prepared) {
    const CudaBlockToDecode& b = blocks[p.index];
    CudaDequantizeInput in;
    in.packed = base + p.values_at;
    in.scales = reinterpret_cast<const uint16_t*>(base + p.scales_at);
    if (p.cp.code == CudaCode::kIntAsymmetric) {
      in.zero_points = reinterpret_cast<const uint16_t*>(base + p.zeros_at);
    }
    at::Tensor result =
        at::empty({b.heads, b.tokens, b.head_dim},
                  at::TensorOptions().dtype(dtype).device(device));
    e = CudaDequantize(in, p.cp, b.heads, b.tokens, b.head_dim, *out_dtype,
                       result.data_ptr(), stream);
    if (e != cudaSuccess) return CudaError(e, "CUDA dequantize");
    results[p.index] = std::move(result);
  }
  // `buffer` goes back to the caching allocator, which orders its reuse
  // after this stream's kernels.
  return results;
}

absl::StatusOr<bool> CudaDequantizeFromHost(
    const std::string& values, const std::string& scales,
    const std::string& zero_points, const QuantParams& params, int64_t heads,
    int64_t tokens, int64_t head_dim, at::ScalarType dtype, at::Device device,
    at::Tensor* out) {
  const CudaBlockToDecode block{&values, &scales, &zero_points, params,
                                heads,   tokens,  head_dim};
  ASSIGN_OR_RETURN(auto results,
                   CudaDequantizeBlocksFromHost({&block, 1}, dtype, device));
  if (!results[0].has_value()) return false;
  *out = *std::move(results[0]);
  return true;
}

}  // namespace kvwire
