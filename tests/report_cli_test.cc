// `flotilla report` as a user runs it: the real binary on run directories,
// its errors and exit codes, and the page it writes loaded in headless
// Chromium (when installed), which must draw every chart without a script
// error.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/subprocess.h"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

fs::path Scratch() {
  const fs::path dir = fs::temp_directory_path() / ("flotilla-report-cli-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `argv`; returns its exit code, its stdout and stderr in *output.
int Run(const std::vector<std::string>& argv, std::string* output) {
  const fs::path out = Scratch() / "output.txt";
  fs::remove(out);
  const pid_t pid = SpawnProcess(argv, out.string());
  REQUIRE(pid > 0);
  const int code = WaitProcess(pid);
  *output = ReadAll(out);
  return code;
}

// A small simulator run directory: three rounds, DP with a budget.
fs::path MakeRun(const std::string& name, double accuracy_step) {
  const fs::path dir = Scratch() / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream metrics(dir / "metrics.csv");
  metrics << "round,completed,selected,received,declined,refused,unreported,examples,train_loss,test_loss,"
             "test_accuracy,model_version,epsilon\n";
  std::ofstream timing(dir / "timing.csv");
  timing << "round,seconds,selection_seconds,train_seconds,merge_seconds,bytes_in,bytes_out\n";
  for (int r = 1; r <= 3; ++r) {
    metrics << r << ",1,10," << 10 - r << ",1,0," << r - 1 << ",900," << 1.0 / r << "," << 0.9 / r << ","
            << 0.5 + accuracy_step * r << "," << r + 1 << "," << 0.7 * r << "\n";
    timing << r << "," << 0.3 * r << ",0.1,0.2,0.05," << 100000 * r << "," << 200000 * r << "\n";
  }
  std::ofstream(dir / "summary.json")
      << R"({"strategy": "fedavg", "dp": "dp-fedavg", "dp_epsilon_budget": 3})";
  return dir;
}

const char* const kChromium = "/usr/bin/chromium";

// The page's DOM after its scripts ran, from headless Chromium.
int DumpDom(const fs::path& page, std::string* dom) {
  const fs::path profile = Scratch() / "chromium-profile";
  return Run({kChromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--user-data-dir=" + profile.string(), "--window-size=1200,900", "--dump-dom",
              "file://" + fs::absolute(page).string()},
             dom);
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("flotilla report writes one page for a run and one overlaying several", "[cli]") {
  const fs::path a = MakeRun("fedavg", 0.1), b = MakeRun("median", 0.05);
  std::string out;
  REQUIRE(Run({FLOTILLA_BIN, "report", a.string()}, &out) == 0);
  CHECK(out.find("wrote " + (a / "report.html").string()) != std::string::npos);
  CHECK(fs::file_size(a / "report.html") > 50000);

  const fs::path overlay = Scratch() / "overlay.html";
  REQUIRE(Run({FLOTILLA_BIN, "report", a.string(), b.string(), "--out", overlay.string(), "--title", "A vs B",
               "--label", "first", "--label", "second"},
              &out) == 0);
  const std::string page = ReadAll(overlay);
  CHECK(page.find("<title>A vs B</title>") != std::string::npos);
  CHECK(page.find("\"label\":\"first\"") != std::string::npos);
  CHECK(page.find("\"label\":\"second\"") != std::string::npos);
  CHECK(page.find("var uPlot=") != std::string::npos);

  // Usage and input errors: what went wrong and what to do.
  CHECK(Run({FLOTILLA_BIN, "report", a.string(), "--label", "x", "--label", "y"}, &out) == 2);
  CHECK(out.find("give one per RUN_DIR") != std::string::npos);
  CHECK(Run({FLOTILLA_BIN, "report"}, &out) == 2);
  CHECK(Run({FLOTILLA_BIN, "report", (Scratch() / "absent").string()}, &out) == 1);
  CHECK(out.find("no such directory") != std::string::npos);
  const fs::path broken = MakeRun("broken", 0.1);
  std::ofstream(broken / "metrics.csv", std::ios::app) << "4,1,10\n";
  CHECK(Run({FLOTILLA_BIN, "report", broken.string()}, &out) == 1);
  CHECK(out.find("metrics.csv:5: expected 13 fields") != std::string::npos);
  // An older run without timing.csv: a page, and a word on what it lacks.
  fs::remove(b / "timing.csv");
  REQUIRE(Run({FLOTILLA_BIN, "report", b.string()}, &out) == 0);
  CHECK(out.find("median: no bytes plot: timing.csv is missing") != std::string::npos);
}

TEST_CASE("A report's page draws every chart in headless Chromium", "[cli]") {
  if (!fs::exists(kChromium)) {
    WARN("no " << kChromium << " (scripts/setup.sh installs it): not loading the page");
    return;
  }
  const fs::path a = MakeRun("browser-a", 0.1), b = MakeRun("browser-b", 0.05);
  fs::remove(b / "timing.csv");  // one run without bytes and times
  const fs::path page = Scratch() / "browser.html";
  std::string out;
  REQUIRE(Run({FLOTILLA_BIN, "report", a.string(), b.string(), "--out", page.string()}, &out) == 0);
  std::string dom;
  REQUIRE(DumpDom(page, &dom) == 0);
  INFO(dom.substr(0, 2000));
  CHECK(dom.find("id=\"report-error\"") == std::string::npos);
  REQUIRE(dom.find("id=\"report-ok\"") != std::string::npos);
  // Accuracy, loss, bytes, epsilon overlaid; participation and round time per run (one without times).
  CHECK(dom.find("data-charts=\"7\"") != std::string::npos);
  CHECK(Count(dom, "<canvas") == 7);
  CHECK(dom.find("browser-b: timing.csv is missing") != std::string::npos);

  // The check itself: a page whose script throws shows the error, not the marker.
  std::string broken = ReadAll(page);
  const size_t join = broken.find("uPlot.join(");
  REQUIRE(join != std::string::npos);
  broken.replace(join, 11, "uPlot.nope(");
  const fs::path bad = Scratch() / "broken.html";
  std::ofstream(bad) << broken;
  REQUIRE(DumpDom(bad, &dom) == 0);
  CHECK(dom.find("id=\"report-error\"") != std::string::npos);
  CHECK(dom.find("id=\"report-ok\"") == std::string::npos);
}
