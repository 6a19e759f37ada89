// Models by name (common/hub_cache.h) on a real hub cache tree built the way
// huggingface_hub writes it: content-addressed blobs/, snapshots/<sha>/ of
// relative symlinks into ../../blobs, refs/<revision> files, two revisions,
// a subfolder; and a generated checkpoint loaded through a hub id.
#include "common/hub_cache.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/model/decoder.h"
#include "common/model/model_config.h"
#include "common/model/model_fingerprint.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/hub_cache_testing.h"
#include "tools/make_tiny_checkpoint/tiny_checkpoint.h"

namespace kvwire {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kSha1[] = "1111111111111111111111111111111111111111";
constexpr char kSha2[] = "2222222222222222222222222222222222222222";
constexpr char kShaGone[] = "3333333333333333333333333333333333333333";

std::string MakeTempDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/hub-cache-test-XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  const char* made = ::mkdtemp(buf.data());
  return made != nullptr ? std::string(made) : std::string();
}

// Sets (or, with nullopt, unsets) environment variables for one scope.
class ScopedEnv {
 public:
  explicit ScopedEnv(
      std::initializer_list<std::pair<const char*, std::optional<std::string>>>
          vars) {
    for (const auto& [name, value] : vars) {
      const char* old = std::getenv(name);
      saved_.emplace_back(
          name, old == nullptr ? std::nullopt
                               : std::optional<std::string>(std::string(old)));
      Set(name, value);
    }
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      Set(it->first, it->second);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  static void Set(const std::string& name,
                  const std::optional<std::string>& value) {
    if (value.has_value()) {
      ::setenv(name.c_str(), value->c_str(), 1);
    } else {
      ::unsetenv(name.c_str());
    }
  }
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// Every variable that picks the cache, unset, plus HOME.
ScopedEnv CleanCacheEnv(const std::string& home) {
  return ScopedEnv({{"HF_HUB_CACHE", std::nullopt},
                    {"HUGGINGFACE_HUB_CACHE", std::nullopt},
                    {"HF_HOME", std::nullopt},
                    {"XDG_CACHE_HOME", std::nullopt},
                    {"HOME", home}});
}

// Writes one repository of a hub cache as huggingface_hub does.
class HubRepoWriter {
 public:
  HubRepoWriter(const std::string& cache, const std::string& owner,
                const std::string& name)
      : repo_(fs::path(cache) / absl::StrCat("models--", owner, "--", name)) {
    fs::create_directories(repo_ / "blobs");
  }

  // snapshots/<commit>/<path> -> ../../blobs/<hash of contents> (one more
  // ../ per folder of `path`), the blob written once.
  void AddFile(const std::string& commit, const std::string& path,
               const std::string& contents) {
    const std::string hash = ContentHash(contents);
    const fs::path blob = repo_ / "blobs" / hash;
    if (!fs::exists(blob)) {
      ASSERT_TRUE(WriteStringToFile(blob.string(), contents).ok());
    }
    const fs::path link = repo_ / "snapshots" / commit / path;
    fs::create_directories(link.parent_path());
    std::string target = "../../blobs/" + hash;
    for (const char c : path) {
      if (c == '/') target = "../" + target;  // One more per folder.
    }
    fs::create_symlink(target, link);
  }

  void SetRef(const std::string& revision, const std::string& commit) {
    const fs::path ref = repo_ / "refs" / revision;
    fs::create_directories(ref.parent_path());
    // huggingface_hub writes the sha without a newline.
    ASSERT_TRUE(WriteStringToFile(ref.string(), commit).ok());
  }

  const fs::path& repo() const { return repo_; }

 private:
  // huggingface_hub names an LFS file's blob by the SHA-256 of its bytes
  // (a small file's by its git blob sha1).
  static std::string ContentHash(const std::string& contents) {
    return Sha256Hex(contents);
  }

  fs::path repo_;
};

std::string Read(const std::string& path) {
  absl::StatusOr<std::string> s = ReadFileToString(path);
  return s.ok() ? *s : absl::StrCat("<", s.status().ToString(), ">");
}

class HubCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir();
    ASSERT_FALSE(root_.empty());
    cache_ = {root_ + "/hub", "HF_HUB_CACHE"};
    HubRepoWriter w(cache_.dir, "acme", "tiny-model");
    // v1 (kSha1): the model alone. main (kSha2): a new config, the same
    // weights (one blob, two links), and a fuser-like subfolder.
    w.AddFile(kSha1, "config.json", "{\"v\": 1}");
    w.AddFile(kSha1, "model.safetensors", "weights");
    w.AddFile(kSha2, "config.json", "{\"v\": 2}");
    w.AddFile(kSha2, "model.safetensors", "weights");
    w.AddFile(kSha2, "pair_fuser/config.json", "{\"fuser\": true}");
    w.AddFile(kSha2, "pair_fuser/final/projector_0.safetensors", "proj");
    w.SetRef("main", kSha2);
    w.SetRef("v1", kSha1);
    w.SetRef("refs/pr/1", kSha1);
    // A ref whose snapshot was deleted (hf cache delete of one revision).
    w.SetRef("gone", kShaGone);
    repo_ = w.repo().string();
  }

  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::string root_;
  HubCacheLocation cache_;
  std::string repo_;
};

