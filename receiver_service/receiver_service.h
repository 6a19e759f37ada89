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
#ifndef KVWIRE_RECEIVER_SERVICE_RECEIVER_SERVICE_H_
#define KVWIRE_RECEIVER_SERVICE_RECEIVER_SERVICE_H_

#include <atomic>
#include <cstdint>

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
