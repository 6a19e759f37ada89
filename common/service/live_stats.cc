// Recent requests and per-second aggregates for the live page.
#include "common/service/live_stats.h"

#include <algorithm>
#include <cmath>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace kvwire {
namespace {

using Json = nlohmann::ordered_json;

int64_t FloorSecond(double t) { return static_cast<int64_t>(std::floor(t)); }

Json RequestJson(const LiveRequest& r) {
  Json stages = Json::object();
  for (int i = 0; i < kNumLiveStages; ++i) {
    if (r.stage_seconds[i] > 0) {
      stages[std::string(kLiveStageNames[i])] = r.stage_seconds[i];
    }
  }
  return Json{{"time", r.time},
              {"method", r.method},
              {"status", r.status},
              {"mode", r.mode},
              {"spec", r.spec},
              {"scheme", r.scheme},
              {"fell_back", r.fell_back},
              {"fallback_reason", r.fallback_reason},
              {"prompt_tokens", r.prompt_tokens},
              {"tokens_sent", r.tokens_sent},
              {"layers_sent", r.layers_sent},
              {"raw_bytes", r.raw_bytes},
              {"payload_bytes", r.payload_bytes},
              {"serialized_bytes", r.serialized_bytes},
              {"wire_bytes", r.wire_bytes},
              {"generated_tokens", r.generated_tokens},
              {"stages", std::move(stages)}};
}

}  // namespace

LiveStats::LiveStats(int recent, int window_seconds)
    : recent_capacity_(std::max(1, recent)),
      window_seconds_(std::max(1, window_seconds)),
      seconds_(static_cast<size_t>(window_seconds_)) {}

void LiveStats::Record(const LiveRequest& r) {
  const bool ok = r.status == "OK";
  const bool transferred = r.transferred();
  std::lock_guard<std::mutex> lock(mu_);
  recent_.push_front(r);
  while (static_cast<int>(recent_.size()) > recent_capacity_) {
    recent_.pop_back();
  }
  ++total_requests_;
  if (!ok) ++total_errors_;
  if (r.fell_back) ++total_fallbacks_;
  total_wire_bytes_ += r.wire_bytes;
  if (transferred) {
    ++total_transfers_;
    total_raw_bytes_ += r.raw_bytes;
    total_serialized_bytes_ += r.serialized_bytes;
  }

  // The newest second recorded so far bounds the window: a request more
  // than window_seconds_ older than it would land on a live bucket.
  const int64_t t = FloorSecond(r.time);
  newest_second_ = std::max(newest_second_, t);
  if (t <= newest_second_ - window_seconds_ || t < 0) return;
  Second& s = seconds_[static_cast<size_t>(t % window_seconds_)];
  if (s.t != t) {
    s = Second();
    s.t = t;
  }
  ++s.requests;
  if (!ok) ++s.errors;
  if (r.fell_back) ++s.fallbacks;
  s.wire_bytes += r.wire_bytes;
  s.generated_tokens += r.generated_tokens;
  if (transferred) {
    ++s.transfers;
    s.transfer_wire_bytes += r.wire_bytes;
    s.raw_bytes += r.raw_bytes;
    s.payload_bytes += r.payload_bytes;
    s.serialized_bytes += r.serialized_bytes;
    s.prompt_tokens += r.prompt_tokens;
    s.tokens_sent += r.tokens_sent;
  }
  if (r.wire_bytes > 0) {
    const std::string name =
        transferred ? r.scheme : std::string(kPartialScheme);
    auto find = [&s](absl::string_view n) {
      return std::find_if(s.schemes.begin(), s.schemes.end(),
                          [n](const Second::Scheme& e) { return e.name == n; });
    };
    auto it = find(name);
    if (it == s.schemes.end() &&
        static_cast<int>(s.schemes.size()) >= kMaxSchemesPerSecond) {
      it = find("other");
      // Full and no "other" yet: the last entry becomes "other".
      if (it == s.schemes.end()) {
        it = s.schemes.end() - 1;
        it->name = "other";
      }
    }
    if (it == s.schemes.end()) {
      s.schemes.push_back(Second::Scheme{name, 0, 0});
      it = s.schemes.end() - 1;
    }
    it->wire_bytes += r.wire_bytes;
    ++it->streams;
  }
  for (int i = 0; i < kNumLiveStages; ++i) {
    if (r.stage_seconds[i] > 0) {
      s.stage_sum[i] += r.stage_seconds[i];
      ++s.stage_count[i];
    }
  }
}

