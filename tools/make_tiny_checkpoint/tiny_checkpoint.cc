#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

// SplitMix64: a small, fully specified generator (std distributions are not
// reproducible across standard libraries).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t x = (state_ += 0x9e3779b97f4a7c15ULL);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
  }
  // Uniform in (0, 1).
  double Uniform() {
    return (static_cast<double>(Next() >> 11) + 0.5) *
           (1.0 / 9007199254740992.0);
  }
  double Normal() {  // Box-Muller.
    const double u1 = Uniform(), u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

 private:
  uint64_t state_;
};

absl::Status MakeDirs(const std::string& dir) {
  std::string path;
  for (size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || (dir[i] == '/' && i > 0)) {
      path = dir.substr(0, i);
      if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
        return absl::PermissionDeniedError(
            absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteRandomCheckpoint(const std::string& dir,
                                   const TinyCheckpointOptions& options) {
  const ModelConfig& config = options.config;
  RETURN_IF_ERROR(ValidateModelConfig(config));
  if (options.dtype != SafetensorsDtype::kBF16 &&
      options.dtype != SafetensorsDtype::kF16 &&
      options.dtype != SafetensorsDtype::kF32) {
    return absl::InvalidArgumentError(
        "checkpoint dtype must be BF16, F16 or F32");
  }
  RETURN_IF_ERROR(MakeDirs(dir));
  Rng rng(options.seed);
  const std::vector<WeightSpec> specs = ExpectedWeights(config);
  std::vector<std::vector<uint8_t>> buffers;
  buffers.reserve(specs.size());
  std::vector<SafetensorsEntry> entries;
  const int64_t itemsize = SafetensorsDtypeSize(options.dtype);
  for (const WeightSpec& spec : specs) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    std::vector<uint8_t> bytes(static_cast<size_t>(numel * itemsize));
    for (int64_t i = 0; i < numel; ++i) {
      float v = 0;
      switch (spec.kind) {
        case WeightSpec::Kind::kEmbedding:
        case WeightSpec::Kind::kLinear:
          v = static_cast<float>(options.init_std * rng.Normal());
          break;
        case WeightSpec::Kind::kBias:
          v = static_cast<float>(options.bias_std * rng.Normal());
          break;
        case WeightSpec::Kind::kNorm:
          v = static_cast<float>(1.0 + options.norm_std * rng.Normal());
          break;
      }
      uint8_t* dst = bytes.data() + i * itemsize;
      if (options.dtype == SafetensorsDtype::kBF16) {
        const c10::BFloat16 b(v);
        std::memcpy(dst, &b.x, 2);
      } else if (options.dtype == SafetensorsDtype::kF16) {
        const c10::Half h(v);
        std::memcpy(dst, &h.x, 2);
      } else {
        std::memcpy(dst, &v, 4);
      }
    }
    buffers.push_back(std::move(bytes));
    entries.push_back(
        SafetensorsEntry{spec.name, options.dtype, spec.shape,
                         absl::Span<const uint8_t>(buffers.back().data(),
                                                   buffers.back().size())});
  }
  ModelConfig written = config;
  written.torch_dtype = options.dtype == SafetensorsDtype::kBF16  ? "bfloat16"
                        : options.dtype == SafetensorsDtype::kF16 ? "float16"
                                                                  : "float32";
  RETURN_IF_ERROR(WriteText(dir + "/config.json", ModelConfigToJson(written)));
  RETURN_IF_ERROR(WriteText(dir + "/generation_config.json",
                            GenerationConfigToJson(written)));
  return WriteCheckpointWeights(dir, entries, options.num_shards);
}

}  // namespace kvwire
