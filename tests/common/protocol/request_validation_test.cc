// ShareRequest validation and the model fingerprint (no model, no network).
#include "common/protocol/request_validation.h"

#include <string>

#include "common/model/model_fingerprint.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

v1::SharerInfo Info() {
  v1::SharerInfo info;
  v1::ModelInfo* m = info.mutable_model();
  m->set_fingerprint("abc");
  m->set_name("tiny");
  m->set_num_layers(4);
  m->set_num_kv_heads(2);
  m->set_head_dim(16);
  m->set_vocab_size(100);
  m->set_dtype(v1::DTYPE_FP32);
  info.set_max_prompt_tokens(50);
  return info;
}

v1::ShareRequest Request(int tokens) {
  v1::ShareRequest r;
  for (int i = 0; i < tokens; ++i) r.add_token_ids(i % 100);
  return r;
}

void ExpectError(const v1::ShareRequest& r, absl::StatusCode code,
                 const std::string& message) {
  const absl::Status s = ValidateShareRequest(r, Info());
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(message));
}

TEST(RequestValidationTest, AcceptsAGoodRequest) {
  EXPECT_TRUE(ValidateShareRequest(Request(50), Info()).ok());
}

TEST(RequestValidationTest, PromptLimits) {
  ExpectError(Request(0), absl::StatusCode::kInvalidArgument,
              "token_ids is empty");
  ExpectError(Request(51), absl::StatusCode::kInvalidArgument,
              "prompt has 51 tokens; this sharer accepts at most 50");
  v1::ShareRequest r = Request(5);
  r.set_token_ids(4, 100);
  ExpectError(r, absl::StatusCode::kInvalidArgument,
              "token_ids[4] = 100 is outside the model's vocabulary [0, 100)");
}

TEST(RequestValidationTest, PositionsAreOnePerTokenIncreasingAndInRange) {
  v1::SharerInfo info = Info();
  info.mutable_model()->set_max_position_embeddings(64);
  v1::ShareRequest r = Request(4);
  for (uint32_t p : {0, 3, 4, 9}) r.add_positions(p);
  EXPECT_TRUE(ValidateShareRequest(r, info).ok());
  r.add_positions(10);
  EXPECT_THAT(std::string(ValidateShareRequest(r, info).message()),
              HasSubstr("positions has 5 entries for 4 token ids"));
  r.clear_positions();
  for (uint32_t p : {0, 3, 3, 9}) r.add_positions(p);
  EXPECT_THAT(std::string(ValidateShareRequest(r, info).message()),
              HasSubstr("positions[2] = 3 after 3"));
  r.clear_positions();
  for (uint32_t p : {0, 3, 4, 64}) r.add_positions(p);
  const absl::Status s = ValidateShareRequest(r, info);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("past the model's max_position_embeddings 64"));
}

TEST(RequestValidationTest, FingerprintAndRequestId) {
  v1::ShareRequest r = Request(5);
  r.set_expected_model_fingerprint("abc");
  EXPECT_TRUE(ValidateShareRequest(r, Info()).ok());
  r.set_expected_model_fingerprint("abd");
  ExpectError(r, absl::StatusCode::kFailedPrecondition,
              "expects abd but this sharer serves abc");
  r = Request(5);
  r.set_request_id(std::string(65, 'r'));
  ExpectError(r, absl::StatusCode::kInvalidArgument, "request_id has 65 bytes");
}

TEST(RequestValidationTest, SpecErrorsComeFromTheCodec) {
  v1::ShareRequest r = Request(5);
  r.mutable_spec()->add_layers(9);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "transfer spec: ");
  r = Request(5);
  r.mutable_spec()->set_chunk_size_bytes(100);
  ExpectError(r, absl::StatusCode::kInvalidArgument, "transfer spec: ");
  r = Request(50);
  r.mutable_spec()->set_max_payload_bytes(64);
  ExpectError(r, absl::StatusCode::kResourceExhausted, "transfer spec: ");
}

TEST(RequestValidationTest, GenerateChecksThePromptAndTheGeneration) {
  v1::SharerInfo info = Info();
  info.set_max_new_tokens(20);
  info.mutable_model()->set_max_position_embeddings(60);
  v1::GenerateRequest r;
  for (int i = 0; i < 40; ++i) r.add_token_ids(i);
  r.mutable_generation()->set_max_new_tokens(20);
  EXPECT_TRUE(ValidateGenerateRequest(r, info).ok());

  auto expect = [&](const v1::GenerateRequest& bad, absl::StatusCode code,
                    const std::string& message) {
    const absl::Status s = ValidateGenerateRequest(bad, info);
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(message));
  };
  v1::GenerateRequest bad = r;
  bad.clear_token_ids();
  expect(bad, absl::StatusCode::kInvalidArgument, "token_ids is empty");
  bad = r;
  bad.set_token_ids(3, 100);
  expect(bad, absl::StatusCode::kInvalidArgument, "token_ids[3] = 100");
  bad = r;
  bad.set_expected_model_fingerprint("zzz");
  expect(bad, absl::StatusCode::kFailedPrecondition, "fingerprint mismatch");
  bad = r;
  bad.mutable_generation()->set_max_new_tokens(21);
  expect(bad, absl::StatusCode::kInvalidArgument, "over the limit of 20");
  bad = r;
  bad.mutable_generation()->set_top_p(1.5);
  expect(bad, absl::StatusCode::kInvalidArgument, "top_p");
  bad = r;
  bad.mutable_generation()->set_temperature(-1);
  expect(bad, absl::StatusCode::kInvalidArgument, "temperature");
  // 45 prompt tokens + 20 new ones pass the 60 positions.
  bad = r;
  for (int i = 0; i < 5; ++i) bad.add_token_ids(1);
  expect(bad, absl::StatusCode::kInvalidArgument,
         "plus 20 new tokens exceed the model's max_position_embeddings 60");
  // 0 new tokens means the default (64).
  bad = r;
  bad.mutable_generation()->set_max_new_tokens(0);
  info.set_max_new_tokens(100);
  expect(bad, absl::StatusCode::kInvalidArgument, "plus 64 new tokens exceed");
}

TEST(RequestValidationTest, SchemeLabel) {
  v1::KvHeader h;
  EXPECT_EQ(SchemeLabel(h), "none");
  h.add_layers()->set_scheme(v1::SCHEME_INT4);
  h.add_layers()->set_scheme(v1::SCHEME_INT4);
  EXPECT_EQ(SchemeLabel(h), "int4");
  h.add_layers()->set_scheme(v1::SCHEME_INT8);
  EXPECT_EQ(SchemeLabel(h), "mixed");
}

TEST(ModelFingerprintTest, DependsOnConfigNamesAndShapesOnly) {
  const std::string a =
      ModelFingerprint("{\"x\":1}", {{"b", {2, 3}}, {"a", {4}}});
  EXPECT_EQ(a.size(), 64u);
  // Order of tensors does not matter.
  EXPECT_EQ(a, ModelFingerprint("{\"x\":1}", {{"a", {4}}, {"b", {2, 3}}}));
  EXPECT_NE(a, ModelFingerprint("{\"x\":2}", {{"a", {4}}, {"b", {2, 3}}}));
  EXPECT_NE(a, ModelFingerprint("{\"x\":1}", {{"a", {4}}, {"b", {3, 2}}}));
  EXPECT_NE(a, ModelFingerprint("{\"x\":1}", {{"a", {4}}, {"c", {2, 3}}}));
}

TEST(ModelFingerprintTest, Sha256MatchesFips180Vectors) {
  EXPECT_EQ(Sha256Hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(
      Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

}  // namespace
}  // namespace kvwire
