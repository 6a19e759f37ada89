// ReceiverEngine: the receiver's whole model side, used by the receiver
// service and by the in-process pipeline alike. It owns the receiver model
// (loaded once, with its CUDA-graph accelerators), its tokenizer and chat
// template, the sharer's chat template for the text-to-text prompt, and the
// C2C fuser (checked against the receiver's shapes), and opens one
// ReceiverSession per request. The header is Torch-free (the model types
// are only forward-declared), so the gRPC handlers and the request
// orchestration never include Torch.
#ifndef KVWIRE_COMMON_ENGINE_RECEIVER_ENGINE_H_
#define KVWIRE_COMMON_ENGINE_RECEIVER_ENGINE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/engine/model_loading.h"
#include "common/engine/prompt_plan.h"
#include "common/engine/receiver_session.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/token_aligner.h"
#include "common/tokenizer/tokenizer.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

class C2CFuser;
class Decoder;

// When C2C requests align tokens (token_aligner.h).
enum class TokenAlignmentMode {
  kAuto,  // As the fuser's recipe says (is_do_alignment).
  kOn,    // Always (the pair may even share a vocabulary).
  kOff,   // Never; a fuser whose recipe needs it is refused at load.
};
// "auto" / "on" / "off". INVALID_ARGUMENT otherwise.
absl::StatusOr<TokenAlignmentMode> ParseTokenAlignmentMode(
    absl::string_view name);

struct ReceiverEngineOptions {
  // The model (dir, dtype, device, intra-op threads, and on CUDA the slot
  // pool of the batched decode across requests: off unless
  // model.decode_batch_slots is set, as kvwire-receiver's
  // --decode_batch_slots (16) does).
  ModelLoadOptions model;
  // tokenizer.json (+ tokenizer_config.json with the chat template); empty:
  // the model's directory.
  std::string tokenizer_dir;
  // The sharer's tokenizer and chat template for the text-to-text prompt
  // and token alignment (tokenizer.json, or tokenizer_config.json alone
  // over the receiver's vocabulary); empty: the receiver's.
  std::string sharer_tokenizer_dir;
  // C2C token alignment. Aligning needs the sharer's tokenizer.json with a
  // chat template in sharer_tokenizer_dir.
  TokenAlignmentMode token_alignment = TokenAlignmentMode::kAuto;
  // "first" / "longest"; empty: "longest", what C2C's evaluator uses (the
  // recipe's alignment_strategy is the one training used).
  std::string alignment_strategy;
  // The date templates that print one (Llama-3.1/3.2's "Today Date: ...")
  // render, e.g. "26 Jul 2024"; empty: the template's default (today for
  // Llama-3.2). Fixing it makes answers reproducible across days.
  std::string chat_template_date;
  // C2C fuser checkpoint; empty: receiver-only answers (C2C requests fail
  // or fall back).
  std::string fuser_dir;
  // The projectors' compute dtype ("auto": the receiver's dtype); they live
  // on the receiver's device.
  std::string fuser_dtype = "auto";
  // Whether the model directory (or tokenizer_dir) must hold tokenizer.json
  // with a chat template. Without one, RenderPrompt fails and DecodeText
  // returns "" (the in-process pipeline then takes prompt ids).
  bool require_tokenizer = true;
  // Concurrent requests' whole-stream fusions run together, up to this
  // many (request_fusion_batcher.h; 0 or 1: each alone), with the observer told
  // each batch.
  int64_t fusion_batch_requests = 0;
  StepBatchObserver fusion_batch_observer;
  // The sharer's layer count, needed only for a fuser checkpoint without
  // projector_config.json (last-aligned map); 0: from the checkpoint.
  int sharer_layers = 0;
  // Longest templated prompt accepted (capped by max_position_embeddings
  // minus the generated tokens).
  int64_t max_prompt_tokens = 8192;
  // When sessions fuse the sharer layers they receive (kvwire-receiver's
  // --fusion_schedule defaults to kWhenComplete).
  FusionSchedule fusion_schedule = FusionSchedule::kOnArrival;
};

// What the engine serves, for logs and validation.
struct ReceiverModelInfo {
  v1::ModelInfo model;
  bool has_fuser = false;
  int fused_receiver_layers = 0;
  // The sharer shapes the fuser reads (0 when no fuser).
  int64_t sharer_kv_heads = 0;
  int64_t sharer_head_dim = 0;
  // One past the largest sharer layer the fuser reads.
  int sharer_layers_needed = 0;
  int64_t max_prompt_tokens = 0;
  uint32_t tokenizer_vocab_size = 0;
  std::string chat_template_family;
  // C2C requests are token-aligned, with this strategy ("first"/"longest").
  bool token_alignment = false;
  std::string alignment_strategy;
  std::string sharer_chat_template_family;  // "" without one.
};

