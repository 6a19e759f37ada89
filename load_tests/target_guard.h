// Where kvwire-load may send traffic: by default loopback addresses, or
// addresses of network namespaces the caller names (the project's own test
// hosts, made by scripts/netns_link.sh; what CI uses). Anything else is
// refused before a single request is sent, unless the operator opts in
// explicitly (--allow_remote_target) to load a real deployment.
#ifndef KVWIRE_LOAD_TESTS_TARGET_GUARD_H_
#define KVWIRE_LOAD_TESTS_TARGET_GUARD_H_

#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvwire {
namespace load {

// The host names or IP literals of a gRPC target: "host:port",
// "dns:///host:port", "ipv4:a:p,b:p", "ipv6:[::1]:p,...", "[::1]:p".
// INVALID_ARGUMENT for other schemes (unix:, xds:, ...) or a missing port.
absl::StatusOr<std::vector<std::string>> TargetHosts(absl::string_view target);

// Every address `host` resolves to (numeric strings). UNAVAILABLE if it
// does not resolve.
absl::StatusOr<std::vector<std::string>> ResolveHost(const std::string& host);

// 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
bool IsLoopbackAddress(const std::string& address);

// The addresses configured inside the network namespace `name` (as
// `ip -n NAME -o addr show` lists them). NOT_FOUND if there is no such
// namespace under /run/netns; INVALID_ARGUMENT for a name with characters
// outside [A-Za-z0-9_.-].
absl::StatusOr<std::set<std::string>> NetnsAddresses(const std::string& name);

// OK if every address of `target` is loopback or configured in one of
// `allowed_netns`; PERMISSION_DENIED naming the first address that is not.
// Errors of TargetHosts, ResolveHost and NetnsAddresses pass through.
absl::Status CheckTarget(absl::string_view target,
                         const std::vector<std::string>& allowed_netns);

struct TargetPolicy {
  // Network namespaces whose addresses may be targeted besides loopback.
  std::vector<std::string> allowed_netns;
  // The explicit opt-in for real deployments: any host that resolves.
  bool allow_remote = false;
};

// CheckTarget under `policy`. With allow_remote the target must still parse
// and every host resolve (INVALID_ARGUMENT, UNAVAILABLE), so that a typo
// fails before the run rather than as a run of errors.
absl::Status CheckTargetAllowed(absl::string_view target,
                                const TargetPolicy& policy);

}  // namespace load
}  // namespace kvwire

#endif  // KVWIRE_LOAD_TESTS_TARGET_GUARD_H_
