#include "tools/cli/codec_report.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/codec/kv_codec.h"
#include "common/codec/scheme.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double Ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

v1::TransferSpec Spec(v1::Scheme scheme, v1::Granularity granularity,
                      bool asymmetric = false, uint32_t group = 32) {
  v1::TransferSpec spec;
  spec.set_scheme(scheme);
  spec.set_granularity(granularity);
  spec.set_asymmetric(asymmetric);
  spec.set_group_size(group);
  return spec;
}

// The granularity of a scheme's single report entry, by kind: per token
// for FP8's wide range, per group for a 16-value codebook, per head else.
v1::Granularity DefaultReportGranularity(SchemeKind kind) {
  switch (kind) {
    case SchemeKind::kFp8:
      return v1::GRANULARITY_PER_TOKEN;
    case SchemeKind::kCodebook:
      return v1::GRANULARITY_PER_GROUP;
    default:
      return v1::GRANULARITY_PER_HEAD;
  }
}

// The INT schemes' trade-offs depend most on granularity and zero points:
// they get several entries each.
struct ReportVariant {
  v1::Scheme scheme;
  const char* suffix;  // Appended to the row's name for the label.
  v1::Granularity granularity;
  bool asymmetric = false;
  uint32_t group_size = 32;
};
const ReportVariant kReportVariants[] = {
    {v1::SCHEME_INT8, "", v1::GRANULARITY_PER_LAYER},
    {v1::SCHEME_INT8, "", v1::GRANULARITY_PER_HEAD},
    {v1::SCHEME_INT8, "", v1::GRANULARITY_KIVI},
    {v1::SCHEME_INT8, " asym", v1::GRANULARITY_PER_TOKEN, true},
    {v1::SCHEME_INT4, "", v1::GRANULARITY_PER_HEAD},
    {v1::SCHEME_INT4, "", v1::GRANULARITY_PER_CHANNEL},
    {v1::SCHEME_INT4, "", v1::GRANULARITY_KIVI},
    {v1::SCHEME_INT4, "", v1::GRANULARITY_PER_GROUP},
    {v1::SCHEME_INT4, " asym", v1::GRANULARITY_PER_GROUP, true},
    {v1::SCHEME_INT2, " asym", v1::GRANULARITY_PER_GROUP, true, 16},
};

}  // namespace

std::vector<std::pair<std::string, v1::TransferSpec>> DefaultReportSpecs() {
  std::vector<std::pair<std::string, v1::TransferSpec>> specs;
  // Every scheme table row, in table order (bf16 first: the compression
  // baseline): its curated variants, or one entry at its kind's granularity.
  for (const SchemeInfo& row : kSchemeTable) {
    bool curated = false;
    for (const ReportVariant& v : kReportVariants) {
      if (v.scheme != row.scheme) continue;
      specs.emplace_back(
          absl::StrCat(row.name, v.suffix),
          Spec(row.scheme, v.granularity, v.asymmetric, v.group_size));
      curated = true;
    }
    if (!curated) {
      specs.emplace_back(row.name,
                         Spec(row.scheme, DefaultReportGranularity(row.kind)));
    }
  }
  v1::TransferSpec zstd = Spec(v1::SCHEME_INT4, v1::GRANULARITY_PER_HEAD);
  zstd.mutable_entropy()->set_coder(v1::ENTROPY_CODER_ZSTD);
  specs.emplace_back("int4 +zstd", zstd);
  v1::TransferSpec half = Spec(v1::SCHEME_INT4, v1::GRANULARITY_PER_HEAD);
  half.mutable_selection()->set_mode(v1::SELECTION_BACK);
  half.mutable_selection()->set_proportion(0.5);
  specs.emplace_back("int4 back50%", half);
  v1::TransferSpec vnorm = half;
  vnorm.mutable_selection()->set_mode(v1::SELECTION_VNORM_TOPK);
  specs.emplace_back("int4 vnorm50%", vnorm);
  return specs;
}

