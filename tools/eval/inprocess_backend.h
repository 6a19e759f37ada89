// AnswerBackend over the in-process C2cPipeline (common/engine): sharer,
// codec, fuser and receiver in one process, no network. The only translation
// unit of kvwire-eval that sees Torch is inprocess_backend.cc.
//
// Model pairs: UsePair loads a second pipeline for a grid run's own sharer /
// fuser / token alignment (the receiver and the options below otherwise
// unchanged) and keeps the last one loaded, so consecutive runs of one pair
// load it once; the empty pair switches back to the pipeline of the options.
// A pipeline the engines refuse (C2cPipeline::Load's FAILED_PRECONDITION:
// different vocabularies without alignment, a fuser trained with alignment
// used without it, a fuser that does not fit the sharer) is UsePair's
// FAILED_PRECONDITION, which the runner records as a refused run.
//
// Bytes: TransferReport.serialized_bytes is the sum of the serialized KvChunk
// messages the codec produced (trailer included); wire_bytes adds gRPC's
// 5-byte message prefix per chunk, i.e. what the Share stream would carry
// before HTTP/2 framing.
#ifndef KVWIRE_TOOLS_EVAL_INPROCESS_BACKEND_H_
#define KVWIRE_TOOLS_EVAL_INPROCESS_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tools/eval/backend.h"

namespace kvwire {
namespace eval {

struct InProcessBackendOptions {
  std::string receiver_dir;          // Hugging Face model directory (required).
  std::string sharer_dir;            // Empty: receiver-only answers only.
  std::string fuser_dir;             // C2C checkpoint; empty: no C2C.
  std::string tokenizer_dir;         // Empty: the receiver's directory.
  std::string sharer_tokenizer_dir;  // Empty: see PipelineOptions.
  // ReceiverEngineOptions: "auto" (the fuser's recipe decides), "on", "off";
  // strategy "first" / "longest" ("": longest, what C2C's evaluator uses).
  std::string token_alignment = "auto";
  std::string alignment_strategy;
  std::string device = "cpu";  // "cpu", "cuda", "cuda:1", ...
  // "bf16", "fp16", "fp32", or "auto" (bf16 on CUDA, fp32 on CPU).
  std::string dtype = "auto";
  int64_t text_to_text_max_new_tokens = 256;  // The paper's setting.
  int threads = 0;  // Intra-op threads; 0: Torch's default.
};

absl::StatusOr<std::unique_ptr<AnswerBackend>> CreateInProcessBackend(
    const InProcessBackendOptions& options);

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_INPROCESS_BACKEND_H_
