// Shared helpers of the kvwire-eval tests.
#ifndef KVWIRE_TESTS_TOOLS_EVAL_TEST_UTIL_H_
#define KVWIRE_TESTS_TOOLS_EVAL_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace kvwire {
namespace eval {
namespace testing {

// The repository root (KVWIRE_SOURCE_DIR, else the configure-time path).
inline std::string RepoDir() {
  const char* env = std::getenv("KVWIRE_SOURCE_DIR");
  return env != nullptr ? env : KVWIRE_SOURCE_DIR_DEFAULT;
}

inline std::string FixturePath(const std::string& name) {
  return RepoDir() + "/tests/data/eval/" + name;
}

// A fresh directory under $TMPDIR (or /tmp).
inline std::string TempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr ? tmp : "/tmp") + "/" + prefix + "-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  const char* made = ::mkdtemp(buf.data());
  return made != nullptr ? std::string(made) : std::string();
}

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

}  // namespace testing
}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TESTS_TOOLS_EVAL_TEST_UTIL_H_
