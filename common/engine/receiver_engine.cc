// ReceiverEngine: a Decoder, the tokenizer and chat template of the
// receiver's directory, and a C2CFuser; each request is a ReceiverSession.
// The service and the in-process pipeline both load and answer through it,
// so their answers match bit for bit.
#include "common/engine/receiver_engine.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/engine/model_loading.h"
#include "common/file_util.h"
#include "common/fuser/request_fusion_batcher.h"
#include "common/fuser/fuser.h"
#include "common/model/batched_decode.h"
#include "common/model/decoder.h"
#include "common/model/model_family.h"
#include "common/status_macros.h"

#ifdef KVWIRE_WITH_CUDA
#include "common/fuser/cuda_graph_fuser.h"
#endif

namespace kvwire {
namespace {

absl::Status CheckRoles(absl::Span<const ChatMessage> messages) {
  for (const ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown chat role '", m.role, "' (system, user, assistant)"));
    }
  }
  return absl::OkStatus();
}

std::string StripNewlines(const std::string& s) {
  const size_t b = s.find_first_not_of('\n');
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of('\n');
  return s.substr(b, e - b + 1);
}

}  // namespace

ReceiverEngine::ReceiverEngine() = default;
ReceiverEngine::~ReceiverEngine() = default;

ReceiverEngine::KvSlotUsage ReceiverEngine::kv_slots() const {
  const KvSlotPool* pool = decoder_->slot_pool();
  if (pool == nullptr) return {};
  return KvSlotUsage{pool->slots(), pool->in_use()};
}

absl::StatusOr<std::unique_ptr<ReceiverEngine>> ReceiverEngine::Load(
    const ReceiverEngineOptions& options) {
  std::unique_ptr<ReceiverEngine> e(new ReceiverEngine());
  e->chat_template_date_ = options.chat_template_date;
  e->fusion_schedule_ = options.fusion_schedule;
  ASSIGN_OR_RETURN(e->decoder_, LoadModel(options.model));
  e->info_.model = DescribeModel(*e->decoder_, options.model.dir);
  RETURN_IF_ERROR(e->LoadText(options));
  RETURN_IF_ERROR(e->LoadSharerText(options.sharer_tokenizer_dir));
  RETURN_IF_ERROR(e->LoadFuser(options));
  RETURN_IF_ERROR(e->LoadAligner(options));
  const ModelConfig& rc = e->decoder_->config();
  int64_t max_tokens = options.max_prompt_tokens;
  if (rc.max_position_embeddings > 0) {
    max_tokens = std::min<int64_t>(max_tokens, rc.max_position_embeddings);
  }
  e->info_.max_prompt_tokens = std::max<int64_t>(max_tokens, 1);
  return e;
}

absl::Status ReceiverEngine::LoadText(const ReceiverEngineOptions& options) {
  const ModelConfig& rc = decoder_->config();
  const std::string dir =
      options.tokenizer_dir.empty() ? options.model.dir : options.tokenizer_dir;
  if (!IsRegularFile(dir + "/tokenizer.json")) {
    if (!options.require_tokenizer && options.tokenizer_dir.empty()) {
      return absl::OkStatus();
    }
    return absl::NotFoundError(absl::StrCat(
        "no tokenizer.json in ", dir,
        " (copy the model's tokenizer.json and tokenizer_config.json there, "
        "or pass --tokenizer_dir)"));
  }
  ASSIGN_OR_RETURN(tokenizer_, Tokenizer::FromDirectory(dir));
  if (tokenizer_->vocab_size() > rc.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("the tokenizer in ", dir, " has ids up to ",
                     tokenizer_->vocab_size() - 1,
                     " but the model's vocabulary is ", rc.vocab_size));
  }
  receiver_text_.tokenizer = tokenizer_.get();
  info_.tokenizer_vocab_size = tokenizer_->vocab_size();
  if (tokenizer_->chat_template().empty()) {
    if (!options.require_tokenizer) return absl::OkStatus();
    return absl::NotFoundError(
        absl::StrCat("no chat_template in ", dir, "/tokenizer_config.json"));
  }
  ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::FromTokenizer(*tokenizer_));
  info_.chat_template_family = ChatTemplateFamilyName(t.family());
  receiver_text_.chat_template = std::move(t);
  return absl::OkStatus();
}

