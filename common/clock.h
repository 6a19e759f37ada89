// The one clock kvwire measures stage times with, and the elapsed-seconds
// helper every stage uses. Header-only.
#ifndef KVWIRE_COMMON_CLOCK_H_
#define KVWIRE_COMMON_CLOCK_H_

#include <chrono>

namespace kvwire {

using Clock = std::chrono::steady_clock;

// Seconds from `start` to now.
inline double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CLOCK_H_
