#include "common/hub_cache.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "glog/logging.h"

namespace kvwire {
namespace {

namespace fs = std::filesystem;

constexpr char kIdForm[] = "OWNER/NAME[/SUBFOLDER][@REVISION]";

// The variable's value; unset and empty are the same.
std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

std::string HomeDir() {
  std::string home = Env("HOME");
  if (!home.empty()) return home;
  // No HOME (a bare container, a service manager): the passwd entry, as
  // Python's os.path.expanduser does.
  if (const passwd* pw = ::getpwuid(::getuid());
      pw != nullptr && pw->pw_dir != nullptr) {
    return pw->pw_dir;
  }
  return "/";
}

std::string ExpandUser(std::string path) {
  if (path == "~" || absl::StartsWith(path, "~/")) {
    return HomeDir() + path.substr(1);
  }
  return path;
}

// A character a path component or a revision may never hold.
bool HasForbiddenChar(absl::string_view s) {
  for (const char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\') {
      return true;
    }
  }
  return false;
}

// OWNER or NAME as the Hub accepts them (huggingface_hub's
// validate_repo_id): [A-Za-z0-9_.-]+, starting and ending with a letter,
// digit or '_', without "--" or "..".
absl::Status CheckRepoPart(absl::string_view part, absl::string_view what) {
  if (part.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("empty ", what));
  }
  for (const char c : part) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' &&
        c != '-' && c != '.') {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", part,
                       "' may only hold letters, digits, '_', '-' and '.'"));
    }
  }
  const auto word = [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
  };
  if (!word(part.front()) || !word(part.back())) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " '", part, "' must start and end with a letter or a digit"));
  }
  if (absl::StrContains(part, "--") || absl::StrContains(part, "..")) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", part, "' may not hold \"--\" or \"..\""));
  }
  return absl::OkStatus();
}

// '/'-separated components, none empty, "." or "..".
absl::Status CheckRelativePath(absl::string_view path, absl::string_view what) {
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " '", path,
          "' must be a relative path without empty, '.' or '..' parts"));
    }
  }
  if (HasForbiddenChar(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " '", path, "' holds a control character or a backslash"));
  }
  return absl::OkStatus();
}

