// Deterministic random numbers for everything that must be reproducible from
// a run's seed: partitions, client sampling, initialization seeds, batch
// order. Not for cryptography or DP noise (those use libsodium in privacy/).
//
// The generator is xoshiro256**, seeded through SplitMix64; every
// distribution here is written out so that results do not depend on the
// standard library's implementation.
//
// Thread-safety: an Rng is not thread-safe; give each thread its own.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace flotilla {

// Mixes a 64-bit value (SplitMix64 finalizer).
uint64_t Mix64(uint64_t x);

// Derives an independent seed from a parent seed and labels, e.g.
// DeriveSeed(run_seed, "train", round, client_index).
uint64_t DeriveSeed(uint64_t seed, std::string_view label, uint64_t a = 0, uint64_t b = 0);

class Rng {
 public:
  explicit Rng(uint64_t seed);

  uint64_t NextU64();
  // Uniform in [0, n), unbiased. REQUIRES: n > 0.
  uint64_t UniformInt(uint64_t n);
  // Uniform in [0, 1) with 53 random bits.
  double UniformDouble();
  // Standard normal (Box-Muller).
  double Normal();
  // Gamma(shape, 1) by Marsaglia-Tsang. REQUIRES: shape > 0.
  double Gamma(double shape);

  // Fisher-Yates shuffle.
  template <typename T>
  void Shuffle(std::vector<T>* v) {
    for (size_t i = v->size(); i > 1; --i) {
      size_t j = static_cast<size_t>(UniformInt(i));
      std::swap((*v)[i - 1], (*v)[j]);
    }
  }

 private:
  uint64_t s_[4];
};

}  // namespace flotilla
