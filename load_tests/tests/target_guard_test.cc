#include "load_tests/target_guard.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace load {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(TargetGuardTest, TargetHosts) {
  EXPECT_THAT(*TargetHosts("127.0.0.1:50051"), ElementsAre("127.0.0.1"));
  EXPECT_THAT(*TargetHosts("localhost:1"), ElementsAre("localhost"));
  EXPECT_THAT(*TargetHosts("dns:///localhost:1"), ElementsAre("localhost"));
  EXPECT_THAT(*TargetHosts("dns:localhost:1"), ElementsAre("localhost"));
  EXPECT_THAT(*TargetHosts("ipv4:127.0.0.1:1,127.0.0.2:2"),
              ElementsAre("127.0.0.1", "127.0.0.2"));
  EXPECT_THAT(*TargetHosts("ipv6:[::1]:1"), ElementsAre("::1"));
  EXPECT_THAT(*TargetHosts("[::1]:1"), ElementsAre("::1"));
  EXPECT_FALSE(TargetHosts("127.0.0.1").ok());
  EXPECT_FALSE(TargetHosts("127.0.0.1:99999").ok());
  EXPECT_FALSE(TargetHosts("unix:/tmp/socket").ok());
  EXPECT_FALSE(TargetHosts("xds:///svc").ok());
}

TEST(TargetGuardTest, Loopback) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackAddress("127.255.0.9"));
  EXPECT_TRUE(IsLoopbackAddress("::1"));
  EXPECT_TRUE(IsLoopbackAddress("::ffff:127.0.0.1"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.1"));
  EXPECT_FALSE(IsLoopbackAddress("128.0.0.1"));
  EXPECT_FALSE(IsLoopbackAddress("::2"));
  EXPECT_FALSE(IsLoopbackAddress("not an address"));
}

TEST(TargetGuardTest, AcceptsLoopbackRefusesEverythingElse) {
  EXPECT_TRUE(CheckTarget("127.0.0.1:50051", {}).ok());
  EXPECT_TRUE(CheckTarget("localhost:50051", {}).ok());
  EXPECT_TRUE(CheckTarget("ipv4:127.0.0.1:1,127.0.0.3:1", {}).ok());
  const absl::Status private_range = CheckTarget("10.1.2.3:50051", {});
  EXPECT_EQ(private_range.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(private_range.message(), HasSubstr("10.1.2.3"));
  EXPECT_EQ(CheckTarget("ipv4:127.0.0.1:1,192.0.2.1:1", {}).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckTarget("8.8.8.8:53", {}).code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(TargetGuardTest, NamespacesMustExistAndHaveSaneNames) {
  EXPECT_EQ(NetnsAddresses("kvwire-no-such-namespace").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(NetnsAddresses("bad name; rm -rf /").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NetnsAddresses("..").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(CheckTarget("198.18.0.1:1", {"kvwire-no-such-namespace"}).ok());
}

TEST(TargetGuardTest, RemoteTargetsNeedTheExplicitOptIn) {
  TargetPolicy policy;
  const absl::Status refused = CheckTargetAllowed("192.0.2.1:443", policy);
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.message(), HasSubstr("--allow_remote_target"));
  EXPECT_TRUE(CheckTargetAllowed("127.0.0.1:1", policy).ok());
  policy.allow_remote = true;
  EXPECT_TRUE(CheckTargetAllowed("192.0.2.1:443", policy).ok());
  EXPECT_TRUE(
      CheckTargetAllowed("ipv4:192.0.2.1:1,198.51.100.2:2", policy).ok());
  // The opt-in still wants a well-formed target.
  EXPECT_EQ(CheckTargetAllowed("192.0.2.1", policy).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckTargetAllowed("unix:/tmp/s", policy).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace load
}  // namespace kvwire
