// C2cPipeline: the whole C2C system in one process, with no network: a
// SharerEngine and a ReceiverEngine (the engines the gRPC services wrap)
// joined by a local chunk sink instead of a stream. It is the baseline the
// services are measured against, and since both use the same engines, their
// answers match it bit for bit.
//
// Modes (PipelineMode):
//  * kReceiverOnly  the receiver answers alone.
//  * kSharerOnly    the sharer answers alone (its own chat template when its
//                   directory has one, else the receiver's).
//  * kC2C           C2C's flow (c2c-spec §1.4, §8): the prompt is rendered
//                   once with the receiver's template (enable_thinking=false)
//                   and both models get the same ids and positions; the
//                   receiver prefills ids[0, L-1); the sharer prefills the same
//                   ids and each of its layers goes through the real codec as
//                   the prefill produces it (SharerEngine::Share: the
//                   per-layer callback -> KvStreamEncoder -> KvChunks -> a
//                   local ChunkSink -> KvStreamDecoder) into the
//                   receiver's ReceiverSession, which fuses receiver layer t
//                   from sharer layer map(t) as soon as it lands; the last
//                   prompt token and every decoded token run on the receiver
//                   alone over the fused cache. Any TransferSpec (scheme,
//                   granularity, selection, layers, budget, entropy stage).
//  * kTextToText    the C2C paper's Text-to-Text baseline
//                   (rosetta/baseline/multi_stage.py::TwoStageInference): the
//                   sharer answers kTextToTextPrompt (the paper's Appendix
//                   "Text 3" prompt) about the question, greedily, up to
//                   text_to_text_max_new_tokens (paper: 256); the receiver
//                   then reads the 3-turn chat [user: that prompt, assistant:
//                   the sharer's text, user: the original request] and answers.
//
// Partial transfers (a selection, or spec.layers naming only some sharer
// layers) fuse only the positions / layers that arrive; the rest keep the
// receiver's own KV.
//
// Threading: Answer may be called concurrently (each call has its own caches;
// the models and fuser are read-only). Errors are absl::Status.
#ifndef KVWIRE_COMMON_ENGINE_PIPELINE_H_
#define KVWIRE_COMMON_ENGINE_PIPELINE_H_

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/engine/receiver_engine.h"
#include "common/engine/receiver_session.h"
#include "common/engine/selection.h"
#include "common/engine/sharer_engine.h"
#include "common/model/decoder.h"
#include "common/protocol/generation_params.h"
#include "common/tokenizer/chat_template.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

enum class PipelineMode { kReceiverOnly, kSharerOnly, kC2C, kTextToText };

// "receiver-only", "sharer-only", "c2c", "text-to-text" (also accepted with
// underscores).
const char* PipelineModeName(PipelineMode mode);
absl::StatusOr<PipelineMode> ParsePipelineMode(absl::string_view name);

// ---------------------------------------------------------------- pipeline

struct PipelineOptions {
  // The receiver: model.dir is required. Its tokenizer is optional here
  // (without tokenizer.json, requests must give prompt_ids and answers carry
  // no text); fuser_dir enables C2C and needs a sharer. sharer_tokenizer_dir
  // empty: the sharer's directory when it has tokenizer.json or
  // tokenizer_config.json, else the receiver's.
  ReceiverEngineOptions receiver;
  // The sharer; an empty model.dir: no sharer (receiver-only answers).
  SharerEngineOptions sharer;
  int64_t text_to_text_max_new_tokens = 256;
  std::string text_to_text_prompt = kTextToTextPrompt;
};

struct PipelineRequest {
  std::string request_id = "pipeline";
  // Either chat messages (rendered with the answering model's template,
  // add_generation_prompt, enable_thinking=false) ...
  std::vector<ChatMessage> messages;
  // ... or already-templated ids, used verbatim by every model.
  std::vector<int64_t> prompt_ids;
  PipelineMode mode = PipelineMode::kC2C;
  v1::TransferSpec spec;  // kC2C.
  // kC2C: how the prompt tokens to send are chosen (selection.h). Anything
  // but kSpec replaces spec.selection's mode with explicit indices, keeping
  // its proportion and min_tokens.
  SelectionStrategy selection = SelectionStrategy::kSpec;
  // kC2C, in-process only: hand the sharer's cache to the fuser as is (no
  // codec, no quantization, every token and layer): C2C's own reference.
  bool direct_transfer = false;
  GenerationOptions generation;
  // kTextToText: the question put into the sharer's prompt (default: the
  // last user message).
  std::string background_question;
  TokenCallback on_token;
  // Receiver layers whose K/V at positions [0, L-1) are copied into the
  // result right before the last prompt token runs (own or fused KV).
  std::vector<int> capture_layers;
};

