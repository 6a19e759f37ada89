// The in-process C2C pipeline and the receiver session on tiny random models
// generated at test time (test_assets.h): the four answer modes, C2C's fusion
// semantics (layers in any order, missing layers, sparse positions), the
// selection strategies and the codec's byte report.
#include "common/engine/pipeline.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec/kv_codec.h"
#include "common/codec/token_selection.h"
#include "common/engine/model_loading.h"
#include "common/engine/receiver_session.h"
#include "common/engine/selection.h"
#include "common/fuser/fuser.h"
#include "common/model/batched_decode.h"
#include "common/model/model_fingerprint.h"
#include "common/model/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/engine/test_assets.h"

namespace kvwire {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr int64_t kNewTokens = 6;

class PipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(MakeTempDir("kvwire-pipeline"));
    ASSERT_FALSE(root_->empty());
    auto assets = MakeTinyPipeline(*root_);
    ASSERT_TRUE(assets.ok()) << assets.status();
    assets_ = new TinyPipelineAssets(*assets);
    PipelineOptions o;
    o.receiver.model.dir = assets->receiver_dir;
    o.sharer.model.dir = assets->sharer_dir;
    o.receiver.fuser_dir = assets->fuser_dir;
    o.text_to_text_max_new_tokens = 12;
    auto p = C2cPipeline::Load(o);
    ASSERT_TRUE(p.ok()) << p.status();
    pipeline_ = p->release();
  }
  static void TearDownTestSuite() {
    delete pipeline_;
    delete assets_;
    delete root_;
    pipeline_ = nullptr;
  }

  void SetUp() override { ASSERT_NE(pipeline_, nullptr); }

  static PipelineRequest Request(PipelineMode mode) {
    PipelineRequest r;
    r.messages = {ChatMessage{"user",
                              "Which gas do plants absorb? A. oxygen B. carbon "
                              "dioxide",
                              std::nullopt}};
    r.mode = mode;
    r.generation.max_new_tokens = kNewTokens;
    r.generation.eos_token_ids = std::vector<int64_t>();  // Never stop.
    return r;
  }
  static v1::TransferSpec Spec(v1::Scheme scheme) {
    v1::TransferSpec spec;
    spec.set_scheme(scheme);
    return spec;
  }
  static std::vector<int64_t> Prompt() {
    auto ids = pipeline_->ReceiverPrompt(Request(PipelineMode::kC2C).messages);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int64_t>();
  }
  // The sharer's stream for ids[0, L-1), decoded into layers.
  static std::vector<DecodedLayer> DecodedLayers(
      const std::vector<int64_t>& prompt, const v1::TransferSpec& spec) {
    std::vector<DecodedLayer> out;
    KvStreamDecoder decoder(at::kFloat, at::kCPU);
    const std::vector<int64_t> share(prompt.begin(), prompt.end() - 1);
    auto stats = pipeline_->Share(share, spec, "test",
                                  [&](v1::KvChunk chunk) -> absl::Status {
                                    auto d = decoder.Consume(chunk);
                                    if (!d.ok()) return d.status();
                                    if (d->has_value())
                                      out.push_back(std::move(**d));
                                    return absl::OkStatus();
                                  });
    EXPECT_TRUE(stats.ok()) << stats.status();
    EXPECT_TRUE(decoder.Finish().ok());
    return out;
  }
  static std::unique_ptr<ReceiverSession> Session(
      const std::vector<int64_t>& prompt, bool with_fuser = true) {
    auto s = ReceiverSession::Create(&pipeline_->receiver(),
                                     with_fuser ? pipeline_->fuser() : nullptr,
                                     prompt, kNewTokens);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  static std::vector<int64_t> Generate(ReceiverSession& s) {
    GenerationOptions g;
    g.max_new_tokens = kNewTokens;
    g.eos_token_ids = std::vector<int64_t>();
    auto r = s.Generate(g);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->tokens : std::vector<int64_t>();
  }
  static at::Tensor Layer(const ReceiverSession& s, int t, bool values) {
    auto kv = s.cache().Read(t, 0, s.fused_length());
    EXPECT_TRUE(kv.ok());
    return (values ? kv->second : kv->first).clone();
  }

  static std::string* root_;
  static TinyPipelineAssets* assets_;
  static C2cPipeline* pipeline_;
};

std::string* PipelineTest::root_ = nullptr;
TinyPipelineAssets* PipelineTest::assets_ = nullptr;
C2cPipeline* PipelineTest::pipeline_ = nullptr;

