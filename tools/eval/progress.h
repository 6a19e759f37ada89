// A one-line progress bar with rate and ETA for long runs. On a terminal it
// redraws in place (at most 10 times a second); otherwise it prints a line
// every 10% or minute, so logs stay readable.
#ifndef KVWIRE_TOOLS_EVAL_PROGRESS_H_
#define KVWIRE_TOOLS_EVAL_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace kvwire {
namespace eval {

// "1:02:03", "02:03"; "--:--" for a negative or non-finite value.
std::string FormatDuration(double seconds);

class ProgressBar {
 public:
  // `done` items were finished before (resumed): they count towards the bar
  // but not the rate.
  ProgressBar(std::ostream* out, bool interactive, std::string label,
              int64_t total, int64_t done);
  // After each item; `correct` so far (resumed ones included).
  void Update(int64_t done, int64_t correct);
  // Final line (always printed).
  void Finish();

  // The line as it would be drawn now.
  std::string Render() const;

 private:
  using Clock = std::chrono::steady_clock;
  std::ostream* out_;
  bool interactive_;
  std::string label_;
  int64_t total_;
  int64_t start_done_;
  int64_t done_;
  int64_t correct_ = 0;
  Clock::time_point start_;
  Clock::time_point last_draw_;
  int last_decile_ = -1;
  int64_t last_printed_done_ = -1;
};

}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TOOLS_EVAL_PROGRESS_H_