// The sharer's text model from `dir`: its tokenizer.json (and template), or
// only the template of its tokenizer_config.json over the receiver's
// vocabulary (C2C's pairs share it); empty: the receiver's.
absl::Status ReceiverEngine::LoadSharerText(const std::string& dir) {
  sharer_text_ = receiver_text_;
  if (dir.empty()) return absl::OkStatus();
  if (IsRegularFile(dir + "/tokenizer.json")) {
    ASSIGN_OR_RETURN(sharer_tokenizer_, Tokenizer::FromDirectory(dir));
    sharer_text_.tokenizer = sharer_tokenizer_.get();
    sharer_text_.chat_template.reset();
    if (!sharer_tokenizer_->chat_template().empty()) {
      ASSIGN_OR_RETURN(sharer_text_.chat_template,
                       ChatTemplate::FromTokenizer(*sharer_tokenizer_));
    }
    return absl::OkStatus();
  }
  if (IsRegularFile(dir + "/tokenizer_config.json")) {
    ASSIGN_OR_RETURN(
        sharer_text_.chat_template,
        ChatTemplate::FromTokenizerConfigFile(dir + "/tokenizer_config.json"));
    return absl::OkStatus();
  }
  return absl::NotFoundError(
      absl::StrCat("no tokenizer.json or tokenizer_config.json in ", dir,
                   " (--sharer_tokenizer_dir)"));
}

absl::Status ReceiverEngine::LoadFuser(const ReceiverEngineOptions& options) {
  if (options.fuser_dir.empty()) return absl::OkStatus();
  FuserOptions fo;
  fo.projector.dtype = decoder_->dtype();
  if (options.fuser_dtype != "auto") {
    ASSIGN_OR_RETURN(fo.projector.dtype, ParseModelDtype(options.fuser_dtype));
  }
  fo.projector.device = decoder_->device();
  fo.receiver_layers = static_cast<int>(decoder_->config().num_hidden_layers);
  fo.sharer_layers = options.sharer_layers;
  auto fuser = C2CFuser::Load(options.fuser_dir, fo);
  if (!fuser.ok()) {
    return absl::Status(
        fuser.status().code(),
        absl::StrCat("fuser ", options.fuser_dir, ": ",
                     fuser.status().message(),
                     options.sharer_layers == 0
                         ? " (a checkpoint without projector_config.json "
                           "needs --sharer_layers)"
                         : ""));
  }
  fuser_ = *std::move(fuser);
#ifdef KVWIRE_WITH_CUDA
  // Fusion replays CUDA graphs (KVWIRE_CUDA_GRAPH_FUSE=0: off).
  InstallCudaGraphFuser(*fuser_);
#endif
  InstallRequestFusionBatcher(*fuser_, options.fusion_batch_requests,
                       options.fusion_batch_observer);
  sharer_layers_ = options.sharer_layers;
  const std::vector<int> fused = fuser_->FusedReceiverLayers();
  if (fused.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("fuser ", options.fuser_dir, " fuses no layer"));
  }
  absl::Status fits = CheckFuserFitsReceiver(*fuser_, *decoder_);
  if (!fits.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.fuser_dir, ": ", fits.message()));
  }
  const C2CProjectorArgs& first = fuser_->ProjectorFor(fused.front())->args();
  info_.has_fuser = true;
  info_.fused_receiver_layers = static_cast<int>(fused.size());
  info_.sharer_kv_heads = first.source_num_heads;
  info_.sharer_head_dim = first.source_dim;
  const std::vector<int> needed = fuser_->SharerLayersNeeded();
  info_.sharer_layers_needed = needed.empty() ? 0 : needed.back() + 1;
  return absl::OkStatus();
}

absl::StatusOr<TokenAlignmentMode> ParseTokenAlignmentMode(
    absl::string_view name) {
  if (name == "auto") return TokenAlignmentMode::kAuto;
  if (name == "on") return TokenAlignmentMode::kOn;
  if (name == "off") return TokenAlignmentMode::kOff;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown token alignment mode '", name, "' (auto, on, off)"));
}