TEST_F(PipelineTest, AllFourModesAnswer) {
  const std::vector<int64_t> prompt = Prompt();
  ASSERT_GT(prompt.size(), 8u);
  std::map<PipelineMode, PipelineResult> results;
  for (PipelineMode mode :
       {PipelineMode::kReceiverOnly, PipelineMode::kSharerOnly,
        PipelineMode::kC2C, PipelineMode::kTextToText}) {
    PipelineRequest r = Request(mode);
    r.spec = Spec(v1::SCHEME_INT8);
    std::vector<int64_t> streamed;
    r.on_token = [&](int64_t i, int64_t token) {
      EXPECT_EQ(i, static_cast<int64_t>(streamed.size()));
      streamed.push_back(token);
    };
    auto result = pipeline_->Answer(r);
    ASSERT_TRUE(result.ok())
        << PipelineModeName(mode) << ": " << result.status();
    EXPECT_EQ(result->mode, mode);
    EXPECT_EQ(result->token_ids.size(), static_cast<size_t>(kNewTokens))
        << PipelineModeName(mode);
    EXPECT_EQ(streamed, result->token_ids);
    EXPECT_GT(result->timings.time_to_first_token_seconds, 0);
    EXPECT_GE(result->timings.total_seconds,
              result->timings.time_to_first_token_seconds);
    results[mode] = *std::move(result);
  }
  // Receiver-only and C2C read the receiver's rendering (Qwen3 template,
  // empty think block); the sharer its own (Qwen2.5, default system prompt).
  EXPECT_EQ(results[PipelineMode::kReceiverOnly].prompt_ids, prompt);
  EXPECT_EQ(results[PipelineMode::kC2C].prompt_ids, prompt);
  const std::string sharer_prompt =
      pipeline_->tokenizer()->Decode(std::vector<uint32_t>(
          results[PipelineMode::kSharerOnly].prompt_ids.begin(),
          results[PipelineMode::kSharerOnly].prompt_ids.end()));
  EXPECT_THAT(sharer_prompt, HasSubstr("You are Qwen, created by Alibaba"));
  EXPECT_THAT(pipeline_->tokenizer()->Decode(
                  std::vector<uint32_t>(prompt.begin(), prompt.end())),
              HasSubstr("<think>\n\n</think>\n\n"));
  // C2C: every receiver layer fused from a full INT8 transfer.
  const PipelineResult& c2c = results[PipelineMode::kC2C];
  EXPECT_THAT(c2c.fused_layers, ElementsAreArray({0, 1, 2, 3}));
  ASSERT_TRUE(c2c.transfer.has_value());
  EXPECT_EQ(c2c.transfer->prompt_tokens, prompt.size() - 1);
  EXPECT_EQ(c2c.transfer->layers_sent, 3u);
  EXPECT_EQ(c2c.transfer->tokens_sent, 3 * (prompt.size() - 1));
  EXPECT_GT(c2c.timings.fuse_seconds, 0);
  EXPECT_GT(c2c.timings.encode_seconds, 0);
  EXPECT_GT(c2c.timings.decode_seconds, 0);
  EXPECT_GT(c2c.timings.receiver_prefill_seconds, 0);
  EXPECT_GT(c2c.timings.sharer_prefill_seconds, 0);
  const v1::StageTimings st = ToStageTimings(c2c.timings);
  EXPECT_EQ(st.fuse_seconds(), c2c.timings.fuse_seconds);
  // Text-to-text: the sharer wrote something, and the receiver read the
  // 3-turn chat that carries it and the original question.
  const PipelineResult& t2t = results[PipelineMode::kTextToText];
  EXPECT_FALSE(t2t.background_ids.empty());
  EXPECT_GT(t2t.prompt_ids.size(), prompt.size());
  const std::string t2t_prompt = pipeline_->tokenizer()->Decode(
      std::vector<uint32_t>(t2t.prompt_ids.begin(), t2t.prompt_ids.end()));
  EXPECT_THAT(t2t_prompt,
              HasSubstr("describe the most essential background knowledge "
                        "needed to answer the question:Which gas"));
  EXPECT_THAT(t2t_prompt, HasSubstr("<|im_start|>assistant\n"));
  EXPECT_GT(t2t.timings.sharer_generation_seconds, 0);
}

TEST_F(PipelineTest, ShareAtPositionsStreamsThePositionedPrefill) {
  // A gapped prompt, as token alignment makes: the stream must carry the
  // K/V of a prefill at those RoPE positions, not at 0, 1, ...
  const std::vector<int64_t> prompt = Prompt();
  ASSERT_GE(prompt.size(), 8u);
  const std::vector<int64_t> ids(prompt.begin(), prompt.begin() + 6);
  const std::vector<int64_t> positions = {0, 1, 4, 5, 6, 9};
  std::vector<DecodedLayer> layers;
  KvStreamDecoder decoder(at::kFloat, at::kCPU);
  auto report = pipeline_->Share(
      ids, Spec(v1::SCHEME_BF16), "positions",
      [&](v1::KvChunk chunk) -> absl::Status {
        auto d = decoder.Consume(chunk);
        if (!d.ok()) return d.status();
        if (d->has_value()) layers.push_back(std::move(**d));
        return absl::OkStatus();
      },
      positions);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_FALSE(layers.empty());
  const Decoder& sharer = *pipeline_->sharer();
  auto gapped = sharer.NewCache(16);
  auto plain = sharer.NewCache(16);
  ASSERT_TRUE(gapped.ok() && plain.ok());
  ASSERT_TRUE(
      sharer.PrefillAt(ids, positions, *gapped, nullptr, LogitsMode::kNone)
          .ok());
  ASSERT_TRUE(sharer.Prefill(ids, *plain, nullptr, LogitsMode::kNone).ok());
  for (const DecodedLayer& layer : layers) {
    SCOPED_TRACE(absl::StrCat("sharer layer ", layer.layer));
    // bf16 passthrough: the cache rounded to bf16 is what arrives.
    const at::Tensor want =
        gapped->Keys(layer.layer).to(at::kBFloat16).to(at::kFloat);
    EXPECT_TRUE(at::equal(layer.keys, want));
    EXPECT_FALSE(
        at::allclose(layer.keys, plain->Keys(layer.layer), 1e-2, 1e-3));
  }
  // Positions that do not increase are refused with a reason.
  auto bad = pipeline_->Share(
      ids, Spec(v1::SCHEME_BF16), "bad",
      [](v1::KvChunk) { return absl::OkStatus(); },
      std::vector<int64_t>{0, 1, 1, 2, 3, 4});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("strictly"));
}

