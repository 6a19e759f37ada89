// Share calls on a reader thread (the sync streaming reader): reading applies
// HTTP/2 flow control to the sharer while the consumer decodes and fuses,
// and the receiver's worker thread stays free for its own prefill.
#include "receiver_service/sharer_client.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/service/grpc_status.h"
#include "common/service/security.h"

namespace kvwire {

ShareStream::~ShareStream() {
  Cancel();
  Wait();
}

void ShareStream::Cancel() { context_.TryCancel(); }

const ShareOutcome& ShareStream::Wait() {
  if (!joined_.exchange(true) && thread_.joinable()) thread_.join();
  return outcome_;
}

void ShareStream::ReadLoop(v1::Sharer::Stub* stub, v1::ShareRequest request,
                           ChunkConsumer consume) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<grpc::ClientReader<v1::KvChunk>> reader =
      stub->Share(&context_, request);
  v1::KvChunk chunk;
  absl::Status consumer_status;
  while (reader->Read(&chunk)) {
    if (outcome_.chunks == 0)
      outcome_.first_chunk_seconds = SecondsSince(start);
    // One message, batched blocks or not: its serialized size and one
    // gRPC prefix.
    const int64_t size = static_cast<int64_t>(chunk.ByteSizeLong());
    ++outcome_.chunks;
    outcome_.serialized_bytes += size;
    outcome_.wire_bytes += size + kGrpcMessagePrefixBytes;
    consumer_status = consume(chunk);
    if (!consumer_status.ok()) {
      context_.TryCancel();
      // Drain what is already buffered so that Finish does not block.
      while (reader->Read(&chunk)) {
      }
      break;
    }
  }
  const grpc::Status status = reader->Finish();
  outcome_.seconds = SecondsSince(start);
  if (!consumer_status.ok()) {
    outcome_.status = std::move(consumer_status);
    outcome_.consumer_error = true;
  } else {
    outcome_.status = FromGrpcStatus(status);
  }
}

absl::StatusOr<std::unique_ptr<SharerClient>> SharerClient::Create(
    const SharerClientOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("no sharer target given");
  }
  std::unique_ptr<SharerClient> c(new SharerClient());
  c->options_ = options;
  auto channel = CreateKvwireChannel(options.target, options.channel);
  if (!channel.ok()) return channel.status();
  c->channel_ = *std::move(channel);
  c->stub_ = v1::Sharer::NewStub(c->channel_);
  return c;
}

std::unique_ptr<ShareStream> SharerClient::StartShare(
    const v1::ShareRequest& request, absl::Time deadline,
    ChunkConsumer consume) {
  std::unique_ptr<ShareStream> s(new ShareStream());
  if (deadline != absl::InfiniteFuture()) {
    s->context_.set_deadline(absl::ToChronoTime(deadline));
  }
  AttachBearerToken(&s->context_, options_.channel.security.auth_token);
  v1::ShareRequest sent = request;
  if (sent.max_blocks_per_message() == 0) {
    sent.set_max_blocks_per_message(options_.max_blocks_per_message);
  }
  s->thread_ = std::thread(&ShareStream::ReadLoop, s.get(), stub_.get(),
                           std::move(sent), std::move(consume));
  return s;
}

absl::StatusOr<v1::GenerateResponse> SharerClient::Generate(
    const v1::GenerateRequest& request, absl::Time deadline,
    const std::function<void(std::function<void()> cancel)>& on_start) {
  grpc::ClientContext context;
  if (deadline != absl::InfiniteFuture()) {
    context.set_deadline(absl::ToChronoTime(deadline));
  }
  AttachBearerToken(&context, options_.channel.security.auth_token);
  if (on_start) on_start([&context] { context.TryCancel(); });
  v1::GenerateResponse response;
  const grpc::Status status = stub_->Generate(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::SharerInfo> SharerClient::GetInfo(absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  AttachBearerToken(&context, options_.channel.security.auth_token);
  v1::SharerInfo info;
  const grpc::Status status =
      stub_->GetInfo(&context, v1::GetInfoRequest(), &info);
  if (!status.ok()) return FromGrpcStatus(status);
  return info;
}

}  // namespace kvwire
