// A deterministic AnswerBackend for runner tests: answers from a hash of the
// request, bytes from the spec, optional failure after N calls, and a log
// of every answer it gave (to compare with what was written).
#ifndef KVWIRE_TESTS_TOOLS_EVAL_FAKE_BACKEND_H_
#define KVWIRE_TESTS_TOOLS_EVAL_FAKE_BACKEND_H_

#include <map>
#include <string>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tools/eval/backend.h"

namespace kvwire {
namespace eval {
namespace testing {

class FakeBackend : public AnswerBackend {
 public:
  explicit FakeBackend(std::string kind = "fake") : kind_(std::move(kind)) {}

  std::string kind() const override { return kind_; }
  std::string Describe() const override { return "fake backend"; }
  BackendLayout layout() const override {
    BackendLayout l;
    l.receiver_layers = 4;
    l.sharer_layers = 3;
    l.layer_map = {0, 0, 1, 2};
    return l;
  }

  absl::StatusOr<BackendAnswer> Answer(const BackendRequest& r) override {
    if (fail_after_ >= 0 && calls_ >= fail_after_) {
      return absl::UnavailableError("fake backend went away");
    }
    ++calls_;
    BackendAnswer a;
    const size_t h = absl::HashOf(r.request_id);
    const char letter = static_cast<char>('A' + h % 4);
    a.text = absl::StrCat("The correct answer is ", std::string(1, letter));
    a.token_ids.assign(5 + h % 3, 7);
    a.prompt_tokens = 100 + static_cast<int64_t>(h % 17);
    a.timings.set_total_seconds(0.01 * static_cast<double>(1 + h % 5));
    if (r.method == EvalMethod::kC2C) {
      const double p = r.spec.selection().proportion() > 0
                           ? r.spec.selection().proportion()
                           : 1.0;
      const uint64_t per_token = r.spec.scheme() == v1::SCHEME_INT4   ? 8
                                 : r.spec.scheme() == v1::SCHEME_BF16 ? 32
                                                                      : 16;
      a.has_transfer = true;
      v1::TransferReport& t = a.transfer;
      t.set_prompt_tokens(static_cast<uint32_t>(a.prompt_tokens - 1));
      t.set_tokens_sent(static_cast<uint32_t>(3 * p * (a.prompt_tokens - 1)));
      t.set_layers_sent(3);
      t.set_payload_bytes(per_token * t.tokens_sent());
      t.set_scale_bytes(48);
      t.set_index_bytes(p < 1 ? 30 : 0);
      t.set_header_bytes(200 + h % 11);
      t.set_serialized_bytes(t.payload_bytes() + t.scale_bytes() +
                             t.index_bytes() + t.header_bytes());
      t.set_wire_bytes(t.serialized_bytes() + 5 * 5);
      t.set_raw_kv_bytes(32 * 3 * (a.prompt_tokens - 1));
      a.chunks = 5;
      a.timings.set_encode_seconds(0.001);
    }
    if (r.method == EvalMethod::kTextToText) {
      a.background_text = std::string(40 + h % 9, 'x');
      a.text_bytes = a.background_text.size();
    }
    answers_[r.request_id] = a;
    return a;
  }

  void set_fail_after(int n) { fail_after_ = n; }
  int calls() const { return calls_; }
  const std::map<std::string, BackendAnswer>& answers() const {
    return answers_;
  }

 private:
  std::string kind_;
  int calls_ = 0;
  int fail_after_ = -1;
  std::map<std::string, BackendAnswer> answers_;
};

}  // namespace testing
}  // namespace eval
}  // namespace kvwire

#endif  // KVWIRE_TESTS_TOOLS_EVAL_FAKE_BACKEND_H_