TEST_F(PipelineTest, ModesReadSameIdsWhenGivenIds) {
  PipelineRequest r = Request(PipelineMode::kReceiverOnly);
  r.messages.clear();
  r.prompt_ids = {5, 9, 77, 120, 33, 256, 4};
  auto a = pipeline_->Answer(r);
  ASSERT_TRUE(a.ok()) << a.status();
  // Receiver-only equals the decoder's own generation.
  GenerationOptions g;
  g.max_new_tokens = kNewTokens;
  g.eos_token_ids = std::vector<int64_t>();
  auto direct = pipeline_->receiver().Generate(r.prompt_ids, g);
  ASSERT_TRUE(direct.ok());
  EXPECT_EQ(a->token_ids, direct->tokens);
  r.mode = PipelineMode::kSharerOnly;
  auto s = pipeline_->Answer(r);
  ASSERT_TRUE(s.ok()) << s.status();
  auto sharer_direct = pipeline_->sharer()->Generate(r.prompt_ids, g);
  ASSERT_TRUE(sharer_direct.ok());
  EXPECT_EQ(s->token_ids, sharer_direct->tokens);
  EXPECT_EQ(s->prompt_ids, r.prompt_ids);
  r.mode = PipelineMode::kTextToText;
  EXPECT_EQ(pipeline_->Answer(r).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PipelineTest, FusedLayersMatchDirectFusionOfTheSharerCache) {
  const std::vector<int64_t> prompt = Prompt();
  PipelineRequest direct = Request(PipelineMode::kC2C);
  direct.direct_transfer = true;
  direct.capture_layers = {0, 1, 2, 3};
  auto d = pipeline_->Answer(direct);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->transfer.has_value());
  // Reference: FuseLayer on the receiver's own prefix with the sharer's
  // cache, layer t from sharer layer map(t).
  const int64_t T = static_cast<int64_t>(prompt.size()) - 1;
  const std::vector<int64_t> prefix(prompt.begin(), prompt.end() - 1);
  auto rc = pipeline_->receiver().NewCache(T);
  auto sc = pipeline_->sharer()->NewCache(T);
  ASSERT_TRUE(rc.ok() && sc.ok());
  ASSERT_TRUE(pipeline_->receiver().Prefill(prefix, *rc).ok());
  ASSERT_TRUE(pipeline_->sharer()->Prefill(prefix, *sc).ok());
  for (int t = 0; t < 4; ++t) {
    const int s = *pipeline_->fuser()->SharerLayerFor(t);
    ASSERT_TRUE(pipeline_->fuser()
                    ->FuseLayer(t, sc->Keys(s), sc->Values(s), rc->Keys(t),
                                rc->Values(t))
                    .ok());
    EXPECT_TRUE(at::equal(d->captured[t].first, rc->Keys(t))) << t;
    EXPECT_TRUE(at::equal(d->captured[t].second, rc->Values(t))) << t;
  }
  // The same through the codec with BF16 passthrough: only the bf16
  // rounding of the sharer's KV separates the two.
  PipelineRequest bf16 = direct;
  bf16.direct_transfer = false;
  bf16.spec = Spec(v1::SCHEME_BF16);
  auto b = pipeline_->Answer(bf16);
  ASSERT_TRUE(b.ok()) << b.status();
  for (int t = 0; t < 4; ++t) {
    EXPECT_TRUE(
        at::allclose(b->captured[t].first, d->captured[t].first, 0.05, 0.05));
    EXPECT_FALSE(at::equal(b->captured[t].first, d->captured[t].first));
  }
}

