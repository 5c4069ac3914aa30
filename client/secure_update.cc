#include "client/secure_update.h"

#include <sodium.h>

namespace flotilla::client {

StatusOr<std::unique_ptr<SecureUpdate>> SecureUpdate::Create(
    const wire::SecAggSetup& setup, uint32_t round, const privacy::SigningKeyPair& identity,
    const std::vector<float>& delta, const std::vector<unsigned char>& authority_key) {
  ASSIGN_OR_RETURN(privacy::SecAggParams params, privacy::SecAggParams::Parse(setup.params()));
  if (params.round != round) {
    return InvalidArgument("secure aggregation parameters are for round " + std::to_string(params.round) +
                           ", the task is for round " + std::to_string(round));
  }
  if (params.vector_length != delta.size()) {
    return InvalidArgument("secure aggregation expects " + std::to_string(params.vector_length) +
                           " values, the model has " + std::to_string(delta.size()));
  }
  if (static_cast<uint32_t>(setup.identity_keys_size()) != params.num_clients) {
    return InvalidArgument("secure aggregation setup lists " + std::to_string(setup.identity_keys_size()) +
                           " identity keys for " + std::to_string(params.num_clients) + " clients");
  }
  if (setup.index() >= params.num_clients ||
      setup.identity_keys(static_cast<int>(setup.index())) !=
          std::string(identity.public_key.begin(), identity.public_key.end())) {
    return InvalidArgument("secure aggregation setup does not list this device's identity key at its index");
  }
  std::vector<std::vector<unsigned char>> keys;
  for (const std::string& k : setup.identity_keys()) keys.emplace_back(k.begin(), k.end());
  if (!authority_key.empty()) {
    if (setup.identity_certs_size() != setup.identity_keys_size()) {
      return PermissionDenied("secure aggregation setup carries " +
                              std::to_string(setup.identity_certs_size()) + " identity certificates for " +
                              std::to_string(setup.identity_keys_size()) +
                              " keys; refusing keys the enrolment authority did not certify");
    }
    for (int i = 0; i < setup.identity_keys_size(); ++i) {
      RETURN_IF_ERROR(privacy::VerifySecAggIdentityCert(authority_key, keys[static_cast<size_t>(i)],
                                                        setup.identity_certs(i))
                          .WithContext("client " + std::to_string(i) +
                                       " of the round (the aggregator may be "
                                       "substituting identity keys)"));
    }
  }
  privacy::QuantizationConfig q;
  q.clip_norm = setup.clip_norm();
  q.bit_width = params.bit_width;
  q.num_clients = params.num_clients;
  q.scale = setup.scale();
  q.noise_stddev = setup.noise_stddev();
  // Quantize clips to C, adds this device's share of the noise and rounds
  // stochastically; it refuses a configuration whose sum could wrap.
  ASSIGN_OR_RETURN(std::vector<uint32_t> input, privacy::Quantize(delta, q));
  ASSIGN_OR_RETURN(privacy::SecAggClient client,
                   privacy::SecAggClient::Create(params, setup.index(), identity, std::move(keys)));
  return std::unique_ptr<SecureUpdate>(new SecureUpdate(round, std::move(client), std::move(input)));
}

wire::SecAggMessage SecureUpdate::Message(uint32_t stage, std::string payload) const {
  wire::SecAggMessage m;
  m.set_round(round_);
  m.set_stage(stage);
  m.set_payload(std::move(payload));
  return m;
}

wire::SecAggMessage SecureUpdate::First() const { return Message(0, client_.AdvertiseKeys().Serialize()); }

StatusOr<std::optional<wire::SecAggMessage>> SecureUpdate::Next(const wire::SecAggMessage& in) {
  if (in.round() != round_) {
    return InvalidArgument("secure aggregation message for round " + std::to_string(in.round()) +
                           ", expected " + std::to_string(round_));
  }
  if (in.stage() != expected_stage_) {
    return InvalidArgument("secure aggregation message for stage " + std::to_string(in.stage()) +
                           ", expected " + std::to_string(expected_stage_));
  }
  const std::string& bytes = in.payload();
  std::optional<wire::SecAggMessage> out;
  switch (in.stage()) {
    case 1: {
      ASSIGN_OR_RETURN(privacy::RosterMessage roster, privacy::RosterMessage::Parse(bytes));
      ASSIGN_OR_RETURN(privacy::ShareKeysMessage m, client_.ShareKeys(roster));
      out = Message(1, m.Serialize());
      break;
    }
    case 2: {
      ASSIGN_OR_RETURN(privacy::RelayedSharesMessage relayed, privacy::RelayedSharesMessage::Parse(bytes));
      ASSIGN_OR_RETURN(privacy::MaskedInputMessage m, client_.MaskInput(relayed, input_));
      sodium_memzero(input_.data(), input_.size() * sizeof(uint32_t));
      out = Message(2, m.Serialize());
      break;
    }
    case 3: {
      ASSIGN_OR_RETURN(privacy::UnmaskRequest request, privacy::UnmaskRequest::Parse(bytes));
      ASSIGN_OR_RETURN(privacy::UnmaskResponse m, client_.Unmask(request));
      out = Message(3, m.Serialize());
      break;
    }
    case 4:
      break;  // done
    default:
      return InvalidArgument("unknown secure aggregation stage " + std::to_string(in.stage()));
  }
  ++expected_stage_;
  return out;
}

}  // namespace flotilla::client
