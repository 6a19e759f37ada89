#include "tools/eval/grpc_backend.h"

#include <grpcpp/client_context.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/codec/layer_schedule.h"
#include "common/service/grpc_status.h"
#include "common/service/security.h"
#include "common/status_macros.h"
#include "kvwire/v1/kvwire.grpc.pb.h"

namespace kvwire {
namespace eval {
namespace {

class GrpcBackend : public AnswerBackend {
 public:
  GrpcBackend(GrpcBackendOptions options,
              std::unique_ptr<v1::Receiver::Stub> stub,
              v1::FallbackPolicy fallback)
      : options_(std::move(options)),
        stub_(std::move(stub)),
        fallback_(fallback) {
    layout_.receiver_layers = options_.receiver_layers;
    layout_.sharer_layers = options_.sharer_layers;
    if (layout_.receiver_layers > 0 && layout_.sharer_layers > 0) {
      auto map =
          LastAlignedLayerMap(layout_.receiver_layers, layout_.sharer_layers);
      if (map.ok()) layout_.layer_map = *std::move(map);
    }
  }

  std::string kind() const override { return "grpc"; }
  std::string Describe() const override {
    return absl::StrCat("gRPC receiver at ", options_.target, " (",
                        DescribeSecurity(options_.channel.security), ")");
  }
  BackendLayout layout() const override { return layout_; }

  absl::Status CheckPairSupported(const PairOverride& pair) const override {
    if (pair.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "the gRPC backend cannot change the model pair per run (",
        pair.Describe(),
        "): the sharer, fuser, sharer tokenizer and token alignment are the "
        "receiver service's flags (--sharer_target, --fuser_dir, "
        "--sharer_tokenizer_dir, --token_alignment, --alignment_strategy); "
        "start a receiver with them and run a grid without `sharer`, "
        "`token_alignment` and `alignment_strategy`, or use "
        "--backend=inprocess"));
  }

  absl::StatusOr<BackendAnswer> Answer(const BackendRequest& request) override {
    v1::AnswerRequest req;
    req.set_request_id(request.request_id);
    for (const ChatMessage& m : request.messages) {
      v1::ChatMessage* out = req.add_messages();
      out->set_role(m.role);
      out->set_content(m.content);
    }
    switch (request.method) {
      case EvalMethod::kReceiverOnly:
        req.set_mode(v1::ANSWER_MODE_RECEIVER_ONLY);
        break;
      case EvalMethod::kTextToText:
        req.set_mode(v1::ANSWER_MODE_TEXT_TO_TEXT);
        req.set_fallback(fallback_);
        break;
      case EvalMethod::kC2C:
        req.set_mode(v1::ANSWER_MODE_C2C);
        *req.mutable_spec() = request.spec;
        req.set_fallback(fallback_);
        break;
      case EvalMethod::kSharerOnly:
        req.set_mode(v1::ANSWER_MODE_SHARER_ONLY);
        req.set_fallback(fallback_);
        break;
    }
    if (request.selection_strategy != "spec") {
      return absl::InvalidArgumentError(
          absl::StrCat("selection '", request.selection_strategy,
                       "' exists only in the in-process pipeline; use "
                       "--backend=inprocess"));
    }
    req.mutable_generation()->set_max_new_tokens(
        static_cast<uint32_t>(request.max_new_tokens));
    req.mutable_generation()->set_temperature(0.0f);

    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(
                             options_.timeout_seconds * 1000)));
    AttachBearerToken(&context, options_.channel.security.auth_token);
    v1::AnswerResponse resp;
    const grpc::Status status = stub_->Answer(&context, req, &resp);
    if (!status.ok()) {
      const absl::Status s = FromGrpcStatus(status);
      return absl::Status(s.code(),
                          absl::StrCat("Receiver.Answer(", request.request_id,
                                       "): ", s.message()));
    }
    BackendAnswer a;
    a.text = resp.text();
    a.token_ids.assign(resp.token_ids().begin(), resp.token_ids().end());
    // A sharer-only answer's transfer is the GenerateResponse, not KV (the
    // in-process backend reports none either).
    a.has_transfer =
        resp.has_transfer() && request.method != EvalMethod::kSharerOnly;
    if (a.has_transfer) a.transfer = resp.transfer();
    if (request.method == EvalMethod::kTextToText && a.has_transfer) {
      // The service reports the text message's bytes as its transfer.
      a.text_bytes = resp.transfer().wire_bytes();
      a.background_text = resp.background_text();
    }
    a.timings = resp.timings();
    a.fell_back = resp.fell_back();
    a.fallback_reason = resp.fallback_reason();
    return a;
  }

 private:
  GrpcBackendOptions options_;
  std::unique_ptr<v1::Receiver::Stub> stub_;
  v1::FallbackPolicy fallback_;
  BackendLayout layout_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<AnswerBackend>> CreateGrpcBackend(
    const GrpcBackendOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("--target (receiver address) is empty");
  }
  v1::FallbackPolicy fallback;
  if (options.fallback == "fail") {
    fallback = v1::FALLBACK_POLICY_FAIL;
  } else if (options.fallback == "receiver-only") {
    fallback = v1::FALLBACK_POLICY_RECEIVER_ONLY;
  } else if (options.fallback == "server") {
    fallback = v1::FALLBACK_POLICY_UNSPECIFIED;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown fallback '", options.fallback,
                     "' (fail, receiver-only, server)"));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                   CreateKvwireChannel(options.target, options.channel));
  return std::unique_ptr<AnswerBackend>(
      new GrpcBackend(options, v1::Receiver::NewStub(channel), fallback));
}

}  // namespace eval
}  // namespace kvwire
