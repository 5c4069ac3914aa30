#include "report/run_data.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "aggregator/store.h"

namespace flotilla::report {
namespace {

namespace fs = std::filesystem;

StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot read " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> SplitFields(std::string_view line) {
  std::vector<std::string> fields;
  size_t start = 0;
  while (true) {
    const size_t comma = line.find(',', start);
    std::string field(
        line.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    // Tolerate spaces around fields and a CRLF file.
    while (!field.empty() && (field.back() == ' ' || field.back() == '\r')) field.pop_back();
    while (!field.empty() && field.front() == ' ') field.erase(0, 1);
    fields.push_back(std::move(field));
    if (comma == std::string_view::npos) return fields;
    start = comma + 1;
  }
}

bool ParseNumber(const std::string& field, double* value) {
  if (field.empty()) {
    *value = NAN;
    return true;
  }
  errno = 0;
  char* end = nullptr;
  *value = std::strtod(field.c_str(), &end);
  return end == field.c_str() + field.size() && errno != ERANGE;
}

bool HasValue(const RunData& run, const std::string& name) {
  auto it = run.series.find(name);
  if (it == run.series.end()) return false;
  for (double v : it->second) {
    if (std::isfinite(v)) return true;
  }
  return false;
}

// Fills run->missing from what the series hold. `no_timing`: why the time
// split and bytes are absent, when a whole file is.
void FindMissingPlots(RunData* run, const std::string& no_timing, const std::string& file) {
  auto absent = [&](const std::string& column) {
    return run->series.count(column) ? "no " + column + " values" : file + " has no " + column + " column";
  };
  if (!HasValue(*run, "test_accuracy")) run->missing[kPlotAccuracy] = absent("test_accuracy");
  if (!HasValue(*run, "test_loss") && !HasValue(*run, "train_loss")) {
    run->missing[kPlotLoss] = absent("test_loss");
  }
  if (!run->series.count("selected") || !run->series.count("received")) {
    run->missing[kPlotParticipation] = absent(run->series.count("selected") ? "received" : "selected");
  }
  if (!run->series.count("bytes_in") && !run->series.count("bytes_out")) {
    run->missing[kPlotBytes] = no_timing.empty() ? absent("bytes_in") : no_timing;
  }
  if (!run->series.count("train_seconds") && !run->series.count("seconds")) {
    run->missing[kPlotRoundTime] = no_timing.empty() ? absent("train_seconds") : no_timing;
  }
  if (!HasValue(*run, "epsilon")) {
    const bool no_dp = run->summary.value("dp", std::string()) == "none";
    run->missing[kPlotEpsilon] = no_dp ? "no differential privacy in this run" : absent("epsilon");
  }
}

}  // namespace

const std::vector<double>* CsvTable::Column(const std::string& name) const {
  for (size_t i = 0; i < header.size(); ++i) {
    if (header[i] == name) return &columns[i];
  }
  return nullptr;
}

StatusOr<CsvTable> ParseCsv(std::string_view text, const std::string& path) {
  CsvTable table;
  size_t line_no = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.empty() || line == "\r") continue;
    std::vector<std::string> fields = SplitFields(line);
    if (table.header.empty()) {
      table.header = std::move(fields);
      table.columns.resize(table.header.size());
      continue;
    }
    const std::string where = path + ":" + std::to_string(line_no) + ": ";
    if (fields.size() != table.header.size()) {
      return InvalidArgument(where + "expected " + std::to_string(table.header.size()) +
                             " fields as in the header, found " + std::to_string(fields.size()) +
                             " (a truncated or hand-edited row? fix or delete that line, or rerun the run)");
    }
    for (size_t i = 0; i < fields.size(); ++i) {
      double value = 0;
      if (!ParseNumber(fields[i], &value)) {
        return InvalidArgument(where + "column " + table.header[i] + " is '" + fields[i] +
                               "', not a number (fix or delete that line, or rerun the run)");
      }
      table.columns[i].push_back(value);
    }
  }
  if (table.header.empty()) return InvalidArgument(path + " is empty (no header line)");
  return table;
}

