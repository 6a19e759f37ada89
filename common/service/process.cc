// Termination signals, configuration logging and the ready line.
#include "common/service/process.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"

namespace kvwire {
namespace {

int g_signal_pipe[2] = {-1, -1};

void OnTerminationSignal(int signo) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(signo);
  // A full pipe means a wake-up is already pending; nothing to do.
  (void)!write(g_signal_pipe[1], &byte, 1);
  errno = saved_errno;
}

bool IsSecretName(absl::string_view name) {
  if (absl::EndsWith(name, "_file") || absl::EndsWith(name, "_path")) {
    return false;
  }
  const std::string lower = absl::AsciiStrToLower(name);
  for (absl::string_view word : absl::StrSplit(lower, '_')) {
    if (word == "token" || word == "password" || word == "secret") {
      return true;
    }
  }
  return false;
}

}  // namespace

absl::Status InstallTerminationSignalHandlers() {
  if (g_signal_pipe[0] < 0) {
    if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
    }
    // Non-blocking write end: the handler must never block.
    fcntl(g_signal_pipe[1], F_SETFL,
          fcntl(g_signal_pipe[1], F_GETFL) | O_NONBLOCK);
  }
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = OnTerminationSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int signo : {SIGTERM, SIGINT}) {
    if (sigaction(signo, &action, nullptr) != 0) {
      return absl::InternalError(
          absl::StrCat("sigaction(", signo, "): ", std::strerror(errno)));
    }
  }
  signal(SIGPIPE, SIG_IGN);
  return absl::OkStatus();
}

int WaitForTerminationSignal() {
  CHECK_GE(g_signal_pipe[0], 0)
      << "InstallTerminationSignalHandlers() was not called";
  unsigned char byte = 0;
  while (true) {
    const ssize_t n = read(g_signal_pipe[0], &byte, 1);
    if (n == 1) return byte;
    if (n < 0 && errno == EINTR) continue;
    PLOG(ERROR) << "reading the signal pipe";
    return 0;
  }
}

void RequestTermination() {
  if (g_signal_pipe[1] < 0) return;
  const unsigned char byte = 0;
  (void)!write(g_signal_pipe[1], &byte, 1);
}

void LogEffectiveFlags(absl::string_view program) {
  std::vector<std::pair<std::string, std::string>> items;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::StrContains(flag->Filename(), "absl/")) continue;
    std::string value = flag->CurrentValue();
    if (IsSecretName(name) && !value.empty() && value != "\"\"") {
      value = "<redacted>";
    }
    items.emplace_back(std::string(name), std::move(value));
  }
  std::sort(items.begin(), items.end());
  LogEffectiveConfig(program, items);
}

void LogEffectiveConfig(
    absl::string_view program,
    const std::vector<std::pair<std::string, std::string>>& items) {
  size_t width = 0;
  for (const auto& item : items) width = std::max(width, item.first.size());
  std::string table = absl::StrCat(program, " effective configuration:");
  for (const auto& [name, value] : items) {
    absl::StrAppend(&table, "\n  ", name, std::string(width - name.size(), ' '),
                    " = ", value);
  }
  LOG(INFO) << table;
}

void AnnounceReady(
    absl::string_view program,
    const std::vector<std::pair<std::string, std::string>>& fields) {
  std::vector<std::string> parts;
  for (const auto& [key, value] : fields) {
    parts.push_back(absl::StrCat(key, "=", value));
  }
  const std::string line =
      absl::StrCat(program, " ready ", absl::StrJoin(parts, " "), "\n");
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

}  // namespace kvwire
