// L2 clipping of flat float vectors, and adaptive choice of the clip norm
// (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private
// Learning with Adaptive Clipping", NeurIPS'21).
//
// Thread-safety: the free functions are pure (apart from writing `data`);
// AdaptiveClipper is a value type, not synchronised.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/status.h"
#include "privacy/noise.h"

namespace flotilla::privacy {

// Euclidean norm of data[0, n), accumulated in double (cannot overflow for
// float input). NaN if any element is NaN, +inf if any is infinite.
double L2Norm(const float* data, size_t n);

// Scales data[0, n) so that its L2 norm is at most `clip_norm` and returns
// the norm it had before. A vector already within the bound is unchanged.
// Otherwise every element is multiplied by clip_norm / norm and rounded
// toward zero, and the result is re-measured: L2Norm(data, n) <=
// clip_norm * (1 + 1e-12) is guaranteed on return (if rescaling ever failed
// to reach that, the vector would be zeroed rather than exceed it).
// Clipping only shrinks: signs and directions are kept up to float rounding.
//
// A vector with a NaN or infinite element has no meaningful direction: it
// is set to all zeros (norm 0) and its NaN/+inf norm is returned, so the
// caller can reject or count it. clip_norm = +inf never clips.
// REQUIRES: clip_norm > 0 (a NaN or non-positive clip_norm zeroes the
// vector, the only output that respects every bound).
double ClipL2(float* data, size_t n, double clip_norm);

// Adaptive clipping by private quantile estimation (Andrew et al. 2021,
// Algorithm 1 / "geometric update"). Each round, every participating client
// reports the bit b_i = 1[||update_i|| <= C] for the current clip norm C;
// the server adds Gaussian noise to the count and moves C geometrically
// toward the gamma-quantile of the update norms:
//
//   b_noisy = (sum_i b_i + N(0, sigma_b^2)) / n
//   C      <- C * exp(-eta_C * (b_noisy - gamma))
//
// If more than a gamma fraction of updates fit under C, C shrinks, and vice
// versa; the fixed point is the gamma-quantile. n is the number of clients
// expected per round (the paper uses the expected count, not the realized
// one, so that n itself does not leak). The paper suggests gamma = 0.5,
// eta_C = 0.2 and sigma_b = n / 20.
//
// Privacy: releasing the noisy count costs privacy too. To keep the total
// equal to a target noise multiplier z, noise the clipped updates with
// AdaptiveClippingNoiseMultiplier(z, sigma_b) instead of z (Theorem 1).
class AdaptiveClipper {
 public:
  // Fails with InvalidArgument unless initial_clip_norm > 0,
  // target_quantile in [0, 1], learning_rate >= 0 and bit_noise_stddev >= 0,
  // all finite.
  static StatusOr<AdaptiveClipper> Create(double initial_clip_norm, double target_quantile,
                                          double learning_rate, double bit_noise_stddev);

  // The clip norm to use this round.
  double clip_norm() const { return clip_norm_; }
  double target_quantile() const { return target_quantile_; }

  // Applies one round's update from `count_below` = sum of the bits
  // 1[||update_i|| <= clip_norm()] over the round's clients and `n` = the
  // expected number of clients per round, drawing the count noise from
  // `noise`. Returns the new clip norm, which is kept within the positive
  // normal doubles. Fails with InvalidArgument (and leaves the clip norm
  // unchanged) unless n > 0 and 0 <= count_below <= n.
  StatusOr<double> Update(int64_t count_below, int64_t n, GaussianNoise& noise);

 private:
  AdaptiveClipper(double clip_norm, double target_quantile, double learning_rate, double bit_noise_stddev)
      : clip_norm_(clip_norm),
        target_quantile_(target_quantile),
        learning_rate_(learning_rate),
        bit_noise_stddev_(bit_noise_stddev) {}

  double clip_norm_;
  double target_quantile_;
  double learning_rate_;
  double bit_noise_stddev_;
};

// The noise multiplier z_delta for the clipped updates such that releasing
// them together with the noisy clipped-count (noise stddev sigma_b, where a
// client's centred bit has sensitivity 1/2) is as private as the Gaussian
// mechanism with noise multiplier z alone (Andrew et al. 2021, Theorem 1):
//
//   z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)
//
// Pass z_delta to the update noise and z to the accountant. z_delta > z;
// it grows without bound as 2 sigma_b approaches z from above. Fails with
// InvalidArgument unless z > 0 and sigma_b >= 0 are finite, and with
// OutOfRange unless 2 sigma_b > z (otherwise the count alone would use the
// whole budget; with fixed clipping no count is released: use z itself).
StatusOr<double> AdaptiveClippingNoiseMultiplier(double z, double sigma_b);

}  // namespace flotilla::privacy
