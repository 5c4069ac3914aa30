// What a simulation leaves behind for people: a live progress line, one
// line per round on stdout, out_dir/metrics.csv (one row per round: what
// the federation computed, reproducible), out_dir/timing.csv (what the
// machine measured: time split, bytes), out_dir/rounds.json (both) and
// out_dir/summary.json (the settings and the final figures).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "aggregator/round_engine.h"
#include "aggregator/round_json.h"
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

// The live progress line on stderr: rewritten in place on a terminal,
// one line every 30 s otherwise. Lines printed through Print() go above it.
// Thread-safe.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled);
  ~ProgressLine() { Clear(); }
  // "round 7/20 | checked in 1234 | reporting 800/1000 | 1m02s elapsed | ETA 2m10s"
  void Update(const std::string& text);
  // Prints a line on stdout (a round's), keeping the progress line below it.
  void Print(const std::string& line);
  void Clear();
  // "1m02s", "3.4s", "2h05m".
  static std::string Duration(double seconds);

 private:
  std::mutex mu_;
  bool enabled_, tty_;
  std::string text_;
  std::chrono::steady_clock::time_point last_{};
};

// A round as JSON (rounds.json's objects, and the lines of the round log a
// server appends as rounds commit), and back: aggregator/round_json.h.
using aggregator::RoundFromJson;
using aggregator::RoundToJson;
// The round log (out_dir/rounds.jsonl): one JSON object per line, written
// as each round commits, so a server killed and resumed keeps the rounds
// before. Missing file: none. A round logged twice keeps its last line.
StatusOr<std::vector<aggregator::RoundSummary>> ReadRoundLog(const std::string& path);

// Writes metrics.csv, timing.csv, rounds.json and summary.json into config.out_dir.
Status WriteOutputs(const SimConfig& config, const SimResult& result);

}  // namespace flotilla::sim
