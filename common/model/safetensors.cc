#include "common/model/safetensors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

using Json = nlohmann::json;

// No real tensor comes close; keeps numel * itemsize far from overflow.
constexpr int64_t kMaxNumel = int64_t{1} << 50;

struct DtypeRow {
  SafetensorsDtype dtype;
  const char* name;
  int64_t size;
  at::ScalarType scalar;
};

constexpr DtypeRow kDtypes[] = {
    {SafetensorsDtype::kBool, "BOOL", 1, at::kBool},
    {SafetensorsDtype::kU8, "U8", 1, at::kByte},
    {SafetensorsDtype::kI8, "I8", 1, at::kChar},
    {SafetensorsDtype::kI16, "I16", 2, at::kShort},
    {SafetensorsDtype::kI32, "I32", 4, at::kInt},
    {SafetensorsDtype::kI64, "I64", 8, at::kLong},
    {SafetensorsDtype::kF16, "F16", 2, at::kHalf},
    {SafetensorsDtype::kBF16, "BF16", 2, at::kBFloat16},
    {SafetensorsDtype::kF32, "F32", 4, at::kFloat},
    {SafetensorsDtype::kF64, "F64", 8, at::kDouble},
};

const DtypeRow& Row(SafetensorsDtype dtype) {
  for (const DtypeRow& row : kDtypes) {
    if (row.dtype == dtype) return row;
  }
  return kDtypes[0];
}

uint64_t ReadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void AppendLe64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

absl::StatusOr<int64_t> Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError("negative dimension");
    if (d != 0 && n > kMaxNumel / d) {
      return absl::InvalidArgumentError("too many elements");
    }
    n *= d;
  }
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    absl::StrAppend(&s, i ? ", " : "", shape[i]);
  }
  return s + "]";
}

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
    }
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return absl::DataLossError(absl::StrCat("cannot write ", tmp));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::DataLossError(absl::StrCat("cannot rename ", tmp, " to ", path,
                                            ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

std::string SafetensorsDtypeName(SafetensorsDtype dtype) {
  return Row(dtype).name;
}

absl::StatusOr<SafetensorsDtype> ParseSafetensorsDtype(absl::string_view name) {
  for (const DtypeRow& row : kDtypes) {
    if (name == row.name) return row.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported safetensors dtype '", name, "'"));
}

int64_t SafetensorsDtypeSize(SafetensorsDtype dtype) { return Row(dtype).size; }

at::ScalarType ToScalarType(SafetensorsDtype dtype) {
  return Row(dtype).scalar;
}

absl::StatusOr<SafetensorsDtype> FromScalarType(at::ScalarType type) {
  for (const DtypeRow& row : kDtypes) {
    if (row.scalar == type) return row.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "dtype ", c10::toString(type), " has no safetensors equivalent"));
}

int64_t SafetensorsTensorInfo::numel() const {
  auto n = Numel(shape);
  return n.ok() ? *n : -1;
}

// ---------------------------------------------------------------------------
// Reader

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file"));
  }
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ < 8) {
    ::close(fd);
    return absl::DataLossError(
        absl::StrCat(path, ": truncated safetensors file (", file->size_,
                     " bytes; the header length alone takes 8)"));
  }
  // Private and writable: tensors handed out may be written to (copy on
  // write), which never reaches the file.
  void* map =
      ::mmap(nullptr, file->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat("cannot mmap ", path, ": ", std::strerror(errno)));
  }
  file->mapping_ = map;
  file->base_ = static_cast<const uint8_t*>(map);
  RETURN_IF_ERROR(file->Parse());
  return std::shared_ptr<const SafetensorsFile>(std::move(file));
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>>
SafetensorsFile::FromBuffer(std::string bytes, const std::string& name) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = name;
  file->buffer_ = std::move(bytes);
  file->base_ = reinterpret_cast<const uint8_t*>(file->buffer_.data());
  file->size_ = file->buffer_.size();
  if (file->size_ < 8) {
    return absl::DataLossError(
        absl::StrCat(name, ": truncated safetensors file (", file->size_,
                     " bytes; the header length alone takes 8)"));
  }
  RETURN_IF_ERROR(file->Parse());
  return std::shared_ptr<const SafetensorsFile>(std::move(file));
}

