// A request's timeline: named intervals on named tracks, as seconds since
// the request's origin (when the receiver got it). Stages running on
// different threads record into one RequestTrace, which proves (or
// disproves) that they overlap. Thread-safe. Code that traces takes a
// nullable pointer: no trace, no cost.
#ifndef KVWIRE_COMMON_TRACE_H_
#define KVWIRE_COMMON_TRACE_H_

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

namespace kvwire {

class RequestTrace {
 public:
  using Clock = std::chrono::steady_clock;

  struct Event {
    std::string track;
    std::string name;
    double start_seconds = 0;
    double end_seconds = 0;
  };

  explicit RequestTrace(Clock::time_point origin) : origin_(origin) {}

  void Add(std::string track, std::string name, Clock::time_point start,
           Clock::time_point end) {
    Event e{std::move(track), std::move(name), Seconds(start), Seconds(end)};
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(e));
  }

  // In the order they were added.
  std::vector<Event> Events() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }

 private:
  double Seconds(Clock::time_point t) const {
    return std::chrono::duration<double>(t - origin_).count();
  }

  const Clock::time_point origin_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_TRACE_H_
