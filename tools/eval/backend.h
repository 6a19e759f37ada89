// What kvwire-eval needs from whatever answers a question: one prompt in, the
// answer and what it cost out (text, token ids, bytes on the wire, payload
// bytes, tokens sent, per-stage times). Two implementations:
//  * in-process (inprocess_backend.h): C2cPipeline, no network; the bytes
//    are those of the real KvChunk stream the codec produced;
//  * gRPC (grpc_backend.h): the receiver service's Answer RPC, so the same
//    numbers include the real network.
// No Torch in this header.
#ifndef KVWIRE_TOOLS_EVAL_BACKEND_H_
#define KVWIRE_TOOLS_EVAL_BACKEND_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/protocol/wire_framing.h"
#include "common/tokenizer/chat_template.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {
namespace eval {

enum class EvalMethod { kReceiverOnly, kSharerOnly, kTextToText, kC2C };

// "receiver-only", "sharer-only", "text-to-text", "c2c".
const char* EvalMethodName(EvalMethod method);
// Also accepts underscores and "receiver"/"sharer"/"t2t".
absl::StatusOr<EvalMethod> ParseEvalMethod(absl::string_view name);

// Token selections the sharer cannot compute alone: they exist only in the
// in-process pipeline (common/engine/selection.h) and end up as explicit
// indices on the wire.
bool IsInProcessSelectionStrategy(absl::string_view name);

struct BackendRequest {
  std::string request_id;
  // The user turn(s); the backend renders them with the answering model's
  // chat template (add_generation_prompt, enable_thinking=false).
  std::vector<ChatMessage> messages;
  // Text-to-text: the question without its options, for the sharer's
  // background prompt (the reference's `question_without_options`).
  std::string background_question;
  EvalMethod method = EvalMethod::kC2C;
  v1::TransferSpec spec;  // kC2C.
  // "spec" (spec.selection as given) or an in-process strategy name
  // ("proj_vnorm_topk", "delta_proj_vnorm_topk", "receiver_attention",
  // "receiver_vnorm"): then spec.selection's proportion / min_tokens apply.
  std::string selection_strategy = "spec";
  int max_new_tokens = 64;  // Greedy.
};

struct BackendAnswer {
  std::string text;  // Decoded, special tokens skipped, '\n' stripped.
  std::vector<int64_t> token_ids;
  // Tokens the answering model read (-1: not reported).
  int64_t prompt_tokens = -1;
  // kC2C: what the KV stream carried. wire_bytes is what crossed (or, in
  // process, would cross) the network for the stream: serialized KvChunks
  // plus gRPC message framing.
  bool has_transfer = false;
  v1::TransferReport transfer;
  uint64_t chunks = 0;  // KvChunk messages (in-process only).
  // kTextToText: UTF-8 bytes of the sharer's message to the receiver.
  uint64_t text_bytes = 0;
  std::string background_text;
  v1::StageTimings timings;
  double selection_seconds = 0;  // In-process strategies' scoring.
  bool fell_back = false;
  std::string fallback_reason;
};

// A grid run's own model pair (grid.h: the `sharers:` map and the `sharer`,
// `token_alignment` and `alignment_strategy` keys). Empty fields keep the
// backend's own setting (its command-line models and flags).
struct PairOverride {
  std::string sharer;  // The grid's name for the sharer ("": the backend's).
  std::string sharer_dir;
  // Empty with sharer_dir set: the sharer's directory (not the backend's
  // --sharer_tokenizer_dir, which belongs to its own sharer).
  std::string sharer_tokenizer_dir;
  std::string fuser_dir;
  // Methods without a KV transfer (sharer-only, text-to-text) load the
  // sharer without any fuser: a fuser trained for another pair would refuse
  // the sharer for nothing.
  bool no_fuser = false;
  std::string token_alignment;     // "", "auto", "on", "off".
  std::string alignment_strategy;  // "", "first", "longest".

  bool empty() const;
  // "sharer=NAME (DIR) fuser=DIR token_alignment=on/first"; "" when empty.
  std::string Describe() const;
  bool operator==(const PairOverride& other) const;
  bool operator!=(const PairOverride& other) const { return !(*this == other); }
};

// Model facts the grid needs to resolve mixed-precision schedules indexed by
// receiver layer (or "the last N layers").
struct BackendLayout {
  int receiver_layers = 0;  // 0: unknown.
  int sharer_layers = 0;
  // layer_map[t]: the sharer layer receiver layer t reads (empty: unknown,
  // last-aligned is assumed).
  std::vector<int> layer_map;
};

class AnswerBackend {
 public:
  virtual ~AnswerBackend() = default;
  // "in-process" or "grpc"; recorded with every run and part of its
  // identity for resuming.
  virtual std::string kind() const = 0;
  // One line for logs and run.json (model directories, target).
  virtual std::string Describe() const = 0;
  virtual BackendLayout layout() const = 0;
  virtual absl::StatusOr<BackendAnswer> Answer(
      const BackendRequest& request) = 0;

  // Whether this backend can honour `pair` at all, asked for every run
  // before any question: INVALID_ARGUMENT naming what it cannot change per
  // run. The default accepts only the empty override.
  virtual absl::Status CheckPairSupported(const PairOverride& pair) const;
  // Makes later Answer calls (and layout()) use `pair` (empty: the
  // backend's own models). FAILED_PRECONDITION when the models refuse that
  // pairing (e.g. a sharer with another vocabulary and token alignment off,
  // or a fuser trained with alignment used without it): the runner records
  // the run as refused and goes on. Any other error stops the grid.
  virtual absl::Status UsePair(const PairOverride& pair);
};

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_BACKEND_H_
