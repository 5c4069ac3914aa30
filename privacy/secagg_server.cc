#include "privacy/secagg_server.h"

#include <sodium.h>

#include <algorithm>
#include <utility>

#include "privacy/keys.h"
#include "privacy/secagg_codec.h"
#include "privacy/secagg_keys.h"
#include "privacy/secagg_masks.h"

namespace flotilla::privacy {
namespace {

using secagg_internal::AgreeKey;
using secagg_internal::CheckPublicKeys;
using secagg_internal::kPairLabel;
using secagg_internal::LowMask;
using secagg_internal::Str;
using secagg_internal::VerifyAdvertisement;

const char* StageName(SecAggServer::Stage stage) {
  switch (stage) {
    case SecAggServer::Stage::kAdvertiseKeys:
      return "AdvertiseKeys";
    case SecAggServer::Stage::kShareKeys:
      return "ShareKeys";
    case SecAggServer::Stage::kMaskedInput:
      return "MaskedInput";
    case SecAggServer::Stage::kUnmask:
      return "Unmask";
    case SecAggServer::Stage::kDone:
      return "Done";
    case SecAggServer::Stage::kAborted:
      return "Aborted";
  }
  return "?";
}

}  // namespace

SecAggServer::SecAggServer(const SecAggParams& params, NeighbourGraph graph)
    : params_(params), graph_(std::move(graph)), session_(SecAggSessionDigest(params)) {}

StatusOr<SecAggServer> SecAggServer::Create(const SecAggParams& params,
                                            std::vector<std::vector<unsigned char>> client_public_keys) {
  RETURN_IF_ERROR(EnsureSodium());
  ASSIGN_OR_RETURN(NeighbourGraph graph, NeighbourGraph::Build(params));
  RETURN_IF_ERROR(CheckPublicKeys(client_public_keys, params.num_clients));
  SecAggServer server(params, std::move(graph));
  server.client_public_keys_ = std::move(client_public_keys);
  server.clients_.resize(params.num_clients);
  return server;
}

Status SecAggServer::CheckStage(Stage expected) const {
  if (stage_ == Stage::kAborted) return abort_status_;
  if (stage_ != expected) {
    return FailedPrecondition(std::string("SecAgg server is in stage ") + StageName(stage_) + ", not " +
                              StageName(expected));
  }
  return Status::Ok();
}

Status SecAggServer::Abort(const std::string& message) {
  abort_status_ = Aborted("SecAgg round " + Str(params_.round) + " aborted: " + message);
  stage_ = Stage::kAborted;
  clients_.clear();
  sum_.clear();
  advertised_keys_.clear();
  return abort_status_;
}

uint32_t SecAggServer::CountIf(bool ClientState::*flag) const {
  uint32_t count = 0;
  for (const ClientState& c : clients_) count += (c.*flag) ? 1 : 0;
  return count;
}

Status SecAggServer::HandleAdvertiseKeys(const AdvertiseKeysMessage& m) {
  RETURN_IF_ERROR(CheckStage(Stage::kAdvertiseKeys));
  if (m.sender >= params_.num_clients)
    return InvalidArgument("advertisement from unknown client " + Str(m.sender));
  ClientState& c = clients_[m.sender];
  if (c.advertised) return AlreadyExists("client " + Str(m.sender) + " already advertised keys");
  if (!VerifyAdvertisement(m, session_, params_.round, client_public_keys_[m.sender])) {
    return PermissionDenied(
        "advertisement of client " + Str(m.sender) +
        " does not verify with its long-term key (tampered, wrong round or wrong parameters)");
  }
  if (m.c_public == m.s_public)
    return InvalidArgument("client " + Str(m.sender) + " advertised the same key twice");
  if (advertised_keys_.count(m.c_public) || advertised_keys_.count(m.s_public)) {
    return InvalidArgument("client " + Str(m.sender) + " advertised a key already used by another client");
  }
  advertised_keys_.insert(m.c_public);
  advertised_keys_.insert(m.s_public);
  c.advertised = true;
  c.advertisement = m;
  return Status::Ok();
}

Status SecAggServer::EndAdvertiseKeys() {
  RETURN_IF_ERROR(CheckStage(Stage::kAdvertiseKeys));
  const uint32_t u1 = CountIf(&ClientState::advertised);
  if (u1 < params_.threshold) {
    return Abort("only " + Str(u1) + " clients advertised keys; the threshold is " + Str(params_.threshold));
  }
  stage_ = Stage::kShareKeys;
  return Status::Ok();
}

StatusOr<RosterMessage> SecAggServer::RosterFor(uint32_t client) const {
  if (stage_ == Stage::kAborted) return abort_status_;
  if (stage_ == Stage::kAdvertiseKeys) return FailedPrecondition("the AdvertiseKeys stage is still open");
  if (client >= params_.num_clients || !clients_[client].advertised) {
    return FailedPrecondition("client " + Str(client) + " is not in U1");
  }
  RosterMessage out;
  out.recipient = client;
  for (uint32_t v = 0; v < params_.num_clients; ++v) {
    if (clients_[v].advertised && (v == client || graph_.AreNeighbours(client, v))) {
      out.advertisements.push_back(clients_[v].advertisement);
    }
  }
  return out;
}

Status SecAggServer::HandleShareKeys(const ShareKeysMessage& m) {
  RETURN_IF_ERROR(CheckStage(Stage::kShareKeys));
  if (m.sender >= params_.num_clients || !clients_[m.sender].advertised) {
    return InvalidArgument("ShareKeys from client " + Str(m.sender) + ", which is not in U1");
  }
  if (clients_[m.sender].shared) return AlreadyExists("client " + Str(m.sender) + " already sent its shares");
  std::set<uint32_t> expected;
  for (uint32_t v : graph_.Neighbours(m.sender)) {
    if (clients_[v].advertised) expected.insert(v);
  }
  std::set<uint32_t> seen;
  for (const EncryptedShares& e : m.shares) {
    if (e.sender != m.sender)
      return InvalidArgument("ShareKeys from " + Str(m.sender) + " holds a ciphertext from " + Str(e.sender));
    if (!expected.count(e.recipient)) {
      return InvalidArgument("ShareKeys from " + Str(m.sender) + " addresses " + Str(e.recipient) +
                             ", not a neighbour in U1");
    }
    if (!seen.insert(e.recipient).second) {
      return InvalidArgument("ShareKeys from " + Str(m.sender) + " addresses " + Str(e.recipient) + " twice");
    }
    if (e.ciphertext.size() != kEncryptedSharesCiphertextBytes) {
      return InvalidArgument("ShareKeys from " + Str(m.sender) + " holds a ciphertext of the wrong size");
    }
  }
  if (seen.size() != expected.size()) {
    return InvalidArgument("ShareKeys from " + Str(m.sender) + " covers " + Str(seen.size()) + " of its " +
                           Str(expected.size()) + " neighbours in U1");
  }
  for (const EncryptedShares& e : m.shares) clients_[e.recipient].inbox.push_back(e);
  clients_[m.sender].shared = true;
  return Status::Ok();
}

Status SecAggServer::EndShareKeys() {
  RETURN_IF_ERROR(CheckStage(Stage::kShareKeys));
  const uint32_t u2 = CountIf(&ClientState::shared);
  if (u2 < params_.threshold) {
    return Abort("only " + Str(u2) + " clients shared keys; the threshold is " + Str(params_.threshold));
  }
  for (ClientState& c : clients_) {
    // Ciphertexts for clients that left are never relayed.
    if (!c.shared) std::vector<EncryptedShares>().swap(c.inbox);
  }
  sum_.assign(params_.vector_length, 0);
  stage_ = Stage::kMaskedInput;
  return Status::Ok();
}

StatusOr<RelayedSharesMessage> SecAggServer::SharesFor(uint32_t client) const {
  if (stage_ == Stage::kAborted) return abort_status_;
  if (stage_ == Stage::kAdvertiseKeys || stage_ == Stage::kShareKeys) {
    return FailedPrecondition("the ShareKeys stage is still open");
  }
  if (client >= params_.num_clients || !clients_[client].shared) {
    return FailedPrecondition("client " + Str(client) + " is not in U2");
  }
  RelayedSharesMessage out;
  out.recipient = client;
  out.shares = clients_[client].inbox;
  return out;
}

Status SecAggServer::HandleMaskedInput(const MaskedInputMessage& m) {
  RETURN_IF_ERROR(CheckStage(Stage::kMaskedInput));
  if (m.sender >= params_.num_clients || !clients_[m.sender].shared) {
    return InvalidArgument("masked input from client " + Str(m.sender) + ", which is not in U2");
  }
  if (clients_[m.sender].masked)
    return AlreadyExists("client " + Str(m.sender) + " already sent its masked input");
  if (m.bit_width != params_.bit_width || m.masked.size() != params_.vector_length) {
    return InvalidArgument("masked input from client " + Str(m.sender) + " has " + Str(m.masked.size()) +
                           " words of " + Str(m.bit_width) + " bits; the round expects " +
                           Str(params_.vector_length) + " of " + Str(params_.bit_width));
  }
  const uint32_t mask = LowMask(params_.bit_width);
  for (uint32_t w : m.masked) {
    if (w > mask)
      return InvalidArgument("masked input from client " + Str(m.sender) + " has a word over 2^k");
  }
  uint32_t* sum = sum_.data();
  const uint32_t* in = m.masked.data();
  for (size_t i = 0; i < sum_.size(); ++i) sum[i] += in[i];
  clients_[m.sender].masked = true;
  std::vector<EncryptedShares>().swap(clients_[m.sender].inbox);  // relayed already
  return Status::Ok();
}

Status SecAggServer::EndMaskedInput() {
  RETURN_IF_ERROR(CheckStage(Stage::kMaskedInput));
  const uint32_t u3 = CountIf(&ClientState::masked);
  if (u3 < params_.threshold) {
    return Abort("only " + Str(u3) + " clients sent masked inputs; the threshold is " +
                 Str(params_.threshold));
  }
  for (ClientState& c : clients_) std::vector<EncryptedShares>().swap(c.inbox);
  stage_ = Stage::kUnmask;
  return Status::Ok();
}

StatusOr<UnmaskRequest> SecAggServer::UnmaskRequestFor(uint32_t client) const {
  if (stage_ == Stage::kAborted) return abort_status_;
  if (stage_ != Stage::kUnmask && stage_ != Stage::kDone)
    return FailedPrecondition("the MaskedInput stage is still open");
  if (client >= params_.num_clients || !clients_[client].masked) {
    return FailedPrecondition("client " + Str(client) + " is not in U3");
  }
  UnmaskRequest out;
  out.survivors.push_back(client);
  for (uint32_t v : graph_.Neighbours(client)) {
    if (clients_[v].masked) {
      out.survivors.push_back(v);
    } else if (clients_[v].shared) {
      out.dropped.push_back(v);
    }
  }
  std::sort(out.survivors.begin(), out.survivors.end());
  return out;
}

Status SecAggServer::HandleUnmask(const UnmaskResponse& m) {
  RETURN_IF_ERROR(CheckStage(Stage::kUnmask));
  if (m.sender >= params_.num_clients || !clients_[m.sender].masked) {
    return InvalidArgument("unmask response from client " + Str(m.sender) + ", which is not in U3");
  }
  if (clients_[m.sender].unmasked)
    return AlreadyExists("client " + Str(m.sender) + " already sent its shares");
  std::set<std::pair<uint32_t, ShareKind>> seen;
  for (const RevealedShare& r : m.shares) {
    const std::string what =
        "unmask response from client " + Str(m.sender) + ": share of client " + Str(r.owner);
    if (r.owner >= params_.num_clients || (r.owner != m.sender && !graph_.AreNeighbours(m.sender, r.owner))) {
      return InvalidArgument(what + " cannot be held by this client");
    }
    const ClientState& owner = clients_[r.owner];
    if (r.kind == ShareKind::kSelfMaskSeed && !owner.masked)
      return InvalidArgument(what + ": owner is not a survivor");
    if (r.kind == ShareKind::kMaskKey && (owner.masked || !owner.shared)) {
      return InvalidArgument(what + ": owner did not drop after sharing keys");
    }
    if (r.kind != ShareKind::kSelfMaskSeed && r.kind != ShareKind::kMaskKey)
      return InvalidArgument(what + ": bad kind");
    if (r.share.x != m.sender + 1 || r.share.values.size() != ShamirChunkCount(kSecAggSeedBytes)) {
      return InvalidArgument(what + " is malformed");
    }
    if (!seen.insert({r.owner, r.kind}).second) return InvalidArgument(what + " is repeated");
  }
  for (const RevealedShare& r : m.shares) {
    ClientState& owner = clients_[r.owner];
    (r.kind == ShareKind::kSelfMaskSeed ? owner.b_shares : owner.s_shares).push_back(r.share);
  }
  clients_[m.sender].unmasked = true;
  return Status::Ok();
}

StatusOr<std::vector<uint32_t>> SecAggServer::Finish() {
  RETURN_IF_ERROR(CheckStage(Stage::kUnmask));
  const uint32_t n = params_.num_clients;
  const uint32_t t = params_.threshold;
  const uint32_t u4 = CountIf(&ClientState::unmasked);
  if (u4 < t) return Abort("only " + Str(u4) + " clients sent their shares; the threshold is " + Str(t));

  // Reconstruct every secret first, so a shortfall aborts before any work.
  std::vector<SecretBytes> self_seeds(n), mask_keys(n);
  for (uint32_t u = 0; u < n; ++u) {
    ClientState& c = clients_[u];
    if (c.masked) {
      if (c.b_shares.size() < t) {
        return Abort("self-mask seed of client " + Str(u) + " has " + Str(c.b_shares.size()) +
                     " shares, needs " + Str(t));
      }
      auto seed = ShamirReconstruct(c.b_shares, t, kSecAggSeedBytes);
      if (!seed.ok()) return Abort("self-mask seed of client " + Str(u) + ": " + seed.status().message());
      self_seeds[u] = std::move(seed).value();
    } else if (c.shared) {
      if (c.s_shares.size() < t) {
        return Abort("mask key of dropped client " + Str(u) + " has " + Str(c.s_shares.size()) +
                     " shares, needs " + Str(t));
      }
      auto key = ShamirReconstruct(c.s_shares, t, kSecAggSeedBytes);
      if (!key.ok()) return Abort("mask key of dropped client " + Str(u) + ": " + key.status().message());
      SecAggPublicKey derived;
      crypto_scalarmult_base(derived.data(), key->data());
      if (derived != c.advertisement.s_public) {
        return Abort("reconstructed mask key of dropped client " + Str(u) +
                     " does not match its advertised key (a revealed share is corrupt)");
      }
      mask_keys[u] = std::move(key).value();
    }
  }

  MaskExpander expander(params_.vector_length);
  for (uint32_t u = 0; u < n; ++u) {
    if (clients_[u].masked) expander.Subtract(self_seeds[u].data(), MaskDomain::kSelf, sum_.data());
  }
  for (uint32_t v = 0; v < n; ++v) {
    if (mask_keys[v].size() == 0) continue;
    const SecAggPublicKey& v_public = clients_[v].advertisement.s_public;
    for (uint32_t u : graph_.Neighbours(v)) {
      if (!clients_[u].masked) continue;
      auto seed = AgreeKey(kPairLabel, session_, mask_keys[v].data(), v, v_public, u,
                           clients_[u].advertisement.s_public);
      if (!seed.ok()) return Abort(seed.status().message());
      // u added +PRG(s_uv) if u < v and -PRG(s_uv) otherwise; undo it.
      if (u < v) {
        expander.Subtract(seed->data(), MaskDomain::kPair, sum_.data());
      } else {
        expander.Add(seed->data(), MaskDomain::kPair, sum_.data());
      }
    }
  }
  const uint32_t mask = LowMask(params_.bit_width);
  std::vector<uint32_t> result = std::move(sum_);
  if (mask != 0xffffffffu) {
    for (uint32_t& w : result) w &= mask;
  }
  for (ClientState& c : clients_) {
    c.b_shares.clear();
    c.s_shares.clear();
  }
  stage_ = Stage::kDone;
  return result;
}

std::vector<uint32_t> SecAggServer::Survivors() const {
  std::vector<uint32_t> out;
  for (uint32_t u = 0; u < clients_.size(); ++u) {
    if (clients_[u].masked) out.push_back(u);
  }
  return out;
}

}  // namespace flotilla::privacy
