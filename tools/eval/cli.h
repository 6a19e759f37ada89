// kvwire-eval's command line as a library call (main.cc only parses flags
// into a CliConfig), so tests can drive exactly what users run.
#ifndef KVWIRE_TOOLS_EVAL_CLI_H_
#define KVWIRE_TOOLS_EVAL_CLI_H_

#include <functional>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "tools/eval/grid.h"
#include "tools/eval/grpc_backend.h"
#include "tools/eval/inprocess_backend.h"

namespace kvwire {
namespace eval {

extern const char kEvalUsage[];

struct CliConfig {
  // What to run: a grid file, or one block built from the single-run lists
  // (comma-separated, each an axis).
  std::string grid;
  std::string grid_vars;  // --grid_var: NAME=VALUE,NAME=VALUE.
  std::string methods;    // Default "c2c" when no grid.
  std::string schemes;
  std::string granularities;
  std::string selections;
  std::string proportions;
  std::string min_tokens;
  std::string schedules;  // .yaml files (receiver-indexed) or "none".
  std::string zstd;
  int max_new_tokens = 64;
  // Datasets (override the grid's); `datasets` filters by name.
  std::string openbookqa;
  std::string arc_challenge;
  std::string datasets;
  int limit = 0;
  // Output.
  std::string out;
  bool overwrite = false;
  bool progress = true;
  bool plots = true;
  std::string gnuplot = "gnuplot";
  bool dump_prompts = false;
  bool plots_only = false;
  bool list = false;
  // Backend.
  std::string backend = "inprocess";
  InProcessBackendOptions inprocess;
  GrpcBackendOptions grpc;
  std::string auth_token_file;
  // Where the prompt-length tokenizer comes from (in-process: defaults to
  // the pipeline's tokenizer directory).
  std::string prompt_tokenizer_dir;
  std::function<bool()> stop_requested;
};

// The grid a config describes (file or single-run lists).
absl::StatusOr<Grid> GridFromConfig(const CliConfig& config);

// Runs the command; returns the process exit code (0 ok, 1 error, 2 usage,
// 130 interrupted). Messages go to `out` (results) and `err` (progress,
// errors).
int RunEvalCli(const CliConfig& config, std::ostream& out, std::ostream& err);

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_CLI_H_
