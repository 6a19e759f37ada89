#include "common/engine/prompt_plan.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvwire {

PromptPlan SameVocabularyPlan(std::vector<int64_t> prompt_ids) {
  PromptPlan plan;
  const int64_t fused =
      std::max<int64_t>(static_cast<int64_t>(prompt_ids.size()) - 1, 0);
  plan.sharer_ids.assign(prompt_ids.begin(), prompt_ids.begin() + fused);
  plan.fuse_into.resize(fused);
  for (int64_t j = 0; j < fused; ++j) plan.fuse_into[j] = j;
  plan.stage_ends = {fused};
  plan.receiver_ids = std::move(prompt_ids);
  return plan;
}

absl::Status ValidatePromptPlan(const PromptPlan& plan) {
  const int64_t n = static_cast<int64_t>(plan.receiver_ids.size());
  const int64_t m = static_cast<int64_t>(plan.sharer_ids.size());
  if (n == 0) return absl::InvalidArgumentError("empty prompt");
  auto increasing = [](const std::vector<int64_t>& v) {
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] < 0 || (i > 0 && v[i] <= v[i - 1])) return false;
    }
    return true;
  };
  if ((!plan.receiver_positions.empty() &&
       static_cast<int64_t>(plan.receiver_positions.size()) != n) ||
      (!plan.sharer_positions.empty() &&
       static_cast<int64_t>(plan.sharer_positions.size()) != m)) {
    return absl::InvalidArgumentError(
        "fusion plan: positions must be empty or one per token");
  }
  if (!increasing(plan.receiver_positions) ||
      !increasing(plan.sharer_positions)) {
    return absl::InvalidArgumentError(
        "fusion plan: positions must be non-negative and increase strictly");
  }
  if (static_cast<int64_t>(plan.fuse_into.size()) != m) {
    return absl::InvalidArgumentError(
        "fusion plan: fuse_into needs one entry per sharer token");
  }
  int64_t last = -1;
  for (int64_t r : plan.fuse_into) {
    if (r < 0) continue;
    if (r <= last || r >= n - 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "fusion plan: sharer tokens must fuse into increasing receiver "
          "tokens before the last one; got ",
          r, " after ", last, " of ", n));
    }
    last = r;
  }
  if (plan.stage_ends.empty() || plan.stage_ends.back() > n - 1 ||
      !std::is_sorted(plan.stage_ends.begin(), plan.stage_ends.end()) ||
      plan.stage_ends.front() < 0 || last >= plan.stage_ends.back()) {
    return absl::InvalidArgumentError(
        "fusion plan: stage ends must ascend within [0, L - 1] and cover "
        "every fused token");
  }
  return absl::OkStatus();
}

std::vector<uint32_t> FusedSharerIndices(const PromptPlan& plan) {
  std::vector<uint32_t> out;
  for (size_t j = 0; j < plan.fuse_into.size(); ++j) {
    if (plan.fuse_into[j] >= 0) out.push_back(static_cast<uint32_t>(j));
  }
  return out;
}

void RestrictSelectionToFusedTokens(const PromptPlan& plan,
                                    v1::TransferSpec& spec) {
  if (plan.sharer_positions.empty()) return;
  const v1::SelectionMode mode = spec.selection().mode();
  if (mode != v1::SELECTION_ALL && mode != v1::SELECTION_UNSPECIFIED) return;
  v1::TokenSelection* selection = spec.mutable_selection();
  selection->Clear();
  selection->set_mode(v1::SELECTION_EXPLICIT);
  for (uint32_t j : FusedSharerIndices(plan)) selection->add_indices(j);
}

PromptPlan AlignedPromptPlan(const ChatAlignment& alignment) {
  PromptPlan plan;
  const int64_t length = static_cast<int64_t>(alignment.receiver_ids.size());
  // The sharer runs every section but the last.
  const int64_t sharer_end =
      alignment.sections.empty() ? 0 : alignment.sections.back().begin;
  std::vector<int64_t> receiver_index(length, -1);
  for (int64_t i = 0; i < length; ++i) {
    if (alignment.receiver_padding[i]) continue;
    receiver_index[i] = static_cast<int64_t>(plan.receiver_ids.size());
    plan.receiver_ids.push_back(alignment.receiver_ids[i]);
    plan.receiver_positions.push_back(i);
  }
  for (int64_t i = 0; i < sharer_end; ++i) {
    if (alignment.sharer_padding[i]) continue;
    plan.sharer_ids.push_back(alignment.sharer_ids[i]);
    plan.sharer_positions.push_back(i);
    // Message tokens are never padding on either side.
    plan.fuse_into.push_back(alignment.message_mask[i] ? receiver_index[i]
                                                       : -1);
  }
  for (size_t k = 0; k + 1 < alignment.sections.size(); ++k) {
    const ChatAlignment::Section& s = alignment.sections[k];
    if (!s.message || s.end <= s.begin) continue;
    plan.stage_ends.push_back(receiver_index[s.end - 1] + 1);
  }
  if (plan.stage_ends.empty()) {
    // Nothing to fuse: one stage of everything but the receiver's last
    // token, as without alignment.
    plan.stage_ends.push_back(std::max<int64_t>(
        static_cast<int64_t>(plan.receiver_ids.size()) - 1, 0));
  }
  return plan;
}

}  // namespace kvwire
