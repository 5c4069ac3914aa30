// Tests for privacy/rdp_accountant.h against TensorFlow Privacy's published
// values and independent high-precision (mpmath, 50 digits) evaluations of the
// same formulas.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "privacy/rdp_accountant.h"

namespace flotilla::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double RelErr(double got, double want) { return std::fabs(got - want) / std::fabs(want); }

double RdpAt(double q, double sigma, int64_t steps, double order) {
  auto rdp = ComputeRdp(q, sigma, steps, {order});
  REQUIRE(rdp.ok());
  REQUIRE(rdp->size() == 1);
  return (*rdp)[0];
}

PrivacySpent Spent(double q, double sigma, int64_t steps, double delta) {
  const std::vector<double> orders = DefaultRdpOrders();
  auto rdp = ComputeRdp(q, sigma, steps, orders);
  REQUIRE(rdp.ok());
  auto spent = GetPrivacySpent(orders, *rdp, delta);
  REQUIRE(spent.ok());
  return *spent;
}

TEST_CASE("default orders are TF Privacy's plus 128 256 512", "[privacy]") {
  const std::vector<double> orders = DefaultRdpOrders();
  REQUIRE(orders.size() == 99 + 52 + 3);
  CHECK(orders.front() == 1.0 + 1 / 10.0);
  CHECK(orders[98] == 1.0 + 99 / 10.0);
  CHECK(orders[99] == 12.0);
  CHECK(orders[150] == 63.0);
  CHECK(orders[151] == 128.0);
  CHECK(orders.back() == 512.0);
}

TEST_CASE("compute_rdp(q=0.1 sigma=2 steps=10 order=5) = 0.07737", "[privacy]") {
  const double rdp = RdpAt(0.1, 2.0, 10, 5.0);
  // TF Privacy's test value, to the digits it gives.
  CHECK(std::fabs(rdp - 0.07737) <= 0.000005);
  // Exact value: log(sum_i C(5,i) 0.1^i 0.9^(5-i) e^((i^2-i)/8)) / 4 * 10.
  CHECK(RelErr(rdp, 0.077369684897958651587) < 1e-6);
}

TEST_CASE("fractional order uses the two-series method", "[privacy]") {
  // High-precision evaluations of the same series (mpmath, 50 digits).
  CHECK(RelErr(RdpAt(0.1, 2.0, 10, 4.5), 0.068562838064184998057) < 1e-6);
  CHECK(RelErr(RdpAt(0.01, 1.1, 1, 2.5), 0.00016207740933084550404) < 1e-6);
}

TEST_CASE("MNIST vector: N=60000 batch 150 sigma 1.3 15 epochs", "[privacy]") {
  const PrivacySpent spent = Spent(150.0 / 60000.0, 1.3, 6000, 1e-5);
  CHECK(RelErr(spent.epsilon, 0.7242234026109595) < 1e-6);
  CHECK(spent.order == 19.0);
  CHECK(spent.delta == 1e-5);
}

TEST_CASE("vector: N=100000 batch 100 sigma 1.0 30 epochs delta 1e-7", "[privacy]") {
  const PrivacySpent spent = Spent(100.0 / 100000.0, 1.0, 30000, 1e-7);
  CHECK(RelErr(spent.epsilon, 1.4154988495444842) < 1e-6);
  CHECK(spent.order == 13.0);
}

TEST_CASE("Balle et al. conversion is tighter than eps = rdp - log(delta)/(a-1)", "[privacy]") {
  const std::vector<double> orders = DefaultRdpOrders();
  auto rdp = ComputeRdp(150.0 / 60000.0, 1.3, 6000, orders);
  REQUIRE(rdp.ok());
  double classic = kInf;
  for (size_t i = 0; i < orders.size(); ++i) {
    classic = std::min(classic, (*rdp)[i] - std::log(1e-5) / (orders[i] - 1));
  }
  auto spent = GetPrivacySpent(orders, *rdp, 1e-5);
  REQUIRE(spent.ok());
  CHECK(spent->epsilon < classic);
}

