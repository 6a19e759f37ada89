// Test helper: stores a directory in a Hugging Face hub cache the way
// huggingface_hub stores a download, so that tests can name it by id.
#ifndef KVWIRE_TESTS_COMMON_HUB_CACHE_TESTING_H_
#define KVWIRE_TESTS_COMMON_HUB_CACHE_TESTING_H_

#include <string>

#include "absl/status/status.h"

namespace kvwire {
namespace test_util {

// Copies every file under `dir` (recursively) into
// <cache>/models--OWNER--NAME/blobs/<sha256 of its bytes> and links it from
// snapshots/<commit>/<subfolder>/<its path> by a relative symlink
// (../../blobs/..., one more ../ per folder); refs/<revision> holds
// `commit`. Blobs already present are kept (shared between revisions).
// `repo_id` is OWNER/NAME; `commit` 40 hex digits.
absl::Status StoreInHubCache(const std::string& dir, const std::string& cache,
                             const std::string& repo_id,
                             const std::string& subfolder = "",
                             const std::string& commit = std::string(40, 'c'),
                             const std::string& revision = "main");

}  // namespace test_util
}  // namespace kvwire

#endif  // KVWIRE_TESTS_COMMON_HUB_CACHE_TESTING_H_
