#include "proto/codec.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/wire_format_lite.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace flotilla::proto {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the wire format stores little-endian floats; add byte swapping for this target");

Status CheckString(const std::string& s, const char* what, const ParseLimits& limits) {
  if (s.size() > limits.max_string) {
    return InvalidArgument(std::string(what) + " is " + std::to_string(s.size()) + " bytes, limit " +
                           std::to_string(limits.max_string));
  }
  return Status::Ok();
}

Status CheckHello(const wire::Hello& hello, const ParseLimits& limits) {
  RETURN_IF_ERROR(CheckString(hello.client_name(), "hello.client_name", limits));
  RETURN_IF_ERROR(CheckString(hello.software(), "hello.software", limits));
  if (hello.num_examples() < 0) return InvalidArgument("hello.num_examples is negative");
  if (!hello.secagg_identity_key().empty() && hello.secagg_identity_key().size() != 32) {
    return InvalidArgument("hello.secagg_identity_key must be 32 bytes");
  }
  if (!hello.secagg_identity_cert().empty() && hello.secagg_identity_cert().size() != 64) {
    return InvalidArgument("hello.secagg_identity_cert must be 64 bytes");
  }
  return Status::Ok();
}

Status CheckBody(const wire::Envelope& env, const ParseLimits& limits) {
  switch (env.body_case()) {
    case wire::Envelope::kHello:
      return CheckHello(env.hello(), limits);
    case wire::Envelope::kCheckIn:
      return CheckHello(env.check_in().hello(), limits);
    case wire::Envelope::kComeBack:
      RETURN_IF_ERROR(CheckString(env.come_back().reason(), "come_back.reason", limits));
      return CheckString(env.come_back().federation(), "come_back.federation", limits);
    case wire::Envelope::kUpdate: {
      const auto& u = env.update();
      if (u.num_examples() <= 0) return InvalidArgument("update.num_examples must be positive");
      if (static_cast<size_t>(u.metrics_size()) > limits.max_metrics) {
        return InvalidArgument("update has " + std::to_string(u.metrics_size()) + " metrics, limit " +
                               std::to_string(limits.max_metrics));
      }
      for (const auto& [key, value] : u.metrics()) {
        RETURN_IF_ERROR(CheckString(key, "metric name", limits));
        if (!std::isfinite(value)) return InvalidArgument("metric '" + key + "' is not finite");
      }
      if (static_cast<size_t>(u.delta().layout_size()) > limits.max_tensors) {
        return InvalidArgument("update delta has too many tensors");
      }
      return Status::Ok();
    }
    case wire::Envelope::kError:
      return CheckString(env.error().message(), "error.message", limits);
    case wire::Envelope::kDecline:
      return CheckString(env.decline().reason(), "decline.reason", limits);
    case wire::Envelope::BODY_NOT_SET:
      return InvalidArgument("envelope has no body");
    default:
      return Status::Ok();
  }
}

}  // namespace

// Protobuf logs every malformed string field to stderr; a hostile peer
// could use that to flood the aggregator's logs. Parse failures are reported
// through Status (and logged once by the caller) instead.
void SilenceProtobufLogs() {
  static const bool done = [] {
    google::protobuf::SetLogHandler(
        [](google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
          if (level >= google::protobuf::LOGLEVEL_FATAL) {
            std::fprintf(stderr, "protobuf fatal %s:%d: %s\n", file, line, message.c_str());
          }
        });
    return true;
  }();
  (void)done;
}

StatusOr<wire::Envelope> ParseEnvelope(const void* data, size_t size, const ParseLimits& limits) {
  SilenceProtobufLogs();
  if (size > static_cast<size_t>(INT32_MAX)) return InvalidArgument("message over 2 GiB");
  wire::Envelope env;
  if (!env.ParseFromArray(data, static_cast<int>(size))) {
    return InvalidArgument("message is not a valid Envelope (" + std::to_string(size) + " bytes)");
  }
  if (env.version() == wire::PROTOCOL_VERSION_UNSPECIFIED) {
    return InvalidArgument("message has no protocol version (" + std::to_string(size) + " bytes)");
  }
  if (env.version() != kProtocolVersion) {
    return FailedPrecondition("unsupported protocol version " + std::to_string(env.version()) +
                              " (this build speaks " + std::to_string(kProtocolVersion) + ")");
  }
  RETURN_IF_ERROR(CheckBody(env, limits));
  return env;
}

