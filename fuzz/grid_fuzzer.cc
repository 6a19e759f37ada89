// Fuzzes kvwire-eval's experiment grids (tools/eval/grid.cc, built into this
// target because kvwire_eval_lib links gRPC): ParseGridYaml, then
// ResolveRun of every expanded run against a Qwen3-0.6B <- Qwen2.5-0.5B
// layout (28 receiver, 24 sharer layers), as kvwire-eval does.
//
// Schedules may name a YAML file (`file:` or a `.yaml` path); paths resolve
// under a per-process temporary directory holding one real schedule file,
// sched.yaml (removed at exit). Inputs that could name a device or a
// pseudo-file elsewhere (a backslash escape, or /dev, /proc, /sys, /run) are
// skipped so that the fuzzer never reads /dev/zero or blocks on a FIFO.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "tools/eval/grid.h"

namespace {

const std::string& BaseDir() {
  static const std::string* dir = [] {
    char tmpl[] = "/tmp/kvwire_grid_fuzz.XXXXXX";
    const char* made = mkdtemp(tmpl);
    if (made == nullptr) std::abort();
    auto* d = new std::string(made);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(BaseDir(), ec);
    });
    std::ofstream(*d + "/sched.yaml") << "layer_schedule:\n"
                                         "  default: int8\n"
                                         "  overrides:\n"
                                         "    - range: [24, 27]\n"
                                         "      scheme: fp16\n";
    return d;
  }();
  return *dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view yaml(reinterpret_cast<const char*>(data), size);
  for (absl::string_view bad : {"\\", "/dev", "/proc", "/sys", "/run"}) {
    if (absl::StrContains(yaml, bad)) return 0;
  }
  auto grid = kvwire::eval::ParseGridYaml(yaml, BaseDir());
  if (!grid.ok()) return 0;
  kvwire::eval::BackendLayout layout;
  layout.receiver_layers = 28;
  layout.sharer_layers = 24;
  for (const auto& run : grid->runs) {
    (void)kvwire::eval::RunId(run);
    (void)kvwire::eval::SeriesLabel(run);
    (void)kvwire::eval::ResolveRun(run, layout);
  }
  return 0;
}