TEST_F(HubCacheTest, TheTreeIsLaidOutAsHuggingFaceHubDoes) {
  const fs::path link = fs::path(repo_) / "snapshots" / kSha2 / "pair_fuser" /
                        "final" / "projector_0.safetensors";
  ASSERT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(fs::read_symlink(link).string(),
            "../../../../blobs/" + Sha256Hex("proj"));
  EXPECT_EQ(Read(link.string()), "proj");
  // The weights are stored once and linked from both snapshots.
  EXPECT_EQ(fs::canonical(fs::path(repo_) / "snapshots" / kSha1 /
                          "model.safetensors"),
            fs::canonical(fs::path(repo_) / "snapshots" / kSha2 /
                          "model.safetensors"));
}

TEST_F(HubCacheTest, DefaultRevisionIsMain) {
  absl::StatusOr<ResolvedModelDir> r =
      ResolveModelDir("acme/tiny-model", cache_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->from_hub);
  EXPECT_EQ(r->path, absl::StrCat(repo_, "/snapshots/", kSha2));
  EXPECT_EQ(r->commit, kSha2);
  EXPECT_EQ(r->id.repo_id(), "acme/tiny-model");
  EXPECT_EQ(r->id.revision, "main");
  EXPECT_FALSE(r->id.explicit_revision);
  EXPECT_EQ(r->cache_dir, cache_.dir);
  EXPECT_EQ(Read(r->path + "/config.json"), "{\"v\": 2}");
}

TEST_F(HubCacheTest, NamedRefs) {
  absl::StatusOr<ResolvedModelDir> v1 =
      ResolveModelDir("acme/tiny-model@v1", cache_);
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(v1->path, absl::StrCat(repo_, "/snapshots/", kSha1));
  EXPECT_EQ(v1->commit, kSha1);
  EXPECT_EQ(Read(v1->path + "/config.json"), "{\"v\": 1}");
  EXPECT_EQ(Read(v1->path + "/model.safetensors"), "weights");

  absl::StatusOr<ResolvedModelDir> main =
      ResolveModelDir("acme/tiny-model@main", cache_);
  ASSERT_TRUE(main.ok()) << main.status();
  EXPECT_EQ(main->commit, kSha2);

  // Pull-request refs live in refs/refs/pr/N.
  absl::StatusOr<ResolvedModelDir> pr =
      ResolveModelDir("acme/tiny-model@refs/pr/1", cache_);
  ASSERT_TRUE(pr.ok()) << pr.status();
  EXPECT_EQ(pr->commit, kSha1);
}