ParseFailure DescribeParseFailure(const void* data, size_t size, const Status& parse_status) {
  ParseFailure f;
  if (parse_status.code() == StatusCode::kFailedPrecondition) f.code = wire::ERROR_VERSION;
  // Walk the top-level fields until request_id (field 2, a varint) or the
  // first thing that does not parse. Bounded by the message size.
  using google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream in(static_cast<const uint8_t*>(data),
                                            static_cast<int>(std::min<size_t>(size, INT32_MAX)));
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    if (WireFormatLite::GetTagFieldNumber(tag) == 2 &&
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_VARINT) {
      uint64_t id = 0;
      if (in.ReadVarint64(&id)) f.request_id = id;
      break;
    }
    if (!WireFormatLite::SkipField(&in, tag)) break;
  }
  return f;
}

std::string SerializeEnvelope(wire::Envelope* envelope) {
  envelope->set_version(kProtocolVersion);
  return envelope->SerializeAsString();
}

void WeightsToProto(const Weights& weights, wire::WeightsProto* out) {
  out->Clear();
  for (const TensorSpec& t : weights.layout->tensors()) {
    wire::TensorSpec* spec = out->add_layout();
    spec->set_name(t.name);
    for (int64_t d : t.shape) spec->add_shape(d);
  }
  out->mutable_data()->assign(reinterpret_cast<const char*>(weights.data.data()),
                              weights.data.size() * sizeof(float));
}

