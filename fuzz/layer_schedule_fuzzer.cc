// Fuzzes the mixed-precision layer schedule YAML parser
// (ParseLayerScheduleYaml). A schedule that parses is resolved for a range
// of layers, translated from receiver to sharer layers (last-aligned, 28 <-
// 24 as for Qwen3-0.6B <- Qwen2.5-0.5B) and written into a TransferSpec, as
// kvwire-eval and the CLI do.
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "common/codec/layer_schedule.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view yaml(reinterpret_cast<const char*>(data), size);
  auto schedule = kvwire::ParseLayerScheduleYaml(yaml);
  if (!schedule.ok()) return 0;
  for (uint32_t layer = 0; layer < 64; ++layer) {
    (void)kvwire::ResolveScheme(*schedule, layer);
  }
  static const std::vector<int> layer_map =
      *kvwire::LastAlignedLayerMap(28, 24);
  auto sharer = kvwire::ReceiverToSharerSchedule(*schedule, layer_map, 24);
  kvwire::v1::TransferSpec spec;
  kvwire::ApplyScheduleToSpec(sharer.ok() ? *sharer : *schedule, &spec);
  const kvwire::LayerSchedule back = kvwire::ScheduleFromSpec(spec);
  (void)back;
  return 0;
}
