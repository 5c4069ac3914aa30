// One enrolled device that asks for models and tasks and never reads the
// answers must not balloon the aggregator's memory: it runs as its own
// process (flotilla aggregator, CNN: 6.65 MB a model) and its resident
// memory is read from /proc before and after the flood.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "client/pull.h"
#include "core/subprocess.h"
#include "net/transport.h"
#include "privacy/keys.h"
#include "proto/codec.h"

using namespace flotilla;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

int FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Resident set size of `pid` in bytes (VmRSS), or -1.
int64_t ResidentBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

}  // namespace

TEST_CASE("A device that floods pulls and task requests without reading cannot balloon the aggregator",
          "[malicious][process]") {
  const fs::path dir = fs::temp_directory_path() / ("flotilla-amplify-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "keys");
  const std::string keys = (dir / "keys").string();
  auto server = privacy::GenerateCurveKeyPair();
  auto signing = privacy::GenerateSigningKeyPair();
  auto attacker = privacy::GenerateCurveKeyPair();
  REQUIRE(server.ok());
  REQUIRE(signing.ok());
  REQUIRE(attacker.ok());
  REQUIRE(privacy::WriteCurveKeyFiles(keys, "aggregator", *server, false).ok());
  REQUIRE(privacy::WriteSigningKeyFiles(keys, "aggregator", *signing, false).ok());
  { std::ofstream(dir / "keys" / "allowlist") << attacker->public_z85 << " stolen\n"; }
  const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(FreeLoopbackPort());
  // Rate limits off: what is measured here is the bound on bytes queued
  // for a device that does not read, alone.
  const pid_t agg = SpawnProcess({FLOTILLA_BIN,
                                  "aggregator",
                                  "--endpoint",
                                  endpoint,
                                  "--store",
                                  (dir / "store").string(),
                                  "--curve-key",
                                  keys + "/aggregator.curve.key",
                                  "--signing-key",
                                  keys + "/aggregator.sign.key",
                                  "--allowlist",
                                  keys + "/allowlist",
                                  "--arch",
                                  "cnn",
                                  "--min-clients",
                                  "1",
                                  "--rounds",
                                  "1",
                                  "--deadline",
                                  "600",
                                  "--no-eval",
                                  "--log",
                                  "warning",
                                  "--device-messages-per-second",
                                  "0",
                                  "--device-bytes-per-second",
                                  "0"},
                                 (dir / "aggregator.log").string());
  REQUIRE(agg > 0);
  client::SessionConfig probe;
  probe.endpoint = endpoint;
  probe.socket.curve.public_key = attacker->public_z85;
  probe.socket.curve.secret_key = attacker->SecretZ85();
  probe.socket.curve.server_public_key = server->public_z85;
  bool up = false;
  for (int i = 0; i < 100 && !up; ++i) {
    up = client::QueryStatus(probe, 1s).ok();
    if (!up) std::this_thread::sleep_for(200ms);
  }
  REQUIRE(up);
  // One full pull read normally first, so the steady state (RocksDB's
  // caches, the allocator's arenas) is part of the baseline.
  {
    const fs::path d = dir / "device";
    auto store = client::DeviceStore::Open(d.string());
    REQUIRE(store.ok());
    REQUIRE(client::PullModel(probe, store->get(), 0, signing->public_key).ok());
  }
  std::this_thread::sleep_for(500ms);
  const int64_t before = ResidentBytes(agg);
  REQUIRE(before > 0);

  net::Context context;
  auto s = net::ClientSocket::Connect(&context, endpoint, probe.socket);
  REQUIRE(s.ok());
  auto send = [&](wire::Envelope env, uint64_t id) {
    env.set_request_id(id);
    const std::string bytes = proto::SerializeEnvelope(&env);
    // The device's own queue fills when the aggregator stops reading it:
    // keep pushing (never reading) for a bounded time.
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (!(*s)->Send(bytes).ok() && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(1ms);
  };
  wire::Envelope hello;
  hello.mutable_hello()->set_client_name("stolen");
  send(hello, 1);
  for (int i = 0; i < 1500; ++i) {
    wire::Envelope pull;
    pull.mutable_pull_request()->set_version(0);
    send(pull, 100 + i);
  }
  for (int i = 0; i < 500; ++i) {
    wire::Envelope task;
    task.mutable_task_request();
    send(task, 5000 + i);
  }
  std::this_thread::sleep_for(3s);  // let the aggregator work through what it read
  const int64_t after = ResidentBytes(agg);
  const double model_bytes = 1663370.0 * 4;
  const double grown_models = static_cast<double>(after - before) / model_bytes;
  std::printf(
      "aggregator resident memory: %.1f MB before, %.1f MB after 1,500 pulls and 500 task requests "
      "never read: +%.2f models' worth\n",
      before / 1e6, after / 1e6, grown_models);
  // The aggregator still serves.
  auto status = client::QueryStatus(probe, 5s);
  ::kill(agg, SIGTERM);
  WaitProcess(agg);
  CHECK(status.ok());
  // Before the bound: a 2NN grew it by 750 MB; the CNN would be ~8x that.
  CHECK(grown_models <= 4.0);
  fs::remove_all(dir);
}
