// Requests and responses of the services' raw (ByteBuffer) gRPC methods.
//
// gRPC's callback API answers a request it cannot deserialize with
// UNIMPLEMENTED and an empty message, which tells a client nothing. The
// kvwire services therefore take their requests raw and parse them here:
// a malformed payload gets INVALID_ARGUMENT saying what is wrong with it.
// No Torch; protobuf and gRPC's ByteBuffer only.
#ifndef KVWIRE_COMMON_SERVICE_RAW_MESSAGES_H_
#define KVWIRE_COMMON_SERVICE_RAW_MESSAGES_H_

#include <google/protobuf/message.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"

namespace kvwire {

// Parses `raw` into `request`. INVALID_ARGUMENT naming the message type
// when the bytes are not protobuf wire format, or when a string field is not
// UTF-8 (proto3 requires it; the field is named when it is a top-level one).
absl::Status ParseRequest(const grpc::ByteBuffer& raw,
                          google::protobuf::Message* request);

// `message` serialized for a raw method's response or stream write.
grpc::ByteBuffer SerializeToByteBuffer(
    const google::protobuf::MessageLite& message);

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_RAW_MESSAGES_H_
