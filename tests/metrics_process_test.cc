// A simulated federation with its HTTP endpoint on: /metrics scraped while
// rounds run passes promtool, a flood of connections and malformed
// requests does not disturb the federation, and the counters at the end
// match the simulator's own totals.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/subprocess.h"
#include "testing/kill_on_exit.h"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

std::string Slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// promtool's verdict on a metrics file (exit code; its output in *out).
int Promtool(const fs::path& file, std::string* out) {
  const fs::path log = file.string() + ".promtool";
  const pid_t pid =
      SpawnProcess({"/bin/sh", "-c", "promtool check metrics < '" + file.string() + "'"}, log.string());
  REQUIRE(pid > 0);
  const int rc = WaitProcess(pid);
  *out = Slurp(log);
  return rc;
}

// Unlabelled samples of a metrics text: name -> value.
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#' || line.find('{') != std::string::npos) continue;
    const size_t space = line.find(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

// Starts a connection without waiting for it (the flood must not wait on
// the server's accept queue); -1 when the socket cannot be made.
int ConnectNonBlocking(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  (void)::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);  // EINPROGRESS
  return fd;
}

}  // namespace

TEST_CASE(
    "While a simulation runs its metrics pass promtool, a flood does not disturb it, and the totals match",
    "[cli][monitoring]") {
  REQUIRE(std::system("command -v promtool > /dev/null") == 0);  // scripts/deps.txt installs prometheus
  const fs::path dir = fs::temp_directory_path() / ("flotilla-metrics-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const pid_t sim =
      SpawnProcess({FLOTILLA_BIN, "sim", "--clients", "12", "--rounds", "40", "--arch", "2nn", "--fraction",
                    "0.5", "--train-limit", "6000", "--http-listen", "127.0.0.1:0", "--out",
                    (dir / "run").string(), "--quiet", "--log", "warning"},
                   (dir / "sim.log").string());
  REQUIRE(sim > 0);
  testing::KillOnExit reap{sim};
  const auto start = std::chrono::steady_clock::now();
  while (!fs::exists(dir / "run" / "http.url") &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::string url = Slurp(dir / "run" / "http.url");
  INFO(Slurp(dir / "sim.log"));
  REQUIRE(url.rfind("http://127.0.0.1:", 0) == 0);
  const int port = std::stoi(url.substr(url.rfind(':') + 1));
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(10, 0);

  // Scraped while rounds run.
  auto scraped = client.Get("/metrics");
  REQUIRE(scraped);
  REQUIRE(scraped->status == 200);
  std::ofstream(dir / "live.prom") << scraped->body;
  std::string verdict;
  CHECK(Promtool(dir / "live.prom", &verdict) == 0);
  INFO(verdict);
  CHECK(scraped->body.find("flotilla_rounds_planned 40\n") != std::string::npos);

  // A flood: 300 connections held open, a third of them sending garbage.
  std::vector<int> held;
  for (int i = 0; i < 300; ++i) {
    const int fd = ConnectNonBlocking(port);
    if (fd >= 0) held.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  int connected = 0;
  for (size_t i = 0; i < held.size(); ++i) {
    int err = 1;
    socklen_t len = sizeof err;
    if (::getsockopt(held[i], SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) continue;
    ++connected;
    if (i % 3 == 0) {
      const std::string junk = "\x16\x03\x01 not http at all\r\n\r\n";
      (void)::send(held[i], junk.data(), junk.size(), MSG_NOSIGNAL);
    }
  }
  CHECK(connected > 50);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  for (int fd : held) ::close(fd);
  // The flood overlapped the federation (it is still running) and the
  // endpoint still answers.
  CHECK(::waitpid(sim, nullptr, WNOHANG) == 0);
  auto health = client.Get("/healthz");
  REQUIRE(health);
  CHECK(health->status == 200);

  reap.done = true;
  REQUIRE(WaitProcess(sim) == 0);
  // Every round completed despite the flood, and the totals agree.
  const std::string final_metrics = Slurp(dir / "run" / "metrics.prom");
  std::ofstream(dir / "final.prom") << final_metrics;
  CHECK(Promtool(dir / "final.prom", &verdict) == 0);
  const std::map<std::string, double> m = Samples(final_metrics);
  std::istringstream csv(Slurp(dir / "run" / "metrics.csv"));
  std::string row;
  std::getline(csv, row);
  int completed = 0;
  double received = 0, examples = 0, version = 0;
  while (std::getline(csv, row)) {
    std::vector<std::string> cells;
    std::stringstream cs(row);
    for (std::string c; std::getline(cs, c, ',');) cells.push_back(c);
    REQUIRE(cells.size() > 16);
    completed += cells[1] == "1";
    received += std::stod(cells[3]);
    if (cells[1] == "1") examples += std::stod(cells[7]);
    version = std::stod(cells[16]);
  }
  CHECK(completed == 40);
  CHECK(m.at("flotilla_rounds_completed_total") == completed);
  CHECK(m.at("flotilla_rounds_failed_total") == 0);
  CHECK(m.at("flotilla_updates_accepted_total") == received);
  CHECK(m.at("flotilla_examples_total") == examples);
  CHECK(m.at("flotilla_model_version") == version);
  CHECK(m.at("flotilla_federation_finished") == 1);
  CHECK(m.at("flotilla_round_duration_seconds_count") == 40);
  CHECK(m.at("flotilla_received_bytes_total") > 0);
  CHECK(m.at("flotilla_open_fds") > 0);
  CHECK(m.at("flotilla_open_fds") < m.at("flotilla_fd_limit"));
  fs::remove_all(dir);
}