absl::StatusOr<std::vector<CodecReportRow>> RunCodecReport(
    const SyntheticKvOptions& options,
    const std::vector<std::pair<std::string, v1::TransferSpec>>& specs,
    int repetitions) {
  const v1::ModelInfo model = SyntheticModelInfo(options);
  const auto cache = MakeSyntheticKv(options);
  const uint32_t tokens = static_cast<uint32_t>(options.tokens);
  const double values_in_cache = 2.0 * options.layers * options.kv_heads *
                                 options.tokens * options.head_dim;
  std::vector<CodecReportRow> rows;
  for (const auto& [label, spec] : specs) {
    CodecReportRow row;
    row.label = label;
    std::vector<double> encode_ms, decode_ms;
    std::vector<v1::KvChunk> chunks;
    std::vector<DecodedLayer> decoded;
    for (int rep = 0; rep < std::max(1, repetitions); ++rep) {
      chunks.clear();
      decoded.clear();
      const auto t0 = std::chrono::steady_clock::now();
      ASSIGN_OR_RETURN(auto encoder,
                       KvStreamEncoder::Create(model, tokens, spec, "report"));
      RETURN_IF_ERROR(encoder->Start(&chunks));
      for (size_t l = 0; l < cache.size(); ++l) {
        RETURN_IF_ERROR(
            encoder->AddLayer(l, cache[l].first, cache[l].second, &chunks));
      }
      ASSIGN_OR_RETURN(v1::KvChunk trailer, encoder->Finish(0));
      chunks.push_back(std::move(trailer));
      const auto t1 = std::chrono::steady_clock::now();
      KvStreamDecoder decoder(options.dtype, at::kCPU);
      for (const v1::KvChunk& c : chunks) {
        ASSIGN_OR_RETURN(auto layer, decoder.Consume(c));
        if (layer.has_value()) decoded.push_back(std::move(*layer));
      }
      RETURN_IF_ERROR(decoder.Finish());
      const auto t2 = std::chrono::steady_clock::now();
      encode_ms.push_back(Ms(t1 - t0));
      decode_ms.push_back(Ms(t2 - t1));
      row.spec = encoder->plan().spec;
    }
    row.encode_ms = Median(encode_ms);
    row.decode_ms = Median(decode_ms);
    for (const v1::KvChunk& c : chunks) row.wire_bytes += c.ByteSizeLong();
    const v1::TransferStats& s = chunks.back().trailer().stats();
    row.payload_bytes = s.payload_bytes();
    row.scale_bytes = s.scale_bytes();
    row.index_bytes = s.index_bytes();
    row.header_bytes =
        row.wire_bytes - row.payload_bytes - row.scale_bytes - row.index_bytes;
    row.bits_per_value = row.wire_bytes * 8.0 / values_in_cache;
    // Error over the sent tokens.
    double err2 = 0, ref2 = 0;
    for (const DecodedLayer& d : decoded) {
      at::Tensor idx = at::tensor(
          std::vector<int64_t>(d.token_indices.begin(), d.token_indices.end()));
      for (int part = 0; part < 2; ++part) {
        const at::Tensor& orig =
            part == 0 ? cache[d.layer].first : cache[d.layer].second;
        at::Tensor x = orig.to(at::kFloat).index_select(1, idx);
        at::Tensor y = (part == 0 ? d.keys : d.values).to(at::kFloat);
        err2 += (y - x).pow(2).sum().item<double>();
        ref2 += x.pow(2).sum().item<double>();
      }
    }
    row.relative_error = ref2 > 0 ? std::sqrt(err2 / ref2) : 0;
    rows.push_back(std::move(row));
  }
  const int64_t bf16_bytes = rows.empty() ? 0 : rows.front().wire_bytes;
  for (CodecReportRow& row : rows) {
    row.compression = static_cast<double>(bf16_bytes) / row.wire_bytes;
  }
  return rows;
}

std::string FormatCodecReportTable(const SyntheticKvOptions& o,
                                   const std::vector<CodecReportRow>& rows) {
  std::string out = absl::StrFormat(
      "kvwire codec report: synthetic KV cache, %d layers x %d KV heads x "
      "head_dim %d, %d tokens (%s), K with outlier channels\n"
      "bytes = serialized KvChunk stream (header, blocks with indices, fp16 "
      "scales and CRC, trailer); compression vs the bf16 stream\n\n",
      o.layers, o.kv_heads, o.head_dim, o.tokens,
      o.dtype == at::kBFloat16 ? "bf16" : c10::toString(o.dtype));
  absl::StrAppendFormat(&out, "%-14s %-8s %10s %9s %8s %8s %10s %10s %10s\n",
                        "scheme", "gran.", "wire B", "payload", "bits/v",
                        "vs bf16", "rel.err", "enc ms", "dec ms");
  for (const CodecReportRow& r : rows) {
    const bool passthrough = IsPassthrough(r.spec.scheme());
    std::string gran =
        passthrough ? "-" : GranularityName(r.spec.granularity());
    if (r.spec.granularity() == v1::GRANULARITY_PER_GROUP && !passthrough) {
      absl::StrAppend(&gran, r.spec.group_size());
    }
    absl::StrAppendFormat(
        &out, "%-14s %-8s %10d %9d %8.3f %7.2fx %10.2e %10.3f %10.3f\n",
        r.label, gran, r.wire_bytes, r.payload_bytes, r.bits_per_value,
        r.compression, r.relative_error, r.encode_ms, r.decode_ms);
  }
  return out;
}

std::string FormatCodecReportJson(const SyntheticKvOptions& o,
                                  const std::vector<CodecReportRow>& rows) {
  nlohmann::json j;
  j["cache"] = {{"layers", o.layers},
                {"kv_heads", o.kv_heads},
                {"head_dim", o.head_dim},
                {"tokens", o.tokens}};
  for (const CodecReportRow& r : rows) {
    j["rows"].push_back({{"label", r.label},
                         {"scheme", SchemeName(r.spec.scheme())},
                         {"granularity", GranularityName(r.spec.granularity())},
                         {"group_size", r.spec.group_size()},
                         {"wire_bytes", r.wire_bytes},
                         {"payload_bytes", r.payload_bytes},
                         {"scale_bytes", r.scale_bytes},
                         {"index_bytes", r.index_bytes},
                         {"header_bytes", r.header_bytes},
                         {"bits_per_value", r.bits_per_value},
                         {"compression_vs_bf16", r.compression},
                         {"relative_error", r.relative_error},
                         {"encode_ms", r.encode_ms},
                         {"decode_ms", r.decode_ms}});
  }
  return j.dump(2);
}

}  // namespace kvwire
