#include "privacy/noise.h"

#include <sodium.h>

#include <cmath>
#include <cstring>
#include <limits>

namespace flotilla::privacy {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;  // 2^-53

bool ValidStddev(double stddev) { return stddev >= 0.0 && std::isfinite(stddev); }

}  // namespace

SecureRng::SecureRng() : key_(crypto_stream_chacha20_KEYBYTES), buffer_(kBufferWords * sizeof(uint64_t)) {}

StatusOr<SecureRng> SecureRng::Create() {
  RETURN_IF_ERROR(EnsureSodium().WithContext("SecureRng"));
  SecureRng rng;
  randombytes_buf(rng.key_.data(), rng.key_.size());
  return rng;
}

StatusOr<SecureRng> SecureRng::CreateForTesting(uint64_t seed) {
  RETURN_IF_ERROR(EnsureSodium().WithContext("SecureRng"));
  SecureRng rng;
  static const char kLabel[] = "flotilla-test-rng";
  unsigned char message[sizeof(kLabel) - 1 + 8];
  std::memcpy(message, kLabel, sizeof(kLabel) - 1);
  for (int i = 0; i < 8; ++i) message[sizeof(kLabel) - 1 + i] = static_cast<unsigned char>(seed >> (8 * i));
  crypto_generichash(rng.key_.data(), rng.key_.size(), message, sizeof(message), nullptr, 0);
  return rng;
}

SecureRng::SecureRng(SecureRng&& other) noexcept
    : key_(std::move(other.key_)),
      buffer_(std::move(other.buffer_)),
      block_counter_(other.block_counter_),
      next_word_(other.next_word_) {
  other.next_word_ = kBufferWords;
}

SecureRng& SecureRng::operator=(SecureRng&& other) noexcept {
  if (this != &other) {
    key_ = std::move(other.key_);
    buffer_ = std::move(other.buffer_);
    block_counter_ = other.block_counter_;
    next_word_ = other.next_word_;
    other.next_word_ = kBufferWords;
  }
  return *this;
}

SecureRng::~SecureRng() = default;  // SecretBytes wipe the key and the keystream

void SecureRng::Refill() {
  // Each refill uses a fresh nonce under the same key, so no keystream block
  // is ever produced twice (2^64 refills would be needed to wrap).
  unsigned char nonce[crypto_stream_chacha20_NONCEBYTES];
  for (size_t i = 0; i < sizeof(nonce); ++i) nonce[i] = static_cast<unsigned char>(block_counter_ >> (8 * i));
  ++block_counter_;
  crypto_stream_chacha20(buffer_.data(), buffer_.size(), nonce, key_.data());
  next_word_ = 0;
}

uint64_t SecureRng::NextU64() {
  if (next_word_ == kBufferWords) Refill();
  uint64_t word;
  unsigned char* p = buffer_.data() + next_word_ * sizeof(uint64_t);
  std::memcpy(&word, p, sizeof(word));
  std::memset(p, 0, sizeof(word));  // handed-out randomness does not stay in memory
  ++next_word_;
  return word;
}

double SecureRng::UniformDouble() { return static_cast<double>(NextU64() >> 11) * kTwoToMinus53; }

bool SecureRng::Bernoulli(double p) {
  if (!(p > 0.0)) return false;
  if (p >= 1.0) return true;
  return UniformDouble() < p;
}

StatusOr<GaussianNoise> GaussianNoise::Create() {
  ASSIGN_OR_RETURN(SecureRng rng, SecureRng::Create());
  return GaussianNoise(std::move(rng));
}

StatusOr<GaussianNoise> GaussianNoise::CreateForTesting(uint64_t seed) {
  ASSIGN_OR_RETURN(SecureRng rng, SecureRng::CreateForTesting(seed));
  return GaussianNoise(std::move(rng));
}

void GaussianNoise::NextPair(double* z0, double* z1) {
  // u1 in (0, 1] so that log(u1) is finite; u2 in [0, 1).
  const double u1 = 1.0 - static_cast<double>(rng_.NextU64() >> 11) * kTwoToMinus53;
  const double u2 = static_cast<double>(rng_.NextU64() >> 11) * kTwoToMinus53;
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double theta = kTwoPi * u2;
  *z0 = r * std::cos(theta);
  *z1 = r * std::sin(theta);
}

double GaussianNoise::Sample(double stddev) {
  if (!ValidStddev(stddev)) return std::numeric_limits<double>::quiet_NaN();
  if (has_spare_) {
    has_spare_ = false;
    return stddev * spare_;
  }
  double z0, z1;
  NextPair(&z0, &z1);
  spare_ = z1;
  has_spare_ = true;
  return stddev * z0;
}

void GaussianNoise::Fill(double* out, size_t n, double stddev) {
  if (!ValidStddev(stddev)) {
    for (size_t i = 0; i < n; ++i) out[i] = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  size_t i = 0;
  if (has_spare_ && n > 0) {
    out[i++] = stddev * spare_;
    has_spare_ = false;
  }
  for (; i + 1 < n; i += 2) {
    double z0, z1;
    NextPair(&z0, &z1);
    out[i] = stddev * z0;
    out[i + 1] = stddev * z1;
  }
  if (i < n) out[i] = Sample(stddev);
}

void GaussianNoise::AddNoise(float* data, size_t n, double stddev) {
  if (!ValidStddev(stddev)) {
    for (size_t i = 0; i < n; ++i) data[i] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  if (stddev == 0.0) return;
  size_t i = 0;
  if (has_spare_ && n > 0) {
    data[i] = static_cast<float>(static_cast<double>(data[i]) + stddev * spare_);
    ++i;
    has_spare_ = false;
  }
  for (; i + 1 < n; i += 2) {
    double z0, z1;
    NextPair(&z0, &z1);
    data[i] = static_cast<float>(static_cast<double>(data[i]) + stddev * z0);
    data[i + 1] = static_cast<float>(static_cast<double>(data[i + 1]) + stddev * z1);
  }
  if (i < n) data[i] = static_cast<float>(static_cast<double>(data[i]) + Sample(stddev));
}

}  // namespace flotilla::privacy
