// What a tool's --help lists. absl's default shows only flags defined in a
// file named after the program (e.g. kvwire-cli.cc), which no kvwire main
// is; tools name their own files instead.
#ifndef KVWIRE_COMMON_FLAGS_HELP_H_
#define KVWIRE_COMMON_FLAGS_HELP_H_

#include <string>
#include <vector>

namespace kvwire {

// Makes --help list the flags defined in files whose path ends with one of
// `files` (e.g. "tools/cli/main.cc"). Call before absl::ParseCommandLine.
void HelpListsFlagsOf(std::vector<std::string> files);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FLAGS_HELP_H_
