#include "common/codec/scheme.h"

#include <array>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace kvwire {
namespace {

// Dimensions beyond this are rejected: no real KV block comes close, and it
// keeps every size computation far from integer overflow.
constexpr int64_t kMaxDimension = int64_t{1} << 24;

template <typename Enum, size_t N>
absl::StatusOr<Enum> ParseName(
    absl::string_view what, absl::string_view name,
    const std::array<std::pair<const char*, Enum>, N>& table) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const auto& [key, value] : table) {
    if (lower == key) return value;
  }
  std::string known;
  for (const auto& [key, value] : table)
    absl::StrAppend(&known, known.empty() ? "" : ", ", key);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " '", name, "' (known: ", known, ")"));
}

constexpr std::array<std::pair<const char*, v1::Scheme>, 14> kSchemeNames = {{
    {"bf16", v1::SCHEME_BF16},
    {"fp16", v1::SCHEME_FP16},
    {"fp8_e4m3", v1::SCHEME_FP8_E4M3},
    {"fp8_e5m2", v1::SCHEME_FP8_E5M2},
    {"int8", v1::SCHEME_INT8},
    {"int4", v1::SCHEME_INT4},
    {"int2", v1::SCHEME_INT2},
    {"nf4", v1::SCHEME_NF4},
    {"fp8", v1::SCHEME_FP8_E4M3},
    {"bfloat16", v1::SCHEME_BF16},
    {"float16", v1::SCHEME_FP16},
    {"none", v1::SCHEME_BF16},
    {"fp32", v1::SCHEME_BF16},
    {"float32", v1::SCHEME_BF16},
}};

constexpr std::array<std::pair<const char*, v1::Granularity>, 6>
    kGranularityNames = {{
        {"layer", v1::GRANULARITY_PER_LAYER},
        {"head", v1::GRANULARITY_PER_HEAD},
        {"token", v1::GRANULARITY_PER_TOKEN},
        {"channel", v1::GRANULARITY_PER_CHANNEL},
        {"group", v1::GRANULARITY_PER_GROUP},
        {"kivi", v1::GRANULARITY_KIVI},
    }};

constexpr std::array<std::pair<const char*, v1::SelectionMode>, 7>
    kSelectionNames = {{
        {"all", v1::SELECTION_ALL},
        {"front", v1::SELECTION_FRONT},
        {"back", v1::SELECTION_BACK},
        {"random", v1::SELECTION_RANDOM},
        {"knorm_topk", v1::SELECTION_KNORM_TOPK},
        {"vnorm_topk", v1::SELECTION_VNORM_TOPK},
        {"explicit", v1::SELECTION_EXPLICIT},
    }};

template <typename Enum, size_t N>
std::string NameOf(Enum value,
                   const std::array<std::pair<const char*, Enum>, N>& table) {
  for (const auto& [key, v] : table) {
    if (v == value) return key;
  }
  return absl::StrCat("unknown(", static_cast<int>(value), ")");
}

}  // namespace

int BitsPerValue(v1::Scheme scheme) {
  switch (scheme) {
    case v1::SCHEME_BF16:
    case v1::SCHEME_FP16:
      return 16;
    case v1::SCHEME_FP8_E4M3:
    case v1::SCHEME_FP8_E5M2:
    case v1::SCHEME_INT8:
      return 8;
    case v1::SCHEME_INT4:
    case v1::SCHEME_NF4:
      return 4;
    case v1::SCHEME_INT2:
      return 2;
    default:
      return 0;
  }
}

bool IsPassthrough(v1::Scheme scheme) {
  return scheme == v1::SCHEME_BF16 || scheme == v1::SCHEME_FP16;
}

bool IsIntScheme(v1::Scheme scheme) {
  return scheme == v1::SCHEME_INT8 || scheme == v1::SCHEME_INT4 ||
         scheme == v1::SCHEME_INT2;
}

bool IsFp8Scheme(v1::Scheme scheme) {
  return scheme == v1::SCHEME_FP8_E4M3 || scheme == v1::SCHEME_FP8_E5M2;
}

bool HasScales(v1::Scheme scheme) {
  return BitsPerValue(scheme) != 0 && !IsPassthrough(scheme);
}

