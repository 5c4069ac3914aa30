// Run reports (report/): metrics.csv, timing.csv and summary.json, or an
// aggregator's round records, read into per-round series; older runs
// missing columns; errors that name the file and line; the page with
// several runs and the embedded uPlot.
#include "report/report.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "aggregator/store.h"
#include "report/html.h"
#include "report/run_data.h"
#include "web/assets.h"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the temp dir, named for the test.
fs::path RunDir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("flotilla-report-" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void Write(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

const char kMetrics[] =
    "round,completed,selected,received,declined,refused,unreported,examples,train_loss,test_loss,"
    "test_accuracy,test_auc,test_mae,federated_examples,federated_loss,federated_accuracy,model_version,"
    "epsilon,clip_norm\n"
    "1,1,10,8,1,0,1,800,1.5,0.9,0.70,nan,nan,0,nan,nan,2,1.25,nan\n"
    "2,1,10,10,0,0,0,1000,0.8,0.6,0.81,nan,nan,0,nan,nan,3,2.5,nan\n";
const char kTiming[] =
    "round,seconds,selection_seconds,train_seconds,merge_seconds,bytes_in,bytes_out\n"
    "2,0.5,0,0.4,0.1,2000,3000\n"
    "1,0.25,0.05,0.15,0.05,1000,1500\n";

}  // namespace

TEST_CASE("Report: a simulator run's metrics.csv, timing.csv and summary.json become series", "[unit]") {
  const fs::path dir = RunDir("full");
  Write(dir / "metrics.csv", kMetrics);
  Write(dir / "timing.csv", kTiming);  // rows out of order: matched by round
  Write(dir / "summary.json", R"({"strategy": "fedavg", "dp": "dp-sgd", "dp_epsilon_budget": 8.0})");
  StatusOr<report::RunData> run = report::ReadRun(dir.string() + "/");
  REQUIRE(run.ok());
  CHECK(run->label == "full");
  CHECK(run->source == "simulator");
  CHECK(run->rounds == std::vector<double>{1, 2});
  CHECK(run->series.at("test_accuracy") == std::vector<double>{0.70, 0.81});
  CHECK(run->series.at("unreported") == std::vector<double>{1, 0});
  CHECK(run->series.at("bytes_in") == std::vector<double>{1000, 2000});
  CHECK(run->series.at("train_seconds") == std::vector<double>{0.15, 0.4});
  CHECK(run->series.at("epsilon") == std::vector<double>{1.25, 2.5});
  CHECK(std::isnan(run->series.at("test_auc")[0]));
  REQUIRE(run->epsilon_budget.has_value());
  CHECK(*run->epsilon_budget == 8.0);
  CHECK(run->summary.at("strategy") == "fedavg");
  CHECK(run->missing.empty());

  const nlohmann::json json = report::RunToJson(*run);
  CHECK(json.at("series").at("test_auc")[0].is_null());  // NaN: no value
  CHECK(json.at("epsilon_budget") == 8.0);
}

TEST_CASE("Report: an older run without timing.csv or columns says which plots it lacks", "[unit]") {
  // The layout metrics.csv had before timing.csv existed (seconds inline, no dropouts).
  const fs::path old_dir = RunDir("old");
  Write(old_dir / "metrics.csv",
        "round,completed,selected,received,examples,train_loss,test_loss,test_accuracy,seconds,model_version,"
        "epsilon,clip_norm\n"
        "1,1,5,5,455,0,0.37,0.88,0.12,2,nan,nan\n");
  Write(old_dir / "summary.json", R"({"dp": "none"})");
  StatusOr<report::RunData> old = report::ReadRun(old_dir.string());
  REQUIRE(old.ok());
  CHECK(old->missing.count(report::kPlotBytes));
  CHECK(old->missing.at(report::kPlotBytes).find("timing.csv is missing") != std::string::npos);
  CHECK_FALSE(old->missing.count(report::kPlotRoundTime));  // the total from metrics.csv
  CHECK_FALSE(old->missing.count(report::kPlotParticipation));
  CHECK(old->missing.at(report::kPlotEpsilon) == "no differential privacy in this run");

  const fs::path bare_dir = RunDir("bare");
  Write(bare_dir / "metrics.csv", "round,test_accuracy\n1,0.5\n2,0.6\n");
  StatusOr<report::RunData> bare = report::ReadRun(bare_dir.string());
  REQUIRE(bare.ok());
  CHECK_FALSE(bare->missing.count(report::kPlotAccuracy));
  CHECK(bare->missing.at(report::kPlotParticipation) == "metrics.csv has no selected column");
  CHECK(bare->missing.at(report::kPlotLoss) == "metrics.csv has no test_loss column");
  CHECK(bare->missing.at(report::kPlotEpsilon) == "metrics.csv has no epsilon column");
  CHECK(bare->missing.count(report::kPlotBytes));
  CHECK(bare->missing.count(report::kPlotRoundTime));
  // Still a page.
  CHECK(report::RenderReport({*old, *bare}, "old runs").find("\"bare\"") != std::string::npos);
}

TEST_CASE("Report: a bad row names the file and line, and what to do", "[unit]") {
  StatusOr<report::CsvTable> short_row = report::ParseCsv("round,a,b\n1,2,3\n2,3\n", "run/metrics.csv");
  REQUIRE_FALSE(short_row.ok());
  CHECK(short_row.status().message().find("run/metrics.csv:3: expected 3 fields") != std::string::npos);
  CHECK(short_row.status().message().find("delete that line") != std::string::npos);

  StatusOr<report::CsvTable> word = report::ParseCsv("round,a\n1,2\r\n2,lots\n", "m.csv");
  REQUIRE_FALSE(word.ok());
  CHECK(word.status().message().find("m.csv:3: column a is 'lots', not a number") != std::string::npos);

  StatusOr<report::CsvTable> fine = report::ParseCsv("round,a\r\n1, 2\r\n\n2,\n", "m.csv");
  REQUIRE(fine.ok());
  CHECK(fine->Column("a")->at(0) == 2.0);
  CHECK(std::isnan(fine->Column("a")->at(1)));

  const fs::path dir = RunDir("bad");
  Write(dir / "metrics.csv", kMetrics);
  Write(dir / "timing.csv", "round,seconds\n1,0.5,7\n");
  StatusOr<report::RunData> run = report::ReadRun(dir.string());
  REQUIRE_FALSE(run.ok());
  CHECK(run.status().message().find((dir / "timing.csv").string() + ":2:") != std::string::npos);

  StatusOr<report::RunData> none = report::ReadRun((dir / "nowhere").string());
  REQUIRE_FALSE(none.ok());
  CHECK(none.status().message().find("no such directory") != std::string::npos);
  const fs::path empty = RunDir("empty");
  StatusOr<report::RunData> nothing = report::ReadRun(empty.string());
  REQUIRE_FALSE(nothing.ok());
  CHECK(nothing.status().message().find("has no metrics.csv and is not an aggregator store") !=
        std::string::npos);
}

TEST_CASE("Report: an aggregator store's round records become series", "[unit]") {
  const fs::path dir = RunDir("store");
  {
    StatusOr<std::unique_ptr<aggregator::Store>> store = aggregator::Store::Open(dir.string());
    REQUIRE(store.ok());
    records::RoundRecord r1;
    r1.set_round(1);
    r1.set_outcome(records::RoundRecord::OUTCOME_COMPLETED);
    for (const char* id : {"a", "b", "c", "d", "e"}) r1.add_selected(id);
    for (const char* id : {"a", "b"}) r1.add_received(id);
    r1.set_declined(1);
    r1.set_refused(1);
    r1.set_test_accuracy(0.75);
    r1.set_test_loss(0.5);
    r1.set_mean_train_loss(0.9);
    r1.set_bytes_in(4096);
    r1.set_bytes_out(8192);
    r1.set_train_seconds(1.5);
    r1.set_merge_seconds(0.25);
    r1.set_seconds(1.75);
    r1.set_epsilon(0.5);
    records::RoundRecord r2;  // failed: no model, no evaluation
    r2.set_round(2);
    r2.set_outcome(records::RoundRecord::OUTCOME_FAILED);
    r2.add_selected("a");
    records::RoundRecord r3;  // still running: left out
    r3.set_round(3);
    r3.set_outcome(records::RoundRecord::OUTCOME_RUNNING);
    for (const records::RoundRecord* r : {&r1, &r2, &r3}) REQUIRE((*store)->PutRound(*r).ok());
  }
  StatusOr<report::RunData> run = report::ReadRun(dir.string());
  REQUIRE(run.ok());
  CHECK(run->source == "store");
  CHECK(run->rounds == std::vector<double>{1, 2});
  CHECK(run->series.at("selected") == std::vector<double>{5, 1});
  CHECK(run->series.at("unreported") == std::vector<double>{1, 1});
  CHECK(run->series.at("bytes_out")[0] == 8192);
  CHECK(run->series.at("test_accuracy")[0] == 0.75);
  CHECK(std::isnan(run->series.at("test_accuracy")[1]));
  CHECK(run->series.at("completed") == std::vector<double>{1, 0});
  CHECK(run->missing.empty());

  // Records from before bytes and the time split were recorded: no bytes
  // plot (zeros are no data), the total time only.
  records::RoundRecord old_record;
  old_record.set_round(1);
  old_record.set_outcome(records::RoundRecord::OUTCOME_COMPLETED);
  old_record.add_selected("a");
  old_record.add_received("a");
  old_record.set_seconds(0.5);
  const report::RunData old = report::RunFromRoundRecords({old_record});
  CHECK(old.missing.at(report::kPlotBytes).find("hold no bytes") != std::string::npos);
  CHECK_FALSE(old.missing.count(report::kPlotRoundTime));
  CHECK_FALSE(old.series.count("train_seconds"));
  CHECK(old.series.at("seconds") == std::vector<double>{0.5});
  CHECK(old.missing.count(report::kPlotAccuracy));

  // A simulator's directory with only its store/ (no metrics.csv) reads the store.
  const fs::path parent = dir.parent_path() / "store-parent";
  fs::remove_all(parent);
  fs::create_directories(parent);
  fs::rename(dir, parent / "store");
  StatusOr<report::RunData> via_parent = report::ReadRun(parent.string());
  REQUIRE(via_parent.ok());
  CHECK(via_parent->label == "store-parent");
  CHECK(via_parent->rounds.size() == 2);
}

TEST_CASE("Report: several runs overlay in one page with uPlot inline", "[unit]") {
  const fs::path a = RunDir("fedavg"), b = RunDir("median");
  for (const fs::path& dir : {a, b}) {
    Write(dir / "metrics.csv", kMetrics);
    Write(dir / "timing.csv", kTiming);
  }
  report::ReportOptions options;
  options.run_dirs = {a.string(), b.string()};
  options.out = (a.parent_path() / "overlay.html").string();
  StatusOr<report::ReportResult> result = report::MakeReport(options);
  REQUIRE(result.ok());
  CHECK(result->path == options.out);
  std::ifstream in(result->path);
  const std::string page((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(page.find("\"label\":\"fedavg\"") != std::string::npos);
  CHECK(page.find("\"label\":\"median\"") != std::string::npos);
  CHECK(page.find("<title>Flotilla run report: fedavg, median</title>") != std::string::npos);
  REQUIRE(web::kUplotJs.size() > 10000);
  CHECK(page.find(std::string(web::kUplotJs.substr(0, 200))) != std::string::npos);
  CHECK(page.find(std::string(web::kUplotCss.substr(0, 100))) != std::string::npos);
  CHECK(page.find("{{") == std::string::npos);
  CHECK(page.find("src=\"http") == std::string::npos);  // nothing fetched
  CHECK(page.find("href=\"http") == std::string::npos);

  // Labels and titles are data, never markup.
  options.labels = {"</script><b>x", "b & c"};
  options.title = "<i>t</i>";
  result = report::MakeReport(options);
  REQUIRE(result.ok());
  std::ifstream in2(result->path);
  const std::string escaped((std::istreambuf_iterator<char>(in2)), std::istreambuf_iterator<char>());
  CHECK(escaped.find("</script><b>x") == std::string::npos);
  CHECK(escaped.find("\\u003c/script>\\u003cb>x") != std::string::npos);
  CHECK(escaped.find("<title>&lt;i&gt;t&lt;/i&gt;</title>") != std::string::npos);

  // One label per run, or none.
  options.labels = {"only one"};
  CHECK_FALSE(report::MakeReport(options).ok());
  // Two runs whose directories share a name are told apart by their parents.
  const fs::path x = RunDir("x/run"), y = RunDir("y/run");
  Write(x / "metrics.csv", kMetrics);
  Write(y / "metrics.csv", kMetrics);
  options = report::ReportOptions();
  options.run_dirs = {x.string(), y.string()};
  options.out = (a.parent_path() / "same.html").string();
  result = report::MakeReport(options);
  REQUIRE(result.ok());
  CHECK(result->runs[0].label == "x/run");
  CHECK(result->runs[1].label == "y/run");
}
