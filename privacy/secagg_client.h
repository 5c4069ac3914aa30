// SecAggClient: one client's side of one SecAgg round, a network-free state
// machine over the message structs. Thread-safety: not thread-safe; use one per thread or lock.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/status.h"
#include "privacy/keys.h"
#include "privacy/secagg_messages.h"
#include "privacy/secagg_params.h"
#include "privacy/shamir.h"

namespace flotilla::privacy {

// One client's side of one round. Created per round; secrets (X25519 secret
// keys, b_u, derived keys) are wiped as soon as they are no longer needed and
// when the object is destroyed or aborts. Any failed check of what the
// server sent moves the client to a terminal aborted state: it returns
// Aborted from then on and never reveals anything else. Calling a stage out
// of order returns FailedPrecondition and changes nothing.
class SecAggClient {
 public:
  // Validates `params`, generates this round's two X25519 pairs and signs
  // them with `identity`. `client_public_keys[i]` is client i's long-term
  // Ed25519 public key (32 bytes), known from enrolment; entry `index` must be
  // identity's public key. The identity secret is not retained.
  static StatusOr<SecAggClient> Create(const SecAggParams& params, uint32_t index,
                                       const SigningKeyPair& identity,
                                       std::vector<std::vector<unsigned char>> client_public_keys);

  uint32_t index() const { return index_; }
  bool aborted() const { return stage_ == Stage::kAborted; }

  // Stage 0: the signed advertisement to send to the server.
  const AdvertiseKeysMessage& AdvertiseKeys() const { return advertisement_; }

  // Stage 1: checks the roster (signatures, neighbours only, distinct keys,
  // at least t - 1 neighbours), then returns one encrypted pair of shares per
  // neighbour in the roster. Aborted on any failed check.
  StatusOr<ShareKeysMessage> ShareKeys(const RosterMessage& roster);

  // Stage 2: decrypts and checks the relayed shares (they define this
  // client's view of U2), then masks `input`. InvalidArgument (without
  // aborting) when `input` has the wrong length or a value >= 2^k; Aborted
  // when a ciphertext fails or fewer than t - 1 neighbours sent shares.
  StatusOr<MaskedInputMessage> MaskInput(const RelayedSharesMessage& shares,
                                         const std::vector<uint32_t>& input);

  // Stage 3: returns shares of b_v for listed survivors and of s_sk_v for
  // listed dropped clients among those this client holds shares of. Aborted
  // when the lists overlap or repeat an index, this client is not a survivor,
  // a survivor never sent shares, fewer than t survivors are in this
  // client's neighbourhood, or the request asks for a different kind of share
  // of some peer than an earlier request did. A repeated consistent request
  // (e.g. after a server restart) gets the same answer.
  StatusOr<UnmaskResponse> Unmask(const UnmaskRequest& request);

 private:
  enum class Stage { kAdvertised, kSharedKeys, kMaskedInput, kAborted };
  struct Peer {
    SecAggPublicKey c_public{};
    SecAggPublicKey s_public{};
    SecretBytes enc_key;       // from c keys; decrypts the shares this peer sent
    SecretBytes pair_seed;     // s_uv
    bool sent_shares = false;  // in this client's view of U2
    ShamirShare b_share;       // this client's share of the peer's b
    ShamirShare s_share;       // this client's share of the peer's s_sk
    ShareKind revealed{};      // 0 until a share of this peer is revealed
  };

  SecAggClient(const SecAggParams& params, uint32_t index, NeighbourGraph graph);
  // Wipes every secret, enters kAborted and returns Aborted(message).
  Status Abort(const std::string& message);

  SecAggParams params_;
  uint32_t index_ = 0;
  NeighbourGraph graph_;
  SecAggDigest session_{};
  std::vector<std::vector<unsigned char>> client_public_keys_;
  Stage stage_ = Stage::kAdvertised;
  AdvertiseKeysMessage advertisement_;
  SecretBytes c_secret_;
  SecretBytes s_secret_;
  SecretBytes self_seed_;           // b_u
  std::map<uint32_t, Peer> peers_;  // neighbours in the roster, and this client itself
};

}  // namespace flotilla::privacy
