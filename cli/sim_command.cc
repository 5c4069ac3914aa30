// flotilla sim: run a simulated federation (or its central baseline) on
// Fashion-MNIST over the real aggregator and the real wire.
#include <signal.h>
#include <sys/wait.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "cli/commands.h"
#include "cli/data_flags.h"
#include "cli/flags.h"
#include "cli/log_flags.h"
#include "core/log.h"
#include "core/subprocess.h"
#include "net/session_memory.h"
#include "sim/report.h"
#include "sim/simulation.h"

namespace {

// A scenario that kills the aggregator: the server runs as its own process
// (flotilla sim serve, output in OUT/serve.log), the devices in this one.
// When the round a restart is drawn for runs and has an update, the server
// is killed (SIGKILL), and started again on its store on the same endpoint
// after the scenario's down time.
flotilla::StatusOr<flotilla::sim::SimResult> RunWithRestarts(const flotilla::sim::SimConfig& config,
                                                             const std::vector<std::string>& scenario_args) {
  using flotilla::InvalidArgument;
  using Clock = std::chrono::steady_clock;
  if (!config.aggregator.checkin.enabled)
    return InvalidArgument("aggregator restarts are simulated with --checkin");
  const auto start = Clock::now();
  std::error_code ec;
  std::filesystem::create_directories(config.out_dir, ec);
  const std::filesystem::path out(config.out_dir);
  const std::string endpoint_file = (out / "endpoint").string();
  std::filesystem::remove(endpoint_file, ec);
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) return flotilla::Unavailable("cannot find this executable: " + ec.message());
  auto spawn = [&](const std::string& endpoint, bool resume) {
    std::vector<std::string> args = {self, "sim", "serve"};
    args.insert(args.end(), scenario_args.begin(), scenario_args.end());
    args.insert(args.end(), {"--endpoint", endpoint, "--endpoint-file", endpoint_file, "--quiet"});
    if (resume) args.push_back("--resume");
    return flotilla::SpawnProcess(args, (out / "serve.log").string());
  };
  std::filesystem::remove(out / "serve.log", ec);
  pid_t server = spawn(config.aggregator.endpoint, false);
  if (server <= 0) return flotilla::Unavailable("cannot start the server process");
  while (!std::filesystem::exists(endpoint_file) && Clock::now() - start < std::chrono::seconds(120)) {
    if (::waitpid(server, nullptr, WNOHANG) == server)
      return flotilla::Unavailable("the server process exited; see " + (out / "serve.log").string());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::string endpoint;
  std::ifstream(endpoint_file) >> endpoint;
  if (endpoint.empty()) return flotilla::Unavailable("the server did not say where it serves");
  std::vector<uint32_t> restarts =
      flotilla::sim::AggregatorRestartRounds(config.model, config.aggregator.seed, config.aggregator.rounds);
  std::printf("aggregator restarts at round%s", restarts.size() == 1 ? "" : "s");
  for (uint32_t r : restarts) std::printf(" %u", r);
  std::printf(" (server: %s)\n", (out / "serve.log").string().c_str());
  std::fflush(stdout);
  size_t next = 0;
  std::optional<Clock::time_point> down_until;
  uint64_t killed = 0;
  flotilla::sim::ShardSpec shard;
  shard.join = endpoint;
  shard.on_tick = [&](const flotilla::wire::StatusReply& status) {
    if (down_until) {
      if (Clock::now() < *down_until) return;
      down_until.reset();
      server = spawn(endpoint, true);
      std::printf("aggregator started again on its store\n");
      std::fflush(stdout);
      return;
    }
    if (next < restarts.size() && status.round() == restarts[next] && status.round_active() &&
        status.updates_received() > 0) {
      ::kill(server, SIGKILL);
      flotilla::WaitProcess(server);
      ++killed;
      std::printf("aggregator killed (SIGKILL) in round %u with %u updates recorded\n", status.round(),
                  status.updates_received());
      std::fflush(stdout);
      ++next;
      down_until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(config.model.aggregator_down_seconds));
    }
  };
  flotilla::StatusOr<flotilla::sim::ShardResult> ran = flotilla::sim::RunShard(config, shard);
  if (!ran.ok()) {
    ::kill(server, SIGKILL);
    flotilla::WaitProcess(server);
    return ran.status();
  }
  const int rc = flotilla::WaitProcess(server);
  if (rc != 0)
    return flotilla::Unavailable("the server exited with " + std::to_string(rc) + "; see " +
                                 (out / "serve.log").string());
  ASSIGN_OR_RETURN(flotilla::sim::SimResult result, flotilla::sim::ReadServedResult(config));
  for (const auto& r : result.rounds) {
    if (!config.quiet) std::printf("%s\n", flotilla::sim::FormatRound(r, config.aggregator.rounds).c_str());
  }
  result.check_ins = ran->check_ins;
  result.peak_active_devices = ran->peak_active;
  result.injected = ran->injected;
  result.injected.aggregator_restarts = killed;
  result.SetElapsed(start);
  RETURN_IF_ERROR(flotilla::sim::WriteOutputs(config, result));
  return result;
}

}  // namespace