std::string LiveStats::ToJson(double now) const {
  const int64_t now_s = FloorSecond(now);
  Json seconds = Json::array();
  Json recent = Json::array();
  std::vector<std::string> schemes;
  Json totals;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<const Second*> live;
    for (const Second& s : seconds_) {
      if (s.t > now_s - window_seconds_ && s.t <= now_s && s.requests > 0) {
        live.push_back(&s);
      }
    }
    std::sort(live.begin(), live.end(),
              [](const Second* a, const Second* b) { return a->t < b->t; });
    for (const Second* s : live) {
      Json wire_by_scheme = Json::object();
      Json streams_by_scheme = Json::object();
      for (const Second::Scheme& e : s->schemes) {
        wire_by_scheme[e.name] = e.wire_bytes;
        streams_by_scheme[e.name] = e.streams;
        if (std::find(schemes.begin(), schemes.end(), e.name) ==
            schemes.end()) {
          schemes.push_back(e.name);
        }
      }
      Json stage_sum = Json::object();
      Json stage_count = Json::object();
      for (int i = 0; i < kNumLiveStages; ++i) {
        if (s->stage_count[i] == 0) continue;
        stage_sum[std::string(kLiveStageNames[i])] = s->stage_sum[i];
        stage_count[std::string(kLiveStageNames[i])] = s->stage_count[i];
      }
      seconds.push_back(
          Json{{"t", s->t},
               {"requests", s->requests},
               {"errors", s->errors},
               {"fallbacks", s->fallbacks},
               {"transfers", s->transfers},
               {"wire_bytes", s->wire_bytes},
               {"transfer_wire_bytes", s->transfer_wire_bytes},
               {"raw_bytes", s->raw_bytes},
               {"payload_bytes", s->payload_bytes},
               {"serialized_bytes", s->serialized_bytes},
               {"prompt_tokens", s->prompt_tokens},
               {"tokens_sent", s->tokens_sent},
               {"generated_tokens", s->generated_tokens},
               {"wire_by_scheme", std::move(wire_by_scheme)},
               {"streams_by_scheme", std::move(streams_by_scheme)},
               {"stage_sum", std::move(stage_sum)},
               {"stage_count", std::move(stage_count)}});
    }
    for (const LiveRequest& r : recent_) recent.push_back(RequestJson(r));
    totals = Json{{"requests", total_requests_},
                  {"errors", total_errors_},
                  {"fallbacks", total_fallbacks_},
                  {"transfers", total_transfers_},
                  {"wire_bytes", total_wire_bytes_},
                  {"raw_bytes", total_raw_bytes_},
                  {"serialized_bytes", total_serialized_bytes_}};
  }
  std::sort(schemes.begin(), schemes.end());
  Json stages = Json::array();
  for (absl::string_view name : kLiveStageNames) {
    stages.push_back(std::string(name));
  }
  Json out{{"now", now},
           {"window_seconds", window_seconds_},
           {"totals", std::move(totals)},
           {"schemes", schemes},
           {"stages", std::move(stages)},
           {"seconds", std::move(seconds)},
           {"recent", std::move(recent)}};
  // Names and reasons come from the process itself, but never let an odd
  // byte make the whole document unreadable.
  return out.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string LiveStats::ToJson() const {
  return ToJson(absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
}

size_t LiveStats::recent_size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return recent_.size();
}

}  // namespace kvwire
