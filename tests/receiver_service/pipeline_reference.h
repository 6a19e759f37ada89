// The Torch side of the receiver end-to-end tests, kept out of the gRPC test
// translation unit: tiny models, tokenizer and fuser on disk (the pipeline
// tests' assets), and the in-process C2cPipeline answering the same
// question with the same spec, which the services must match bit for bit.
#ifndef KVWIRE_TESTS_RECEIVER_SERVICE_PIPELINE_REFERENCE_H_
#define KVWIRE_TESTS_RECEIVER_SERVICE_PIPELINE_REFERENCE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

struct ReferenceAssets {
  std::string receiver_dir;  // Qwen3 layout + tokenizer + chat template.
  std::string sharer_dir;    // Qwen2 layout, shapes the fuser reads.
  std::string fuser_dir;
  // A Qwen2 sharer whose KV heads differ from what the fuser reads.
  std::string mismatched_sharer_dir;
  // Tokenizer directories when the model directories have none (empty:
  // the receiver's own; the sharer's directory or the receiver's).
  std::string tokenizer_dir;
  std::string sharer_tokenizer_dir;
};

// Writes the assets under `root`.
absl::StatusOr<ReferenceAssets> MakeReferenceAssets(const std::string& root);

struct ReferenceResult {
  std::vector<uint32_t> token_ids;
  std::string text;
  // The in-process transfer (C2C only).
  uint64_t raw_kv_bytes = 0;
  uint64_t payload_bytes = 0;
  uint64_t scale_bytes = 0;
  uint64_t index_bytes = 0;
  uint32_t prompt_tokens = 0;
  uint32_t tokens_sent = 0;
  uint32_t layers_sent = 0;
};

// C2cPipeline (fp32, CPU, one intra-op thread) answering `question` as one
// user message. `c2c` false: receiver-only. `selection` names a
// SelectionStrategy ("spec", "receiver_attention", "receiver_vnorm").
absl::StatusOr<ReferenceResult> ReferenceAnswer(
    const ReferenceAssets& assets, const std::string& question, bool c2c,
    const v1::TransferSpec& spec, const v1::GenerationParams& generation,
    const std::string& selection = "spec",
    const std::string& request_id = "reference");

// The same for a list of (role, content) messages in any PipelineMode
// ("c2c", "receiver-only", "sharer-only", "text-to-text").
absl::StatusOr<ReferenceResult> ReferenceAnswer(
    const ReferenceAssets& assets,
    const std::vector<std::pair<std::string, std::string>>& messages,
    const std::string& mode, const v1::TransferSpec& spec,
    const v1::GenerationParams& generation,
    const std::string& request_id = "reference");

// C2cPipeline's text-to-text answer (its default background prompt and 256
// background tokens; the sharer's template from the sharer's directory).
struct TextToTextReference {
  std::vector<uint32_t> token_ids;
  std::string text;
  std::vector<uint32_t> background_ids;
  std::string background_text;
};
absl::StatusOr<TextToTextReference> ReferenceTextToText(
    const ReferenceAssets& assets, const std::string& question,
    const v1::GenerationParams& generation);

struct StreamSize {
  uint64_t serialized_bytes = 0;  // Every KvChunk, trailer included.
  uint64_t chunks = 0;
};

// The exact stream a sharer describing its model as `sharer_model` (its
// GetInfo) sends for `question` under `spec` and `request_id`: the codec run
// in process on the sharer model over the receiver's prompt ids[0, L-1).
absl::StatusOr<StreamSize> ExpectedStream(const ReferenceAssets& assets,
                                          const v1::ModelInfo& sharer_model,
                                          const std::string& question,
                                          const v1::TransferSpec& spec,
                                          const std::string& request_id);

}  // namespace kvwire

#endif  // KVWIRE_TESTS_RECEIVER_SERVICE_PIPELINE_REFERENCE_H_
