// Reader and writer for the safetensors format (huggingface/safetensors):
//
//   [u64 little-endian N][N bytes of JSON header][data section]
//
// The header maps tensor names to {"dtype", "shape", "data_offsets":[b, e]}
// (offsets relative to the data section) plus an optional "__metadata__"
// string map. The reader memory-maps the file and validates it fully before
// handing out anything: header length cap, JSON shape, known dtypes, offsets
// inside the data section, end - begin == numel * itemsize, and no two tensors
// overlapping. Errors name the file and the tensor.
//
// Sharded checkpoints (model.safetensors.index.json + shards) are read through
// CheckpointReader.
#ifndef KVWIRE_COMMON_MODEL_SAFETENSORS_H_
#define KVWIRE_COMMON_MODEL_SAFETENSORS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvwire {

enum class SafetensorsDtype {
  kBool,
  kU8,
  kI8,
  kI16,
  kI32,
  kI64,
  kF16,
  kBF16,
  kF32,
  kF64
};

// "BF16", "F32", ... as in the header.
std::string SafetensorsDtypeName(SafetensorsDtype dtype);
absl::StatusOr<SafetensorsDtype> ParseSafetensorsDtype(absl::string_view name);
int64_t SafetensorsDtypeSize(SafetensorsDtype dtype);
// Mapping to and from Torch dtypes. INVALID_ARGUMENT for types safetensors
// (or this reader) does not have.
at::ScalarType ToScalarType(SafetensorsDtype dtype);
absl::StatusOr<SafetensorsDtype> FromScalarType(at::ScalarType type);

// Headers larger than this are rejected (same cap as the reference reader).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100u << 20;

struct SafetensorsTensorInfo {
  std::string name;
  SafetensorsDtype dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // Byte offsets into the data section.
  uint64_t end = 0;
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  // Maps and validates `path`. NOT_FOUND if it cannot be opened;
  // INVALID_ARGUMENT / DATA_LOSS naming the file (and tensor) otherwise.
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Open(
      const std::string& path);
  // Parses an in-memory copy of a file; `name` is used in messages.
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> FromBuffer(
      std::string bytes, const std::string& name = "<buffer>");

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // Sorted by data offset.
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
  // nullptr if absent.
  const SafetensorsTensorInfo* Find(absl::string_view name) const;
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  // Raw little-endian bytes of a tensor (lives as long as this object).
  absl::Span<const uint8_t> Bytes(const SafetensorsTensorInfo& info) const;

  // A CPU tensor of the stored dtype and shape. Zero-copy when the data is
  // suitably aligned: the tensor views a private copy-on-write mapping and
  // keeps this file mapped while it lives (writes to it never reach the
  // file). Otherwise a copy. NOT_FOUND naming the tensor and file if absent.
  absl::StatusOr<at::Tensor> GetTensor(absl::string_view name) const;

 private:
  SafetensorsFile() = default;
  absl::Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;  // Whole file.
  uint64_t size_ = 0;
  void* mapping_ = nullptr;  // mmap'd region (size_ bytes) or nullptr.
  std::string buffer_;       // FromBuffer storage.
  uint64_t data_offset_ = 0;
  std::vector<SafetensorsTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: raw little-endian bytes.
struct SafetensorsEntry {
  std::string name;
  SafetensorsDtype dtype;
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> data;  // numel * itemsize bytes.
};

// Serializes entries (data laid out in the given order, header padded to 8
// bytes as the reference writer does).
absl::StatusOr<std::string> SerializeSafetensors(
    absl::Span<const SafetensorsEntry> entries,
    const std::map<std::string, std::string>& metadata = {});
// Writes `path` atomically (temporary file + rename).
absl::Status WriteSafetensors(
    const std::string& path, absl::Span<const SafetensorsEntry> entries,
    const std::map<std::string, std::string>& metadata = {});
// Torch convenience: tensors of any device/layout, copied to CPU contiguous.
absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// A model directory's weights: model.safetensors, or the shards listed in
// model.safetensors.index.json ("weight_map": name -> file).
class CheckpointReader {
 public:
  static absl::StatusOr<CheckpointReader> Open(const std::string& model_dir);

  bool Contains(absl::string_view name) const;
  // CPU tensor (zero-copy where possible). NOT_FOUND naming the tensor.
  absl::StatusOr<at::Tensor> Get(absl::string_view name) const;
  const SafetensorsTensorInfo* Info(absl::string_view name) const;
  std::vector<std::string> Names() const;
  const std::string& model_dir() const { return model_dir_; }
  size_t num_files() const { return files_.size(); }

 private:
  std::string model_dir_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, size_t, std::less<>> file_of_;  // name -> files_ index
};

// Writes `tensors` as model.safetensors (num_shards <= 1) or as
// model-0000i-of-0000n.safetensors + model.safetensors.index.json, splitting
// in order into shards of roughly equal byte size.
absl::Status WriteCheckpointWeights(const std::string& model_dir,
                                    absl::Span<const SafetensorsEntry> entries,
                                    int num_shards);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_SAFETENSORS_H_
