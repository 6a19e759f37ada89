#include "load_tests/target_guard.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdio>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kvwire {
namespace load {
namespace {

// "host:port" or "[v6]:port" -> host. INVALID_ARGUMENT without a port.
absl::StatusOr<std::string> HostOf(absl::string_view hostport) {
  if (absl::StartsWith(hostport, "[")) {
    const size_t close = hostport.find(']');
    if (close == absl::string_view::npos || close + 1 >= hostport.size() ||
        hostport[close + 1] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("bad address '", hostport, "' (want [v6]:port)"));
    }
    return std::string(hostport.substr(1, close - 1));
  }
  const size_t colon = hostport.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 ||
      colon + 1 == hostport.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad address '", hostport, "' (want host:port)"));
  }
  int port = 0;
  if (!absl::SimpleAtoi(hostport.substr(colon + 1), &port) || port <= 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad port in '", hostport, "'"));
  }
  return std::string(hostport.substr(0, colon));
}

bool ValidNetnsName(const std::string& name) {
  if (name.empty() || name.size() > 64 || name == "." || name == "..") {
    return false;
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' &&
        c != '.' && c != '-') {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> TargetHosts(absl::string_view target) {
  std::vector<std::string> hosts;
  absl::string_view rest = target;
  if (absl::ConsumePrefix(&rest, "ipv4:") ||
      absl::ConsumePrefix(&rest, "ipv6:")) {
    for (absl::string_view part : absl::StrSplit(rest, ',')) {
      auto host = HostOf(part);
      if (!host.ok()) return host.status();
      hosts.push_back(*host);
    }
    return hosts;
  }
  if (absl::ConsumePrefix(&rest, "dns:")) {
    // dns:host:port or dns:///host:port or dns://authority/host:port.
    if (absl::ConsumePrefix(&rest, "//")) {
      const size_t slash = rest.find('/');
      if (slash == absl::string_view::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad dns target '", target, "'"));
      }
      rest = rest.substr(slash + 1);
    }
  } else if (absl::StrContains(rest, "://") || absl::StartsWith(rest, "unix") ||
             absl::StartsWith(rest, "xds:") ||
             absl::StartsWith(rest, "vsock:")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported target '", target,
        "' (host:port, dns:///host:port, ipv4:a:p,b:p or ipv6:[a]:p)"));
  }
  auto host = HostOf(rest);
  if (!host.ok()) return host.status();
  hosts.push_back(*host);
  return hosts;
}

absl::StatusOr<std::vector<std::string>> ResolveHost(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &result);
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  std::vector<std::string> out;
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {0};
    if (ai->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr,
                buf, sizeof(buf));
    } else if (ai->ai_family == AF_INET6) {
      inet_ntop(AF_INET6,
                &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr, buf,
                sizeof(buf));
    } else {
      continue;
    }
    out.emplace_back(buf);
  }
  freeaddrinfo(result);
  if (out.empty()) {
    return absl::UnavailableError(absl::StrCat("'", host, "' has no address"));
  }
  return out;
}

bool IsLoopbackAddress(const std::string& address) {
  in_addr v4{};
  if (inet_pton(AF_INET, address.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, address.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    if (IN6_IS_ADDR_V4MAPPED(&v6)) return v6.s6_addr[12] == 127;
  }
  return false;
}

absl::StatusOr<std::set<std::string>> NetnsAddresses(const std::string& name) {
  if (!ValidNetnsName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad network namespace name '", name, "'"));
  }
  struct stat st {};
  if (stat(absl::StrCat("/run/netns/", name).c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat("no network namespace '", name, "' in /run/netns"));
  }
  const std::string command =
      absl::StrCat("ip -n ", name, " -o addr show 2>/dev/null");
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"),
                                             pclose);
  if (pipe == nullptr) {
    return absl::UnavailableError("cannot run 'ip' to list addresses");
  }
  std::string output;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe.get())) > 0)
    output.append(buf, n);
  std::set<std::string> addresses;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    std::vector<absl::string_view> words =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    for (size_t i = 0; i + 1 < words.size(); ++i) {
      if (words[i] == "inet" || words[i] == "inet6") {
        absl::string_view cidr = words[i + 1];
        addresses.emplace(cidr.substr(0, cidr.find('/')));
      }
    }
  }
  return addresses;
}

absl::Status CheckTarget(absl::string_view target,
                         const std::vector<std::string>& allowed_netns) {
  auto hosts = TargetHosts(target);
  if (!hosts.ok()) return hosts.status();
  std::set<std::string> netns_addresses;
  for (const std::string& ns : allowed_netns) {
    auto addresses = NetnsAddresses(ns);
    if (!addresses.ok()) return addresses.status();
    netns_addresses.insert(addresses->begin(), addresses->end());
  }
  for (const std::string& host : *hosts) {
    auto addresses = ResolveHost(host);
    if (!addresses.ok()) return addresses.status();
    for (const std::string& address : *addresses) {
      if (IsLoopbackAddress(address)) continue;
      if (netns_addresses.count(address) > 0) continue;
      return absl::PermissionDeniedError(absl::StrCat(
          "refusing target '", target, "': ", address,
          " is neither loopback nor an address of a network namespace "
          "given with --netns (",
          allowed_netns.empty() ? "none given"
                                : absl::StrJoin(allowed_netns, ","),
          "); pass --allow_remote_target to load a real deployment"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTargetAllowed(absl::string_view target,
                                const TargetPolicy& policy) {
  if (!policy.allow_remote) return CheckTarget(target, policy.allowed_netns);
  auto hosts = TargetHosts(target);
  if (!hosts.ok()) return hosts.status();
  for (const std::string& host : *hosts) {
    auto addresses = ResolveHost(host);
    if (!addresses.ok()) return addresses.status();
  }
  return absl::OkStatus();
}

}  // namespace load
}  // namespace kvwire
