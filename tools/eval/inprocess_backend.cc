#include "tools/eval/inprocess_backend.h"

#include <ATen/Parallel.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/codec/layer_schedule.h"
#include "common/engine/pipeline.h"
#include "common/engine/receiver_engine.h"
#include "common/engine/selection.h"
#include "common/hub_cache.h"
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

BackendLayout LayoutOf(const C2cPipeline& pipeline) {
  BackendLayout layout;
  layout.receiver_layers =
      static_cast<int>(pipeline.receiver().config().num_hidden_layers);
  if (pipeline.sharer() != nullptr) {
    layout.sharer_layers =
        static_cast<int>(pipeline.sharer()->config().num_hidden_layers);
  }
  if (pipeline.fuser() != nullptr && layout.sharer_layers > 0) {
    // The fuser's own map; receiver layers it does not fuse take the
    // last-aligned sharer layer (they only matter for schedule translation).
    auto aligned =
        LastAlignedLayerMap(layout.receiver_layers, layout.sharer_layers);
    for (int t = 0; t < layout.receiver_layers; ++t) {
      const std::optional<int> s = pipeline.fuser()->SharerLayerFor(t);
      layout.layer_map.push_back(
          s.has_value() ? *s : (aligned.ok() ? (*aligned)[t] : 0));
    }
  }
  return layout;
}

class InProcessBackend : public AnswerBackend {
 public:
  InProcessBackend(std::unique_ptr<C2cPipeline> pipeline,
                   InProcessBackendOptions options, PipelineOptions base)
      : pipeline_(std::move(pipeline)),
        options_(std::move(options)),
        base_(std::move(base)),
        active_(pipeline_.get()),
        layout_(LayoutOf(*pipeline_)) {}

  std::string kind() const override { return "in-process"; }

  std::string Describe() const override {
    return absl::StrCat(
        "in-process C2cPipeline: receiver=", options_.receiver_dir,
        " sharer=", options_.sharer_dir, " fuser=", options_.fuser_dir,
        " token_alignment=", options_.token_alignment,
        options_.alignment_strategy.empty() ? "" : "/",
        options_.alignment_strategy, " device=", options_.device,
        " dtype=", dtype_name_);
  }

  BackendLayout layout() const override { return layout_; }

  absl::Status CheckPairSupported(const PairOverride& pair) const override {
    if (!pair.token_alignment.empty()) {
      RETURN_IF_ERROR(ParseTokenAlignmentMode(pair.token_alignment).status());
    }
    return absl::OkStatus();
  }

  absl::Status UsePair(const PairOverride& pair) override {
    if (pair.empty()) {
      active_ = pipeline_.get();
      layout_ = LayoutOf(*pipeline_);
      return absl::OkStatus();
    }
    if (pair_pipeline_ == nullptr || pair != pair_) {
      pair_pipeline_.reset();  // One extra pipeline in memory at a time.
      PipelineOptions po = base_;
      if (!pair.sharer_dir.empty()) {
        po.sharer.model.dir = pair.sharer_dir;
        // The backend's sharer tokenizer belongs to its own sharer.
        po.receiver.sharer_tokenizer_dir = pair.sharer_tokenizer_dir;
      } else if (!pair.sharer_tokenizer_dir.empty()) {
        po.receiver.sharer_tokenizer_dir = pair.sharer_tokenizer_dir;
      }
      if (pair.no_fuser) {
        po.receiver.fuser_dir.clear();
      } else if (!pair.fuser_dir.empty()) {
        po.receiver.fuser_dir = pair.fuser_dir;
      }
      if (!pair.token_alignment.empty()) {
        ASSIGN_OR_RETURN(po.receiver.token_alignment,
                         ParseTokenAlignmentMode(pair.token_alignment));
      }
      if (!pair.alignment_strategy.empty()) {
        po.receiver.alignment_strategy = pair.alignment_strategy;
      }
      // The grid's `sharers:` paths may be Hugging Face ids too.
      const absl::Status resolved = ResolveModelDirFlags(
          {{"sharer_dir", &po.sharer.model.dir},
           {"sharer_tokenizer_dir", &po.receiver.sharer_tokenizer_dir},
           {"fuser_dir", &po.receiver.fuser_dir}});
      absl::StatusOr<std::unique_ptr<C2cPipeline>> loaded =
          resolved.ok()
              ? C2cPipeline::Load(po)
              : absl::StatusOr<std::unique_ptr<C2cPipeline>>(resolved);
      if (!loaded.ok()) {
        active_ = nullptr;
        return absl::Status(
            loaded.status().code(),
            absl::StrCat(pair.Describe(), ": ", loaded.status().message()));
      }
      pair_pipeline_ = *std::move(loaded);
      pair_ = pair;
    }
    active_ = pair_pipeline_.get();
    layout_ = LayoutOf(*active_);
    return absl::OkStatus();
  }

  absl::StatusOr<BackendAnswer> Answer(const BackendRequest& request) override {
    if (active_ == nullptr) {
      return absl::FailedPreconditionError(
          "the last UsePair failed: no model pair to answer with");
    }
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
    ASSIGN_OR_RETURN(PipelineResult r, active_->Answer(p));

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
  std::unique_ptr<C2cPipeline> pipeline_;  // The options' pair.
  InProcessBackendOptions options_;
  PipelineOptions base_;
  std::unique_ptr<C2cPipeline> pair_pipeline_;  // pair_'s, when loaded.
  PairOverride pair_;
  const C2cPipeline* active_;  // nullptr after a failed UsePair.
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
  ASSIGN_OR_RETURN(po.receiver.token_alignment,
                   ParseTokenAlignmentMode(options.token_alignment.empty()
                                               ? "auto"
                                               : options.token_alignment));
  po.receiver.alignment_strategy = options.alignment_strategy;
  po.sharer.model.dir = options.sharer_dir;
  po.receiver.model.device = po.sharer.model.device = options.device;
  po.receiver.model.dtype = po.sharer.model.dtype = dtype_name;
  po.text_to_text_max_new_tokens = options.text_to_text_max_new_tokens;
  ASSIGN_OR_RETURN(std::unique_ptr<C2cPipeline> pipeline,
                   C2cPipeline::Load(po));
  auto backend =
      std::make_unique<InProcessBackend>(std::move(pipeline), options, po);
  backend->set_dtype_name(dtype_name);
  return backend;
}

}  // namespace eval
}  // namespace kvwire
