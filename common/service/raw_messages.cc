// Raw request parsing with precise errors.
#include "common/service/raw_messages.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvwire {
namespace {

// Structural UTF-8 check (RFC 3629: no overlongs, surrogates or > U+10FFFF).
bool IsUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // Truncated sequence.
    for (size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

// The top-level string field of `type` whose value in `fields` is not
// UTF-8, or null.
const google::protobuf::FieldDescriptor* NonUtf8Field(
    const google::protobuf::Descriptor& type,
    const google::protobuf::UnknownFieldSet& fields) {
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& f = fields.field(i);
    if (f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
      continue;
    }
    const google::protobuf::FieldDescriptor* d =
        type.FindFieldByNumber(f.number());
    if (d != nullptr &&
        d->type() == google::protobuf::FieldDescriptor::TYPE_STRING &&
        !IsUtf8(f.length_delimited())) {
      return d;
    }
  }
  return nullptr;
}

}  // namespace

absl::Status ParseRequest(const grpc::ByteBuffer& raw,
                          google::protobuf::Message* request) {
  grpc::Slice slice;
  if (!raw.DumpToSingleSlice(&slice).ok()) {
    return absl::InvalidArgumentError("unreadable request payload");
  }
  const auto* data = reinterpret_cast<const char*>(slice.begin());
  const int size = static_cast<int>(slice.size());
  if (request->ParseFromArray(data, size)) return absl::OkStatus();
  const std::string& type = request->GetDescriptor()->full_name();
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromArray(data, size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request is not a valid ", type, " (", size,
                     " bytes that are not protobuf wire format)"));
  }
  if (const auto* field = NonUtf8Field(*request->GetDescriptor(), fields)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request's ", field->name(),
                     " is not valid UTF-8 (string fields must be)"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the request is not a valid ", type,
      " (a field has the wrong wire type, or a nested string is not UTF-8)"));
}

grpc::ByteBuffer SerializeToByteBuffer(
    const google::protobuf::MessageLite& message) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  // The serialization gRPC itself applies to typed methods; it fails only
  // for messages over 2 GB, which the services never build.
  grpc::GenericSerialize<grpc::ProtoBufferWriter,
                         google::protobuf::MessageLite>(message, &buffer,
                                                        &own_buffer);
  return buffer;
}

}  // namespace kvwire
