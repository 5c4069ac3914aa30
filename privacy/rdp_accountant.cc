#include "privacy/rdp_accountant.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

namespace flotilla::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr double kLogSqrtPi = 0.57236494292470008707;  // log(sqrt(pi))

// The fractional-order series stops once both of its newest terms are below
// exp(kLogSeriesCutoff), as in TF Privacy.
constexpr double kLogSeriesCutoff = -30.0;
// Safety net against a series that does not converge; TF Privacy has none.
constexpr int64_t kMaxSeriesTerms = 50'000'000;

// Orders at or below this are not used by the (epsilon, delta) conversion.
constexpr double kMinUsableOrder = 1.01;
constexpr double kMaxOrder = 1e4;

// ComputeNoiseMultiplier searches noise multipliers up to this value.
constexpr double kMaxNoiseMultiplier = 1e6;
constexpr double kNoiseRelativeTolerance = 1e-6;

// Shortest representation that reads back as the same double.
std::string Num(double v) {
  char buf[64];
  const std::to_chars_result result = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, result.ptr);
}

// log(exp(x) + exp(y)).
double LogAdd(double x, double y) {
  const double a = std::min(x, y);
  const double b = std::max(x, y);
  if (a == kNegInf) return b;
  if (b == kInf) return kInf;
  return std::log1p(std::exp(a - b)) + b;
}

// log(exp(x) - exp(y)). REQUIRES: x >= y; returns NaN otherwise so that the
// caller can report the numerical failure.
double LogSub(double x, double y) {
  if (x < y) return std::numeric_limits<double>::quiet_NaN();
  if (y == kNegInf) return x;
  if (x == y) return kNegInf;
  const double e = std::expm1(x - y);
  if (std::isinf(e)) return x;  // exp(y) is negligible next to exp(x)
  return std::log(e) + y;
}

// log(erfc(x)), accurate also where erfc(x) underflows.
double LogErfc(double x) {
  if (x < 25.0) return std::log(std::erfc(x));
  if (std::isinf(x)) return kNegInf;
  // Asymptotic expansion:
  //   erfc(x) = exp(-x^2) / (x sqrt(pi)) * sum_k (-1)^k (2k-1)!! / (2x^2)^k.
  // For x >= 25 the truncation error after 8 terms is below 1e-20.
  const double inv_2x2 = 1.0 / (2.0 * x * x);
  double term = 1.0;
  double sum = 1.0;
  for (int k = 1; k <= 8; ++k) {
    term *= -(2.0 * k - 1.0) * inv_2x2;
    sum += term;
  }
  return -x * x - std::log(x) - kLogSqrtPi + std::log(sum);
}

// log(A_alpha) for integer alpha >= 2 (TF Privacy's _compute_log_a_int):
//   A = sum_{i=0}^{alpha} C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2)).
// REQUIRES: 0 < q < 1, sigma > 0.
double ComputeLogAInt(double q, double sigma, int64_t alpha) {
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double two_var = 2.0 * sigma * sigma;
  double log_a = kNegInf;
  double log_binom = 0.0;  // log C(alpha, i), updated incrementally
  for (int64_t i = 0; i <= alpha; ++i) {
    if (i > 0) {
      log_binom += std::log(static_cast<double>(alpha - i + 1)) - std::log(static_cast<double>(i));
    }
    const double di = static_cast<double>(i);
    const double log_coef = log_binom + di * log_q + static_cast<double>(alpha - i) * log_1mq;
    log_a = LogAdd(log_a, log_coef + (di * di - di) / two_var);
  }
  return log_a;
}

