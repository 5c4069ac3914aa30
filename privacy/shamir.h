// Shamir t-of-n secret sharing of byte strings over the prime field GF(p),
// p = 2^61 - 1 (a Mersenne prime, so multiplication reduces with shifts).
//
// A secret of S bytes is cut into ceil(S / 7) chunks of 7 bytes (the last may
// be shorter), each read as a little-endian integer < 2^56 < p. Every chunk is
// shared with its own random polynomial of degree t-1 whose coefficients come
// from libsodium's CSPRNG (rejection-sampled into the field), and all chunks
// use the same x-coordinates. A share is therefore one x plus one field
// element per chunk. Any t shares with distinct x reconstruct the secret by
// Lagrange interpolation at 0; t-1 shares reveal nothing about it.
//
// Shamir sharing gives secrecy, not integrity: a corrupted share yields a wrong
// secret without an error (unless the result does not fit the chunk width).
// Callers that can check the result (e.g. a reconstructed key against its
// public key) should do so.
//
// Share wire format (little-endian):
//   x (u32, nonzero, < p) || count (u16) || count x value (u64, each < p)
//
// Thread-safety: free functions over values; safe from any thread once
// EnsureSodium() has succeeded (the functions call it themselves).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "privacy/keys.h"

namespace flotilla::privacy {

// The field modulus, 2^61 - 1.
inline constexpr uint64_t kShamirPrime = (uint64_t{1} << 61) - 1;
// Bytes of secret per field element.
inline constexpr size_t kShamirChunkBytes = 7;
// Largest secret accepted by ShamirSplit / ShamirReconstruct.
inline constexpr size_t kShamirMaxSecretBytes = 4096;

// Number of field elements in a share of a `secret_size`-byte secret.
inline size_t ShamirChunkCount(size_t secret_size) {
  return (secret_size + kShamirChunkBytes - 1) / kShamirChunkBytes;
}

// One share: the evaluation of every chunk polynomial at `x`. The values are
// secret material; they are wiped when the share is destroyed.
struct ShamirShare {
  uint32_t x = 0;
  std::vector<uint64_t> values;  // one per chunk, each < kShamirPrime

  ShamirShare() = default;
  ShamirShare(const ShamirShare&) = default;
  ShamirShare& operator=(const ShamirShare&) = default;
  ShamirShare(ShamirShare&&) = default;
  ShamirShare& operator=(ShamirShare&&) = default;
  ~ShamirShare();

  // 6 + 8 * values.size() bytes.
  size_t SerializedSize() const { return 6 + 8 * values.size(); }
  // Writes SerializedSize() bytes to `out` (e.g. into a SecretBytes buffer).
  void SerializeTo(unsigned char* out) const;
  std::string Serialize() const;
  // Parses exactly `size` bytes. InvalidArgument on a wrong length, x = 0,
  // x >= p, a count over ShamirChunkCount(kShamirMaxSecretBytes) or a value
  // >= p.
  static StatusOr<ShamirShare> Parse(const unsigned char* data, size_t size);
};

// Splits `secret` (1..kShamirMaxSecretBytes bytes) into one share per entry of
// `xs`, any `threshold` of which reconstruct it. InvalidArgument unless
// 1 <= threshold <= xs.size() and the xs are distinct, nonzero and < p.
StatusOr<std::vector<ShamirShare>> ShamirSplit(const unsigned char* secret, size_t secret_size,
                                               uint32_t threshold, const std::vector<uint32_t>& xs);

// The same with x-coordinates 1..num_shares.
StatusOr<std::vector<ShamirShare>> ShamirSplit(const unsigned char* secret, size_t secret_size,
                                               uint32_t threshold, uint32_t num_shares);

// Reconstructs a `secret_size`-byte secret from the first `threshold` of
// `shares` (extra shares are ignored). InvalidArgument when threshold < 1,
// there are fewer than `threshold` shares, two of them share an x, an x is 0,
// or a share has the wrong number of values or a value >= p. DataLoss when the
// interpolated chunks do not fit `secret_size` bytes, which means the shares
// are inconsistent (corrupt, from different secrets, or too few for the
// polynomial degree actually used).
StatusOr<SecretBytes> ShamirReconstruct(const std::vector<ShamirShare>& shares, uint32_t threshold,
                                        size_t secret_size);

}  // namespace flotilla::privacy
