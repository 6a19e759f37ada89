// The receiver's client of kvwire.v1.Sharer: one channel to one or many
// sharers ("host:port", "ipv4:a:p,b:p", "dns:///host:port"; round-robin
// load balancing, keepalive, TLS / mutual TLS and a bearer token from
// common/service/channel.h), and Share calls read on a dedicated thread
// that hands every KvChunk to the caller as soon as it arrives, counting
// the bytes exactly as they were serialized.
#ifndef KVWIRE_RECEIVER_SERVICE_SHARER_CLIENT_H_
#define KVWIRE_RECEIVER_SERVICE_SHARER_CLIENT_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/protocol/wire_framing.h"
#include "common/service/channel.h"
#include "kvwire/v1/kvwire.grpc.pb.h"

namespace kvwire {

struct SharerClientOptions {
  // "host:port", "ipv4:10.0.0.1:50051,10.0.0.2:50051", "dns:///host:port".
  std::string target;
  // Security (TLS, mutual TLS, plaintext only when allowed, bearer token),
  // keepalive, message sizes and the load-balancing policy.
  ChannelOptions channel;
  // ShareRequest.max_blocks_per_message of every Share call that leaves it
  // unset: how many whole blocks one message may carry when the sharer has
  // several waiting (fewer messages, same bytes). 0 or 1: one per message.
  uint32_t max_blocks_per_message = 64;
};

// How one Share call went.
struct ShareOutcome {
  // OK after a complete, accepted stream; otherwise the call's status, or
  // the consumer's error (consumer_error), which cancelled the call.
  absl::Status status;
  bool consumer_error = false;
  int64_t chunks = 0;              // KvChunk messages received (and consumed).
  int64_t serialized_bytes = 0;    // Sum of their serialized sizes.
  int64_t wire_bytes = 0;          // serialized + 5-byte prefix per message.
  double seconds = 0;              // Call start -> end of the stream.
  double first_chunk_seconds = 0;  // Call start -> first chunk (0: none).
};

// Consumes one chunk; a non-OK status cancels the call.
using ChunkConsumer = std::function<absl::Status(const v1::KvChunk& chunk)>;

// One Share call running on its own reader thread.
class ShareStream {
 public:
  ~ShareStream();  // Cancel() and Wait().
  ShareStream(const ShareStream&) = delete;
  ShareStream& operator=(const ShareStream&) = delete;

  // Cancels the call (the reader ends soon after). Thread-safe, idempotent.
  void Cancel();
  // Blocks until the call is over; the consumer is not called afterwards.
  // May be called more than once (returns the same outcome).
  const ShareOutcome& Wait();

 private:
  friend class SharerClient;
  ShareStream() = default;
  void ReadLoop(v1::Sharer::Stub* stub, v1::ShareRequest request,
                ChunkConsumer consume);

  grpc::ClientContext context_;
  std::thread thread_;
  std::atomic<bool> joined_{false};
  ShareOutcome outcome_;
};

class SharerClient {
 public:
  // Creates the channel (no connection is made yet). Errors as
  // CreateKvwireChannel (credentials); INVALID_ARGUMENT for an empty target.
  static absl::StatusOr<std::unique_ptr<SharerClient>> Create(
      const SharerClientOptions& options);

  const SharerClientOptions& options() const { return options_; }

  // Starts Share(`request`) with `deadline`; every chunk goes to `consume`,
  // in order, on the reader thread. A request without
  // max_blocks_per_message gets the options' (so `consume` must accept
  // batches of blocks, KvChunk.blocks, when that is above 1).
  std::unique_ptr<ShareStream> StartShare(const v1::ShareRequest& request,
                                          absl::Time deadline,
                                          ChunkConsumer consume);

  // Generate(`request`) with `deadline`, blocking. `on_start` (optional)
  // gets a function that cancels the call (thread-safe), valid until
  // Generate returns. The call's status on failure.
  absl::StatusOr<v1::GenerateResponse> Generate(
      const v1::GenerateRequest& request, absl::Time deadline,
      const std::function<void(std::function<void()> cancel)>& on_start);

  // GetInfo with a timeout; the call's status otherwise.
  absl::StatusOr<v1::SharerInfo> GetInfo(absl::Duration timeout);

 private:
  SharerClient() = default;
  SharerClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Sharer::Stub> stub_;
};

}  // namespace kvwire

#endif  // KVWIRE_RECEIVER_SERVICE_SHARER_CLIENT_H_
