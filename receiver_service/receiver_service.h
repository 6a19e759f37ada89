// The kvwire.v1.Receiver gRPC service on the callback API. Handlers are
// thin: authenticate, validate, admit into the WorkQueue (a full queue is
// RESOURCE_EXHAUSTED), and let a worker run the request with AnswerRunner.
// Answer finishes its unary reactor from the worker; AnswerStream writes a
// TokenEvent per generated token as it is sampled and the full
// AnswerResponse last, through a ServerWriteReactor fed by a queue
// (reactions never block). Client cancellation and deadlines cancel the
// sharer call in flight and stop the request at its next stage (or decode
// step). No Torch here.
//
// Modes: C2C (any TransferSpec; receiver-guided selection as described in
// answer_validation.h), receiver-only, and text-to-text (the sharer writes
// background text through Sharer.Generate; see docs/PROTOCOL.md).
//
// Other front ends (the OpenAI-compatible HTTP API, openai_http_server.h)
// run their requests through the same call path with StartCall: the same
// validation, queue, deadline, cancellation, metrics, live page and log.
#ifndef KVWIRE_RECEIVER_SERVICE_RECEIVER_SERVICE_H_
#define KVWIRE_RECEIVER_SERVICE_RECEIVER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/service/metrics.h"
#include "common/service/security.h"
#include "common/service/work_queue.h"
#include "kvwire/v1/kvwire.grpc.pb.h"
#include "receiver_service/answer_runner.h"

namespace kvwire {

// kvwire.v1.Receiver with its methods taking requests as raw bytes
// (common/service/raw_messages.h: malformed requests get INVALID_ARGUMENT,
// not gRPC's empty UNIMPLEMENTED).
using RawReceiverService = v1::Receiver::WithRawCallbackMethod_Answer<
    v1::Receiver::WithRawCallbackMethod_AnswerStream<
        v1::Receiver::CallbackService>>;

class AnswerCall;

// Where one call's results go: the gRPC reactors, or another front end.
class AnswerTransport {
 public:
  virtual ~AnswerTransport() = default;
  // A generated token (streaming calls only), before Done; on a worker.
  virtual void Token(const v1::TokenEvent& event) = 0;
  // The end of the call: called exactly once, on any thread (possibly
  // inside StartCall).
  virtual void Done(absl::Status status, v1::AnswerResponse response) = 0;
};

// How a call from another front end is run and recorded.
struct AnswerCallOptions {
  absl::Time deadline = absl::InfiniteFuture();
  std::string peer;        // For the log.
  std::string method;      // For the log ("ChatCompletions").
  bool streaming = false;  // Token events wanted.
  // kvwire_requests_*{method=...}; not owned, from Metrics::Rpc.
  RpcMetrics* rpc = nullptr;
};

// A call started by ReceiverService::StartCall. Thread-safe.
class AnswerCallHandle {
 public:
  explicit AnswerCallHandle(std::shared_ptr<AnswerCall> call);
  ~AnswerCallHandle();
  // The client went away: stop the call (dequeued at once, or stopped at
  // its next stage / decode step). Done still comes, with CANCELLED.
  void Cancel();
  // After Done, once: records the call's metrics, live-page row and log
  // line (what a gRPC reactor's OnDone does).
  void Finish();

 private:
  std::shared_ptr<AnswerCall> call_;
};

class ReceiverService final : public RawReceiverService {
 public:
  // Nothing is owned; everything must outlive the service (and the server
  // it is registered with).
  ReceiverService(const AnswerRunner* runner, WorkQueue* queue,
                  const BearerTokenAuth* auth, Metrics* metrics);

  // Status codes: UNAUTHENTICATED (bearer token), the ValidateAnswerRequest
  // codes, RESOURCE_EXHAUSTED (queue full), DEADLINE_EXCEEDED / CANCELLED,
  // the AnswerRunner::Run codes, UNAVAILABLE while shutting down.
  // AnswerRequest -> AnswerResponse.
  grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  // AnswerRequest -> a stream of AnswerEvents.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* AnswerStream(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;

  // Runs `request` from a front end that authenticated and parsed it
  // itself: `checked` is that verdict (not OK: the call completes at once
  // with it, and is still recorded). Then as Answer / AnswerStream:
  // validation, admission (RESOURCE_EXHAUSTED when the queue is full),
  // AnswerRunner::Run on a worker, `transport` told each token (when
  // streaming) and the end. `transport` must outlive Done.
  std::unique_ptr<AnswerCallHandle> StartCall(v1::AnswerRequest request,
                                              const AnswerCallOptions& options,
                                              absl::Status checked,
                                              AnswerTransport* transport);

 private:
  friend class AnswerCall;

  const AnswerRunner* const runner_;
  WorkQueue* const queue_;
  const BearerTokenAuth* const auth_;
  RpcMetrics& answer_rpc_;
  RpcMetrics& stream_rpc_;
  LiveStats& live_;  // The live page's recent requests (metrics->Live()).
  std::atomic<uint64_t> next_call_id_{1};
};

}  // namespace kvwire

#endif  // KVWIRE_RECEIVER_SERVICE_RECEIVER_SERVICE_H_