StatusOr<RunData> ReadSimulatorRun(const std::string& dir) {
  RunData run;
  run.dir = dir;
  run.source = "simulator";
  const fs::path root(dir);
  const fs::path metrics_path = root / "metrics.csv";
  ASSIGN_OR_RETURN(std::string metrics_text, ReadFile(metrics_path));
  ASSIGN_OR_RETURN(CsvTable metrics, ParseCsv(metrics_text, metrics_path.string()));
  const std::vector<double>* rounds = metrics.Column("round");
  if (rounds == nullptr) {
    return InvalidArgument(metrics_path.string() +
                           ": the header has no 'round' column (is this a metrics.csv "
                           "written by flotilla sim?)");
  }
  if (rounds->empty()) return InvalidArgument(metrics_path.string() + " has no rounds (an empty run?)");
  run.rounds = *rounds;
  for (size_t i = 0; i < metrics.header.size(); ++i) {
    if (metrics.header[i] != "round") run.series[metrics.header[i]] = metrics.columns[i];
  }

  // timing.csv: what the machine measured, one row per round as well.
  std::string no_timing;
  const fs::path timing_path = root / "timing.csv";
  if (fs::exists(timing_path)) {
    ASSIGN_OR_RETURN(std::string timing_text, ReadFile(timing_path));
    ASSIGN_OR_RETURN(CsvTable timing, ParseCsv(timing_text, timing_path.string()));
    const std::vector<double>* timing_rounds = timing.Column("round");
    if (timing_rounds == nullptr) {
      return InvalidArgument(timing_path.string() + ": the header has no 'round' column");
    }
    std::map<double, size_t> row_of;
    for (size_t r = 0; r < timing_rounds->size(); ++r) row_of[(*timing_rounds)[r]] = r;
    for (size_t i = 0; i < timing.header.size(); ++i) {
      const std::string& name = timing.header[i];
      if (name == "round" || run.series.count(name)) continue;
      std::vector<double>& column = run.series[name];
      for (double round : run.rounds) {
        auto row = row_of.find(round);
        column.push_back(row == row_of.end() ? NAN : timing.columns[i][row->second]);
      }
    }
  } else {
    no_timing = "timing.csv is missing (a run from before the simulator wrote it)";
  }

  const fs::path summary_path = root / "summary.json";
  if (fs::exists(summary_path)) {
    ASSIGN_OR_RETURN(std::string summary_text, ReadFile(summary_path));
    run.summary = nlohmann::json::parse(summary_text, nullptr, /*allow_exceptions=*/false);
    if (run.summary.is_discarded() || !run.summary.is_object()) {
      return InvalidArgument(summary_path.string() +
                             " is not a JSON object (a run killed while writing it? delete it to report "
                             "without the settings)");
    }
    const nlohmann::json& budget = run.summary.value("dp_epsilon_budget", nlohmann::json());
    if (budget.is_number() && budget.get<double>() > 0) run.epsilon_budget = budget.get<double>();
  }
  FindMissingPlots(&run, no_timing, "metrics.csv");
  return run;
}

