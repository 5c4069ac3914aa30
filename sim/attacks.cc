#include "sim/attacks.h"

#include <cmath>
#include <cstdlib>
#include <numeric>

#include "core/rng.h"
#include "core/weights.h"
#include "proto/codec.h"

namespace flotilla::sim {

std::string Attack::Name() const {
  auto with = [this](const char* name) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%s:%g", name, parameter);
    return std::string(buf);
  };
  switch (kind) {
    case Kind::kNone:
      return "none";
    case Kind::kSignFlip:
      return with("sign-flip");
    case Kind::kScale:
      return with("scale");
    case Kind::kNoise:
      return with("noise");
    case Kind::kLie:
      return parameter > 0 ? with("lie") : "lie";
  }
  return "unknown";
}

StatusOr<Attack> ParseAttack(const std::string& text) {
  Attack a;
  if (text == "none") return a;
  const size_t colon = text.find(':');
  const std::string name = text.substr(0, colon);
  struct Known {
    const char* name;
    Attack::Kind kind;
    double fallback;
  };
  for (const Known& k :
       {Known{"sign-flip", Attack::Kind::kSignFlip, 4.0}, Known{"scale", Attack::Kind::kScale, 10.0},
        Known{"noise", Attack::Kind::kNoise, 1.0}, Known{"lie", Attack::Kind::kLie, 0.0}}) {
    if (name != k.name) continue;
    a.kind = k.kind;
    a.parameter = k.fallback;
    if (colon != std::string::npos) {
      const std::string number = text.substr(colon + 1);
      char* end = nullptr;
      a.parameter = std::strtod(number.c_str(), &end);
      if (number.empty() || *end != '\0' || !std::isfinite(a.parameter) || !(a.parameter > 0)) {
        return InvalidArgument("attack '" + text + "': the parameter after ':' must be a positive number");
      }
    }
    return a;
  }
  return InvalidArgument("unknown attack '" + text +
                         "' (use none, sign-flip[:S], scale[:S], noise[:SIGMA] or lie[:Z])");
}

std::vector<bool> MaliciousDevices(double fraction, size_t devices, uint64_t seed) {
  std::vector<bool> out(devices, false);
  const size_t k =
      std::min(devices, static_cast<size_t>(std::llround(fraction * static_cast<double>(devices))));
  std::vector<size_t> order(devices);
  std::iota(order.begin(), order.end(), size_t{0});
  Rng rng(DeriveSeed(seed, "malicious"));
  rng.Shuffle(&order);
  for (size_t i = 0; i < k; ++i) out[order[i]] = true;
  return out;
}

namespace {

StatusOr<Weights> DeltaOf(const wire::Update& update) {
  return proto::WeightsFromProto(update.delta(), nullptr);
}

void SetDelta(const Weights& delta, wire::Update* update) {
  update->clear_delta();
  proto::WeightsToProto(delta, update->mutable_delta());
}

// The inverse of the standard normal CDF (bisection; used once per round).
double NormalQuantile(double p) {
  double lo = -10, hi = 10;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

}  // namespace

double LieZ(size_t n, size_t f) {
  const double s = std::floor(static_cast<double>(n) / 2.0 + 1.0) - static_cast<double>(f);
  const double p = (static_cast<double>(n) - s) / static_cast<double>(n);
  return std::max(0.0, NormalQuantile(std::clamp(p, 1e-6, 1 - 1e-6)));
}

Status Poison(const Attack& attack, uint64_t seed, uint64_t device, wire::Update* update) {
  if (attack.kind == Attack::Kind::kNone || attack.kind == Attack::Kind::kLie) return Status::Ok();
  ASSIGN_OR_RETURN(Weights delta, DeltaOf(*update));
  switch (attack.kind) {
    case Attack::Kind::kSignFlip:
      for (float& v : delta.data) v = static_cast<float>(-attack.parameter * v);
      break;
    case Attack::Kind::kScale:
      for (float& v : delta.data) v = static_cast<float>(attack.parameter * v);
      break;
    case Attack::Kind::kNoise: {
      Rng rng(DeriveSeed(seed, "attack-noise", device, update->round()));
      for (float& v : delta.data) v = static_cast<float>(attack.parameter * rng.Normal());
      break;
    }
    default:
      break;
  }
  SetDelta(delta, update);
  return Status::Ok();
}

Status PoisonTogether(const Attack& attack, size_t fleet, size_t malicious,
                      std::vector<wire::Update*> updates) {
  if (attack.kind != Attack::Kind::kLie || updates.empty()) return Status::Ok();
  std::vector<Weights> deltas;
  for (wire::Update* u : updates) {
    ASSIGN_OR_RETURN(Weights d, DeltaOf(*u));
    if (!deltas.empty() && d.data.size() != deltas[0].data.size())
      return InvalidArgument("lie attack: colluders' updates differ in size");
    deltas.push_back(std::move(d));
  }
  const double z = attack.parameter > 0 ? attack.parameter : LieZ(fleet, malicious);
  Weights out = deltas[0];
  const double n = static_cast<double>(deltas.size());
  for (size_t i = 0; i < out.data.size(); ++i) {
    double sum = 0, sq = 0;
    for (const Weights& d : deltas) {
      sum += d.data[i];
      sq += static_cast<double>(d.data[i]) * d.data[i];
    }
    const double mean = sum / n;
    const double var = std::max(0.0, sq / n - mean * mean);
    out.data[i] = static_cast<float>(mean - z * std::sqrt(var));
  }
  for (wire::Update* u : updates) SetDelta(out, u);
  return Status::Ok();
}

}  // namespace flotilla::sim
