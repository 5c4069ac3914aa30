#include "privacy/secagg_client.h"

#include <sodium.h>

#include <set>
#include <utility>

#include "privacy/secagg_codec.h"
#include "privacy/secagg_keys.h"
#include "privacy/secagg_masks.h"

namespace flotilla::privacy {
namespace {

using secagg_internal::AgreeKey;
using secagg_internal::CheckPublicKeys;
using secagg_internal::kEncLabel;
using secagg_internal::kPairLabel;
using secagg_internal::LowMask;
using secagg_internal::NewX25519Pair;
using secagg_internal::SharesAd;
using secagg_internal::SignAdvertisement;
using secagg_internal::Str;
using secagg_internal::VerifyAdvertisement;

constexpr size_t kShareBytes = 6 + 8 * 5;  // a Shamir share of a 32-byte secret

static_assert(kShamirChunkBytes * 5 >= kSecAggSeedBytes, "a 32-byte secret is 5 chunks");
static_assert(kEncryptedSharesCiphertextBytes == 2 * kShareBytes + crypto_aead_xchacha20poly1305_ietf_ABYTES,
              "a ciphertext holds two shares and a tag");

bool SameAdvertisement(const AdvertiseKeysMessage& a, const AdvertiseKeysMessage& b) {
  return a.sender == b.sender && a.c_public == b.c_public && a.s_public == b.s_public &&
         a.signature == b.signature;
}

}  // namespace

SecAggClient::SecAggClient(const SecAggParams& params, uint32_t index, NeighbourGraph graph)
    : params_(params), index_(index), graph_(std::move(graph)), session_(SecAggSessionDigest(params)) {}

StatusOr<SecAggClient> SecAggClient::Create(const SecAggParams& params, uint32_t index,
                                            const SigningKeyPair& identity,
                                            std::vector<std::vector<unsigned char>> client_public_keys) {
  RETURN_IF_ERROR(EnsureSodium());
  ASSIGN_OR_RETURN(NeighbourGraph graph, NeighbourGraph::Build(params));
  if (index >= params.num_clients) {
    return InvalidArgument("client index " + Str(index) + " is not below num_clients " +
                           Str(params.num_clients));
  }
  RETURN_IF_ERROR(CheckPublicKeys(client_public_keys, params.num_clients));
  if (identity.secret.size() != crypto_sign_SECRETKEYBYTES ||
      identity.public_key != client_public_keys[index]) {
    return InvalidArgument("the signing key of client " + Str(index) +
                           " is not loaded or does not match its enrolled key");
  }
  SecAggClient client(params, index, std::move(graph));
  client.client_public_keys_ = std::move(client_public_keys);
  AdvertiseKeysMessage& ad = client.advertisement_;
  ad.sender = index;
  NewX25519Pair(&client.c_secret_, &ad.c_public);
  NewX25519Pair(&client.s_secret_, &ad.s_public);
  RETURN_IF_ERROR(SignAdvertisement(client.session_, params.round, identity, &ad));
  return client;
}

Status SecAggClient::Abort(const std::string& message) {
  c_secret_.Wipe();
  s_secret_.Wipe();
  self_seed_.Wipe();
  peers_.clear();  // wipes keys and shares
  stage_ = Stage::kAborted;
  return Aborted("SecAgg client " + Str(index_) + " aborted round " + Str(params_.round) + ": " + message);
}

StatusOr<ShareKeysMessage> SecAggClient::ShareKeys(const RosterMessage& roster) {
  if (stage_ == Stage::kAborted) return Abort("already aborted");
  if (stage_ != Stage::kAdvertised) return FailedPrecondition("ShareKeys called twice or out of order");
  if (roster.recipient != index_) return Abort("roster is addressed to client " + Str(roster.recipient));

  std::set<SecAggPublicKey> keys = {advertisement_.c_public, advertisement_.s_public};
  std::map<uint32_t, Peer> peers;
  for (const AdvertiseKeysMessage& ad : roster.advertisements) {
    if (ad.sender == index_) {
      if (!SameAdvertisement(ad, advertisement_))
        return Abort("roster holds a different advertisement for me");
      continue;
    }
    if (!graph_.AreNeighbours(index_, ad.sender))
      return Abort("roster holds non-neighbour " + Str(ad.sender));
    if (peers.count(ad.sender)) return Abort("roster lists client " + Str(ad.sender) + " twice");
    if (!VerifyAdvertisement(ad, session_, params_.round, client_public_keys_[ad.sender])) {
      return Abort("advertisement of client " + Str(ad.sender) + " does not verify with its long-term key");
    }
    if (!keys.insert(ad.c_public).second || !keys.insert(ad.s_public).second) {
      return Abort("client " + Str(ad.sender) + " advertised a public key that is already in use");
    }
    Peer& peer = peers[ad.sender];
    peer.c_public = ad.c_public;
    peer.s_public = ad.s_public;
  }
  if (peers.size() + 1 < params_.threshold) {
    return Abort("only " + Str(peers.size()) + " neighbours advertised keys; " + Str(params_.threshold - 1) +
                 " are needed for threshold " + Str(params_.threshold));
  }
  for (auto& [v, peer] : peers) {
    auto enc =
        AgreeKey(kEncLabel, session_, c_secret_.data(), index_, advertisement_.c_public, v, peer.c_public);
    if (!enc.ok()) return Abort(enc.status().message());
    auto pair =
        AgreeKey(kPairLabel, session_, s_secret_.data(), index_, advertisement_.s_public, v, peer.s_public);
    if (!pair.ok()) return Abort(pair.status().message());
    peer.enc_key = std::move(enc).value();
    peer.pair_seed = std::move(pair).value();
  }

  self_seed_ = SecretBytes(kSecAggSeedBytes);
  randombytes_buf(self_seed_.data(), self_seed_.size());
  std::vector<uint32_t> xs;
  xs.reserve(peers.size() + 1);
  for (const auto& entry : peers) xs.push_back(entry.first + 1);
  xs.push_back(index_ + 1);
  auto b_shares = ShamirSplit(self_seed_.data(), self_seed_.size(), params_.threshold, xs);
  if (!b_shares.ok()) return Abort(b_shares.status().message());
  auto s_shares = ShamirSplit(s_secret_.data(), s_secret_.size(), params_.threshold, xs);
  if (!s_shares.ok()) return Abort(s_shares.status().message());
  c_secret_.Wipe();  // the encryption keys are derived; s_sk lives on only as shares
  s_secret_.Wipe();

  ShareKeysMessage out;
  out.sender = index_;
  out.shares.reserve(peers.size());
  SecretBytes plaintext(2 * kShareBytes);
  size_t i = 0;
  for (auto& [v, peer] : peers) {
    (*b_shares)[i].SerializeTo(plaintext.data());
    (*s_shares)[i].SerializeTo(plaintext.data() + kShareBytes);
    EncryptedShares e;
    e.sender = index_;
    e.recipient = v;
    randombytes_buf(e.nonce.data(), e.nonce.size());
    e.ciphertext.resize(kEncryptedSharesCiphertextBytes);
    const std::string ad = SharesAd(session_, index_, v);
    crypto_aead_xchacha20poly1305_ietf_encrypt(e.ciphertext.data(), nullptr, plaintext.data(),
                                               plaintext.size(),
                                               reinterpret_cast<const unsigned char*>(ad.data()), ad.size(),
                                               nullptr, e.nonce.data(), peer.enc_key.data());
    out.shares.push_back(std::move(e));
    ++i;
  }
  Peer& self = peers[index_];
  self.sent_shares = true;
  self.b_share = std::move((*b_shares)[i]);
  self.s_share = std::move((*s_shares)[i]);
  peers_ = std::move(peers);
  stage_ = Stage::kSharedKeys;
  return out;
}

StatusOr<MaskedInputMessage> SecAggClient::MaskInput(const RelayedSharesMessage& relayed,
                                                     const std::vector<uint32_t>& input) {
  if (stage_ == Stage::kAborted) return Abort("already aborted");
  if (stage_ != Stage::kSharedKeys) return FailedPrecondition("MaskInput called before ShareKeys or twice");
  if (input.size() != params_.vector_length) {
    return InvalidArgument("SecAgg input has " + Str(input.size()) + " words, the round expects " +
                           Str(params_.vector_length));
  }
  const uint32_t mask = LowMask(params_.bit_width);
  for (size_t i = 0; i < input.size(); ++i) {
    if (input[i] > mask) {
      return InvalidArgument("SecAgg input word " + Str(i) + " = " + Str(input[i]) + " does not fit " +
                             Str(params_.bit_width) + " bits");
    }
  }
  if (relayed.recipient != index_)
    return Abort("relayed shares are addressed to client " + Str(relayed.recipient));
  for (const EncryptedShares& e : relayed.shares) {
    auto it = peers_.find(e.sender);
    if (e.recipient != index_ || it == peers_.end() || e.sender == index_) {
      return Abort("relayed ciphertext from " + Str(e.sender) + " to " + Str(e.recipient) + " is not for me");
    }
    Peer& peer = it->second;
    if (peer.sent_shares) return Abort("two ciphertexts from client " + Str(e.sender));
    if (e.ciphertext.size() != kEncryptedSharesCiphertextBytes) {
      return Abort("ciphertext from client " + Str(e.sender) + " has the wrong size");
    }
    SecretBytes plaintext(2 * kShareBytes);
    const std::string ad = SharesAd(session_, e.sender, index_);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(plaintext.data(), nullptr, nullptr, e.ciphertext.data(),
                                                   e.ciphertext.size(),
                                                   reinterpret_cast<const unsigned char*>(ad.data()),
                                                   ad.size(), e.nonce.data(), peer.enc_key.data()) != 0) {
      return Abort("shares from client " + Str(e.sender) + " fail authentication");
    }
    auto b = ShamirShare::Parse(plaintext.data(), kShareBytes);
    auto s = ShamirShare::Parse(plaintext.data() + kShareBytes, kShareBytes);
    if (!b.ok() || !s.ok() || b->x != index_ + 1 || s->x != index_ + 1 ||
        b->values.size() != ShamirChunkCount(kSecAggSeedBytes) ||
        s->values.size() != ShamirChunkCount(kSecAggSeedBytes)) {
      return Abort("shares from client " + Str(e.sender) + " are malformed");
    }
    peer.b_share = std::move(b).value();
    peer.s_share = std::move(s).value();
    peer.sent_shares = true;
    peer.enc_key.Wipe();
  }
  uint32_t senders = 0;
  for (const auto& [v, peer] : peers_) senders += (v != index_ && peer.sent_shares) ? 1 : 0;
  if (senders + 1 < params_.threshold) {
    return Abort("only " + Str(senders) + " neighbours sent shares; " + Str(params_.threshold - 1) +
                 " are needed for threshold " + Str(params_.threshold));
  }

