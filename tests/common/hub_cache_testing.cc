#include "tests/common/hub_cache_testing.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/file_util.h"
#include "common/model/model_fingerprint.h"
#include "common/status_macros.h"

namespace kvwire {
namespace test_util {

absl::Status StoreInHubCache(const std::string& dir, const std::string& cache,
                             const std::string& repo_id,
                             const std::string& subfolder,
                             const std::string& commit,
                             const std::string& revision) {
  namespace fs = std::filesystem;
  const fs::path repo =
      fs::path(cache) /
      absl::StrCat("models--", absl::StrReplaceAll(repo_id, {{"/", "--"}}));
  fs::path snapshot = repo / "snapshots" / commit;
  if (!subfolder.empty()) snapshot /= subfolder;
  std::error_code ec;
  fs::create_directories(repo / "blobs", ec);
  if (ec) return absl::UnavailableError(ec.message());
  fs::recursive_directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(it->path().string()));
    const std::string hash = Sha256Hex(bytes);
    const fs::path blob = repo / "blobs" / hash;
    if (!fs::exists(blob, ec)) {
      RETURN_IF_ERROR(WriteStringToFile(blob.string(), bytes));
    }
    const fs::path relative = it->path().lexically_relative(dir);
    const fs::path link = snapshot / relative;
    // From the link's folder back up to the repository, then into blobs/.
    const fs::path target =
        (repo / "blobs" / hash).lexically_relative(link.parent_path());
    fs::create_directories(link.parent_path(), ec);
    if (ec) return absl::UnavailableError(ec.message());
    fs::create_symlink(target, link, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("symlink ", link.string(), ": ", ec.message()));
    }
  }
  if (ec) return absl::UnavailableError(ec.message());
  fs::create_directories(repo / "refs" / fs::path(revision).parent_path(), ec);
  return WriteStringToFile((repo / "refs" / revision).string(), commit);
}

}  // namespace test_util
}  // namespace kvwire
