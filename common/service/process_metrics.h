// The standard process_* metrics of Prometheus clients, read from
// /proc/self at each scrape, so that kvwire's processes sit beside the rest
// of a fleet's dashboards: process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds, process_start_time_seconds (names,
// types and units as the Go and Python clients export them).
//
// ProcessCollector owns nothing but its cached start time; a value that
// cannot be read (no /proc, e.g.) is left out of the scrape rather than
// exported as a wrong number. Collect() is thread-safe.
#ifndef KVWIRE_COMMON_SERVICE_PROCESS_METRICS_H_
#define KVWIRE_COMMON_SERVICE_PROCESS_METRICS_H_

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvwire {

// One reading of /proc/self.
struct ProcessStats {
  double cpu_seconds = 0;          // utime + stime.
  double resident_bytes = 0;       // RSS pages x page size.
  double virtual_bytes = 0;        // vsize.
  double start_time_seconds = 0;   // Unix time the process started.
  std::optional<double> open_fds;  // Entries of /proc/self/fd.
  std::optional<double> max_fds;   // Soft RLIMIT_NOFILE.
};

// Reads /proc/self/stat, /proc/stat (boot time), /proc/self/fd and the fd
// limit. UNAVAILABLE when /proc/self/stat cannot be read, INTERNAL when it
// cannot be parsed.
absl::StatusOr<ProcessStats> ReadProcessStats();

class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

// The process-wide collector (created on first use, never destroyed), to
// register with every exposer of the process.
const std::shared_ptr<ProcessCollector>& GlobalProcessCollector();

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_PROCESS_METRICS_H_
