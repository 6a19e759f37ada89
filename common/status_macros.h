// Early-return helpers for absl::Status / absl::StatusOr, which abseil does
// not ship publicly.
#ifndef KVWIRE_COMMON_STATUS_MACROS_H_
#define KVWIRE_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVWIRE_CONCAT_INNER_(a, b) a##b
#define KVWIRE_CONCAT_(a, b) KVWIRE_CONCAT_INNER_(a, b)

// Returns `expr` from the enclosing function if it is not OK.
#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    const ::absl::Status kvwire_status_ = (expr);    \
    if (!kvwire_status_.ok()) return kvwire_status_; \
  } while (false)

// `ASSIGN_OR_RETURN(auto x, Foo());` declares x from a StatusOr or returns
// its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(KVWIRE_CONCAT_(kvwire_statusor_, __LINE__), lhs, expr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                           \
  if (!statusor.ok()) return statusor.status();     \
  lhs = std::move(statusor).value()

#endif  // KVWIRE_COMMON_STATUS_MACROS_H_
