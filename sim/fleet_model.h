// How simulated devices differ and fail, as pure functions of the run seed,
// the device and the round: the same scenario and seed give the same
// availability, speeds, links and faults in every process that asks (one
// process, or any number of shards). See docs/simulator.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace flotilla::sim {

struct FleetModel {
  // When a device can check in: "always"; "bernoulli:P" (each round,
  // independently); "diurnal:P:A:PERIOD" (probability P x (1 + A sin(2 pi
  // (round / PERIOD + phase))), each device with its own phase: a day of
  // PERIOD rounds across time zones); "slots:P:SECONDS" (wall-clock time in
  // slots of SECONDS, each device online in a slot with probability P; a
  // device whose slot ends while it trains is gone with its update: for
  // comparing synchronous and asynchronous rounds on the same fleet in
  // time, and not reproducible to the digit as the round-based ones are).
  std::string availability = "always";
  // Compute speed: "same", or "lognormal:SIGMA" (a device's training takes
  // the measured time divided by its speed, exp(N(0, SIGMA^2))).
  std::string speed = "same";
  // The link, applied to what a device receives and sends: a one-way
  // latency, a bandwidth (0 = unlimited) and a loss probability per message
  // (a lost message costs the device its request timeout, then is resent).
  double latency_ms = 0.0;
  double bandwidth_mbps = 0.0;
  double loss = 0.0;
  // Faults, for each selected device in each round.
  double dropout =
      0.0;  // vanishes: before training, while training or once its update is delivered (a third each)
  double crash = 0.0;           // crashes after sending, before its Ack; rejoins with its outbox
  double rejoin_seconds = 2.0;  // after a crash
  double straggler = 0.0;       // trains straggler_factor times slower this round
  double straggler_factor = 10.0;
  // The aggregator killed (SIGKILL) while a round runs and started again on
  // the same store after aggregator_down_seconds; the rounds are drawn from
  // the seed among 2..rounds-1.
  int aggregator_restarts = 0;
  double aggregator_down_seconds = 2.0;
  // Malicious devices (sim/attacks.h): this fraction of the fleet, chosen
  // by the seed, sends `attack` instead of what it trained.
  double malicious = 0.0;
  std::string attack = "none";

  Status Validate() const;
  bool any_fault() const { return dropout > 0 || crash > 0 || straggler > 0 || aggregator_restarts > 0; }
};

// What happens to a selected device in a round.
enum class Fault { kNone, kDropBeforeTraining, kDropWhileTraining, kDropAfterSending, kCrashAfterSending };
const char* FaultName(Fault f);

// `seconds`: since the simulation started (slots:P:SECONDS only).
bool Available(const FleetModel& m, uint64_t seed, uint64_t device, uint32_t round, double seconds = 0.0);
bool TimeBasedAvailability(const FleetModel& m);
// 1 = the reference speed; 0.5 takes twice as long.
double Speed(const FleetModel& m, uint64_t seed, uint64_t device);
Fault FaultFor(const FleetModel& m, uint64_t seed, uint64_t device, uint32_t round);
bool Straggles(const FleetModel& m, uint64_t seed, uint64_t device, uint32_t round);
// Seconds a message of `bytes` spends on the link (latency and bandwidth),
// plus `retry_seconds` when it is lost (`what` keeps each direction's draw
// its own).
double LinkSeconds(const FleetModel& m, uint64_t seed, uint64_t device, uint32_t round, const char* what,
                   uint64_t bytes, double retry_seconds);
// The rounds whose aggregator is killed, ascending.
std::vector<uint32_t> AggregatorRestartRounds(const FleetModel& m, uint64_t seed, uint32_t rounds);

}  // namespace flotilla::sim
