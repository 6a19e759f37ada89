// Whole-file reads and writes with precise statuses, shared by every loader
// (configs, checkpoints, tokenizers, schedules, certificates).
#ifndef KVWIRE_COMMON_FILE_UTIL_H_
#define KVWIRE_COMMON_FILE_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {

// The file's bytes. NOT_FOUND if it does not exist, INVALID_ARGUMENT if it is
// a directory, UNAVAILABLE if it cannot be opened or read (the message names
// the path and the OS error).
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `data` to `path` through a temporary file in the same directory and
// a rename, so readers never see a partial file. UNAVAILABLE on failure.
absl::Status WriteStringToFile(const std::string& path, absl::string_view data);

// Whether `path` names an existing regular file (after following links).
bool IsRegularFile(const std::string& path);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FILE_UTIL_H_
