// Private to privacy/secagg_*.cc: SecAgg key agreement. Signing and verifying
// key advertisements, X25519 key derivation and the share-encryption AD.
// Thread-safety: free functions, safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "privacy/keys.h"
#include "privacy/secagg_messages.h"
#include "privacy/secagg_params.h"

namespace flotilla::privacy::secagg_internal {

// Labels of the two keys AgreeKey derives.
inline constexpr char kEncLabel[] = "flotilla-secagg-enc-v1";    // share encryption, from the c keys
inline constexpr char kPairLabel[] = "flotilla-secagg-pair-v1";  // pairwise mask seed, from the s keys

// The bytes a client signs to advertise its keys: "flotilla-secagg-keys-v1" ||
// session || c_public || s_public || round u32 || index u32.
std::string SignedKeyBytes(const SecAggDigest& session, uint32_t round, uint32_t index,
                           const SecAggPublicKey& c_public, const SecAggPublicKey& s_public);

// Signs m's keys (sender, c_public, s_public) with `identity` into
// m->signature. Internal when libsodium fails.
Status SignAdvertisement(const SecAggDigest& session, uint32_t round, const SigningKeyPair& identity,
                         AdvertiseKeysMessage* m);

// True when m's signature verifies under the sender's long-term Ed25519 key.
bool VerifyAdvertisement(const AdvertiseKeysMessage& m, const SecAggDigest& session, uint32_t round,
                         const std::vector<unsigned char>& public_key);

// The associated data of the ciphertext `sender` makes for `recipient`:
// "flotilla-secagg-shares-v1" || session || sender u32 || recipient u32.
std::string SharesAd(const SecAggDigest& session, uint32_t sender, uint32_t recipient);

// A 32-byte key shared by `me` and `peer`: BLAKE2b-256(label || session ||
// X25519(my_secret, peer_public) || public key of the lower index || of the
// higher). Fails when the peer's key is a low-order point.
StatusOr<SecretBytes> AgreeKey(const char* label, const SecAggDigest& session, const unsigned char* my_secret,
                               uint32_t me, const SecAggPublicKey& my_public, uint32_t peer,
                               const SecAggPublicKey& peer_public);

// A fresh X25519 pair from the CSPRNG.
void NewX25519Pair(SecretBytes* secret, SecAggPublicKey* public_key);

// OK when there is one 32-byte long-term public key per client.
Status CheckPublicKeys(const std::vector<std::vector<unsigned char>>& keys, uint32_t n);

}  // namespace flotilla::privacy::secagg_internal
