// flotilla aggregator: serve a federation on a TCP endpoint.
#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>

#include "aggregator/server.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/log_flags.h"
#include "core/log.h"
#include "core/rng.h"
#include "privacy/keys.h"
#include "training/dataset.h"
#include "training/model.h"

namespace {
std::atomic<flotilla::aggregator::Aggregator*> g_aggregator{nullptr};
std::atomic<bool> g_stop{false};
void OnSignal(int sig) {
  flotilla::aggregator::Aggregator* agg = g_aggregator.load();
  if (sig == SIGHUP) {
    if (agg) agg->RequestReload();
    return;
  }
  g_stop.store(true);
  if (agg) agg->RequestStop();
}
}  // namespace

int flotilla::cli::AggregatorMain(int argc, char** argv, const FlagOrigins& origins) {
  using namespace flotilla;
  aggregator::AggregatorConfig config;
  std::string data_dir = training::kDefaultFashionMnistDir;
  int64_t test_limit = 0;
  bool no_eval = false;
  flotilla::cli::LogFlags log_flags;
  std::string curve_key_path = "keys/aggregator.curve.key";
  std::string signing_key_path = "keys/aggregator.sign.key";
  bool insecure = false;
  config.allowlist_path = "keys/allowlist";
  CLI::App app{
      "Flotilla aggregator: runs synchronous FedAvg rounds for the clients that connect, stores every "
      "model version and round in RocksDB, and evaluates each new model on the Fashion-MNIST test set."};
  bool print_config = false;
  flotilla::cli::PrepareApp(&app, &print_config);
  app.add_option("--endpoint", config.endpoint, "ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:7400")
      ->capture_default_str();
  app.add_option("--store", config.store_path, "RocksDB directory for models, rounds and updates")
      ->capture_default_str();
  app.add_option("--federation", config.federation,
                 "Federation id: sent to devices and covered by every model signature (devices pass the same "
                 "--federation)")
      ->capture_default_str();
  app.add_option("--min-clients", config.min_clients, "Clients that must join before the first round")
      ->capture_default_str();
  app.add_option("--data-dir", data_dir, "Fashion-MNIST directory for evaluation")->capture_default_str();
  app.add_option("--test-limit", test_limit, "Evaluate on the first N test examples (0 = all)")
      ->capture_default_str();
  app.add_flag("--no-eval", no_eval, "Do not evaluate models on the test set");
  std::string deadline_policy = "extend";
  app.add_option(
         "--deadline-policy", deadline_policy,
         "A round resumed after a restart: extend (a fresh deadline from the restart) or close (the original "
         "deadline; at once when it passed while the aggregator was down)")
      ->capture_default_str()
      ->check(CLI::IsMember({"extend", "close"}));
  app.add_option("--finish-grace", config.finish_grace_seconds,
                 "Seconds to keep telling clients the federation is over after the last round")
      ->capture_default_str();
  app.add_flag("--keep-serving", config.keep_serving,
               "After the last round keep serving status and model pulls until SIGTERM");
  app.add_option("--retain-last", config.retain_last, "Keep the newest N model versions (0 = keep all)")
      ->capture_default_str();
  app.add_option("--retain-every", config.retain_every, "Also keep every Kth version (with --retain-last)")
      ->capture_default_str();
  app.add_option("--curve-key", curve_key_path, "The aggregator's CURVE secret key file (flotilla keygen)")
      ->capture_default_str();
  app.add_option("--allowlist", config.allowlist_path,
                 "Allowed client public keys, one per line; reloaded when it changes or on SIGHUP")
      ->capture_default_str();
  app.add_option("--signing-key", signing_key_path,
                 "Ed25519 model-signing secret key (flotilla keygen --signing)")
      ->capture_default_str();
  app.add_flag("--insecure", insecure,
               "DEBUGGING ONLY: no encryption and no allowlist (models are still signed)");
  flotilla::cli::AddLogFlags(&app, &log_flags);
  aggregator::AddRoundFlags(&app, &config);
  std::string model_path;
  aggregator::AddModelFlags(&app, &config, &model_path);
  aggregator::DpFlags dp_flags;
  aggregator::AddDpFlags(&app, &config, &dp_flags);
  aggregator::SecAggFlags secagg_flags;
  aggregator::AddSecAggFlags(&app, &config, &secagg_flags);
  aggregator::HttpFlags http_flags;
  aggregator::AddHttpFlags(&app, &config, &http_flags);
  if (std::optional<int> exit_code = flotilla::cli::Parse(&app, argc, argv, &print_config, origins))
    return *exit_code;
  aggregator::ApplyDpMode(dp_flags, &config);
  aggregator::ApplySecAggFlags(secagg_flags, &config);
  aggregator::ResolveModel(&config, model_path);
  if (Status st = aggregator::ApplyHttpFlags(http_flags, &config); !st.ok()) {
    std::fprintf(stderr, "flotilla aggregator: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  // Signals are handled from the start: a SIGTERM during start-up still
  // ends the process cleanly, before or after the store is opened.
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGHUP, OnSignal);
  config.deadline_policy = deadline_policy == "close" ? aggregator::AggregatorConfig::DeadlinePolicy::kClose
                                                      : aggregator::AggregatorConfig::DeadlinePolicy::kExtend;
  if (!flotilla::cli::ApplyLogFlags(log_flags, "flotilla aggregator")) return 2;

  auto signing = privacy::ReadSigningSecretFile(signing_key_path);
  if (!signing.ok()) {
    std::fprintf(stderr, "flotilla aggregator: %s\n", signing.status().ToString().c_str());
    return 1;
  }
  config.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing).value());
  if (insecure) {
    std::fprintf(stderr,
                 "WARNING: --insecure: traffic is NOT encrypted and ANY client may join. Debugging only.\n");
    config.socket.security = net::TransportSecurity::kNone;
    config.allowlist_path.clear();
  } else {
    auto curve = privacy::ReadCurveSecretFile(curve_key_path);
    if (!curve.ok()) {
      std::fprintf(stderr, "flotilla aggregator: %s\n", curve.status().ToString().c_str());
      return 1;
    }
    config.socket.curve.public_key = curve->public_z85;
    config.socket.curve.secret_key = curve->SecretZ85();
  }
  // A TorchScript model's parameters (its layout and the first global
  // model) come from its file; a built-in one is initialized from the seed.
  auto spec = training::MakeModelSpec(config.model_arch, model_path, config.model_buffers,
                                      config.model_freeze, config.model_personal, config.loss);
  auto runner = spec.ok() ? training::ModelRunner::Create(*spec, DeriveSeed(config.seed, "init"))
                          : StatusOr<std::unique_ptr<training::ModelRunner>>(spec.status());
  if (!runner.ok()) {
    std::fprintf(stderr, "flotilla aggregator: %s\n", runner.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<const training::Dataset> test;
  if (!no_eval) {
    auto loaded = training::LoadFashionMnist(data_dir, training::Split::kTest, test_limit);
    if (!loaded.ok()) {
      std::fprintf(stderr, "flotilla aggregator: %s (or pass --no-eval)\n",
                   loaded.status().ToString().c_str());
      return 1;
    }
    test = std::make_shared<const training::Dataset>(std::move(loaded).value());
  }
  training::ModelRunner* eval_runner = runner->get();
  aggregator::EvalFn eval;
  if (test) {
    eval = [eval_runner, test](const Weights& w) -> StatusOr<aggregator::EvalMetrics> {
      RETURN_IF_ERROR(eval_runner->SetWeights(w));
      ASSIGN_OR_RETURN(training::EvalResult r, eval_runner->Evaluate(training::DataView::All(test)));
      return aggregator::EvalMetrics{r.loss, r.accuracy, r.auc, r.mae};
    };
  }
  aggregator::RoundFn on_round = [&config](const aggregator::RoundSummary& r) {
    LOG_INFO("aggregator",
             "round " << r.round << "/" << config.rounds << (r.completed ? "" : " FAILED") << ": "
                      << r.received << "/" << r.selected << " updates, train_loss " << r.mean_train_loss
                      << (r.test_accuracy ? ", test_acc " + std::to_string(*r.test_accuracy) : std::string())
                      << (r.federated_accuracy
                              ? ", federated_acc " + std::to_string(*r.federated_accuracy) + " on " +
                                    std::to_string(r.federated_examples) + " devices' held-out examples"
                              : std::string())
                      << ", " << r.seconds << " s, model v" << r.model_version);
  };
  net::Context context;
  auto agg = aggregator::Aggregator::Create(config, &context, (*runner)->GetWeights(), eval, on_round);
  if (!agg.ok()) {
    std::fprintf(stderr, "flotilla aggregator: %s\n", agg.status().ToString().c_str());
    return 1;
  }
  g_aggregator.store(agg->get());
  if (const std::string url = (*agg)->http_url(); !url.empty())
    std::fprintf(stderr, "flotilla aggregator: metrics on %s/metrics, probes %s/healthz and /readyz\n",
                 url.c_str(), url.c_str());
  if (g_stop.load()) (*agg)->RequestStop();
  Status st = (*agg)->Run();
  g_aggregator.store(nullptr);
  if (!st.ok()) {
    std::fprintf(stderr, "flotilla aggregator: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}