// log(A_alpha) for fractional alpha > 1 (TF Privacy's _compute_log_a_frac):
// the two series of Mironov et al. 2019, Section 3.3, summed until both terms
// fall below exp(-30). Returns NaN if the series misbehaves numerically.
// REQUIRES: 0 < q < 1, sigma > 0, alpha not an integer.
double ComputeLogAFrac(double q, double sigma, double alpha) {
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double two_var = 2.0 * sigma * sigma;
  const double sqrt2_sigma = std::sqrt(2.0) * sigma;
  const double z0 = sigma * sigma * std::log(1.0 / q - 1.0) + 0.5;
  const double log_half = std::log(0.5);

  double log_a0 = kNegInf;
  double log_a1 = kNegInf;
  double log_abs_coef = 0.0;  // log |C(alpha, i)|, updated incrementally
  bool coef_positive = true;  // sign of C(alpha, i)
  for (int64_t i = 0; i < kMaxSeriesTerms; ++i) {
    const double di = static_cast<double>(i);
    if (i > 0) {
      const double factor = alpha - di + 1.0;  // C(a,i) = C(a,i-1) (a-i+1)/i
      log_abs_coef += std::log(std::fabs(factor)) - std::log(di);
      if (factor < 0) coef_positive = !coef_positive;
    }
    const double j = alpha - di;
    const double log_t0 = log_abs_coef + di * log_q + j * log_1mq;
    const double log_t1 = log_abs_coef + j * log_q + di * log_1mq;
    const double log_e0 = log_half + LogErfc((di - z0) / sqrt2_sigma);
    const double log_e1 = log_half + LogErfc((z0 - j) / sqrt2_sigma);
    const double log_s0 = log_t0 + (di * di - di) / two_var + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / two_var + log_e1;
    if (coef_positive) {
      log_a0 = LogAdd(log_a0, log_s0);
      log_a1 = LogAdd(log_a1, log_s1);
    } else {
      log_a0 = LogSub(log_a0, log_s0);
      log_a1 = LogSub(log_a1, log_s1);
    }
    if (std::isnan(log_a0) || std::isnan(log_a1)) {
      return std::numeric_limits<double>::quiet_NaN();
    }
    if (std::max(log_s0, log_s1) < kLogSeriesCutoff) {
      return LogAdd(log_a0, log_a1);
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// Per-step RDP at one order (TF Privacy's _compute_rdp).
// REQUIRES: inputs validated by ValidateMechanism and ValidateOrders.
StatusOr<double> ComputeRdpAtOrder(double q, double sigma, double alpha) {
  if (q == 0.0) return 0.0;
  if (sigma == 0.0) return kInf;
  if (q == 1.0) return alpha / (2.0 * sigma * sigma);
  // For noise multipliers so small (below ~1e-150) that the exponents of the
  // series overflow a double, the RDP is astronomically large; report +inf,
  // which is an upper bound, rather than NaN.
  const double max_exponent = (alpha + 2.0) * (alpha + 2.0) / (2.0 * sigma * sigma);
  if (!(max_exponent < 1e300)) return kInf;
  double log_a;
  if (alpha == std::floor(alpha)) {
    log_a = ComputeLogAInt(q, sigma, static_cast<int64_t>(alpha));
  } else {
    log_a = ComputeLogAFrac(q, sigma, alpha);
  }
  if (std::isnan(log_a)) {
    return Internal("RDP series did not converge at order " + Num(alpha) + " for q=" + Num(q) +
                    ", noise multiplier=" + Num(sigma));
  }
  return std::max(0.0, log_a / (alpha - 1.0));
}

Status ValidateOrders(const std::vector<double>& orders) {
  if (orders.empty()) return InvalidArgument("RDP orders must not be empty");
  for (double a : orders) {
    if (!std::isfinite(a) || !(a > 1.0)) {
      return InvalidArgument("RDP order must be finite and > 1, got " + Num(a));
    }
    // The series cost grows with the order, and orders beyond this do not
    // tighten the (epsilon, delta) conversion in any practical regime.
    if (a > kMaxOrder) {
      return InvalidArgument("RDP order must be <= " + Num(kMaxOrder) + ", got " + Num(a));
    }
  }
  return Status::Ok();
}

Status ValidateMechanism(double q, double noise_multiplier, int64_t steps) {
  if (!std::isfinite(q) || q < 0.0 || q > 1.0) {
    return InvalidArgument("sampling rate q must be in [0, 1], got " + Num(q));
  }
  if (!std::isfinite(noise_multiplier) || noise_multiplier < 0.0) {
    return InvalidArgument("noise multiplier must be finite and >= 0, got " + Num(noise_multiplier));
  }
  if (steps < 0) {
    return InvalidArgument("steps must be >= 0, got " + std::to_string(steps));
  }
  return Status::Ok();
}

Status ValidateDelta(double delta) {
  if (!std::isfinite(delta) || !(delta > 0.0) || !(delta < 1.0)) {
    return InvalidArgument("delta must be in (0, 1), got " + Num(delta));
  }
  return Status::Ok();
}

// ComputeRdp without validation. REQUIRES: inputs validated.
StatusOr<std::vector<double>> ComputeRdpUnchecked(double q, double noise_multiplier, int64_t steps,
                                                  const std::vector<double>& orders) {
  std::vector<double> rdp(orders.size(), 0.0);
  if (steps == 0 || q == 0.0) return rdp;
  for (size_t i = 0; i < orders.size(); ++i) {
    ASSIGN_OR_RETURN(double per_step, ComputeRdpAtOrder(q, noise_multiplier, orders[i]));
    rdp[i] = per_step * static_cast<double>(steps);
  }
  return rdp;
}

// GetPrivacySpent without validation. REQUIRES: inputs validated.
PrivacySpent GetPrivacySpentUnchecked(const std::vector<double>& orders, const std::vector<double>& rdp,
                                      double delta) {
  PrivacySpent best;
  best.delta = delta;
  best.epsilon = kInf;
  bool have_order = false;
  const double log_delta = std::log(delta);
  for (size_t i = 0; i < orders.size(); ++i) {
    const double a = orders[i];
    const double r = rdp[i];
    if (!(a > kMinUsableOrder)) continue;
    double eps;
    if (delta * delta + std::expm1(-r) >= 0.0) {
      eps = 0.0;  // r is so small that the mechanism is (0, delta)-DP
    } else {
      eps = r + std::log1p(-1.0 / a) - (log_delta + std::log(a)) / (a - 1.0);
    }
    if (!have_order || eps < best.epsilon) {
      best.epsilon = eps;
      best.order = a;
      have_order = true;
    }
  }
  best.epsilon = std::max(0.0, best.epsilon);
  return best;
}

}  // namespace

std::vector<double> DefaultRdpOrders() {
  std::vector<double> orders;
  for (int x = 1; x < 100; ++x) orders.push_back(1.0 + x / 10.0);
  for (int x = 12; x < 64; ++x) orders.push_back(x);
  for (double x : {128.0, 256.0, 512.0}) orders.push_back(x);
  return orders;
}

StatusOr<std::vector<double>> ComputeRdp(double q, double noise_multiplier, int64_t steps,
                                         const std::vector<double>& orders) {
  RETURN_IF_ERROR(ValidateMechanism(q, noise_multiplier, steps));
  RETURN_IF_ERROR(ValidateOrders(orders));
  return ComputeRdpUnchecked(q, noise_multiplier, steps, orders);
}

StatusOr<PrivacySpent> GetPrivacySpent(const std::vector<double>& orders, const std::vector<double>& rdp,
                                       double delta) {
  RETURN_IF_ERROR(ValidateDelta(delta));
  RETURN_IF_ERROR(ValidateOrders(orders));
  if (orders.size() != rdp.size()) {
    return InvalidArgument("got " + std::to_string(orders.size()) + " orders but " +
                           std::to_string(rdp.size()) + " RDP values");
  }
  bool any_usable = false;
  for (size_t i = 0; i < orders.size(); ++i) {
    if (std::isnan(rdp[i]) || rdp[i] < 0.0) {
      return InvalidArgument("RDP values must be >= 0, got " + Num(rdp[i]) + " at order " + Num(orders[i]));
    }
    if (orders[i] > kMinUsableOrder) any_usable = true;
  }
  if (!any_usable) {
    return InvalidArgument("no RDP order above " + Num(kMinUsableOrder) +
                           "; cannot convert to (epsilon, delta)");
  }
  return GetPrivacySpentUnchecked(orders, rdp, delta);
}

StatusOr<double> ComputeNoiseMultiplier(double q, int64_t steps, double target_epsilon, double delta,
                                        const std::vector<double>& orders) {
  RETURN_IF_ERROR(ValidateMechanism(q, 0.0, steps));
  RETURN_IF_ERROR(ValidateDelta(delta));
  RETURN_IF_ERROR(ValidateOrders(orders));
  if (!std::isfinite(target_epsilon) || !(target_epsilon > 0.0)) {
    return InvalidArgument("target epsilon must be finite and > 0, got " + Num(target_epsilon));
  }
  bool any_usable = false;
  for (double a : orders) any_usable = any_usable || a > kMinUsableOrder;
  if (!any_usable) {
    return InvalidArgument("no RDP order above " + Num(kMinUsableOrder) +
                           "; cannot convert to (epsilon, delta)");
  }
  if (q == 0.0 || steps == 0) return 0.0;

  // True when noise multiplier `sigma` meets the target.
  auto meets_target = [&](double sigma) -> StatusOr<bool> {
    ASSIGN_OR_RETURN(std::vector<double> rdp, ComputeRdpUnchecked(q, sigma, steps, orders));
    return GetPrivacySpentUnchecked(orders, rdp, delta).epsilon <= target_epsilon;
  };

  // Invariant: lo misses the target (sigma 0 gives infinite epsilon), hi
  // meets it.
  double lo = 0.0;
  double hi = 1.0;
  while (true) {
    ASSIGN_OR_RETURN(bool ok, meets_target(hi));
    if (ok) break;
    lo = hi;
    hi *= 2.0;
    if (hi > kMaxNoiseMultiplier) {
      return OutOfRange("target epsilon " + Num(target_epsilon) + " at delta " + Num(delta) +
                        " is not reachable with a noise multiplier up to " + Num(kMaxNoiseMultiplier) +
                        " for the given orders (larger RDP orders may help)");
    }
  }
  for (int iter = 0; iter < 200 && hi - lo > kNoiseRelativeTolerance * hi; ++iter) {
    const double mid = 0.5 * (lo + hi);
    ASSIGN_OR_RETURN(bool ok, meets_target(mid));
    if (ok) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

RdpAccountant::RdpAccountant() : RdpAccountant(DefaultRdpOrders()) {}

RdpAccountant::RdpAccountant(std::vector<double> orders)
    : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {}

StatusOr<RdpAccountant> RdpAccountant::Create(std::vector<double> orders) {
  RETURN_IF_ERROR(ValidateOrders(orders));
  return RdpAccountant(std::move(orders));
}

Status RdpAccountant::Compose(double q, double noise_multiplier, int64_t steps) {
  RETURN_IF_ERROR(ValidateMechanism(q, noise_multiplier, steps));
  ASSIGN_OR_RETURN(std::vector<double> rdp, ComputeRdpUnchecked(q, noise_multiplier, steps, orders_));
  for (size_t i = 0; i < rdp_.size(); ++i) rdp_[i] += rdp[i];
  return Status::Ok();
}

StatusOr<PrivacySpent> RdpAccountant::GetPrivacySpent(double delta) const {
  return ::flotilla::privacy::GetPrivacySpent(orders_, rdp_, delta);
}

}  // namespace flotilla::privacy
