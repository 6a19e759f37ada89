// Experiment grids: a YAML file of run blocks, each the cartesian product of
// its axes, expanded into uniquely named runs. Format
// (tools/eval/grids/prototype_m0_m8.yaml is the full example):
//
//   name: my_grid                  # optional
//   datasets:                      # optional; paths relative to this file,
//     openbookqa: obqa_test.jsonl  # overridden by --openbookqa/--arc_challenge
//     arc_challenge: arc_test.jsonl
//   defaults:                      # optional; any block key but `name`
//     granularity: head
//   schedules:                     # optional; named mixed-precision schedules
//     last2_fp16: {last: 2, scheme: fp16}         # the last N layers
//     last4_fp16:                                  # explicit, prototype YAML
//       layers_of: receiver                        # receiver (default)|sharer
//       layer_schedule: {default: int8,
//                        overrides: [{range: [24, 27], scheme: fp16}]}
//     from_file: {file: kv_layer_schedule.yaml}    # the prototype's files
//   sharers:                       # optional; named model pairs for M7
//     llama3.2_1b:                 # a name, [A-Za-z0-9_.-]
//       sharer_dir: ${LLAMA_DIR}   # required; ${VAR}: --grid_var, then env
//       sharer_tokenizer_dir: ...  # optional (default: sharer_dir)
//       fuser_dir: ${LLAMA_FUSER}  # optional (default: the backend's)
//   runs:
//     - name: ptq                  # required, [A-Za-z0-9_.-]
//       method: c2c                # receiver-only|sharer-only|text-to-text|c2c
//       scheme: [int8, int4]       # scheme.h names
//       granularity: head          # layer|head|token|channel|group|kivi
//       group_size: 32             # granularity group only
//       asymmetric: false
//       selection: [front, back]   # all|front|back|random|knorm_topk|
//                                  # vnorm_topk|proj_vnorm_topk|
//                                  # delta_proj_vnorm_topk|receiver_attention|
//                                  # receiver_vnorm
//       proportion: [0.5, 0.25]
//       min_tokens: 0
//       seed: 0                    # random selection
//       shared_selection: false    # TokenSelection.shared_across_layers
//       schedule: [none, last2_fp16]  # a name above, or a .yaml path
//       zstd: [false, 3]           # false | true (level 3) | level 1-22
//       budget_bytes: 0            # TransferSpec.max_payload_bytes (0: none)
//       budget_mixed_precision: false
//       layers: [0, 1, 2]          # sharer layers to send (not an axis)
//       max_new_tokens: 64
//       series: "my label"         # plot series (default: derived)
//       sharer: [default, llama3.2_1b]  # `sharers:` names; default: the
//                                  # backend's own sharer and fuser
//       token_alignment: [on, off] # auto|on|off (default: the backend's)
//       alignment_strategy: first  # first|longest (default: the backend's)
//
// Every key but name/series/layers takes a scalar or a list (an axis).
// Normalisation: a proportion >= 1 means every token, so the selection
// becomes "all" (min_tokens/seed dropped); C2C keys are ignored for the other
// methods. Runs with the same id (the id encodes every setting) are merged.
//
// Model pairs: `sharer`, `token_alignment` and `alignment_strategy` make a
// run answer with another sharer / fuser / alignment than the backend's own
// (the id gets "-sharer_NAME" and "-align_MODE[_STRATEGY]"). Receiver-only
// runs ignore them; sharer-only and text-to-text keep only the sharer (and
// load it without a fuser). A `sharers:` entry whose ${VAR} is not set
// (neither --grid_var nor the environment) is unavailable: its runs are left
// out of the grid with a note in Grid::notes, so a grid with an M7 block
// still runs its other blocks. Only the in-process backend can switch pairs;
// the gRPC backend refuses such runs before asking anything (the pair is the
// receiver service's flags).
//
// Mixed-precision schedules: the run's `scheme` is the default and a schedule
// adds overrides (an explicit `default` must agree with the scheme). The
// prototype indexes layers by receiver layer; the wire by sharer layer:
// receiver-indexed schedules are translated with the backend's layer map
// (ReceiverToSharerSchedule) when the run is resolved.
#ifndef KVWIRE_TOOLS_EVAL_GRID_H_
#define KVWIRE_TOOLS_EVAL_GRID_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvwire/v1/kvwire.pb.h"
#include "tools/eval/backend.h"