TEST_F(HubCacheTest, FullCommitShaIsASnapshotDirectly) {
  // No ref points to it by that name: the sha is the snapshot.
  absl::StatusOr<ResolvedModelDir> r =
      ResolveModelDir(absl::StrCat("acme/tiny-model@", kSha1), cache_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->path, absl::StrCat(repo_, "/snapshots/", kSha1));
  EXPECT_EQ(r->commit, kSha1);

  absl::StatusOr<ResolvedModelDir> gone =
      ResolveModelDir(absl::StrCat("acme/tiny-model@", kShaGone), cache_);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(gone.status().message(),
              HasSubstr(absl::StrCat("hf download acme/tiny-model --revision ",
                                     kShaGone)));
}

TEST_F(HubCacheTest, Subfolders) {
  absl::StatusOr<ResolvedModelDir> r =
      ResolveModelDir("acme/tiny-model/pair_fuser", cache_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->path, absl::StrCat(repo_, "/snapshots/", kSha2, "/pair_fuser"));
  EXPECT_EQ(r->id.subfolder, "pair_fuser");
  EXPECT_EQ(Read(r->path + "/config.json"), "{\"fuser\": true}");

  absl::StatusOr<ResolvedModelDir> nested =
      ResolveModelDir("acme/tiny-model/pair_fuser/final@main", cache_);
  ASSERT_TRUE(nested.ok()) << nested.status();
  EXPECT_EQ(Read(nested->path + "/projector_0.safetensors"), "proj");
}

TEST_F(HubCacheTest, CacheDirectoryFromTheEnvironment) {
  const std::string home = root_ + "/home";
  {
    ScopedEnv env = CleanCacheEnv(home);
    HubCacheLocation c = HubCacheDir();
    EXPECT_EQ(c.dir, home + "/.cache/huggingface/hub");
    EXPECT_EQ(c.source, "default");
  }
  {
    ScopedEnv env = CleanCacheEnv(home);
    ScopedEnv xdg({{"XDG_CACHE_HOME", root_ + "/xdg"}});
    EXPECT_EQ(HubCacheDir().dir, root_ + "/xdg/huggingface/hub");
    EXPECT_EQ(HubCacheDir().source, "XDG_CACHE_HOME");
  }
  {
    ScopedEnv env = CleanCacheEnv(home);
    ScopedEnv vars(
        {{"XDG_CACHE_HOME", root_ + "/xdg"}, {"HF_HOME", root_ + "/hf-home"}});
    EXPECT_EQ(HubCacheDir().dir, root_ + "/hf-home/hub");
    EXPECT_EQ(HubCacheDir().source, "HF_HOME");
  }
  {
    // HF_HUB_CACHE wins over HF_HOME; ~ is the home directory.
    ScopedEnv env = CleanCacheEnv(home);
    ScopedEnv vars(
        {{"HF_HOME", root_ + "/hf-home"}, {"HF_HUB_CACHE", "~/my-hub"}});
    EXPECT_EQ(HubCacheDir().dir, home + "/my-hub");
    EXPECT_EQ(HubCacheDir().source, "HF_HUB_CACHE");
  }
  {
    // The legacy name, below HF_HUB_CACHE and above HF_HOME; empty is unset.
    ScopedEnv env = CleanCacheEnv(home);
    ScopedEnv vars({{"HF_HOME", root_ + "/hf-home"},
                    {"HUGGINGFACE_HUB_CACHE", root_ + "/legacy"},
                    {"HF_HUB_CACHE", ""}});
    EXPECT_EQ(HubCacheDir().dir, root_ + "/legacy");
  }
}

