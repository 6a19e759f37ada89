#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

// SplitMix64: a small, fully specified generator (std distributions are not
// reproducible across standard libraries).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  // The generator that Rng(seed) becomes after `draws` calls to Next(): the
  // state is a counter (seed + n * increment, mod 2^64), so any position of
  // the stream is reachable in O(1) and threads can fill disjoint ranges.
  static Rng At(uint64_t seed, uint64_t draws) {
    return Rng(seed + draws * kIncrement);
  }
  uint64_t Next() {
    uint64_t x = (state_ += kIncrement);
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
  static constexpr uint64_t kIncrement = 0x9e3779b97f4a7c15ULL;
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

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// Fills every tensor of `specs` (buffers preallocated to numel * itemsize)
// with the serial stream's values: element g of the concatenation of all
// tensors, in `specs` order, is Normal() drawn from draws 2g+1 and 2g+2, so
// a chunk starting at element g starts from Rng::At(seed, 2g) and the bytes
// do not depend on how the work is split.
void FillRandom(const std::vector<WeightSpec>& specs,
                const TinyCheckpointOptions& options, int num_threads,
                std::vector<std::vector<uint8_t>>& buffers) {
  const int64_t itemsize = SafetensorsDtypeSize(options.dtype);
  struct Chunk {
    size_t spec;
    int64_t begin;  // Element range within the tensor.
    int64_t end;
    uint64_t first;  // Global element index of `begin`.
  };
  // Chunks of 1M elements: small enough to balance 16 threads over the
  // unequal tensors of a real model, large enough that scheduling is free.
  constexpr int64_t kChunk = int64_t{1} << 20;
  std::vector<Chunk> chunks;
  uint64_t global = 0;
  for (size_t s = 0; s < specs.size(); ++s) {
    const int64_t numel = static_cast<int64_t>(buffers[s].size()) / itemsize;
    for (int64_t b = 0; b < numel; b += kChunk) {
      chunks.push_back(Chunk{s, b, std::min(numel, b + kChunk),
                             global + static_cast<uint64_t>(b)});
    }
    global += static_cast<uint64_t>(numel);
  }
  auto fill = [&](const Chunk& chunk) {
    const WeightSpec& spec = specs[chunk.spec];
    Rng rng = Rng::At(options.seed, 2 * chunk.first);
    uint8_t* base = buffers[chunk.spec].data();
    for (int64_t i = chunk.begin; i < chunk.end; ++i) {
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
      uint8_t* dst = base + i * itemsize;
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
  };
  const int workers = static_cast<int>(
      std::min<size_t>(static_cast<size_t>(std::max(num_threads, 1)),
                       std::max<size_t>(chunks.size(), 1)));
  if (workers <= 1) {
    for (const Chunk& chunk : chunks) fill(chunk);
    return;
  }
  std::atomic<size_t> next{0};
  auto work = [&]() {
    for (size_t c = next.fetch_add(1); c < chunks.size();
         c = next.fetch_add(1)) {
      fill(chunks[c]);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(workers - 1));
  for (int t = 1; t < workers; ++t) threads.emplace_back(work);
  work();
  for (std::thread& thread : threads) thread.join();
}

// Generates the weights of options.config into `dir`, then writes
// config.json and generation_config.json: the given texts when non-null
// (byte-for-byte copies), else the config serialized with the stored dtype.
absl::Status WriteCheckpoint(const std::string& dir,
                             const TinyCheckpointOptions& options,
                             const std::string* config_json,
                             const std::string* generation_config_json) {
  const ModelConfig& config = options.config;
  RETURN_IF_ERROR(ValidateModelConfig(config));
  if (options.dtype != SafetensorsDtype::kBF16 &&
      options.dtype != SafetensorsDtype::kF16 &&
      options.dtype != SafetensorsDtype::kF32) {
    return absl::InvalidArgumentError(
        "checkpoint dtype must be BF16, F16 or F32");
  }
  if (options.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be >= 0, got ", options.threads));
  }
  RETURN_IF_ERROR(MakeDirs(dir));
  const std::vector<WeightSpec> specs = ExpectedWeights(config);
  const int64_t itemsize = SafetensorsDtypeSize(options.dtype);
  std::vector<std::vector<uint8_t>> buffers;
  buffers.reserve(specs.size());
  for (const WeightSpec& spec : specs) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    buffers.emplace_back(static_cast<size_t>(numel * itemsize));
  }
  int threads = options.threads;
  if (threads == 0) {
    threads = static_cast<int>(std::thread::hardware_concurrency());
  }
  FillRandom(specs, options, threads, buffers);
  std::vector<SafetensorsEntry> entries;
  entries.reserve(specs.size());
  for (size_t s = 0; s < specs.size(); ++s) {
    entries.push_back(SafetensorsEntry{
        specs[s].name, options.dtype, specs[s].shape,
        absl::Span<const uint8_t>(buffers[s].data(), buffers[s].size())});
  }
  ModelConfig written = config;
  written.torch_dtype = options.dtype == SafetensorsDtype::kBF16  ? "bfloat16"
                        : options.dtype == SafetensorsDtype::kF16 ? "float16"
                                                                  : "float32";
  RETURN_IF_ERROR(WriteText(
      dir + "/config.json",
      config_json != nullptr ? *config_json : ModelConfigToJson(written)));
  RETURN_IF_ERROR(WriteText(dir + "/generation_config.json",
                            generation_config_json != nullptr
                                ? *generation_config_json
                                : GenerationConfigToJson(written)));
  return WriteCheckpointWeights(dir, entries, options.num_shards);
}

}  // namespace

absl::Status WriteRandomCheckpoint(const std::string& dir,
                                   const TinyCheckpointOptions& options) {
  return WriteCheckpoint(dir, options, nullptr, nullptr);
}

absl::Status WriteRandomCheckpointForConfigFile(const std::string& config_path,
                                                const std::string& dir,
                                                TinyCheckpointOptions options) {
  std::string config_file = config_path;
  if (IsDirectory(config_path)) config_file = config_path + "/config.json";
  ASSIGN_OR_RETURN(const std::string config_json,
                   ReadFileToString(config_file));
  // generation_config.json next to the config, as in a model directory.
  const size_t slash = config_file.rfind('/');
  const std::string gen_file =
      (slash == std::string::npos ? std::string()
                                  : config_file.substr(0, slash + 1)) +
      "generation_config.json";
  std::optional<std::string> gen_json;
  if (IsRegularFile(gen_file)) {
    ASSIGN_OR_RETURN(gen_json, ReadFileToString(gen_file));
  }
  ASSIGN_OR_RETURN(
      options.config,
      ParseModelConfig(config_json, gen_json.value_or(""), config_file));
  return WriteCheckpoint(dir, options, &config_json,
                         gen_json.has_value() ? &*gen_json : nullptr);
}

}  // namespace kvwire
