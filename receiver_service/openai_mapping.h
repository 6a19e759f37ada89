// The OpenAI chat-completions API's JSON mapped onto kvwire.v1 and back, for
// the receiver's HTTP front (openai_http_server.h). Pure functions and one
// small stateful filter; no I/O, no gRPC, no Torch, so every rule is unit
// tested (tests/receiver_service/openai_mapping_test.cc).
//
// A request becomes a v1::AnswerRequest (messages, GenerationParams, mode,
// TransferSpec, fallback, request id) plus what the OpenAI API has and the
// AnswerRequest does not (stream, stream_options.include_usage, stop). The
// `kvwire` extension object carries the transfer spec (proto3 JSON of
// v1::TransferSpec; scheme / granularity / selection mode may also be given
// by their short names, "int4", "head", "back") and the answer mode.
// docs/OPENAI_API.md documents every field.
//
// Errors are absl::Status values; an OpenAI `param` and `code` ride along as
// payloads (WithOpenAiError) and OpenAiHttpError turns a status into the
// HTTP status and OpenAI's error body in one place.
#ifndef KVWIRE_RECEIVER_SERVICE_OPENAI_MAPPING_H_
#define KVWIRE_RECEIVER_SERVICE_OPENAI_MAPPING_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvwire/v1/kvwire.pb.h"
#include "nlohmann/json.hpp"

namespace kvwire {

// A parsed POST /v1/chat/completions body.
struct ChatCompletionRequest {
  // What the receiver runs: messages, generation, mode, spec, fallback,
  // request_id (the `kvwire.request_id`, else empty), trace.
  v1::AnswerRequest answer;
  bool stream = false;
  // stream_options.include_usage: a last chunk with `usage` and no choices.
  bool include_usage = false;
  // Up to 4 non-empty stop sequences; the text ends before the first match.
  std::vector<std::string> stop;
};

// Parses and checks a chat-completions body for the model
// `served_model_name`. Errors (with the offending `param`):
//   INVALID_ARGUMENT  not JSON or not an object; an unknown or unsupported
//                     field (n > 1, tools, logprobs, penalties != 0, ...);
//                     a field of the wrong type or out of range; no
//                     messages; a message role other than system / user /
//                     assistant (developer counts as system); non-text
//                     content parts; max_tokens and max_completion_tokens
//                     that differ; more than 4 stop sequences; an invalid
//                     kvwire object (unknown mode, fallback or spec field).
//   NOT_FOUND         `model` is not `served_model_name` (code
//                     model_not_found).
// The AnswerRequest's own limits (max_new_tokens, text size) are checked
// later by the receiver, as for gRPC.
absl::StatusOr<ChatCompletionRequest> ParseChatCompletionRequest(
    absl::string_view body, absl::string_view served_model_name);

// `status` with the OpenAI error's `param` and `code` attached (either may
// be empty: null in the body).
absl::Status WithOpenAiError(absl::Status status, absl::string_view param,
                             absl::string_view code = "");

// An error as the HTTP API answers it: the HTTP status (400 invalid
// request, 401 bad token, 403, 404 not found, 429 RESOURCE_EXHAUSTED, 499
// cancelled, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, 500 otherwise) and
// {"error":{"message","type","param","code"}}.
struct OpenAiError {
  int http_status = 500;
  nlohmann::json body;
};
OpenAiError OpenAiErrorFromStatus(const absl::Status& status);

// The name GET /v1/models lists and requests must use, from the
// --model_dir flag as given: a Hugging Face id (OWNER/NAME, without
// @REVISION) stays as it is, a directory becomes its base name.
std::string ServedModelNameFor(absl::string_view model_dir_flag,
                               bool is_local_directory);

// GET /v1/models.
nlohmann::json ModelListJson(absl::string_view model, int64_t created);

// What a finished answer reports besides its text.
struct CompletionInfo {
  std::string id;  // "chatcmpl-..."
  int64_t created = 0;
  std::string model;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  // "stop" (end of sequence or a stop sequence) or "length".
  std::string finish_reason = "stop";
};

// "length" when the answer used all of `max_new_tokens` (0: the default)
// and no stop sequence cut it, "stop" otherwise.
std::string FinishReasonFor(const v1::AnswerResponse& response,
                            uint32_t max_new_tokens, bool stop_sequence_hit);

// {"prompt_tokens","completion_tokens","total_tokens"}.
nlohmann::json UsageJson(const CompletionInfo& info);

// The response's `kvwire` object: request_id, mode, fell_back,
// fallback_reason, token_ids (the generated ids), transfer
// (v1::TransferReport as proto3 JSON), timings (v1::StageTimings), for
// text-to-text background_text, and with kvwire.trace the trace.
nlohmann::json KvwireReportJson(const v1::AnswerResponse& response);

// A non-streamed answer: object "chat.completion".
nlohmann::json ChatCompletionJson(const CompletionInfo& info,
                                  const std::string& text,
                                  const v1::AnswerResponse& response);

// One "chat.completion.chunk". `content` and `finish_reason` may be empty
// (absent / null); `first` adds role "assistant" to the delta. The chunk
// with the finish_reason also gets the `kvwire` report (the server adds it).
nlohmann::json ChatCompletionChunkJson(const CompletionInfo& info,
                                       const std::string& content, bool first,
                                       const std::string& finish_reason);

// stream_options.include_usage: the chunk after the finish_reason one, with
// empty choices and `usage`.
nlohmann::json UsageChunkJson(const CompletionInfo& info);

// Cuts generated text at the first stop sequence. Text arrives in deltas
// (one per token while streaming, or all at once); Push returns the part
// that can be shown now, holding back a tail that might still begin a stop
// sequence. Not thread-safe (one per answer).
class StopSequenceFilter {
 public:
  explicit StopSequenceFilter(std::vector<std::string> stop);

  // The text that is safe to emit after `delta` (empty once stopped).
  std::string Push(absl::string_view delta);
  // The held-back tail at the end of generation (empty once stopped).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  const std::vector<std::string> stop_;
  size_t longest_ = 0;
  std::string pending_;
  bool stopped_ = false;
};

// Makes streamed text equal the non-streamed answer, whose leading and
// trailing newlines the receiver strips (AnswerResponse.text): drops the
// leading ones and holds trailing ones until more text follows. Not
// thread-safe (one per answer).
class NewlineTrimmer {
 public:
  // The text to emit after `delta`.
  std::string Push(absl::string_view delta);

 private:
  bool started_ = false;
  std::string held_newlines_;
};

}  // namespace kvwire

#endif  // KVWIRE_RECEIVER_SERVICE_OPENAI_MAPPING_H_
