// Client channels to kvwire servers: message-size limits, keepalive that
// agrees with GrpcServer's, load balancing over several resolved addresses,
// and the security options of security.h.
#ifndef KVWIRE_COMMON_SERVICE_CHANNEL_H_
#define KVWIRE_COMMON_SERVICE_CHANNEL_H_

#include <grpcpp/channel.h>
#include <grpcpp/support/channel_arguments.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/service/security.h"

namespace kvwire {

// Room for framing and metadata above the largest KvChunk (the codec's 4 MiB
// chunk cap) in the message-size limits of both ends.
constexpr int kMessageHeadroomBytes = 64 << 10;
// The codec never produces a KvChunk larger than this (kMaxChunkSizeBytes in
// common/codec/transfer_plan.h).
constexpr int kMaxKvChunkBytes = 4 << 20;
constexpr int kDefaultMaxMessageBytes =
    kMaxKvChunkBytes + kMessageHeadroomBytes;

// HTTP/2 keepalive. The client pings after `time_ms` without activity and
// drops the connection when no answer comes within `timeout_ms`; the server
// accepts client pings no more often than every `min_recv_ping_interval_ms`
// (which must not exceed the client's time_ms, or the server answers with
// GOAWAY "too_many_pings"). The defaults of both ends agree.
struct KeepaliveOptions {
  int time_ms = 30000;
  int timeout_ms = 10000;
  bool permit_without_calls = true;
  int min_recv_ping_interval_ms = 10000;  // Server side only.
};

struct ChannelOptions {
  int max_receive_message_bytes = kDefaultMaxMessageBytes;
  int max_send_message_bytes = kDefaultMaxMessageBytes;
  KeepaliveOptions keepalive;
  // "round_robin" spreads calls over every address a target resolves to
  // (dns:, ipv4:a,b,...); "pick_first" uses one.
  std::string load_balancing_policy = "round_robin";
  ClientSecurityOptions security;
  // Reconnection to a peer that went away: the first retry after
  // `reconnect_initial_backoff`, growing to at most `reconnect_max_backoff`.
  // gRPC's defaults (1 s growing to 120 s) kept a restarted sharer unused
  // for 20-30 s; a service peer is worth retrying every second.
  absl::Duration reconnect_initial_backoff = absl::Milliseconds(250);
  absl::Duration reconnect_max_backoff = absl::Seconds(1);
};

// The channel arguments for `options` (sizes, keepalive, LB policy,
// reconnect backoff, TLS server-name override).
grpc::ChannelArguments MakeChannelArguments(const ChannelOptions& options);

// A channel to `target` ("host:port", "dns:///host:port",
// "ipv4:10.0.0.1:50051,10.0.0.2:50051"). Errors as MakeChannelCredentials.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateKvwireChannel(
    const std::string& target, const ChannelOptions& options);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_CHANNEL_H_
