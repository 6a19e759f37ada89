#include "common/codec/kv_codec.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "common/codec/kv_stream.h"
#include "common/codec/synthetic_kv.h"
#include "common/codec/transfer_plan.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

struct Stream {
  std::vector<v1::KvChunk> chunks;
  int64_t predicted = 0;
  TransferPlan plan;
};

class KvCodecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.layers = 4;
    options_.tokens = 37;
    options_.seed = 11;
    model_ = SyntheticModelInfo(options_);
    cache_ = MakeSyntheticKv(options_);
  }

  // `all_at_once`: every layer in one AddLayers call.
  absl::StatusOr<Stream> Encode(const v1::TransferSpec& spec,
                                bool all_at_once = false) {
    auto encoder =
        KvStreamEncoder::Create(model_, options_.tokens, spec, "req");
    if (!encoder.ok()) return encoder.status();
    Stream s;
    s.plan = (*encoder)->plan();
    s.predicted = (*encoder)->predicted_bytes();
    if (auto st = (*encoder)->Start(&s.chunks); !st.ok()) return st;
    std::vector<LayerTensors> layers;
    for (size_t l = 0; l < cache_.size(); ++l) {
      layers.push_back(
          {static_cast<uint32_t>(l), cache_[l].first, cache_[l].second});
    }
    if (all_at_once) {
      if (auto st = (*encoder)->AddLayers(layers, &s.chunks); !st.ok()) {
        return st;
      }
    }
    for (const LayerTensors& l :
         all_at_once ? std::vector<LayerTensors>() : layers) {
      auto st = (*encoder)->AddLayer(l.layer, l.keys, l.values, &s.chunks);
      if (!st.ok()) return st;
    }
    auto trailer = (*encoder)->Finish(0.5);
    if (!trailer.ok()) return trailer.status();
    s.chunks.push_back(*trailer);
    return s;
  }

  absl::StatusOr<std::vector<DecodedLayer>> Decode(
      const std::vector<v1::KvChunk>& chunks) {
    KvStreamDecoder decoder(at::kFloat, at::kCPU);
    return DecodeWith(decoder, chunks);
  }

  // Decodes with `decoder` (ConsumeAll: batches of blocks may complete
  // several layers at once).
  static absl::StatusOr<std::vector<DecodedLayer>> DecodeWith(
      KvStreamDecoder& decoder, const std::vector<v1::KvChunk>& chunks) {
    std::vector<DecodedLayer> layers;
    for (const v1::KvChunk& c : chunks) {
      auto done = decoder.ConsumeAll(c);
      if (!done.ok()) return done.status();
      for (DecodedLayer& d : *done) layers.push_back(std::move(d));
    }
    if (auto st = decoder.Finish(); !st.ok()) return st;
    return layers;
  }

  static void ExpectSameLayers(const std::vector<DecodedLayer>& a,
                               const std::vector<DecodedLayer>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].layer, b[i].layer);
      EXPECT_EQ(a[i].token_indices, b[i].token_indices);
      EXPECT_TRUE(at::equal(a[i].keys, b[i].keys)) << "layer " << a[i].layer;
      EXPECT_TRUE(at::equal(a[i].values, b[i].values))
          << "layer " << a[i].layer;
    }
  }

  static int64_t SerializedBytes(const std::vector<v1::KvChunk>& chunks) {
    int64_t total = 0;
    for (const auto& c : chunks) total += c.ByteSizeLong();
    return total;
  }

  double RelativeError(const DecodedLayer& d, size_t layer) {
    at::Tensor idx = at::tensor(
        std::vector<int64_t>(d.token_indices.begin(), d.token_indices.end()));
    at::Tensor k = cache_[layer].first.to(at::kFloat).index_select(1, idx);
    at::Tensor v = cache_[layer].second.to(at::kFloat).index_select(1, idx);
    return std::max(
        (d.keys - k).norm().item<double>() / k.norm().item<double>(),
        (d.values - v).norm().item<double>() / v.norm().item<double>());
  }

  SyntheticKvOptions options_;
  v1::ModelInfo model_;
  std::vector<std::pair<at::Tensor, at::Tensor>> cache_;
};

struct SchemeCase {
  v1::Scheme scheme;
  v1::Granularity granularity;
  bool asymmetric;
  double max_relative_error;
};

class KvCodecSchemeTest : public KvCodecTest,
                          public ::testing::WithParamInterface<SchemeCase> {};

