// Durability figures for the aggregator, printed with same-run baselines:
//  1. acknowledged-update latency (p50, p99): a client's Update until its Ack,
//     through CURVE, validation and a synced RocksDB write; baseline: the
//     status request/reply round trip on the same connection (no disk).
//  2. recovery after kill -9 with a store of N model versions: time from
//     restarting flotilla aggregator until it answers a status query;
//     baseline: the same start on an empty store.
// Usage: recovery_bench [updates=300] [versions=1000] [arch=2nn]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "aggregator/server.h"
#include "aggregator/store.h"
#include "client/pull.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/subprocess.h"
#include "privacy/keys.h"
#include "privacy/signing.h"
#include "proto/codec.h"
#include "training/model.h"

using namespace flotilla;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

std::string Z(const privacy::CurveKeyPair& k) { return k.public_z85; }

// Seconds until the aggregator at `endpoint` answers a status query.
double TimeToFirstStatus(const client::SessionConfig& sc, Clock::time_point start) {
  while (true) {
    auto reply = client::QueryStatus(sc, std::chrono::milliseconds(200));
    if (reply.ok()) return std::chrono::duration<double>(Clock::now() - start).count();
    if (Clock::now() - start > std::chrono::seconds(120)) return -1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int updates = argc > 1 ? std::atoi(argv[1]) : 300;
  const int versions = argc > 2 ? std::atoi(argv[2]) : 1000;
  const std::string arch = argc > 3 ? argv[3] : "2nn";
  SetLogLevel(LogLevel::kError);
  const fs::path dir = fs::temp_directory_path() / ("flotilla-recovery-bench-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "keys");

  auto signing =
      std::make_shared<const privacy::SigningKeyPair>(std::move(privacy::GenerateSigningKeyPair()).value());
  auto server = std::move(privacy::GenerateCurveKeyPair()).value();
  auto device = std::move(privacy::GenerateCurveKeyPair()).value();
  auto runner = std::move(training::ModelRunner::Create(arch, 1)).value();
  const Weights initial = runner->GetWeights();

  // 1. Acknowledged-update latency.
  {
    aggregator::AggregatorConfig config;
    config.endpoint = "tcp://127.0.0.1:*";
    config.store_path = (dir / "latency").string();
    config.model_arch = arch;
    config.rounds = static_cast<uint32_t>(updates);
    config.min_clients = 1;
    config.signing_key = signing;
    config.socket.curve.public_key = server.public_z85;
    config.socket.curve.secret_key = server.SecretZ85();
    config.allowed_clients = {Z(device)};
    config.finish_grace_seconds = 0.2;
    net::Context context;
    auto agg = std::move(aggregator::Aggregator::Create(config, &context, initial, nullptr, nullptr)).value();
    std::thread loop([&] { (void)agg->Run(); });
    net::SocketOptions opts;
    opts.curve.public_key = device.public_z85;
    opts.curve.secret_key = device.SecretZ85();
    opts.curve.server_public_key = server.public_z85;
    auto socket = std::move(net::ClientSocket::Connect(&context, agg->endpoint(), opts)).value();
    auto call = [&](wire::Envelope env) {
      (void)socket->Send(proto::SerializeEnvelope(&env));
      auto bytes = socket->Receive(std::chrono::seconds(30));
      return *proto::ParseEnvelope((*bytes)->data(), (*bytes)->size());
    };
    wire::Envelope hello;
    hello.mutable_hello()->set_client_name("bench");
    call(hello);
    std::vector<double> ack_ms, status_ms;
    Weights delta = Weights::Zeros(initial.layout);
    for (int i = 0; i < updates; ++i) {
      wire::Envelope req;
      req.mutable_task_request();
      wire::Envelope task = call(req);
      if (!task.has_train_task()) break;
      wire::Envelope update;
      update.mutable_update()->set_round(task.train_task().round());
      update.mutable_update()->set_model_version(task.train_task().model_version());
      update.mutable_update()->set_num_examples(10);
      proto::WeightsToProto(delta, update.mutable_update()->mutable_delta());
      auto t0 = Clock::now();
      wire::Envelope ack = call(update);
      ack_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      if (!ack.has_ack()) {
        std::fprintf(stderr, "unexpected reply %s\n", proto::BodyName(ack));
        return 1;
      }
      wire::Envelope st;
      st.mutable_status_request();
      t0 = Clock::now();
      call(st);
      status_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    agg->RequestStop();
    loop.join();
    std::printf(
        "acknowledged-update latency, %s update (%.2f MB), %zu updates, CURVE + synced RocksDB write:\n",
        arch.c_str(), initial.data.size() * 4 / 1e6, ack_ms.size());
    std::printf("  update->ack    p50 %.2f ms  p99 %.2f ms\n", Percentile(ack_ms, 0.5),
                Percentile(ack_ms, 0.99));
    std::printf("  status (base)  p50 %.2f ms  p99 %.2f ms\n", Percentile(status_ms, 0.5),
                Percentile(status_ms, 0.99));
    std::printf("  ratio p50 %.1fx\n", Percentile(ack_ms, 0.5) / Percentile(status_ms, 0.5));
  }

  // 2. Recovery after kill -9 with `versions` stored models.
  {
    const std::string keys = (dir / "keys").string();
    (void)privacy::WriteCurveKeyFiles(keys, "aggregator", server, true);
    (void)privacy::WriteSigningKeyFiles(keys, "aggregator", *signing, true);
    (void)privacy::WriteCurveKeyFiles(keys, "dev", device, true);
    std::ofstream(dir / "keys" / "allowlist") << device.public_z85 << "\n";
    const fs::path store_path = dir / "registry";
    {
      auto store = std::move(aggregator::Store::Open(store_path.string())).value();
      Rng rng(5);
      Weights w = initial;
      const auto t0 = Clock::now();
      for (int v = 1; v <= versions; ++v) {
        for (size_t i = 0; i < 64; ++i) w.data[rng.UniformInt(w.data.size())] += 0.001f;
        records::ModelRecord record;
        record.set_version(static_cast<uint64_t>(v));
        record.set_round(static_cast<uint32_t>(v - 1));
        record.set_parent_version(static_cast<uint64_t>(v - 1));
        record.set_arch(arch);
        proto::WeightsToProto(w, record.mutable_weights());
        record.set_federation("flotilla");
        record.set_signature(*privacy::SignModel(*signing, "flotilla", v, v - 1, privacy::ModelDigest(w)));
        if (!store->PutModel(record).ok()) return 1;
        if (v > 1) {
          records::RoundRecord round;
          round.set_round(static_cast<uint32_t>(v - 1));
          round.set_outcome(records::RoundRecord::OUTCOME_COMPLETED);
          round.set_result_model_version(static_cast<uint64_t>(v));
          if (!store->PutRound(round).ok()) return 1;
        }
      }
      std::printf("recovery: wrote %d %s versions (%.0f MB on disk) in %.1f s\n", versions, arch.c_str(),
                  store->ApproximateSize() / 1e6, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    const int port = 17000 + (::getpid() % 2000);
    const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(port);
    auto args = [&](const fs::path& store) {
      return std::vector<std::string>{FLOTILLA_BIN,    "aggregator",
                                      "--endpoint",    endpoint,
                                      "--store",       store.string(),
                                      "--curve-key",   keys + "/aggregator.curve.key",
                                      "--signing-key", keys + "/aggregator.sign.key",
                                      "--allowlist",   keys + "/allowlist",
                                      "--arch",        arch,
                                      "--rounds",      std::to_string(versions + 10),
                                      "--min-clients", "5",
                                      "--no-eval"};
    };
    client::SessionConfig sc;
    sc.endpoint = endpoint;
    sc.socket.curve.public_key = device.public_z85;
    sc.socket.curve.secret_key = device.SecretZ85();
    sc.socket.curve.server_public_key = server.public_z85;
    auto measure = [&](const fs::path& store, double* first_start) {
      auto t0 = Clock::now();
      pid_t pid = SpawnProcess(args(store), "/dev/null");
      *first_start = TimeToFirstStatus(sc, t0);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      t0 = Clock::now();
      pid = SpawnProcess(args(store), "/dev/null");
      const double after_kill = TimeToFirstStatus(sc, t0);
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
      return after_kill;
    };
    double cold_empty = 0, cold_full = 0;
    const double empty = measure(dir / "empty", &cold_empty);
    const double full = measure(store_path, &cold_full);
    std::printf("recovery after kill -9 (process start to first status reply):\n");
    std::printf("  store with %d versions  %.3f s\n", versions, full);
    std::printf("  empty store (base)       %.3f s\n", empty);
    std::printf("  ratio %.2fx\n", full / empty);
  }
  fs::remove_all(dir);
  return 0;
}
