#include "tests/common/engine/test_assets.h"

#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/fuser/checkpoint.h"
#include "common/model/model_config.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tests/common/tokenizer/tokenizer_fixtures.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

namespace kvwire {
namespace {

using json = nlohmann::json;

absl::StatusOr<json> TemplateGoldens() {
  const std::string path =
      SourceDir() + "/tests/data/chat_template_goldens.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

// Bytes 0..255, then the special tokens from id 256, in the vocabulary too.
const std::vector<std::string> kSpecial = {"<|endoftext|>", "<|im_start|>",
                                           "<|im_end|>", "<think>", "</think>"};

json TokenizerJson() {
  ByteLevelBpeBuilder b;
  b.extra_tokens = kSpecial;
  for (size_t i = 0; i < kSpecial.size(); ++i) {
    const bool special = kSpecial[i][0] == '<' && kSpecial[i][1] == '|';
    b.AddToken(256 + i, kSpecial[i], special);
  }
  return b.Build();
}

}  // namespace

std::string SourceDir() {
  const char* env = std::getenv("KVWIRE_SOURCE_DIR");
  return env != nullptr ? env : KVWIRE_SOURCE_DIR_DEFAULT;
}

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", prefix, "-XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  const char* made = ::mkdtemp(buf.data());
  return made != nullptr ? std::string(made) : std::string();
}

absl::StatusOr<TinyPipelineAssets> MakeTinyPipeline(
    const std::string& root, const TinyPipelineOptions& options) {
  TinyPipelineAssets a;
  a.receiver_dir = root + "/receiver";
  a.sharer_dir = root + "/sharer";
  a.fuser_dir = root + "/fuser";
  a.im_start = 257;
  a.im_end = 258;
  constexpr int64_t kVocab = 320;

  TinyCheckpointOptions r;
  r.config = MakeModelConfig(ModelArch::kQwen3, kVocab, 32, 64,
                             options.receiver_layers, 4, 2, 16);
  r.config.eos_token_ids = {a.im_end};
  r.config.bos_token_id = 256;
  r.seed = options.seed;
  r.dtype = SafetensorsDtype::kF32;
  r.init_std = 0.2;
  RETURN_IF_ERROR(WriteRandomCheckpoint(a.receiver_dir, r));

  TinyCheckpointOptions s;
  s.config = MakeModelConfig(ModelArch::kQwen2, kVocab, 32, 64,
                             options.sharer_layers, 4, 2, 0);
  s.config.eos_token_ids = {a.im_end};
  s.config.bos_token_id = 256;
  s.seed = options.seed + 100;
  s.dtype = SafetensorsDtype::kF32;
  s.init_std = 0.2;
  RETURN_IF_ERROR(WriteRandomCheckpoint(a.sharer_dir, s));

  RandomFuserOptions f;
  f.args.source_num_heads = 2;
  f.args.source_dim = 8;
  f.args.target_num_heads = 2;
  f.args.target_dim = 16;
  f.args.hidden_dim = 16;
  f.args.intermediate_dim = 24;
  f.args.num_layers = 3;
  f.receiver_layers = options.receiver_layers;
  f.sharer_layers = options.sharer_layers;
  f.seed = options.seed + 200;
  f.open_gate_fraction = options.open_gate_fraction;
  f.dtype = at::kFloat;
  ASSIGN_OR_RETURN(FuserCheckpoint ckpt, MakeRandomFuserCheckpoint(f));
  RETURN_IF_ERROR(WriteFuserCheckpoint(a.fuser_dir, ckpt));

  ASSIGN_OR_RETURN(json goldens, TemplateGoldens());
  const json& t = goldens["templates"];
  RETURN_IF_ERROR(WriteStringToFile(a.receiver_dir + "/tokenizer.json",
                                    TokenizerJson().dump()));
  const json receiver_config = {{"chat_template", t["qwen3"]["chat_template"]},
                                {"eos_token", "<|im_end|>"},
                                {"pad_token", "<|endoftext|>"},
                                {"clean_up_tokenization_spaces", false}};
  RETURN_IF_ERROR(WriteStringToFile(a.receiver_dir + "/tokenizer_config.json",
                                    receiver_config.dump()));
  // The sharer: its own template only (the vocabulary is shared).
  const json sharer_config = {{"chat_template", t["qwen2_5"]["chat_template"]},
                              {"eos_token", "<|im_end|>"}};
  RETURN_IF_ERROR(WriteStringToFile(a.sharer_dir + "/tokenizer_config.json",
                                    sharer_config.dump()));
  return a;
}

}  // namespace kvwire
