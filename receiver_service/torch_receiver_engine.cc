// The LibTorch ReceiverEngine: a Decoder, the tokenizer and chat template of
// the receiver's directory, and a C2CFuser; each request is a
// ReceiverSession (common/pipeline/receiver_session.h), the same engine
// C2cPipeline drives in process, so answers match it bit for bit.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/fuser/fuser.h"
#include "common/pipeline/pipeline.h"
#include "common/pipeline/receiver_session.h"
#include "common/pipeline/selection.h"
#include "common/status_macros.h"
#include "receiver_service/receiver_engine.h"

#ifdef KVWIRE_WITH_CUDA
#include "common/fuser/cuda_graph_fuser.h"
#include "common/model/cuda_graph_decoder.h"
#endif
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "receiver_service/receiver_engine.h"

namespace kvwire {
namespace {

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string StripNewlines(const std::string& s) {
  const size_t b = s.find_first_not_of('\n');
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of('\n');
  return s.substr(b, e - b + 1);
}

class TorchReceiverEngine;

class TorchAnswerSession final : public AnswerSession {
 public:
  TorchAnswerSession(const TorchReceiverEngine* engine,
                     std::unique_ptr<ReceiverSession> session)
      : engine_(engine), session_(std::move(session)) {}

  int64_t fused_length() const override { return session_->fused_length(); }

  std::vector<uint32_t> share_token_ids() const override {
    const absl::Span<const int64_t> ids = session_->share_token_ids();
    return std::vector<uint32_t>(ids.begin(), ids.end());
  }

  absl::Status Prefill() override { return session_->Prefill(); }

  absl::StatusOr<v1::TokenSelection> GuidedSelection(
      const v1::TokenSelection& requested, GuidedSignal signal) override {
    ASSIGN_OR_RETURN(at::Tensor scores,
                     session_->GuidedScores(signal == GuidedSignal::kAttention
                                                ? ReceiverSignal::kAttention
                                                : ReceiverSignal::kValueNorm));
    // Only proportion and min_tokens of the request count (as in
    // C2cPipeline's receiver-guided strategies).
    v1::TokenSelection base;
    base.set_proportion(requested.proportion());
    base.set_min_tokens(requested.min_tokens());
    return ExplicitSelectionFromScores(
        base, static_cast<uint32_t>(session_->fused_length()), scores);
  }

  absl::Status AddChunk(const v1::KvChunk& chunk) override;

  absl::StatusOr<ReceivedStream> FinishStream() override {
    RETURN_IF_ERROR(session_->FinishStream());
    ReceivedStream r;
    r.header = session_->stream().header();
    if (session_->stream().stats().has_value()) {
      r.trailer = *session_->stream().stats();
    }
    r.fused_receiver_layers = session_->FusedLayers();
    return r;
  }

  absl::StatusOr<std::vector<int64_t>> Generate(
      const v1::GenerationParams& params, const TokenSink& on_token,
      const std::function<absl::Status()>& should_stop) override {
    TokenCallback callback;
    if (on_token) callback = on_token;
    ASSIGN_OR_RETURN(
        GenerationResult g,
        session_->Generate(ToGenerationOptions(params), callback, should_stop));
    return std::move(g.tokens);
  }

  AnswerSessionTimings timings() const override {
    const ReceiverTimings& t = session_->timings();
    AnswerSessionTimings out;
    out.prefill_seconds = t.prefill_seconds;
    out.scores_seconds = t.scores_seconds;
    out.decode_seconds = t.decode_seconds;
    out.fuse_seconds = t.fuse_seconds;
    out.ttft_seconds = t.ttft_seconds;
    out.generation_seconds = t.generation_seconds;
    return out;
  }

  void set_trace(RequestTrace* trace) override { session_->set_trace(trace); }

 private:
  const TorchReceiverEngine* engine_;
  std::unique_ptr<ReceiverSession> session_;
  bool header_checked_ = false;
};

class TorchReceiverEngine final : public ReceiverEngine {
 public:
  static absl::StatusOr<std::unique_ptr<TorchReceiverEngine>> Load(
      const ReceiverEngineOptions& options);

