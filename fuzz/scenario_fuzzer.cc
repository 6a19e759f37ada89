// Fuzzes the load generator's scenario files (load_tests/scenario.cc, built
// into this target because kvwire_load_lib links gRPC): ParseLoadConfigYaml
// and ValidateLoadConfig on the whole input, plus the spec-list syntax of
// --specs (SplitSpecList + ParseSpecYaml) and the question-file parser on
// the same bytes.
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "load_tests/scenario.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = kvwire::load::ParseLoadConfigYaml(text);
  if (config.ok()) {
    (void)kvwire::load::ValidateLoadConfig(*config);
    for (const auto& scenario : config->scenarios) {
      (void)kvwire::load::SpecLabel(scenario.spec);
    }
  }
  for (const std::string& item : kvwire::load::SplitSpecList(text)) {
    auto spec = kvwire::load::ParseSpecYaml(item);
    if (spec.ok()) (void)kvwire::load::SpecLabel(*spec);
  }
  (void)kvwire::load::ParseQuestions(text);
  return 0;
}