absl::Status SafetensorsFile::Parse() {
  const uint64_t header_len = ReadLe64(base_);
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": header length ", header_len,
                     " exceeds the limit of ", kMaxSafetensorsHeaderBytes,
                     " bytes (corrupt or not a safetensors file)"));
  }
  if (header_len > size_ - 8) {
    return absl::DataLossError(
        absl::StrCat(path_, ": truncated: the header declares ", header_len,
                     " bytes but only ", size_ - 8, " follow the length"));
  }
  data_offset_ = 8 + header_len;
  const uint64_t data_size = size_ - data_offset_;
  const char* header = reinterpret_cast<const char*>(base_ + 8);
  const Json j = Json::parse(header, header + header_len, nullptr,
                             /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": header is not valid JSON"));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": header is not a JSON object"));
  }
  tensors_.clear();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const Json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path_, ": __metadata__ is not an object"));
      }
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path_, ": __metadata__ value for '", m.key(),
                           "' is not a string"));
        }
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": tensor '", name, "': ", what));
    };
    if (!v.is_object()) return bad("entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return bad("missing dtype");
    if (sh == v.end() || !sh->is_array()) return bad("missing shape");
    if (off == v.end() || !off->is_array() || off->size() != 2) {
      return bad("data_offsets is not a pair");
    }
    SafetensorsTensorInfo info;
    info.name = name;
    auto dtype = ParseSafetensorsDtype(dt->get<std::string>());
    if (!dtype.ok()) return bad(dtype.status().message());
    info.dtype = *dtype;
    for (const Json& d : *sh) {
      if (!d.is_number_unsigned())
        return bad("shape holds a non-natural number");
      info.shape.push_back(static_cast<int64_t>(
          std::min<uint64_t>(d.get<uint64_t>(), uint64_t{1} << 62)));
    }
    if (!(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
      return bad("data_offsets are not natural numbers");
    }
    info.begin = (*off)[0].get<uint64_t>();
    info.end = (*off)[1].get<uint64_t>();
    auto numel = Numel(info.shape);
    if (!numel.ok())
      return bad(absl::StrCat("shape ", ShapeString(info.shape), ": ",
                              numel.status().message()));
    if (info.begin > info.end) {
      return bad(absl::StrCat("data_offsets [", info.begin, ", ", info.end,
                              "] are reversed"));
    }
    const uint64_t expected =
        static_cast<uint64_t>(*numel) * SafetensorsDtypeSize(info.dtype);
    if (info.end - info.begin != expected) {
      return bad(absl::StrCat("holds ", info.end - info.begin, " bytes but ",
                              SafetensorsDtypeName(info.dtype), " ",
                              ShapeString(info.shape), " needs ", expected));
    }
    if (info.end > data_size) {
      return absl::DataLossError(
          absl::StrCat(path_, ": tensor '", name, "': data [", info.begin, ", ",
                       info.end, ") lies beyond the end of the data section (",
                       data_size, " bytes): file truncated?"));
    }
    tensors_.push_back(std::move(info));
  }
  std::sort(tensors_.begin(), tensors_.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  for (size_t i = 1; i < tensors_.size(); ++i) {
    if (tensors_[i].begin < tensors_[i - 1].end) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": tensors '", tensors_[i - 1].name, "' and '",
                       tensors_[i].name, "' overlap"));
    }
  }
  by_name_.clear();
  for (size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = i;
  return absl::OkStatus();
}