int flotilla::cli::SimMain(int argc, char** argv, const FlagOrigins& origins) {
  // Simulated devices' CURVE sessions in plain memory, not libsodium's
  // guarded pages (net/session_memory.h): before any socket exists.
  flotilla::net::UsePlainSessionMemory();
  // `flotilla sim serve ...` and `flotilla sim shard ...`: the same flags
  // (a scenario's), split across processes.
  enum class Mode { kOne, kServe, kShard } mode = Mode::kOne;
  std::vector<char*> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string a = args[i];
    if (a == "serve" || a == "shard") {
      mode = a == "serve" ? Mode::kServe : Mode::kShard;
      args.erase(args.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
  argc = static_cast<int>(args.size());
  argv = args.data();
  const std::vector<std::string> scenario_args(args.begin() + 1, args.end());
  flotilla::sim::SimConfig config;
  config.aggregator.endpoint = "tcp://127.0.0.1:*";
  flotilla::cli::LogFlags log_flags;
  log_flags.level = "warning";
  CLI::App app{
      mode == Mode::kServe
          ? "flotilla sim serve: the aggregator of a check-in simulation split across processes or "
            "hosts, with its evaluation and outputs (OUT/metrics.csv, timing.csv, rounds.json, "
            "summary.json); shards (flotilla sim shard) join it. Every key derives from the seed."
      : mode == Mode::kShard
          ? "flotilla sim shard: drives the devices i with i % N == I of a check-in simulation "
            "against a server (flotilla sim serve) at --join; takes I and N from --index/--of or "
            "from mpirun, srun or a Kubernetes Indexed Job. Pass the server's scenario flags."
          : "Flotilla fleet simulator: an aggregator and N clients over TCP on loopback, training on "
            "Fashion-MNIST. Prints one line per round and writes OUT/metrics.csv (reproducible "
            "figures), OUT/timing.csv, OUT/rounds.json and OUT/summary.json. Subcommands for "
            "several processes: serve, shard (docs/simulator.md)."};
  bool print_config = false;
  flotilla::cli::PrepareApp(&app, &print_config);
  flotilla::sim::ServeOptions serve;
  flotilla::sim::ShardSpec shard;
  if (mode == Mode::kServe) {
    app.add_flag("--resume", serve.resume,
                 "Continue the store in --out (after this server was stopped or killed) instead of starting "
                 "fresh");
    app.add_option("--endpoint-file", serve.endpoint_file,
                   "Write the bound endpoint to this file once serving");
    app.add_option("--finish-grace", serve.finish_grace_seconds,
                   "Seconds to keep answering after the last round, so every shard learns it")
        ->capture_default_str();
  }
  CLI::Option* index_opt = nullptr;
  CLI::Option* count_opt = nullptr;
  if (mode == Mode::kShard) {
    index_opt = app.add_option("--index", shard.index, "This shard's index I (default: from the launcher)");
    count_opt = app.add_option("--of", shard.count, "The number of shards N (default: from the launcher)");
    app.add_option("--join", shard.join, "The server's endpoint (flotilla sim serve prints it)")->required();
  }
  app.add_option("--clients", config.clients, "Number of simulated clients")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--min-clients", config.aggregator.min_clients,
                 "Check-in: a round's selection never closes with fewer devices held than this (without "
                 "check-in every client takes part in each round's sampling)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--partition", config.partition,
                 "iid | dirichlet:ALPHA | shards:K (K label shards per client)")
      ->capture_default_str();
  std::string csv_delimiter = ",";
  flotilla::cli::AddCsvFlags(&app, &config.data_source, &config.csv, &csv_delimiter, &config.images);
  app.add_option("--test-fraction", config.test_fraction,
                 "CSV: fraction of the records held out for the aggregator's evaluation")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 0.9));
  app.add_option("--held-out-fraction", config.held_out_fraction,
                 "Each device keeps this fraction of its examples out of training, for --federated-eval")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.9));
  app.add_option("--data-dir", config.data_dir, "Directory with the Fashion-MNIST .gz IDX files")
      ->capture_default_str();
  app.add_option("--train-limit", config.train_limit, "Use only the first N training examples (0 = all)")
      ->capture_default_str();
  app.add_option("--test-limit", config.test_limit, "Use only the first N test examples (0 = all)")
      ->capture_default_str();
  app.add_option("--workers", config.workers, "Trainer threads (0 = one per core)")->capture_default_str();
  app.add_option("--out", config.out_dir, "Output directory (store, metrics.csv, summary.json)")
      ->capture_default_str();
  app.add_option("--endpoint", config.aggregator.endpoint, "Aggregator endpoint on loopback")
      ->capture_default_str();
  app.add_option("--central-epochs", config.central_epochs,
                 "Instead of federating, train one model centrally on the union of the data for N epochs")
      ->capture_default_str();
  app.add_flag("--quiet", config.quiet, "No per-round lines");
  app.add_option("--request-timeout", config.request_timeout_seconds,
                 "Seconds a simulated client waits for a reply before it reconnects")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("--insecure", config.insecure, "DEBUGGING ONLY: no CURVE encryption and no allowlist");
  flotilla::cli::AddLogFlags(&app, &log_flags);
  flotilla::aggregator::AddRoundFlags(&app, &config.aggregator);
  flotilla::aggregator::AddModelFlags(&app, &config.aggregator, &config.model_path);
  flotilla::aggregator::DpFlags dp_flags;
  flotilla::aggregator::AddDpFlags(&app, &config.aggregator, &dp_flags);
  flotilla::aggregator::SecAggFlags secagg_flags;
  flotilla::aggregator::AddSecAggFlags(&app, &config.aggregator, &secagg_flags);
  flotilla::aggregator::HttpFlags http_flags;
  flotilla::aggregator::AddHttpFlags(&app, &config.aggregator, &http_flags);
  app.add_option(
         "--secagg-dropout", config.secagg_dropout,
         "FAULT INJECTION: probability that a client vanishes mid-protocol (at a random stage 1-3) in each "
         "secure round")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  // A scenario's fleet and faults (sim/fleet_model.h, docs/simulator.md).
  flotilla::sim::FleetModel& m = config.model;
  app.add_option("--sizes", config.sizes,
                 "windows:N partitions: device sizes, fixed or powerlaw:ALPHA (mean N)")
      ->capture_default_str();
  app.add_option("--label-skew", config.label_skew,
                 "windows:N partitions: none or dirichlet:ALPHA (each device's class mix from Dir(ALPHA))")
      ->capture_default_str();
  app.add_option("--availability", m.availability,
                 "Check-in fleets: always, bernoulli:P, diurnal:P:A:PERIOD (a day of PERIOD rounds), or "
                 "slots:P:SECONDS (online in each wall-clock slot with probability P)")
      ->capture_default_str();
  app.add_option("--speed", m.speed, "Compute speed per device: same or lognormal:SIGMA")
      ->capture_default_str();
  app.add_option("--latency-ms", m.latency_ms, "One-way link latency per message")->capture_default_str();
  app.add_option("--bandwidth-mbps", m.bandwidth_mbps, "Link bandwidth (0 = unlimited)")
      ->capture_default_str();
  app.add_option("--link-loss", m.loss,
                 "Probability a message is lost (costs a request timeout, then resent)")
      ->capture_default_str();
  app.add_option(
         "--dropout", m.dropout,
         "FAULT: probability a selected device vanishes in a round (before training, while training or "
         "after sending)")
      ->capture_default_str();
  app.add_option(
         "--crash", m.crash,
         "FAULT: probability a selected device crashes after sending, before its Ack, and rejoins with its "
         "outbox")
      ->capture_default_str();
  app.add_option("--rejoin-seconds", m.rejoin_seconds, "FAULT: seconds before a crashed device rejoins")
      ->capture_default_str();
  app.add_option("--straggler", m.straggler, "FAULT: probability a selected device trains slowly in a round")
      ->capture_default_str();
  app.add_option(
         "--malicious", m.malicious,
         "ATTACK: fraction of the fleet (chosen by the seed) that sends a poisoned update instead of its "
         "own; with --attack")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option(
         "--attack", m.attack,
         "ATTACK: none, sign-flip[:S] (-S x the delta, S 4), scale[:S] (S 10), noise[:SIGMA] (Gaussian "
         "updates, SIGMA 1) or lie[:Z] (a little is enough: the colluders' mean - Z x std)")
      ->capture_default_str();
  app.add_option("--straggler-factor", m.straggler_factor, "FAULT: how many times slower a straggler trains")
      ->capture_default_str();
  app.add_option(
         "--aggregator-restarts", m.aggregator_restarts,
         "FAULT: kill the aggregator (its own process) this many times while a round runs, and start it "
         "again on its store")
      ->capture_default_str();
  app.add_option("--aggregator-down-seconds", m.aggregator_down_seconds,
                 "FAULT: seconds the killed aggregator stays down")
      ->capture_default_str();
  if (std::optional<int> exit_code = flotilla::cli::Parse(&app, argc, argv, &print_config, origins))
    return *exit_code;
  flotilla::aggregator::ApplyDpMode(dp_flags, &config.aggregator);
  flotilla::aggregator::ApplySecAggFlags(secagg_flags, &config.aggregator);
  flotilla::aggregator::ResolveModel(&config.aggregator, config.model_path);
  if (flotilla::Status st = flotilla::aggregator::ApplyHttpFlags(http_flags, &config.aggregator); !st.ok()) {
    std::fprintf(stderr, "flotilla sim: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  if (!flotilla::cli::ResolveCsvFlags(csv_delimiter, &config.csv)) return 2;

  if (!flotilla::cli::ApplyLogFlags(log_flags, "flotilla sim")) return 2;
  if (config.central_epochs > 0) {
    std::printf(
        "flotilla sim (central baseline): %s on the union of %d clients' data (%s), %d epochs, B=%u, lr %g, "
        "momentum %g, seed %llu\n",
        config.aggregator.model_arch.c_str(), config.clients, config.partition.c_str(), config.central_epochs,
        config.aggregator.batch_size, config.aggregator.learning_rate, config.aggregator.momentum,
        static_cast<unsigned long long>(config.aggregator.seed));
  } else {
    std::printf(
        "flotilla sim: %s, %d clients (%s), %u rounds, fraction %g, E=%u, B=%u, lr %g, momentum %g, seed "
        "%llu\n",
        config.aggregator.model_arch.c_str(), config.clients, config.partition.c_str(),
        config.aggregator.rounds, config.aggregator.fraction, config.aggregator.epochs,
        config.aggregator.batch_size, config.aggregator.learning_rate, config.aggregator.momentum,
        static_cast<unsigned long long>(config.aggregator.seed));
    const aggregator::Strategy& st = config.aggregator.strategy;
    if (st.kind != aggregator::Strategy::Kind::kFedAvg || st.optimizer.stateful() ||
        st.clip.mode != aggregator::NormBound::Mode::kOff) {
      std::printf("strategy: %s, server lr %g%s%s\n", st.Name().c_str(),
                  config.aggregator.ServerLearningRate(),
                  st.clip.mode != aggregator::NormBound::Mode::kOff ? ", updates clipped to " : "",
                  st.clip.mode != aggregator::NormBound::Mode::kOff ? st.clip.Describe().c_str() : "");
    }
    if (config.model.malicious > 0) {
      std::printf("ATTACK: %g%% of the devices are malicious (%s)\n", 100.0 * config.model.malicious,
                  config.model.attack.c_str());
    }
  }
  if (config.aggregator.dp.enabled()) {
    const auto& dp = config.aggregator.dp;
    std::printf("differential privacy: %s, noise multiplier %g, clip %g%s, delta %g, epsilon budget %g\n",
                flotilla::aggregator::DpModeName(dp.mode), dp.noise_multiplier, dp.clip_norm,
                dp.adaptive_clip ? " (adaptive)" : "", dp.delta, dp.epsilon_budget);
  }
  if (config.aggregator.secagg.enabled) {
    const auto& sa = config.aggregator.secagg;
    std::printf(
        "secure aggregation: %s, %u-bit%s\n",
        sa.graph == flotilla::privacy::SecAggGraph::kHarary ? "SecAgg+ (Harary graph)" : "complete graph",
        sa.bit_width, config.secagg_dropout > 0 ? ", injected dropouts" : "");
  }
  std::fflush(stdout);
  if (mode == Mode::kShard) {
    flotilla::StatusOr<flotilla::sim::ShardSpec> spec =
        flotilla::sim::ResolveShard(shard, index_opt->count() > 0, count_opt->count() > 0);
    if (!spec.ok()) {
      std::fprintf(stderr, "flotilla sim shard: %s\n", std::string(spec.status().message()).c_str());
      return 2;
    }
    std::printf("shard %d of %d joining %s\n", spec->index, spec->count, spec->join.c_str());
    std::fflush(stdout);
    flotilla::StatusOr<flotilla::sim::ShardResult> ran = flotilla::sim::RunShard(config, *spec);
    if (!ran.ok()) {
      std::fprintf(stderr, "flotilla sim shard: %s\n", ran.status().ToString().c_str());
      return 1;
    }
    std::printf("shard %d of %d done: %zu devices, %llu check-ins, at most %zu connected at once, %.1f s\n",
                spec->index, spec->count, ran->devices, static_cast<unsigned long long>(ran->check_ins),
                ran->peak_active, ran->seconds);
    return 0;
  }
  flotilla::StatusOr<flotilla::sim::SimResult> result =
      mode == Mode::kServe                   ? flotilla::sim::ServeSimulation(config, serve)
      : config.model.aggregator_restarts > 0 ? RunWithRestarts(config, scenario_args)
                                             : flotilla::sim::RunSimulation(config);
  if (!result.ok()) {
    std::fprintf(stderr, "flotilla sim: %s\n", result.status().ToString().c_str());
    return 1;
  }
  std::fputs(
      flotilla::sim::FormatSummaryTable(
          *result,
          config.central_epochs > 0 ? static_cast<uint32_t>(config.central_epochs) : config.aggregator.rounds,
          config.central_epochs > 0)
          .c_str(),
      stdout);
  std::printf("metrics: %s/metrics.csv, summary: %s/summary.json\n", config.out_dir.c_str(),
              config.out_dir.c_str());
  std::printf("final test accuracy: %.4f (%.2f%%) after %zu %s in %.1f s\n", result->final_accuracy,
              100.0 * result->final_accuracy, result->rounds.size(),
              config.central_epochs > 0 ? "epochs" : "rounds", result->seconds);
  return 0;
}
