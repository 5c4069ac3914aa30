// Randomness for differential privacy: a ChaCha20-based CSPRNG (SecureRng)
// and Gaussian noise drawn from it (GaussianNoise). Everything that a DP
// guarantee depends on (DP-SGD noise, Poisson sampling, adaptive-clipping
// bit noise, central DP noise) draws from these, never from flotilla::Rng
// or torch::randn, whose outputs are predictable from their seeds.
//
// Method. SecureRng holds a 256-bit key from libsodium's randombytes_buf and
// produces the ChaCha20 keystream (crypto_stream_chacha20, 64-bit nonce =
// block-of-4-KiB counter) in 4 KiB chunks; the key and the unread keystream
// are wiped when the generator is destroyed. Uniform doubles take the top
// 53 bits of a 64-bit keystream word. GaussianNoise uses the Box-Muller
// transform in double precision,
//   u1 = 1 - k1 * 2^-53 in (0, 1],  u2 = k2 * 2^-53 in [0, 1),
//   z0 = sqrt(-2 ln u1) cos(2 pi u2),  z1 = sqrt(-2 ln u1) sin(2 pi u2),
// using both outputs. Because u1 >= 2^-53, |z| <= sqrt(106 ln 2) ~ 8.57: the
// tails beyond 8.57 standard deviations (probability ~1e-17) are cut off.
// Box-Muller consumes exactly 16 bytes per pair and has no data-dependent
// rejection loop.
//
// Floating-point caveat (Mironov 2012, "On significance of the least
// significant bits for differential privacy", CCS'12; for the Gaussian
// mechanism see also Jin et al. 2022, "Are We There Yet? Timing and
// Floating-Point Attacks on Differential Privacy Systems", S&P'22). A
// textbook DP proof is about real-valued noise; floating-point samples take
// only some values, and the set of values x + noise can take after rounding
// depends on x, so in principle an observer of the exact output bits can
// distinguish neighbouring inputs with a probability the proof does not
// account for. We reduce, but do not remove, this: samples are computed in
// double (53-bit uniforms, double log/sin/cos) and the sum x + noise is
// formed in double and rounded once to float, so the float output keeps
// none of the sample's low-order structure (noise standard deviations used
// in practice are far above a float ulp of the values they are added to).
// This is NOT a proof. We do not implement Mironov's snapping mechanism
// (it is analysed for Laplace noise), nor a discrete Gaussian
// (Canonne, Kamath, Steinke 2020), which is the principled fix and fits the
// integer (SecAgg-quantized) update path. Treat this as a known limitation
// when stating guarantees.
//
// Thread-safety: neither class is thread-safe; give each thread its own
// generator. Both are move-only: a copy would replay the same noise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "core/status.h"
#include "privacy/keys.h"

namespace flotilla::privacy {

// A cryptographically secure pseudo-random generator (ChaCha20 keystream
// under a random 256-bit key).
class SecureRng {
 public:
  // A generator keyed from randombytes_buf. Internal if libsodium cannot be
  // initialized.
  static StatusOr<SecureRng> Create();
  // A generator whose key is BLAKE2b("flotilla-test-rng" || seed): the same
  // seed gives the same stream. For tests and benchmarks only: its output is
  // predictable and gives no privacy.
  static StatusOr<SecureRng> CreateForTesting(uint64_t seed);

  SecureRng(SecureRng&& other) noexcept;
  SecureRng& operator=(SecureRng&& other) noexcept;
  SecureRng(const SecureRng&) = delete;
  SecureRng& operator=(const SecureRng&) = delete;
  ~SecureRng();

  uint64_t NextU64();
  // Uniform in [0, 1) on the grid k * 2^-53.
  double UniformDouble();
  // True with probability p, up to 2^-53 (u < p with u = UniformDouble()).
  // p <= 0 is always false and p >= 1 always true.
  bool Bernoulli(double p);

 private:
  static constexpr size_t kBufferWords = 512;  // 4 KiB of keystream per refill

  SecureRng();
  void Refill();

  SecretBytes key_;             // 32 bytes
  SecretBytes buffer_;          // kBufferWords * 8 bytes of keystream
  uint64_t block_counter_ = 0;  // nonce of the next refill
  size_t next_word_ = kBufferWords;
};

// Gaussian noise N(0, stddev^2) from a SecureRng; see the file comment for
// the method and its floating-point caveat.
class GaussianNoise {
 public:
  // Keyed from randombytes_buf (fresh and unpredictable). Internal if
  // libsodium cannot be initialized.
  static StatusOr<GaussianNoise> Create();
  // Deterministic in `seed`; for tests and benchmarks only.
  static StatusOr<GaussianNoise> CreateForTesting(uint64_t seed);

  GaussianNoise(GaussianNoise&&) noexcept = default;
  GaussianNoise& operator=(GaussianNoise&&) noexcept = default;
  GaussianNoise(const GaussianNoise&) = delete;
  GaussianNoise& operator=(const GaussianNoise&) = delete;

  // One N(0, stddev^2) sample.
  // REQUIRES: stddev >= 0 and finite (checked: otherwise returns NaN).
  double Sample(double stddev);
  // Writes n independent N(0, stddev^2) samples to out[0, n).
  // REQUIRES: as Sample; with a bad stddev every output is NaN.
  void Fill(double* out, size_t n, double stddev);
  // data[i] = float(double(data[i]) + N(0, stddev^2)) for i in [0, n): the
  // sum is formed in double and rounded once. stddev == 0 leaves data
  // unchanged without drawing. REQUIRES: as Sample; with a bad stddev every
  // element becomes NaN, so a caller that ignores the contract cannot
  // silently publish un-noised data.
  void AddNoise(float* data, size_t n, double stddev);

 private:
  explicit GaussianNoise(SecureRng rng) : rng_(std::move(rng)) {}
  // Two independent standard normals.
  void NextPair(double* z0, double* z1);

  SecureRng rng_;
  bool has_spare_ = false;
  double spare_ = 0.0;  // a standard normal not yet handed out
};

}  // namespace flotilla::privacy
