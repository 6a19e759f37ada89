#include "tools/eval/inprocess_backend.h"

#include <ATen/Parallel.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/codec/layer_schedule.h"
#include "common/engine/pipeline.h"
#include "common/engine/selection.h"
#include "common/model/decoder.h"
#include "common/status_macros.h"

namespace kvwire {
namespace eval {
namespace {

PipelineMode ToPipelineMode(EvalMethod method) {
  switch (method) {
    case EvalMethod::kReceiverOnly:
      return PipelineMode::kReceiverOnly;
    case EvalMethod::kSharerOnly:
      return PipelineMode::kSharerOnly;
    case EvalMethod::kTextToText:
      return PipelineMode::kTextToText;
    case EvalMethod::kC2C:
      return PipelineMode::kC2C;
  }
  return PipelineMode::kC2C;
}

class InProcessBackend : public AnswerBackend {
 public:
  InProcessBackend(std::unique_ptr<C2cPipeline> pipeline,
                   InProcessBackendOptions options)
      : pipeline_(std::move(pipeline)), options_(std::move(options)) {
    layout_.receiver_layers =
        static_cast<int>(pipeline_->receiver().config().num_hidden_layers);
    if (pipeline_->sharer() != nullptr) {
      layout_.sharer_layers =
          static_cast<int>(pipeline_->sharer()->config().num_hidden_layers);
    }
    if (pipeline_->fuser() != nullptr && layout_.sharer_layers > 0) {
      // The fuser's own map; receiver layers it does not fuse take the
      // last-aligned sharer layer (they only matter for schedule translation).
      auto aligned =
          LastAlignedLayerMap(layout_.receiver_layers, layout_.sharer_layers);
      for (int t = 0; t < layout_.receiver_layers; ++t) {
        const std::optional<int> s = pipeline_->fuser()->SharerLayerFor(t);
        layout_.layer_map.push_back(
            s.has_value() ? *s : (aligned.ok() ? (*aligned)[t] : 0));
      }
    }
  }

  std::string kind() const override { return "in-process"; }

  std::string Describe() const override {
    return absl::StrCat(
        "in-process C2cPipeline: receiver=", options_.receiver_dir,
        " sharer=", options_.sharer_dir, " fuser=", options_.fuser_dir,
        " device=", options_.device, " dtype=", dtype_name_);
  }

  BackendLayout layout() const override { return layout_; }

  absl::StatusOr<BackendAnswer> Answer(const BackendRequest& request) override {
    PipelineRequest p;
    p.request_id = request.request_id;
    p.messages = request.messages;
    p.mode = ToPipelineMode(request.method);
    p.spec = request.spec;
    ASSIGN_OR_RETURN(p.selection,
                     ParseSelectionStrategy(request.selection_strategy));
    p.generation.max_new_tokens = request.max_new_tokens;
    p.generation.sampling.temperature = 0.0;  // Greedy.
    p.background_question = request.background_question;
    ASSIGN_OR_RETURN(PipelineResult r, pipeline_->Answer(p));

    BackendAnswer a;
    a.text = std::move(r.text);
    a.token_ids = std::move(r.token_ids);
    a.prompt_tokens = static_cast<int64_t>(r.prompt_ids.size());
    if (r.transfer.has_value()) {
      a.has_transfer = true;
      a.transfer = ToTransferReport(*r.transfer);
      a.chunks = r.transfer->chunks;
      a.transfer.set_wire_bytes(r.transfer->serialized_bytes +
                                kGrpcMessagePrefixBytes * r.transfer->chunks);
    }
    if (request.method == EvalMethod::kTextToText) {
      a.background_text = std::move(r.background_text);
      a.text_bytes = a.background_text.size();
    }
    a.timings = ToStageTimings(r.timings);
    a.selection_seconds = r.timings.selection_seconds;
    return a;
  }

  void set_dtype_name(std::string name) { dtype_name_ = std::move(name); }

 private:
  std::unique_ptr<C2cPipeline> pipeline_;
  InProcessBackendOptions options_;
  BackendLayout layout_;
  std::string dtype_name_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<AnswerBackend>> CreateInProcessBackend(
    const InProcessBackendOptions& options) {
  if (options.threads > 0) at::set_num_threads(options.threads);
  ASSIGN_OR_RETURN(c10::Device device, ParseModelDevice(options.device));
  std::string dtype_name = options.dtype;
  if (dtype_name.empty() || dtype_name == "auto") {
    dtype_name = device.is_cuda() ? "bf16" : "fp32";
  }
  PipelineOptions po;
  po.receiver.model.dir = options.receiver_dir;
  po.receiver.fuser_dir = options.fuser_dir;
  po.receiver.tokenizer_dir = options.tokenizer_dir;
  po.receiver.sharer_tokenizer_dir = options.sharer_tokenizer_dir;
  po.sharer.model.dir = options.sharer_dir;
  po.receiver.model.device = po.sharer.model.device = options.device;
  po.receiver.model.dtype = po.sharer.model.dtype = dtype_name;
  po.text_to_text_max_new_tokens = options.text_to_text_max_new_tokens;
  ASSIGN_OR_RETURN(std::unique_ptr<C2cPipeline> pipeline,
                   C2cPipeline::Load(po));
  auto backend =
      std::make_unique<InProcessBackend>(std::move(pipeline), options);
  backend->set_dtype_name(dtype_name);
  return backend;
}

}  // namespace eval
}  // namespace kvwire
