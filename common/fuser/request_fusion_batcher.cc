#include "common/fuser/request_fusion_batcher.h"

#include <ATen/ops/empty.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/StreamGuard.h>

#include <algorithm>
#include <map>
#include <tuple>
#include <utility>

#include "common/fuser/c2c_projector.h"
#include "common/model/batched_decode.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {

struct RequestFusionBatcher::Pending : BatchItem {
  Pending(c10::Stream stream, absl::Span<const LayerFusionInput> inputs,
          FusionPlan plan)
      : BatchItem(stream), inputs(inputs), plan(std::move(plan)) {}
  absl::Span<const LayerFusionInput> inputs;
  FusionPlan plan;
  absl::Status status;  // Written by the leader.
};

RequestFusionBatcher::RequestFusionBatcher(
    const C2CFuser* fuser, std::shared_ptr<FusionAccelerator> inner,
    RequestFusionBatcherOptions options)
    : fuser_(fuser),
      inner_(std::move(inner)),
      batcher_(StepBatcherOptions{options.max_requests,
                                  std::move(options.gathering)}) {}

absl::Status RequestFusionBatcher::FuseAlone(
    absl::Span<const LayerFusionInput> inputs) {
  if (inner_ != nullptr) {
    absl::Status status = inner_->FuseLayers(inputs);
    if (!absl::IsUnimplemented(status)) return status;
  }
  return fuser_->FuseLayers(inputs);
}

absl::Status RequestFusionBatcher::FuseLayers(
    absl::Span<const LayerFusionInput> inputs) {
  if (fuser_->num_stacks() == 0) return FuseAlone(inputs);
  ASSIGN_OR_RETURN(FusionPlan plan, fuser_->PlanFusion(inputs));
  Pending mine(CurrentStream(fuser_->stack(0).device()), inputs,
               std::move(plan));
  batcher_.Run(&mine, [&](const std::vector<BatchItem*>& batch) {
    std::vector<Pending*> calls;
    for (BatchItem* item : batch) calls.push_back(static_cast<Pending*>(item));
    if (calls.size() == 1) {
      calls[0]->status = FuseAlone(calls[0]->inputs);
      return;
    }
    const absl::Status status = FuseTogether(calls);
    for (Pending* call : calls) call->status = status;
  });
  return mine.status;
}

absl::Status RequestFusionBatcher::FuseTogether(
    const std::vector<Pending*>& batch) {
  // Runs of the same shape across requests: (stack, path, first member,
  // members, receiver dtype).
  using Shape = std::tuple<int, bool, int64_t, int64_t, int>;
  struct Member {
    Pending* call;
    const FusionRun* run;
  };
  std::map<Shape, std::vector<Member>> groups;
  for (Pending* call : batch) {
    for (const FusionRun& run : call->plan.runs) {
      groups[Shape{run.stack, run.value, run.first, run.count(),
                   static_cast<int>(run.receiver_dtype)}]
          .push_back(Member{call, &run});
    }
  }
  // Everything is computed before anything is written.
  std::vector<std::pair<const std::vector<Member>*, at::Tensor>> fused;
  RETURN_IF_ERROR(
      Guarded("batched fusion across requests", [&]() -> absl::Status {
        c10::InferenceMode inference;
        c10::StreamGuard stream_guard(batch.front()->stream);
        for (const auto& [shape, members] : groups) {
          const FusionRun& first = *members.front().run;
          const C2CProjectorStack& stack = fuser_->stack(first.stack);
          const C2CProjectorArgs& a = stack.args();
          int64_t total = 0;
          for (const Member& m : members) total += m.run->tokens;
          const auto options = at::TensorOptions().device(stack.device());
          const at::Tensor sharer = at::empty(
              {first.count(), a.source_num_heads, total, a.source_dim},
              options.dtype(stack.dtype()));
          const at::Tensor receiver = at::empty(
              {first.count(), a.target_num_heads, total, a.target_dim},
              options.dtype(first.receiver_dtype));
          int64_t offset = 0;
          for (const Member& m : members) {
            RETURN_IF_ERROR(
                fuser_->GatherRun(m.call->plan, *m.run, m.call->inputs,
                                  sharer.narrow(2, offset, m.run->tokens),
                                  receiver.narrow(2, offset, m.run->tokens)));
            offset += m.run->tokens;
          }
          ASSIGN_OR_RETURN(at::Tensor out,
                           stack.FusePath(first.value, first.first,
                                          first.count(), sharer, receiver));
          fused.emplace_back(&members, std::move(out));
        }
        return absl::OkStatus();
      }));
  for (const auto& [members, out] : fused) {
    int64_t offset = 0;
    for (const Member& m : *members) {
      RETURN_IF_ERROR(fuser_->ScatterRun(m.call->plan, *m.run, m.call->inputs,
                                         out.narrow(2, offset, m.run->tokens)));
      offset += m.run->tokens;
    }
  }
  // Inputs with a batch dimension of their own, one by one, as FuseLayers.
  for (Pending* call : batch) {
    for (int i : call->plan.one_by_one) {
      const LayerFusionInput& in = call->inputs[i];
      RETURN_IF_ERROR(
          in.positions.has_value()
              ? FuseLayerTokens(in.receiver_layer, in.sharer_keys,
                                in.sharer_values, *in.positions,
                                in.receiver_keys, in.receiver_values)
              : FuseLayer(in.receiver_layer, in.sharer_keys, in.sharer_values,
                          in.receiver_keys, in.receiver_values, in.start));
    }
  }
  return absl::OkStatus();
}

absl::Status RequestFusionBatcher::FuseLayer(int receiver_layer,
                                             const at::Tensor& sharer_keys,
                                             const at::Tensor& sharer_values,
                                             const at::Tensor& receiver_keys,
                                             const at::Tensor& receiver_values,
                                             int64_t start) {
  if (inner_ != nullptr) {
    return inner_->FuseLayer(receiver_layer, sharer_keys, sharer_values,
                             receiver_keys, receiver_values, start);
  }
  return fuser_->FuseLayer(receiver_layer, sharer_keys, sharer_values,
                           receiver_keys, receiver_values, start);
}

absl::Status RequestFusionBatcher::FuseLayerTokens(
    int receiver_layer, const at::Tensor& sharer_keys,
    const at::Tensor& sharer_values, absl::Span<const uint32_t> positions,
    const at::Tensor& receiver_keys, const at::Tensor& receiver_values) {
  if (inner_ != nullptr) {
    return inner_->FuseLayerTokens(receiver_layer, sharer_keys, sharer_values,
                                   positions, receiver_keys, receiver_values);
  }
  return fuser_->FuseLayerTokens(receiver_layer, sharer_keys, sharer_values,
                                 positions, receiver_keys, receiver_values);
}

void InstallRequestFusionBatcher(C2CFuser& fuser, int64_t max_requests,
                                 StepBatchObserver observer) {
  if (max_requests <= 1) return;
  RequestFusionBatcherOptions options;
  options.max_requests = max_requests;
  options.gathering.observer = std::move(observer);
  fuser.SetAccelerator(std::make_shared<RequestFusionBatcher>(
      &fuser, fuser.shared_accelerator(), std::move(options)));
}

}  // namespace kvwire
