#include "privacy/clipping.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace flotilla::privacy {
namespace {

// Tolerance of ClipL2's guarantee, relative to the clip norm.
constexpr double kClipSlack = 1e-12;
// Rescaling passes before ClipL2 gives up and zeroes the vector. One pass
// suffices in practice; a second is needed only when the double-precision
// norm's own rounding (relative error up to ~n * 2^-53) pushes it over.
constexpr int kMaxRescales = 8;

void Zero(float* data, size_t n) {
  for (size_t i = 0; i < n; ++i) data[i] = 0.0f;
}

// data[i] = data[i] * factor, rounded toward zero so that |result| never
// exceeds the exact product.
void ScaleTowardZero(float* data, size_t n, double factor) {
  for (size_t i = 0; i < n; ++i) {
    const double exact = static_cast<double>(data[i]) * factor;
    float rounded = static_cast<float>(exact);
    if (std::fabs(static_cast<double>(rounded)) > std::fabs(exact)) rounded = std::nextafter(rounded, 0.0f);
    data[i] = rounded;
  }
}

}  // namespace

double L2Norm(const float* data, size_t n) {
  // Four partial sums: independent dependency chains (speed) and shorter
  // accumulation chains (accuracy).
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const double a = data[i], b = data[i + 1], c = data[i + 2], d = data[i + 3];
    s0 += a * a;
    s1 += b * b;
    s2 += c * c;
    s3 += d * d;
  }
  for (; i < n; ++i) s0 += static_cast<double>(data[i]) * data[i];
  return std::sqrt((s0 + s1) + (s2 + s3));
}

double ClipL2(float* data, size_t n, double clip_norm) {
  const double norm = L2Norm(data, n);
  if (!std::isfinite(norm) || !(clip_norm > 0.0)) {
    Zero(data, n);
    return norm;
  }
  if (norm <= clip_norm) return norm;  // includes clip_norm = +inf
  double current = norm;
  for (int pass = 0; pass < kMaxRescales; ++pass) {
    ScaleTowardZero(data, n, clip_norm / current);
    current = L2Norm(data, n);
    if (current <= clip_norm * (1.0 + kClipSlack)) return norm;
  }
  Zero(data, n);
  return norm;
}

StatusOr<AdaptiveClipper> AdaptiveClipper::Create(double initial_clip_norm, double target_quantile,
                                                  double learning_rate, double bit_noise_stddev) {
  if (!(initial_clip_norm > 0.0) || !std::isfinite(initial_clip_norm)) {
    return InvalidArgument("AdaptiveClipper: initial clip norm must be positive and finite, got " +
                           std::to_string(initial_clip_norm));
  }
  if (!(target_quantile >= 0.0 && target_quantile <= 1.0)) {
    return InvalidArgument("AdaptiveClipper: target quantile must be in [0, 1], got " +
                           std::to_string(target_quantile));
  }
  if (!(learning_rate >= 0.0) || !std::isfinite(learning_rate)) {
    return InvalidArgument("AdaptiveClipper: learning rate must be >= 0 and finite, got " +
                           std::to_string(learning_rate));
  }
  if (!(bit_noise_stddev >= 0.0) || !std::isfinite(bit_noise_stddev)) {
    return InvalidArgument("AdaptiveClipper: bit noise stddev must be >= 0 and finite, got " +
                           std::to_string(bit_noise_stddev));
  }
  return AdaptiveClipper(initial_clip_norm, target_quantile, learning_rate, bit_noise_stddev);
}

StatusOr<double> AdaptiveClipper::Update(int64_t count_below, int64_t n, GaussianNoise& noise) {
  if (n <= 0) return InvalidArgument("AdaptiveClipper::Update: n must be > 0, got " + std::to_string(n));
  if (count_below < 0 || count_below > n) {
    return InvalidArgument("AdaptiveClipper::Update: count_below must be in [0, " + std::to_string(n) +
                           "], got " + std::to_string(count_below));
  }
  const double noisy_fraction =
      (static_cast<double>(count_below) + noise.Sample(bit_noise_stddev_)) / static_cast<double>(n);
  const double next = clip_norm_ * std::exp(-learning_rate_ * (noisy_fraction - target_quantile_));
  clip_norm_ = std::isnan(next) ? clip_norm_
                                : std::min(std::max(next, std::numeric_limits<double>::min()),
                                           std::numeric_limits<double>::max());
  return clip_norm_;
}

StatusOr<double> AdaptiveClippingNoiseMultiplier(double z, double sigma_b) {
  if (!(z > 0.0) || !std::isfinite(z)) {
    return InvalidArgument("AdaptiveClippingNoiseMultiplier: z must be positive and finite, got " +
                           std::to_string(z));
  }
  if (!(sigma_b >= 0.0) || !std::isfinite(sigma_b)) {
    return InvalidArgument("AdaptiveClippingNoiseMultiplier: sigma_b must be >= 0 and finite, got " +
                           std::to_string(sigma_b));
  }
  if (!(2.0 * sigma_b > z)) {
    return OutOfRange("AdaptiveClippingNoiseMultiplier: the count noise sigma_b = " +
                      std::to_string(sigma_b) + " must exceed z / 2 = " + std::to_string(z / 2.0) +
                      "; otherwise releasing the count alone uses the whole privacy budget");
  }
  const double inv = 1.0 / (z * z) - 1.0 / (4.0 * sigma_b * sigma_b);
  if (!(inv > 0.0)) {
    return OutOfRange("AdaptiveClippingNoiseMultiplier: sigma_b = " + std::to_string(sigma_b) +
                      " is too close to z / 2 for a finite update noise multiplier");
  }
  return 1.0 / std::sqrt(inv);
}

}  // namespace flotilla::privacy
