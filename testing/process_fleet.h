// A federation of real processes for tests: the `flotilla` executable
// (FLOTILLA_BIN, defined by the test binary) as an aggregator and as
// devices, with their own key files, allowlist and loopback port in a
// temporary directory that is removed afterwards. Header-only: it uses
// Catch2's REQUIRE on the test's main thread.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "client/session.h"
#include "core/subprocess.h"
#include "privacy/keys.h"

namespace flotilla::testing {

// A loopback TCP port that was free a moment ago.
inline int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

inline pid_t Spawn(const std::vector<std::string>& args, const std::filesystem::path& log) {
  const pid_t pid = SpawnProcess(args, log.string());
  REQUIRE(pid >= 0);
  return pid;
}

struct ProcessFleet {
  std::filesystem::path dir;
  int port;
  int clients;

  // Keys for an aggregator and `clients` devices named dev0, dev1, ...
  // (the same device identities in every run: merge order and seeds follow
  // them), and an allowlist of exactly those devices.
  ProcessFleet(const std::string& name, int num_clients) : clients(num_clients) {
    dir = std::filesystem::temp_directory_path() /
          ("flotilla-fleet-" + std::to_string(::getpid()) + "-" + name);
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir / "keys");
    port = FreePort();
    const std::string keys = (dir / "keys").string();
    auto server = privacy::GenerateCurveKeyPair();
    auto signing = privacy::GenerateSigningKeyPair();
    REQUIRE(server.ok());
    REQUIRE(signing.ok());
    REQUIRE(privacy::WriteCurveKeyFiles(keys, "aggregator", *server, false).ok());
    REQUIRE(privacy::WriteSigningKeyFiles(keys, "aggregator", *signing, false).ok());
    std::ofstream allow(dir / "keys" / "allowlist");
    for (int i = 0; i < clients; ++i) {
      auto k = privacy::DeriveCurveKeyPairForSimulation(7000 + i);
      REQUIRE(k.ok());
      REQUIRE(privacy::WriteCurveKeyFiles(keys, "dev" + std::to_string(i), *k, false).ok());
      allow << k->public_z85 << " dev" << i << "\n";
    }
  }
  ~ProcessFleet() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  ProcessFleet(const ProcessFleet&) = delete;
  ProcessFleet& operator=(const ProcessFleet&) = delete;

  std::string endpoint() const { return "tcp://127.0.0.1:" + std::to_string(port); }
  std::filesystem::path store() const { return dir / "store"; }
  std::filesystem::path log(const std::string& who) const { return dir / (who + ".log"); }

  // `flotilla aggregator` on this fleet's port, keys, allowlist and store,
  // waiting for every device, then `extra`.
  std::vector<std::string> AggregatorArgs(const std::vector<std::string>& extra) const {
    const std::string k = (dir / "keys").string();
    std::vector<std::string> args = {FLOTILLA_BIN,    "aggregator",
                                     "--endpoint",    endpoint(),
                                     "--store",       store().string(),
                                     "--curve-key",   k + "/aggregator.curve.key",
                                     "--signing-key", k + "/aggregator.sign.key",
                                     "--allowlist",   k + "/allowlist",
                                     "--min-clients", std::to_string(clients),
                                     "--log",         "warning"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  // `flotilla client ... train` as device i (partition i of `clients`),
  // then `train_extra`.
  std::vector<std::string> ClientArgs(int i, const std::vector<std::string>& train_extra) const {
    const std::string k = (dir / "keys").string();
    const std::string name = "dev" + std::to_string(i);
    std::vector<std::string> args = {FLOTILLA_BIN,
                                     "client",
                                     "--connect",
                                     endpoint(),
                                     "--name",
                                     name,
                                     "--curve-key",
                                     k + "/" + name + ".curve.key",
                                     "--server-key",
                                     k + "/aggregator.curve.pub",
                                     "--model-key",
                                     k + "/aggregator.sign.pub",
                                     "--state-dir",
                                     (dir / name).string(),
                                     "--request-timeout-ms",
                                     "1500",
                                     "--log",
                                     "warning",
                                     "train",
                                     "--clients",
                                     std::to_string(clients),
                                     "--index",
                                     std::to_string(i)};
    args.insert(args.end(), train_extra.begin(), train_extra.end());
    return args;
  }

  // device.toml for device i (as `flotilla client run --config` reads it):
  // this fleet's endpoint and keys, partition i of `clients` of the
  // Fashion-MNIST training split, its own store, short timeouts; then
  // `extra` (more TOML lines, e.g. a [device] model_out). Returns its path.
  std::filesystem::path WriteDeviceConfig(int i, const std::string& extra = "") const {
    const std::string k = (dir / "keys").string();
    const std::string name = "dev" + std::to_string(i);
    const std::filesystem::path path = dir / (name + ".toml");
    std::ofstream out(path);
    out << "[federation]\nendpoint = \"" << endpoint() << "\"\nseed = 3\n"
        << "[keys]\nserver_key = \"" << k << "/aggregator.curve.pub\"\nmodel_key = \"" << k
        << "/aggregator.sign.pub\"\n"
        << "[data]\nclients = " << clients << "\ntrain_limit = 2000\n"
        << "[log]\nlevel = \"info\"\n"
        << "[device]\nname = \"" << name << "\"\nstate_dir = \"" << (dir / name).string()
        << "\"\ncurve_key = \"" << k << "/" << name << ".curve.key\"\n"
        << "request_timeout_ms = 1500\nmax_backoff_ms = 4000\nthreads = 1\n"
        << extra;
    return path;
  }
  // `flotilla client --config devI.toml run --index i`, then `extra`.
  std::vector<std::string> DaemonArgs(int i, const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> args = {
        FLOTILLA_BIN, "client",  "--config",       (dir / ("dev" + std::to_string(i) + ".toml")).string(),
        "run",        "--index", std::to_string(i)};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  // A status query as device 0 (a separate connection; no Hello).
  client::SessionConfig Probe() const {
    client::SessionConfig probe;
    probe.endpoint = endpoint();
    auto own = privacy::ReadCurveSecretFile((dir / "keys" / "dev0.curve.key").string());
    REQUIRE(own.ok());
    probe.socket.curve.public_key = own->public_z85;
    probe.socket.curve.secret_key = own->SecretZ85();
    probe.socket.curve.server_public_key =
        *privacy::ReadCurvePublicFile((dir / "keys" / "aggregator.curve.pub").string());
    return probe;
  }
};

}  // namespace flotilla::testing