  const ReceiverModelInfo& info() const override { return info_; }

  absl::StatusOr<std::vector<uint32_t>> RenderPrompt(
      absl::Span<const ChatMessage> messages) const override {
    return Render(receiver_text_, messages);
  }

  std::string DecodeText(absl::Span<const int64_t> ids,
                         bool strip_newlines) const override {
    return Decode(receiver_text_, ids, strip_newlines);
  }

  absl::StatusOr<std::vector<uint32_t>> RenderSharerPrompt(
      absl::Span<const ChatMessage> messages) const override {
    return Render(sharer_text_, messages);
  }

  std::string DecodeSharerText(absl::Span<const int64_t> ids) const override {
    return Decode(sharer_text_, ids, /*strip_newlines=*/true);
  }

  absl::Status CheckSharerModel(const v1::ModelInfo& sharer) const override {
    if (fuser_ == nullptr) return absl::OkStatus();
    const ModelConfig& rc = decoder_->config();
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
        "the sharer's model (", sharer.architecture(), ", ",
        sharer.num_layers(), " layers of ", sharer.num_kv_heads(), "x",
        sharer.head_dim(), " KV) does not fit the receiver's fuser (reads ",
        info_.sharer_layers_needed, "+ layers of ", info_.sharer_kv_heads, "x",
        info_.sharer_head_dim, "): ", st.message()));
  }

  absl::StatusOr<std::unique_ptr<AnswerSession>> NewSession(
      absl::Span<const uint32_t> prompt_ids, int64_t max_new_tokens,
      bool fuse) const override {
    if (fuse && fuser_ == nullptr) {
      return absl::FailedPreconditionError(
          "no C2C fuser is loaded (--fuser_dir)");
    }
    const int64_t vocab = decoder_->config().vocab_size;
    std::vector<int64_t> ids;
    ids.reserve(prompt_ids.size());
    for (size_t i = 0; i < prompt_ids.size(); ++i) {
      if (static_cast<int64_t>(prompt_ids[i]) >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat(
            "prompt token ", i, " = ", prompt_ids[i],
            " is outside the receiver's vocabulary [0, ", vocab, ")"));
      }
      ids.push_back(prompt_ids[i]);
    }
    ASSIGN_OR_RETURN(
        auto session,
        ReceiverSession::Create(decoder_.get(), fuse ? fuser_.get() : nullptr,
                                std::move(ids), max_new_tokens));
    return std::unique_ptr<AnswerSession>(
        new TorchAnswerSession(this, std::move(session)));
  }

 private:
  TorchReceiverEngine() = default;

  // A tokenizer and its chat template: the receiver's, or the sharer's for
  // the text-to-text background prompt.
  struct TextModel {
    const Tokenizer* tokenizer = nullptr;
    std::optional<ChatTemplate> chat_template;
  };

  static absl::StatusOr<std::vector<uint32_t>> Render(
      const TextModel& text_model, absl::Span<const ChatMessage> messages) {
    if (!text_model.chat_template.has_value()) {
      return absl::FailedPreconditionError(
          "the tokenizer has no chat template");
    }
    for (const ChatMessage& m : messages) {
      if (m.role != "system" && m.role != "user" && m.role != "assistant") {
        return absl::InvalidArgumentError(absl::StrCat(
            "unknown chat role '", m.role, "' (system, user, assistant)"));
      }
    }
    ChatTemplateOptions o;
    o.add_generation_prompt = true;
    o.enable_thinking = false;
    auto text = text_model.chat_template->Apply(messages, o);
    if (!text.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("chat template: ", text.status().message()));
    }
    // The template carries any BOS itself.
    return text_model.tokenizer->Encode(*text, /*add_special_tokens=*/false);
  }

  static std::string Decode(const TextModel& text_model,
                            absl::Span<const int64_t> ids,
                            bool strip_newlines) {
    std::vector<uint32_t> u;
    u.reserve(ids.size());
    for (int64_t id : ids) {
      if (id >= 0) u.push_back(static_cast<uint32_t>(id));
    }
    std::string text =
        text_model.tokenizer->Decode(u, /*skip_special_tokens=*/true);
    return strip_newlines ? StripNewlines(text) : text;
  }

  // The sharer's text model as C2cPipeline builds it from
  // `sharer_tokenizer_dir`: its tokenizer.json (and template), or only the
  // template of its tokenizer_config.json over the receiver's vocabulary.
  absl::Status LoadSharerText(const std::string& dir) {
    sharer_text_.tokenizer = tokenizer_.get();
    sharer_text_.chat_template = receiver_text_.chat_template;
    if (dir.empty()) return absl::OkStatus();
    if (FileExists(dir + "/tokenizer.json")) {
      ASSIGN_OR_RETURN(sharer_tokenizer_, Tokenizer::FromDirectory(dir));
      if (sharer_tokenizer_->vocab_size() > tokenizer_->vocab_size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the sharer tokenizer in ", dir, " has ids up to ",
            sharer_tokenizer_->vocab_size() - 1,
            " beyond the receiver tokenizer's ", tokenizer_->vocab_size()));
      }
      sharer_text_.tokenizer = sharer_tokenizer_.get();
      if (!sharer_tokenizer_->chat_template().empty()) {
        ASSIGN_OR_RETURN(sharer_text_.chat_template,
                         ChatTemplate::FromTokenizer(*sharer_tokenizer_));
      }
      return absl::OkStatus();
    }
    if (FileExists(dir + "/tokenizer_config.json")) {
      // Same vocabulary (C2C's pairs share it), the sharer's own template.
      ASSIGN_OR_RETURN(sharer_text_.chat_template,
                       ChatTemplate::FromTokenizerConfigFile(
                           dir + "/tokenizer_config.json"));
      return absl::OkStatus();
    }
    return absl::NotFoundError(
        absl::StrCat("no tokenizer.json or tokenizer_config.json in ", dir,
                     " (--sharer_tokenizer_dir)"));
  }

  std::unique_ptr<Decoder> decoder_;
  std::unique_ptr<C2CFuser> fuser_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Tokenizer> sharer_tokenizer_;
  TextModel receiver_text_;
  TextModel sharer_text_;
  int sharer_layers_ = 0;
  ReceiverModelInfo info_;
};