TEST_F(HubCacheTest, ResolvesInTheCacheTheEnvironmentNames) {
  // The repository is in <root>/hub: HF_HOME=<root> finds it...
  {
    ScopedEnv env = CleanCacheEnv(root_ + "/home");
    ScopedEnv vars({{"HF_HOME", root_}});
    absl::StatusOr<ResolvedModelDir> r = ResolveModelDir("acme/tiny-model");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->path, absl::StrCat(repo_, "/snapshots/", kSha2));
  }
  // ...and HF_HUB_CACHE, which takes precedence, hides it.
  {
    ScopedEnv env = CleanCacheEnv(root_ + "/home");
    ScopedEnv vars(
        {{"HF_HOME", root_}, {"HF_HUB_CACHE", root_ + "/elsewhere"}});
    absl::StatusOr<ResolvedModelDir> r = ResolveModelDir("acme/tiny-model");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(
        r.status().message(),
        AllOf(HasSubstr(root_ + "/elsewhere"), HasSubstr("from HF_HUB_CACHE"),
              HasSubstr("hf download acme/tiny-model")));
  }
}

TEST_F(HubCacheTest, LocalPathsAreUsedAsTheyAre) {
  // A local directory spelled like the id wins over the cache.
  const std::string cwd = fs::current_path().string();
  fs::create_directories(root_ + "/work/acme/tiny-model");
  ASSERT_EQ(::chdir((root_ + "/work").c_str()), 0);
  absl::StatusOr<ResolvedModelDir> local =
      ResolveModelDir("acme/tiny-model", cache_);
  absl::StatusOr<ResolvedModelDir> local_file =
      ResolveModelDir("acme/tiny-model@v1", cache_);
  ASSERT_EQ(::chdir(cwd.c_str()), 0);
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_FALSE(local->from_hub);
  EXPECT_EQ(local->path, "acme/tiny-model");
  // (No such local path: the hub.)
  ASSERT_TRUE(local_file.ok()) << local_file.status();
  EXPECT_TRUE(local_file->from_hub);

  // Existing and missing absolute paths, ./ and ../ paths, single names and
  // ~ are never ids: unchanged, for the loader to read or to report.
  for (const std::string& path :
       {root_ + "/work", root_ + "/no/such/dir", std::string("./acme/x"),
        std::string("../acme/x"), std::string("tiny"), std::string("tiny@main"),
        std::string("~/models/x")}) {
    absl::StatusOr<ResolvedModelDir> r = ResolveModelDir(path, cache_);
    ASSERT_TRUE(r.ok()) << path << ": " << r.status();
    EXPECT_FALSE(r->from_hub) << path;
    EXPECT_EQ(r->path, path);
  }
}

TEST_F(HubCacheTest, MissingRepositoryNamesTheDownload) {
  absl::StatusOr<ResolvedModelDir> r = ResolveModelDir("acme/absent", cache_);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  EXPECT_THAT(
      r.status().message(),
      AllOf(HasSubstr("acme/absent"), HasSubstr(cache_.dir),
            HasSubstr("models--acme--absent"),
            HasSubstr("hf download acme/absent\n"), HasSubstr("HF_HUB_CACHE"),
            HasSubstr("HF_HOME"), Not(HasSubstr("huggingface-cli"))));
}

TEST_F(HubCacheTest, MissingRevisionNamesTheDownload) {
  absl::StatusOr<ResolvedModelDir> r =
      ResolveModelDir("acme/tiny-model@v9", cache_);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  EXPECT_THAT(r.status().message(),
              AllOf(HasSubstr("revision 'v9'"), HasSubstr("refs/v9"),
                    HasSubstr("cached revisions: gone, main, refs/pr/1, v1"),
                    HasSubstr("hf download acme/tiny-model --revision v9"),
                    Not(HasSubstr("huggingface-cli"))));

  // A ref whose snapshot is gone.
  absl::StatusOr<ResolvedModelDir> gone =
      ResolveModelDir("acme/tiny-model@gone", cache_);
  ASSERT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << gone.status();
  EXPECT_THAT(gone.status().message(),
              AllOf(HasSubstr(kShaGone), HasSubstr(kSha1), HasSubstr(kSha2),
                    HasSubstr("hf download acme/tiny-model --revision gone")));
}

