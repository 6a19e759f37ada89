// Client-supplied text (request ids, status messages that quote a request,
// a peer's error) on its way into a log line: control characters could forge
// log lines (a '\n' followed by "E1207 ...") or recolor a terminal (ANSI
// escapes), and a megabyte of it would become a megabyte per rejection.
#ifndef KVWIRE_COMMON_LOG_TEXT_H_
#define KVWIRE_COMMON_LOG_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace kvwire {

// `text` with every byte outside printable ASCII, '"' and '\\' C-escaped
// (\n, \x1b, ...), cut after `max_bytes` input bytes with
// "...(N bytes)" appended: one log line, bounded.
std::string ForLog(absl::string_view text, size_t max_bytes = 128);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_LOG_TEXT_H_
