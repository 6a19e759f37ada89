// Module-edge conversion of Torch exceptions into absl::Status: LibTorch
// reports errors by throwing c10::Error, which must never escape kvwire's
// public functions. Header-only; included only by translation units that
// use LibTorch (it pulls in c10's exception header).
#ifndef KVWIRE_COMMON_TORCH_GUARD_H_
#define KVWIRE_COMMON_TORCH_GUARD_H_

#include <c10/util/Exception.h>

#include <exception>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvwire {

// Runs `f` (returning absl::Status or absl::StatusOr<T>), turning an
// escaping c10::Error or std::exception into a `code` status "what:
// message" (c10's message without its backtrace). For failures whose cause
// is the input rather than kvwire, e.g. DATA_LOSS for a corrupt file.
template <typename F>
auto GuardedAs(absl::StatusCode code, absl::string_view what, F&& f)
    -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::Status(code,
                        absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::Status(code, absl::StrCat(what, ": ", e.what()));
  }
}

// GuardedAs with INTERNAL: an exception out of LibTorch is a kvwire bug or
// an environment failure (out of memory), not a caller error.
template <typename F>
auto Guarded(absl::string_view what, F&& f) -> decltype(f()) {
  return GuardedAs(absl::StatusCode::kInternal, what, std::forward<F>(f));
}

}  // namespace kvwire

#endif  // KVWIRE_COMMON_TORCH_GUARD_H_
