#include "report/report.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "report/html.h"

namespace flotilla::report {
namespace {

namespace fs = std::filesystem;

// "a/b/c" -> "b/c": the label with its parent directory's name.
std::string WithParent(const std::string& dir) {
  std::error_code ec;
  fs::path path = fs::absolute(dir, ec).lexically_normal();
  if (!path.has_filename()) path = path.parent_path();
  const std::string parent = path.parent_path().filename().string();
  return parent.empty() ? path.filename().string() : parent + "/" + path.filename().string();
}

}  // namespace

std::string DefaultOutPath(const ReportOptions& options, const std::vector<RunData>& runs) {
  if (!options.out.empty()) return options.out;
  if (runs.size() == 1 && runs[0].source == "simulator") {
    return (fs::path(runs[0].dir) / "report.html").string();
  }
  return "report.html";
}

StatusOr<ReportResult> MakeReport(const ReportOptions& options) {
  if (options.run_dirs.empty()) return InvalidArgument("give at least one run directory");
  if (!options.labels.empty() && options.labels.size() != options.run_dirs.size()) {
    return InvalidArgument("got " + std::to_string(options.labels.size()) + " --label for " +
                           std::to_string(options.run_dirs.size()) +
                           " runs: give one --label per run, in the same order, or none");
  }
  ReportResult result;
  for (const std::string& dir : options.run_dirs) {
    StatusOr<RunData> run = ReadRun(dir);
    if (!run.ok()) return run.status();
    result.runs.push_back(std::move(run).value());
  }
  if (!options.labels.empty()) {
    for (size_t i = 0; i < result.runs.size(); ++i) result.runs[i].label = options.labels[i];
  } else {
    std::multiset<std::string> labels;
    for (const RunData& run : result.runs) labels.insert(run.label);
    for (RunData& run : result.runs) {
      if (labels.count(run.label) > 1) run.label = WithParent(run.dir);
    }
  }
  std::string title = options.title;
  if (title.empty()) {
    title = "Flotilla run report: ";
    for (size_t i = 0; i < result.runs.size(); ++i) title += (i ? ", " : "") + result.runs[i].label;
    if (title.size() > 120) title = "Flotilla run report: " + std::to_string(result.runs.size()) + " runs";
  }
  result.path = DefaultOutPath(options, result.runs);
  const std::string page = RenderReport(result.runs, title);
  std::ofstream out(result.path, std::ios::binary | std::ios::trunc);
  out << page;
  out.close();
  if (!out) return Unavailable("could not write " + result.path + " (does its directory exist?)");
  return result;
}

}  // namespace flotilla::report
