// Codec between wire messages (proto/flotilla.proto) and core types. Every
// parse is bounded and checked: nothing received is trusted.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/weights.h"
#include "proto/flotilla.pb.h"

namespace flotilla::proto {

inline constexpr wire::ProtocolVersion kProtocolVersion = wire::PROTOCOL_VERSION_1;

struct ParseLimits {
  size_t max_tensors = 4096;
  size_t max_dims = 8;
  size_t max_metrics = 64;
  size_t max_string = 4096;  // names, messages, metric keys
};

// Parses one Envelope from `size` bytes. Fails (kInvalidArgument) on bytes
// that are not a valid Envelope, an empty body, or strings and maps over
// `limits` or without a protocol version, and with kFailedPrecondition on
// another protocol version.
// Weight payloads are checked separately by WeightsFromProto, against the
// layout the caller expects.
StatusOr<wire::Envelope> ParseEnvelope(const void* data, size_t size,
                                       const ParseLimits& limits = ParseLimits());

// What a receiver answers when ParseEnvelope failed: the request id, read
// from the raw bytes when the envelope's top-level request_id field is
// intact (0 otherwise), and ERROR_VERSION for another protocol version or
// ERROR_MALFORMED for anything else.
struct ParseFailure {
  uint64_t request_id = 0;
  wire::ErrorCode code = wire::ERROR_MALFORMED;
};
ParseFailure DescribeParseFailure(const void* data, size_t size, const Status& parse_status);

// Serializes with the protocol version set.
std::string SerializeEnvelope(wire::Envelope* envelope);

void WeightsToProto(const Weights& weights, wire::WeightsProto* out);

// Decodes weights. When `expected` is given, names and shapes must equal it
// and the result shares that layout object; otherwise the layout is built
// from the message. Checks: tensor and dimension counts within limits, no
// negative dimension, element count computed without overflow and equal to
// data.size() / 4, every value finite.
StatusOr<Weights> WeightsFromProto(const wire::WeightsProto& proto,
                                   const std::shared_ptr<const Layout>& expected,
                                   const ParseLimits& limits = ParseLimits());

// A FLOAT32 payload's raw bytes (little-endian float32, n x 4 bytes, not
// yet checked for finiteness), after the same layout checks against
// `expected` as WeightsFromProto: for consumers that read the values once
// (the aggregator's FedAvg merge) without decoding into a vector first.
// InvalidArgument for other encodings or a mismatch.
StatusOr<std::string_view> Float32Payload(const wire::WeightsProto& proto, const Layout& expected,
                                          const ParseLimits& limits = ParseLimits());
// The same for weights whose payload is held apart (`data`; `proto` has
// its other fields: see SplitOutField).
StatusOr<std::string_view> Float32Payload(const wire::WeightsProto& proto, std::string_view data,
                                          const Layout& expected, const ParseLimits& limits = ParseLimits());

// Wire-format surgery for large stored records, so that reading one does
// not copy its payload: returns the serialized message `bytes` without the
// length-delimited field at `path` (field numbers, outermost first: {4, 2}
// is UpdateRecord.delta.data), which `*field` then points at inside
// `bytes` (empty when absent; the last occurrence, as a parser keeps).
// The result parses as the message with that field unset. InvalidArgument
// when the bytes are not a well-formed message.
StatusOr<std::string> SplitOutField(std::string_view bytes, const std::vector<int>& path,
                                    std::string_view* field);

// Convenience builders.
wire::Envelope MakeError(wire::ErrorCode code, const std::string& message);
const char* BodyName(const wire::Envelope& envelope);

}  // namespace flotilla::proto