StatusOr<Weights> WeightsFromProto(const wire::WeightsProto& proto,
                                   const std::shared_ptr<const Layout>& expected, const ParseLimits& limits) {
  if (static_cast<size_t>(proto.layout_size()) > limits.max_tensors) {
    return InvalidArgument("weights have " + std::to_string(proto.layout_size()) + " tensors, limit " +
                           std::to_string(limits.max_tensors));
  }
  std::vector<std::pair<std::string, std::vector<int64_t>>> specs;
  specs.reserve(proto.layout_size());
  for (const wire::TensorSpec& t : proto.layout()) {
    RETURN_IF_ERROR(CheckString(t.name(), "tensor name", limits));
    if (static_cast<size_t>(t.shape_size()) > limits.max_dims) {
      return InvalidArgument("tensor '" + t.name() + "' has " + std::to_string(t.shape_size()) +
                             " dimensions, limit " + std::to_string(limits.max_dims));
    }
    specs.emplace_back(t.name(), std::vector<int64_t>(t.shape().begin(), t.shape().end()));
  }
  // Layout::Create rejects negative dimensions and overflowing totals.
  ASSIGN_OR_RETURN(Layout layout, Layout::Create(specs));
  std::shared_ptr<const Layout> shared;
  if (expected) {
    RETURN_IF_ERROR(expected->CheckSame(layout));
    shared = expected;
  } else {
    shared = std::make_shared<const Layout>(std::move(layout));
  }
  const size_t n = static_cast<size_t>(shared->total_numel());
  // A sparse payload does not bound the element count as a dense one does:
  // compressed weights (updates) are only taken against a known layout.
  if (proto.encoding() != wire::WeightsProto::FLOAT32 && !expected) {
    return InvalidArgument("compressed weights need the expected layout (models travel as float32)");
  }
  Weights w;
  switch (proto.encoding()) {
    case wire::WeightsProto::FLOAT32:
      if (proto.data().size() != n * sizeof(float)) {
        return InvalidArgument("weights payload is " + std::to_string(proto.data().size()) +
                               " bytes, layout needs " + std::to_string(n * sizeof(float)));
      }
      w.data.resize(n);
      std::memcpy(w.data.data(), proto.data().data(), n * sizeof(float));
      break;
    case wire::WeightsProto::INT8: {
      if (proto.data().size() != n) {
        return InvalidArgument("int8 weights payload is " + std::to_string(proto.data().size()) +
                               " bytes, layout needs " + std::to_string(n));
      }
      if (proto.scales_size() != static_cast<int>(shared->tensors().size())) {
        return InvalidArgument("int8 weights have " + std::to_string(proto.scales_size()) + " scales for " +
                               std::to_string(shared->tensors().size()) + " tensors");
      }
      w.data.resize(n);
      const auto* q = reinterpret_cast<const int8_t*>(proto.data().data());
      for (size_t t = 0; t < shared->tensors().size(); ++t) {
        const TensorSpec& spec = shared->tensors()[t];
        const float scale = proto.scales(static_cast<int>(t));
        if (!std::isfinite(scale) || scale < 0.0f) {
          return InvalidArgument("int8 scale of tensor '" + spec.name +
                                 "' is not a finite non-negative number");
        }
        for (int64_t i = spec.offset; i < spec.offset + spec.numel; ++i) {
          w.data[static_cast<size_t>(i)] = static_cast<float>(q[i]) * scale;
        }
      }
      break;
    }
    case wire::WeightsProto::SPARSE: {
      const size_t k = proto.indices().size() / sizeof(uint32_t);
      if (proto.indices().size() % sizeof(uint32_t) != 0 || proto.data().size() != k * sizeof(float) ||
          k > n) {
        return InvalidArgument("sparse weights have " + std::to_string(proto.indices().size()) +
                               " index bytes and " + std::to_string(proto.data().size()) +
                               " value bytes; need 4 of each per element, at most " + std::to_string(n));
      }
      w.data.assign(n, 0.0f);
      int64_t previous = -1;
      for (size_t j = 0; j < k; ++j) {
        uint32_t index;
        float value;
        std::memcpy(&index, proto.indices().data() + j * sizeof(uint32_t), sizeof(uint32_t));
        std::memcpy(&value, proto.data().data() + j * sizeof(float), sizeof(float));
        if (static_cast<int64_t>(index) <= previous || index >= n) {
          return InvalidArgument("sparse weights: index " + std::to_string(index) + " at position " +
                                 std::to_string(j) + " is out of order or outside the " + std::to_string(n) +
                                 " elements");
        }
        previous = index;
        w.data[index] = value;
      }
      break;
    }
    default:
      return InvalidArgument("unknown weights encoding " + std::to_string(proto.encoding()));
  }
  w.layout = std::move(shared);
  const size_t bad = FirstNonFinite(w.data.data(), n);
  if (bad < n) return InvalidArgument("weights value " + std::to_string(bad) + " is not finite");
  return w;
}

StatusOr<std::string_view> Float32Payload(const wire::WeightsProto& proto, const Layout& expected,
                                          const ParseLimits& limits) {
  return Float32Payload(proto, proto.data(), expected, limits);
}

StatusOr<std::string_view> Float32Payload(const wire::WeightsProto& proto, std::string_view data,
                                          const Layout& expected, const ParseLimits& limits) {
  if (proto.encoding() != wire::WeightsProto::FLOAT32) return InvalidArgument("weights are not float32");
  if (static_cast<size_t>(proto.layout_size()) > limits.max_tensors) {
    return InvalidArgument("weights have " + std::to_string(proto.layout_size()) + " tensors, limit " +
                           std::to_string(limits.max_tensors));
  }
  if (static_cast<size_t>(proto.layout_size()) != expected.tensors().size()) {
    return InvalidArgument("weights have " + std::to_string(proto.layout_size()) + " tensors, the model " +
                           std::to_string(expected.tensors().size()));
  }
  for (int t = 0; t < proto.layout_size(); ++t) {
    const wire::TensorSpec& got = proto.layout(t);
    const TensorSpec& want = expected.tensors()[static_cast<size_t>(t)];
    if (got.name() != want.name || got.shape_size() != static_cast<int>(want.shape.size()) ||
        !std::equal(got.shape().begin(), got.shape().end(), want.shape.begin())) {
      return InvalidArgument("tensor " + std::to_string(t) + " ('" + got.name().substr(0, limits.max_string) +
                             "') does not match the model's '" + want.name + "'");
    }
  }
  const size_t n = static_cast<size_t>(expected.total_numel());
  if (data.size() != n * sizeof(float)) {
    return InvalidArgument("weights payload is " + std::to_string(data.size()) + " bytes, layout needs " +
                           std::to_string(n * sizeof(float)));
  }
  return data;
}

