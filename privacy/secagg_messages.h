// The SecAgg message structs exchanged in stages 0-3 and their wire forms
// (Serialize and Parse). Thread-safety: values; free to copy between threads.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "privacy/secagg_params.h"
#include "privacy/shamir.h"

namespace flotilla::privacy {

// Each Serialize() starts with a tag byte and a version byte (1); integers
// are little-endian; Parse() accepts exactly one well-formed message and
// bounds every count by the bytes present, so hostile input cannot cause
// large allocations. Semantic checks (indices, stage, signatures) happen in
// the client and server.

// Stage 0, client -> server, and relayed server -> clients inside a roster.
// Wire: tag 0x41 | 1 | sender u32 | c_public 32 | s_public 32 | signature 64.
struct AdvertiseKeysMessage {
  uint32_t sender = 0;
  SecAggPublicKey c_public{};                 // X25519, for share encryption
  SecAggPublicKey s_public{};                 // X25519, for pairwise masks
  std::array<unsigned char, 64> signature{};  // Ed25519 by sender's long-term key

  std::string Serialize() const;
  static StatusOr<AdvertiseKeysMessage> Parse(std::string_view bytes);
};

// Stage 1, server -> client: the verified advertisements of U1 ∩ (N(u) ∪ {u}).
// Wire: tag 0x52 | 1 | recipient u32 | count u32 | count x (sender u32 |
// c_public | s_public | signature).
struct RosterMessage {
  uint32_t recipient = 0;
  std::vector<AdvertiseKeysMessage> advertisements;

  std::string Serialize() const;
  static StatusOr<RosterMessage> Parse(std::string_view bytes);
};

// One client's two shares for one recipient, encrypted.
// Wire entry: sender u32 | recipient u32 | nonce 24 | ciphertext (108 bytes:
// the b share and the s_sk share, 46 bytes each, plus a 16-byte tag).
struct EncryptedShares {
  uint32_t sender = 0;
  uint32_t recipient = 0;
  std::array<unsigned char, 24> nonce{};
  std::vector<unsigned char> ciphertext;
};
inline constexpr size_t kEncryptedSharesCiphertextBytes = 2 * (6 + 8 * 5) + 16;

// Stage 1, client -> server. Wire: tag 0x53 | 1 | sender u32 | count u32 |
// entries.
struct ShareKeysMessage {
  uint32_t sender = 0;
  std::vector<EncryptedShares> shares;  // one per neighbour in U1

  std::string Serialize() const;
  static StatusOr<ShareKeysMessage> Parse(std::string_view bytes);
};

// Stage 2, server -> client: the ciphertexts addressed to the recipient by
// members of U2. Wire: tag 0x54 | 1 | recipient u32 | count u32 | entries.
struct RelayedSharesMessage {
  uint32_t recipient = 0;
  std::vector<EncryptedShares> shares;

  std::string Serialize() const;
  static StatusOr<RelayedSharesMessage> Parse(std::string_view bytes);
};

// Stage 2, client -> server. Wire: tag 0x4d | 1 | sender u32 | bit_width u8 |
// length u32 | the words packed at bit_width bits each, least significant
// bit first, padded with zero bits to a whole byte.
struct MaskedInputMessage {
  uint32_t sender = 0;
  uint32_t bit_width = 32;
  std::vector<uint32_t> masked;  // each < 2^bit_width

  std::string Serialize() const;
  static StatusOr<MaskedInputMessage> Parse(std::string_view bytes);
};

// Stage 3, server -> client. Wire: tag 0x55 | 1 | count u32 | survivors |
// count u32 | dropped.
struct UnmaskRequest {
  std::vector<uint32_t> survivors;  // U3 (restricted to the recipient's neighbourhood)
  std::vector<uint32_t> dropped;    // U2 \ U3 (likewise)

  std::string Serialize() const;
  static StatusOr<UnmaskRequest> Parse(std::string_view bytes);
};

enum class ShareKind : uint8_t {
  kSelfMaskSeed = 1,  // share of b_v: revealed for survivors
  kMaskKey = 2,       // share of s_sk_v: revealed for dropped clients
};

struct RevealedShare {
  uint32_t owner = 0;  // whose secret this is a share of
  ShareKind kind = ShareKind::kSelfMaskSeed;
  ShamirShare share;
};

// Stage 3, client -> server. Wire: tag 0x56 | 1 | sender u32 | count u32 |
// count x (owner u32 | kind u8 | share length u16 | share).
struct UnmaskResponse {
  uint32_t sender = 0;
  std::vector<RevealedShare> shares;

  std::string Serialize() const;
  static StatusOr<UnmaskResponse> Parse(std::string_view bytes);
};

}  // namespace flotilla::privacy
