// The scheme table against the proto: every v1::Scheme enumerator has a row
// whose facts agree with each other, with the number formats and with what
// derives from the table (names, parsing, metric labels).
#include "common/codec/scheme_table.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "common/codec/number_formats.h"
#include "common/codec/scheme.h"
#ifdef KVWIRE_WITH_SERVICES
#include "common/service/metrics.h"
#endif
#include "gtest/gtest.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {
namespace {

// The proto's schemes, UNSPECIFIED excluded.
std::vector<const google::protobuf::EnumValueDescriptor*> ProtoSchemes() {
  const google::protobuf::EnumDescriptor* d = v1::Scheme_descriptor();
  std::vector<const google::protobuf::EnumValueDescriptor*> out;
  for (int i = 0; i < d->value_count(); ++i) {
    if (d->value(i)->number() != v1::SCHEME_UNSPECIFIED) {
      out.push_back(d->value(i));
    }
  }
  return out;
}

TEST(SchemeTableTest, EveryProtoSchemeHasARowNamedAfterIt) {
  std::set<std::string> names;
  for (const auto* value : ProtoSchemes()) {
    const auto scheme = static_cast<v1::Scheme>(value->number());
    const SchemeInfo* row = FindScheme(scheme);
    ASSERT_NE(row, nullptr) << value->name() << " has no scheme table row";
    EXPECT_EQ(row->scheme, scheme);
    // The canonical name is the enumerator's, so the proto's name and ours
    // (and the YAML spellings built from it) never drift apart.
    EXPECT_EQ(row->name, absl::AsciiStrToLower(
                             absl::StripPrefix(value->name(), "SCHEME_")));
    EXPECT_TRUE(names.insert(row->name).second) << "duplicate " << row->name;
    EXPECT_EQ(SchemeName(scheme), row->name);
    absl::StatusOr<v1::Scheme> parsed = ParseScheme(row->name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, scheme);
    EXPECT_EQ(*ParseScheme(absl::AsciiStrToUpper(row->name)), scheme);
    EXPECT_EQ(BitsPerValue(scheme), row->bits);
  }
  EXPECT_EQ(FindScheme(v1::SCHEME_UNSPECIFIED), nullptr);
  EXPECT_EQ(FindScheme(static_cast<v1::Scheme>(99)), nullptr);
}

TEST(SchemeTableTest, RowsAreProtoSchemesInOrder) {
  EXPECT_EQ(std::size(kSchemeTable), ProtoSchemes().size());
  int last = v1::SCHEME_UNSPECIFIED;
  for (const SchemeInfo& row : kSchemeTable) {
    EXPECT_TRUE(v1::Scheme_IsValid(row.scheme)) << row.name;
    EXPECT_GT(static_cast<int>(row.scheme), last) << row.name;
    last = row.scheme;
  }
}

TEST(SchemeTableTest, AliasesParseToTheirRowAndNeverCollide) {
  std::set<std::string> seen;
  for (const SchemeInfo& row : kSchemeTable) {
    EXPECT_TRUE(seen.insert(row.name).second) << row.name;
    for (const char* alias : row.aliases) {
      if (alias == nullptr) continue;
      EXPECT_TRUE(seen.insert(alias).second) << alias;
      EXPECT_EQ(FindSchemeByName(alias), &row) << alias;
      EXPECT_EQ(*ParseScheme(alias), row.scheme) << alias;
    }
  }
  EXPECT_EQ(*ParseScheme("fp8"), v1::SCHEME_FP8_E4M3);
  EXPECT_EQ(*ParseScheme("none"), v1::SCHEME_BF16);
  EXPECT_EQ(*ParseScheme("FP32"), v1::SCHEME_BF16);
  const absl::Status unknown = ParseScheme("int3").status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(unknown.message(), "unknown scheme 'int3'"));
  EXPECT_TRUE(absl::StrContains(unknown.message(), "nf4"));
  EXPECT_TRUE(absl::StrContains(unknown.message(), "fp8"));
}

