// The kvwire.v1.Sharer gRPC service on the callback API. Handlers are thin:
// authenticate, validate, admit into the WorkQueue, and stream what the
// SharerEngine produces through a ServerWriteReactor fed by a thread-safe
// queue (reactions never block; the worker blocks only for backpressure).
// No Torch here.
#ifndef KVWIRE_SHARER_SERVICE_SHARER_SERVICE_H_
#define KVWIRE_SHARER_SERVICE_SHARER_SERVICE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/time/time.h"
#include "common/engine/sharer_engine.h"
#include "common/service/metrics.h"
#include "common/service/security.h"
#include "common/service/work_queue.h"
#include "kvwire/v1/kvwire.grpc.pb.h"

namespace kvwire {

class ShareCall;

struct SharerServiceOptions {
  // Most bytes of one stream queued ahead of the network before the worker
  // waits for the client to catch up.
  int64_t max_buffered_bytes_per_stream = int64_t{64} << 20;
  // A Share stream whose message write makes no progress for this long (a
  // client that stopped reading) is cancelled: its worker stops and its
  // buffers go. Zero or less: never.
  absl::Duration stream_stall_timeout = absl::Seconds(20);
  // Fault injection for tests and soaks: each data-carrying chunk has one
  // byte flipped with this probability after encoding (the receiver's
  // checksums must catch it).
  double testing_corrupt_chunk_probability = 0;
};

// kvwire.v1.Sharer with every method taking its request as raw bytes
// (common/service/raw_messages.h: malformed requests get INVALID_ARGUMENT,
// not gRPC's empty UNIMPLEMENTED).
using RawSharerService = v1::Sharer::WithRawCallbackMethod_Share<
    v1::Sharer::WithRawCallbackMethod_GetInfo<
        v1::Sharer::WithRawCallbackMethod_Generate<
            v1::Sharer::CallbackService>>>;

class SharerService final : public RawSharerService {
 public:
  // Nothing is owned; everything must outlive the service (and the server
  // it is registered with).
  SharerService(SharerEngine* engine, WorkQueue* queue,
                const BearerTokenAuth* auth, Metrics* metrics,
                const SharerServiceOptions& options = {});
  // Stops the stall watchdog.
  ~SharerService() override;

  // Status codes: UNAUTHENTICATED (bearer token), the ValidateShareRequest
  // codes, RESOURCE_EXHAUSTED (queue full), DEADLINE_EXCEEDED / CANCELLED,
  // the engine's errors, UNAVAILABLE while shutting down. A stalled stream
  // (see stream_stall_timeout) is cancelled (the client sees CANCELLED; the
  // server counts RESOURCE_EXHAUSTED).
  // `request` is a serialized ShareRequest; the stream carries KvChunks.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Share(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;

  // GetInfoRequest -> SharerInfo.
  grpc::ServerUnaryReactor* GetInfo(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;

  // Status codes: UNAUTHENTICATED, the ValidateGenerateRequest codes,
  // RESOURCE_EXHAUSTED (queue full), DEADLINE_EXCEEDED / CANCELLED (also
  // mid-generation), INTERNAL from the model, UNAVAILABLE while shutting
  // down. Shares the Share calls' work queue (never batched with them).
  // GenerateRequest -> GenerateResponse.
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

  // The WorkQueue batch runner for Share calls: runs them through
  // engine->ShareBatch (see WorkQueue::Options::max_batch).
  static BatchRunner MakeBatchRunner(SharerEngine* engine);

 private:
  friend class ShareCall;
  friend class ShareReactor;
  friend class GenerateCall;
  friend class GenerateReactor;

  // Every open Share stream, for the stall watchdog (weak: a stream leaves
  // when gRPC is done with it).
  void TrackStream(uint64_t id, std::weak_ptr<ShareCall> call);
  void ForgetStream(uint64_t id);
  void WatchStalls();

  SharerEngine* const engine_;
  WorkQueue* const queue_;
  const BearerTokenAuth* const auth_;
  Metrics* const metrics_;
  const SharerServiceOptions options_;
  RpcMetrics& share_rpc_;
  RpcMetrics& info_rpc_;
  RpcMetrics& generate_rpc_;
  prometheus::Histogram& generation_stage_;
  prometheus::Counter& generated_tokens_;
  prometheus::Histogram& time_per_output_token_;
  TransferMetrics& transfer_;
  prometheus::Histogram& compute_stage_;
  prometheus::Histogram& encode_stage_;
  prometheus::Histogram& first_layer_stage_;
  prometheus::Histogram& stream_stage_;
  std::atomic<uint64_t> next_call_id_{1};

  std::mutex streams_mu_;
  std::condition_variable streams_cv_;
  bool stopping_ = false;
  std::map<uint64_t, std::weak_ptr<ShareCall>> streams_;
  std::thread stall_watchdog_;
};

}  // namespace kvwire

#endif  // KVWIRE_SHARER_SERVICE_SHARER_SERVICE_H_