TEST_F(HubCacheTest, MissingSubfolderNamesTheDownload) {
  absl::StatusOr<ResolvedModelDir> r =
      ResolveModelDir("acme/tiny-model/other_fuser", cache_);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  EXPECT_THAT(r.status().message(),
              AllOf(HasSubstr("no folder 'other_fuser'"),
                    HasSubstr("hf download acme/tiny-model --include "
                              "'other_fuser/*'")));

  // The subfolder exists at main, not at v1.
  absl::StatusOr<ResolvedModelDir> v1 =
      ResolveModelDir("acme/tiny-model/pair_fuser@v1", cache_);
  ASSERT_EQ(v1.status().code(), absl::StatusCode::kNotFound) << v1.status();
  EXPECT_THAT(v1.status().message(),
              HasSubstr("hf download acme/tiny-model --revision v1 --include "
                        "'pair_fuser/*'"));
}

TEST_F(HubCacheTest, MalformedIdsAreInvalidArguments) {
  for (const char* id :
       {"acme//tiny-model", "acme/tiny-model/", "acme/tiny-model@",
        "acme/tiny-model/../x", "acme/tiny-model/./x", "acme/../tiny-model",
        "acme/tiny-model@v1/../main", "acme/tiny-model@v1//x", "-acme/tiny",
        "acme/tiny.", "ac--me/tiny", "acme/ti..ny", "acme/tiny model",
        "acme/tiny\\model", "acme/tiny\nmodel", "@/x"}) {
    absl::StatusOr<ResolvedModelDir> r = ResolveModelDir(id, cache_);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
        << id << ": " << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr("OWNER/NAME")) << id;
  }
  EXPECT_EQ(ResolveModelDir("", cache_).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::string too_long = "acme/" + std::string(95, 'x');
  EXPECT_EQ(ParseHubModelId(too_long).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HubModelIdTest, Parses) {
  absl::StatusOr<HubModelId> id =
      ParseHubModelId("nics-efc/C2C_Fuser/qwen3_0.6b+qwen2.5_0.5b_Fuser@v1.0");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->owner, "nics-efc");
  EXPECT_EQ(id->name, "C2C_Fuser");
  EXPECT_EQ(id->subfolder, "qwen3_0.6b+qwen2.5_0.5b_Fuser");
  EXPECT_EQ(id->revision, "v1.0");
  EXPECT_TRUE(id->explicit_revision);
  EXPECT_EQ(id->repo_folder(), "models--nics-efc--C2C_Fuser");
  EXPECT_EQ(id->DownloadCommand(),
            "hf download nics-efc/C2C_Fuser --revision v1.0 --include "
            "'qwen3_0.6b+qwen2.5_0.5b_Fuser/*'");

  absl::StatusOr<HubModelId> plain = ParseHubModelId("Qwen/Qwen3-0.6B");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->revision, "main");
  EXPECT_FALSE(plain->explicit_revision);
  EXPECT_EQ(plain->subfolder, "");
  EXPECT_EQ(plain->DownloadCommand(), "hf download Qwen/Qwen3-0.6B");
}

TEST_F(HubCacheTest, FlagsAreResolvedInPlace) {
  ScopedEnv env = CleanCacheEnv(root_ + "/home");
  ScopedEnv vars({{"HF_HUB_CACHE", cache_.dir}});
  std::string model = "acme/tiny-model@v1";
  std::string fuser = "acme/tiny-model/pair_fuser";
  std::string tokenizer;  // Unset: left alone.
  std::string local = root_;
  ASSERT_TRUE(ResolveModelDirFlags({{"--model_dir", &model},
                                    {"--fuser_dir", &fuser},
                                    {"--tokenizer_dir", &tokenizer},
                                    {"--sharer_dir", &local}})
                  .ok());
  EXPECT_EQ(model, absl::StrCat(repo_, "/snapshots/", kSha1));
  EXPECT_EQ(fuser, absl::StrCat(repo_, "/snapshots/", kSha2, "/pair_fuser"));
  EXPECT_EQ(tokenizer, "");
  EXPECT_EQ(local, root_);

  std::string missing = "acme/tiny-model/nope";
  absl::Status st = ResolveModelDirFlags({{"--fuser_dir", &missing}});
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StartsWith(st.message(), "--fuser_dir: ")) << st;
  EXPECT_EQ(missing, "acme/tiny-model/nope");
}

