// Client channel construction.
#include "common/service/channel.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security_constants.h>
#include <grpcpp/create_channel.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvwire {

grpc::ChannelArguments MakeChannelArguments(const ChannelOptions& o) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(o.max_receive_message_bytes);
  args.SetMaxSendMessageSize(o.max_send_message_bytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, o.keepalive.time_ms);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, o.keepalive.timeout_ms);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
              o.keepalive.permit_without_calls ? 1 : 0);
  // Keep pinging an idle connection (the default stops after two pings
  // without data).
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  const auto millis = [](absl::Duration d) {
    return static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)));
  };
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              millis(o.reconnect_initial_backoff));
  args.SetInt(
      GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
      millis(std::max(o.reconnect_max_backoff, o.reconnect_initial_backoff)));
  if (!o.load_balancing_policy.empty()) {
    args.SetLoadBalancingPolicyName(o.load_balancing_policy);
  }
  if (!o.security.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(o.security.tls_server_name);
  }
  return args;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateKvwireChannel(
    const std::string& target, const ChannelOptions& options) {
  if (target.empty()) return absl::InvalidArgumentError("empty target");
  auto creds = MakeChannelCredentials(options.security);
  if (!creds.ok()) return creds.status();
  return grpc::CreateCustomChannel(target, *creds,
                                   MakeChannelArguments(options));
}

}  // namespace kvwire
