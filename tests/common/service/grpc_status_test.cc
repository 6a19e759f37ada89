// absl::Status <-> grpc::Status conversion.
#include "common/service/grpc_status.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace {

using ::testing::EndsWith;

TEST(GrpcStatusTest, EveryCanonicalCodeRoundTrips) {
  for (int c = 0; c <= 16; ++c) {
    const auto code = static_cast<absl::StatusCode>(c);
    const absl::Status status(code, c == 0 ? "" : "why");
    const grpc::Status g = ToGrpcStatus(status);
    EXPECT_EQ(static_cast<int>(g.error_code()), c);
    EXPECT_EQ(FromGrpcStatus(g), status) << c;
  }
}

TEST(GrpcStatusTest, MessagesAreKept) {
  const grpc::Status g =
      ToGrpcStatus(absl::InvalidArgumentError("token_ids[3] = 999"));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(g.error_message(), "token_ids[3] = 999");
}

TEST(GrpcStatusTest, LongMessagesAreTruncated) {
  const std::string long_message(5000, 'x');
  const grpc::Status g = ToGrpcStatus(absl::InternalError(long_message));
  EXPECT_EQ(g.error_message().size(), kMaxGrpcStatusMessageBytes);
  EXPECT_THAT(g.error_message(), EndsWith("... [truncated]"));
}

TEST(GrpcStatusTest, TruncationNeverSplitsUtf8) {
  // "é" is two bytes; cut so that the boundary falls inside one.
  std::string message;
  for (int i = 0; i < 20; ++i) message += "\xC3\xA9";
  const std::string cut = TruncateStatusMessage(message, 15 + 6);
  // 6 bytes of text at most, backed up to an even (character) boundary.
  ASSERT_THAT(cut, EndsWith("... [truncated]"));
  const std::string text = cut.substr(0, cut.size() - 15);
  EXPECT_EQ(text.size() % 2, 0u);
  EXPECT_EQ(TruncateStatusMessage("short", 100), "short");
  EXPECT_EQ(TruncateStatusMessage("abcdef", 3), "...");
}

TEST(GrpcStatusTest, OutOfRangeCodeBecomesUnknown) {
  // 20: not a canonical code, but within the enum's value range (0..31), so
  // the cast itself is well defined.
  const absl::Status s =
      FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(20), "odd"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("20"));
}

TEST(GrpcStatusTest, OkDropsMessage) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatusTest, CodeNames) {
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kResourceExhausted),
            "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::UNAUTHENTICATED),
            "UNAUTHENTICATED");
  EXPECT_EQ(StatusCodeName(static_cast<absl::StatusCode>(99)), "UNKNOWN");
}

}  // namespace
}  // namespace kvwire
