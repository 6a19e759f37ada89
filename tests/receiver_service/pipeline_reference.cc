// Torch side of the receiver end-to-end tests.
#include "tests/receiver_service/pipeline_reference.h"

#include <ATen/Parallel.h>

#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/engine/pipeline.h"
#include "common/engine/receiver_session.h"
#include "common/model/model_config.h"
#include "common/status_macros.h"
#include "tests/common/engine/test_assets.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

namespace kvwire {
namespace {

// One loaded pipeline per asset set (loading is the slow part).
absl::StatusOr<const C2cPipeline*> PipelineFor(const ReferenceAssets& assets) {
  static std::mutex mu;
  static auto* cache = new std::map<std::string, std::unique_ptr<C2cPipeline>>;
  std::lock_guard<std::mutex> lock(mu);
  const std::string key = absl::StrCat(
      assets.receiver_dir, "|", assets.sharer_dir, "|", assets.fuser_dir);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second.get();
  at::set_num_threads(1);  // As the services under test.
  PipelineOptions options;
  options.receiver.model.dir = assets.receiver_dir;
  options.sharer.model.dir = assets.sharer_dir;
  options.receiver.fuser_dir = assets.fuser_dir;
  options.receiver.tokenizer_dir = assets.tokenizer_dir;
  options.receiver.sharer_tokenizer_dir = assets.sharer_tokenizer_dir;
  // kvwire-receiver's default (--fusion_schedule).
  options.receiver.fusion_schedule = FusionSchedule::kWhenComplete;
  ASSIGN_OR_RETURN(std::unique_ptr<C2cPipeline> p, C2cPipeline::Load(options));
  const C2cPipeline* raw = p.get();
  cache->emplace(key, std::move(p));
  return raw;
}

}  // namespace

absl::StatusOr<ReferenceAssets> MakeReferenceAssets(const std::string& root) {
  ASSIGN_OR_RETURN(TinyPipelineAssets tiny, MakeTinyPipeline(root));
  ReferenceAssets a;
  a.receiver_dir = tiny.receiver_dir;
  a.sharer_dir = tiny.sharer_dir;
  a.fuser_dir = tiny.fuser_dir;
  a.mismatched_sharer_dir = root + "/mismatched_sharer";
  TinyCheckpointOptions s;
  // One KV head of 8 where the fuser reads two.
  s.config = MakeModelConfig(ModelArch::kQwen2, /*vocab_size=*/320,
                             /*hidden_size=*/32, /*intermediate_size=*/64,
                             /*num_layers=*/3, /*num_heads=*/4,
                             /*num_kv_heads=*/1, /*head_dim=*/0);
  s.config.eos_token_ids = {tiny.im_end};
  s.seed = 99;
  s.dtype = SafetensorsDtype::kF32;
  s.init_std = 0.2;
  RETURN_IF_ERROR(WriteRandomCheckpoint(a.mismatched_sharer_dir, s));
  return a;
}

namespace {

absl::StatusOr<ReferenceResult> Answer(const ReferenceAssets& assets,
                                       PipelineRequest request) {
  ASSIGN_OR_RETURN(const C2cPipeline* pipeline, PipelineFor(assets));
  ASSIGN_OR_RETURN(PipelineResult r, pipeline->Answer(request));
  ReferenceResult out;
  out.token_ids.assign(r.token_ids.begin(), r.token_ids.end());
  out.text = r.text;
  if (r.transfer.has_value()) {
    const TransferSummary& t = *r.transfer;
    out.raw_kv_bytes = t.raw_kv_bytes;
    out.payload_bytes = t.payload_bytes;
    out.scale_bytes = t.scale_bytes;
    out.index_bytes = t.index_bytes;
    out.prompt_tokens = t.prompt_tokens;
    out.tokens_sent = t.tokens_sent;
    out.layers_sent = t.layers_sent;
  }
  return out;
}

}  // namespace

absl::StatusOr<ReferenceResult> ReferenceAnswer(
    const ReferenceAssets& assets, const std::string& question, bool c2c,
    const v1::TransferSpec& spec, const v1::GenerationParams& generation,
    const std::string& selection, const std::string& request_id) {
  PipelineRequest request;
  request.request_id = request_id;
  request.messages = {ChatMessage{"user", question, std::nullopt}};
  request.mode = c2c ? PipelineMode::kC2C : PipelineMode::kReceiverOnly;
  request.spec = spec;
  ASSIGN_OR_RETURN(request.selection, ParseSelectionStrategy(selection));
  request.generation = ToGenerationOptions(generation);
  return Answer(assets, std::move(request));
}

absl::StatusOr<ReferenceResult> ReferenceAnswer(
    const ReferenceAssets& assets,
    const std::vector<std::pair<std::string, std::string>>& messages,
    const std::string& mode, const v1::TransferSpec& spec,
    const v1::GenerationParams& generation, const std::string& request_id) {
  PipelineRequest request;
  request.request_id = request_id;
  for (const auto& [role, content] : messages) {
    request.messages.push_back(ChatMessage{role, content, std::nullopt});
  }
  ASSIGN_OR_RETURN(request.mode, ParsePipelineMode(mode));
  request.spec = spec;
  request.generation = ToGenerationOptions(generation);
  return Answer(assets, std::move(request));
}

absl::StatusOr<TextToTextReference> ReferenceTextToText(
    const ReferenceAssets& assets, const std::string& question,
    const v1::GenerationParams& generation) {
  ASSIGN_OR_RETURN(const C2cPipeline* pipeline, PipelineFor(assets));
  PipelineRequest request;
  request.messages = {ChatMessage{"user", question, std::nullopt}};
  request.mode = PipelineMode::kTextToText;
  request.generation = ToGenerationOptions(generation);
  ASSIGN_OR_RETURN(PipelineResult r, pipeline->Answer(request));
  TextToTextReference out;
  out.token_ids.assign(r.token_ids.begin(), r.token_ids.end());
  out.text = r.text;
  out.background_ids.assign(r.background_ids.begin(), r.background_ids.end());
  out.background_text = r.background_text;
  return out;
}

absl::StatusOr<StreamSize> ExpectedStream(const ReferenceAssets& assets,
                                          const v1::ModelInfo& sharer_model,
                                          const std::string& question,
                                          const v1::TransferSpec& spec,
                                          const std::string& request_id) {
  ASSIGN_OR_RETURN(const C2cPipeline* pipeline, PipelineFor(assets));
  const std::vector<ChatMessage> messages = {
      ChatMessage{"user", question, std::nullopt}};
  ASSIGN_OR_RETURN(std::vector<int64_t> ids,
                   pipeline->ReceiverPrompt(messages));
  if (ids.size() < 2) return absl::InvalidArgumentError("prompt too short");
  StreamSize size;
  auto sink = [&](v1::KvChunk chunk) -> absl::Status {
    size.serialized_bytes += chunk.ByteSizeLong();
    ++size.chunks;
    return absl::OkStatus();
  };
  // The pipeline's sharer engine describes the same checkpoint as the
  // service (`sharer_model`), fingerprint included.
  if (pipeline->sharer_info().fingerprint() != sharer_model.fingerprint()) {
    return absl::FailedPreconditionError(
        "the reference's sharer is not the service's");
  }
  RETURN_IF_ERROR(pipeline
                      ->Share(absl::MakeConstSpan(ids.data(), ids.size() - 1),
                              spec, request_id, sink)
                      .status());
  return size;
}

}  // namespace kvwire
