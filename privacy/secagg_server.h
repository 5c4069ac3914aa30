// SecAggServer: the aggregator's side of one SecAgg round, a network-free
// state machine over the message structs. Thread-safety: not thread-safe; use one per thread or lock.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/status.h"
#include "privacy/secagg_messages.h"
#include "privacy/secagg_params.h"
#include "privacy/shamir.h"

namespace flotilla::privacy {

// The aggregator's side of one round: verifies and relays keys and shares,
// sums masked inputs as they arrive (O(vector_length) memory for the sum),
// tracks who is still present and unmasks. Handle* reject a bad or
// duplicate message without changing state (InvalidArgument,
// PermissionDenied for a bad signature, AlreadyExists for a repeat,
// FailedPrecondition for the wrong stage); End* close a stage and abort the
// round if fewer than t clients remain. After an abort every call returns
// the abort status.
class SecAggServer {
 public:
  enum class Stage { kAdvertiseKeys, kShareKeys, kMaskedInput, kUnmask, kDone, kAborted };

  // `client_public_keys[i]`: client i's long-term Ed25519 public key.
  static StatusOr<SecAggServer> Create(const SecAggParams& params,
                                       std::vector<std::vector<unsigned char>> client_public_keys);

  Stage stage() const { return stage_; }
  const SecAggParams& params() const { return params_; }

  Status HandleAdvertiseKeys(const AdvertiseKeysMessage& message);
  // Closes stage 0: U1 = clients whose advertisement verified.
  Status EndAdvertiseKeys();
  // REQUIRES stage >= kShareKeys and client in U1.
  StatusOr<RosterMessage> RosterFor(uint32_t client) const;

  // Accepts a ShareKeys message from a member of U1 that holds exactly one
  // well-formed ciphertext for each of its neighbours in U1.
  Status HandleShareKeys(const ShareKeysMessage& message);
  // Closes stage 1: U2 = clients whose ShareKeys message was accepted.
  Status EndShareKeys();
  // REQUIRES stage >= kMaskedInput and client in U2.
  StatusOr<RelayedSharesMessage> SharesFor(uint32_t client) const;

  // Adds a masked input from a member of U2 to the running sum.
  Status HandleMaskedInput(const MaskedInputMessage& message);
  // Closes stage 2: U3 = clients whose masked input was accepted.
  Status EndMaskedInput();
  // REQUIRES stage >= kUnmask and client in U3.
  StatusOr<UnmaskRequest> UnmaskRequestFor(uint32_t client) const;

  // Accepts the shares a member of U3 reveals.
  Status HandleUnmask(const UnmaskResponse& message);
  // Reconstructs every needed secret and returns sum_{u in U3} x_u mod 2^k.
  // Aborted if fewer than t clients answered or any secret has fewer than t
  // shares, or a reconstructed mask key does not match its advertised public
  // key (a corrupt share).
  StatusOr<std::vector<uint32_t>> Finish();

  // U3, ascending: whose inputs the sum contains (valid from kUnmask on).
  std::vector<uint32_t> Survivors() const;

 private:
  struct ClientState {
    bool advertised = false;  // in U1
    bool shared = false;      // in U2
    bool masked = false;      // in U3
    bool unmasked = false;    // in U4
    AdvertiseKeysMessage advertisement;
    std::vector<EncryptedShares> inbox;  // ciphertexts addressed to this client
    std::vector<ShamirShare> b_shares;   // revealed shares of this client's b
    std::vector<ShamirShare> s_shares;   // revealed shares of this client's s_sk
  };

  SecAggServer(const SecAggParams& params, NeighbourGraph graph);
  Status CheckStage(Stage expected) const;
  Status Abort(const std::string& message);
  uint32_t CountIf(bool ClientState::*flag) const;

  SecAggParams params_;
  NeighbourGraph graph_;
  SecAggDigest session_{};
  std::vector<std::vector<unsigned char>> client_public_keys_;
  Stage stage_ = Stage::kAdvertiseKeys;
  Status abort_status_;
  std::vector<ClientState> clients_;
  std::set<SecAggPublicKey> advertised_keys_;  // every key in U1, to refuse reuse
  std::vector<uint32_t> sum_;
};

}  // namespace flotilla::privacy
