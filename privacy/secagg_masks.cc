#include "privacy/secagg_masks.h"

#include <sodium.h>

#include "privacy/secagg_params.h"

namespace flotilla::privacy {
namespace {

constexpr unsigned char kSelfNonce[crypto_stream_chacha20_NONCEBYTES] = {'f', 's', 'a', '-',
                                                                         's', 'e', 'l', 'f'};
constexpr unsigned char kPairNonce[crypto_stream_chacha20_NONCEBYTES] = {'f', 's', 'a', '-',
                                                                         'p', 'a', 'i', 'r'};

static_assert(kSecAggSeedBytes == crypto_stream_chacha20_KEYBYTES, "seeds are ChaCha20 keys");

}  // namespace

MaskExpander::MaskExpander(size_t length) : scratch_(length) {}

MaskExpander::~MaskExpander() {
  if (!scratch_.empty()) sodium_memzero(scratch_.data(), scratch_.size() * sizeof(uint32_t));
}

void MaskExpander::Expand(const unsigned char* seed, MaskDomain domain, uint32_t* out) const {
  const unsigned char* nonce = domain == MaskDomain::kSelf ? kSelfNonce : kPairNonce;
  crypto_stream_chacha20(reinterpret_cast<unsigned char*>(out), scratch_.size() * sizeof(uint32_t), nonce,
                         seed);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (size_t i = 0; i < scratch_.size(); ++i) out[i] = __builtin_bswap32(out[i]);
#endif
}

void MaskExpander::Add(const unsigned char* seed, MaskDomain domain, uint32_t* acc) {
  Expand(seed, domain, scratch_.data());
  const uint32_t* m = scratch_.data();
  const size_t n = scratch_.size();
  for (size_t i = 0; i < n; ++i) acc[i] += m[i];
}

void MaskExpander::Subtract(const unsigned char* seed, MaskDomain domain, uint32_t* acc) {
  Expand(seed, domain, scratch_.data());
  const uint32_t* m = scratch_.data();
  const size_t n = scratch_.size();
  for (size_t i = 0; i < n; ++i) acc[i] -= m[i];
}

}  // namespace flotilla::privacy
