#include "sim/fleet_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "core/rng.h"
#include "sim/attacks.h"

namespace flotilla::sim {
namespace {

constexpr double kPi = 3.14159265358979323846;

// "name:a:b:c" into its parts.
std::vector<std::string> Split(const std::string& spec) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t colon = spec.find(':', start);
    parts.push_back(spec.substr(start, colon == std::string::npos ? std::string::npos : colon - start));
    if (colon == std::string::npos) return parts;
    start = colon + 1;
  }
}

bool Number(const std::string& s, double* out) {
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return !s.empty() && *end == '\0' && std::isfinite(*out);
}

double Uniform(uint64_t seed, const char* label, uint64_t a, uint64_t b) {
  Rng rng(DeriveSeed(seed, label, a, b));
  return rng.UniformDouble();
}

}  // namespace

Status FleetModel::Validate() const {
  const std::vector<std::string> a = Split(availability);
  double x = 0, y = 0, z = 0;
  const bool avail_ok =
      (a.size() == 1 && a[0] == "always") ||
      (a.size() == 2 && a[0] == "bernoulli" && Number(a[1], &x) && x > 0 && x <= 1) ||
      (a.size() == 4 && a[0] == "diurnal" && Number(a[1], &x) && Number(a[2], &y) && Number(a[3], &z) &&
       x > 0 && x <= 1 && y >= 0 && y <= 1 && z >= 1) ||
      (a.size() == 3 && a[0] == "slots" && Number(a[1], &x) && Number(a[2], &y) && x > 0 && x <= 1 && y > 0);
  if (!avail_ok) {
    return InvalidArgument(
        "availability '" + availability +
        "': use always, bernoulli:P (0 < P <= 1), diurnal:P:A:PERIOD (A in [0, 1], PERIOD "
        ">= 1 rounds) or slots:P:SECONDS (online in each slot of SECONDS with probability P)");
  }
  const std::vector<std::string> s = Split(speed);
  if (!((s.size() == 1 && s[0] == "same") ||
        (s.size() == 2 && s[0] == "lognormal" && Number(s[1], &x) && x >= 0 && x <= 3))) {
    return InvalidArgument("speed '" + speed + "': use same or lognormal:SIGMA (0 <= SIGMA <= 3)");
  }
  auto probability = [](double p) { return p >= 0 && p <= 1; };
  if (!(latency_ms >= 0) || !(bandwidth_mbps >= 0) || !probability(loss))
    return InvalidArgument("link: latency and bandwidth must be >= 0 and loss a probability");
  if (!probability(dropout) || !probability(crash) || !probability(straggler) || dropout + crash > 1)
    return InvalidArgument("faults: dropout, crash and straggler are probabilities (dropout + crash <= 1)");
  if (!(rejoin_seconds >= 0) || !(straggler_factor >= 1) || aggregator_restarts < 0 ||
      !(aggregator_down_seconds >= 0)) {
    return InvalidArgument("faults: rejoin and down times >= 0, straggler factor >= 1, restarts >= 0");
  }
  if (!probability(malicious))
    return InvalidArgument("faults: malicious is a fraction of the fleet, in [0, 1]");
  StatusOr<Attack> parsed = ParseAttack(attack);
  if (!parsed.ok()) return parsed.status();
  if ((malicious > 0) != (parsed->kind != Attack::Kind::kNone)) {
    return InvalidArgument("faults: set both malicious (a fraction of the fleet) and attack, or neither");
  }
  return Status::Ok();
}

const char* FaultName(Fault f) {
  switch (f) {
    case Fault::kNone:
      return "none";
    case Fault::kDropBeforeTraining:
      return "dropped before training";
    case Fault::kDropWhileTraining:
      return "dropped while training";
    case Fault::kDropAfterSending:
      return "dropped after sending";
    case Fault::kCrashAfterSending:
      return "crashed after sending";
  }
  return "?";
}

bool TimeBasedAvailability(const FleetModel& m) { return m.availability.rfind("slots:", 0) == 0; }

bool Available(const FleetModel& m, uint64_t seed, uint64_t device, uint32_t round, double seconds) {
  const std::vector<std::string> a = Split(m.availability);
  if (a[0] == "always") return true;
  double p = 0;
  Number(a[1], &p);
  if (a[0] == "slots") {
    double slot = 1;
    Number(a[2], &slot);
    return Uniform(seed, "slot", device, static_cast<uint64_t>(std::max(0.0, seconds) / slot)) < p;
  }
  if (a[0] == "diurnal") {
    double amplitude = 0, period = 1;
    Number(a[2], &amplitude);
    Number(a[3], &period);
    const double phase = Uniform(seed, "phase", device, 0);
    p *= 1.0 + amplitude * std::sin(2 * kPi * (static_cast<double>(round) / period + phase));
  }
  return Uniform(seed, "available", device, round) < p;
}

double Speed(const FleetModel& m, uint64_t seed, uint64_t device) {
  const std::vector<std::string> s = Split(m.speed);
  if (s[0] == "same") return 1.0;
  double sigma = 0;
  Number(s[1], &sigma);
  // Box-Muller from two uniforms of this device.
  const double u1 = std::max(1e-12, Uniform(seed, "speed-a", device, 0));
  const double u2 = Uniform(seed, "speed-b", device, 0);
  const double z = std::sqrt(-2 * std::log(u1)) * std::cos(2 * kPi * u2);
  return std::exp(sigma * z);
}

Fault FaultFor(const FleetModel& m, uint64_t seed, uint64_t device, uint32_t round) {
  const double u = Uniform(seed, "fault", device, round);
  if (u < m.dropout) {
    const double stage = u / m.dropout;  // uniform in [0, 1) given a dropout
    return stage < 1.0 / 3   ? Fault::kDropBeforeTraining
           : stage < 2.0 / 3 ? Fault::kDropWhileTraining
                             : Fault::kDropAfterSending;
  }
  if (u < m.dropout + m.crash) return Fault::kCrashAfterSending;
  return Fault::kNone;
}

bool Straggles(const FleetModel& m, uint64_t seed, uint64_t device, uint32_t round) {
  return m.straggler > 0 && Uniform(seed, "straggler", device, round) < m.straggler;
}

double LinkSeconds(const FleetModel& m, uint64_t seed, uint64_t device, uint32_t round, const char* what,
                   uint64_t bytes, double retry_seconds) {
  double seconds = m.latency_ms / 1000.0;
  if (m.bandwidth_mbps > 0) seconds += static_cast<double>(bytes) * 8.0 / (m.bandwidth_mbps * 1e6);
  if (m.loss > 0 && Uniform(seed, what, device, round) < m.loss) seconds += retry_seconds;
  return seconds;
}

std::vector<uint32_t> AggregatorRestartRounds(const FleetModel& m, uint64_t seed, uint32_t rounds) {
  std::vector<uint32_t> candidates;
  for (uint32_t r = 2; r < rounds; ++r) candidates.push_back(r);
  Rng rng(DeriveSeed(seed, "aggregator-restarts"));
  rng.Shuffle(&candidates);
  candidates.resize(std::min<size_t>(candidates.size(), static_cast<size_t>(m.aggregator_restarts)));
  std::sort(candidates.begin(), candidates.end());
  return candidates;
}

}  // namespace flotilla::sim
