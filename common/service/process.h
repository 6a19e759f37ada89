// Process plumbing shared by the kvwire servers: termination signals that
// start a graceful shutdown, the effective configuration logged at start,
// and the "ready" line scripts and tests wait for.
#ifndef KVWIRE_COMMON_SERVICE_PROCESS_H_
#define KVWIRE_COMMON_SERVICE_PROCESS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace kvwire {

// Installs SIGTERM and SIGINT handlers that wake WaitForTerminationSignal
// (through a self-pipe: async-signal-safe, any thread may take the
// signal). SIGPIPE is ignored. INTERNAL if the pipe or a handler cannot be
// set up. Call once, early in main().
absl::Status InstallTerminationSignalHandlers();

// Blocks until SIGTERM/SIGINT arrives or RequestTermination() is called;
// returns the signal number (0 for RequestTermination). A second signal
// while draining is left to the default action of a third: the handlers
// stay installed, so use SIGKILL to stop a stuck drain.
int WaitForTerminationSignal();

// Wakes WaitForTerminationSignal as if a signal had arrived (returns 0).
void RequestTermination();

// Logs every command-line flag defined outside Abseil itself with its
// effective value, one "name = value" line each, under a heading naming
// `program`. Flags with a word "token", "password" or "secret" in their
// name (auth_token, not max_prompt_tokens) are shown as "<redacted>" when
// set; names ending in _file or _path are not secrets and are shown.
void LogEffectiveFlags(absl::string_view program);

// Logs `items` as the effective configuration table of `program`.
void LogEffectiveConfig(
    absl::string_view program,
    const std::vector<std::pair<std::string, std::string>>& items);

// Writes "<program> ready key=value ..." as one line to stdout and flushes
// it (tests and scripts read the ports from it).
void AnnounceReady(
    absl::string_view program,
    const std::vector<std::pair<std::string, std::string>>& fields);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_PROCESS_H_
