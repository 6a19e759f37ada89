// kvwire-make-checkpoint's generator: the parallel fill writes the bytes of
// the serial SplitMix64 stream for any thread count (pinned against files
// the serial generator wrote), and --config copies a Hugging Face
// config.json byte for byte while the weights follow its shapes.
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/decoder.h"
#include "common/model/model_config.h"
#include "common/model/safetensors.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

std::string TempDir(const std::string& name) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/kvwire_tiny_",
                                       ::getpid(), "_", name);
  std::filesystem::remove_all(dir);
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

std::string SourceDir() {
  const char* env = std::getenv("KVWIRE_SOURCE_DIR");
  return env != nullptr ? env : KVWIRE_SOURCE_DIR_DEFAULT;
}

uint64_t Fnv1a64(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// kvwire-make-checkpoint's defaults for --arch=ARCH --vocab=V --hidden=64
// --layers=L (the flags these pins were written with).
ModelConfig FlagsConfig(ModelArch arch, int64_t vocab, int64_t layers) {
  ModelConfig c = MakeModelConfig(arch, vocab, 64, 128, layers, 4, 2, 0);
  c.max_position_embeddings = 32768;
  c.tie_word_embeddings = true;
  c.eos_token_ids = {vocab - 1};
  return c;
}

std::vector<uint16_t> Halves(const std::string& dir, const std::string& name) {
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return {};
  const SafetensorsTensorInfo* info = (*file)->Find(name);
  EXPECT_NE(info, nullptr) << name;
  if (info == nullptr) return {};
  absl::Span<const uint8_t> bytes = (*file)->Bytes(*info);
  std::vector<uint16_t> out(bytes.size() / 2);
  std::memcpy(out.data(), bytes.data(), out.size() * 2);
  return out;
}

// The serial generator's output (before the fill went parallel), so a
// change of the stream cannot go unnoticed: every committed config's
// weights (tools/gen_aligned_goldens.py) are regenerated from it.
TEST(TinyCheckpointTest, StreamIsPinnedToTheSerialGenerator) {
  TinyCheckpointOptions options;
  options.config = FlagsConfig(ModelArch::kQwen3, 512, 2);
  options.seed = 5;
  const std::string dir = TempDir("pinned_qwen3");
  ASSERT_TRUE(WriteRandomCheckpoint(dir, options).ok());
  const std::string bytes = ReadFile(dir + "/model.safetensors");
  EXPECT_EQ(bytes.size(), 216240u);
  EXPECT_EQ(Fnv1a64(bytes), 0x263bfa65bca0feb3ULL);
  const std::vector<uint16_t> embed = Halves(dir, "model.embed_tokens.weight");
  ASSERT_GE(embed.size(), 6u);
  EXPECT_EQ(
      std::vector<uint16_t>(embed.begin(), embed.begin() + 6),
      (std::vector<uint16_t>{0x39d1, 0x3ce3, 0xbcdb, 0xbb5f, 0xbcaa, 0x3c87}));
  const std::vector<uint16_t> norm = Halves(dir, "model.norm.weight");
  ASSERT_EQ(norm.size(), 64u);
  EXPECT_EQ(std::vector<uint16_t>(norm.end() - 3, norm.end()),
            (std::vector<uint16_t>{0x3f89, 0x3f70, 0x3f92}));

  // F16 and Gemma3's weight order (sandwich norms), 3 threads.
  options.config = FlagsConfig(ModelArch::kGemma3, 300, 3);
  options.seed = 9;
  options.dtype = SafetensorsDtype::kF16;
  options.threads = 3;
  const std::string gemma = TempDir("pinned_gemma3");
  ASSERT_TRUE(WriteRandomCheckpoint(gemma, options).ok());
  const std::string gemma_bytes = ReadFile(gemma + "/model.safetensors");
  EXPECT_EQ(gemma_bytes.size(), 265680u);
  EXPECT_EQ(Fnv1a64(gemma_bytes), 0x8be960bcf464af45ULL);
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(gemma);
}

TEST(TinyCheckpointTest, ThreadCountDoesNotChangeTheBytes) {
  // The second config's embedding (20000 x 64) spans two fill chunks, so
  // chunks start inside a tensor too.
  for (int64_t vocab : {int64_t{512}, int64_t{20000}}) {
    SCOPED_TRACE(vocab);
    TinyCheckpointOptions options;
    options.config = FlagsConfig(ModelArch::kQwen3, vocab, 2);
    options.config.tie_word_embeddings = false;
    options.seed = 5;
    std::string files[3];
    const int threads[3] = {1, 7, 0};
    for (int i = 0; i < 3; ++i) {
      options.threads = threads[i];
      const std::string dir =
          TempDir(absl::StrCat("threads_", vocab, "_", threads[i]));
      ASSERT_TRUE(WriteRandomCheckpoint(dir, options).ok());
      files[i] = ReadFile(dir + "/model.safetensors");
      std::filesystem::remove_all(dir);
    }
    EXPECT_GT(files[0].size(), 0u);
    EXPECT_TRUE(files[0] == files[1]) << "threads 1 vs 7";
    EXPECT_TRUE(files[0] == files[2]) << "threads 1 vs hardware";
  }
}

TEST(TinyCheckpointTest, RejectsNegativeThreads) {
  TinyCheckpointOptions options;
  options.config = FlagsConfig(ModelArch::kQwen3, 512, 2);
  options.threads = -1;
  EXPECT_EQ(WriteRandomCheckpoint(TempDir("bad_threads"), options).code(),
            absl::StatusCode::kInvalidArgument);
}

// Checks `out` against the config it was generated from: config.json (and
// generation_config.json when given) copied exactly, the tensors exactly
// ExpectedWeights, and the directory loads.
void ExpectCheckpointOfConfig(const std::string& config_dir,
                              const std::string& out, bool copied_generation) {
  EXPECT_EQ(ReadFile(out + "/config.json"),
            ReadFile(config_dir + "/config.json"));
  if (copied_generation) {
    EXPECT_EQ(ReadFile(out + "/generation_config.json"),
              ReadFile(config_dir + "/generation_config.json"));
  }
  auto config = LoadModelConfig(config_dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto reader = CheckpointReader::Open(out);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::vector<WeightSpec> specs = ExpectedWeights(*config);
  EXPECT_EQ(reader->Names().size(), specs.size());
  for (const WeightSpec& spec : specs) {
    const SafetensorsTensorInfo* info = reader->Info(spec.name);
    ASSERT_NE(info, nullptr) << spec.name;
    EXPECT_EQ(info->shape, spec.shape) << spec.name;
    EXPECT_EQ(info->dtype, SafetensorsDtype::kBF16) << spec.name;
  }
  auto decoder = Decoder::Load(out);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  EXPECT_EQ((*decoder)->config().num_hidden_layers, config->num_hidden_layers);
  EXPECT_EQ((*decoder)->config().arch, config->arch);
}

TEST(TinyCheckpointTest, ConfigFileWrittenByTransformersIsCopiedExactly) {
  // Both were written by transformers (tools/gen_model_goldens.py); the
  // Llama one is passed as the file, the Gemma one as its directory.
  for (const char* model : {"gemma3", "llama32"}) {
    SCOPED_TRACE(model);
    const std::string config_dir =
        absl::StrCat(SourceDir(), "/tests/data/models/", model);
    const std::string config_path = std::string(model) == "llama32"
                                        ? config_dir + "/config.json"
                                        : config_dir;
    const std::string out = TempDir(absl::StrCat("config_", model));
    TinyCheckpointOptions options;
    options.seed = 3;
    options.config.vocab_size = -1;  // Replaced by the file's config.
    ASSERT_TRUE(
        WriteRandomCheckpointForConfigFile(config_path, out, options).ok());
    ExpectCheckpointOfConfig(config_dir, out, /*copied_generation=*/true);

    // The same weights as WriteRandomCheckpoint for the parsed config.
    auto config = LoadModelConfig(config_dir);
    ASSERT_TRUE(config.ok()) << config.status();
    options.config = *config;
    const std::string direct = TempDir(absl::StrCat("direct_", model));
    ASSERT_TRUE(WriteRandomCheckpoint(direct, options).ok());
    EXPECT_TRUE(ReadFile(direct + "/model.safetensors") ==
                ReadFile(out + "/model.safetensors"));
    std::filesystem::remove_all(out);
    std::filesystem::remove_all(direct);
  }
}

TEST(TinyCheckpointTest, ConfigWithoutGenerationConfigWritesOne) {
  const std::string src =
      absl::StrCat(SourceDir(), "/tests/data/models/llama32");
  const std::string alone = TempDir("config_alone");
  std::filesystem::create_directories(alone);
  std::filesystem::copy_file(src + "/config.json", alone + "/config.json");
  const std::string out = TempDir("config_alone_out");
  ASSERT_TRUE(WriteRandomCheckpointForConfigFile(alone, out, {}).ok());
  ExpectCheckpointOfConfig(alone, out, /*copied_generation=*/false);
  auto config = LoadModelConfig(out);
  ASSERT_TRUE(config.ok()) << config.status();
  // Written from config.json's own eos_token_id.
  EXPECT_EQ(config->eos_token_ids, (std::vector<int64_t>{509, 511}));
  std::filesystem::remove_all(alone);
  std::filesystem::remove_all(out);
}

TEST(TinyCheckpointTest, MissingConfigIsNotFound) {
  EXPECT_EQ(WriteRandomCheckpointForConfigFile(TempDir("none"),
                                               TempDir("none_out"), {})
                .code(),
            absl::StatusCode::kNotFound);
}

// The binary's flags reach the library: --config with --threads and the
// stds gives the library's bytes, and --config excludes --preset.
TEST(MakeCheckpointToolTest, ConfigFlagMatchesTheLibrary) {
  const std::string config_dir =
      absl::StrCat(SourceDir(), "/tests/data/models/gemma3");
  const std::string out = TempDir("tool_config");
  const std::string cmd = absl::StrCat(
      KVWIRE_MAKE_CHECKPOINT, " --config=", config_dir, " --out=", out,
      " --seed=7 --init_std=0.2 --norm_std=0.05 --bias_std=0.01 --threads=3",
      " > /dev/null");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  TinyCheckpointOptions options;
  options.seed = 7;
  options.init_std = 0.2;
  options.norm_std = 0.05;
  options.bias_std = 0.01;
  const std::string lib = TempDir("tool_config_lib");
  ASSERT_TRUE(
      WriteRandomCheckpointForConfigFile(config_dir, lib, options).ok());
  EXPECT_TRUE(ReadFile(out + "/model.safetensors") ==
              ReadFile(lib + "/model.safetensors"));
  EXPECT_EQ(ReadFile(out + "/config.json"),
            ReadFile(config_dir + "/config.json"));

  const std::string both = absl::StrCat(
      KVWIRE_MAKE_CHECKPOINT, " --config=", config_dir,
      " --out=", TempDir("tool_both"), " --preset=qwen3-0.6b > /dev/null 2>&1");
  EXPECT_NE(std::system(both.c_str()), 0);
  std::filesystem::remove_all(out);
  std::filesystem::remove_all(lib);
}

}  // namespace
}  // namespace kvwire
