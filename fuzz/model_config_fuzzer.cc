// Fuzzes the Hugging Face model configuration parser (ParseModelConfig):
// config.json and generation_config.json text, with every architecture
// family's quirks and both RoPE layouts. Input: config.json bytes, then
// optionally a NUL byte and generation_config.json bytes. A config that
// parses is validated and its expected weight list built, as the model
// loader does next.
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/string_view.h"
#include "common/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view input(reinterpret_cast<const char*>(data), size);
  absl::string_view config = input;
  absl::string_view generation;
  const size_t nul = input.find('\0');
  if (nul != absl::string_view::npos) {
    config = input.substr(0, nul);
    generation = input.substr(nul + 1);
  }
  auto parsed = kvwire::ParseModelConfig(config, generation, "fuzz");
  if (!parsed.ok()) return 0;
  if (!kvwire::ValidateModelConfig(*parsed).ok()) return 0;
  (void)kvwire::ExpectedWeights(*parsed);
  // The writer's output must parse back.
  auto again = kvwire::ParseModelConfig(kvwire::ModelConfigToJson(*parsed),
                                        kvwire::GenerationConfigToJson(*parsed),
                                        "roundtrip");
  (void)again;
  return 0;
}
