// flotilla-client: one device. Trains on its share of Fashion-MNIST whenever
// the aggregator asks, until the federation is over.
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>

#include "client/runner.h"
#include "core/log.h"
#include "core/rng.h"
#include "privacy/keys.h"
#include "training/partition.h"

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }
}  // namespace

int main(int argc, char** argv) {
  using namespace flotilla;
  client::SessionConfig config;
  std::string data_dir = training::kDefaultFashionMnistDir;
  std::string partition = "iid";
  int clients = 1, index = 0;
  uint64_t seed = 1;
  int64_t train_limit = 0;
  std::string log_level = "info";
  std::string curve_key_path, server_key_path = "keys/aggregator.curve.pub",
                              model_key_path = "keys/aggregator.sign.pub";
  bool insecure = false;
  CLI::App app{"Flotilla client: connects to an aggregator and trains on its local share of Fashion-MNIST. "
               "The share is partition INDEX of CLIENTS made with --partition and --seed, the same split "
               "flotilla-sim makes."};
  app.add_option("--connect", config.endpoint, "Aggregator endpoint")->capture_default_str();
  app.add_option("--name", config.name, "Client name")->required();
  app.add_option("--data-dir", data_dir, "Fashion-MNIST directory")->capture_default_str();
  app.add_option("--partition", partition, "iid | dirichlet:ALPHA | shards:K")->capture_default_str();
  app.add_option("--clients", clients, "Number of partitions")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--index", index, "Which partition is this client's (0-based)")->capture_default_str();
  app.add_option("--seed", seed, "Partition seed (use the aggregator's --seed)")->capture_default_str();
  app.add_option("--train-limit", train_limit, "Use only the first N training examples (0 = all)")
      ->capture_default_str();
  app.add_option("--curve-key", curve_key_path, "This client's CURVE secret key file (default keys/NAME.curve.key)");
  app.add_option("--server-key", server_key_path, "The aggregator's CURVE public key file")->capture_default_str();
  app.add_option("--model-key", model_key_path, "The aggregator's model-signing public key file")
      ->capture_default_str();
  app.add_flag("--insecure", insecure, "DEBUGGING ONLY: connect without encryption");
  app.add_option("--log", log_level, "Log level: debug, info, warning, error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  LogLevel level;
  if (!ParseLogLevel(log_level, &level)) {
    std::fprintf(stderr, "error: unknown --log level '%s'\n", log_level.c_str());
    return 2;
  }
  SetLogLevel(level);
  if (index < 0 || index >= clients) {
    std::fprintf(stderr, "error: --index must be in [0, --clients)\n");
    return 2;
  }
  auto model_key = privacy::ReadSigningPublicFile(model_key_path);
  if (!model_key.ok()) {
    std::fprintf(stderr, "flotilla-client: %s\n", model_key.status().ToString().c_str());
    return 1;
  }
  if (insecure) {
    std::fprintf(stderr, "WARNING: --insecure: traffic is NOT encrypted. Debugging only.\n");
    config.socket.security = net::TransportSecurity::kNone;
  } else {
    if (curve_key_path.empty()) curve_key_path = "keys/" + config.name + ".curve.key";
    auto own = privacy::ReadCurveSecretFile(curve_key_path);
    auto server = privacy::ReadCurvePublicFile(server_key_path);
    if (!own.ok() || !server.ok()) {
      std::fprintf(stderr, "flotilla-client: %s\n",
                   (!own.ok() ? own.status() : server.status()).ToString().c_str());
      return 1;
    }
    config.socket.curve.public_key = own->public_z85;
    config.socket.curve.secret_key = own->SecretZ85();
    config.socket.curve.server_public_key = *server;
  }
  auto train = training::LoadFashionMnist(data_dir, training::Split::kTrain, train_limit);
  if (!train.ok()) {
    std::fprintf(stderr, "flotilla-client: %s\n", train.status().ToString().c_str());
    return 1;
  }
  auto parts = training::PartitionByName(partition, train->labels, train->num_classes, clients,
                                         DeriveSeed(seed, "partition"));
  if (!parts.ok()) {
    std::fprintf(stderr, "flotilla-client: %s\n", parts.status().ToString().c_str());
    return 1;
  }
  auto shared = std::make_shared<const training::Dataset>(std::move(train).value());
  training::DataView view{shared, (*parts)[index]};
  config.num_examples = view.size();
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto stats = client::RunClient(config, view, *model_key, &g_stop);
  if (!stats.ok()) {
    std::fprintf(stderr, "flotilla-client: %s\n", stats.status().ToString().c_str());
    return 1;
  }
  std::printf("flotilla-client %s: trained %d rounds, %d updates acknowledged\n", config.name.c_str(),
              stats->rounds_trained, stats->updates_acked);
  return 0;
}