class ReceiverEngine {
 public:
  // Loads the model (LoadModel), the tokenizer and chat templates, and the
  // fuser (checked against the receiver's shapes). Errors from the loaders
  // naming the directory; INVALID_ARGUMENT for bad dtype/device names, a
  // tokenizer whose ids exceed the model's vocabulary, or a fuser that does
  // not fit the receiver; NOT_FOUND for a missing tokenizer when one is
  // required.
  static absl::StatusOr<std::unique_ptr<ReceiverEngine>> Load(
      const ReceiverEngineOptions& options);
  ~ReceiverEngine();
  ReceiverEngine(const ReceiverEngine&) = delete;
  ReceiverEngine& operator=(const ReceiverEngine&) = delete;

  const ReceiverModelInfo& info() const { return info_; }
  const Decoder& model() const { return *decoder_; }
  // Null without a fuser / tokenizer.
  const C2CFuser* fuser() const { return fuser_.get(); }
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  // The batched decode's KV cache slot pool (0 slots without one).
  struct KvSlotUsage {
    int64_t slots = 0;
    int64_t in_use = 0;
  };
  KvSlotUsage kv_slots() const;

  // The prompt ids of `messages` (roles "system" / "user" / "assistant"):
  // the receiver's chat template (add_generation_prompt,
  // enable_thinking=false), tokenized. INVALID_ARGUMENT for an unknown role
  // or a template error; FAILED_PRECONDITION without a chat template.
  absl::StatusOr<std::vector<int64_t>> RenderPrompt(
      absl::Span<const ChatMessage> messages) const;
  // Text of `ids`, special tokens skipped; `strip_newlines` removes leading
  // and trailing '\n' (the final answer text). "" without a tokenizer.
  std::string DecodeText(absl::Span<const int64_t> ids,
                         bool strip_newlines) const;

  // The same with the sharer's chat template and tokenizer (the
  // text-to-text background prompt, sharer-only answers), and the sharer's
  // ids as text (special tokens skipped, '\n' stripped).
  absl::StatusOr<std::vector<int64_t>> RenderSharerPrompt(
      absl::Span<const ChatMessage> messages) const;
  std::string DecodeSharerText(absl::Span<const int64_t> ids) const;

  // Checks that a sharer model fits the fuser (layers, KV heads, head_dim)
  // and, without token alignment, shares the receiver's vocabulary (same
  // vocab_size). FAILED_PRECONDITION naming the mismatch and both models;
  // OK without a fuser.
  absl::Status CheckSharerModel(const v1::ModelInfo& sharer) const;

  // What a C2C request over `messages` prefills and fuses: with token
  // alignment the aligned plan (AlignedPromptPlan), else the receiver's
  // templated ids for both sides (SameVocabularyPlan). RenderPrompt's
  // errors; INVALID_ARGUMENT when the two templates do not align.
  absl::StatusOr<PromptPlan> PlanC2C(
      absl::Span<const ChatMessage> messages) const;
  // The aligned pair of sequences itself (token alignment only;
  // FAILED_PRECONDITION without it).
  absl::StatusOr<ChatAlignment> AlignMessages(
      absl::Span<const ChatMessage> messages) const;

  // A session over `prompt_ids` with room for `max_new_tokens`; `fuse`
  // attaches the fuser (C2C; the stream's model is vetted with
  // CheckSharerModel), else the receiver answers alone.
  // FAILED_PRECONDITION for `fuse` without a fuser; INVALID_ARGUMENT for
  // ids outside the receiver's vocabulary.
  absl::StatusOr<std::unique_ptr<ReceiverSession>> NewSession(
      absl::Span<const int64_t> prompt_ids, int64_t max_new_tokens,
      bool fuse) const;
  // The same over a plan (PlanC2C).
  absl::StatusOr<std::unique_ptr<ReceiverSession>> NewSession(
      PromptPlan plan, int64_t max_new_tokens, bool fuse) const;

 private:
  // A tokenizer and its chat template: the receiver's, or the sharer's.
  struct TextModel {
    const Tokenizer* tokenizer = nullptr;
    std::optional<ChatTemplate> chat_template;
  };
  ReceiverEngine();
  absl::StatusOr<std::vector<int64_t>> Render(
      const TextModel& text_model,
      absl::Span<const ChatMessage> messages) const;
  // What every rendering passes: add_generation_prompt,
  // enable_thinking=false, the configured date.
  ChatTemplateOptions TemplateOptions() const;
  static std::string Decode(const TextModel& text_model,
                            absl::Span<const int64_t> ids, bool strip_newlines);
  absl::Status LoadText(const ReceiverEngineOptions& options);
  absl::Status LoadSharerText(const std::string& dir);
  absl::Status LoadFuser(const ReceiverEngineOptions& options);
  // Decides on token alignment and builds the aligner.
  absl::Status LoadAligner(const ReceiverEngineOptions& options);

  std::unique_ptr<Decoder> decoder_;
  std::unique_ptr<C2CFuser> fuser_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Tokenizer> sharer_tokenizer_;
  TextModel receiver_text_;
  TextModel sharer_text_;
  std::optional<TokenAligner> aligner_;
  std::string chat_template_date_;
  int sharer_layers_ = 0;
  FusionSchedule fusion_schedule_ = FusionSchedule::kOnArrival;
  ReceiverModelInfo info_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_ENGINE_RECEIVER_ENGINE_H_
