// Model signatures: Ed25519 (libsodium crypto_sign_detached) over the
// federation id, the model version, the round that produced it and a
// BLAKE2b-256 digest of its layout and weights. Clients verify before loading
// any model; binding the federation id means a model signed for one
// federation cannot be replayed into another that shares the signing key.
//
// Signed message:
//   "flotilla-model-v2" || len(federation) (u32 LE) || federation (UTF-8)
//     || version (u64 LE) || round (u32 LE) || digest (32)
// (Version 1, without the federation, is still verifiable with
// VerifyModelV1 so that an aggregator can re-sign a store written before.)
// Digest: BLAKE2b-256 over, per tensor in order, the name length (u32 LE),
// the name, the rank (u32 LE) and each dimension (i64 LE), then the float32
// data bytes (little-endian).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/weights.h"
#include "privacy/keys.h"

namespace flotilla::privacy {

using Digest = std::array<unsigned char, 32>;

Digest ModelDigest(const Weights& weights);

// 64-byte detached signature.
StatusOr<std::string> SignModel(const SigningKeyPair& key, const std::string& federation, uint64_t version,
                                uint32_t round, const Digest& digest);

// PermissionDenied with a clear message when the signature does not verify
// with `public_key` (wrong key, tampered weights, another federation,
// version or round).
Status VerifyModel(const std::vector<unsigned char>& public_key, const std::string& federation,
                   uint64_t version, uint32_t round, const Digest& digest, const std::string& signature);

// The version-1 format (no federation id), for migrating old stores only.
Status VerifyModelV1(const std::vector<unsigned char>& public_key, uint64_t version, uint32_t round,
                     const Digest& digest, const std::string& signature);

}  // namespace flotilla::privacy
