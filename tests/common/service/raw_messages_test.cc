// Raw request parsing: precise INVALID_ARGUMENT messages.
#include "common/service/raw_messages.h"

#include <grpcpp/support/slice.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {
namespace {

using ::testing::HasSubstr;

grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

// A ShareRequest whose request_id (field 1) holds `id` as raw bytes.
std::string WithRequestId(const std::string& id) {
  v1::ShareRequest r;
  r.add_token_ids(7);
  std::string bytes = r.SerializeAsString();
  bytes += static_cast<char>((1 << 3) | 2);  // Field 1, length-delimited.
  bytes += static_cast<char>(id.size());
  return bytes + id;
}

TEST(RawMessagesTest, ParsesWhatWasSerialized) {
  v1::ShareRequest sent;
  sent.set_request_id("caf\xc3\xa9");
  sent.add_token_ids(1);
  sent.add_token_ids(151000);
  sent.mutable_spec()->set_scheme(v1::SCHEME_INT4);
  v1::ShareRequest parsed;
  ASSERT_TRUE(ParseRequest(SerializeToByteBuffer(sent), &parsed).ok());
  EXPECT_EQ(parsed.SerializeAsString(), sent.SerializeAsString());
}

TEST(RawMessagesTest, MalformedBytesAreInvalidArgumentNamingTheType) {
  v1::ShareRequest parsed;
  // A varint that never ends.
  const absl::Status st = ParseRequest(Bytes("\x08\xff\xff\xff"), &parsed);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("not a valid kvwire.v1.ShareRequest"));
  EXPECT_THAT(st.message(), HasSubstr("not protobuf wire format"));
}

TEST(RawMessagesTest, NonUtf8StringFieldIsNamed) {
  v1::ShareRequest parsed;
  for (const std::string& bad :
       {std::string("\xff"), std::string("ab\xc3"), std::string("\xc0\x80"),
        std::string("\xed\xa0\x80")}) {
    const absl::Status st = ParseRequest(Bytes(WithRequestId(bad)), &parsed);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(st.message(), HasSubstr("request_id is not valid UTF-8"));
  }
  EXPECT_TRUE(
      ParseRequest(Bytes(WithRequestId("\xf0\x9f\x98\x80")), &parsed).ok());
}

}  // namespace
}  // namespace kvwire