TEST_CASE("fractional orders are continuous at integer orders", "[privacy]") {
  for (double q : {0.001, 0.01, 0.1, 0.5}) {
    for (double sigma : {0.7, 1.0, 2.0, 5.0}) {
      for (double k : {2.0, 3.0, 5.0, 10.0, 20.0, 63.0}) {
        const double at = RdpAt(q, sigma, 1, k);
        const double below = RdpAt(q, sigma, 1, k - 1e-7);
        const double above = RdpAt(q, sigma, 1, k + 1e-7);
        INFO("q=" << q << " sigma=" << sigma << " order=" << k << " below=" << below << " at=" << at
                  << " above=" << above);
        CHECK(RelErr(below, at) < 1e-5);
        CHECK(RelErr(above, at) < 1e-5);
      }
    }
  }
}

TEST_CASE("RDP is nondecreasing in the order", "[privacy]") {
  const std::vector<double> orders = DefaultRdpOrders();
  for (double q : {0.001, 0.01, 0.1, 0.5, 0.9}) {
    for (double sigma : {0.5, 1.0, 3.0}) {
      auto rdp = ComputeRdp(q, sigma, 1, orders);
      REQUIRE(rdp.ok());
      for (size_t i = 1; i < orders.size(); ++i) {
        INFO("q=" << q << " sigma=" << sigma << " order=" << orders[i]);
        CHECK((*rdp)[i] >= (*rdp)[i - 1] * (1 - 1e-9));
      }
    }
  }
}

TEST_CASE("q == 1 is the Gaussian mechanism: alpha / (2 sigma^2)", "[privacy]") {
  const std::vector<double> orders = DefaultRdpOrders();
  auto rdp = ComputeRdp(1.0, 1.5, 7, orders);
  REQUIRE(rdp.ok());
  for (size_t i = 0; i < orders.size(); ++i) {
    CHECK(RelErr((*rdp)[i], 7 * orders[i] / (2 * 1.5 * 1.5)) < 1e-12);
  }
  // The subsampled formulas approach the same limit as q -> 1.
  for (double a : {2.0, 3.5, 12.0}) {
    CHECK(RelErr(RdpAt(1.0 - 1e-9, 1.5, 1, a), a / (2 * 1.5 * 1.5)) < 1e-6);
  }
}

TEST_CASE("degenerate mechanisms", "[privacy]") {
  CHECK(RdpAt(0.0, 1.0, 100, 5.0) == 0.0);
  CHECK(RdpAt(0.0, 0.0, 100, 5.0) == 0.0);
  CHECK(RdpAt(0.1, 1.0, 0, 5.0) == 0.0);
  CHECK(RdpAt(0.1, 0.0, 0, 5.0) == 0.0);
  CHECK(RdpAt(0.1, 0.0, 1, 5.0) == kInf);
  CHECK(RdpAt(0.1, 0.0, 1, 5.5) == kInf);
  CHECK(RdpAt(0.1, 1e-200, 1, 5.5) == kInf);

  // Infinite RDP everywhere: epsilon is infinite, not an error.
  auto spent = GetPrivacySpent({2.0, 3.0}, {kInf, kInf}, 1e-5);
  REQUIRE(spent.ok());
  CHECK(spent->epsilon == kInf);

  // Negligible RDP: the mechanism is (0, delta)-DP.
  spent = GetPrivacySpent({2.0, 3.0}, {0.0, 0.0}, 1e-5);
  REQUIRE(spent.ok());
  CHECK(spent->epsilon == 0.0);
}

TEST_CASE("orders at or below 1.01 are not used by the conversion", "[privacy]") {
  // A tiny RDP at order 1.005 would give a small epsilon if it were used.
  auto spent = GetPrivacySpent({1.005, 2.0}, {1e-9, 1.0}, 1e-5);
  REQUIRE(spent.ok());
  CHECK(spent->order == 2.0);
  CHECK(RelErr(spent->epsilon, 1.0 + std::log(0.5) - (std::log(1e-5) + std::log(2.0))) < 1e-12);
}

