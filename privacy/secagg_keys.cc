#include "privacy/secagg_keys.h"

#include <sodium.h>

#include <cstring>

#include "privacy/secagg_codec.h"

namespace flotilla::privacy::secagg_internal {
namespace {

constexpr char kKeysLabel[] = "flotilla-secagg-keys-v1";
constexpr char kSharesLabel[] = "flotilla-secagg-shares-v1";

}  // namespace

std::string SignedKeyBytes(const SecAggDigest& session, uint32_t round, uint32_t index,
                           const SecAggPublicKey& c_public, const SecAggPublicKey& s_public) {
  ByteWriter w;
  w.Bytes(reinterpret_cast<const unsigned char*>(kKeysLabel), sizeof(kKeysLabel) - 1);
  w.Bytes(session.data(), session.size());
  w.Bytes(c_public.data(), c_public.size());
  w.Bytes(s_public.data(), s_public.size());
  w.U32(round);
  w.U32(index);
  return w.Take();
}

Status SignAdvertisement(const SecAggDigest& session, uint32_t round, const SigningKeyPair& identity,
                         AdvertiseKeysMessage* m) {
  const std::string msg = SignedKeyBytes(session, round, m->sender, m->c_public, m->s_public);
  if (crypto_sign_detached(m->signature.data(), nullptr, reinterpret_cast<const unsigned char*>(msg.data()),
                           msg.size(), identity.secret.data()) != 0) {
    return Internal("crypto_sign_detached failed");
  }
  return Status::Ok();
}

bool VerifyAdvertisement(const AdvertiseKeysMessage& m, const SecAggDigest& session, uint32_t round,
                         const std::vector<unsigned char>& public_key) {
  const std::string msg = SignedKeyBytes(session, round, m.sender, m.c_public, m.s_public);
  return crypto_sign_verify_detached(m.signature.data(), reinterpret_cast<const unsigned char*>(msg.data()),
                                     msg.size(), public_key.data()) == 0;
}

std::string SharesAd(const SecAggDigest& session, uint32_t sender, uint32_t recipient) {
  ByteWriter w;
  w.Bytes(reinterpret_cast<const unsigned char*>(kSharesLabel), sizeof(kSharesLabel) - 1);
  w.Bytes(session.data(), session.size());
  w.U32(sender);
  w.U32(recipient);
  return w.Take();
}

StatusOr<SecretBytes> AgreeKey(const char* label, const SecAggDigest& session, const unsigned char* my_secret,
                               uint32_t me, const SecAggPublicKey& my_public, uint32_t peer,
                               const SecAggPublicKey& peer_public) {
  SecretBytes shared(crypto_scalarmult_BYTES);
  if (crypto_scalarmult(shared.data(), my_secret, peer_public.data()) != 0) {
    return InvalidArgument("client " + std::to_string(peer) + " advertised an invalid X25519 public key");
  }
  const SecAggPublicKey& lo = me < peer ? my_public : peer_public;
  const SecAggPublicKey& hi = me < peer ? peer_public : my_public;
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, kSecAggSeedBytes);
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(label), std::strlen(label));
  crypto_generichash_update(&state, session.data(), session.size());
  crypto_generichash_update(&state, shared.data(), shared.size());
  crypto_generichash_update(&state, lo.data(), lo.size());
  crypto_generichash_update(&state, hi.data(), hi.size());
  SecretBytes key(kSecAggSeedBytes);
  crypto_generichash_final(&state, key.data(), key.size());
  sodium_memzero(&state, sizeof(state));
  return key;
}

void NewX25519Pair(SecretBytes* secret, SecAggPublicKey* public_key) {
  *secret = SecretBytes(crypto_scalarmult_SCALARBYTES);
  randombytes_buf(secret->data(), secret->size());
  crypto_scalarmult_base(public_key->data(), secret->data());
}

Status CheckPublicKeys(const std::vector<std::vector<unsigned char>>& keys, uint32_t n) {
  if (keys.size() != n) {
    return InvalidArgument("need one long-term public key per client: " + std::to_string(n) + ", got " +
                           std::to_string(keys.size()));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i].size() != crypto_sign_PUBLICKEYBYTES) {
      return InvalidArgument("long-term public key of client " + std::to_string(i) + " is not 32 bytes");
    }
  }
  return Status::Ok();
}

}  // namespace flotilla::privacy::secagg_internal
