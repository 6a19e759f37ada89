// The receiver's side of the live page (/live, served beside /metrics): one
// finished Answer / AnswerStream call as a LiveRequest (common/service/
// live_stats.h). Called once per call, when it is done.
#ifndef KVWIRE_RECEIVER_SERVICE_LIVE_RECORD_H_
#define KVWIRE_RECEIVER_SERVICE_LIVE_RECORD_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/service/live_stats.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// `summary` is what the call answered (its mode, fell_back, transfer report
// and timings; an empty response for a failed call), `status` the code the
// client saw, `seconds` the whole call, `finished` the wall-clock end.
LiveRequest MakeLiveRequest(const v1::AnswerRequest& request,
                            const v1::AnswerResponse& summary,
                            const absl::Status& status, bool streaming,
                            absl::Duration queue_wait, double seconds,
                            absl::Time finished);

}  // namespace kvwire

#endif  // KVWIRE_RECEIVER_SERVICE_LIVE_RECORD_H_