  MaskedInputMessage out;
  out.sender = index_;
  out.bit_width = params_.bit_width;
  out.masked = input;
  MaskExpander expander(input.size());
  expander.Add(self_seed_.data(), MaskDomain::kSelf, out.masked.data());
  for (auto& [v, peer] : peers_) {
    if (v == index_ || !peer.sent_shares) continue;
    if (index_ < v) {
      expander.Add(peer.pair_seed.data(), MaskDomain::kPair, out.masked.data());
    } else {
      expander.Subtract(peer.pair_seed.data(), MaskDomain::kPair, out.masked.data());
    }
  }
  if (mask != 0xffffffffu) {
    for (uint32_t& w : out.masked) w &= mask;
  }
  self_seed_.Wipe();
  for (auto& entry : peers_) {
    entry.second.pair_seed.Wipe();
    entry.second.enc_key.Wipe();
  }
  stage_ = Stage::kMaskedInput;
  return out;
}

StatusOr<UnmaskResponse> SecAggClient::Unmask(const UnmaskRequest& request) {
  if (stage_ == Stage::kAborted) return Abort("already aborted");
  if (stage_ != Stage::kMaskedInput) return FailedPrecondition("Unmask called before MaskInput");
  std::set<uint32_t> survivors, dropped;
  for (uint32_t v : request.survivors) {
    if (!survivors.insert(v).second) return Abort("survivor " + Str(v) + " is listed twice");
  }
  for (uint32_t v : request.dropped) {
    if (!dropped.insert(v).second) return Abort("dropped client " + Str(v) + " is listed twice");
    if (survivors.count(v)) return Abort("client " + Str(v) + " is listed as both survivor and dropped");
  }
  if (!survivors.count(index_)) return Abort("the server does not list me as a survivor");

  std::vector<std::pair<uint32_t, ShareKind>> reveal;
  uint32_t live_holders = 0;
  for (uint32_t v : survivors) {
    if (v != index_ && !graph_.AreNeighbours(index_, v)) continue;  // not mine to answer for
    auto it = peers_.find(v);
    if (it == peers_.end() || !it->second.sent_shares) {
      return Abort("the server lists client " + Str(v) + " as a survivor but it never sent me shares");
    }
    ++live_holders;
    reveal.emplace_back(v, ShareKind::kSelfMaskSeed);
  }
  if (live_holders < params_.threshold) {
    return Abort("only " + Str(live_holders) + " survivors in my neighbourhood; the threshold is " +
                 Str(params_.threshold));
  }
  for (uint32_t v : dropped) {
    auto it = peers_.find(v);
    if (it == peers_.end() || !it->second.sent_shares) continue;  // I hold nothing of v
    reveal.emplace_back(v, ShareKind::kMaskKey);
  }
  for (const auto& [v, kind] : reveal) {
    const ShareKind before = peers_[v].revealed;
    if (before != ShareKind{} && before != kind) {
      return Abort("asked for the " + std::string(kind == ShareKind::kMaskKey ? "mask-key" : "self-mask") +
                   " share of client " + Str(v) + " after revealing its other share");
    }
  }
  UnmaskResponse out;
  out.sender = index_;
  out.shares.reserve(reveal.size());
  for (const auto& [v, kind] : reveal) {
    Peer& peer = peers_[v];
    peer.revealed = kind;
    RevealedShare r;
    r.owner = v;
    r.kind = kind;
    r.share = kind == ShareKind::kSelfMaskSeed ? peer.b_share : peer.s_share;
    out.shares.push_back(std::move(r));
  }
  return out;
}

}  // namespace flotilla::privacy