TEST_F(PipelineTest, LayersInShuffledOrderGiveTheSameResult) {
  const std::vector<int64_t> prompt = Prompt();
  const std::vector<DecodedLayer> layers =
      DecodedLayers(prompt, Spec(v1::SCHEME_INT8));
  ASSERT_EQ(layers.size(), 3u);

  auto in_order = Session(prompt);
  ASSERT_TRUE(in_order->Prefill().ok());
  for (const DecodedLayer& l : layers) {
    auto fused = in_order->AddLayer(l);
    ASSERT_TRUE(fused.ok()) << fused.status();
    EXPECT_EQ(*fused, pipeline_->fuser()->ReceiverLayersReading(l.layer));
  }
  std::vector<DecodedLayer> shuffled = layers;
  std::mt19937 rng(7);
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  std::reverse(shuffled.begin(), shuffled.end());
  auto out_of_order = Session(prompt);
  ASSERT_TRUE(out_of_order->Prefill().ok());
  for (const DecodedLayer& l : shuffled) {
    ASSERT_TRUE(out_of_order->AddLayer(l).ok());
  }
  // Layers that land before the receiver's prefill are held, then fused.
  auto early = Session(prompt);
  for (const DecodedLayer& l : shuffled) {
    auto fused = early->AddLayer(l);
    ASSERT_TRUE(fused.ok());
    EXPECT_TRUE(fused->empty());
  }
  EXPECT_TRUE(early->FusedLayers().empty());
  ASSERT_TRUE(early->Prefill().ok());
  EXPECT_THAT(early->FusedLayers(), ElementsAreArray({0, 1, 2, 3}));

  for (int t = 0; t < 4; ++t) {
    for (bool v : {false, true}) {
      const at::Tensor ref = Layer(*in_order, t, v);
      EXPECT_TRUE(at::equal(ref, Layer(*out_of_order, t, v))) << t;
      // Held layers are fused in one batched call (C2CFuser::FuseLayers):
      // equal up to the GEMMs' accumulation order.
      const at::Tensor batched = Layer(*early, t, v);
      EXPECT_TRUE(at::allclose(ref, batched, 1e-5, 1e-6))
          << t << ": max diff " << (ref - batched).abs().max().item<double>();
    }
  }
  const std::vector<int64_t> tokens = Generate(*in_order);
  EXPECT_EQ(Generate(*out_of_order), tokens);
  EXPECT_EQ(Generate(*early), tokens);
}

TEST_F(PipelineTest, PooledCachesFuseAndDecodeLikeOwnCaches) {
  // The receiver's caches as strided slots of a KvSlotPool (what the
  // services use on CUDA): held layers fused in one batched call into the
  // slot's views, a traced session, and decode steps through the batcher
  // give what a cache of its own gives.
  const std::vector<int64_t> prompt = Prompt();
  const std::vector<DecodedLayer> layers =
      DecodedLayers(prompt, Spec(v1::SCHEME_INT8));
  auto own = Session(prompt);
  for (const DecodedLayer& l : layers) ASSERT_TRUE(own->AddLayer(l).ok());
  ASSERT_TRUE(own->Prefill().ok());

  auto pooled_receiver = Decoder::Load(assets_->receiver_dir);
  ASSERT_TRUE(pooled_receiver.ok()) << pooled_receiver.status();
  auto pool = KvSlotPool::Create(**pooled_receiver, 3, 256);
  ASSERT_TRUE(pool.ok()) << pool.status();
  (*pooled_receiver)->SetSlotPool(*pool);
  auto batched = std::make_shared<BatchedDecodeAccelerator>(*pool);
  (*pooled_receiver)->SetDecodeAccelerator(batched);
  auto occupied = (*pooled_receiver)->NewCache(16);  // Slot 0 stays busy.
  ASSERT_TRUE(occupied.ok());
  auto created = ReceiverSession::Create(
      pooled_receiver->get(), pipeline_->fuser(), prompt, kNewTokens);
  ASSERT_TRUE(created.ok()) << created.status();
  ReceiverSession& pooled = **created;
  ASSERT_NE(pooled.cache().slot_lease(), nullptr);
  EXPECT_EQ(pooled.cache().slot_lease()->slot, 1);
  RequestTrace trace(std::chrono::steady_clock::now());
  pooled.set_trace(&trace);
  for (const DecodedLayer& l : layers) ASSERT_TRUE(pooled.AddLayer(l).ok());
  ASSERT_TRUE(pooled.Prefill().ok());
  for (int t = 0; t < 4; ++t) {
    for (bool v : {false, true}) {
      const at::Tensor ref = Layer(*own, t, v);
      const at::Tensor got = Layer(pooled, t, v);
      EXPECT_TRUE(at::allclose(ref, got, 1e-5, 1e-6))
          << t << ": max diff " << (ref - got).abs().max().item<double>();
    }
  }
  EXPECT_EQ(Generate(pooled), Generate(*own));
  // The last prompt token and every generated token but the last.
  EXPECT_EQ(batched->steps(), kNewTokens);
  EXPECT_FALSE(trace.Events().empty());
}