const SafetensorsTensorInfo* SafetensorsFile::Find(
    absl::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

absl::Span<const uint8_t> SafetensorsFile::Bytes(
    const SafetensorsTensorInfo& info) const {
  return absl::Span<const uint8_t>(base_ + data_offset_ + info.begin,
                                   info.nbytes());
}

absl::StatusOr<at::Tensor> SafetensorsFile::GetTensor(
    absl::string_view name) const {
  const SafetensorsTensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", name, "' not found in ", path_));
  }
  return Guarded(
      absl::StrCat(path_, ": tensor '", name, "'"),
      [&]() -> absl::StatusOr<at::Tensor> {
        const auto options = at::TensorOptions()
                                 .dtype(ToScalarType(info->dtype))
                                 .device(at::kCPU);
        const uint8_t* p = base_ + data_offset_ + info->begin;
        const int64_t itemsize = SafetensorsDtypeSize(info->dtype);
        if (info->nbytes() > 0 &&
            reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(itemsize) ==
                0) {
          std::shared_ptr<const SafetensorsFile> self = shared_from_this();
          return at::from_blob(
              const_cast<uint8_t*>(p), info->shape, [self](void*) {}, options);
        }
        at::Tensor t = at::empty(info->shape, options);
        if (info->nbytes() > 0) std::memcpy(t.data_ptr(), p, info->nbytes());
        return t;
      });
}

// ---------------------------------------------------------------------------
// Writer

absl::StatusOr<std::string> SerializeSafetensors(
    absl::Span<const SafetensorsEntry> entries,
    const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json m = Json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const SafetensorsEntry& e : entries) {
    if (e.name.empty() || e.name == "__metadata__" ||
        !names.insert(e.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid or duplicate tensor name '", e.name, "'"));
    }
    ASSIGN_OR_RETURN(int64_t numel, Numel(e.shape));
    const uint64_t nbytes =
        static_cast<uint64_t>(numel) * SafetensorsDtypeSize(e.dtype);
    if (nbytes != e.data.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", e.name, "': ", e.data.size(),
                       " bytes given, ", SafetensorsDtypeName(e.dtype), " ",
                       ShapeString(e.shape), " needs ", nbytes));
    }
    header[e.name] = {{"dtype", SafetensorsDtypeName(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  std::string out;
  out.reserve(8 + text.size() + offset);
  AppendLe64(out, text.size());
  out += text;
  for (const SafetensorsEntry& e : entries) {
    out.append(reinterpret_cast<const char*>(e.data.data()), e.data.size());
  }
  return out;
}

absl::Status WriteSafetensors(
    const std::string& path, absl::Span<const SafetensorsEntry> entries,
    const std::map<std::string, std::string>& metadata) {
  ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(entries, metadata));
  return WriteFileAtomically(path, bytes);
}

absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  return Guarded(absl::StrCat("writing ", path), [&]() -> absl::Status {
    std::vector<at::Tensor> cpu;
    std::vector<SafetensorsEntry> entries;
    cpu.reserve(tensors.size());
    for (const auto& [name, t] : tensors) {
      if (!t.defined()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", name, "' is undefined"));
      }
      ASSIGN_OR_RETURN(SafetensorsDtype dtype, FromScalarType(t.scalar_type()));
      cpu.push_back(t.detach().cpu().contiguous());
      const at::Tensor& c = cpu.back();
      entries.push_back(SafetensorsEntry{
          name, dtype, c.sizes().vec(),
          absl::Span<const uint8_t>(static_cast<const uint8_t*>(c.data_ptr()),
                                    c.nbytes())});
    }
    return WriteSafetensors(path, entries, metadata);
  });
}

// ---------------------------------------------------------------------------
// Checkpoints

