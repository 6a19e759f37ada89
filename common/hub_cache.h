// Models by name: a model, fuser or tokenizer reference is either a local
// directory (used as is, as always) or a Hugging Face id
// OWNER/NAME[/SUBFOLDER...][@REVISION], resolved offline from the hub cache
// exactly as huggingface_hub lays it out:
//
//   <cache>/models--OWNER--NAME/refs/<revision>        the commit sha
//   <cache>/models--OWNER--NAME/snapshots/<sha>/...    symlinks into
//   <cache>/models--OWNER--NAME/blobs/<hash>           the file contents
//
// <cache>: HF_HUB_CACHE, else (legacy) HUGGINGFACE_HUB_CACHE, else
// HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
// ~/.cache/huggingface/hub (huggingface_hub's constants). Nothing here
// touches the network: a model absent from the cache is NOT_FOUND with the
// `hf download` command that fetches it. No Torch, no gRPC.
#ifndef KVWIRE_COMMON_HUB_CACHE_H_
#define KVWIRE_COMMON_HUB_CACHE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {

// The hub cache directory and the variable it came from ("HF_HUB_CACHE",
// "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME" or "default"). A
// leading ~ is expanded; empty variables count as unset.
struct HubCacheLocation {
  std::string dir;
  std::string source;
};
HubCacheLocation HubCacheDir();

// A parsed Hugging Face id.
struct HubModelId {
  std::string owner;
  std::string name;
  // Path inside the snapshot ("" for the repository's root), '/'-separated.
  std::string subfolder;
  // Branch, tag or full commit sha; "main" when the id names none.
  std::string revision = "main";
  bool explicit_revision = false;

  std::string repo_id() const { return owner + "/" + name; }
  // "models--OWNER--NAME".
  std::string repo_folder() const;
  // The command that fetches it: hf download OWNER/NAME [--revision REV]
  // [--include 'SUBFOLDER/*'].
  std::string DownloadCommand() const;
};

// Parses OWNER/NAME[/SUBFOLDER...][@REVISION] (the revision follows the
// first '@'). OWNER and NAME follow the Hub's rules (letters, digits, '_',
// '-', '.'; not starting or ending with '-' or '.'; no "--" or ".."; at most
// 96 characters together). INVALID_ARGUMENT for anything else: fewer than
// two components, empty components, "." or ".." components, an empty
// revision, control characters or backslashes.
absl::StatusOr<HubModelId> ParseHubModelId(absl::string_view ref);

// Where a model reference leads.
struct ResolvedModelDir {
  // The directory to load.
  std::string path;
  // False: `ref` was (or looks like) a local path, returned unchanged.
  bool from_hub = false;
  // For hub ids: the id, the commit its revision points to, the cache.
  HubModelId id;
  std::string commit;
  std::string cache_dir;
};

// Resolves `ref`:
//  - an existing path, or one that cannot be a hub id (absolute, starting
//    with '.' or '~', or without '/'), is returned unchanged: local paths
//    behave as they always have, and a local directory always wins over a
//    hub id of the same spelling;
//  - otherwise `ref` is a hub id looked up in `cache`: refs/<revision>
//    names the commit (a 40-hex sha is used directly), snapshots/<commit>
//    [/SUBFOLDER] is the directory.
// INVALID_ARGUMENT for an empty `ref` or a malformed id; NOT_FOUND when the
// repository, the revision, its snapshot or the subfolder is not in the
// cache, naming what was looked for and the `hf download` command that
// fetches it; DATA_LOSS for a refs/ file that holds no commit sha.
absl::StatusOr<ResolvedModelDir> ResolveModelDir(absl::string_view ref,
                                                 const HubCacheLocation& cache);
// The same in HubCacheDir().
absl::StatusOr<ResolvedModelDir> ResolveModelDir(absl::string_view ref);

// One flag naming a model, fuser or tokenizer directory, resolved in place.
struct ModelDirFlag {
  std::string name;  // How logs and errors name it, e.g. "--model_dir".
  std::string* dir;
};

// Resolves every non-empty *dir in place (ResolveModelDir against
// HubCacheDir()) and LOG(INFO)s each hub id's resolution. The first error
// is returned with its code and "<name>: " before its message.
absl::Status ResolveModelDirFlags(const std::vector<ModelDirFlag>& flags);

// A short name for a model directory: for a hub snapshot
// (.../models--OWNER--NAME/snapshots/<sha>[/SUBFOLDER]) "OWNER/NAME"
// [+ "/SUBFOLDER"], else the directory's base name.
std::string ModelDirDisplayName(absl::string_view path);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_HUB_CACHE_H_
