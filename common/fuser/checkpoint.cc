#include "common/fuser/checkpoint.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/fuser/c2c_projector.h"
#include "common/model/safetensors.h"
#include "common/status_macros.h"

namespace kvwire {
namespace {

namespace fs = std::filesystem;

bool IsFile(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// Projector numbers with a file projector_<i>.<ext> in `dir`.
std::set<int> ProjectorNumbers(const std::string& dir, absl::string_view ext) {
  std::set<int> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    absl::string_view name;
    const std::string filename = it->path().filename().string();
    name = filename;
    if (!absl::ConsumePrefix(&name, "projector_")) continue;
    if (!absl::ConsumeSuffix(&name, absl::StrCat(".", ext))) continue;
    if (name.empty() || !absl::ascii_isdigit(name[0])) continue;
    int i = 0;
    if (absl::SimpleAtoi(name, &i) && i >= 0) out.insert(i);
  }
  return out;
}

absl::StatusOr<TensorList> ReadSafetensorsWeights(const std::string& path) {
  ASSIGN_OR_RETURN(std::shared_ptr<const SafetensorsFile> file,
                   SafetensorsFile::Open(path));
  TensorList out;
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    ASSIGN_OR_RETURN(at::Tensor t, file->GetTensor(info.name));
    out.emplace_back(info.name, std::move(t));
  }
  return out;
}

}  // namespace

absl::StatusOr<FuserWeightFormat> ParseFuserWeightFormat(
    absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "auto") return FuserWeightFormat::kAuto;
  if (n == "pt" || n == "torch") return FuserWeightFormat::kTorch;
  if (n == "safetensors" || n == "st") return FuserWeightFormat::kSafetensors;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown weight format \"", name, "\" (pt, safetensors or auto)"));
}

std::string FuserWeightsDir(const std::string& dir) {
  const std::string final_dir = (fs::path(dir) / "final").string();
  std::error_code ec;
  if (fs::is_directory(final_dir, ec)) return final_dir;
  return dir;
}

absl::StatusOr<FuserCheckpoint> ReadFuserCheckpoint(const std::string& dir,
                                                    FuserWeightFormat format) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("fuser checkpoint ", dir, " is not a directory"));
  }
  FuserCheckpoint ckpt;
  const std::string wdir = FuserWeightsDir(dir);

  // config.json sits beside final/ (or, for a bare folder, in it).
  for (const std::string& candidate :
       {(fs::path(dir) / "config.json").string(),
        (fs::path(wdir).parent_path() / "config.json").string()}) {
    if (!IsFile(candidate)) continue;
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(candidate));
    ASSIGN_OR_RETURN(FuserRecipe recipe, ParseFuserRecipe(text, candidate));
    ckpt.recipe = std::move(recipe);
    break;
  }

  std::set<int> pt = ProjectorNumbers(wdir, "pt");
  std::set<int> st = ProjectorNumbers(wdir, "safetensors");
  if (format == FuserWeightFormat::kAuto) {
    format = !pt.empty() ? FuserWeightFormat::kTorch
                         : FuserWeightFormat::kSafetensors;
  }
  ckpt.format = format;
  const std::set<int>& numbers = format == FuserWeightFormat::kTorch ? pt : st;
  const char* ext = format == FuserWeightFormat::kTorch ? "pt" : "safetensors";
  if (numbers.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no projector_<i>.", ext, " files in ", wdir));
  }
  const int n = *numbers.rbegin() + 1;
  for (int i = 0; i < n; ++i) {
    const std::string base =
        (fs::path(wdir) / ("projector_" + std::to_string(i))).string();
    const std::string json_path = base + ".json";
    const std::string weights_path = absl::StrCat(base, ".", ext);
    if (!numbers.count(i)) {
      return absl::NotFoundError(absl::StrCat("missing ", weights_path,
                                              " (projectors 0..", n - 1,
                                              " are expected)"));
    }
    if (!IsFile(json_path)) {
      return absl::NotFoundError(absl::StrCat("missing ", json_path));
    }
    ASSIGN_OR_RETURN(std::string json, ReadFileToString(json_path));
    ASSIGN_OR_RETURN(C2CProjectorArgs args,
                     ParseProjectorJson(json, json_path));
    ckpt.args.push_back(std::move(args));
    absl::StatusOr<TensorList> weights =
        format == FuserWeightFormat::kTorch
            ? ReadTorchStateDict(weights_path)
            : ReadSafetensorsWeights(weights_path);
    if (!weights.ok()) return weights.status();
    ckpt.weights.push_back(*std::move(weights));
  }

  const std::string map_path =
      (fs::path(wdir) / "projector_config.json").string();
  if (IsFile(map_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(map_path));
    ASSIGN_OR_RETURN(FuserLayerMap map,
                     ParseProjectorConfigJson(text, 0, map_path));
    absl::Status valid = ValidateFuserLayerMap(map, n);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(map_path, ": ", valid.message()));
    }
    ckpt.layer_map = std::move(map);
  }
  return ckpt;
}