TEST_CASE("epsilon grows with steps and shrinks with noise", "[privacy]") {
  const double q = 0.01;
  double previous = 0.0;
  for (int64_t steps : {1, 10, 100, 1000, 10000, 100000}) {
    const double eps = Spent(q, 1.1, steps, 1e-5).epsilon;
    INFO("steps=" << steps);
    CHECK(eps > previous);
    previous = eps;
  }
  previous = kInf;
  for (double sigma : {0.5, 0.7, 0.9, 1.1, 1.5, 2.0, 4.0, 8.0}) {
    const double eps = Spent(q, sigma, 1000, 1e-5).epsilon;
    INFO("sigma=" << sigma);
    CHECK(eps < previous);
    previous = eps;
  }
}

TEST_CASE("RdpAccountant composes additively", "[privacy]") {
  RdpAccountant accountant;
  auto empty = accountant.GetPrivacySpent(1e-5);
  REQUIRE(empty.ok());
  CHECK(empty->epsilon == 0.0);

  const double q = 150.0 / 60000.0;
  REQUIRE(accountant.Compose(q, 1.3, 2000).ok());
  REQUIRE(accountant.Compose(q, 1.3, 4000).ok());
  auto spent = accountant.GetPrivacySpent(1e-5);
  REQUIRE(spent.ok());
  CHECK(RelErr(spent->epsilon, 0.7242234026109595) < 1e-6);
  CHECK(spent->order == 19.0);

  // Heterogeneous mechanisms: the RDP curves add up order by order.
  REQUIRE(accountant.Compose(0.05, 2.0, 300).ok());
  auto a = ComputeRdp(q, 1.3, 6000, accountant.orders());
  auto b = ComputeRdp(0.05, 2.0, 300, accountant.orders());
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  for (size_t i = 0; i < accountant.orders().size(); ++i) {
    CHECK(RelErr(accountant.rdp()[i], (*a)[i] + (*b)[i]) < 1e-12);
  }
  auto total = accountant.GetPrivacySpent(1e-5);
  REQUIRE(total.ok());
  CHECK(total->epsilon > spent->epsilon);

  // A rejected Compose leaves the accountant unchanged.
  const std::vector<double> before = accountant.rdp();
  CHECK(accountant.Compose(1.5, 1.0, 10).code() == StatusCode::kInvalidArgument);
  CHECK(accountant.rdp() == before);
}

