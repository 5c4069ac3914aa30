// SecAgg mask expansion: the ChaCha20 PRG that turns 32-byte seeds into the
// self and pairwise masks. Thread-safety: MaskExpander is not thread-safe; one per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace flotilla::privacy {

enum class MaskDomain : uint8_t { kSelf, kPair };

// Expands 32-byte seeds into ChaCha20 keystreams of `length` uint32 words
// (one crypto_stream_chacha20 call per seed, into a scratch buffer) and adds
// or subtracts them from an accumulator with wrapping uint32 arithmetic. The
// caller reduces mod 2^k at the end. The scratch buffer is wiped on
// destruction. Not thread-safe; one per thread.
class MaskExpander {
 public:
  explicit MaskExpander(size_t length);
  ~MaskExpander();
  MaskExpander(const MaskExpander&) = delete;
  MaskExpander& operator=(const MaskExpander&) = delete;

  // acc[i] += PRG(seed)[i] (mod 2^32). REQUIRES: seed has 32 bytes, acc has
  // `length` words.
  void Add(const unsigned char* seed, MaskDomain domain, uint32_t* acc);
  // acc[i] -= PRG(seed)[i] (mod 2^32).
  void Subtract(const unsigned char* seed, MaskDomain domain, uint32_t* acc);
  // Writes PRG(seed) to out (`length` words).
  void Expand(const unsigned char* seed, MaskDomain domain, uint32_t* out) const;

 private:
  std::vector<uint32_t> scratch_;
};

}  // namespace flotilla::privacy
