// Rényi differential privacy (RDP) accounting for the Poisson-subsampled
// Gaussian mechanism, as used by DP-SGD and DP-FedAvg.
//
// Per-step RDP follows Mironov, Talwar, Zhang 2019, "Rényi Differential
// Privacy of the Sampled Gaussian Mechanism", computed exactly as TensorFlow
// Privacy's `rdp_accountant.compute_rdp`: integer orders by the binomial
// expansion in log space, fractional orders by the two-series method with
// log(erfc). RDP is converted to (epsilon, delta) with Balle et al. 2020,
// "Hypothesis Testing Interpretations and Rényi Differential Privacy",
// Proposition 12 (the conversion of TF Privacy's `_compute_eps` and Opacus's
// `get_privacy_spent`):
//
//   eps(a) = rdp(a) + log((a - 1) / a) - (log(delta) + log(a)) / (a - 1)
//
// minimised over the orders a.
//
// Everything here is a pure function of its arguments; `RdpAccountant` is a
// value type (not thread-safe for concurrent mutation, safe to copy).
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"

namespace flotilla::privacy {

// TF Privacy's / Opacus's default orders, 1.1, 1.2, ..., 10.9, 12, ..., 63,
// extended with 128, 256 and 512 for very small epsilons.
std::vector<double> DefaultRdpOrders();

// Result of an RDP -> (epsilon, delta) conversion.
struct PrivacySpent {
  double epsilon = 0.0;  // smallest epsilon over all usable orders; >= 0
  double delta = 0.0;    // the delta the epsilon was computed for
  double order = 0.0;    // the order that attained `epsilon`
};

// Returns the RDP, at each of `orders`, of `steps` compositions of the
// Gaussian mechanism with noise multiplier `noise_multiplier` (noise standard
// deviation over L2 sensitivity) applied to a Poisson subsample with sampling
// rate `q`. Element i of the result belongs to orders[i].
//
// Special cases (as in TF Privacy): q == 0 or steps == 0 gives 0 at every
// order; q == 1 gives steps * a / (2 sigma^2); sigma == 0 (with q > 0 and
// steps > 0) gives +inf, as does a sigma so small (below ~1e-150) that the
// series would overflow. Values below ~1e-12 carry absolute rounding error of
// order 1e-16 from the log-space summation, which is immaterial for epsilon.
//
// Fails with InvalidArgument unless q is in [0, 1], noise_multiplier >= 0,
// steps >= 0, all values are finite and every order is in (1, 1e4].
// Fails with Internal if the fractional-order series does not converge
// (not observed for valid inputs).
StatusOr<std::vector<double>> ComputeRdp(double q, double noise_multiplier, int64_t steps,
                                         const std::vector<double>& orders = DefaultRdpOrders());

// Converts an RDP curve to the smallest (epsilon, delta)-DP guarantee it
// implies for `delta`, and reports the order that attains it. Orders <= 1.01
// are not used (the conversion is useless there; TF Privacy skips them too).
// An order whose RDP is so small that delta^2 + expm1(-rdp) >= 0 gives
// epsilon 0. If no order gives a finite epsilon (e.g. all RDP values are
// +inf), the result has epsilon = +inf and the first usable order.
//
// Fails with InvalidArgument unless delta is in (0, 1), orders and rdp have
// the same non-zero length, every order is in (1, 1e4], at least one order is
// > 1.01, and every rdp value is >= 0 (+inf allowed).
StatusOr<PrivacySpent> GetPrivacySpent(const std::vector<double>& orders, const std::vector<double>& rdp,
                                       double delta);

// Returns the smallest noise multiplier sigma (to a relative tolerance of
// 1e-6) for which `steps` steps of the subsampled Gaussian mechanism with
// sampling rate q are (target_epsilon, delta)-DP according to ComputeRdp and
// GetPrivacySpent over `orders`. The returned sigma always satisfies the
// target (its epsilon is <= target_epsilon); since epsilon does not increase
// with sigma, sigma * (1 - 1e-6) does not meet it.
// Returns 0 when no noise is needed (q == 0 or steps == 0).
//
// Fails with InvalidArgument on the same input checks as ComputeRdp and
// GetPrivacySpent, or unless target_epsilon is finite and > 0; fails with
// OutOfRange if even a noise multiplier of 1e6 does not reach the target.
StatusOr<double> ComputeNoiseMultiplier(double q, int64_t steps, double target_epsilon, double delta,
                                        const std::vector<double>& orders = DefaultRdpOrders());

// Accumulates the RDP of a sequence of (possibly different) subsampled
// Gaussian mechanisms and reports the total privacy spent. RDP composes
// additively at each order, so the order of Compose calls does not matter.
//
// Thread-safety: not synchronised; guard externally if shared.
class RdpAccountant {
 public:
  // Uses DefaultRdpOrders().
  RdpAccountant();

  // Uses the given orders. Fails with InvalidArgument if `orders` is empty or
  // holds an order outside (1, 1e4].
  static StatusOr<RdpAccountant> Create(std::vector<double> orders);

  // Adds `steps` steps of the Gaussian mechanism with `noise_multiplier` on a
  // Poisson subsample with rate `q`. On error (see ComputeRdp) the accountant
  // is left unchanged.
  [[nodiscard]] Status Compose(double q, double noise_multiplier, int64_t steps);

  // The (epsilon, delta) guarantee of everything composed so far; see
  // GetPrivacySpent above. With nothing composed, epsilon is 0.
  StatusOr<PrivacySpent> GetPrivacySpent(double delta) const;

  const std::vector<double>& orders() const { return orders_; }
  // Accumulated RDP; element i belongs to orders()[i].
  const std::vector<double>& rdp() const { return rdp_; }

 private:
  explicit RdpAccountant(std::vector<double> orders);

  std::vector<double> orders_;
  std::vector<double> rdp_;
};

}  // namespace flotilla::privacy