// What the codec carried (kC2C through the codec).
struct TransferSummary {
  v1::TransferSpec spec;       // As resolved by the sharer (header).
  uint64_t raw_kv_bytes = 0;   // Sent layers x T tokens x K,V at 16 bits.
  uint64_t payload_bytes = 0;  // Block values.
  uint64_t scale_bytes = 0;    // Scales and zero points.
  uint64_t index_bytes = 0;    // Token indices (blocks and header).
  uint64_t header_bytes = 0;   // Everything else before the trailer.
  uint64_t trailer_bytes = 0;
  // Every serialized KvChunk, trailer included (= payload + scale + index +
  // header + trailer).
  uint64_t serialized_bytes = 0;
  uint64_t chunks = 0;
  uint32_t prompt_tokens = 0;  // T = L - 1.
  uint32_t tokens_sent = 0;    // Sum over sent layers.
  uint32_t layers_sent = 0;
  // Positions that arrived, per sharer layer.
  std::map<uint32_t, std::vector<uint32_t>> selected;
};

struct PipelineTimings {
  double tokenize_seconds = 0;
  double sharer_prefill_seconds = 0;
  double selection_seconds = 0;  // Scoring for non-kSpec strategies.
  double encode_seconds = 0;
  double decode_seconds = 0;
  double fuse_seconds = 0;
  double receiver_prefill_seconds = 0;     // ids[0, L-1) (C2C) or whole prompt.
  double sharer_generation_seconds = 0;    // Text-to-text background.
  double time_to_first_token_seconds = 0;  // Answer start -> first token.
  double generation_seconds = 0;           // First token -> last.
  double total_seconds = 0;
};

struct PipelineResult {
  PipelineMode mode = PipelineMode::kC2C;
  std::string text;  // Decoded, special tokens skipped, '\n' stripped.
  std::vector<int64_t> token_ids;
  FinishReason finish_reason = FinishReason::kLength;
  std::vector<int64_t> prompt_ids;  // What the answering model read.
  std::string background_text;      // kTextToText: the sharer's text.
  std::vector<int64_t> background_ids;
  std::optional<TransferSummary> transfer;
  std::vector<int> fused_layers;  // Receiver layers fused (kC2C).
  PipelineTimings timings;
  std::map<int, std::pair<at::Tensor, at::Tensor>> captured;
};

v1::TransferReport ToTransferReport(const TransferSummary& summary);
v1::StageTimings ToStageTimings(const PipelineTimings& timings);

class C2cPipeline {
 public:
  // Loads both engines; the fuser is checked against both models' shapes
  // and layer counts (FAILED_PRECONDITION when the sharer does not fit).
  static absl::StatusOr<std::unique_ptr<C2cPipeline>> Load(
      const PipelineOptions& options);

  absl::StatusOr<PipelineResult> Answer(const PipelineRequest& request) const;

  // The receiver's prompt ids for `messages` (receiver template,
  // add_generation_prompt, enable_thinking=false).
  absl::StatusOr<std::vector<int64_t>> ReceiverPrompt(
      absl::Span<const ChatMessage> messages) const;

  // The sharer engine's stream of `token_ids` (at `positions`, empty:
  // contiguous from 0; ShareRequest.positions) under `spec`, each chunk
  // handed to `sink` in order (ValidateShareRequest first).
  // FAILED_PRECONDITION without a sharer; the validation's and the
  // engine's errors; the sink's first error.
  absl::StatusOr<ShareReport> Share(
      absl::Span<const int64_t> token_ids, const v1::TransferSpec& spec,
      const std::string& request_id,
      const std::function<absl::Status(v1::KvChunk)>& sink,
      absl::Span<const int64_t> positions = {}) const;

  const ReceiverEngine& receiver_engine() const { return *receiver_; }
  const SharerEngine* sharer_engine() const { return sharer_.get(); }
  const Decoder& receiver() const { return receiver_->model(); }
  const Decoder* sharer() const {
    return sharer_ == nullptr ? nullptr : &sharer_->model();
  }
  const C2CFuser* fuser() const { return receiver_->fuser(); }
  const Tokenizer* tokenizer() const { return receiver_->tokenizer(); }
  // The sharer's ModelInfo (SharerEngine::info().model()); empty without a
  // sharer.
  const v1::ModelInfo& sharer_info() const;
  const PipelineOptions& options() const { return options_; }

 private:
  C2cPipeline() = default;

  using TimePoint = std::chrono::steady_clock::time_point;
  absl::StatusOr<std::vector<int64_t>> PromptFor(
      bool sharer_template, const PipelineRequest& request) const;
  // Captures, generates and decodes on a prefilled (and fused) session.
  absl::Status Finish(ReceiverSession& session, bool sharer_text,
                      const PipelineRequest& request, TimePoint start,
                      PipelineResult& result) const;
  absl::Status AnswerAlone(const PipelineRequest& request, bool sharer,
                           TimePoint start, PipelineResult& result) const;
  absl::Status AnswerC2C(const PipelineRequest& request, TimePoint start,
                         PipelineResult& result) const;
  absl::Status AnswerTextToText(const PipelineRequest& request, TimePoint start,
                                PipelineResult& result) const;
  v1::ShareRequest ShareRequestFor(
      absl::Span<const int64_t> token_ids, const v1::TransferSpec& spec,
      const std::string& request_id,
      absl::Span<const int64_t> positions = {}) const;

  PipelineOptions options_;
  std::unique_ptr<ReceiverEngine> receiver_;
  std::unique_ptr<SharerEngine> sharer_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_ENGINE_PIPELINE_H_
