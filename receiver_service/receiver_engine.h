// The receiver's model side behind a small Torch-free interface, so that the
// gRPC handlers and the request orchestration (answer_runner.h) never
// include Torch: the receiver model, its tokenizer and chat template, and
// the C2C fuser, with one AnswerSession (a ReceiverSession) per request.
#ifndef KVWIRE_RECEIVER_SERVICE_RECEIVER_ENGINE_H_
#define KVWIRE_RECEIVER_SERVICE_RECEIVER_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/pipeline/generation_params.h"
#include "common/tokenizer/chat_template.h"
#include "common/trace.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// Receiver-guided token selection signals (ReceiverSignal in
// common/pipeline/receiver_session.h).
enum class GuidedSignal { kAttention, kValueNorm };
// "attention" / "vnorm".
const char* GuidedSignalName(GuidedSignal signal);
absl::StatusOr<GuidedSignal> ParseGuidedSignal(absl::string_view name);

// Per-request timings of the receiver side (seconds).
struct AnswerSessionTimings {
  double prefill_seconds = 0;     // Own prefill of the prompt (C2C: L-1).
  double scores_seconds = 0;      // Receiver-guided scores.
  double decode_seconds = 0;      // KvChunk -> tensors.
  double fuse_seconds = 0;        // Projector calls.
  double ttft_seconds = 0;        // Generate start -> first token.
  double generation_seconds = 0;  // First token -> last.
};

// What the decoded stream told (valid after FinishStream succeeded).
struct ReceivedStream {
  v1::KvHeader header;
  v1::TransferStats trailer;  // The trailer's stats.
  std::vector<int> fused_receiver_layers;
};

// Called with each generated token as soon as it is sampled.
using TokenSink = std::function<void(int64_t index, int64_t token_id)>;

// One request on the receiver model. Threading is ReceiverSession's:
// Prefill may run on one thread while AddChunk runs on another; every other
// call must not overlap.
class AnswerSession {
 public:
  virtual ~AnswerSession() = default;

  // L - 1: the prompt positions C2C fuses (the sharer's prompt).
  virtual int64_t fused_length() const = 0;
  // ids[0, L-1): what the sharer prefills.
  virtual std::vector<uint32_t> share_token_ids() const = 0;

  // The receiver's own prefill (FAILED_PRECONDITION if called twice).
  virtual absl::Status Prefill() = 0;
  // Receiver-guided selection: the explicit top-k indices for `requested`
  // (its proportion and min_tokens) from `signal` scores of the receiver's
  // own cache, or SELECTION_ALL when every token is kept. Needs Prefill and
  // must come before any chunk.
  virtual absl::StatusOr<v1::TokenSelection> GuidedSelection(
      const v1::TokenSelection& requested, GuidedSignal signal) = 0;
  // One chunk of the sharer's stream, in order: decoded, each complete layer
  // fused (or held until the prefill ends). DATA_LOSS / INVALID_ARGUMENT
  // from the codec; FAILED_PRECONDITION when the header's model does not
  // fit the fuser (checked before anything of the stream is used).
  virtual absl::Status AddChunk(const v1::KvChunk& chunk) = 0;
  // DATA_LOSS unless a complete stream was consumed.
  virtual absl::StatusOr<ReceivedStream> FinishStream() = 0;

  // Runs the last prompt token and generates (once). `params` is already
  // validated (ValidateAnswerRequest). `should_stop` (may be empty) is
  // polled before each decode step; its error ends generation.
  virtual absl::StatusOr<std::vector<int64_t>> Generate(
      const v1::GenerationParams& params, const TokenSink& on_token,
      const std::function<absl::Status()>& should_stop) = 0;

  virtual AnswerSessionTimings timings() const = 0;

  // Records the session's stages (ReceiverSession::set_trace); call first.
  virtual void set_trace(RequestTrace* trace) = 0;
};

struct ReceiverEngineOptions {
  std::string model_dir;
  // tokenizer.json (+ tokenizer_config.json with the chat template); empty:
  // model_dir.
  std::string tokenizer_dir;
  // The sharer's tokenizer and chat template for the text-to-text prompt
  // (tokenizer.json, or tokenizer_config.json alone over the receiver's
  // vocabulary); empty: the receiver's.
  std::string sharer_tokenizer_dir;
  // C2C fuser checkpoint; empty: receiver-only answers (C2C requests fail
  // or fall back).
  std::string fuser_dir;
  // The sharer's layer count, needed only for a fuser checkpoint without
  // projector_config.json (last-aligned map); 0: from the checkpoint.
  int sharer_layers = 0;
  // "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp16", "fp32".
  std::string dtype = "auto";
  // "cpu", "cuda", "cuda:N".
  std::string device = "cpu";
  // Longest templated prompt accepted (capped by max_position_embeddings
  // minus the generated tokens).
  int64_t max_prompt_tokens = 8192;
  // LibTorch intra-op threads (0: LibTorch's default).
  int intra_op_threads = 0;
  // On CUDA: slots of the batched decode (0: off) and positions per slot.
  int64_t decode_batch_slots = 16;
  int64_t decode_slot_capacity = 1024;
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
};

class ReceiverEngine {
 public:
  virtual ~ReceiverEngine() = default;

  virtual const ReceiverModelInfo& info() const = 0;

  // The prompt ids of `messages` (roles "system" / "user" / "assistant"):
  // the receiver's chat template (add_generation_prompt,
  // enable_thinking=false), tokenized. INVALID_ARGUMENT for an unknown role
  // or a template error; FAILED_PRECONDITION without a chat template.
  virtual absl::StatusOr<std::vector<uint32_t>> RenderPrompt(
      absl::Span<const ChatMessage> messages) const = 0;

  // Text of `ids`, special tokens skipped; `strip_newlines` removes leading
  // and trailing '\n' (the final answer text, as C2cPipeline).
  virtual std::string DecodeText(absl::Span<const int64_t> ids,
                                 bool strip_newlines) const = 0;

  // The same with the sharer's chat template and tokenizer (the
  // text-to-text background prompt), and the sharer's ids as text (special
  // tokens skipped, '\n' stripped).
  virtual absl::StatusOr<std::vector<uint32_t>> RenderSharerPrompt(
      absl::Span<const ChatMessage> messages) const = 0;
  virtual std::string DecodeSharerText(absl::Span<const int64_t> ids) const = 0;

  // Checks that a sharer model fits the fuser (layers, KV heads, head_dim).
  // FAILED_PRECONDITION naming the mismatch; OK without a fuser.
  virtual absl::Status CheckSharerModel(const v1::ModelInfo& sharer) const = 0;

  // A session over `prompt_ids` with room for `max_new_tokens`; `fuse`
  // attaches the fuser (C2C), else the receiver answers alone.
  // FAILED_PRECONDITION for `fuse` without a fuser.
  virtual absl::StatusOr<std::unique_ptr<AnswerSession>> NewSession(
      absl::Span<const uint32_t> prompt_ids, int64_t max_new_tokens,
      bool fuse) const = 0;
};

// Loads the model, tokenizer and fuser (checked against the receiver's
// shapes). Errors from the loaders naming the directory; INVALID_ARGUMENT
// for bad dtype/device names, a tokenizer whose ids exceed the model's
// vocabulary, or a fuser that does not fit the receiver.
absl::StatusOr<std::unique_ptr<ReceiverEngine>> LoadReceiverEngine(
    const ReceiverEngineOptions& options);

}  // namespace kvwire

#endif  // KVWIRE_RECEIVER_SERVICE_RECEIVER_ENGINE_H_
