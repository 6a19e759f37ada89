// Parity of the fused CUDA codec kernels (cuda_quantize.h, through the
// cuda_codec.h adapter) with the CPU path, byte for byte: packed codes,
// scales, zero points, decoded values and whole KvChunk streams. Built only
// with KVWIRE_WITH_CUDA; every test skips without a CUDA device.
#include "common/codec/cuda_quantize.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/codec/cpu_quantize.h"
#include "common/codec/cuda_codec.h"
#include "common/codec/kv_codec.h"
#include "common/codec/number_formats.h"
#include "common/codec/quantizer.h"
#include "common/codec/synthetic_kv.h"

namespace kvwire {
namespace {

std::string Bytes(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return std::string();
  const at::Tensor c = t.cpu().contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

const v1::Scheme kSchemes[] = {v1::SCHEME_INT8,     v1::SCHEME_INT4,
                               v1::SCHEME_INT2,     v1::SCHEME_NF4,
                               v1::SCHEME_FP8_E4M3, v1::SCHEME_FP8_E5M2};
const v1::Granularity kGranularities[] = {
    v1::GRANULARITY_PER_LAYER, v1::GRANULARITY_PER_HEAD,
    v1::GRANULARITY_PER_TOKEN, v1::GRANULARITY_PER_CHANNEL,
    v1::GRANULARITY_PER_GROUP};

std::string Describe(const QuantParams& p, int64_t h, int64_t t, int64_t d,
                     at::ScalarType dtype, const char* data) {
  return SchemeName(p.scheme) + "/" + GranularityName(p.granularity) +
         (p.granularity == v1::GRANULARITY_PER_GROUP
              ? std::to_string(p.group_size)
              : std::string()) +
         (p.asymmetric ? "/asym" : "/sym") + " [" + std::to_string(h) + "," +
         std::to_string(t) + "," + std::to_string(d) + "] " +
         c10::toString(dtype) + " " + data;
}

// Inputs: Gaussian with per-head and per-channel spread, and one made of
// half-integers with absmax 127 (rounding ties for INT8 at scale 1, exact
// FP8 ties).
at::Tensor MakeInput(int64_t h, int64_t t, int64_t d, bool ties,
                     uint64_t seed) {
  at::manual_seed(seed);
  if (ties) {
    at::Tensor x = at::randint(-254, 255, {h, t, d}).to(at::kFloat).div_(2);
    if (t > 0) x.select(2, 0).fill_(127);
    return x;
  }
  return at::randn({h, t, d}) * at::rand({h, 1, d}).mul_(4).add_(0.1) *
         at::rand({h, 1, 1}).mul_(3).add_(0.5);
}

class CudaQuantizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

// Every scheme x granularity x sym/asym x odd shapes x input dtype, with and
// without a fused token selection: codes, scales and zero points equal the
// CPU path's bytes; decoding (to fp32, bf16, fp16) equals the CPU decode.
TEST_F(CudaQuantizeTest, EncodeAndDecodeMatchTheCpuBitForBit) {
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes = {
      {1, 1, 64}, {3, 7, 64}, {2, 133, 128}, {5, 61, 128}, {2, 19, 96}};
  int checked = 0;
  for (const auto& [heads, tokens, dim] : shapes) {
    for (at::ScalarType dtype : {at::kBFloat16, at::kFloat, at::kHalf}) {
      for (bool ties : {false, true}) {
        const at::Tensor full =
            MakeInput(heads, tokens + 5, dim, ties, heads * 100 + tokens)
                .to(dtype);
        // Tokens of the block: an ascending selection of `tokens` of the
        // tokens + 5 positions (with gaps) or all of a contiguous prefix.
        std::vector<int64_t> pick;
        for (int64_t i = 0; i < tokens + 5 && (int64_t)pick.size() < tokens;
             ++i) {
          if (i % 3 != 1 || tokens + 5 - i <= tokens - (int64_t)pick.size()) {
            pick.push_back(i);
          }
        }
        ASSERT_EQ(static_cast<int64_t>(pick.size()), tokens);
        const at::Tensor idx_cpu = at::tensor(pick, at::kLong);
        const at::Tensor x_cpu = full.index_select(1, idx_cpu);
        const at::Tensor full_gpu = full.cuda();
        const at::Tensor idx_gpu = idx_cpu.cuda();
        for (v1::Scheme scheme : kSchemes) {
          for (v1::Granularity g : kGranularities) {
            for (int group : {8, 16, 32}) {
              if (g != v1::GRANULARITY_PER_GROUP && group != 32) continue;
              for (bool asym : {false, true}) {
                if (asym && !IsIntScheme(scheme)) continue;
                QuantParams p;
                p.scheme = scheme;
                p.granularity = g;
                p.group_size = group;
                p.asymmetric = asym;
                const std::string what =
                    Describe(p, heads, tokens, dim, dtype, ties ? "ties" : "");
                auto cpu = Quantize(x_cpu, p);
                ASSERT_TRUE(cpu.ok()) << what << cpu.status();
                for (bool gather : {false, true}) {
                  QuantizedTensor gpu;
                  auto done =
                      gather ? CudaQuantizeTensor(full_gpu, idx_gpu, p, &gpu)
                             : CudaQuantizeTensor(x_cpu.cuda(), at::Tensor(), p,
                                                  &gpu);
                  ASSERT_TRUE(done.ok()) << what << done.status();
                  ASSERT_TRUE(*done) << what << " not handled by the kernels";
                  EXPECT_EQ(Bytes(gpu.packed), Bytes(cpu->packed)) << what;
                  EXPECT_EQ(Bytes(gpu.scales), Bytes(cpu->scales)) << what;
                  EXPECT_EQ(gpu.scales.sizes(), cpu->scales.sizes()) << what;
                  EXPECT_EQ(Bytes(gpu.zero_points), Bytes(cpu->zero_points))
                      << what;
                  // The host-copy entry point the stream encoder uses.
                  HostQuantizedBlock host;
                  auto to_host = CudaQuantizeToHost(
                      gather ? full_gpu : x_cpu.cuda(),
                      gather ? idx_gpu : at::Tensor(), p, &host);
                  ASSERT_TRUE(to_host.ok() && *to_host) << what;
                  EXPECT_EQ(host.values, Bytes(cpu->packed)) << what;
                  EXPECT_EQ(host.scales, Bytes(cpu->scales)) << what;
                  EXPECT_EQ(host.zero_points, Bytes(cpu->zero_points)) << what;
                }
                // Quantize() itself takes the kernels for CUDA tensors.
                auto via_api = Quantize(x_cpu.cuda(), p);
                ASSERT_TRUE(via_api.ok()) << what;
                EXPECT_TRUE(via_api->packed.is_cuda());
                EXPECT_EQ(Bytes(via_api->packed), Bytes(cpu->packed)) << what;

                for (at::ScalarType out :
                     {at::kFloat, at::kBFloat16, at::kHalf}) {
                  auto want = Dequantize(*cpu, p, heads, tokens, dim, out);
                  ASSERT_TRUE(want.ok()) << what;
                  QuantizedTensor on_gpu;
                  on_gpu.packed = cpu->packed.cuda();
                  on_gpu.scales = cpu->scales;  // Mixed devices are fine.
                  on_gpu.zero_points = cpu->zero_points;
                  at::Tensor got;
                  auto d = CudaDequantizeTensor(on_gpu, p, heads, tokens, dim,
                                                out, &got);
                  ASSERT_TRUE(d.ok() && *d) << what;
                  EXPECT_TRUE(got.is_cuda());
                  EXPECT_EQ(Bytes(got), Bytes(*want))
                      << what << " decode to " << c10::toString(out);
                  at::Tensor from_host;
                  auto dh = CudaDequantizeFromHost(
                      Bytes(cpu->packed), Bytes(cpu->scales),
                      Bytes(cpu->zero_points), p, heads, tokens, dim, out,
                      at::Device(at::kCUDA), &from_host);
                  ASSERT_TRUE(dh.ok() && *dh) << what;
                  EXPECT_EQ(Bytes(from_host), Bytes(*want))
                      << what << " host decode to " << c10::toString(out);
                  auto api = Dequantize(on_gpu, p, heads, tokens, dim, out);
                  ASSERT_TRUE(api.ok()) << what;
                  EXPECT_EQ(Bytes(*api), Bytes(*want)) << what;
                }
                ++checked;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 1000);
}

// Rounding boundaries of a scheme's codes as quotients x / scale (INT
// half-integers, NF4 midpoints, midpoints of consecutive FP8 values), and
// the largest quotient (the scale's divisor).
std::vector<double> CodeBoundaries(v1::Scheme scheme, bool asym, double* qmax) {
  std::vector<double> b;
  const int bits = BitsPerValue(scheme);
  if (IsIntScheme(scheme)) {
    const int hi = asym ? (1 << bits) - 1 : (1 << (bits - 1)) - 1;
    const int lo = asym ? 0 : -hi;
    for (int k = lo; k < hi; ++k) b.push_back(k + 0.5);
    *qmax = hi;
  } else if (scheme == v1::SCHEME_NF4) {
    for (float m : Nf4Midpoints()) b.push_back(m);
    *qmax = 1;
  } else {
    std::vector<double> v;
    for (int c = 0; c < 0x80; ++c) {
      const float f = DecodeFp8(static_cast<uint8_t>(c), scheme);
      if (std::isfinite(f) && f <= Fp8MaxFinite(scheme)) v.push_back(f);
    }
    std::sort(v.begin(), v.end());
    for (size_t i = 0; i + 1 < v.size(); ++i) {
      b.push_back((v[i] + v[i + 1]) / 2);
      b.push_back(-(v[i] + v[i + 1]) / 2);
    }
    *qmax = Fp8MaxFinite(scheme);
  }
  return b;
}

// fp32 -> fp16 rounded up, as the scales are.
float RoundUpToHalf(float v) {
  uint16_t h = FloatToHalfBits(v);
  if (HalfBitsToFloat(h) < v) ++h;
  return HalfBitsToFloat(h);
}

// The kernels code without dividing (cuda_quantize.cu): quotients a few
// ulps either side of every rounding boundary (and exactly on it), with
// random fp16 scales, plus signed zeros and subnormals, in every input dtype
// and granularity, give the CPU's bytes. Every scale unit (token, group of 8,
// head, layer, channel) holds the anchor A = qmax * s, so that all scales
// are s, and, asymmetric, a 0, so that all zero points are 0.
TEST_F(CudaQuantizeTest, NearBoundaryQuotientsMatchTheCpu) {
  std::mt19937 rng(20240611);
  at::manual_seed(11);
  const int64_t heads = 2, tokens = 24, dim = 64, group = 8;
  // Scale units' anchors: every 8th channel of every token, every channel
  // of token 0 (and, for the zero minimum, the next ones).
  const at::Tensor d_idx = at::arange(dim).view({1, 1, dim});
  const at::Tensor t_idx = at::arange(tokens).view({1, tokens, 1});
  const at::Tensor max_at =
      d_idx.remainder(group).eq(0).logical_or(t_idx.eq(0));
  const at::Tensor min_at = d_idx.remainder(group)
                                .eq(1)
                                .logical_or(t_idx.eq(1))
                                .logical_and(max_at.logical_not());
  int checked = 0, on_target = 0;
  for (v1::Scheme scheme : kSchemes) {
    for (bool asym : {false, true}) {
      if (asym && !IsIntScheme(scheme)) continue;
      double qmax;
      const std::vector<double> bounds = CodeBoundaries(scheme, asym, &qmax);
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
        for (int trial = 0; trial < 6; ++trial) {
          // A representable in the dtype (and below fp16's maximum); s as
          // the CPU computes it.
          const float target = std::min(
              std::ldexp(
                  1.0f + std::uniform_real_distribution<float>(0, 1)(rng),
                  std::uniform_int_distribution<int>(-12, 2)(rng)),
              static_cast<float>(30000 / qmax));
          const float anchor = at::tensor({static_cast<float>(qmax * target)})
                                   .to(dtype)
                                   .to(at::kFloat)
                                   .item<float>();
          const int bits = BitsPerValue(scheme);
          const float divisor = asym ? static_cast<float>((1 << bits) - 1)
                                     : static_cast<float>(qmax);
          const float s = RoundUpToHalf(
              std::max(anchor / divisor, static_cast<float>(kScaleEpsilon)));
          std::vector<float> x(heads * tokens * dim);
          for (float& v : x) {
            const double b = bounds[std::uniform_int_distribution<size_t>(
                0, bounds.size() - 1)(rng)];
            v = static_cast<float>(b * s);
          }
          at::Tensor xt =
              at::from_blob(x.data(), {heads, tokens, dim}, at::kFloat)
                  .to(dtype);
          // A few ulps either side: a random step of the raw bits of the
          // normal values (the sign never flips).
          {
            at::Tensor bits_view =
                dtype == at::kFloat ? xt.view(at::kInt) : xt.view(at::kShort);
            const at::Tensor step =
                at::randint(-3, 4, xt.sizes(),
                            at::TensorOptions().dtype(bits_view.scalar_type()));
            const double min_normal = dtype == at::kHalf ? 6.2e-5 : 1.2e-38;
            const at::Tensor normal = xt.abs().to(at::kFloat).ge(min_normal);
            bits_view.add_(step.mul(normal.to(step.scalar_type())));
          }
          const at::Tensor a = at::full({}, anchor).to(dtype);
          xt = at::minimum(at::maximum(xt, asym ? at::zeros_like(a) : -a), a);
          // Signed zeros and subnormals (no -0 asymmetric: the sign of a
          // zero minimum is order-dependent, on the CPU too).
          const float tiny = dtype == at::kFloat  ? 1e-44f
                             : dtype == at::kHalf ? 6e-8f
                                                  : 1e-39f;
          const std::vector<float> specials = {0.0f, -0.0f, tiny, -tiny,
                                               3 * tiny};
          at::Tensor flat = xt.view({-1});
          for (int i = 0; i < 24; ++i) {
            float v = specials[rng() % specials.size()];
            if (asym) v = std::fabs(v);
            flat[rng() % flat.numel()] = v;
          }
          // Anchors: A (and 0) in every scale unit.
          xt = at::where(max_at, a, xt);
          if (asym) xt = at::where(min_at, at::zeros_like(a), xt);
          for (v1::Granularity g : kGranularities) {
            QuantParams p;
            p.scheme = scheme;
            p.granularity = g;
            p.group_size = group;
            p.asymmetric = asym;
            const std::string what =
                Describe(p, heads, tokens, dim, dtype, "near-boundary") +
                " s=" + std::to_string(s);
            auto cpu = Quantize(xt, p);
            ASSERT_TRUE(cpu.ok()) << what << cpu.status();
            // Where every scale is s, the quotients sit where they were
            // put (asymmetric scales may round elsewhere: (max - min) of
            // the input, not the anchor; parity is checked either way).
            const at::Tensor want_scales =
                at::full(cpu->scales.sizes(),
                         static_cast<int64_t>(FloatToHalfBits(s)), at::kShort);
            if (cpu->scales.view(at::kShort).equal(want_scales)) ++on_target;
            QuantizedTensor gpu;
            auto done = CudaQuantizeTensor(xt.cuda(), at::Tensor(), p, &gpu);
            ASSERT_TRUE(done.ok() && *done) << what;
            EXPECT_EQ(Bytes(gpu.packed), Bytes(cpu->packed)) << what;
            EXPECT_EQ(Bytes(gpu.scales), Bytes(cpu->scales)) << what;
            EXPECT_EQ(Bytes(gpu.zero_points), Bytes(cpu->zero_points)) << what;
            for (at::ScalarType out : {at::kFloat, at::kBFloat16, at::kHalf}) {
              auto want = Dequantize(*cpu, p, heads, tokens, dim, out);
              ASSERT_TRUE(want.ok()) << what;
              QuantizedTensor on_gpu = *cpu;
              on_gpu.packed = cpu->packed.cuda();
              at::Tensor got;
              auto d = CudaDequantizeTensor(on_gpu, p, heads, tokens, dim, out,
                                            &got);
              ASSERT_TRUE(d.ok() && *d) << what;
              EXPECT_EQ(Bytes(got), Bytes(*want))
                  << what << " decode to " << c10::toString(out);
            }
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 9 * 3 * 6 * 5);
  // Most cases put their quotients next to code boundaries.
  EXPECT_GE(on_target, checked / 2);
}

// Non-contiguous views (a slice of a larger preallocated cache) are read in
// place and give the same bytes.
TEST_F(CudaQuantizeTest, StridedViewsMatch) {
  const at::Tensor cache = MakeInput(4, 300, 128, false, 5).to(at::kBFloat16);
  const at::Tensor view = cache.narrow(1, 17, 200);  // Token stride 128.
  const at::Tensor heads = cache.narrow(0, 1, 2).narrow(1, 0, 99);
  for (const at::Tensor& x : {view, heads}) {
    for (v1::Granularity g : kGranularities) {
      QuantParams p;
      p.scheme = v1::SCHEME_INT4;
      p.granularity = g;
      auto cpu = Quantize(x.contiguous(), p);
      ASSERT_TRUE(cpu.ok());
      QuantizedTensor gpu;
      auto done = CudaQuantizeTensor(x.cuda(), at::Tensor(), p, &gpu);
      ASSERT_TRUE(done.ok() && *done);
      EXPECT_EQ(Bytes(gpu.packed), Bytes(cpu->packed));
      EXPECT_EQ(Bytes(gpu.scales), Bytes(cpu->scales));
      const at::Tensor strided = cache.cuda().narrow(1, 17, 200);
      if (x.size(1) == 200) {
        auto d2 = CudaQuantizeTensor(strided, at::Tensor(), p, &gpu);
        ASSERT_TRUE(d2.ok() && *d2);
        EXPECT_EQ(Bytes(gpu.packed), Bytes(cpu->packed));
      }
    }
  }
}

// NaN/Inf and fp16 overflow: the kernels decline and Quantize reports the
// CPU path's error.
TEST_F(CudaQuantizeTest, NonFiniteInputFallsBackToTheSameError) {
  for (v1::Scheme scheme : kSchemes) {
    for (bool asym : {false, true}) {
      if (asym && !IsIntScheme(scheme)) continue;
      QuantParams p;
      p.scheme = scheme;
      p.asymmetric = asym;
      for (v1::Granularity g : kGranularities) {
        p.granularity = g;
        for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
          const std::string what =
              Describe(p, 2, 9, 64, at::kFloat, "") + std::to_string(bad);
          at::Tensor x = at::randn({2, 9, 64});
          x[1][4][7] = bad;
          QuantizedTensor q;
          auto done = CudaQuantizeTensor(x.cuda(), at::Tensor(), p, &q);
          ASSERT_TRUE(done.ok()) << what;
          EXPECT_FALSE(*done) << what;
          auto cpu = Quantize(x, p);
          auto gpu = Quantize(x.cuda(), p);
          ASSERT_FALSE(gpu.ok()) << what;
          EXPECT_EQ(gpu.status().code(), cpu.status().code()) << what;
          EXPECT_EQ(gpu.status().message(), cpu.status().message()) << what;
        }
        at::Tensor big = at::full({1, 4, 64}, 1e30f);
        auto big_gpu = Quantize(big.cuda(), p);
        auto big_cpu = Quantize(big, p);
        ASSERT_FALSE(big_gpu.ok());
        EXPECT_EQ(big_gpu.status().message(), big_cpu.status().message());
      }
    }
  }
}

// Whole streams: a KvStreamEncoder fed CUDA tensors (bf16, with token
// selection, K and V at KIVI granularities) emits the CPU stream byte for
// byte, and decoding onto the GPU gives the CPU's values.
TEST_F(CudaQuantizeTest, StreamFromCudaTensorsEqualsCpuStream) {
  SyntheticKvOptions o;
  o.layers = 3;
  o.tokens = 77;
  o.kv_heads = 3;
  o.head_dim = 128;
  o.seed = 7;
  const v1::ModelInfo model = SyntheticModelInfo(o);
  const auto cache = MakeSyntheticKv(o);
  auto encode = [&](bool gpu, const v1::TransferSpec& spec)
      -> absl::StatusOr<std::vector<v1::KvChunk>> {
    auto encoder = KvStreamEncoder::Create(model, o.tokens, spec, "req");
    if (!encoder.ok()) return encoder.status();
    std::vector<v1::KvChunk> chunks;
    if (auto st = (*encoder)->Start(&chunks); !st.ok()) return st;
    for (size_t l = 0; l < cache.size(); ++l) {
      at::Tensor k = cache[l].first, v = cache[l].second;
      if (gpu) {
        k = k.cuda();
        v = v.cuda();
      }
      if (auto st = (*encoder)->AddLayer(l, k, v, &chunks); !st.ok()) {
        return st;
      }
    }
    auto trailer = (*encoder)->Finish(0.5);
    if (!trailer.ok()) return trailer.status();
    chunks.push_back(*trailer);
    return chunks;
  };
  for (v1::Scheme scheme : kSchemes) {
    for (v1::Granularity g :
         {v1::GRANULARITY_PER_LAYER, v1::GRANULARITY_PER_HEAD,
          v1::GRANULARITY_PER_TOKEN, v1::GRANULARITY_PER_CHANNEL,
          v1::GRANULARITY_KIVI, v1::GRANULARITY_PER_GROUP}) {
      for (bool asym : {false, true}) {
        if (asym && !IsIntScheme(scheme)) continue;
        for (v1::SelectionMode mode :
             {v1::SELECTION_ALL, v1::SELECTION_KNORM_TOPK,
              v1::SELECTION_RANDOM}) {
          v1::TransferSpec spec;
          spec.set_scheme(scheme);
          spec.set_granularity(g);
          spec.set_group_size(32);
          spec.set_asymmetric(asym);
          spec.mutable_selection()->set_mode(mode);
          if (mode != v1::SELECTION_ALL) {
            spec.mutable_selection()->set_proportion(0.4);
          }
          const std::string what =
              SchemeName(scheme) + " " + GranularityName(g) +
              (asym ? " asym " : " ") + SelectionModeName(mode);
          auto cpu = encode(false, spec);
          ASSERT_TRUE(cpu.ok()) << what << cpu.status();
          auto gpu = encode(true, spec);
          ASSERT_TRUE(gpu.ok()) << what << gpu.status();
          ASSERT_EQ(cpu->size(), gpu->size()) << what;
          // All but the trailer, whose stats carry timings.
          for (size_t i = 0; i + 1 < cpu->size(); ++i) {
            EXPECT_EQ((*cpu)[i].SerializeAsString(),
                      (*gpu)[i].SerializeAsString())
                << what << " chunk " << i;
          }
          for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
            KvStreamDecoder on_cpu(dtype, at::kCPU);
            KvStreamDecoder on_gpu(dtype, at::kCUDA);
            for (const v1::KvChunk& c : *cpu) {
              auto a = on_cpu.Consume(c);
              auto b = on_gpu.Consume(c);
              ASSERT_TRUE(a.ok() && b.ok()) << what;
              ASSERT_EQ(a->has_value(), b->has_value());
              if (a->has_value()) {
                EXPECT_TRUE((*b)->keys.is_cuda());
                EXPECT_EQ(Bytes((*a)->keys), Bytes((*b)->keys)) << what;
                EXPECT_EQ(Bytes((*a)->values), Bytes((*b)->values)) << what;
              }
            }
          }
        }
      }
    }
  }
}

// The raw entry points decline what they do not handle.
TEST(CudaQuantizeSupportsTest, Shapes) {
  CudaQuantParams p;
  p.bits = 4;
  p.granularity = CudaGranularity::kToken;
  EXPECT_TRUE(CudaQuantizeSupports(p, 128));
  EXPECT_TRUE(CudaQuantizeSupports(p, 96));
  EXPECT_FALSE(CudaQuantizeSupports(p, 3));  // Rows of 1.5 bytes.
  p.granularity = CudaGranularity::kGroup;
  p.group_size = 16;
  EXPECT_TRUE(CudaQuantizeSupports(p, 64));
  p.bits = 2;
  p.group_size = 2;  // Half a byte per scale.
  EXPECT_FALSE(CudaQuantizeSupports(p, 64));
  p.granularity = CudaGranularity::kHead;
  EXPECT_TRUE(CudaQuantizeSupports(p, 64));
}

}  // namespace
}  // namespace kvwire
