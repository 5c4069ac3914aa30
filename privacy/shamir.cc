#include "privacy/shamir.h"

#include <sodium.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

namespace flotilla::privacy {
namespace {

constexpr uint64_t kP = kShamirPrime;

uint64_t AddMod(uint64_t a, uint64_t b) {
  uint64_t r = a + b;  // < 2^62, no overflow
  return r >= kP ? r - kP : r;
}

uint64_t SubMod(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kP - b; }

uint64_t MulMod(uint64_t a, uint64_t b) {
  // a, b < 2^61, so the product is < 2^122 and splits into 61-bit halves.
  const unsigned __int128 z = static_cast<unsigned __int128>(a) * b;
  uint64_t r = (static_cast<uint64_t>(z) & kP) + static_cast<uint64_t>(z >> 61);
  r = (r & kP) + (r >> 61);
  return r >= kP ? r - kP : r;
}

uint64_t PowMod(uint64_t base, uint64_t exp) {
  uint64_t result = 1;
  while (exp > 0) {
    if (exp & 1) result = MulMod(result, base);
    base = MulMod(base, base);
    exp >>= 1;
  }
  return result;
}

// REQUIRES: a != 0 mod p.
uint64_t InvMod(uint64_t a) { return PowMod(a, kP - 2); }

// A uniform field element from the CSPRNG.
uint64_t RandomFieldElement() {
  for (;;) {
    uint64_t v = 0;
    randombytes_buf(&v, sizeof(v));
    v &= kP;  // 61 bits; rejects only v == p (probability 2^-61)
    if (v < kP) return v;
  }
}

void PutLe(unsigned char* out, uint64_t v, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

uint64_t GetLe(const unsigned char* in, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(in[i]) << (8 * i);
  return v;
}

Status CheckSecretSize(size_t secret_size) {
  if (secret_size == 0 || secret_size > kShamirMaxSecretBytes) {
    return InvalidArgument("Shamir secret must be 1.." + std::to_string(kShamirMaxSecretBytes) +
                           " bytes, got " + std::to_string(secret_size));
  }
  return Status::Ok();
}

}  // namespace

ShamirShare::~ShamirShare() {
  if (!values.empty()) sodium_memzero(values.data(), values.size() * sizeof(uint64_t));
}

void ShamirShare::SerializeTo(unsigned char* out) const {
  PutLe(out, x, 4);
  PutLe(out + 4, values.size(), 2);
  for (size_t i = 0; i < values.size(); ++i) PutLe(out + 6 + 8 * i, values[i], 8);
}

std::string ShamirShare::Serialize() const {
  std::string out(SerializedSize(), '\0');
  SerializeTo(reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

StatusOr<ShamirShare> ShamirShare::Parse(const unsigned char* data, size_t size) {
  if (size < 6) return InvalidArgument("Shamir share: " + std::to_string(size) + " bytes, need at least 6");
  ShamirShare share;
  share.x = static_cast<uint32_t>(GetLe(data, 4));
  const size_t count = GetLe(data + 4, 2);
  if (share.x == 0) return InvalidArgument("Shamir share: x-coordinate is 0");
  if (count == 0 || count > ShamirChunkCount(kShamirMaxSecretBytes)) {
    return InvalidArgument("Shamir share: bad value count " + std::to_string(count));
  }
  if (size != 6 + 8 * count) {
    return InvalidArgument("Shamir share: " + std::to_string(size) + " bytes for " + std::to_string(count) +
                           " values, expected " + std::to_string(6 + 8 * count));
  }
  share.values.resize(count);
  for (size_t i = 0; i < count; ++i) {
    share.values[i] = GetLe(data + 6 + 8 * i, 8);
    if (share.values[i] >= kP)
      return InvalidArgument("Shamir share: value " + std::to_string(i) + " is not < p");
  }
  return share;
}

StatusOr<std::vector<ShamirShare>> ShamirSplit(const unsigned char* secret, size_t secret_size,
                                               uint32_t threshold, const std::vector<uint32_t>& xs) {
  RETURN_IF_ERROR(EnsureSodium());
  RETURN_IF_ERROR(CheckSecretSize(secret_size));
  if (threshold < 1 || threshold > xs.size()) {
    return InvalidArgument("Shamir threshold must be in 1.." + std::to_string(xs.size()) +
                           " (the number of shares), got " + std::to_string(threshold));
  }
  std::unordered_set<uint32_t> seen;
  for (uint32_t x : xs) {
    if (x == 0) return InvalidArgument("Shamir x-coordinate 0 would reveal the secret");
    if (!seen.insert(x).second)
      return InvalidArgument("Shamir x-coordinate " + std::to_string(x) + " is repeated");
  }
  const size_t chunks = ShamirChunkCount(secret_size);
  std::vector<ShamirShare> shares(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    shares[i].x = xs[i];
    shares[i].values.resize(chunks);
  }
  std::vector<uint64_t> coeffs(threshold);
  for (size_t c = 0; c < chunks; ++c) {
    const size_t offset = c * kShamirChunkBytes;
    coeffs[0] = GetLe(secret + offset, std::min(kShamirChunkBytes, secret_size - offset));
    for (uint32_t j = 1; j < threshold; ++j) coeffs[j] = RandomFieldElement();
    for (ShamirShare& share : shares) {
      uint64_t acc = 0;  // Horner's rule, highest coefficient first
      for (uint32_t j = threshold; j-- > 0;) acc = AddMod(MulMod(acc, share.x), coeffs[j]);
      share.values[c] = acc;
    }
  }
  sodium_memzero(coeffs.data(), coeffs.size() * sizeof(uint64_t));
  return shares;
}

StatusOr<std::vector<ShamirShare>> ShamirSplit(const unsigned char* secret, size_t secret_size,
                                               uint32_t threshold, uint32_t num_shares) {
  std::vector<uint32_t> xs(num_shares);
  for (uint32_t i = 0; i < num_shares; ++i) xs[i] = i + 1;
  return ShamirSplit(secret, secret_size, threshold, xs);
}

StatusOr<SecretBytes> ShamirReconstruct(const std::vector<ShamirShare>& shares, uint32_t threshold,
                                        size_t secret_size) {
  RETURN_IF_ERROR(CheckSecretSize(secret_size));
  if (threshold < 1) return InvalidArgument("Shamir threshold must be at least 1");
  if (shares.size() < threshold) {
    return InvalidArgument("Shamir reconstruction needs " + std::to_string(threshold) + " shares, got " +
                           std::to_string(shares.size()));
  }
  const size_t chunks = ShamirChunkCount(secret_size);
  std::unordered_set<uint32_t> seen;
  for (uint32_t i = 0; i < threshold; ++i) {
    const ShamirShare& s = shares[i];
    if (s.x == 0) return InvalidArgument("Shamir share " + std::to_string(i) + " has x-coordinate 0");
    if (!seen.insert(s.x).second) {
      return InvalidArgument("two Shamir shares have x-coordinate " + std::to_string(s.x));
    }
    if (s.values.size() != chunks) {
      return InvalidArgument("Shamir share " + std::to_string(i) + " has " + std::to_string(s.values.size()) +
                             " values; a " + std::to_string(secret_size) + "-byte secret needs " +
                             std::to_string(chunks));
    }
    for (uint64_t v : s.values) {
      if (v >= kP)
        return InvalidArgument("Shamir share " + std::to_string(i) + " has a value that is not < p");
    }
  }
  // Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i).
  std::vector<uint64_t> lambda(threshold);
  for (uint32_t i = 0; i < threshold; ++i) {
    uint64_t num = 1, den = 1;
    for (uint32_t j = 0; j < threshold; ++j) {
      if (j == i) continue;
      num = MulMod(num, shares[j].x);
      den = MulMod(den, SubMod(shares[j].x, shares[i].x));
    }
    lambda[i] = MulMod(num, InvMod(den));
  }
  SecretBytes secret(secret_size);
  for (size_t c = 0; c < chunks; ++c) {
    uint64_t acc = 0;
    for (uint32_t i = 0; i < threshold; ++i) acc = AddMod(acc, MulMod(lambda[i], shares[i].values[c]));
    const size_t offset = c * kShamirChunkBytes;
    const size_t width = std::min(kShamirChunkBytes, secret_size - offset);
    const bool fits = (acc >> (8 * width)) == 0;
    if (!fits) {
      return DataLoss("Shamir shares are inconsistent: chunk " + std::to_string(c) + " does not fit " +
                      std::to_string(width) +
                      " bytes (corrupt shares, or fewer than the threshold used to split)");
    }
    PutLe(secret.data() + offset, acc, width);
  }
  return secret;
}

}  // namespace flotilla::privacy
