// Reading and writing flat tensor dictionaries in PyTorch's torch.save zip
// format ("archive/data.pkl" + one "archive/data/<key>" record per storage),
// as the released C2C projector files use.
//
// Why not torch::pickle_load: LibTorch's unpickler maps
// collections.OrderedDict to None, and torch.save(module.state_dict()) writes
// an OrderedDict (c2c-spec §3). The reader here interprets the small pickle
// subset that state dicts use (PROTO, FRAME, GLOBAL / STACK_GLOBAL, BINPERSID,
// tuples, lists, dicts, ints, floats, bools, strings, None, REDUCE, BUILD,
// the memo opcodes) and never executes pickle globals: only
// collections.OrderedDict, torch._utils._rebuild_tensor(_v2),
// torch._utils._rebuild_parameter(_with_state) and the typed storage classes
// (torch.FloatStorage, torch.BFloat16Storage, ...) are understood; anything
// else is rejected naming the global. The zip container is read with
// LibTorch's own PyTorchStreamReader.
//
// The writer emits what Python's torch.save(OrderedDict) writes (protocol 2,
// an OrderedDict of str -> torch._utils._rebuild_tensor_v2 over one storage
// record per tensor, plus a "byteorder" record), through LibTorch's
// PyTorchStreamWriter. Python's torch.load reads it with weights_only=True
// (torch::pickle_save is not used: it wraps the dict in
// torch.jit._pickle.restore_type_tag, which weights_only loading rejects).
#ifndef KVWIRE_COMMON_FUSER_TORCH_PICKLE_H_
#define KVWIRE_COMMON_FUSER_TORCH_PICKLE_H_

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {

// Name -> tensor, in the file's order.
using TensorList = std::vector<std::pair<std::string, at::Tensor>>;

// Parses the bytes of a torch.save file whose top-level object is a dict or
// OrderedDict of str -> tensor (nn.Parameter too). Tensors are CPU tensors of
// the stored dtype, shape and strides (views sharing a storage when the file
// shares one). `name` is used in messages.
// Errors: INVALID_ARGUMENT for a file that is not in the zip format (e.g.
// the legacy pre-1.6 format), for unsupported pickle content (naming the
// opcode or global) or a top level that is not a str -> tensor dict (naming
// the key); DATA_LOSS for truncated or inconsistent data (a storage record
// smaller than its tensors need, a bad zip); UNIMPLEMENTED for big-endian
// files. Never throws.
absl::StatusOr<TensorList> ParseTorchStateDict(
    const std::string& bytes, absl::string_view name = "<buffer>");
// Reads `path` and parses it. NOT_FOUND if it cannot be opened.
absl::StatusOr<TensorList> ReadTorchStateDict(const std::string& path);

// Serializes `tensors` (any device or layout; float, int or bool dtypes) in
// the torch.save zip format, as an OrderedDict in the given order.
// INVALID_ARGUMENT for duplicate names, undefined tensors or other dtypes.
absl::StatusOr<std::string> SerializeTorchStateDict(const TensorList& tensors);
// Writes `path` atomically (temporary file + rename).
absl::Status WriteTorchStateDict(const std::string& path,
                                 const TensorList& tensors);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FUSER_TORCH_PICKLE_H_