absl::Status WriteFuserCheckpoint(const std::string& dir,
                                  const FuserCheckpoint& ckpt,
                                  FuserWeightFormat format) {
  if (ckpt.args.size() != ckpt.weights.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(ckpt.args.size(), " projector configs but ",
                     ckpt.weights.size(), " weight sets"));
  }
  if (format == FuserWeightFormat::kAuto) format = FuserWeightFormat::kTorch;
  const std::string wdir = (fs::path(dir) / "final").string();
  std::error_code ec;
  fs::create_directories(wdir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", wdir, ": ", ec.message()));
  }
  if (ckpt.recipe) {
    std::string text = ckpt.recipe->raw_json;
    if (text.empty()) {
      text = FuserRecipeJson(
          *ckpt.recipe, ckpt.args.empty() ? C2CProjectorArgs{} : ckpt.args[0]);
    }
    RETURN_IF_ERROR(
        WriteStringToFile((fs::path(dir) / "config.json").string(), text));
  }
  for (size_t i = 0; i < ckpt.args.size(); ++i) {
    const std::string base =
        (fs::path(wdir) / ("projector_" + std::to_string(i))).string();
    RETURN_IF_ERROR(
        WriteStringToFile(base + ".json", ProjectorJson(ckpt.args[i])));
    if (format == FuserWeightFormat::kTorch) {
      RETURN_IF_ERROR(WriteTorchStateDict(base + ".pt", ckpt.weights[i]));
    } else {
      std::vector<std::pair<std::string, at::Tensor>> tensors(
          ckpt.weights[i].begin(), ckpt.weights[i].end());
      RETURN_IF_ERROR(
          WriteSafetensors(base + ".safetensors", tensors, {{"format", "pt"}}));
    }
  }
  if (ckpt.layer_map) {
    RETURN_IF_ERROR(
        WriteStringToFile((fs::path(wdir) / "projector_config.json").string(),
                          ProjectorConfigJson(*ckpt.layer_map)));
  }
  return absl::OkStatus();
}

absl::StatusOr<FuserCheckpoint> MakeRandomFuserCheckpoint(
    const RandomFuserOptions& options) {
  ASSIGN_OR_RETURN(
      FuserLayerMap map,
      LastAlignedFuserLayerMap(options.receiver_layers, options.sharer_layers));
  FuserCheckpoint ckpt;
  ckpt.layer_map = map;
  FuserRecipe recipe;
  recipe.base_model = options.base_model;
  recipe.teacher_model = options.teacher_model;
  recipe.projector_type = "C2CProjector";
  recipe.mapping = "last_aligned";
  recipe.raw_json = FuserRecipeJson(recipe, options.args);
  ckpt.recipe = recipe;
  std::mt19937_64 rng(options.seed ^ 0x9e3779b97f4a7c15ull);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  auto gate = [&]() {
    return u01(rng) < options.open_gate_fraction ? 0.5 + 1.5 * u01(rng) : -1.0;
  };
  C2CProjectorArgs args = options.args;
  args.dtype = options.dtype == at::kBFloat16 ? "bfloat16"
               : options.dtype == at::kHalf   ? "float16"
                                              : "float32";
  for (int i = 0; i < options.receiver_layers; ++i) {
    C2CProjector::RandomOptions r;
    r.seed = options.seed + static_cast<uint64_t>(i);
    r.key_gate_logit = gate();
    r.value_gate_logit = gate();
    r.norm_jitter = options.norm_jitter;
    r.weight_scale = options.weight_scale;
    ProjectorOptions po;
    po.dtype = options.dtype;
    ASSIGN_OR_RETURN(C2CProjector p, C2CProjector::Random(args, r, po));
    ckpt.args.push_back(args);
    ckpt.weights.push_back(p.StateDict());
  }
  return ckpt;
}

}  // namespace kvwire
