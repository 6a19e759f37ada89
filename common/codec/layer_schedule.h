// Mixed-precision layer schedules: a default scheme plus overrides, as in
// TransferSpec.scheme / layer_overrides and the research prototype's YAML
// (quantization/configs/kv_layer_schedule*.yaml):
//
//   layer_schedule:
//     default: int8
//     overrides:
//       - layers: [24, 25, 26, 27]   # or: range: [start, end]  (inclusive)
//         scheme: fp16
//
// Resolution: start from the default; apply the overrides in list order, a
// later match winning. A layer matches an override if it is listed in
// `layers` or lies inside the inclusive `range`.
//
// The prototype indexes schedules by *receiver* layer; the wire
// (TransferSpec) indexes them by *sharer* layer. ReceiverToSharerSchedule
// translates. Pure C++: no Torch.
#ifndef KVWIRE_COMMON_CODEC_LAYER_SCHEDULE_H_
#define KVWIRE_COMMON_CODEC_LAYER_SCHEDULE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

struct LayerSchedule {
  v1::Scheme default_scheme = v1::SCHEME_INT8;
  std::vector<v1::LayerOverride> overrides;
};

// Parses the prototype's YAML: either a top-level `layer_schedule:` map
// (other top-level keys are then ignored) or a bare map of `default` and
// `overrides`. `default` is optional (INT8 if absent); `overrides` is an
// optional list of maps, each with a `scheme` and `layers: [..]` and/or
// `range: [start, end]` (inclusive). Scheme names go through ParseScheme
// ("fp16", "int8", "int4", "nf4", "fp8", ...).
// INVALID_ARGUMENT (with the YAML line where known): malformed YAML, an empty
// document, unknown keys, unknown or missing scheme, an override with neither
// layers nor range, negative or non-integer layers, a range that is not two
// integers or has start > end.
absl::StatusOr<LayerSchedule> ParseLayerScheduleYaml(
    absl::string_view yaml_text);

// Reads and parses a YAML file. NOT_FOUND if it does not exist; other I/O
// failures are UNAVAILABLE; parse errors as ParseLayerScheduleYaml, prefixed
// with the path.
absl::StatusOr<LayerSchedule> LoadLayerScheduleFile(const std::string& path);

// The scheme of `layer`. An override whose scheme is UNSPECIFIED resets to
// the default; a default of UNSPECIFIED means INT8 (as in TransferSpec).
v1::Scheme ResolveScheme(const LayerSchedule& schedule, uint32_t layer);

// The schedule a TransferSpec carries (sharer layers): default = spec.scheme
// (UNSPECIFIED -> INT8), overrides = spec.layer_overrides.
LayerSchedule ScheduleFromSpec(const v1::TransferSpec& spec);
// Writes `schedule` into spec.scheme and spec.layer_overrides (replacing
// any overrides already there).
void ApplyScheduleToSpec(const LayerSchedule& schedule, v1::TransferSpec* spec);

// The prototype's `--kv-quant-last-fp16 N`, generalized: `default_scheme`
// everywhere except the last `last_n` of `num_layers` layers, which use
// `scheme` (one range override). last_n <= 0 or num_layers <= 0 gives no
// overrides; last_n > num_layers covers every layer.
LayerSchedule LastLayersSchedule(v1::Scheme default_scheme, int last_n,
                                 v1::Scheme scheme, int num_layers);

// Translates a schedule indexed by receiver layer (the prototype's) into one
// indexed by sharer layer (the wire's). layer_map[t] is the sharer layer that
// receiver layer t reads (e.g. LastAlignedLayerMap).
//
// Rule: a sharer layer read by several receiver layers gets, among their
// resolved schemes, the one with the most bits per value (BitsPerValue), so
// that no receiver layer gets less precision than it asked for; on a tie in
// bits, the scheme of the highest receiver layer wins. Example, 28 receiver
// layers reading 24 sharer layers last-aligned: receiver layers 0-4 all read
// sharer layer 0, and "receiver layers 24-27 FP16" becomes "sharer layers
// 20-23 FP16".
//
// Output: default_scheme = the most common scheme over the sharer layers that
// some receiver layer reads (ties: the receiver schedule's resolved default
// if it is among the tied, else the smallest enum value; the receiver
// default if no layer is read), plus one override per maximal run of
// consecutive read sharer layers that share a non-default scheme (a `range`
// for runs of two or more layers, `layers: [s]` for a single layer), in
// ascending layer order. Sharer layers that no receiver layer reads resolve
// to the default.
// INVALID_ARGUMENT: num_sharer_layers <= 0 or a map entry outside
// [0, num_sharer_layers).
absl::StatusOr<LayerSchedule> ReceiverToSharerSchedule(
    const LayerSchedule& receiver_schedule, absl::Span<const int> layer_map,
    int num_sharer_layers);

// C2C's terminal ("last aligned") layer mapping: receiver layer t reads
// sharer layer clamp(sharer_layers - receiver_layers + t, 0, sharer_layers-1)
// for t in [0, receiver_layers). INVALID_ARGUMENT unless both counts are
// positive.
absl::StatusOr<std::vector<int>> LastAlignedLayerMap(int receiver_layers,
                                                     int sharer_layers);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CODEC_LAYER_SCHEDULE_H_
