#include "tools/eval/progress.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvwire {
namespace eval {

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  const int64_t h = s / 3600;
  if (h > 0) return absl::StrFormat("%d:%02d:%02d", h, (s / 60) % 60, s % 60);
  return absl::StrFormat("%02d:%02d", s / 60, s % 60);
}

ProgressBar::ProgressBar(std::ostream* out, bool interactive, std::string label,
                         int64_t total, int64_t done)
    : out_(out),
      interactive_(interactive),
      label_(std::move(label)),
      total_(total),
      start_done_(done),
      done_(done),
      start_(Clock::now()),
      last_draw_(Clock::time_point::min()) {}

std::string ProgressBar::Render() const {
  constexpr int kWidth = 24;
  const double frac =
      total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_)
                 : 1.0;
  const int filled =
      std::clamp(static_cast<int>(frac * kWidth + 1e-9), 0, kWidth);
  std::string bar;
  for (int i = 0; i < kWidth; ++i) bar += i < filled ? "#" : ".";
  const double elapsed =
      std::chrono::duration<double>(Clock::now() - start_).count();
  const int64_t fresh = done_ - start_done_;
  const double rate = elapsed > 0 && fresh > 0 ? fresh / elapsed : 0;
  const double eta =
      rate > 0 ? static_cast<double>(total_ - done_) / rate : -1.0;
  std::string line =
      absl::StrFormat("%s [%s] %d/%d %5.1f%% | %s elapsed | ETA %s", label_,
                      bar, done_, total_, 100.0 * frac, FormatDuration(elapsed),
                      done_ >= total_ ? "00:00" : FormatDuration(eta));
  if (rate > 0) {
    absl::StrAppend(&line, rate >= 1
                               ? absl::StrFormat(" | %.2f q/s", rate)
                               : absl::StrFormat(" | %.2f s/q", 1 / rate));
  }
  if (done_ > 0) {
    absl::StrAppend(&line,
                    absl::StrFormat(" | acc %.1f%%", 100.0 * correct_ / done_));
  }
  return line;
}

void ProgressBar::Update(int64_t done, int64_t correct) {
  done_ = done;
  correct_ = correct;
  const auto now = Clock::now();
  if (interactive_) {
    if (now - last_draw_ < std::chrono::milliseconds(100) && done_ < total_) {
      return;
    }
    last_draw_ = now;
    *out_ << "\r" << Render() << "\033[K" << std::flush;
    return;
  }
  const int decile =
      total_ > 0 ? static_cast<int>(10 * done_ / std::max<int64_t>(1, total_))
                 : 10;
  if (decile != last_decile_ || now - last_draw_ > std::chrono::minutes(1)) {
    last_decile_ = decile;
    last_draw_ = now;
    last_printed_done_ = done_;
    *out_ << Render() << "\n" << std::flush;
  }
}

void ProgressBar::Finish() {
  if (interactive_) {
    *out_ << "\r" << Render() << "\033[K\n" << std::flush;
  } else if (last_printed_done_ != done_) {
    *out_ << Render() << "\n" << std::flush;
  }
}

}  // namespace eval
}  // namespace kvwire