TEST(ModelDirDisplayNameTest, NamesSnapshotsByTheirId) {
  EXPECT_EQ(ModelDirDisplayName(absl::StrCat(
                "/c/hub/models--Qwen--Qwen3-0.6B/snapshots/", kSha1)),
            "Qwen/Qwen3-0.6B");
  EXPECT_EQ(ModelDirDisplayName(
                absl::StrCat("/c/hub/models--nics-efc--C2C_Fuser/snapshots/",
                             kSha1, "/pair_fuser/")),
            "nics-efc/C2C_Fuser/pair_fuser");
  EXPECT_EQ(ModelDirDisplayName("/models/Qwen3-0.6B/"), "Qwen3-0.6B");
  EXPECT_EQ(ModelDirDisplayName("tiny"), "tiny");
}

// A generated checkpoint, stored as huggingface_hub stores a download, loads
// through its id.
TEST_F(HubCacheTest, GeneratedCheckpointLoadsThroughItsId) {
  const std::string staging = root_ + "/staging";
  TinyCheckpointOptions options;
  options.config =
      MakeModelConfig(ModelArch::kQwen3, /*vocab_size=*/64, /*hidden_size=*/32,
                      /*intermediate_size=*/64, /*num_layers=*/2,
                      /*num_heads=*/4, /*num_kv_heads=*/2, /*head_dim=*/16);
  options.config.eos_token_ids = {1};
  options.config.bos_token_id = 0;
  options.dtype = SafetensorsDtype::kF32;
  options.num_shards = 2;
  options.threads = 1;
  ASSERT_TRUE(WriteRandomCheckpoint(staging, options).ok());

  const std::string cache = root_ + "/load-cache";
  ASSERT_TRUE(test_util::StoreInHubCache(staging, cache, "tiny-org/tiny-qwen3",
                                         /*subfolder=*/"", kSha2)
                  .ok());
  int files = 0;
  for (const fs::directory_entry& e : fs::directory_iterator(
           absl::StrCat(cache, "/models--tiny-org--tiny-qwen3/blobs"))) {
    EXPECT_TRUE(e.is_regular_file()) << e.path();
    ++files;
  }
  ASSERT_GE(files, 4);  // config, generation config, 2 shards, index.

  ScopedEnv env = CleanCacheEnv(root_ + "/home");
  ScopedEnv vars({{"HF_HUB_CACHE", cache}});
  std::string model_dir = "tiny-org/tiny-qwen3";
  ASSERT_TRUE(ResolveModelDirFlags({{"--model_dir", &model_dir}}).ok());
  for (const fs::directory_entry& e : fs::directory_iterator(model_dir)) {
    EXPECT_TRUE(e.is_symlink()) << e.path();
  }
  absl::StatusOr<std::unique_ptr<Decoder>> decoder = Decoder::Load(model_dir);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  EXPECT_EQ((*decoder)->config().num_hidden_layers, 2);
  EXPECT_EQ(ModelDirDisplayName(model_dir), "tiny-org/tiny-qwen3");

  // The same checkpoint as the local directory it came from.
  absl::StatusOr<std::string> hub_fingerprint =
      CheckpointFingerprint(model_dir);
  absl::StatusOr<std::string> local_fingerprint =
      CheckpointFingerprint(staging);
  ASSERT_TRUE(hub_fingerprint.ok()) << hub_fingerprint.status();
  ASSERT_TRUE(local_fingerprint.ok()) << local_fingerprint.status();
  EXPECT_EQ(*hub_fingerprint, *local_fingerprint);
}

}  // namespace
}  // namespace kvwire