// Each kind's facts follow from its definition (quantizer.h).
TEST(SchemeTableTest, FactsAreConsistentWithTheKind) {
  for (const SchemeInfo& row : kSchemeTable) {
    SCOPED_TRACE(row.name);
    EXPECT_TRUE(row.bits == 16 || row.bits == 8 || row.bits == 4 ||
                row.bits == 2);
    EXPECT_EQ(PackedValueBytes(row.scheme, 8), row.bits);
    EXPECT_EQ(row.has_scales, row.kind != SchemeKind::kPassthrough);
    EXPECT_EQ(HasScales(row.scheme), row.has_scales);
    EXPECT_EQ(IsPassthrough(row.scheme), row.kind == SchemeKind::kPassthrough);
    EXPECT_EQ(IsIntScheme(row.scheme), row.kind == SchemeKind::kInt);
    EXPECT_EQ(IsFp8Scheme(row.scheme), row.kind == SchemeKind::kFp8);
    EXPECT_EQ(row.codebook != nullptr, row.kind == SchemeKind::kCodebook);
    // Zero points exist only for the uniform integer codes.
    EXPECT_TRUE(!row.zero_points || row.kind == SchemeKind::kInt);
    QuantParams asym;
    asym.scheme = row.scheme;
    asym.asymmetric = true;
    EXPECT_EQ(HasZeroPoints(asym), row.zero_points);
    // The fused kernels only encode schemes with scales.
    EXPECT_TRUE(!row.cpu_fused || row.has_scales);
    EXPECT_TRUE(!row.cuda_fused || row.has_scales);
    EXPECT_TRUE(row.description != nullptr && *row.description != '\0');
    switch (row.kind) {
      case SchemeKind::kPassthrough:
        EXPECT_EQ(row.bits, 16);
        EXPECT_TRUE(row.format == FloatFormat::kBf16 ||
                    row.format == FloatFormat::kFp16);
        EXPECT_EQ(row.code_max, 0.0f);
        break;
      case SchemeKind::kInt:
        EXPECT_EQ(row.format, FloatFormat::kNone);
        EXPECT_EQ(row.code_max, static_cast<float>((1 << (row.bits - 1)) - 1));
        break;
      case SchemeKind::kFp8:
        EXPECT_EQ(row.bits, 8);
        EXPECT_TRUE(row.format == FloatFormat::kFp8E4M3 ||
                    row.format == FloatFormat::kFp8E5M2);
        EXPECT_EQ(row.code_max, Fp8MaxFinite(row.scheme));
        break;
      case SchemeKind::kCodebook: {
        EXPECT_EQ(row.format, FloatFormat::kNone);
        const float* cb = row.codebook;
        const int size = 1 << row.bits;
        EXPECT_TRUE(std::is_sorted(cb, cb + size));
        EXPECT_EQ(row.code_max,
                  std::max(std::fabs(cb[0]), std::fabs(cb[size - 1])));
        EXPECT_EQ(CodebookMidpoints(row).size(), static_cast<size_t>(size - 1));
        break;
      }
    }
  }
}

TEST(SchemeTableTest, SupportedSchemesAreTheRowsWithCpuSupport) {
  std::vector<v1::Scheme> expected;
  for (const SchemeInfo& row : kSchemeTable) {
    if (row.cpu) expected.push_back(row.scheme);
  }
  EXPECT_EQ(SupportedSchemes(), expected);
  EXPECT_FALSE(SupportedSchemes().empty());
}

#ifdef KVWIRE_WITH_SERVICES
// common/service/metrics.cc derives its label set from the table.
TEST(SchemeTableTest, EveryProtoSchemeHasAMetricLabel) {
  const std::vector<std::string>& labels = TransferSchemeLabels();
  for (const auto* value : ProtoSchemes()) {
    const std::string name =
        SchemeName(static_cast<v1::Scheme>(value->number()));
    EXPECT_NE(std::find(labels.begin(), labels.end(), name), labels.end())
        << value->name() << " has no metric label";
  }
  const std::set<std::string> unique(labels.begin(), labels.end());
  EXPECT_EQ(unique.size(), labels.size());
}
#endif  // KVWIRE_WITH_SERVICES

}  // namespace
}  // namespace kvwire
