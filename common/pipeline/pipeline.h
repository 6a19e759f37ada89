// C2cPipeline: the whole C2C system in one process, with no network: the
// sharer model, the KV codec, the C2C fuser, the receiver model, the
// tokenizer and chat templates. It is the engine the gRPC services wrap (the
// sharer half is ShareKv, the receiver half ReceiverSession) and the
// baseline they are measured against.
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
//                   the prefill produces it (KvStreamEncoder on the per-layer
//                   callback -> KvChunks -> KvStreamDecoder) into the
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
#ifndef KVWIRE_COMMON_PIPELINE_PIPELINE_H_
#define KVWIRE_COMMON_PIPELINE_PIPELINE_H_

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
#include "common/codec/kv_codec.h"
#include "common/fuser/fuser.h"
#include "common/model/decoder.h"
#include "common/pipeline/generation_params.h"
#include "common/pipeline/receiver_session.h"
#include "common/pipeline/selection.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

enum class PipelineMode { kReceiverOnly, kSharerOnly, kC2C, kTextToText };

// "receiver-only", "sharer-only", "c2c", "text-to-text" (also accepted with
// underscores).
const char* PipelineModeName(PipelineMode mode);
absl::StatusOr<PipelineMode> ParsePipelineMode(absl::string_view name);

// ------------------------------------------------------------ sharer half

// The codec's description of a loaded model. `fingerprint` is
// CheckpointFingerprint(model_dir) (common/model/model_fingerprint.h), as the
// sharer service reports it; without a directory, of the config only.
v1::ModelInfo DescribeModel(const Decoder& decoder,
                            const std::string& model_dir = "");

struct ShareStats {
  double prefill_seconds = 0;  // Sharer forward, codec work excluded.
  double encode_seconds = 0;   // KvStreamEncoder.
  double sink_seconds = 0;     // Time spent inside the sink.
  int64_t stream_bytes = 0;    // Sum of ByteSizeLong() of every chunk sent.
  int64_t chunks = 0;          // Chunks sent, trailer included.
  TransferPlan plan;           // As resolved (budget applied).
};

// Receives each KvChunk as soon as it is produced; an error aborts.
using ChunkSink = std::function<absl::Status(v1::KvChunk chunk)>;

// The sharer service's work: prefills `token_ids` on `sharer` and streams its
// KV through the codec: the header, each planned layer's blocks as soon as
// the prefill has computed that layer, then the trailer.
absl::StatusOr<ShareStats> ShareKv(const Decoder& sharer,
                                   const v1::ModelInfo& model,
                                   absl::Span<const int64_t> token_ids,
                                   const v1::TransferSpec& spec,
                                   const std::string& request_id,
                                   const ChunkSink& sink);
// The same from a cache already prefilled with `total_tokens` tokens (row 0).
absl::StatusOr<ShareStats> ShareKvFromCache(const KvCache& cache,
                                            const v1::ModelInfo& model,
                                            uint32_t total_tokens,
                                            const v1::TransferSpec& spec,
                                            const std::string& request_id,
                                            const ChunkSink& sink);

// ---------------------------------------------------------------- pipeline

struct PipelineOptions {
  std::string receiver_dir;  // Hugging Face model directory.
  std::string sharer_dir;    // Empty: no sharer (receiver-only answers).
  std::string fuser_dir;     // C2C checkpoint; empty: no C2C mode.
  // tokenizer.json (+ tokenizer_config.json with the chat template). Empty:
  // the receiver's directory. Without a tokenizer there, requests must give
  // prompt_ids (and answers carry no text).
  std::string tokenizer_dir;
  // The sharer's own tokenizer/template (sharer-only and text-to-text). Empty:
  // the sharer's directory if it has tokenizer.json, else the receiver's.
  std::string sharer_tokenizer_dir;
  DecoderOptions receiver;
  DecoderOptions sharer;
  // Projector compute dtype; Undefined: the receiver's dtype. The projectors
  // live on the receiver's device.
  at::ScalarType fuser_dtype = at::ScalarType::Undefined;
  FuserOptions fuser;  // format / strict / layer map (projector is overridden).
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
  // Loads the models, the fuser (checked against both models' shapes and
  // layer counts), the tokenizers and chat templates.
  static absl::StatusOr<std::unique_ptr<C2cPipeline>> Load(
      const PipelineOptions& options);

  absl::StatusOr<PipelineResult> Answer(const PipelineRequest& request) const;

  // The receiver's prompt ids for `messages` (receiver template,
  // add_generation_prompt, enable_thinking=false).
  absl::StatusOr<std::vector<int64_t>> ReceiverPrompt(
      absl::Span<const ChatMessage> messages) const;

  const Decoder& receiver() const { return *receiver_; }
  const Decoder* sharer() const { return sharer_.get(); }
  const C2CFuser* fuser() const { return fuser_.get(); }
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  const v1::ModelInfo& sharer_info() const { return sharer_info_; }
  const PipelineOptions& options() const { return options_; }

 private:
  C2cPipeline() = default;

  struct TextModel {
    const Tokenizer* tokenizer = nullptr;
    std::optional<ChatTemplate> chat_template;
  };
  absl::StatusOr<std::vector<int64_t>> Render(
      const TextModel& model, absl::Span<const ChatMessage> messages) const;
  std::string DecodeText(const TextModel& model,
                         absl::Span<const int64_t> ids) const;

  using TimePoint = std::chrono::steady_clock::time_point;
  absl::StatusOr<std::vector<int64_t>> PromptFor(
      const TextModel& model, const PipelineRequest& request) const;
  // Captures, generates and decodes on a prefilled (and fused) session.
  absl::Status Finish(ReceiverSession& session, const TextModel& text,
                      const PipelineRequest& request, TimePoint start,
                      PipelineResult& result) const;
  absl::Status AnswerAlone(const PipelineRequest& request, bool sharer,
                           TimePoint start, PipelineResult& result) const;
  absl::Status AnswerC2C(const PipelineRequest& request, TimePoint start,
                         PipelineResult& result) const;
  absl::Status AnswerTextToText(const PipelineRequest& request, TimePoint start,
                                PipelineResult& result) const;

  PipelineOptions options_;
  std::unique_ptr<Decoder> receiver_;
  std::unique_ptr<Decoder> sharer_;
  std::unique_ptr<C2CFuser> fuser_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Tokenizer> sharer_tokenizer_;
  TextModel receiver_text_;
  TextModel sharer_text_;
  v1::ModelInfo sharer_info_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_PIPELINE_PIPELINE_H_