absl::Status ReceiverEngine::LoadAligner(const ReceiverEngineOptions& options) {
  const bool recipe_aligns = fuser_ != nullptr &&
                             fuser_->recipe().has_value() &&
                             fuser_->recipe()->is_do_alignment;
  if (sharer_text_.chat_template.has_value()) {
    info_.sharer_chat_template_family =
        ChatTemplateFamilyName(sharer_text_.chat_template->family());
  }
  if (options.token_alignment == TokenAlignmentMode::kOff) {
    if (recipe_aligns) {
      return absl::FailedPreconditionError(absl::StrCat(
          "fuser ", options.fuser_dir,
          " was trained with token alignment (is_do_alignment: true in its "
          "config.json), but token alignment is off (--token_alignment=off): "
          "its answers would not mean anything"));
    }
    return absl::OkStatus();
  }
  if (options.token_alignment == TokenAlignmentMode::kAuto && !recipe_aligns) {
    return absl::OkStatus();
  }
  const std::string why =
      recipe_aligns ? absl::StrCat("fuser ", options.fuser_dir,
                                   " needs token alignment (is_do_alignment: "
                                   "true in its config.json)")
                    : "--token_alignment=on";
  if (sharer_tokenizer_ == nullptr || !sharer_text_.chat_template.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        why,
        ": give the sharer's tokenizer.json and tokenizer_config.json "
        "with its chat template (--sharer_tokenizer_dir=<the sharer "
        "model's directory>)"));
  }
  if (tokenizer_ == nullptr || !receiver_text_.chat_template.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        why, ": the receiver's tokenizer and chat template are needed too"));
  }
  ASSIGN_OR_RETURN(AlignmentStrategy strategy,
                   ParseAlignmentStrategy(options.alignment_strategy.empty()
                                              ? "longest"
                                              : options.alignment_strategy));
  ASSIGN_OR_RETURN(
      TokenAligner aligner,
      TokenAligner::Create(
          {tokenizer_.get(), &*receiver_text_.chat_template},
          {sharer_tokenizer_.get(), &*sharer_text_.chat_template}, strategy));
  aligner_.emplace(std::move(aligner));
  info_.token_alignment = true;
  info_.alignment_strategy = AlignmentStrategyName(strategy);
  return absl::OkStatus();
}

absl::StatusOr<ChatAlignment> ReceiverEngine::AlignMessages(
    absl::Span<const ChatMessage> messages) const {
  if (!aligner_.has_value()) {
    return absl::FailedPreconditionError("token alignment is off");
  }
  RETURN_IF_ERROR(CheckRoles(messages));
  return aligner_->AlignChatMessages(messages, TemplateOptions());
}

absl::StatusOr<PromptPlan> ReceiverEngine::PlanC2C(
    absl::Span<const ChatMessage> messages) const {
  if (!aligner_.has_value()) {
    ASSIGN_OR_RETURN(std::vector<int64_t> ids, RenderPrompt(messages));
    return SameVocabularyPlan(std::move(ids));
  }
  ASSIGN_OR_RETURN(ChatAlignment alignment, AlignMessages(messages));
  return AlignedPromptPlan(alignment);
}

ChatTemplateOptions ReceiverEngine::TemplateOptions() const {
  ChatTemplateOptions o;
  o.add_generation_prompt = true;
  o.enable_thinking = false;
  if (!chat_template_date_.empty()) o.date_string = chat_template_date_;
  return o;
}

absl::StatusOr<std::vector<int64_t>> ReceiverEngine::Render(
    const TextModel& text_model, absl::Span<const ChatMessage> messages) const {
  if (text_model.tokenizer == nullptr ||
      !text_model.chat_template.has_value()) {
    return absl::FailedPreconditionError(
        "no tokenizer with a chat template is loaded: give prompt ids");
  }
  RETURN_IF_ERROR(CheckRoles(messages));
  auto text = text_model.chat_template->Apply(messages, TemplateOptions());
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chat template: ", text.status().message()));
  }
  // The template carries any BOS itself.
  const std::vector<uint32_t> ids =
      text_model.tokenizer->Encode(*text, /*add_special_tokens=*/false);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::string ReceiverEngine::Decode(const TextModel& text_model,
                                   absl::Span<const int64_t> ids,
                                   bool strip_newlines) {
  if (text_model.tokenizer == nullptr) return "";
  std::vector<uint32_t> u;
  u.reserve(ids.size());
  for (int64_t id : ids) {
    if (id >= 0) u.push_back(static_cast<uint32_t>(id));
  }
  std::string text =
      text_model.tokenizer->Decode(u, /*skip_special_tokens=*/true);
  return strip_newlines ? StripNewlines(text) : text;
}

absl::StatusOr<std::vector<int64_t>> ReceiverEngine::RenderPrompt(
    absl::Span<const ChatMessage> messages) const {
  return Render(receiver_text_, messages);
}

