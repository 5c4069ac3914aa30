// `flotilla report`'s job without the command line: read the runs, label
// them, render the page (report/html.h) and write it. See docs/reports.md.
// Thread-safety: plain functions over their arguments.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "report/run_data.h"

namespace flotilla::report {

struct ReportOptions {
  std::vector<std::string> run_dirs;  // simulator run directories or aggregator stores; at least one
  std::vector<std::string> labels;    // empty, or one per run (default: the directory's name)
  std::string out;                    // empty: DefaultOutPath()
  std::string title;                  // empty: from the labels
};

struct ReportResult {
  std::string path;           // the page written
  std::vector<RunData> runs;  // as read and labelled
};

// Where the page goes without --out: RUN_DIR/report.html for one simulator
// run; report.html in the working directory for several runs or a store
// (never inside a RocksDB directory).
std::string DefaultOutPath(const ReportOptions& options, const std::vector<RunData>& runs);

// Reads every run (the first error fails the report, naming the run), makes
// labels unique (two runs named "store" become "a/store" and "b/store"),
// and writes the page. InvalidArgument for a label count that does not
// match the runs.
StatusOr<ReportResult> MakeReport(const ReportOptions& options);

}  // namespace flotilla::report
