// The client side of the OpenAI chat-completions wire format, as kvwire-load's
// OpenAI mode speaks it to /v1/chat/completions (kvwire-receiver's HTTP
// endpoint or any OpenAI-compatible server): the streaming request body, the
// Server-Sent Events framing of the response ("data: {...}" events ending
// with "data: [DONE]"), the chat.completion.chunk JSON inside each event, and
// an accumulator that turns the timed stream into what the load report needs
// (time to first token, the gaps between tokens, the token count, errors).
// kvwire-receiver's extension is optional on both sides: a request may carry
// a "kvwire" object (transfer spec, answer mode), and the chunk with the
// finish_reason may carry a "kvwire" report whose transfer bytes are read.
// Pure parsing, no I/O; unit-tested in load_tests/tests/openai_chat_test.cc.
#ifndef KVWIRE_LOAD_TESTS_OPENAI_CHAT_H_
#define KVWIRE_LOAD_TESTS_OPENAI_CHAT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {
namespace load {

struct ChatRequestOptions {
  std::string model;     // The request's "model".
  std::string question;  // One user message.
  std::string system;    // Optional system message ("" for none).
  uint32_t max_tokens = 16;
  double temperature = 0;  // Greedy by default, as kvwire's requests.
  // Ask for a final usage chunk ("stream_options": {"include_usage": true}),
  // which gives the exact completion token count.
  bool include_usage = true;
  // kvwire-receiver's extension: {"kvwire": {"spec": <TransferSpec as
  // proto3 JSON>, "mode": "c2c" | "receiver-only" | ..., "request_id"}}.
  // Off for other OpenAI-compatible servers, which refuse unknown fields.
  bool kvwire_extension = false;
  v1::TransferSpec spec;
  v1::AnswerMode mode = v1::ANSWER_MODE_C2C;
  std::string request_id;
};

// The JSON body of a streaming chat.completions request.
std::string BuildChatCompletionRequest(const ChatRequestOptions& options);

// One Server-Sent Event: its "event" name ("" for the default "message")
// and its data lines joined by '\n'.
struct SseEvent {
  std::string event;
  std::string data;
};

// Splits an SSE stream into events as bytes arrive, in pieces of any size
// (WHATWG HTML "Server-sent events": lines end with LF, CRLF or CR, a blank
// line dispatches, "data:" lines accumulate, ':' lines are comments, one
// space after the colon is dropped; "id" and "retry" are ignored). Bounded:
// an event over kMaxEventBytes is refused.
class SseParser {
 public:
  static constexpr size_t kMaxEventBytes = 4 << 20;

  // Appends the events completed by `bytes` to `events`. INVALID_ARGUMENT
  // when an event or line exceeds kMaxEventBytes.
  absl::Status Feed(absl::string_view bytes, std::vector<SseEvent>* events);

 private:
  absl::Status Line(absl::string_view line, std::vector<SseEvent>* events);
  std::string line_;
  bool last_was_cr_ = false;  // A CR ended the last line: skip a next LF.
  SseEvent pending_;
  bool has_data_ = false;
};

// What one chat.completion.chunk (or an error event) says.
struct ChatChunk {
  std::string content;        // choices[0].delta.content ("" if none).
  std::string finish_reason;  // choices[0].finish_reason ("" while null).
  // usage.completion_tokens / prompt_tokens when the chunk carries usage.
  std::optional<int64_t> completion_tokens;
  std::optional<int64_t> prompt_tokens;
  // An {"error": {...}} object in the stream: its message (and type).
  std::string error;
  // kvwire-receiver's report ("kvwire": {"transfer": {...}, "fell_back"}).
  std::optional<v1::TransferReport> transfer;
  bool fell_back = false;
};

// Parses one event's data. INVALID_ARGUMENT for text that is not a JSON
// object or has fields of the wrong type.
absl::StatusOr<ChatChunk> ParseChatCompletionChunk(absl::string_view data);

// The first model id of a GET /v1/models body ({"data": [{"id": ...}]}).
// INVALID_ARGUMENT for another shape, NOT_FOUND for an empty list.
absl::StatusOr<std::string> FirstModelId(absl::string_view body);

// The error message of a non-2xx response body ({"error": {"message": ...}}
// as OpenAI sends it), else the body's first 200 bytes.
std::string ErrorMessageFromBody(absl::string_view body);

// Follows one streamed response: feed it body bytes with the time they
// arrived; it records when each content-bearing chunk arrived. One chunk is
// counted as one token for the inter-token gaps (OpenAI-compatible servers
// send one token per chunk; a server that batches tokens shows larger
// gaps, which is what a client sees).
class ChatStreamAccumulator {
 public:
  // `now` is seconds on the caller's clock. Errors: INVALID_ARGUMENT for
  // malformed SSE or JSON, and for data after [DONE].
  absl::Status Feed(absl::string_view bytes, double now);

  bool done() const { return done_; }  // "data: [DONE]" seen.
  // Arrival times of the chunks with content, in order.
  const std::vector<double>& token_times() const { return token_times_; }
  // usage.completion_tokens when the server sent usage, else the number of
  // content-bearing chunks.
  int64_t completion_tokens() const;
  int64_t prompt_tokens() const { return prompt_tokens_; }
  const std::string& finish_reason() const { return finish_reason_; }
  const std::string& error() const { return error_; }  // In-stream error.
  const std::string& text() const { return text_; }
  // kvwire-receiver's transfer report, when the server sent one.
  const std::optional<v1::TransferReport>& transfer() const {
    return transfer_;
  }
  bool fell_back() const { return fell_back_; }

 private:
  SseParser parser_;
  std::vector<SseEvent> events_;
  std::vector<double> token_times_;
  std::optional<int64_t> usage_completion_tokens_;
  int64_t prompt_tokens_ = 0;
  std::string finish_reason_;
  std::string error_;
  std::string text_;
  std::optional<v1::TransferReport> transfer_;
  bool fell_back_ = false;
  bool done_ = false;
};

// The gaps between consecutive times (seconds; empty for fewer than two).
std::vector<double> InterTokenGaps(const std::vector<double>& token_times);

}  // namespace load
}  // namespace kvwire

#endif  // KVWIRE_LOAD_TESTS_OPENAI_CHAT_H_
