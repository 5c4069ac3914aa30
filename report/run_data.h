// One run's figures per round, read for a report (report/html.h): from a
// simulator's output directory (metrics.csv, timing.csv, summary.json; see
// docs/simulator.md) or from an aggregator's store (its round records).
// Columns that an older run lacks are left out and the plots they feed are
// named in `missing`; reading fails only on a directory with nothing to
// read or a file that does not parse.
// Thread-safety: plain functions over their arguments.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "proto/records.pb.h"

namespace flotilla::report {

// A CSV file of numbers with a header line, by column. Empty fields and
// "nan" are NaN.
struct CsvTable {
  std::vector<std::string> header;
  std::vector<std::vector<double>> columns;  // columns[i] belongs to header[i]

  // The column named `name`, or nullptr.
  const std::vector<double>* Column(const std::string& name) const;
};

// Parses `text`; `path` only names the file in errors. Fails with
// InvalidArgument naming path:line for a row whose field count differs from
// the header's or a field that is not a number.
StatusOr<CsvTable> ParseCsv(std::string_view text, const std::string& path);

// The plots of a report, as keys of RunData::missing and of the page's charts.
inline constexpr const char* kPlotAccuracy = "accuracy";
inline constexpr const char* kPlotLoss = "loss";
inline constexpr const char* kPlotParticipation = "participation";
inline constexpr const char* kPlotBytes = "bytes";
inline constexpr const char* kPlotRoundTime = "round_time";
inline constexpr const char* kPlotEpsilon = "epsilon";

// The series a report may plot, by the names of metrics.csv and timing.csv:
// test_accuracy, test_loss, train_loss, selected, received, declined,
// refused, unreported, bytes_in, bytes_out, seconds, selection_seconds,
// train_seconds, merge_seconds, epsilon (and any other numeric column).
struct RunData {
  std::string label;   // how the page names the run
  std::string dir;     // as given
  std::string source;  // "simulator" or "store"
  std::vector<double> rounds;
  std::map<std::string, std::vector<double>> series;  // each aligned with `rounds`; NaN: no value
  nlohmann::json summary = nlohmann::json::object();  // summary.json, when there is one
  std::optional<double> epsilon_budget;
  // Plot key -> why this run has nothing for it ("timing.csv is missing").
  std::map<std::string, std::string> missing;
};

// A simulator's run directory: metrics.csv (required), timing.csv and
// summary.json when present. Rows of timing.csv are matched by round.
StatusOr<RunData> ReadSimulatorRun(const std::string& dir);

// The round records of an aggregator's store (running rounds left out).
RunData RunFromRoundRecords(const std::vector<records::RoundRecord>& records);

// An aggregator's store (a RocksDB directory), opened read-only, so the
// store of a running aggregator can be read.
StatusOr<RunData> ReadStoreRun(const std::string& store_dir);

// True if `dir` holds a RocksDB database (an aggregator's store).
bool IsStoreDir(const std::string& dir);

// Whichever `dir` is: a simulator run (it has metrics.csv) or a store. Fails
// with NotFound, saying what was expected, for anything else. The label is
// the directory's name.
StatusOr<RunData> ReadRun(const std::string& dir);

// What the page's script reads: label, source, rounds, series (NaN as
// null), summary, epsilon_budget, missing.
nlohmann::json RunToJson(const RunData& run);

}  // namespace flotilla::report
