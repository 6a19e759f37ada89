// Fuzzes the .pt reader (ParseTorchStateDict): the zip container and the
// restricted unpickler behind it. Input: one flag byte, then
//   flag bit 0 clear: the bytes of a whole torch.save file;
//   flag bit 0 set:   the bytes of archive/data.pkl, which the harness wraps
//                     in a valid torch.save zip (byteorder "little" and
//                     storage records data/0 .. data/3 of 4 << (flag >> 1 & 7)
//                     bytes each), so that mutations reach the unpickler
//                     instead of dying on the zip's CRCs.
// Tensors of a file that parses are read in full (a view outside its
// storage would be caught by ASan).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <string>

#include "common/fuser/torch_pickle.h"

namespace {

std::string WrapPickle(const uint8_t* data, size_t size, size_t storage_bytes) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer(
      [&out](const void* buf, size_t n) -> size_t {
        out.append(static_cast<const char*>(buf), n);
        return n;
      });
  writer.writeRecord("data.pkl", data, size);
  writer.writeRecord("byteorder", "little", 6);
  std::string storage(storage_bytes, '\0');
  for (size_t i = 0; i < storage.size(); ++i) {
    storage[i] = static_cast<char>(i * 37 + 11);
  }
  for (int key = 0; key < 4; ++key) {
    writer.writeRecord("data/" + std::to_string(key), storage.data(),
                       storage.size());
  }
  writer.writeEndOfFile();
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool init = [] {
    at::set_num_threads(1);
    return true;
  }();
  (void)init;
  if (size < 1) return 0;
  const uint8_t flag = data[0];
  ++data;
  --size;
  std::string bytes;
  if (flag & 1) {
    bytes = WrapPickle(data, size, size_t{4} << ((flag >> 1) & 7));
  } else {
    bytes.assign(reinterpret_cast<const char*>(data), size);
  }
  auto tensors = kvwire::ParseTorchStateDict(bytes, "fuzz.pt");
  if (!tensors.ok()) return 0;
  for (const auto& [name, tensor] : *tensors) {
    if (!tensor.defined()) __builtin_trap();
    if (tensor.numel() > 0) (void)tensor.to(at::kDouble).sum().item<double>();
  }
  return 0;
}