namespace kvwire {
namespace eval {

enum class ScheduleLayers { kReceiver, kSharer };

struct ScheduleDef {
  std::string name;
  ScheduleLayers layers_of = ScheduleLayers::kReceiver;
  // Explicit overrides (and the default, if the YAML gave one) ...
  std::vector<v1::LayerOverride> overrides;
  std::optional<v1::Scheme> default_scheme;
  // ... or the last `last_n` layers at `last_scheme`.
  int last_n = 0;
  v1::Scheme last_scheme = v1::SCHEME_FP16;
};

struct RunSpec {
  std::string id;                   // Unique; a directory name.
  std::vector<std::string> blocks;  // The grid blocks that produced it.
  std::string series;               // Plot series label.
  // C2C runs with a partial selection: the id of the same run sending every
  // token, drawn as the series' full-transfer point ("" otherwise).
  std::string anchor_id;
  EvalMethod method = EvalMethod::kC2C;
  int max_new_tokens = 64;
  // C2C only.
  v1::Scheme scheme = v1::SCHEME_INT8;
  v1::Granularity granularity = v1::GRANULARITY_PER_HEAD;
  uint32_t group_size = 0;  // 0: the default (32).
  bool asymmetric = false;
  std::string selection = "all";  // Wire mode or in-process strategy.
  double proportion = 1.0;
  uint32_t min_tokens = 0;
  uint64_t seed = 0;
  bool shared_selection = false;
  std::optional<ScheduleDef> schedule;
  int zstd_level = 0;  // 0: no entropy stage.
  uint64_t budget_bytes = 0;
  bool budget_mixed_precision = false;
  std::vector<uint32_t> layers;
  // Any method but receiver-only: the run's model pair (empty: the
  // backend's).
  PairOverride pair;
};

struct Grid {
  std::string name;
  std::string path;  // "" when parsed from text.
  std::vector<RunSpec> runs;
  // Dataset kind name ("openbookqa", "arc_challenge") -> path, in file order.
  std::vector<std::pair<std::string, std::string>> datasets;
  // Runs left out (a sharer whose ${VAR} is unset), one line each.
  std::vector<std::string> notes;
};

// Values of ${NAME} in `sharers:` paths (looked up before the environment).
using GridVariables = std::map<std::string, std::string>;

// "NAME=VALUE,NAME=VALUE" (--grid_var) into variables; INVALID_ARGUMENT for
// an entry without '=' or with a bad name.
absl::StatusOr<GridVariables> ParseGridVariables(absl::string_view text);

// `base_dir` resolves relative dataset, schedule and sharer paths.
// INVALID_ARGUMENT with the YAML line for malformed grids.
absl::StatusOr<Grid> ParseGridYaml(absl::string_view yaml,
                                   const std::string& base_dir,
                                   const GridVariables& variables = {});
absl::StatusOr<Grid> LoadGridFile(const std::string& path,
                                  const GridVariables& variables = {});

// The id and series of a run from its settings (what expansion assigns).
std::string RunId(const RunSpec& run);
std::string SeriesLabel(const RunSpec& run);

// A run made ready for a backend: the TransferSpec (schedule translated to
// sharer layers) and the selection strategy ("spec" or an in-process one).
struct ResolvedRun {
  RunSpec spec;
  v1::TransferSpec transfer;
  std::string selection_strategy = "spec";
};

// FAILED_PRECONDITION when a schedule needs layer counts the backend does
// not know; INVALID_ARGUMENT when it names layers the models do not have.
absl::StatusOr<ResolvedRun> ResolveRun(const RunSpec& run,
                                       const BackendLayout& layout);

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_GRID_H_