std::string ReceiverEngine::DecodeText(absl::Span<const int64_t> ids,
                                       bool strip_newlines) const {
  return Decode(receiver_text_, ids, strip_newlines);
}

absl::StatusOr<std::vector<int64_t>> ReceiverEngine::RenderSharerPrompt(
    absl::Span<const ChatMessage> messages) const {
  return Render(sharer_text_, messages);
}

std::string ReceiverEngine::DecodeSharerText(
    absl::Span<const int64_t> ids) const {
  return Decode(sharer_text_, ids, /*strip_newlines=*/true);
}

absl::Status ReceiverEngine::CheckSharerModel(
    const v1::ModelInfo& sharer) const {
  if (fuser_ == nullptr) return absl::OkStatus();
  const ModelConfig& rc = decoder_->config();
  // A sharer of an unknown family reads the same ids only at the same size.
  auto sharer_family = FindModelFamily(sharer.architecture());
  const bool same_ids =
      sharer_family.ok()
          ? ReadSameTokenIds(GetModelFamily(rc.arch), rc.vocab_size,
                             **sharer_family, sharer.vocab_size())
          : sharer.vocab_size() == static_cast<uint32_t>(rc.vocab_size);
  if (!aligner_.has_value() && !same_ids) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the receiver (", info_.model.architecture(), " '", info_.model.name(),
        "', vocabulary ", rc.vocab_size, ") and the sharer (",
        sharer.architecture(), " '", sharer.name(), "', vocabulary ",
        sharer.vocab_size(),
        ") do not share a vocabulary: C2C between them needs token "
        "alignment (a fuser trained with is_do_alignment, or "
        "--token_alignment=on, with --sharer_tokenizer_dir)"));
  }
  absl::Status st;
  if (sharer_layers_ > 0 &&
      static_cast<int>(sharer.num_layers()) != sharer_layers_) {
    st = absl::InvalidArgumentError(
        absl::StrCat("the fuser's layer map was built for ", sharer_layers_,
                     " sharer layers"));
  } else {
    st = fuser_->CheckModels(static_cast<int>(rc.num_hidden_layers),
                             rc.num_key_value_heads, rc.head_dim,
                             static_cast<int>(sharer.num_layers()),
                             sharer.num_kv_heads(), sharer.head_dim());
  }
  if (st.ok()) return st;
  return absl::FailedPreconditionError(absl::StrCat(
      "the sharer's model (", sharer.architecture(), ", ", sharer.num_layers(),
      " layers of ", sharer.num_kv_heads(), "x", sharer.head_dim(),
      " KV) does not fit the receiver's fuser (reads ",
      info_.sharer_layers_needed, "+ layers of ", info_.sharer_kv_heads, "x",
      info_.sharer_head_dim, "): ", st.message()));
}

absl::StatusOr<std::unique_ptr<ReceiverSession>> ReceiverEngine::NewSession(
    absl::Span<const int64_t> prompt_ids, int64_t max_new_tokens,
    bool fuse) const {
  return NewSession(SameVocabularyPlan(std::vector<int64_t>(prompt_ids.begin(),
                                                            prompt_ids.end())),
                    max_new_tokens, fuse);
}

absl::StatusOr<std::unique_ptr<ReceiverSession>> ReceiverEngine::NewSession(
    PromptPlan plan, int64_t max_new_tokens, bool fuse) const {
  if (fuse && fuser_ == nullptr) {
    return absl::FailedPreconditionError(
        "no C2C fuser is loaded (--fuser_dir)");
  }
  const int64_t vocab = decoder_->config().vocab_size;
  for (size_t i = 0; i < plan.receiver_ids.size(); ++i) {
    if (plan.receiver_ids[i] < 0 || plan.receiver_ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt token ", i, " = ", plan.receiver_ids[i],
          " is outside the receiver's vocabulary [0, ", vocab, ")"));
    }
  }
  SharerModelCheck check;
  if (fuse) {
    check = [this](const v1::ModelInfo& m) { return CheckSharerModel(m); };
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ReceiverSession> session,
                   ReceiverSession::Create(
                       decoder_.get(), fuse ? fuser_.get() : nullptr,
                       std::move(plan), max_new_tokens, std::move(check)));
  session->set_fusion_schedule(fusion_schedule_);
  return session;
}

}  // namespace kvwire
