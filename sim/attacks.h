// Malicious devices in the simulator: a seeded fraction of the fleet sends
// a poisoned update instead of the one it trained. Used to measure the
// robust strategies (docs/strategies.md, docs/results.md).
//
//   sign-flip[:S]  -S x the trained delta (default S = 4)
//   scale[:S]      S x the trained delta (default S = 10)
//   noise[:SIGMA]  Gaussian noise N(0, SIGMA^2) per coordinate instead of
//                  the delta (default SIGMA = 1)
//   lie[:Z]        "A little is enough" (Baruch et al. 2019): the colluding
//                  devices of a round pool their trained deltas and all send
//                  mean - Z x std per coordinate, which stays within the
//                  spread of honest updates. Default Z from the paper:
//                  Phi^-1((n - s) / n) with s = floor(n / 2 + 1) - f.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "proto/flotilla.pb.h"

namespace flotilla::sim {

struct Attack {
  enum class Kind { kNone, kSignFlip, kScale, kNoise, kLie };
  Kind kind = Kind::kNone;
  double parameter = 0.0;  // S, SIGMA or Z (Z: 0 = the paper's default)
  std::string Name() const;
};

// "none", "sign-flip[:S]", "scale[:S]", "noise[:SIGMA]", "lie[:Z]".
StatusOr<Attack> ParseAttack(const std::string& text);

// Which of `devices` are malicious: round(fraction x devices) of them,
// chosen by the seed.
std::vector<bool> MaliciousDevices(double fraction, size_t devices, uint64_t seed);

// Replaces `update`'s delta for the per-device attacks (not kLie). The
// noise is drawn from the seed, the device and the round.
Status Poison(const Attack& attack, uint64_t seed, uint64_t device, wire::Update* update);

// The lie attack over the colluders' updates of one round (all replaced
// with the same vector). `fleet` and `malicious` give the default Z.
Status PoisonTogether(const Attack& attack, size_t fleet, size_t malicious,
                      std::vector<wire::Update*> updates);

// The default Z of the lie attack for n devices of which f are malicious.
double LieZ(size_t n, size_t f);

}  // namespace flotilla::sim
