// The fleet simulator: one aggregator and N virtual clients in one process,
// talking over real TCP on loopback through the real aggregator, session and
// wire code. Virtual clients are sessions driven by one event-loop thread;
// their training runs on a pool of trainer threads sized to the cores, so a
// client costs a socket and a data view, not a thread.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "aggregator/server.h"
#include "core/clock.h"
#include "core/status.h"
#include "sim/fleet_model.h"
#include "training/csv.h"
#include "training/image_folder.h"

namespace flotilla::sim {

struct SimConfig {
  int clients = 10;
  std::string partition = "iid";  // iid | dirichlet:ALPHA | shards:K | windows:N (sim/fleet_data.h)
  // With windows:N, how devices' data differ: sizes "fixed" (N each) or
  // "powerlaw:ALPHA" (Pareto, mean N); label skew "none" or
  // "dirichlet:ALPHA" (each device's class mix drawn from Dir(ALPHA)).
  std::string sizes = "fixed";
  std::string label_skew = "none";
  // Availability, speeds, links and faults (sim/fleet_model.h).
  FleetModel model;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  // "fashion-mnist" (data_dir), or "csv:PATH": tabular records, test_fraction
  // of them held out for the aggregator's evaluation (see sim/fleet_data.h).
  std::string data_source = "fashion-mnist";
  training::CsvOptions csv;
  // Each device keeps this fraction of its examples out of training, for
  // federated evaluation ([round] federated_eval).
  double held_out_fraction = 0.0;
  training::ImageFolderOptions images;  // images:DIR: the model's input size and channels
  double test_fraction = 0.2;
  int64_t train_limit = 0;               // 0 = all 60,000 training examples
  int64_t test_limit = 0;                // 0 = all 10,000 test examples
  int workers = 0;                       // trainer threads; 0 = number of cores
  std::string out_dir = "flotilla-run";  // store/, metrics.csv, summary.json
  bool quiet = false;                    // no per-round lines on stdout
  // DEBUGGING ONLY: no CURVE, no allowlist. By default every client gets its
  // own CURVE key pair, the aggregator an allowlist of exactly those keys,
  // and every model is signed and verified.
  bool insecure = false;
  // Central baseline instead of a federation: train one model on the union
  // of the clients' data for this many epochs (0 = federated run).
  int central_epochs = 0;
  // FAULT INJECTION under secure aggregation: per round, each client
  // vanishes mid-protocol with this probability (see client::SessionConfig).
  double secagg_dropout = 0.0;
  // A simulated device that gets no reply this long reconnects.
  double request_timeout_seconds = 120.0;
  // The TorchScript file every simulated device trains, when
  // aggregator.model_arch is "torchscript" (its options are there too).
  std::string model_path;
  aggregator::AggregatorConfig aggregator;  // endpoint, rounds, fraction, training settings, seed
};

// Faults the devices' side injected (sim/fleet_model.h), by stage.
struct InjectedFaults {
  uint64_t dropped_before_training = 0, dropped_while_training = 0, dropped_after_sending = 0;
  uint64_t crashed = 0, stragglers = 0, aggregator_restarts = 0;
  uint64_t poisoned = 0;  // updates malicious devices replaced (sim/attacks.h)
  // Availability slots:P:SECONDS: devices whose slot ended while they trained.
  uint64_t went_offline = 0;
};

struct SimResult {
  std::vector<aggregator::RoundSummary> rounds;
  double final_accuracy = 0.0;
  double final_loss = 0.0;
  double final_auc = NAN;  // bce models
  double final_mae = NAN;  // mse models
  double seconds = 0.0;
  int64_t started_unix_ms = 0;  // the run's start (rounds' finished_unix_ms count from it)
  // Sets seconds and started_unix_ms for a run that started at `start`.
  void SetElapsed(std::chrono::steady_clock::time_point start) {
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    started_unix_ms = NowUnixMs() - static_cast<int64_t>(seconds * 1000.0);
  }
  int64_t train_examples = 0;
  // Check-in fleets: check-ins made, and the most devices holding a
  // session at once.
  uint64_t check_ins = 0;
  size_t peak_active_devices = 0;
  double malicious_fraction = 0.0;  // [faults] malicious and attack, as run
  std::string attack = "none";
  InjectedFaults injected;
};

// Runs the whole simulation in this process; prints one line per round
// unless quiet, and writes the outputs into out_dir (sim/report.h).
StatusOr<SimResult> RunSimulation(const SimConfig& config);

// A check-in simulation across processes or hosts (docs/simulator.md):
// `flotilla sim serve` runs the aggregator, its evaluation and the outputs;
// each `flotilla sim shard` drives the devices i with i % count == index and
// joins the server over the real wire. Every key is derived from the seed,
// so the processes need nothing from each other but the endpoint.
struct ShardSpec {
  int index = 0;
  int count = 1;
  std::string join;  // the serving endpoint, e.g. tcp://10.0.0.5:7400
  // Called on every turn of the shard's loop with the server's last status
  // (a supervisor that kills and restarts the server watches it).
  std::function<void(const wire::StatusReply&)> on_tick;
};
// The shard's index and count from the flags when given, else from the
// launcher that started the process: OpenMPI (OMPI_COMM_WORLD_RANK and
// _SIZE), Slurm (SLURM_PROCID, SLURM_NTASKS) or a Kubernetes Indexed Job
// (JOB_COMPLETION_INDEX; the count from the flag).
StatusOr<ShardSpec> ResolveShard(ShardSpec flags, bool index_given, bool count_given);

struct ServeOptions {
  // Continue the store in out_dir (after the server was killed) instead of
  // starting fresh; rounds already done keep their rows.
  bool resume = false;
  std::string endpoint_file;          // written with the bound endpoint once serving
  double finish_grace_seconds = 3.0;  // shards see the end within it
};
StatusOr<SimResult> ServeSimulation(const SimConfig& config, const ServeOptions& options);

struct ShardResult {
  size_t devices = 0;  // in this shard's slice
  uint64_t check_ins = 0;
  size_t peak_active = 0;  // devices holding a session at once
  double seconds = 0.0;
  InjectedFaults injected;
};
StatusOr<ShardResult> RunShard(const SimConfig& config, const ShardSpec& shard);

// The run as a server left it in out_dir (its round log): for a supervisor
// whose server ran as another process.
StatusOr<SimResult> ReadServedResult(const SimConfig& config);

}  // namespace flotilla::sim
