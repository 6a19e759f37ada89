// Fuzzes the safetensors reader (SafetensorsFile::FromBuffer): the header
// length, the JSON header (dtypes, shapes, offsets, __metadata__) and the
// data-section checks; for a file that validates, every tensor is
// materialized (GetTensor) and its bytes read, as the model loader does.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <string>

#include "common/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool init = [] {
    at::set_num_threads(1);
    return true;
  }();
  (void)init;
  auto file = kvwire::SafetensorsFile::FromBuffer(
      std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!file.ok()) return 0;
  for (const auto& info : (*file)->tensors()) {
    if ((*file)->Find(info.name) != &info) __builtin_trap();
    const auto bytes = (*file)->Bytes(info);
    if (bytes.size() != info.nbytes()) __builtin_trap();
    auto tensor = (*file)->GetTensor(info.name);
    if (!tensor.ok()) continue;
    if (tensor->numel() != info.numel()) __builtin_trap();
    // Touch every element (reads past a bad view would be caught by ASan).
    if (tensor->numel() > 0) (void)tensor->to(at::kDouble).sum().item<double>();
  }
  return 0;
}
