// Fuzzes the JSON side of a C2C fuser checkpoint: every input goes through
// all three parsers, ParseProjectorJson (final/projector_{i}.json),
// ParseProjectorConfigJson (final/projector_config.json, with and without a
// receiver layer count) and ParseFuserRecipe (the training recipe,
// config.json). What parses is validated as ReadFuserCheckpoint and the
// projector builder do.
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "common/fuser/fuser_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view json(reinterpret_cast<const char*>(data), size);
  auto args = kvwire::ParseProjectorJson(json, "fuzz");
  if (args.ok()) {
    (void)kvwire::ValidateProjectorArgs(*args);
    (void)kvwire::ParseProjectorJson(kvwire::ProjectorJson(*args), "again");
  }
  for (int receiver_layers : {0, 28}) {
    auto map = kvwire::ParseProjectorConfigJson(json, receiver_layers, "fuzz");
    if (map.ok()) {
      (void)kvwire::ValidateFuserLayerMap(*map, /*num_projectors=*/28,
                                          /*sharer_layers=*/24);
      (void)kvwire::ProjectorConfigJson(*map);
    }
  }
  auto recipe = kvwire::ParseFuserRecipe(json, "fuzz");
  (void)recipe;
  return 0;
}