bool IsCommitSha(absl::string_view s) {
  if (s.size() != 40) return false;
  for (const char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool IsDirectory(const fs::path& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

bool Exists(const fs::path& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

// The names below `dir` (files under refs/ may be nested: refs/pr/1),
// sorted; at most `limit`.
std::vector<std::string> ListNames(const fs::path& dir, bool files,
                                   size_t limit = 12) {
  std::vector<std::string> names;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (files ? it->is_regular_file(ec) : it->is_directory(ec)) {
      names.push_back(it->path().lexically_relative(dir).generic_string());
    }
    if (!files) it.disable_recursion_pending();
  }
  std::sort(names.begin(), names.end());
  if (names.size() > limit) {
    names.resize(limit);
    names.push_back("...");
  }
  return names;
}

std::string CacheText(const HubCacheLocation& cache) {
  return absl::StrCat("the Hugging Face hub cache ", cache.dir, " (",
                      cache.source == "default"
                          ? std::string("the default: HF_HUB_CACHE, "
                                        "HF_HOME and XDG_CACHE_HOME are "
                                        "unset")
                          : absl::StrCat("from ", cache.source),
                      ")");
}

absl::Status NotInCache(const HubModelId& id, const HubCacheLocation& cache,
                        absl::string_view ref, absl::string_view what) {
  return absl::NotFoundError(absl::StrCat(
      "'", ref, "' is not a local directory, and as a Hugging Face id ", what,
      ". Fetch it with:\n  ", id.DownloadCommand(),
      "\n(hf writes to HF_HUB_CACHE, else HF_HOME/hub, else "
      "~/.cache/huggingface/hub: run it with the same variables as this "
      "process, or point HF_HUB_CACHE or HF_HOME at the cache that holds "
      "it)"));
}

}  // namespace

HubCacheLocation HubCacheDir() {
  for (const char* name : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}) {
    std::string value = Env(name);
    if (!value.empty()) return {ExpandUser(std::move(value)), name};
  }
  std::string value = Env("HF_HOME");
  if (!value.empty()) {
    return {(fs::path(ExpandUser(std::move(value))) / "hub").string(),
            "HF_HOME"};
  }
  value = Env("XDG_CACHE_HOME");
  if (!value.empty()) {
    return {(fs::path(ExpandUser(std::move(value))) / "huggingface" / "hub")
                .string(),
            "XDG_CACHE_HOME"};
  }
  return {(fs::path(HomeDir()) / ".cache" / "huggingface" / "hub").string(),
          "default"};
}

std::string HubModelId::repo_folder() const {
  return absl::StrCat("models--", owner, "--", name);
}

std::string HubModelId::DownloadCommand() const {
  std::string command = absl::StrCat("hf download ", repo_id());
  if (explicit_revision) absl::StrAppend(&command, " --revision ", revision);
  if (!subfolder.empty()) {
    absl::StrAppend(&command, " --include '", subfolder, "/*'");
  }
  return command;
}

absl::StatusOr<HubModelId> ParseHubModelId(absl::string_view ref) {
  const auto invalid = [ref](const absl::Status& why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", ref, "' is not a Hugging Face id ", kIdForm, ": ", why.message()));
  };
  HubModelId id;
  absl::string_view path = ref;
  if (const size_t at = ref.find('@'); at != absl::string_view::npos) {
    path = ref.substr(0, at);
    absl::string_view revision = ref.substr(at + 1);
    if (revision.empty()) {
      return invalid(absl::InvalidArgumentError("empty revision after '@'"));
    }
    if (absl::Status st = CheckRelativePath(revision, "revision"); !st.ok()) {
      return invalid(st);
    }
    id.revision = std::string(revision);
    id.explicit_revision = true;
  }
  if (HasForbiddenChar(path)) {
    return invalid(absl::InvalidArgumentError(
        "it holds a control character or a backslash"));
  }
  std::vector<absl::string_view> parts = absl::StrSplit(path, '/');
  if (parts.size() < 2) {
    return invalid(absl::InvalidArgumentError("no OWNER/NAME"));
  }
  if (absl::Status st = CheckRepoPart(parts[0], "owner"); !st.ok()) {
    return invalid(st);
  }
  if (absl::Status st = CheckRepoPart(parts[1], "name"); !st.ok()) {
    return invalid(st);
  }
  if (parts[0].size() + 1 + parts[1].size() > 96) {
    return invalid(
        absl::InvalidArgumentError("OWNER/NAME is longer than 96 characters"));
  }
  id.owner = std::string(parts[0]);
  id.name = std::string(parts[1]);
  if (parts.size() > 2) {
    id.subfolder = absl::StrJoin(parts.begin() + 2, parts.end(), "/");
    if (absl::Status st = CheckRelativePath(id.subfolder, "subfolder");
        !st.ok()) {
      return invalid(st);
    }
  }
  return id;
}

absl::StatusOr<ResolvedModelDir> ResolveModelDir(
    absl::string_view ref, const HubCacheLocation& cache) {
  if (ref.empty()) {
    return absl::InvalidArgumentError("empty model directory or id");
  }
  ResolvedModelDir out;
  out.path = std::string(ref);
  // Local paths first, unchanged: an existing one always wins, and one that
  // cannot be an id is left to the loader's own "no such file" error.
  if (Exists(out.path) || ref.front() == '/' || ref.front() == '.' ||
      ref.front() == '~' || !absl::StrContains(ref, '/')) {
    return out;
  }
  absl::StatusOr<HubModelId> parsed = ParseHubModelId(ref);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no local directory '", ref, "', and ", parsed.status().message()));
  }
  const HubModelId& id = *parsed;
  out.from_hub = true;
  out.id = id;
  out.cache_dir = cache.dir;

  const fs::path repo = fs::path(cache.dir) / id.repo_folder();
  if (!IsDirectory(repo)) {
    return NotInCache(id, cache, ref,
                      absl::StrCat(id.repo_id(), " is not in ",
                                   CacheText(cache), ": no ", repo.string()));
  }
  if (IsCommitSha(id.revision)) {
    out.commit = id.revision;
  } else {
    const fs::path ref_file = repo / "refs" / id.revision;
    absl::StatusOr<std::string> commit = ReadFileToString(ref_file.string());
    if (!commit.ok()) {
      std::vector<std::string> refs = ListNames(repo / "refs", true);
      return NotInCache(
          id, cache, ref,
          absl::StrCat(id.repo_id(), " has no revision '", id.revision, "' in ",
                       CacheText(cache), ": no ", ref_file.string(),
                       "; cached revisions: ",
                       refs.empty() ? "none" : absl::StrJoin(refs, ", ")));
    }
    out.commit = std::string(absl::StripAsciiWhitespace(*commit));
    if (!IsCommitSha(out.commit)) {
      return absl::DataLossError(absl::StrCat(
          ref_file.string(), " holds '", out.commit,
          "', not a 40-hex commit sha: the hub cache is damaged (delete the "
          "file and run ",
          id.DownloadCommand(), " again)"));
    }
  }
  const fs::path snapshot = repo / "snapshots" / out.commit;
  if (!IsDirectory(snapshot)) {
    std::vector<std::string> snapshots = ListNames(repo / "snapshots", false);
    return NotInCache(
        id, cache, ref,
        absl::StrCat(
            id.repo_id(), " revision '", id.revision, "' (commit ", out.commit,
            ") has no snapshot in ", CacheText(cache), ": no ",
            snapshot.string(), "; cached snapshots: ",
            snapshots.empty() ? "none" : absl::StrJoin(snapshots, ", ")));
  }
  fs::path dir = snapshot;
  if (!id.subfolder.empty()) {
    dir /= id.subfolder;
    if (!IsDirectory(dir)) {
      return NotInCache(id, cache, ref,
                        absl::StrCat(id.repo_id(), " revision '", id.revision,
                                     "' (commit ", out.commit, ") in ",
                                     CacheText(cache), " has no folder '",
                                     id.subfolder, "': no ", dir.string()));
    }
  }
  out.path = dir.string();
  return out;
}