RunData RunFromRoundRecords(const std::vector<records::RoundRecord>& records) {
  RunData run;
  run.source = "store";
  static const char* const kNames[] = {
      "completed",     "selected",          "received",      "declined",      "refused",
      "unreported",    "examples",          "train_loss",    "test_loss",     "test_accuracy",
      "model_version", "epsilon",           "clip_norm",     "bytes_in",      "bytes_out",
      "seconds",       "selection_seconds", "train_seconds", "merge_seconds",
  };
  for (const char* name : kNames) run.series[name];
  for (const records::RoundRecord& r : records) {
    if (r.outcome() != records::RoundRecord::OUTCOME_COMPLETED &&
        r.outcome() != records::RoundRecord::OUTCOME_FAILED) {
      continue;  // still running
    }
    const bool completed = r.outcome() == records::RoundRecord::OUTCOME_COMPLETED;
    const bool evaluated = aggregator::RoundWasEvaluated(r);
    const int selected = r.selected_size(), received = r.received_size();
    const int unreported =
        std::max(0, selected - received - static_cast<int>(r.declined()) - static_cast<int>(r.refused()));
    const double values[] = {
        completed ? 1.0 : 0.0,
        static_cast<double>(selected),
        static_cast<double>(received),
        static_cast<double>(r.declined()),
        static_cast<double>(r.refused()),
        static_cast<double>(unreported),
        static_cast<double>(r.total_examples()),
        completed && !r.secure_aggregation() ? r.mean_train_loss() : NAN,
        evaluated ? r.test_loss() : NAN,
        evaluated ? r.test_accuracy() : NAN,
        completed ? static_cast<double>(r.result_model_version()) : NAN,
        r.epsilon() > 0 ? r.epsilon() : NAN,
        r.clip_norm() > 0 ? r.clip_norm() : NAN,
        static_cast<double>(r.bytes_in()),
        static_cast<double>(r.bytes_out()),
        r.seconds(),
        r.selection_seconds(),
        r.train_seconds(),
        r.merge_seconds(),
    };
    run.rounds.push_back(r.round());
    for (size_t i = 0; i < std::size(kNames); ++i) run.series[kNames[i]].push_back(values[i]);
  }
  // Records written before the bytes and the time split were recorded hold
  // zeros there: no data, not a measurement.
  auto all_zero = [&run](const char* name) {
    const std::vector<double>& values = run.series[name];
    return std::all_of(values.begin(), values.end(), [](double v) { return v == 0; });
  };
  const bool no_bytes = all_zero("bytes_in") && all_zero("bytes_out");
  if (no_bytes) {
    run.series.erase("bytes_in");
    run.series.erase("bytes_out");
  }
  if (all_zero("selection_seconds") && all_zero("train_seconds") && all_zero("merge_seconds")) {
    for (const char* name : {"selection_seconds", "train_seconds", "merge_seconds"}) run.series.erase(name);
  }
  FindMissingPlots(&run, "", "the store");
  if (no_bytes) {
    run.missing[kPlotBytes] =
        "its round records hold no bytes (written by an aggregator from before they were)";
  }
  return run;
}

bool IsStoreDir(const std::string& dir) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(dir) / "CURRENT", ec) && fs::exists(fs::path(dir) / "IDENTITY", ec);
}

StatusOr<RunData> ReadStoreRun(const std::string& store_dir) {
  ASSIGN_OR_RETURN(std::unique_ptr<aggregator::Store> store, aggregator::Store::OpenReadOnly(store_dir));
  std::vector<std::string> corrupt;
  ASSIGN_OR_RETURN(std::vector<records::RoundRecord> rounds, store->ListRounds(&corrupt));
  if (rounds.empty()) {
    return NotFound(store_dir + " is an aggregator store with no round records yet (no round has run)");
  }
  RunData run = RunFromRoundRecords(rounds);
  if (run.rounds.empty()) return NotFound(store_dir + ": its only round is still running");
  run.dir = store_dir;
  return run;
}

StatusOr<RunData> ReadRun(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound(dir + ": no such directory");
  StatusOr<RunData> run =
      fs::exists(fs::path(dir) / "metrics.csv") ? ReadSimulatorRun(dir)
      : IsStoreDir(dir)                         ? ReadStoreRun(dir)
      : IsStoreDir((fs::path(dir) / "store").string())
          ? ReadStoreRun((fs::path(dir) / "store").string())
          : StatusOr<RunData>(
                NotFound(dir + " has no metrics.csv and is not an aggregator store: give a "
                               "directory written by flotilla sim (--out) or an aggregator's --store"));
  if (!run.ok()) return run.status();
  run->dir = dir;
  fs::path name = fs::absolute(dir, ec).lexically_normal();
  if (!name.has_filename()) name = name.parent_path();  // "runs/x/", "."
  run->label = name.filename().string();
  return run;
}

nlohmann::json RunToJson(const RunData& run) {
  auto numbers = [](const std::vector<double>& values) {
    nlohmann::json out = nlohmann::json::array();
    for (double v : values) out.push_back(std::isfinite(v) ? nlohmann::json(v) : nlohmann::json());
    return out;
  };
  nlohmann::json series = nlohmann::json::object();
  for (const auto& [name, values] : run.series) series[name] = numbers(values);
  return {
      {"label", run.label},
      {"dir", run.dir},
      {"source", run.source},
      {"rounds", numbers(run.rounds)},
      {"series", series},
      {"summary", run.summary},
      {"epsilon_budget", run.epsilon_budget ? nlohmann::json(*run.epsilon_budget) : nlohmann::json()},
      {"missing", run.missing},
  };
}

}  // namespace flotilla::report
