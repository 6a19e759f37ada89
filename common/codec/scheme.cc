#include "common/codec/scheme.h"

#include <array>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvwire {
namespace {

// Dimensions beyond this are rejected: no real KV block comes close, and it
// keeps every size computation far from integer overflow.
constexpr int64_t kMaxDimension = int64_t{1} << 24;

absl::Status UnknownName(absl::string_view what, absl::string_view name,
                         const std::vector<absl::string_view>& known) {
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " '", name,
                   "' (known: ", absl::StrJoin(known, ", "), ")"));
}

template <typename Enum, size_t N>
absl::StatusOr<Enum> ParseName(
    absl::string_view what, absl::string_view name,
    const std::array<std::pair<const char*, Enum>, N>& table) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const auto& [key, value] : table) {
    if (lower == key) return value;
  }
  std::vector<absl::string_view> known;
  for (const auto& [key, value] : table) known.push_back(key);
  return UnknownName(what, name, known);
}

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
  const SchemeInfo* row = FindScheme(scheme);
  return row != nullptr ? row->bits : 0;
}

bool IsPassthrough(v1::Scheme scheme) {
  const SchemeInfo* row = FindScheme(scheme);
  return row != nullptr && row->kind == SchemeKind::kPassthrough;
}

bool IsIntScheme(v1::Scheme scheme) {
  const SchemeInfo* row = FindScheme(scheme);
  return row != nullptr && row->kind == SchemeKind::kInt;
}

bool IsFp8Scheme(v1::Scheme scheme) {
  const SchemeInfo* row = FindScheme(scheme);
  return row != nullptr && row->kind == SchemeKind::kFp8;
}

bool HasScales(v1::Scheme scheme) {
  const SchemeInfo* row = FindScheme(scheme);
  return row != nullptr && row->has_scales;
}

bool HasZeroPoints(const QuantParams& params) {
  const SchemeInfo* row = FindScheme(params.scheme);
  return params.asymmetric && row != nullptr && row->zero_points;
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
  const SchemeInfo* row = FindScheme(params.scheme);
  if (row == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown or unspecified scheme ", static_cast<int>(params.scheme)));
  }
  if (!row->cpu) {
    return absl::UnimplementedError(
        absl::StrCat("scheme ", row->name, " is not implemented"));
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
  if (!row->has_scales) return absl::OkStatus();
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
  const SchemeInfo* row = FindScheme(scheme);
  return row != nullptr
             ? row->name
             : absl::StrCat("unknown(", static_cast<int>(scheme), ")");
}
std::string GranularityName(v1::Granularity granularity) {
  return NameOf(granularity, kGranularityNames);
}
std::string SelectionModeName(v1::SelectionMode mode) {
  return NameOf(mode, kSelectionNames);
}

absl::StatusOr<v1::Scheme> ParseScheme(absl::string_view name) {
  const SchemeInfo* row = FindSchemeByName(name);
  if (row != nullptr) return row->scheme;
  // Canonical names first, then the aliases.
  std::vector<absl::string_view> known;
  for (const SchemeInfo& r : kSchemeTable) known.push_back(r.name);
  for (const SchemeInfo& r : kSchemeTable) {
    for (const char* alias : r.aliases) {
      if (alias != nullptr) known.push_back(alias);
    }
  }
  return UnknownName("scheme", name, known);
}
absl::StatusOr<v1::Granularity> ParseGranularity(absl::string_view name) {
  return ParseName("granularity", name, kGranularityNames);
}
absl::StatusOr<v1::SelectionMode> ParseSelectionMode(absl::string_view name) {
  return ParseName("selection mode", name, kSelectionNames);
}

}  // namespace kvwire