TEST_P(KvCodecSchemeTest, RoundTripsWithinErrorAndAccountsEveryByte) {
  const SchemeCase& c = GetParam();
  v1::TransferSpec spec;
  spec.set_scheme(c.scheme);
  spec.set_granularity(c.granularity);
  spec.set_group_size(16);
  spec.set_asymmetric(c.asymmetric);
  auto stream = Encode(spec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto layers = Decode(stream->chunks);
  ASSERT_TRUE(layers.ok()) << layers.status();
  ASSERT_EQ(layers->size(), 4u);
  for (const DecodedLayer& d : *layers) {
    EXPECT_EQ(d.token_indices.size(), 37u);
    EXPECT_LE(RelativeError(d, d.layer), c.max_relative_error)
        << SchemeName(c.scheme) << " layer " << d.layer;
  }
  // Bytes are exact: the trailer's figure is the serialized size of every
  // chunk before it, and the predictor is exact without entropy coding.
  const v1::TransferStats& stats = stream->chunks.back().trailer().stats();
  const int64_t before_trailer =
      SerializedBytes(stream->chunks) - stream->chunks.back().ByteSizeLong();
  EXPECT_EQ(static_cast<int64_t>(stats.serialized_bytes()), before_trailer);
  EXPECT_EQ(stats.payload_bytes() + stats.scale_bytes() + stats.index_bytes() +
                stats.header_bytes(),
            stats.serialized_bytes());
  EXPECT_EQ(stream->predicted, SerializedBytes(stream->chunks));
  EXPECT_EQ(stats.payload_bytes(),
            static_cast<uint64_t>(8 * PackedValueBytes(c.scheme, 2 * 37 * 64)));
}

INSTANTIATE_TEST_SUITE_P(
    Schemes, KvCodecSchemeTest,
    ::testing::Values(
        SchemeCase{v1::SCHEME_BF16, v1::GRANULARITY_PER_HEAD, false, 0.01},
        SchemeCase{v1::SCHEME_FP16, v1::GRANULARITY_PER_HEAD, false, 0.01},
        SchemeCase{v1::SCHEME_FP8_E4M3, v1::GRANULARITY_PER_TOKEN, false, 0.08},
        SchemeCase{v1::SCHEME_FP8_E5M2, v1::GRANULARITY_PER_HEAD, false, 0.15},
        SchemeCase{v1::SCHEME_INT8, v1::GRANULARITY_PER_HEAD, false, 0.05},
        SchemeCase{v1::SCHEME_INT8, v1::GRANULARITY_PER_LAYER, true, 0.05},
        SchemeCase{v1::SCHEME_INT8, v1::GRANULARITY_KIVI, false, 0.02},
        SchemeCase{v1::SCHEME_INT4, v1::GRANULARITY_PER_GROUP, false, 0.2},
        SchemeCase{v1::SCHEME_INT4, v1::GRANULARITY_PER_CHANNEL, true, 0.2},
        SchemeCase{v1::SCHEME_NF4, v1::GRANULARITY_PER_TOKEN, false, 0.25},
        SchemeCase{v1::SCHEME_INT2, v1::GRANULARITY_PER_GROUP, true, 0.7}));

TEST_F(KvCodecTest, FragmentsBlocksLargerThanTheChunkSize) {
  options_.tokens = 300;
  cache_ = MakeSyntheticKv(options_);
  v1::TransferSpec spec;
  spec.set_scheme(v1::SCHEME_BF16);
  spec.set_chunk_size_bytes(4096);
  auto stream = Encode(spec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  int fragments = 0;
  for (const v1::KvChunk& c : stream->chunks) {
    EXPECT_LE(c.ByteSizeLong(), 4096u);
    fragments += c.has_fragment();
  }
  EXPECT_GT(fragments, 8 * 18);  // 76.8 KB blocks in <4 KiB pieces.
  EXPECT_EQ(stream->predicted, SerializedBytes(stream->chunks));
  auto layers = Decode(stream->chunks);
  ASSERT_TRUE(layers.ok()) << layers.status();
  EXPECT_LE(RelativeError((*layers)[3], 3), 0.01);
}

TEST_F(KvCodecTest, BackSelectionSendsTheLastTokensInTheHeader) {
  v1::TransferSpec spec;
  spec.mutable_selection()->set_mode(v1::SELECTION_BACK);
  spec.mutable_selection()->set_proportion(0.5);
  auto stream = Encode(spec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ(stream->chunks.front().header().shared_selected_tokens(), 18u);
  auto layers = Decode(stream->chunks);
  ASSERT_TRUE(layers.ok()) << layers.status();
  for (const DecodedLayer& d : *layers) {
    ASSERT_EQ(d.token_indices.size(), 18u);
    EXPECT_EQ(d.token_indices.front(), 19u);
    EXPECT_EQ(d.token_indices.back(), 36u);
    EXPECT_LE(RelativeError(d, d.layer), 0.05);
  }
  EXPECT_GE(stream->predicted, SerializedBytes(stream->chunks));
}

TEST_F(KvCodecTest, PerLayerNormSelectionCarriesIndicesInEachBlock) {
  v1::TransferSpec spec;
  spec.mutable_selection()->set_mode(v1::SELECTION_VNORM_TOPK);
  spec.mutable_selection()->set_proportion(0.25);
  auto stream = Encode(spec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_TRUE(stream->chunks.front().header().shared_token_indices().empty());
  auto layers = Decode(stream->chunks);
  ASSERT_TRUE(layers.ok()) << layers.status();
  for (const DecodedLayer& d : *layers) {
    // The selected tokens have the largest V norms of their layer.
    at::Tensor norms =
        cache_[d.layer].second.to(at::kFloat).norm(2, {2}).mean(0);
    const double threshold = std::get<0>(norms.topk(9)).min().item<double>();
    ASSERT_EQ(d.token_indices.size(), 9u);
    for (uint32_t t : d.token_indices) {
      EXPECT_GE(norms[t].item<double>(), threshold);
    }
  }
  EXPECT_GE(stream->predicted, SerializedBytes(stream->chunks));
}

TEST_F(KvCodecTest, SharedNormSelectionWaitsForEveryLayer) {
  v1::TransferSpec spec;
  spec.mutable_selection()->set_mode(v1::SELECTION_KNORM_TOPK);
  spec.mutable_selection()->set_proportion(0.5);
  spec.mutable_selection()->set_shared_across_layers(true);
  auto encoder = KvStreamEncoder::Create(model_, 37, spec, "req");
  ASSERT_TRUE(encoder.ok());
  std::vector<v1::KvChunk> chunks;
  ASSERT_TRUE((*encoder)->Start(&chunks).ok());
  EXPECT_TRUE(chunks.empty());
  for (size_t l = 0; l < 3; ++l) {
    ASSERT_TRUE((*encoder)
                    ->AddLayer(l, cache_[l].first, cache_[l].second, &chunks)
                    .ok());
  }
  EXPECT_TRUE(chunks.empty());
  ASSERT_TRUE(
      (*encoder)->AddLayer(3, cache_[3].first, cache_[3].second, &chunks).ok());
  EXPECT_EQ(chunks.size(), 9u);
  EXPECT_EQ(chunks.front().header().shared_selected_tokens(), 18u);
}

TEST_F(KvCodecTest, ExplicitIndicesAndLayerSubsetRoundTrip) {
  v1::TransferSpec spec;
  spec.set_scheme(v1::SCHEME_INT4);
  spec.add_layers(2);
  spec.add_layers(0);
  for (uint32_t i : {30u, 2u, 17u}) spec.mutable_selection()->add_indices(i);
  spec.mutable_selection()->set_mode(v1::SELECTION_EXPLICIT);
  auto stream = Encode(spec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto layers = Decode(stream->chunks);
  ASSERT_TRUE(layers.ok()) << layers.status();
  ASSERT_EQ(layers->size(), 2u);
  EXPECT_EQ((*layers)[0].layer, 0u);
  EXPECT_EQ((*layers)[1].layer, 2u);
  EXPECT_EQ((*layers)[0].token_indices, (std::vector<uint32_t>{2, 17, 30}));
}

TEST_F(KvCodecTest, ZstdStageIsLosslessAndCountedAsSent) {
  v1::TransferSpec plain;
  plain.set_scheme(v1::SCHEME_INT2);
  v1::TransferSpec packed = plain;
  packed.mutable_entropy()->set_coder(v1::ENTROPY_CODER_ZSTD);
  packed.mutable_entropy()->set_level(19);
  auto a = Encode(plain);
  auto b = Encode(packed);
  ASSERT_TRUE(a.ok() && b.ok());
  auto da = Decode(a->chunks);
  auto db = Decode(b->chunks);
  ASSERT_TRUE(da.ok() && db.ok()) << db.status();
  for (size_t i = 0; i < da->size(); ++i) {
    EXPECT_TRUE(at::equal((*da)[i].keys, (*db)[i].keys));
    EXPECT_TRUE(at::equal((*da)[i].values, (*db)[i].values));
  }
  const auto& stats = b->chunks.back().trailer().stats();
  EXPECT_EQ(static_cast<int64_t>(stats.serialized_bytes()),
            SerializedBytes(b->chunks) - b->chunks.back().ByteSizeLong());
  EXPECT_LE(SerializedBytes(b->chunks), b->predicted);
}

TEST_F(KvCodecTest, DetectsFlippedPayloadBitByChecksum) {
  auto stream = Encode(v1::TransferSpec());
  ASSERT_TRUE(stream.ok());
  std::string* values = stream->chunks[3].mutable_block()->mutable_values();
  (*values)[10] ^= 0x10;
  auto layers = Decode(stream->chunks);
  EXPECT_EQ(layers.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(layers.status().message()), HasSubstr("CRC-32C"));
}

TEST_F(KvCodecTest, DetectsTruncatedReorderedAndDuplicatedStreams) {
  auto stream = Encode(v1::TransferSpec());
  ASSERT_TRUE(stream.ok());
  std::vector<v1::KvChunk> truncated(stream->chunks.begin(),
                                     stream->chunks.end() - 1);
  EXPECT_EQ(Decode(truncated).status().code(), absl::StatusCode::kDataLoss);
  std::vector<v1::KvChunk> missing = stream->chunks;
  missing.erase(missing.begin() + 2);
  EXPECT_EQ(Decode(missing).status().code(), absl::StatusCode::kDataLoss);
  std::vector<v1::KvChunk> headless(stream->chunks.begin() + 1,
                                    stream->chunks.end());
  EXPECT_EQ(Decode(headless).status().code(), absl::StatusCode::kDataLoss);
  std::vector<v1::KvChunk> duplicated = stream->chunks;
  duplicated.insert(duplicated.begin() + 2, duplicated[1]);
  EXPECT_EQ(Decode(duplicated).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(KvCodecTest, DetectsReorderedFragments) {
  v1::TransferSpec spec;
  spec.set_scheme(v1::SCHEME_BF16);
  spec.set_chunk_size_bytes(4096);
  auto stream = Encode(spec);
  ASSERT_TRUE(stream.ok());
  std::swap(stream->chunks[2], stream->chunks[3]);
  EXPECT_EQ(Decode(stream->chunks).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(KvCodecTest, RejectsBlocksWhoseSizesContradictTheirMetadata) {
  auto stream = Encode(v1::TransferSpec());
  ASSERT_TRUE(stream.ok());
  v1::KvBlock block = stream->chunks[1].block();
  block.mutable_values()->pop_back();
  EXPECT_EQ(DecodeBlockValues(block, at::kFloat, at::kCPU).status().code(),
            absl::StatusCode::kDataLoss);
  block = stream->chunks[1].block();
  block.set_selected_tokens(1 << 20);
  EXPECT_EQ(DecodeBlockValues(block, at::kFloat, at::kCPU).status().code(),
            absl::StatusCode::kDataLoss);
  block = stream->chunks[1].block();
  block.set_scheme(static_cast<v1::Scheme>(42));
  EXPECT_EQ(DecodeBlockValues(block, at::kFloat, at::kCPU).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(KvCodecTest, RejectsTensorsOfTheWrongShape) {
  auto encoder = KvStreamEncoder::Create(model_, 37, v1::TransferSpec(), "r");
  ASSERT_TRUE(encoder.ok());
  std::vector<v1::KvChunk> chunks;
  ASSERT_TRUE((*encoder)->Start(&chunks).ok());
  at::Tensor wrong = at::zeros({2, 36, 64});
  EXPECT_EQ((*encoder)->AddLayer(0, wrong, wrong, &chunks).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*encoder)->Finish(0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(KvCodecTest, BudgetIsNeverExceeded) {
  v1::TransferSpec full;
  full.set_scheme(v1::SCHEME_BF16);
  auto reference = Encode(full);
  ASSERT_TRUE(reference.ok());
  const int64_t full_bytes = SerializedBytes(reference->chunks);
  std::mt19937 rng(3);
  int resource_exhausted = 0;
  for (int trial = 0; trial < 40; ++trial) {
    v1::TransferSpec spec = full;
    spec.set_budget_allow_mixed_precision(trial % 2 == 0);
    if (trial % 3 == 0) {
      spec.mutable_selection()->set_mode(v1::SELECTION_VNORM_TOPK);
    }
    const uint64_t budget = 200 + rng() % (full_bytes + 1000);
    spec.set_max_payload_bytes(budget);
    auto stream = Encode(spec);
    if (!stream.ok()) {
      EXPECT_EQ(stream.status().code(), absl::StatusCode::kResourceExhausted)
          << stream.status();
      ++resource_exhausted;
      continue;
    }
    EXPECT_LE(static_cast<uint64_t>(SerializedBytes(stream->chunks)), budget);
    EXPECT_TRUE(Decode(stream->chunks).ok());
  }
  EXPECT_LT(resource_exhausted, 40);
}

TEST_F(KvCodecTest, PlannerKeepsEveryTokenBeforeDroppingBits) {
  v1::TransferSpec spec;
  spec.set_scheme(v1::SCHEME_BF16);
  v1::TransferSpec int4 = spec;
  int4.set_scheme(v1::SCHEME_INT4);
  auto int4_plan = ResolveTransferPlan(model_, 37, int4);
  ASSERT_TRUE(int4_plan.ok());
  const int64_t int4_bytes = PredictStreamBytes(model_, *int4_plan);
  spec.set_max_payload_bytes(int4_bytes + 10);
  auto plan = PlanTransfer(model_, 37, spec);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->selected_tokens, 37u);
  EXPECT_EQ(plan->layers[0].scheme, v1::SCHEME_INT4);

  spec.set_budget_allow_mixed_precision(true);
  spec.set_max_payload_bytes(int4_bytes + 2 * 2 * 37 * 64 / 2 + 200);
  plan = PlanTransfer(model_, 37, spec);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->layers.back().scheme, v1::SCHEME_INT8);
  EXPECT_EQ(plan->layers.front().scheme, v1::SCHEME_INT4);

  spec.set_max_payload_bytes(int4_bytes / 2);
  plan = PlanTransfer(model_, 37, spec);
  ASSERT_TRUE(plan.ok());
  EXPECT_LT(plan->selected_tokens, 37u);
  EXPECT_EQ(plan->spec.selection().mode(), v1::SELECTION_BACK);
  EXPECT_LE(PredictStreamBytes(model_, *plan), int4_bytes / 2);

  spec.set_max_payload_bytes(100);
  EXPECT_EQ(PlanTransfer(model_, 37, spec).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(KvCodecTest, RejectsInvalidSpecsWithTheFieldName) {
  v1::TransferSpec spec;
  spec.add_layers(9);
  auto s = KvStreamEncoder::Create(model_, 37, spec, "r").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("layers"));
  spec.Clear();
  spec.set_chunk_size_bytes(100);
  EXPECT_THAT(
      std::string(
          KvStreamEncoder::Create(model_, 37, spec, "r").status().message()),
      HasSubstr("chunk_size_bytes"));
  spec.Clear();
  spec.set_scheme(static_cast<v1::Scheme>(77));
  EXPECT_EQ(KvStreamEncoder::Create(model_, 37, spec, "r").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvStreamEncoder::Create(model_, 0, v1::TransferSpec(), "r")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvwire

namespace kvwire {
namespace {

// On a CUDA build with a GPU: the same stream from CUDA tensors, byte for
// byte, and decoding onto the GPU gives the CPU's values.
TEST_F(KvCodecTest, AddLayersProducesTheStreamOfAddLayerByteForByte) {
  for (v1::SelectionMode mode :
       {v1::SELECTION_ALL, v1::SELECTION_VNORM_TOPK, v1::SELECTION_KNORM_TOPK,
        v1::SELECTION_RANDOM}) {
    for (bool shared : {false, true}) {
      v1::TransferSpec spec;
      spec.set_scheme(v1::SCHEME_INT4);
      spec.set_granularity(v1::GRANULARITY_PER_TOKEN);
      spec.mutable_selection()->set_mode(mode);
      spec.mutable_selection()->set_proportion(0.5);
      spec.mutable_selection()->set_shared_across_layers(shared);
      auto one_by_one = Encode(spec);
      auto at_once = Encode(spec, /*all_at_once=*/true);
      ASSERT_TRUE(one_by_one.ok()) << one_by_one.status();
      ASSERT_TRUE(at_once.ok()) << at_once.status();
      ASSERT_EQ(one_by_one->chunks.size(), at_once->chunks.size());
      // The trailer carries encode_seconds, which differ.
      for (size_t i = 0; i + 1 < at_once->chunks.size(); ++i) {
        EXPECT_EQ(one_by_one->chunks[i].SerializeAsString(),
                  at_once->chunks[i].SerializeAsString())
            << "mode " << mode << " shared " << shared << " chunk " << i;
      }
    }
  }
}

TEST_F(KvCodecTest, DeferredDecodeYieldsTheLayersOfImmediateDecode) {
  v1::TransferSpec spec;
  spec.set_scheme(v1::SCHEME_INT4);
  spec.set_granularity(v1::GRANULARITY_PER_TOKEN);
  spec.mutable_selection()->set_mode(v1::SELECTION_VNORM_TOPK);
  spec.mutable_selection()->set_proportion(0.5);
  spec.mutable_entropy()->set_coder(v1::ENTROPY_CODER_ZSTD);
  auto stream = Encode(spec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto immediate = Decode(stream->chunks);
  ASSERT_TRUE(immediate.ok()) << immediate.status();
  KvStreamDecoder deferred(at::kFloat, at::kCPU, /*defer_decode=*/true);
  for (const v1::KvChunk& c : stream->chunks) {
    auto layer = deferred.Consume(c);
    ASSERT_TRUE(layer.ok()) << layer.status();
    EXPECT_FALSE(layer->has_value());  // Kept, not decoded.
  }
  ASSERT_TRUE(deferred.Finish().ok());
  auto layers = deferred.DecodeHeld();
  ASSERT_TRUE(layers.ok()) << layers.status();
  ASSERT_EQ(layers->size(), immediate->size());
  for (size_t i = 0; i < layers->size(); ++i) {
    EXPECT_EQ((*layers)[i].layer, (*immediate)[i].layer);
    EXPECT_EQ((*layers)[i].token_indices, (*immediate)[i].token_indices);
    EXPECT_TRUE(at::equal((*layers)[i].keys, (*immediate)[i].keys));
    EXPECT_TRUE(at::equal((*layers)[i].values, (*immediate)[i].values));
  }
  EXPECT_TRUE(deferred.DecodeHeld()->empty());  // Nothing kept twice.
  // A corrupt block kept for later still fails the stream where it lands
  // (the checksum), not at the batched decode.
  std::vector<v1::KvChunk> bad = stream->chunks;
  for (v1::KvChunk& c : bad) {
    if (c.has_block()) {
      c.mutable_block()->mutable_values()->at(0) ^= 1;
      break;
    }
  }
  KvStreamDecoder strict(at::kFloat, at::kCPU, /*defer_decode=*/true);
  absl::Status status;
  for (const v1::KvChunk& c : bad) {
    status = strict.Consume(c).status();
    if (!status.ok()) break;
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
}

int CountBlocks(const std::vector<v1::KvChunk>& chunks) {
  int blocks = 0;
  for (const v1::KvChunk& c : chunks) blocks += c.has_block() + c.blocks_size();
  return blocks;
}

TEST_F(KvCodecTest, BatchedBlocksDecodeToTheLayersOfTheUnbatchedStream) {
  // Per-layer selection (indices in every block) and zstd: every block
  // field a batch must carry.
  v1::TransferSpec spec;
  spec.set_scheme(v1::SCHEME_INT4);
  spec.set_granularity(v1::GRANULARITY_PER_GROUP);
  spec.set_group_size(16);
  spec.mutable_selection()->set_mode(v1::SELECTION_VNORM_TOPK);
  spec.mutable_selection()->set_proportion(0.5);
  spec.mutable_entropy()->set_coder(v1::ENTROPY_CODER_ZSTD);
  spec.set_chunk_size_bytes(8192);
  auto stream = Encode(spec);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::vector<v1::KvChunk>& one = stream->chunks;
  ASSERT_EQ(one.size(), 10u);  // Header, 8 blocks, trailer.
  KvStreamDecoder plain_decoder(at::kFloat, at::kCPU);
  auto plain = DecodeWith(plain_decoder, one);
  ASSERT_TRUE(plain.ok()) << plain.status();

  for (int64_t max_blocks : {2, 3, 64}) {
    SCOPED_TRACE(max_blocks);
    const std::vector<v1::KvChunk> batched =
        BatchBlockChunks(one, max_blocks, spec.chunk_size_bytes());
    EXPECT_LT(batched.size(), one.size());
    EXPECT_TRUE(batched.front().has_header());
    EXPECT_TRUE(batched.back().has_trailer());
    EXPECT_EQ(CountBlocks(batched), 8);
    int largest = 0;
    for (const v1::KvChunk& c : batched) {
      EXPECT_LE(c.ByteSizeLong(), spec.chunk_size_bytes());
      EXPECT_LE(c.blocks_size(), max_blocks);
      EXPECT_NE(c.blocks_size(), 1);  // A lone block travels as `block`.
      largest = std::max(largest, c.blocks_size());
    }
    EXPECT_GE(largest, 2);
    // A batch serializes to the sum of the messages it replaces: the same
    // bytes, the trailer's figures still exact.
    EXPECT_EQ(SerializedBytes(batched), SerializedBytes(one));
    EXPECT_EQ(static_cast<int64_t>(
                  batched.back().trailer().stats().serialized_bytes()),
              SerializedBytes(batched) - batched.back().ByteSizeLong());

    KvStreamDecoder decoder(at::kFloat, at::kCPU);
    auto layers = DecodeWith(decoder, batched);
    ASSERT_TRUE(layers.ok()) << layers.status();
    ExpectSameLayers(*layers, *plain);
    // The receiver's accounting is the unbatched one, byte for byte and
    // layer by layer; only the message count differs.
    const ByteAccounting& a = decoder.accounting();
    const ByteAccounting& b = plain_decoder.accounting();
    EXPECT_EQ(a.total().payload, b.total().payload);
    EXPECT_EQ(a.total().scale, b.total().scale);
    EXPECT_EQ(a.total().index, b.total().index);
    EXPECT_EQ(a.total().header, b.total().header);
    ASSERT_EQ(a.per_layer().size(), b.per_layer().size());
    for (const auto& [layer, counts] : a.per_layer()) {
      EXPECT_EQ(counts.total(), b.per_layer().at(layer).total()) << layer;
      EXPECT_EQ(counts.header, b.per_layer().at(layer).header) << layer;
    }
    EXPECT_EQ(a.chunks(), static_cast<int64_t>(batched.size()) - 1);

    // Deferred decoding keeps a batch's blocks like single ones.
    KvStreamDecoder deferred(at::kFloat, at::kCPU, /*defer_decode=*/true);
    for (const v1::KvChunk& c : batched) {
      auto done = deferred.ConsumeAll(c);
      ASSERT_TRUE(done.ok()) << done.status();
      EXPECT_TRUE(done->empty());
    }
    ASSERT_TRUE(deferred.Finish().ok());
    auto held = deferred.DecodeHeld();
    ASSERT_TRUE(held.ok()) << held.status();
    ExpectSameLayers(*held, *plain);
  }
}

TEST_F(KvCodecTest, BatchingIsAdaptiveAndLeavesOtherChunksAlone) {
  auto stream = Encode(v1::TransferSpec());
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::vector<v1::KvChunk>& one = stream->chunks;
  // One block waiting, or batches not allowed: the chunk as it came.
  std::deque<v1::KvChunk> pending = {one[1]};
  int64_t merged = -1;
  v1::KvChunk next = TakeNextMessage(pending, 64, 1 << 20, &merged);
  EXPECT_TRUE(next.has_block());
  EXPECT_EQ(merged, 0);
  EXPECT_TRUE(pending.empty());
  pending = {one[1], one[2]};
  for (int64_t off : {0, 1}) {
    next = TakeNextMessage(pending, off, 1 << 20, &merged);
    EXPECT_TRUE(next.has_block());
    EXPECT_EQ(merged, 0);
  }
  // Header and trailer never join a batch; blocks stop at them.
  pending = {one[0], one[1], one[2], one[9]};
  next = TakeNextMessage(pending, 64, 1 << 20, &merged);
  EXPECT_TRUE(next.has_header());
  next = TakeNextMessage(pending, 64, 1 << 20, &merged);
  ASSERT_EQ(next.blocks_size(), 2);
  EXPECT_EQ(merged, 1);
  EXPECT_EQ(next.ByteSizeLong(), one[1].ByteSizeLong() + one[2].ByteSizeLong());
  EXPECT_EQ(next.blocks(0).SerializeAsString(),
            one[1].block().SerializeAsString());
  EXPECT_EQ(next.blocks(1).SerializeAsString(),
            one[2].block().SerializeAsString());
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_TRUE(pending.front().has_trailer());
  // The byte cap: two blocks that do not fit together go one by one.
  pending = {one[1], one[2]};
  next = TakeNextMessage(
      pending, 64, one[1].ByteSizeLong() + one[2].ByteSizeLong() - 1, &merged);
  EXPECT_TRUE(next.has_block());
  EXPECT_EQ(pending.size(), 1u);
}

TEST_F(KvCodecTest, CorruptOrMisplacedBlocksInsideABatchAreDataLoss) {
  auto stream = Encode(v1::TransferSpec());
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::vector<v1::KvChunk> batched =
      BatchBlockChunks(stream->chunks, 3, 1 << 20);
  ASSERT_EQ(batched.size(), 5u);  // Header, 3 + 3 + 2 blocks, trailer.
  ASSERT_EQ(batched[1].blocks_size(), 3);

  // A flipped payload bit in the second block of a batch: its CRC-32C.
  std::vector<v1::KvChunk> bad = batched;
  (*bad[1].mutable_blocks(1)->mutable_values())[10] ^= 0x10;
  auto layers = Decode(bad);
  EXPECT_EQ(layers.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(layers.status().message()),
              AllOf(HasSubstr("layer 0 V block failed its CRC-32C"),
                    HasSubstr("block 2 of a 3-block message")));

  // The same block twice within a batch, or again in the next one.
  bad = batched;
  *bad[1].mutable_blocks(2) = bad[1].blocks(1);
  EXPECT_THAT(std::string(Decode(bad).status().message()),
              HasSubstr("received twice"));
  EXPECT_EQ(Decode(bad).status().code(), absl::StatusCode::kDataLoss);
  bad = batched;
  *bad[2].add_blocks() = bad[1].blocks(0);
  EXPECT_EQ(Decode(bad).status().code(), absl::StatusCode::kDataLoss);

  // A batch before the header, one that also carries a body, a missing
  // batch, an empty chunk.
  bad = batched;
  std::swap(bad[0], bad[1]);
  EXPECT_EQ(Decode(bad).status().code(), absl::StatusCode::kDataLoss);
  bad = batched;
  *bad[1].mutable_block() = stream->chunks[7].block();
  EXPECT_THAT(std::string(Decode(bad).status().message()),
              HasSubstr("both a batch of blocks and another body"));
  bad = batched;
  bad.erase(bad.begin() + 2);
  EXPECT_EQ(Decode(bad).status().code(), absl::StatusCode::kDataLoss);

  // A block of a batch whose shape contradicts the header.
  bad = batched;
  bad[2].mutable_blocks(0)->set_kv_heads(7);
  EXPECT_EQ(Decode(bad).status().code(), absl::StatusCode::kDataLoss);

  // A batch inside a fragmented block interrupts it.
  v1::TransferSpec small;
  small.set_scheme(v1::SCHEME_BF16);
  small.set_chunk_size_bytes(4096);
  auto fragmented = Encode(small);
  ASSERT_TRUE(fragmented.ok()) << fragmented.status();
  ASSERT_TRUE(fragmented->chunks[1].has_fragment());
  bad = fragmented->chunks;
  v1::KvChunk intruder;
  *intruder.add_blocks() = stream->chunks[1].block();
  *intruder.add_blocks() = stream->chunks[2].block();
  bad.insert(bad.begin() + 2, intruder);
  auto interrupted = Decode(bad);
  EXPECT_EQ(interrupted.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(interrupted.status().message()),
              HasSubstr("fragments interrupted"));

  // Consume (one layer per chunk) refuses a batch that completes two.
  KvStreamDecoder decoder(at::kFloat, at::kCPU);
  const std::vector<v1::KvChunk> pairs =
      BatchBlockChunks(stream->chunks, 4, 1 << 20);
  ASSERT_TRUE(decoder.Consume(pairs[0]).ok());
  EXPECT_EQ(decoder.Consume(pairs[1]).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(KvCodecTest, CudaTensorsProduceTheCpuStreamBitForBit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (v1::Scheme scheme :
       {v1::SCHEME_BF16, v1::SCHEME_FP8_E4M3, v1::SCHEME_FP8_E5M2,
        v1::SCHEME_INT8, v1::SCHEME_INT4, v1::SCHEME_INT2, v1::SCHEME_NF4}) {
    for (v1::Granularity g :
         {v1::GRANULARITY_PER_HEAD, v1::GRANULARITY_PER_TOKEN,
          v1::GRANULARITY_KIVI, v1::GRANULARITY_PER_GROUP}) {
      for (bool asym : {false, true}) {
        v1::TransferSpec spec;
        spec.set_scheme(scheme);
        spec.set_granularity(g);
        spec.set_group_size(16);
        spec.set_asymmetric(asym);
        spec.mutable_selection()->set_mode(v1::SELECTION_VNORM_TOPK);
        spec.mutable_selection()->set_proportion(0.5);
        auto cpu = Encode(spec);
        ASSERT_TRUE(cpu.ok()) << cpu.status();
        const auto cpu_cache = cache_;
        for (auto& [k, v] : cache_) {
          k = k.to(at::kCUDA);
          v = v.to(at::kCUDA);
        }
        auto gpu = Encode(spec);
        // Every layer's blocks in one batch: one device-to-host copy.
        auto gpu_batch = Encode(spec, /*all_at_once=*/true);
        cache_ = cpu_cache;
        ASSERT_TRUE(gpu.ok()) << gpu.status();
        ASSERT_TRUE(gpu_batch.ok()) << gpu_batch.status();
        ASSERT_EQ(cpu->chunks.size(), gpu->chunks.size());
        ASSERT_EQ(cpu->chunks.size(), gpu_batch->chunks.size());
        for (size_t i = 0; i + 1 < cpu->chunks.size(); ++i) {
          EXPECT_EQ(cpu->chunks[i].SerializeAsString(),
                    gpu->chunks[i].SerializeAsString())
              << SchemeName(scheme) << " " << GranularityName(g) << " asym "
              << asym << " chunk " << i;
          EXPECT_EQ(cpu->chunks[i].SerializeAsString(),
                    gpu_batch->chunks[i].SerializeAsString())
              << SchemeName(scheme) << " " << GranularityName(g) << " asym "
              << asym << " chunk " << i << " (batched)";
        }
        // Every block in one batch: one host-to-device copy.
        KvStreamDecoder batched(at::kFloat, at::kCUDA, /*defer_decode=*/true);
        for (const auto& c : cpu->chunks) ASSERT_TRUE(batched.Consume(c).ok());
        auto held = batched.DecodeHeld();
        ASSERT_TRUE(held.ok()) << held.status();
        KvStreamDecoder on_gpu(at::kFloat, at::kCUDA);
        auto layers = Decode(cpu->chunks);
        ASSERT_TRUE(layers.ok());
        size_t n = 0;
        for (const auto& c : cpu->chunks) {
          auto layer = on_gpu.Consume(c);
          ASSERT_TRUE(layer.ok()) << layer.status();
          if (layer->has_value()) {
            EXPECT_TRUE((*layer)->keys.is_cuda());
            EXPECT_TRUE(at::equal((*layer)->keys.cpu(), (*layers)[n].keys));
            EXPECT_TRUE(at::equal((*layer)->values.cpu(), (*layers)[n].values));
            ASSERT_LT(n, held->size());
            EXPECT_TRUE(at::equal((*held)[n].keys.cpu(), (*layers)[n].keys));
            EXPECT_TRUE(
                at::equal((*held)[n].values.cpu(), (*layers)[n].values));
            ++n;
          }
        }
        EXPECT_EQ(n, layers->size());
      }
    }
  }
}

}  // namespace
}  // namespace kvwire