bool HasZeroPoints(const QuantParams& params) {
  return params.asymmetric && IsIntScheme(params.scheme);
}

v1::Granularity ResolveGranularity(v1::Granularity granularity,
                                   v1::KvPart part) {
  if (granularity == v1::GRANULARITY_UNSPECIFIED) {
    return v1::GRANULARITY_PER_HEAD;
  }
  if (granularity == v1::GRANULARITY_KIVI) {
    return part == v1::KV_PART_KEY ? v1::GRANULARITY_PER_CHANNEL
                                   : v1::GRANULARITY_PER_TOKEN;
  }
  return granularity;
}

absl::Status ValidateQuantParams(const QuantParams& params, int64_t heads,
                                 int64_t tokens, int64_t head_dim) {
  if (BitsPerValue(params.scheme) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown or unspecified scheme ", static_cast<int>(params.scheme)));
  }
  for (int64_t dim : {heads, tokens, head_dim}) {
    if (dim < 0 || dim > kMaxDimension) {
      return absl::InvalidArgumentError(absl::StrCat(
          "block dimension ", dim, " out of range [0, ", kMaxDimension, "]"));
    }
  }
  if (heads == 0 || head_dim == 0) {
    return absl::InvalidArgumentError("block has no heads or no channels");
  }
  if (IsPassthrough(params.scheme)) return absl::OkStatus();
  switch (params.granularity) {
    case v1::GRANULARITY_PER_LAYER:
    case v1::GRANULARITY_PER_HEAD:
    case v1::GRANULARITY_PER_TOKEN:
    case v1::GRANULARITY_PER_CHANNEL:
      return absl::OkStatus();
    case v1::GRANULARITY_PER_GROUP:
      if (params.group_size <= 0 || head_dim % params.group_size != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("group size ", params.group_size,
                         " must be positive and divide head_dim ", head_dim));
      }
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("granularity ", GranularityName(params.granularity),
                       " is not a block granularity"));
  }
}

std::vector<int64_t> ScaleShape(const QuantParams& params, int64_t heads,
                                int64_t tokens, int64_t head_dim) {
  switch (params.granularity) {
    case v1::GRANULARITY_PER_LAYER:
      return {1};
    case v1::GRANULARITY_PER_HEAD:
      return {heads};
    case v1::GRANULARITY_PER_TOKEN:
      return {heads, tokens};
    case v1::GRANULARITY_PER_CHANNEL:
      return {heads, head_dim};
    default:
      return {heads, tokens, head_dim / params.group_size};
  }
}

int64_t ScaleCount(const QuantParams& params, int64_t heads, int64_t tokens,
                   int64_t head_dim) {
  if (!HasScales(params.scheme)) return 0;
  switch (params.granularity) {
    case v1::GRANULARITY_PER_LAYER:
      return 1;
    case v1::GRANULARITY_PER_HEAD:
      return heads;
    case v1::GRANULARITY_PER_TOKEN:
      return heads * tokens;
    case v1::GRANULARITY_PER_CHANNEL:
      return heads * head_dim;
    case v1::GRANULARITY_PER_GROUP:
      return params.group_size > 0
                 ? heads * tokens * (head_dim / params.group_size)
                 : 0;
    default:
      return 0;
  }
}

int64_t PackedValueBytes(v1::Scheme scheme, int64_t num_values) {
  const int64_t bits = BitsPerValue(scheme);
  return (num_values * bits + 7) / 8;
}

std::string SchemeName(v1::Scheme scheme) {
  return NameOf(scheme, kSchemeNames);
}
std::string GranularityName(v1::Granularity granularity) {
  return NameOf(granularity, kGranularityNames);
}
std::string SelectionModeName(v1::SelectionMode mode) {
  return NameOf(mode, kSelectionNames);
}

absl::StatusOr<v1::Scheme> ParseScheme(absl::string_view name) {
  return ParseName("scheme", name, kSchemeNames);
}
absl::StatusOr<v1::Granularity> ParseGranularity(absl::string_view name) {
  return ParseName("granularity", name, kGranularityNames);
}
absl::StatusOr<v1::SelectionMode> ParseSelectionMode(absl::string_view name) {
  return ParseName("selection mode", name, kSelectionNames);
}

}  // namespace kvwire
