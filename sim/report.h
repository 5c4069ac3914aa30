// What a simulation leaves behind for people: one line per round on stdout,
// out_dir/metrics.csv (one row per round) and out_dir/summary.json (the
// settings and the final figures).
#pragma once

#include <cstdint>
#include <string>

#include "aggregator/round_engine.h"
#include "core/status.h"
#include "sim/simulation.h"

namespace flotilla::sim {

// "round   3/20  clients  10/10  train_loss ... test_acc ...  12.3s".
std::string FormatRound(const aggregator::RoundSummary& r, uint32_t rounds);

// The run at a glance, a few aligned lines: rounds completed and failed,
// participation, the final and best test figures (and the devices' own
// held-out accuracy with federated evaluation), epsilon spent, bytes on the
// wire, time per round and time before the first round.
// `central`: the baseline's epochs, not rounds.
std::string FormatSummaryTable(const SimResult& result, uint32_t rounds_planned, bool central = false);

// Writes metrics.csv and summary.json into config.out_dir.
Status WriteOutputs(const SimConfig& config, const SimResult& result);

}  // namespace flotilla::sim
