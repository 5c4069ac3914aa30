// Quantization of float updates to words in Z_{2^k} whose sum over n clients
// cannot wrap out of the decoding window (used by SecAgg, not specific to it),
// with optional distributed DP noise. Thread-safety: free functions, safe from any thread.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"

namespace flotilla::privacy {

// Distributed DP. With noise_stddev = sigma > 0 every client adds
// N(0, sigma^2) to each coordinate of its clipped update before rounding, so
// a sum over m clients carries N(0, m sigma^2) per coordinate and no single
// party (the server included) sees an un-noised sum. The noise is unbounded
// in principle, so a client's word may fall below 0 or above the per-client
// maximum; words are therefore kept mod 2^k (a value below 0 wraps to near
// 2^k) and Dequantize decodes centred: it reduces sum - m * C * scale into
// [-2^(k-1), 2^(k-1)). The noise-free part of d lies in
// [-m * C * scale, m * C * scale] (plus rounding), and CheckQuantization
// reserves H = NoiseHeadroom(config) on each side for the noise: 10
// standard deviations of the noise of n clients, exceeded with probability
// ~1e-23, so the decoded sum is the true one except then. Caveat: the
// noise is continuous Gaussian rounded stochastically, not a discrete
// Gaussian (see the floating-point caveat in privacy/noise.h), and each
// client's sigma is the noise of the sum only when all n clients contribute;
// with dropouts the sum carries less. Account for both when stating a
// guarantee.

struct QuantizationConfig {
  double clip_norm = 1.0;    // C: updates are clipped to L2 norm C, so each coordinate is in [-C, C]
  uint32_t bit_width = 32;   // k
  uint32_t num_clients = 1;  // n: the most inputs that will be summed
  double scale = 1.0;        // levels per unit: x maps to round(scale * (x + C))
  // sigma: standard deviation of the Gaussian noise each client adds to each
  // clipped coordinate before rounding, in value units (the units of the
  // inputs and of C). 0 disables the noise. Must be finite and >= 0.
  double noise_stddev = 0.0;
};

// The largest quantized value one client can produce without noise:
// ceil(2 * C * scale). With noise a client's word can be anything mod 2^k.
uint64_t QuantizedMax(const QuantizationConfig& config);

// Room reserved on each side of the noise-free range of an n-client sum for
// the noise: H = ceil(10 * sqrt(n) * noise_stddev * scale) quantized units
// (0 when noise_stddev is 0; UINT64_MAX when it does not fit).
uint64_t NoiseHeadroom(const QuantizationConfig& config);

// OK when C and scale are finite and positive, noise_stddev is finite and
// >= 0, 1 <= k <= 32, n >= 1 and
//   n * QuantizedMax(config) + 2 * NoiseHeadroom(config) <= 2^k - 1;
// otherwise InvalidArgument naming the numbers (and the largest safe scale).
// Without noise this is exactly the condition that the sum cannot wrap.
Status CheckQuantization(const QuantizationConfig& config);

// The largest scale that passes CheckQuantization for C, k, n and
// noise_stddev (0 if none).
double MaxSafeScale(double clip_norm, uint32_t bit_width, uint32_t num_clients, double noise_stddev = 0.0);

// Clips `values` to L2 norm C, shifts by C and scales, then rounds
// stochastically (up with probability equal to the fractional part, using
// ChaCha20 keyed from the CSPRNG), so the result is unbiased:
// E[q_i] = scale * (x_i + C). InvalidArgument on a non-finite value or a
// configuration that fails CheckQuantization.
//
// Without noise (noise_stddev == 0) each word is in [0, QuantizedMax]. With
// noise, v_i = scale * (x_i + C) + scale * N(0, noise_stddev^2) is formed in
// double (noise from GaussianNoise, i.e. the CSPRNG, fresh per call), NOT
// clamped (clamping would bias the sum and weaken the noise), rounded
// stochastically to an integer q_i (E[q_i] = v_i), and returned as
// q_i mod 2^k (two's complement: -1 becomes 2^k - 1).
StatusOr<std::vector<uint32_t>> Quantize(const std::vector<float>& values, const QuantizationConfig& config);

// Maps the sum (mod 2^k; words are read mod 2^k) of `num_summands`
// quantized vectors back to the sum of their clipped float vectors plus
// their noise: d = sum - num_summands * C * scale is reduced into
// [-2^(k-1), 2^(k-1)) by adding or subtracting 2^k, and the result is
// d / scale. Without noise this equals sum / scale - num_summands * C up to
// rounding (but for a corner case far from MaxSafeScale, see quantization.cc).
// InvalidArgument unless 1 <= num_summands <= n and the configuration is
// valid.
StatusOr<std::vector<float>> Dequantize(const std::vector<uint32_t>& sum, uint32_t num_summands,
                                        const QuantizationConfig& config);

}  // namespace flotilla::privacy
