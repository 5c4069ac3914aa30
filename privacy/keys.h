// Key material: CURVE (X25519) key pairs for transport encryption and
// Ed25519 key pairs for model signatures, their generation with libsodium,
// and their files. Secret bytes live in SecretBytes, which wipes them
// (sodium_memzero) when destroyed.
//
// Files are text, one "name = value" per line, '#' comments:
//   NAME.curve.pub   public = <Z85>                       (mode 0644)
//   NAME.curve.key   public = <Z85>, secret = <Z85>       (mode 0600)
//   NAME.sign.pub    public = <hex>                       (mode 0644)
//   NAME.sign.key    public = <hex>, secret = <hex>       (mode 0600)
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace flotilla::privacy {

// Initializes libsodium once; Internal if it cannot.
Status EnsureSodium();

// A heap buffer that is zeroed on destruction and on move-from.
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t size);
  ~SecretBytes();
  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;

  unsigned char* data() { return bytes_.data(); }
  const unsigned char* data() const { return bytes_.data(); }
  size_t size() const { return bytes_.size(); }
  void Wipe();

 private:
  std::vector<unsigned char> bytes_;
};

struct CurveKeyPair {
  std::string public_z85;  // 40 characters
  SecretBytes secret;      // 32 bytes
  std::string SecretZ85() const;
};

struct SigningKeyPair {
  std::vector<unsigned char> public_key;  // 32 bytes
  SecretBytes secret;                     // 64 bytes (libsodium's seed || public)
};

StatusOr<CurveKeyPair> GenerateCurveKeyPair();
// A public key's short fingerprint for people to compare: the first 8 bytes
// of its BLAKE2b-256 hash in hex, "ab12cd34:ef56ab78" (never key material).
std::string KeyFingerprint(const std::vector<unsigned char>& public_key);
// A key pair derived from `seed` (crypto_box_seed_keypair over BLAKE2b of
// the seed). Only for the simulator and tests, where reproducible runs need
// reproducible client identities; never for a real device.
StatusOr<CurveKeyPair> DeriveCurveKeyPairForSimulation(uint64_t seed);
StatusOr<SigningKeyPair> GenerateSigningKeyPair();
// A device's secure-aggregation identity (the Ed25519 pair that signs its
// per-round SecAgg keys), derived from its CURVE secret key:
// crypto_sign_seed_keypair(BLAKE2b-256("flotilla-secagg-identity-v1" ||
// curve secret)). One enrolled key thus serves both purposes, and the
// derived secret is as well protected as the CURVE key file.
StatusOr<SigningKeyPair> DeriveSecAggIdentity(const CurveKeyPair& curve);

// Certificates for SecAgg identities from an enrolment authority: an
// Ed25519 key held offline by whoever enrols devices, never by the
// aggregator. Devices that know the authority's public key accept a peer's
// identity key only with a valid certificate, so the aggregator (which
// relays the keys) cannot substitute its own. The certificate is a detached
// signature (64 bytes) over "flotilla-secagg-identity-cert-v1" || identity
// public key (32 bytes).
StatusOr<std::string> CertifySecAggIdentity(const SigningKeyPair& authority,
                                            const std::vector<unsigned char>& identity_public);
// PermissionDenied unless `cert` is the authority's certificate for
// `identity_public`.
Status VerifySecAggIdentityCert(const std::vector<unsigned char>& authority_public,
                                const std::vector<unsigned char>& identity_public, const std::string& cert);
// NAME.secagg.cert: the certificate in hex on one line.
Status WriteSecAggCertFile(const std::string& path, const std::string& cert, bool overwrite);
StatusOr<std::string> ReadSecAggCertFile(const std::string& path);

// Writes DIR/NAME.curve.pub and DIR/NAME.curve.key (0600, created with that
// mode so the secret is never world-readable). Refuses to overwrite unless
// `overwrite`.
Status WriteCurveKeyFiles(const std::string& dir, const std::string& name, const CurveKeyPair& pair,
                          bool overwrite);
Status WriteSigningKeyFiles(const std::string& dir, const std::string& name, const SigningKeyPair& pair,
                            bool overwrite);

// Reads a secret key file (*.curve.key); warns in the error if the file is
// readable by group or others.
StatusOr<CurveKeyPair> ReadCurveSecretFile(const std::string& path);
// Reads the public key from a *.curve.pub or *.curve.key file.
StatusOr<std::string> ReadCurvePublicFile(const std::string& path);
StatusOr<SigningKeyPair> ReadSigningSecretFile(const std::string& path);
StatusOr<std::vector<unsigned char>> ReadSigningPublicFile(const std::string& path);

// Validates a Z85 CURVE public key (40 characters, decodes to 32 bytes).
Status CheckCurvePublicKey(const std::string& z85);

std::string HexEncode(const unsigned char* data, size_t size);
StatusOr<std::vector<unsigned char>> HexDecode(const std::string& hex);

}  // namespace flotilla::privacy