TEST_CASE("RdpAccountant::Create validates orders", "[privacy]") {
  auto custom = RdpAccountant::Create({2.0, 4.0, 8.0, 16.0, 32.0});
  REQUIRE(custom.ok());
  REQUIRE(custom->Compose(0.01, 1.0, 1000).ok());
  auto spent = custom->GetPrivacySpent(1e-5);
  REQUIRE(spent.ok());
  CHECK(spent->epsilon > 0.0);
  CHECK(RdpAccountant::Create({}).status().code() == StatusCode::kInvalidArgument);
  CHECK(RdpAccountant::Create({2.0, 1.0}).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("ComputeNoiseMultiplier inverts GetPrivacySpent", "[privacy]") {
  auto sigma = ComputeNoiseMultiplier(150.0 / 60000.0, 6000, 0.7242234026109595, 1e-5);
  REQUIRE(sigma.ok());
  CHECK(RelErr(*sigma, 1.3) < 1e-5);

  struct Case {
    double q;
    int64_t steps;
    double target;
    double delta;
  };
  for (const Case& c :
       {Case{0.0025, 6000, 0.5, 1e-5}, Case{0.0025, 6000, 3.0, 1e-5}, Case{0.001, 30000, 1.0, 1e-7},
        Case{0.01, 1000, 8.0, 1e-5}, Case{0.1, 100, 2.0, 1e-6}, Case{1.0, 10, 5.0, 1e-5}}) {
    INFO("q=" << c.q << " steps=" << c.steps << " target=" << c.target);
    auto s = ComputeNoiseMultiplier(c.q, c.steps, c.target, c.delta);
    REQUIRE(s.ok());
    const double eps = Spent(c.q, *s, c.steps, c.delta).epsilon;
    CHECK(eps <= c.target);
    CHECK(eps > c.target * (1 - 1e-4));
    // Slightly less noise misses the target: sigma is the smallest one.
    CHECK(Spent(c.q, *s * (1 - 2e-6), c.steps, c.delta).epsilon > c.target);
  }

  auto none = ComputeNoiseMultiplier(0.0, 1000, 1.0, 1e-5);
  REQUIRE(none.ok());
  CHECK(*none == 0.0);
  none = ComputeNoiseMultiplier(0.01, 0, 1.0, 1e-5);
  REQUIRE(none.ok());
  CHECK(*none == 0.0);
}

TEST_CASE("ComputeNoiseMultiplier fails clearly when unreachable", "[privacy]") {
  // With orders only up to 3, epsilon at delta 1e-5 stays above about 4.8
  // unless the RDP drops below delta^2, which for 1000 unsampled steps needs
  // a noise multiplier above 3e6 (beyond the search range).
  auto s = ComputeNoiseMultiplier(1.0, 1000, 1.0, 1e-5, {2.0, 3.0});
  CHECK(s.status().code() == StatusCode::kOutOfRange);
  CHECK(s.status().message().find("not reachable") != std::string::npos);
}

TEST_CASE("invalid inputs are rejected with InvalidArgument", "[privacy]") {
  const std::vector<double> orders = {2.0, 3.0};
  auto code = [](const auto& result) { return result.status().code(); };
  const StatusCode kBad = StatusCode::kInvalidArgument;

  CHECK(code(ComputeRdp(-0.1, 1.0, 1, orders)) == kBad);
  CHECK(code(ComputeRdp(1.1, 1.0, 1, orders)) == kBad);
  CHECK(code(ComputeRdp(kNaN, 1.0, 1, orders)) == kBad);
  CHECK(code(ComputeRdp(0.1, -1.0, 1, orders)) == kBad);
  CHECK(code(ComputeRdp(0.1, kInf, 1, orders)) == kBad);
  CHECK(code(ComputeRdp(0.1, kNaN, 1, orders)) == kBad);
  CHECK(code(ComputeRdp(0.1, 1.0, -1, orders)) == kBad);
  CHECK(code(ComputeRdp(0.1, 1.0, 1, {})) == kBad);
  CHECK(code(ComputeRdp(0.1, 1.0, 1, {1.0})) == kBad);
  CHECK(code(ComputeRdp(0.1, 1.0, 1, {0.5})) == kBad);
  CHECK(code(ComputeRdp(0.1, 1.0, 1, {kInf})) == kBad);
  CHECK(code(ComputeRdp(0.1, 1.0, 1, {kNaN})) == kBad);
  CHECK(code(ComputeRdp(0.1, 1.0, 1, {2e4})) == kBad);

  const std::vector<double> rdp = {0.1, 0.2};
  CHECK(code(GetPrivacySpent(orders, rdp, 0.0)) == kBad);
  CHECK(code(GetPrivacySpent(orders, rdp, 1.0)) == kBad);
  CHECK(code(GetPrivacySpent(orders, rdp, -1e-5)) == kBad);
  CHECK(code(GetPrivacySpent(orders, rdp, kNaN)) == kBad);
  CHECK(code(GetPrivacySpent(orders, {0.1}, 1e-5)) == kBad);
  CHECK(code(GetPrivacySpent(orders, {0.1, -0.2}, 1e-5)) == kBad);
  CHECK(code(GetPrivacySpent(orders, {0.1, kNaN}, 1e-5)) == kBad);
  CHECK(code(GetPrivacySpent({1.005}, {0.1}, 1e-5)) == kBad);

  CHECK(code(ComputeNoiseMultiplier(0.01, 100, 0.0, 1e-5)) == kBad);
  CHECK(code(ComputeNoiseMultiplier(0.01, 100, -1.0, 1e-5)) == kBad);
  CHECK(code(ComputeNoiseMultiplier(0.01, 100, kInf, 1e-5)) == kBad);
  CHECK(code(ComputeNoiseMultiplier(0.01, 100, 1.0, 0.0)) == kBad);
  CHECK(code(ComputeNoiseMultiplier(2.0, 100, 1.0, 1e-5)) == kBad);
  CHECK(code(ComputeNoiseMultiplier(0.01, -5, 1.0, 1e-5)) == kBad);

  auto status = ComputeRdp(1.5, 1.0, 1, orders).status();
  CHECK(status.message().find("sampling rate q") != std::string::npos);
  status = GetPrivacySpent(orders, rdp, 2.0).status();
  CHECK(status.message().find("delta") != std::string::npos);
}

}  // namespace
}  // namespace flotilla::privacy