absl::StatusOr<ResolvedModelDir> ResolveModelDir(absl::string_view ref) {
  return ResolveModelDir(ref, HubCacheDir());
}

absl::Status ResolveModelDirFlags(const std::vector<ModelDirFlag>& flags) {
  HubCacheLocation cache;
  bool have_cache = false;
  for (const ModelDirFlag& flag : flags) {
    if (flag.dir == nullptr || flag.dir->empty()) continue;
    if (!have_cache) {
      cache = HubCacheDir();
      have_cache = true;
    }
    absl::StatusOr<ResolvedModelDir> resolved =
        ResolveModelDir(*flag.dir, cache);
    if (!resolved.ok()) {
      return absl::Status(
          resolved.status().code(),
          absl::StrCat(flag.name, ": ", resolved.status().message()));
    }
    if (resolved->from_hub) {
      LOG(INFO) << flag.name << "=" << *flag.dir << ": Hugging Face "
                << resolved->id.repo_id()
                << (resolved->id.subfolder.empty() ? "" : " folder ")
                << resolved->id.subfolder << " revision "
                << resolved->id.revision << " (commit " << resolved->commit
                << ") from the hub cache " << cache.dir << " (" << cache.source
                << "): " << resolved->path;
    }
    *flag.dir = resolved->path;
  }
  return absl::OkStatus();
}

std::string ModelDirDisplayName(absl::string_view path) {
  std::vector<std::string> parts;
  for (const fs::path& part : fs::path(std::string(path)).lexically_normal()) {
    if (!part.empty() && part != "/") parts.push_back(part.string());
  }
  // .../models--OWNER--NAME/snapshots/<sha>[/SUBFOLDER...]
  for (size_t i = 0; i + 2 < parts.size(); ++i) {
    const std::string& folder = parts[i];
    if (!absl::StartsWith(folder, "models--") || parts[i + 1] != "snapshots") {
      continue;
    }
    std::vector<absl::string_view> owner_name = absl::StrSplit(
        absl::string_view(folder).substr(8), absl::MaxSplits("--", 1));
    if (owner_name.size() != 2 || owner_name[0].empty() ||
        owner_name[1].empty()) {
      continue;
    }
    std::string name = absl::StrCat(owner_name[0], "/", owner_name[1]);
    for (size_t j = i + 3; j < parts.size(); ++j) {
      absl::StrAppend(&name, "/", parts[j]);
    }
    return name;
  }
  return parts.empty() ? std::string(path) : parts.back();
}

}  // namespace kvwire