absl::StatusOr<CheckpointReader> CheckpointReader::Open(
    const std::string& model_dir) {
  CheckpointReader reader;
  reader.model_dir_ = model_dir;
  const std::string index_path = model_dir + "/model.safetensors.index.json";
  const std::string single_path = model_dir + "/model.safetensors";
  if (IsRegularFile(index_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
    const Json j = Json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": not a JSON object"));
    }
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": missing 'weight_map' object"));
    }
    std::map<std::string, size_t> file_index;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": weight_map entry '", it.key(), "' is not a string"));
      }
      const std::string file = it.value().get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file == "." ||
          file == "..") {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": weight_map names an invalid file '", file, "'"));
      }
      auto [fit, inserted] = file_index.emplace(file, reader.files_.size());
      if (inserted) {
        ASSIGN_OR_RETURN(auto shard,
                         SafetensorsFile::Open(model_dir + "/" + file));
        reader.files_.push_back(std::move(shard));
      }
      if (reader.files_[fit->second]->Find(it.key()) == nullptr) {
        return absl::DataLossError(absl::StrCat(index_path, " maps tensor '",
                                                it.key(), "' to ", file,
                                                ", which does not contain it"));
      }
      reader.file_of_[it.key()] = fit->second;
    }
    return reader;
  }
  if (IsRegularFile(single_path)) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path));
    reader.files_.push_back(file);
    for (const SafetensorsTensorInfo& info : file->tensors()) {
      reader.file_of_[info.name] = 0;
    }
    return reader;
  }
  return absl::NotFoundError(
      absl::StrCat(model_dir, ": neither model.safetensors nor ",
                   "model.safetensors.index.json exists"));
}

bool CheckpointReader::Contains(absl::string_view name) const {
  return file_of_.find(name) != file_of_.end();
}

const SafetensorsTensorInfo* CheckpointReader::Info(
    absl::string_view name) const {
  auto it = file_of_.find(name);
  return it == file_of_.end() ? nullptr : files_[it->second]->Find(name);
}

absl::StatusOr<at::Tensor> CheckpointReader::Get(absl::string_view name) const {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "tensor '", name, "' not found in checkpoint ", model_dir_));
  }
  return files_[it->second]->GetTensor(name);
}

std::vector<std::string> CheckpointReader::Names() const {
  std::vector<std::string> names;
  names.reserve(file_of_.size());
  for (const auto& [name, index] : file_of_) names.push_back(name);
  return names;
}

absl::Status WriteCheckpointWeights(const std::string& model_dir,
                                    absl::Span<const SafetensorsEntry> entries,
                                    int num_shards) {
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (num_shards <= 1 || entries.size() <= 1) {
    return WriteSafetensors(model_dir + "/model.safetensors", entries,
                            metadata);
  }
  num_shards = std::min<int>(num_shards, static_cast<int>(entries.size()));
  uint64_t total = 0;
  for (const SafetensorsEntry& e : entries) total += e.data.size();
  // Greedy split in order: a shard closes once it reaches its share, always
  // leaving at least one entry for each remaining shard.
  std::vector<std::vector<SafetensorsEntry>> shards(num_shards);
  size_t next = 0;
  uint64_t done = 0;
  for (int s = 0; s < num_shards; ++s) {
    const uint64_t target = total * (s + 1) / num_shards;
    const size_t must_leave = static_cast<size_t>(num_shards - s - 1);
    while (next < entries.size() - must_leave &&
           (shards[s].empty() || done < target || s == num_shards - 1)) {
      done += entries[next].data.size();
      shards[s].push_back(entries[next++]);
    }
  }
  Json weight_map = Json::object();
  for (int s = 0; s < num_shards; ++s) {
    const std::string file =
        absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, num_shards);
    RETURN_IF_ERROR(
        WriteSafetensors(model_dir + "/" + file, shards[s], metadata));
    for (const SafetensorsEntry& e : shards[s]) weight_map[e.name] = file;
  }
  Json index = {{"metadata", {{"total_size", total}}},
                {"weight_map", weight_map}};
  return WriteFileAtomically(model_dir + "/model.safetensors.index.json",
                             index.dump(2) + "\n");
}

}  // namespace kvwire