TEST_F(PipelineTest, PrefillStopsAtTheLayerWhoseCheckFails) {
  // A cancelled call's long prompt must not run to its end (issue 14): the
  // check runs after every layer and its error ends the prefill there.
  const std::vector<int64_t> prompt = Prompt();
  auto session = Session(prompt, /*with_fuser=*/false);
  int checks = 0;
  const absl::Status stopped = session->Prefill([&checks] {
    return ++checks == 2 ? absl::CancelledError("client went away")
                         : absl::OkStatus();
  });
  EXPECT_EQ(stopped.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(checks, 2);  // Layers 0 and 1 of 4 ran.
  EXPECT_FALSE(session->prefilled());

  auto completed = Session(prompt, /*with_fuser=*/false);
  checks = 0;
  ASSERT_TRUE(completed
                  ->Prefill([&checks] {
                    ++checks;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(checks, pipeline_->receiver().config().num_hidden_layers);
}

TEST_F(PipelineTest, MissingLayerLeavesItsReceiverLayersUntouched) {
  const std::vector<int64_t> prompt = Prompt();
  auto own = Session(prompt, /*with_fuser=*/false);
  ASSERT_TRUE(own->Prefill().ok());
  // Sharer layer 1 never arrives: receiver layer 2 reads it.
  ASSERT_EQ(pipeline_->fuser()->ReceiverLayersReading(1),
            std::vector<int>({2}));
  auto session = Session(prompt);
  ASSERT_TRUE(session->Prefill().ok());
  for (const DecodedLayer& l : DecodedLayers(prompt, Spec(v1::SCHEME_BF16))) {
    if (l.layer != 1) {
      ASSERT_TRUE(session->AddLayer(l).ok());
    }
  }
  EXPECT_THAT(session->FusedLayers(), ElementsAreArray({0, 1, 3}));
  for (int t = 0; t < 4; ++t) {
    const bool same =
        at::equal(Layer(*session, t, false), Layer(*own, t, false)) &&
        at::equal(Layer(*session, t, true), Layer(*own, t, true));
    EXPECT_EQ(same, t == 2) << "receiver layer " << t;
  }
  // The same through the pipeline: the sharer sends only layers 0 and 2.
  PipelineRequest r = Request(PipelineMode::kC2C);
  r.spec = Spec(v1::SCHEME_BF16);
  r.spec.add_layers(0);
  r.spec.add_layers(2);
  r.capture_layers = {0, 1, 2, 3};
  auto result = pipeline_->Answer(r);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(result->fused_layers, ElementsAreArray({0, 1, 3}));
  EXPECT_EQ(result->transfer->layers_sent, 2u);
  EXPECT_TRUE(at::equal(result->captured[2].first, Layer(*own, 2, false)));
  EXPECT_TRUE(at::equal(result->captured[2].second, Layer(*own, 2, true)));
  EXPECT_FALSE(at::equal(result->captured[3].first, Layer(*own, 3, false)));
}

TEST_F(PipelineTest, PartialSelectionFusesOnlySelectedPositions) {
  const std::vector<int64_t> prompt = Prompt();
  const int64_t T = static_cast<int64_t>(prompt.size()) - 1;
  auto own = Session(prompt, /*with_fuser=*/false);
  ASSERT_TRUE(own->Prefill().ok());
  for (v1::SelectionMode mode :
       {v1::SELECTION_EXPLICIT, v1::SELECTION_BACK, v1::SELECTION_VNORM_TOPK}) {
    PipelineRequest r = Request(PipelineMode::kC2C);
    r.spec = Spec(v1::SCHEME_INT8);
    r.spec.mutable_selection()->set_mode(mode);
    if (mode == v1::SELECTION_EXPLICIT) {
      for (uint32_t i : {1u, 4u, 5u, 9u})
        r.spec.mutable_selection()->add_indices(i);
    } else {
      r.spec.mutable_selection()->set_proportion(0.3);
    }
    r.capture_layers = {0, 1, 2, 3};
    auto result = pipeline_->Answer(r);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE(result->transfer.has_value());
    const int64_t k =
        mode == v1::SELECTION_EXPLICIT ? 4 : SelectedTokenCount(T, 0.3, 0);
    EXPECT_EQ(result->transfer->tokens_sent, 3 * k);
    for (int t = 0; t < 4; ++t) {
      const int s = *pipeline_->fuser()->SharerLayerFor(t);
      const std::vector<uint32_t>& sel = result->transfer->selected.at(s);
      ASSERT_EQ(static_cast<int64_t>(sel.size()), k);
      if (mode == v1::SELECTION_EXPLICIT) {
        EXPECT_THAT(sel, ElementsAreArray({1u, 4u, 5u, 9u}));
      }
      const std::set<uint32_t> chosen(sel.begin(), sel.end());
      for (bool v : {false, true}) {
        const at::Tensor mine =
            v ? result->captured[t].second : result->captured[t].first;
        const at::Tensor ref = Layer(*own, t, v);
        for (int64_t p = 0; p < T; ++p) {
          const bool same = at::equal(mine.select(1, p), ref.select(1, p));
          EXPECT_EQ(same, chosen.count(static_cast<uint32_t>(p)) == 0)
              << "layer " << t << (v ? " V" : " K") << " position " << p;
        }
      }
    }
  }
}

TEST_F(PipelineTest, QuantizedTransferReportsTheSerializedChunkSizes) {
  const std::vector<int64_t> prompt = Prompt();
  const std::vector<int64_t> share(prompt.begin(), prompt.end() - 1);
  std::vector<v1::TransferSpec> specs;
  specs.push_back(Spec(v1::SCHEME_INT8));
  v1::TransferSpec int4 = Spec(v1::SCHEME_INT4);
  int4.set_granularity(v1::GRANULARITY_PER_TOKEN);
  int4.mutable_selection()->set_mode(v1::SELECTION_KNORM_TOPK);
  int4.mutable_selection()->set_proportion(0.5);
  int4.mutable_entropy()->set_coder(v1::ENTROPY_CODER_ZSTD);
  specs.push_back(int4);
  v1::TransferSpec small_chunks = Spec(v1::SCHEME_BF16);
  small_chunks.set_chunk_size_bytes(4096);
  specs.push_back(small_chunks);
  for (const v1::TransferSpec& spec : specs) {
    PipelineRequest r = Request(PipelineMode::kC2C);
    r.spec = spec;
    auto result = pipeline_->Answer(r);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE(result->transfer.has_value());
    EXPECT_EQ(result->token_ids.size(), static_cast<size_t>(kNewTokens));
    const TransferSummary& s = *result->transfer;
    // The same stream, serialized independently.
    uint64_t bytes = 0, chunks = 0;
    auto stats = pipeline_->Share(share, spec, r.request_id,
                                  [&](v1::KvChunk chunk) -> absl::Status {
                                    bytes += chunk.SerializeAsString().size();
                                    ++chunks;
                                    return absl::OkStatus();
                                  });
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(s.serialized_bytes, bytes);
    EXPECT_EQ(s.chunks, chunks);
    EXPECT_EQ(s.payload_bytes + s.scale_bytes + s.index_bytes + s.header_bytes +
                  s.trailer_bytes,
              s.serialized_bytes);
    EXPECT_GT(s.payload_bytes, 0u);
    EXPECT_EQ(s.raw_kv_bytes, 3u * 2 * 2 * share.size() * 8 * 2);
    const v1::TransferReport report = ToTransferReport(s);
    EXPECT_EQ(report.serialized_bytes(), bytes);
    EXPECT_EQ(report.spec().scheme(), spec.scheme());
  }
}

TEST_F(PipelineTest, SelectionStrategiesSendExplicitTopK) {
  const std::vector<int64_t> prompt = Prompt();
  const int64_t T = static_cast<int64_t>(prompt.size()) - 1;
  const int64_t k = SelectedTokenCount(T, 0.25, 0);
  std::map<SelectionStrategy, std::vector<uint32_t>> picked;
  for (SelectionStrategy s : {SelectionStrategy::kProjVNormTopK,
                              SelectionStrategy::kDeltaProjVNormTopK,
                              SelectionStrategy::kReceiverAttention,
                              SelectionStrategy::kReceiverVNorm}) {
    PipelineRequest r = Request(PipelineMode::kC2C);
    r.spec = Spec(v1::SCHEME_INT8);
    r.spec.mutable_selection()->set_proportion(0.25);
    r.selection = s;
    auto result = pipeline_->Answer(r);
    ASSERT_TRUE(result.ok())
        << SelectionStrategyName(s) << ": " << result.status();
    ASSERT_TRUE(result->transfer.has_value());
    EXPECT_EQ(result->transfer->spec.selection().mode(),
              v1::SELECTION_EXPLICIT);
    const auto& sel = result->transfer->selected;
    ASSERT_EQ(sel.size(), 3u);
    for (const auto& [layer, positions] : sel) {
      EXPECT_EQ(static_cast<int64_t>(positions.size()), k);
      EXPECT_EQ(positions, sel.begin()->second);  // One shared selection.
    }
    EXPECT_GT(result->timings.selection_seconds, 0);
    picked[s] = sel.begin()->second;
    EXPECT_EQ(ParseSelectionStrategy(SelectionStrategyName(s)).value(), s);
  }
  // delta_proj_vnorm_topk is the top-k of the fusion's own V residuals.
  auto session = Session(prompt);
  ASSERT_TRUE(session->Prefill().ok());
  const std::vector<int64_t> prefix(prompt.begin(), prompt.end() - 1);
  auto sc = pipeline_->sharer()->NewCache(T);
  ASSERT_TRUE(sc.ok());
  ASSERT_TRUE(pipeline_->sharer()->Prefill(prefix, *sc).ok());
  std::map<int, std::pair<at::Tensor, at::Tensor>> q;
  for (const DecodedLayer& l : DecodedLayers(prompt, Spec(v1::SCHEME_INT8))) {
    q[static_cast<int>(l.layer)] = {l.keys, l.values};
  }
  at::Tensor sum = at::zeros({T});
  for (int t = 0; t < 4; ++t) {
    const int s = *pipeline_->fuser()->SharerLayerFor(t);
    auto fused = pipeline_->fuser()->projector(t).Forward(
        q[s].first, q[s].second, Layer(*session, t, false),
        Layer(*session, t, true));
    ASSERT_TRUE(fused.ok());
    sum += TokenNormScores(fused->second - Layer(*session, t, true));
  }
  EXPECT_EQ(picked[SelectionStrategy::kDeltaProjVNormTopK], TopKTokens(sum, k));
  EXPECT_DOUBLE_EQ(Jaccard(picked[SelectionStrategy::kProjVNormTopK],
                           picked[SelectionStrategy::kProjVNormTopK]),
                   1.0);
}

TEST_F(PipelineTest, ReceiverGuidedScoresLeaveTheSessionUnchanged) {
  const std::vector<int64_t> prompt = Prompt();
  const int64_t T = static_cast<int64_t>(prompt.size()) - 1;
  auto plain = Session(prompt);
  ASSERT_TRUE(plain->Prefill().ok());
  auto scored = Session(prompt);
  EXPECT_EQ(scored->GuidedScores(ReceiverSignal::kAttention).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(scored->Prefill().ok());
  auto attention = scored->GuidedScores(ReceiverSignal::kAttention);
  ASSERT_TRUE(attention.ok()) << attention.status();
  ASSERT_EQ(attention->numel(), T);
  EXPECT_GE(attention->min().item<float>(), 0.0f);
  EXPECT_LT(attention->sum().item<float>(), 1.0f);  // The last token has some.
  auto vnorm = scored->GuidedScores(ReceiverSignal::kValueNorm);
  ASSERT_TRUE(vnorm.ok());
  EXPECT_TRUE(
      at::allclose(*vnorm, TokenNormScores(Layer(*scored, 0, true)) / 4.0 +
                               (TokenNormScores(Layer(*scored, 1, true)) +
                                TokenNormScores(Layer(*scored, 2, true)) +
                                TokenNormScores(Layer(*scored, 3, true))) /
                                   4.0));
  EXPECT_EQ(scored->cache().length(), T);
  const std::vector<DecodedLayer> layers =
      DecodedLayers(prompt, Spec(v1::SCHEME_INT8));
  for (const DecodedLayer& l : layers) {
    ASSERT_TRUE(plain->AddLayer(l).ok());
    ASSERT_TRUE(scored->AddLayer(l).ok());
  }
  EXPECT_EQ(scored->GuidedScores(ReceiverSignal::kValueNorm).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Generate(*scored), Generate(*plain));
}

// The decoder reports each layer's queries to the layer callback (what the
// receiver-guided attention scores use): post q_norm, post RoPE. At position
// 0 RoPE is the identity, so layer 0's query of the first token is
// q_norm(RMSNorm(embedding) W_q^T), computed here from the checkpoint.
TEST_F(PipelineTest, DecoderReportsPostNormQueries) {
  const Decoder& d = pipeline_->receiver();
  auto cache = d.NewCache(4);
  ASSERT_TRUE(cache.ok());
  at::Tensor q0;
  LayerCallback on_layer = [&](const LayerKv& kv) -> absl::Status {
    EXPECT_EQ(kv.queries.sizes(), at::IntArrayRef({4, 3, 16}));
    if (kv.layer == 0) q0 = kv.queries.select(1, 0).clone();
    return absl::OkStatus();
  };
  const std::vector<int64_t> ids = {65, 66, 67};
  ASSERT_TRUE(d.Prefill(ids, *cache, on_layer).ok());
  auto reader = CheckpointReader::Open(assets_->receiver_dir);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto w = [&](const std::string& name) {
    auto t = reader->Get(name);
    EXPECT_TRUE(t.ok()) << name;
    return t.ok() ? t->to(at::kFloat) : at::Tensor();
  };
  auto rms = [](const at::Tensor& x, const at::Tensor& weight) {
    return x * (x.pow(2).mean(-1, true) + 1e-6).rsqrt() * weight;
  };
  const at::Tensor h = w("model.embed_tokens.weight").select(0, 65);
  const at::Tensor x = rms(h, w("model.layers.0.input_layernorm.weight"));
  const at::Tensor q =
      at::matmul(w("model.layers.0.self_attn.q_proj.weight"), x).view({4, 16});
  const at::Tensor expected =
      rms(q, w("model.layers.0.self_attn.q_norm.weight"));
  ASSERT_TRUE(q0.defined());
  EXPECT_TRUE(at::allclose(q0, expected, 1e-4, 1e-5))
      << (q0 - expected).abs().max().item<double>();
}

TEST_F(PipelineTest, SessionRejectsBadInput) {
  const std::vector<int64_t> prompt = Prompt();
  const std::vector<DecodedLayer> layers =
      DecodedLayers(prompt, Spec(v1::SCHEME_INT8));
  auto s = Session(prompt);
  ASSERT_TRUE(s->Prefill().ok());
  EXPECT_EQ(s->Prefill().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(s->AddLayer(layers[0]).ok());
  EXPECT_EQ(s->AddLayer(layers[0]).status().code(),
            absl::StatusCode::kFailedPrecondition);
  DecodedLayer bad = layers[1];
  bad.token_indices.back() = static_cast<uint32_t>(prompt.size());
  EXPECT_EQ(s->AddLayer(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A stream that covers the whole prompt (L, not L-1 tokens).
  auto whole = Session(prompt);
  auto stats = pipeline_->Share(prompt, Spec(v1::SCHEME_INT8), "whole",
                                [&](v1::KvChunk chunk) -> absl::Status {
                                  return whole->AddChunk(chunk);
                                });
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kInvalidArgument);
  Generate(*s);
  EXPECT_EQ(s->AddLayer(layers[2]).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // No sharer/fuser: C2C is refused; unknown names are refused.
  PipelineOptions o;
  o.receiver.model.dir = assets_->receiver_dir;
  auto alone = C2cPipeline::Load(o);
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_EQ((*alone)->Answer(Request(PipelineMode::kC2C)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE((*alone)->Answer(Request(PipelineMode::kReceiverOnly)).ok());
  EXPECT_FALSE(ParsePipelineMode("telepathy").ok());
  EXPECT_EQ(ParsePipelineMode("text_to_text").value(),
            PipelineMode::kTextToText);
  EXPECT_FALSE(ParseSelectionStrategy("psychic").ok());
}

TEST_F(PipelineTest, WhenCompleteScheduleFusesTheWholeStreamInOneCall) {
  const std::vector<int64_t> prompt = Prompt();
  const std::vector<int64_t> prefix(prompt.begin(), prompt.end() - 1);
  auto on_arrival = Session(prompt);
  auto when_complete = Session(prompt);
  when_complete->set_fusion_schedule(FusionSchedule::kWhenComplete);
  ASSERT_TRUE(on_arrival->Prefill().ok());
  ASSERT_TRUE(when_complete->Prefill().ok());
  std::vector<v1::KvChunk> chunks;
  ASSERT_TRUE(pipeline_
                  ->Share(prefix, Spec(v1::SCHEME_INT8), "schedule",
                          [&](v1::KvChunk chunk) -> absl::Status {
                            chunks.push_back(std::move(chunk));
                            return absl::OkStatus();
                          })
                  .ok());
  for (const v1::KvChunk& chunk : chunks) {
    ASSERT_TRUE(on_arrival->AddChunk(chunk).ok());
    ASSERT_TRUE(when_complete->AddChunk(chunk).ok());
    // Every layer of the stream is held until it is complete.
    EXPECT_TRUE(when_complete->FusedLayers().empty());
  }
  EXPECT_THAT(on_arrival->FusedLayers(), ElementsAreArray({0, 1, 2, 3}));
  auto received = when_complete->FinishStream();
  ASSERT_TRUE(received.ok()) << received.status();
  EXPECT_THAT(received->fused_receiver_layers, ElementsAreArray({0, 1, 2, 3}));
  for (int t = 0; t < 4; ++t) {
    for (bool v : {false, true}) {
      // One batched call: equal up to the GEMMs' accumulation order.
      EXPECT_TRUE(at::allclose(Layer(*on_arrival, t, v),
                               Layer(*when_complete, t, v), 1e-5, 1e-6))
          << t;
    }
  }
  // A stream that ends before the prefill: fused when the prefill ends.
  auto early = Session(prompt);
  early->set_fusion_schedule(FusionSchedule::kWhenComplete);
  for (const v1::KvChunk& chunk : chunks) {
    ASSERT_TRUE(early->AddChunk(chunk).ok());
  }
  EXPECT_TRUE(early->FusedLayers().empty());
  ASSERT_TRUE(early->Prefill().ok());
  EXPECT_THAT(early->FusedLayers(), ElementsAreArray({0, 1, 2, 3}));
  EXPECT_EQ(Generate(*early), Generate(*when_complete));
  EXPECT_EQ(ParseFusionSchedule("on_arrival").value(),
            FusionSchedule::kOnArrival);
  EXPECT_EQ(ParseFusionSchedule("psychic").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ReceiverSignalTest, ParsesItsNames) {
  EXPECT_EQ(ParseReceiverSignal("vnorm").value_or(ReceiverSignal::kAttention),
            ReceiverSignal::kValueNorm);
  EXPECT_EQ(ParseReceiverSignal("Attention").value(),
            ReceiverSignal::kAttention);
  EXPECT_STREQ(ReceiverSignalName(ReceiverSignal::kValueNorm), "vnorm");
  EXPECT_FALSE(ParseReceiverSignal("psychic").ok());
}

TEST_F(PipelineTest, DescribeModelFingerprintsTheCheckpoint) {
  const v1::ModelInfo& info = pipeline_->sharer_info();
  EXPECT_EQ(info.architecture(), "Qwen2ForCausalLM");
  EXPECT_EQ(info.num_layers(), 3u);
  EXPECT_EQ(info.num_kv_heads(), 2u);
  EXPECT_EQ(info.head_dim(), 8u);
  EXPECT_EQ(info.dtype(), v1::DTYPE_FP32);
  // The sharer service's fingerprint of the same directory.
  EXPECT_EQ(info.fingerprint(), *CheckpointFingerprint(assets_->sharer_dir));
  EXPECT_EQ(info.fingerprint().size(), 64u);
  EXPECT_EQ(
      DescribeModel(*pipeline_->sharer(), assets_->sharer_dir).fingerprint(),
      info.fingerprint());
  EXPECT_NE(
      DescribeModel(pipeline_->receiver(), assets_->receiver_dir).fingerprint(),
      info.fingerprint());
}

// Qwen2.5-7B pads its embeddings to 152064 rows, Qwen3 to 151936, over one
// tokenizer: the released qwen3_8b+qwen2.5_7b fuser needs no alignment. A
// family with another tokenizer and a different size still does.
TEST_F(PipelineTest, SharerOfAPaddedQwenVocabularyNeedsNoAlignment) {
  v1::ModelInfo sharer = pipeline_->sharer_info();
  const ReceiverEngine& engine = pipeline_->receiver_engine();
  ASSERT_TRUE(engine.CheckSharerModel(sharer).ok());
  sharer.set_vocab_size(sharer.vocab_size() + 128);
  EXPECT_TRUE(engine.CheckSharerModel(sharer).ok());
  sharer.set_architecture("LlamaForCausalLM");
  const absl::Status st = engine.CheckSharerModel(sharer);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.message()),
              ::testing::HasSubstr("do not share a vocabulary"));
}

}  // namespace
}  // namespace kvwire
