#include "client/pull.h"

#include "privacy/signing.h"
#include "proto/codec.h"

namespace flotilla::client {
namespace {

// One request, one reply, on a fresh connection.
StatusOr<wire::Envelope> Exchange(const SessionConfig& config, wire::Envelope request,
                                  std::chrono::milliseconds timeout) {
  net::Context context;
  ASSIGN_OR_RETURN(std::unique_ptr<net::ClientSocket> socket,
                   net::ClientSocket::Connect(&context, config.endpoint, config.socket));
  request.set_request_id(1);
  RETURN_IF_ERROR(socket->Send(proto::SerializeEnvelope(&request)));
  ASSIGN_OR_RETURN(std::optional<std::string> bytes, socket->Receive(timeout));
  if (!bytes) {
    return Unavailable("no reply from " + config.endpoint + " within " + std::to_string(timeout.count()) +
                       " ms (is the aggregator running, and is this device's key on its allowlist?)");
  }
  ASSIGN_OR_RETURN(wire::Envelope reply, proto::ParseEnvelope(bytes->data(), bytes->size()));
  if (reply.has_error()) {
    const auto code = reply.error().code();
    const std::string msg = "aggregator: " + reply.error().message();
    if (code == wire::ERROR_NOT_FOUND) return NotFound(msg);
    if (code == wire::ERROR_PERMISSION_DENIED) return PermissionDenied(msg);
    return Unavailable(msg);
  }
  return reply;
}

}  // namespace

StatusOr<PullResult> PullModel(const SessionConfig& config, DeviceStore* store, uint64_t version,
                               const std::vector<unsigned char>& model_public_key,
                               std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(std::optional<HeldModel> held, store->GetModel());
  wire::Envelope request;
  request.mutable_pull_request()->set_version(version);
  request.mutable_pull_request()->set_have_version(held ? held->version : 0);
  ASSIGN_OR_RETURN(wire::Envelope reply, Exchange(config, request, timeout));
  if (!reply.has_pull_reply())
    return Internal("unexpected reply to a pull: " + std::string(proto::BodyName(reply)));
  return AcceptPulledModel(config, store, version, reply.pull_reply(), model_public_key);
}

StatusOr<PullResult> AcceptPulledModel(const SessionConfig& config, DeviceStore* store, uint64_t version,
                                       const wire::PullReply& r,
                                       const std::vector<unsigned char>& model_public_key) {
  ASSIGN_OR_RETURN(std::optional<HeldModel> held, store->GetModel());
  ASSIGN_OR_RETURN(const uint64_t newest, store->NewestVerified(config.federation));
  if (version != 0 && r.version() != version) {
    return InvalidArgument("asked for model version " + std::to_string(version) +
                           " but the aggregator sent " + std::to_string(r.version()));
  }
  if (version == 0 && r.version() < newest) {
    return PermissionDenied("the aggregator served model version " + std::to_string(r.version()) +
                            " as the latest, but this device has already verified version " +
                            std::to_string(newest) + " of federation '" + config.federation +
                            "': refusing a rollback (pull --version " + std::to_string(r.version()) +
                            " takes it deliberately)");
  }
  PullResult result;
  if (r.up_to_date()) {
    if (!held) return Internal("aggregator says up to date but the device holds no model");
    result.up_to_date = true;
    result.model = *held;
    return result;
  }
  // Reassemble the full weights.
  wire::WeightsProto full = r.weights();
  if (r.base_version() != 0) {
    if (!held || held->version != r.base_version()) {
      return FailedPrecondition("aggregator sent changes against version " +
                                std::to_string(r.base_version()) + " which this device does not hold");
    }
    ASSIGN_OR_RETURN(Weights base, proto::WeightsFromProto(held->weights, nullptr));
    std::vector<std::pair<std::string, std::vector<int64_t>>> specs;
    for (const auto& t : r.weights().layout())
      specs.emplace_back(t.name(), std::vector<int64_t>(t.shape().begin(), t.shape().end()));
    ASSIGN_OR_RETURN(Layout layout, Layout::Create(specs));
    RETURN_IF_ERROR(base.layout->CheckSame(layout).WithContext("pulled model"));
    std::string data(reinterpret_cast<const char*>(base.data.data()), base.data.size() * sizeof(float));
    size_t cursor = 0;
    for (uint32_t index : r.changed_tensors()) {
      if (index >= layout.tensors().size())
        return InvalidArgument("pull reply names tensor " + std::to_string(index));
      const TensorSpec& t = layout.tensors()[index];
      const size_t bytes = static_cast<size_t>(t.numel) * sizeof(float);
      if (cursor + bytes > r.weights().data().size())
        return InvalidArgument("pull reply is shorter than its tensors");
      data.replace(static_cast<size_t>(t.offset) * sizeof(float), bytes, r.weights().data(), cursor, bytes);
      cursor += bytes;
    }
    if (cursor != r.weights().data().size()) return InvalidArgument("pull reply has trailing bytes");
    *full.mutable_data() = std::move(data);
    result.tensors_received = r.changed_tensors_size();
  } else {
    result.tensors_received = r.weights().layout_size();
  }
  result.payload_bytes = r.weights().data().size();
  result.tensors_total = r.weights().layout_size();
  ASSIGN_OR_RETURN(Weights weights, proto::WeightsFromProto(full, nullptr));
  RETURN_IF_ERROR(privacy::VerifyModel(model_public_key, config.federation, r.version(), r.round(),
                                       privacy::ModelDigest(weights), r.signature()));
  result.model.version = r.version();
  result.model.round = r.round();
  result.model.arch = r.model_arch();
  result.model.weights = std::move(full);
  result.model.signature = r.signature();
  RETURN_IF_ERROR(store->PutModel(result.model));
  RETURN_IF_ERROR(store->NoteVerified(config.federation, result.model.version));
  return result;
}

StatusOr<wire::StatusReply> QueryStatus(const SessionConfig& config, std::chrono::milliseconds timeout) {
  wire::Envelope request;
  request.mutable_status_request();
  ASSIGN_OR_RETURN(wire::Envelope reply, Exchange(config, request, timeout));
  if (!reply.has_status_reply()) return Internal("unexpected reply to a status query");
  return reply.status_reply();
}

}  // namespace flotilla::client