absl::Status TorchAnswerSession::AddChunk(const v1::KvChunk& chunk) {
  if (!header_checked_ && chunk.has_header()) {
    // Before anything of the stream is used: a sharer whose shapes the
    // fuser cannot read is refused here, not half-way through a cache.
    RETURN_IF_ERROR(engine_->CheckSharerModel(chunk.header().model()));
    header_checked_ = true;
  }
  return session_->AddChunk(chunk);
}

absl::StatusOr<std::unique_ptr<TorchReceiverEngine>> TorchReceiverEngine::Load(
    const ReceiverEngineOptions& options) {
  if (options.model_dir.empty()) {
    return absl::InvalidArgumentError("no model directory given (--model_dir)");
  }
  ASSIGN_OR_RETURN(c10::Device device, ParseModelDevice(options.device));
  at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  if (options.dtype != "auto") {
    ASSIGN_OR_RETURN(dtype, ParseModelDtype(options.dtype));
  }
  if (options.intra_op_threads > 0) {
    at::set_num_threads(options.intra_op_threads);
  }
  std::unique_ptr<TorchReceiverEngine> e(new TorchReceiverEngine());
  DecoderOptions decoder_options;
  decoder_options.dtype = dtype;
  decoder_options.device = device;
  ASSIGN_OR_RETURN(e->decoder_,
                   Decoder::Load(options.model_dir, decoder_options));
#ifdef KVWIRE_WITH_CUDA
  // Prompt prefills and decode steps replay CUDA graphs, decode steps
  // batched across requests (KVWIRE_CUDA_GRAPH_PREFILL=0 /
  // KVWIRE_CUDA_GRAPH_DECODE=0: off).
  CudaGraphInstallOptions graphs;
  graphs.batch_slots = options.decode_batch_slots;
  graphs.slot_capacity = options.decode_slot_capacity;
  RETURN_IF_ERROR(InstallCudaGraphAccelerators(*e->decoder_, graphs));
#endif
  const ModelConfig& rc = e->decoder_->config();
  e->info_.model = DescribeModel(*e->decoder_, options.model_dir);

  // Tokenizer and chat template.
  const std::string tok_dir =
      options.tokenizer_dir.empty() ? options.model_dir : options.tokenizer_dir;
  if (!FileExists(tok_dir + "/tokenizer.json")) {
    return absl::NotFoundError(absl::StrCat(
        "no tokenizer.json in ", tok_dir,
        " (copy the model's tokenizer.json and tokenizer_config.json there, "
        "or pass --tokenizer_dir)"));
  }
  ASSIGN_OR_RETURN(e->tokenizer_, Tokenizer::FromDirectory(tok_dir));
  if (e->tokenizer_->vocab_size() > rc.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("the tokenizer in ", tok_dir, " has ids up to ",
                     e->tokenizer_->vocab_size() - 1,
                     " but the model's vocabulary is ", rc.vocab_size));
  }
  if (e->tokenizer_->chat_template().empty()) {
    return absl::NotFoundError(absl::StrCat("no chat_template in ", tok_dir,
                                            "/tokenizer_config.json"));
  }
  ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::FromTokenizer(*e->tokenizer_));
  e->info_.chat_template_family = ChatTemplateFamilyName(t.family());
  e->receiver_text_.tokenizer = e->tokenizer_.get();
  e->receiver_text_.chat_template = std::move(t);
  e->info_.tokenizer_vocab_size = e->tokenizer_->vocab_size();
  RETURN_IF_ERROR(e->LoadSharerText(options.sharer_tokenizer_dir));

  // Fuser.
  if (!options.fuser_dir.empty()) {
    FuserOptions fo;
    fo.projector.dtype = dtype;
    fo.projector.device = device;
    fo.receiver_layers = static_cast<int>(rc.num_hidden_layers);
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
    e->fuser_ = *std::move(fuser);
#ifdef KVWIRE_WITH_CUDA
    // Fusion replays CUDA graphs (KVWIRE_CUDA_GRAPH_FUSE=0: off).
    InstallCudaGraphFuser(*e->fuser_);
#endif
    e->sharer_layers_ = options.sharer_layers;
    const std::vector<int> fused = e->fuser_->FusedReceiverLayers();
    if (fused.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("fuser ", options.fuser_dir, " fuses no layer"));
    }
    for (int t : fused) {
      const C2CProjectorArgs& a = e->fuser_->ProjectorFor(t)->args();
      if (t >= rc.num_hidden_layers ||
          a.target_num_heads != rc.num_key_value_heads ||
          a.target_dim != rc.head_dim) {
        return absl::InvalidArgumentError(absl::StrCat(
            "fuser ", options.fuser_dir, ": receiver layer ", t, " writes ",
            a.target_num_heads, "x", a.target_dim, " but the receiver has ",
            rc.num_hidden_layers, " layers of ", rc.num_key_value_heads, "x",
            rc.head_dim));
      }
    }
    const C2CProjectorArgs& first =
        e->fuser_->ProjectorFor(fused.front())->args();
    e->info_.has_fuser = true;
    e->info_.fused_receiver_layers = static_cast<int>(fused.size());
    e->info_.sharer_kv_heads = first.source_num_heads;
    e->info_.sharer_head_dim = first.source_dim;
    const std::vector<int> needed = e->fuser_->SharerLayersNeeded();
    e->info_.sharer_layers_needed = needed.empty() ? 0 : needed.back() + 1;
  }
  int64_t max_tokens = options.max_prompt_tokens;
  if (rc.max_position_embeddings > 0) {
    max_tokens = std::min<int64_t>(max_tokens, rc.max_position_embeddings);
  }
  e->info_.max_prompt_tokens = std::max<int64_t>(max_tokens, 1);
  return e;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReceiverEngine>> LoadReceiverEngine(
    const ReceiverEngineOptions& options) {
  ASSIGN_OR_RETURN(auto engine, TorchReceiverEngine::Load(options));
  return std::unique_ptr<ReceiverEngine>(std::move(engine));
}

}  // namespace kvwire
