// --help flag selection.
#include "common/flags_help.h"

#include <utility>

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace kvwire {

void HelpListsFlagsOf(std::vector<std::string> files) {
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [files =
                                    std::move(files)](absl::string_view path) {
    for (const std::string& f : files) {
      if (absl::EndsWith(path, f)) return true;
    }
    return false;
  };
  absl::SetFlagsUsageConfig(config);
}

}  // namespace kvwire
