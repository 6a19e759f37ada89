// How gRPC frames each protobuf message on the wire, for byte accounting
// that counts what was sent (the services, the load generator, and the
// in-process pipeline's report of what the wire would carry).
#ifndef KVWIRE_COMMON_PROTOCOL_WIRE_FRAMING_H_
#define KVWIRE_COMMON_PROTOCOL_WIRE_FRAMING_H_

#include <cstdint>

namespace kvwire {

// gRPC's length-prefixed message framing: 1 compression flag + 4 length
// bytes in front of every message (HTTP/2 frame headers are the
// transport's, below what kvwire reports).
inline constexpr int64_t kGrpcMessagePrefixBytes = 5;

}  // namespace kvwire

#endif  // KVWIRE_COMMON_PROTOCOL_WIRE_FRAMING_H_
