// Tiny random assets for the pipeline tests, generated at test time with the
// project's own generators: a Qwen3-style receiver and a Qwen2-style sharer
// (WriteRandomCheckpoint), a C2C fuser in the released layout
// (MakeRandomFuserCheckpoint + WriteFuserCheckpoint), and a small byte-level
// BPE tokenizer (bytes + the Qwen special tokens) whose tokenizer_config.json
// carries the real Qwen3 chat template (the sharer's directory gets the
// Qwen2.5 template), both taken from tests/data/chat_template_goldens.json.
#ifndef KVWIRE_TESTS_COMMON_PIPELINE_TEST_ASSETS_H_
#define KVWIRE_TESTS_COMMON_PIPELINE_TEST_ASSETS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace kvwire {

// The repository root (KVWIRE_SOURCE_DIR, else the configure-time path).
std::string SourceDir();
// A fresh directory under $TMPDIR (or /tmp).
std::string MakeTempDir(const std::string& prefix);

struct TinyPipelineAssets {
  std::string receiver_dir;
  std::string sharer_dir;
  std::string fuser_dir;
  // Token ids of the tokenizer's special tokens.
  int64_t im_start = 0;
  int64_t im_end = 0;
};

struct TinyPipelineOptions {
  uint64_t seed = 1;
  int receiver_layers = 4;
  int sharer_layers = 3;
  double open_gate_fraction = 1.0;
};

// Writes receiver/, sharer/ and fuser/ under `root`.
absl::StatusOr<TinyPipelineAssets> MakeTinyPipeline(
    const std::string& root, const TinyPipelineOptions& options = {});

}  // namespace kvwire

#endif  // KVWIRE_TESTS_COMMON_PIPELINE_TEST_ASSETS_H_
