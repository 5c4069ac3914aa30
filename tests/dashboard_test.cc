// The live dashboard in a real browser: a simulated federation with its
// HTTP endpoint on (more rounds than the test waits for: it is killed at
// the end), Debian's headless Chromium opening the page while rounds run. The chart must hold every finished
// round, the round counter must advance between two looks, and a screenshot is saved
// (test-output/dashboard.png beside the test binary).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/subprocess.h"
#include "testing/kill_on_exit.h"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

std::string ReadText(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs headless Chromium on `url` with `extra` flags; its output (the DOM
// with --dump-dom) in *out.
int Chromium(const fs::path& scratch, const std::string& url, const std::vector<std::string>& extra,
             std::string* out) {
  std::vector<std::string> args = {"/usr/bin/chromium",
                                   "--headless",
                                   "--no-sandbox",
                                   "--disable-gpu",
                                   "--disable-quic",
                                   "--no-first-run",
                                   "--disable-background-networking",
                                   "--disable-component-update",
                                   "--disable-sync",
                                   "--hide-scrollbars",
                                   "--user-data-dir=" + (scratch / "profile").string(),
                                   "--window-size=1280,1000",
                                   "--virtual-time-budget=4000"};
  args.insert(args.end(), extra.begin(), extra.end());
  args.push_back(url);
  static int runs = 0;  // a file per run: the output is appended to
  const fs::path log = scratch / ("chromium-" + std::to_string(++runs) + ".out");
  const pid_t pid = SpawnProcess(args, log.string());
  REQUIRE(pid > 0);
  const int rc = WaitProcess(pid);
  *out = ReadText(log);
  return rc;
}

// The integer in `attr="N"` of the dumped DOM, -1 when absent.
int Attribute(const std::string& dom, const std::string& attr) {
  std::smatch m;
  if (!std::regex_search(dom, m, std::regex(attr + "=\"([0-9]+)\""))) return -1;
  return std::stoi(m[1].str());
}

}  // namespace

TEST_CASE("The dashboard in headless Chromium charts the finished rounds and its round counter advances",
          "[cli][monitoring]") {
  REQUIRE(fs::exists("/usr/bin/chromium"));  // scripts/deps.txt installs it
  const fs::path dir = fs::temp_directory_path() / ("flotilla-dashboard-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const pid_t sim =
      SpawnProcess({FLOTILLA_BIN, "sim", "--clients", "12", "--rounds", "500", "--arch", "2nn", "--fraction",
                    "0.5", "--train-limit", "6000", "--http-listen", "127.0.0.1:0", "--out",
                    (dir / "run").string(), "--quiet", "--log", "warning"},
                   (dir / "sim.log").string());
  REQUIRE(sim > 0);
  testing::KillOnExit stop{sim};  // the simulation runs on: always stopped
  const auto start = std::chrono::steady_clock::now();
  auto waited = [&start] { return std::chrono::steady_clock::now() - start; };
  while (!fs::exists(dir / "run" / "http.url") && waited() < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const std::string url =
      ReadText(dir / "run" / "http.url").substr(0, ReadText(dir / "run" / "http.url").find('\n'));
  INFO(ReadText(dir / "sim.log"));
  REQUIRE(url.rfind("http://127.0.0.1:", 0) == 0);
  // Two rounds done (the simulator's own log of finished rounds).
  auto finished_rounds = [&dir] {
    const std::string log = ReadText(dir / "run" / "rounds.jsonl");
    return static_cast<int>(std::count(log.begin(), log.end(), '\n'));
  };
  while (finished_rounds() < 2 && waited() < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  REQUIRE(finished_rounds() >= 2);

  std::string first;
  REQUIRE(Chromium(dir, url + "/", {"--dump-dom"}, &first) == 0);
  INFO(first.substr(0, 4000));
  CHECK(first.find("data-loaded=\"1\"") != std::string::npos);
  CHECK(first.find("<div id=\"error\"></div>") != std::string::npos);  // no error shown
  const int charted = Attribute(first, "data-rounds");
  const int round = Attribute(first, "data-round");
  CHECK(charted >= 2);  // the chart shows both rounds (and any since)
  CHECK(round >= 2);
  CHECK(first.find("<canvas") != std::string::npos);  // uPlot drew

  const fs::path shots = fs::path(FLOTILLA_BIN).parent_path().parent_path() / "tests" / "test-output";
  fs::create_directories(shots);
  std::string ignored;
  CHECK(Chromium(dir, url + "/", {"--screenshot=" + (shots / "dashboard.png").string()}, &ignored) == 0);
  CHECK(fs::exists(shots / "dashboard.png"));
  CHECK(fs::file_size(shots / "dashboard.png") > 10000);

  std::string second;
  REQUIRE(Chromium(dir, url + "/", {"--dump-dom"}, &second) == 0);
  CHECK(Attribute(second, "data-round") > round);  // the counter advanced
  CHECK(Attribute(second, "data-rounds") > charted);
  fs::remove_all(dir);
}
