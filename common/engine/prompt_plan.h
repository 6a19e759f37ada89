// PromptPlan: what one C2C request prefills and fuses on each side, as data
// (so the receiver session, the services and the in-process pipeline run
// one plan whether or not the pair shares a vocabulary). Pure C++ (no
// Torch).
#ifndef KVWIRE_COMMON_ENGINE_FUSION_PLAN_H_
#define KVWIRE_COMMON_ENGINE_FUSION_PLAN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/tokenizer/token_aligner.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

// What one request prefills and fuses (c2c-spec §1.4, §4). Without token
// alignment both models read the receiver's ids: the sharer prefills
// ids[0, L-1) and its token i is fused into receiver token i, after one
// receiver prefill of the same tokens (SameVocabularyPlan). With alignment
// (common/tokenizer/token_aligner.h, AlignedPromptPlan) each side reads its
// own tokenizer's ids; the padding C2C inserts into the aligned sequence is
// dropped and every real token keeps its aligned position (the same
// computation as C2C's attention masks over padding); only message tokens
// are fused; and the receiver prefills section by section, each message
// section fused before the tokens after it run, as C2C's section loop does.
struct PromptPlan {
  std::vector<int64_t> receiver_ids;        // The receiver's prompt.
  std::vector<int64_t> receiver_positions;  // Empty: 0, 1, ...
  std::vector<int64_t> sharer_ids;          // What the sharer prefills.
  std::vector<int64_t> sharer_positions;    // Empty: 0, 1, ...
  // fuse_into[j]: the receiver token sharer token j is fused into, or -1;
  // one entry per sharer id, increasing where >= 0.
  std::vector<int64_t> fuse_into;
  // The receiver's prefill stages, ascending ends in [0, L - 1]: after the
  // receiver tokens before stage_ends[k] are in the cache, the sharer
  // tokens fused into [stage_ends[k-1], stage_ends[k]) are fused. The
  // tokens after the last end run when generation starts.
  std::vector<int64_t> stage_ends;
};

// The sharer indices the plan fuses (fuse_into >= 0), ascending.
std::vector<uint32_t> FusedSharerIndices(const PromptPlan& plan);
// `spec` for an aligned plan (sharer positions given): a selection of every
// token (SELECTION_ALL or unspecified) becomes the explicit fused indices,
// so the tokens no receiver token reads are not sent. Others are kept.
void RestrictSelectionToFusedTokens(const PromptPlan& plan,
                                    v1::TransferSpec& spec);

// The plan of a pair that shares one vocabulary.
PromptPlan SameVocabularyPlan(std::vector<int64_t> prompt_ids);
// INVALID_ARGUMENT naming the first inconsistency of `plan`.
absl::Status ValidatePromptPlan(const PromptPlan& plan);

// The plan of an aligned conversation (TokenAligner::AlignChatMessages):
// each side's tokens without the padding, at their aligned positions; the
// sharer prefills every section but the last (C2C never runs the sharer on
// the last one); message tokens fuse into their receiver counterparts; one
// stage per message section before the last section. A receiver whose last
// section ends in padding (its generation prompt is the shorter one) starts
// generating from its last real token, where C2C would read the padding
// token's logits.
PromptPlan AlignedPromptPlan(const ChatAlignment& alignment);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_ENGINE_FUSION_PLAN_H_
