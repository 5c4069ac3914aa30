// flotilla report: one run's figures, or several runs overlaid, as one
// self-contained HTML page with plots (report/report.h, docs/reports.md).
//
// Exit codes: 0 written, 1 a run could not be read or the page not
// written, 2 bad usage.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "report/report.h"

int flotilla::cli::ReportMain(int argc, char** argv, const FlagOrigins& /*origins*/) {
  report::ReportOptions options;
  CLI::App app{
      "Flotilla run report: accuracy and loss, participation and dropouts, bytes on the wire, the "
      "round-time split and epsilon against the budget, per round, in one self-contained HTML file "
      "(no network needed to view it). Several runs are overlaid. Each RUN_DIR is a directory written by "
      "`flotilla sim` (metrics.csv, timing.csv, summary.json) or an aggregator's --store. See "
      "docs/reports.md."};
  app.add_option("RUN_DIR", options.run_dirs, "Simulator run directories or aggregator stores")->required();
  app.add_option("--out", options.out,
                 "The HTML file to write (default: RUN_DIR/report.html for one simulator run, else "
                 "report.html here)");
  app.add_option("--title", options.title, "The page's title (default: from the labels)");
  app.add_option("--label", options.labels,
                 "A run's name on the page, once per RUN_DIR in the same order (default: the directory's "
                 "name)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help, or a usage error CLI11 printed
  }
  if (!options.labels.empty() && options.labels.size() != options.run_dirs.size()) {
    std::fprintf(stderr,
                 "flotilla report: got %zu --label for %zu runs: give one per RUN_DIR, in order, or none\n",
                 options.labels.size(), options.run_dirs.size());
    return 2;
  }

  StatusOr<report::ReportResult> result = report::MakeReport(options);
  if (!result.ok()) {
    std::fprintf(stderr, "flotilla report: %s\n", result.status().message().c_str());
    return 1;
  }
  for (const report::RunData& run : result->runs) {
    for (const auto& [plot, why] : run.missing) {
      std::printf("%s: no %s plot: %s\n", run.label.c_str(), plot.c_str(), why.c_str());
    }
  }
  std::printf("wrote %s (%zu run%s)\n", result->path.c_str(), result->runs.size(),
              result->runs.size() == 1 ? "" : "s");
  return 0;
}
