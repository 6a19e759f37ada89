// process_* metrics from /proc/self.
#include "common/service/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace kvwire {
namespace {

// /proc/stat's "btime": the boot time in Unix seconds.
std::optional<double> BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("btime ", 0) == 0) {
      double btime = 0;
      if (absl::SimpleAtod(absl::string_view(line).substr(6), &btime)) {
        return btime;
      }
    }
  }
  return std::nullopt;
}

std::optional<double> OpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return std::nullopt;
  double count = 0;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  // The directory stream's own descriptor was counted too.
  return count - 1;
}

prometheus::MetricFamily Family(std::string name, std::string help,
                                prometheus::MetricType type, double value) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

}  // namespace

absl::StatusOr<ProcessStats> ReadProcessStats() {
  std::ifstream in("/proc/self/stat");
  std::string stat;
  if (!in || !std::getline(in, stat)) {
    return absl::UnavailableError("cannot read /proc/self/stat");
  }
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
  // the fields start after the last ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 > stat.size()) {
    return absl::InternalError("malformed /proc/self/stat");
  }
  const std::vector<absl::string_view> fields = absl::StrSplit(
      absl::string_view(stat).substr(close + 2), ' ', absl::SkipEmpty());
  // Field numbers of proc(5) minus 3 (pid, comm and state come first):
  // utime 14, stime 15, starttime 22, vsize 23, rss 24.
  constexpr size_t kUtime = 14 - 3, kStime = 15 - 3, kStart = 22 - 3,
                   kVsize = 23 - 3, kRss = 24 - 3;
  double utime = 0, stime = 0, start = 0, vsize = 0, rss = 0;
  if (fields.size() <= kRss || !absl::SimpleAtod(fields[kUtime], &utime) ||
      !absl::SimpleAtod(fields[kStime], &stime) ||
      !absl::SimpleAtod(fields[kStart], &start) ||
      !absl::SimpleAtod(fields[kVsize], &vsize) ||
      !absl::SimpleAtod(fields[kRss], &rss)) {
    return absl::InternalError(
        absl::StrCat("unexpected /proc/self/stat: ", stat.substr(0, 200)));
  }
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  ProcessStats s;
  s.cpu_seconds = (utime + stime) / ticks;
  s.resident_bytes = rss * page;
  s.virtual_bytes = vsize;
  s.start_time_seconds = BootTimeSeconds().value_or(0) + start / ticks;
  s.open_fds = OpenFds();
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 &&
      limit.rlim_cur != RLIM_INFINITY) {
    s.max_fds = static_cast<double>(limit.rlim_cur);
  }
  return s;
}

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  std::vector<prometheus::MetricFamily> out;
  const absl::StatusOr<ProcessStats> s = ReadProcessStats();
  if (!s.ok()) return out;
  using prometheus::MetricType;
  out.push_back(Family("process_cpu_seconds_total",
                       "Total user and system CPU time spent in seconds.",
                       MetricType::Counter, s->cpu_seconds));
  out.push_back(Family("process_resident_memory_bytes",
                       "Resident memory size in bytes.", MetricType::Gauge,
                       s->resident_bytes));
  out.push_back(Family("process_virtual_memory_bytes",
                       "Virtual memory size in bytes.", MetricType::Gauge,
                       s->virtual_bytes));
  if (s->open_fds.has_value()) {
    out.push_back(Family("process_open_fds", "Number of open file descriptors.",
                         MetricType::Gauge, *s->open_fds));
  }
  if (s->max_fds.has_value()) {
    out.push_back(Family("process_max_fds",
                         "Maximum number of open file descriptors.",
                         MetricType::Gauge, *s->max_fds));
  }
  out.push_back(Family("process_start_time_seconds",
                       "Start time of the process since unix epoch in seconds.",
                       MetricType::Gauge, s->start_time_seconds));
  return out;
}

const std::shared_ptr<ProcessCollector>& GlobalProcessCollector() {
  static const auto* const collector = new std::shared_ptr<ProcessCollector>(
      std::make_shared<ProcessCollector>());
  return *collector;
}

}  // namespace kvwire