namespace {

bool ReadVarint(std::string_view* in, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && !in->empty(); shift += 7) {
    const auto b = static_cast<unsigned char>(in->front());
    in->remove_prefix(1);
    *v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

void WriteVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

}  // namespace

StatusOr<std::string> SplitOutField(std::string_view bytes, const std::vector<int>& path,
                                    std::string_view* field) {
  if (path.empty()) return InvalidArgument("SplitOutField: empty path");
  *field = std::string_view();
  std::string rest;
  std::string_view in = bytes;
  while (!in.empty()) {
    const char* start = in.data();
    uint64_t tag = 0;
    if (!ReadVarint(&in, &tag) || (tag >> 3) == 0) return InvalidArgument("record: bad field tag");
    const int number = static_cast<int>(std::min<uint64_t>(tag >> 3, INT32_MAX));
    std::string_view value;
    switch (tag & 7) {
      case 0: {
        uint64_t unused = 0;
        if (!ReadVarint(&in, &unused)) return InvalidArgument("record: bad varint");
        break;
      }
      case 1:
      case 5: {
        const size_t n = (tag & 7) == 1 ? 8 : 4;
        if (in.size() < n) return InvalidArgument("record: truncated fixed field");
        in.remove_prefix(n);
        break;
      }
      case 2: {
        uint64_t len = 0;
        if (!ReadVarint(&in, &len) || len > in.size()) return InvalidArgument("record: bad length");
        value = in.substr(0, static_cast<size_t>(len));
        in.remove_prefix(static_cast<size_t>(len));
        break;
      }
      default:
        return InvalidArgument("record: unsupported wire type");
    }
    if ((tag & 7) != 2 || number != path.front()) {
      rest.append(start, static_cast<size_t>(in.data() - start));  // kept as it was
      continue;
    }
    if (path.size() == 1) {
      *field = value;  // left out of the rest
      continue;
    }
    std::string_view inner;
    ASSIGN_OR_RETURN(std::string sub,
                     SplitOutField(value, std::vector<int>(path.begin() + 1, path.end()), &inner));
    if (!inner.empty()) *field = inner;
    WriteVarint(tag, &rest);
    WriteVarint(sub.size(), &rest);
    rest += sub;
  }
  return rest;
}

wire::Envelope MakeError(wire::ErrorCode code, const std::string& message) {
  wire::Envelope env;
  env.mutable_error()->set_code(code);
  env.mutable_error()->set_message(message);
  return env;
}

const char* BodyName(const wire::Envelope& envelope) {
  switch (envelope.body_case()) {
    case wire::Envelope::kHello:
      return "Hello";
    case wire::Envelope::kWelcome:
      return "Welcome";
    case wire::Envelope::kTaskRequest:
      return "TaskRequest";
    case wire::Envelope::kTrainTask:
      return "TrainTask";
    case wire::Envelope::kWait:
      return "Wait";
    case wire::Envelope::kUpdate:
      return "Update";
    case wire::Envelope::kAck:
      return "Ack";
    case wire::Envelope::kError:
      return "Error";
    case wire::Envelope::kFinished:
      return "Finished";
    case wire::Envelope::kStatusRequest:
      return "StatusRequest";
    case wire::Envelope::kStatusReply:
      return "StatusReply";
    case wire::Envelope::kPullRequest:
      return "PullRequest";
    case wire::Envelope::kPullReply:
      return "PullReply";
    case wire::Envelope::kDecline:
      return "Decline";
    case wire::Envelope::kSecagg:
      return "SecAggMessage";
    case wire::Envelope::kCheckIn:
      return "CheckIn";
    case wire::Envelope::kComeBack:
      return "ComeBack";
    case wire::Envelope::BODY_NOT_SET:
      return "(empty)";
  }
  return "(unknown)";
}

}  // namespace flotilla::proto
