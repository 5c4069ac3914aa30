// flotilla client: one device.
//   train   trains on its share of Fashion-MNIST whenever the aggregator asks,
//           until the federation is over
//   pull    fetches a model version (verified) for local inference
//   status  prints the aggregator's health and progress
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "client/pull.h"
#include "client/runner.h"
#include "core/log.h"
#include "core/raw_weights.h"
#include "core/rng.h"
#include "privacy/keys.h"
#include "proto/codec.h"
#include "training/partition.h"

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

int Fail(const flotilla::Status& st) {
  std::fprintf(stderr, "flotilla client: %s\n", st.ToString().c_str());
  return 1;
}
}  // namespace

int flotilla::cli::ClientMain(int argc, char** argv, const FlagOrigins& origins) {
  using namespace flotilla;
  client::SessionConfig config;
  std::string log_level = "info";
  std::string curve_key_path, server_key_path = "keys/aggregator.curve.pub",
                              model_key_path = "keys/aggregator.sign.pub";
  std::string cert_path, authority_key_path = "keys/enrolment.sign.pub";
  std::string state_dir;
  bool insecure = false;
  int request_timeout_ms = 30000;

  CLI::App app{"Flotilla client (device runtime). Subcommands: train, pull, status."};
  bool print_config = false;
  flotilla::cli::PrepareApp(&app, &print_config);
  app.require_subcommand(1);
  app.add_option("--connect", config.endpoint, "Aggregator endpoint")->capture_default_str();
  app.add_option("--name", config.name, "Device name; also names its key file and state directory")
      ->required();
  app.add_option(
         "--federation", config.federation,
         "The federation this device is enrolled in; the aggregator and every model's signature must match")
      ->capture_default_str();
  app.add_option("--curve-key", curve_key_path,
                 "This device's CURVE secret key file (default keys/NAME.curve.key)");
  app.add_option("--server-key", server_key_path, "The aggregator's CURVE public key file")
      ->capture_default_str();
  app.add_option("--model-key", model_key_path, "The aggregator's model-signing public key file")
      ->capture_default_str();
  app.add_option(
      "--secagg-cert", cert_path,
      "The enrolment authority's certificate for this device (default keys/NAME.secagg.cert, if present)");
  app.add_option(
         "--enrolment-key", authority_key_path,
         "The enrolment authority's public key; when the file exists, secure-aggregation peers' identity "
         "keys are accepted only with its certificates")
      ->capture_default_str();
  app.add_option("--state-dir", state_dir,
                 "Device store (outbox, pulled models); default flotilla-device-NAME");
  app.add_flag("--insecure", insecure, "DEBUGGING ONLY: connect without encryption");
  app.add_option("--request-timeout-ms", request_timeout_ms, "Reconnect when a reply takes longer than this")
      ->capture_default_str();
  app.add_option("--log", log_level, "Log level: debug, info, warning, error")->capture_default_str();

  CLI::App* train =
      app.add_subcommand("train", "Train whenever the aggregator asks, until the federation ends");
  std::string data_dir = training::kDefaultFashionMnistDir;
  std::string partition = "iid";
  int clients = 1, index = 0, threads = 1;
  uint64_t seed = 1;
  int64_t train_limit = 0;
  train->add_option("--data-dir", data_dir, "Fashion-MNIST directory")->capture_default_str();
  train->add_option("--partition", partition, "iid | dirichlet:ALPHA | shards:K")->capture_default_str();
  train->add_option("--clients", clients, "Number of partitions")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--index", index, "Which partition is this device's (0-based)")->capture_default_str();
  train->add_option("--seed", seed, "Partition seed (use the aggregator's --seed)")->capture_default_str();
  train->add_option("--train-limit", train_limit, "Use only the first N training examples (0 = all)")
      ->capture_default_str();
  train->add_option("--threads", threads, "Torch threads for local training")->capture_default_str();
  std::string model_path;
  train
      ->add_option("--model-path", model_path,
                   "This device's copy of the federation's TorchScript model (when it trains one)")
      ->check(CLI::ExistingFile);

  CLI::App* pull = app.add_subcommand("pull", "Fetch a model version, verify it, and write it for inference");
  uint64_t version = 0;
  std::string out_path;
  pull->add_option(
          "--version", version,
          "Model version (0 = latest). As the latest, a version older than one this device has verified "
          "is refused as a rollback; asking for it by number takes it deliberately")
      ->capture_default_str();
  pull->add_option("--out", out_path, "Write float32 weights here (and OUT.json with the layout)");

  CLI::App* status = app.add_subcommand("status", "Print the aggregator's status");
  if (std::optional<int> exit_code = flotilla::cli::Parse(&app, argc, argv, &print_config, origins))
    return *exit_code;

  LogLevel level;
  if (!ParseLogLevel(log_level, &level)) {
    std::fprintf(stderr, "error: unknown --log level '%s'\n", log_level.c_str());
    return 2;
  }
  SetLogLevel(level);
  config.request_timeout = std::chrono::milliseconds(request_timeout_ms);
  if (insecure) {
    std::fprintf(stderr, "WARNING: --insecure: traffic is NOT encrypted. Debugging only.\n");
    config.socket.security = net::TransportSecurity::kNone;
  } else {
    if (curve_key_path.empty()) curve_key_path = "keys/" + config.name + ".curve.key";
    auto own = privacy::ReadCurveSecretFile(curve_key_path);
    if (!own.ok()) return Fail(own.status());
    auto server = privacy::ReadCurvePublicFile(server_key_path);
    if (!server.ok()) return Fail(server.status());
    config.socket.curve.public_key = own->public_z85;
    config.socket.curve.secret_key = own->SecretZ85();
    config.socket.curve.server_public_key = *server;
    // The secure-aggregation identity comes from the same enrolled key.
    auto identity = privacy::DeriveSecAggIdentity(*own);
    if (!identity.ok()) return Fail(identity.status());
    config.secagg_identity = std::make_shared<const privacy::SigningKeyPair>(std::move(identity).value());
    const bool cert_given = !cert_path.empty();
    if (!cert_given) cert_path = "keys/" + config.name + ".secagg.cert";
    if (cert_given || std::filesystem::exists(cert_path)) {
      auto cert = privacy::ReadSecAggCertFile(cert_path);
      if (!cert.ok()) return Fail(cert.status());
      config.secagg_identity_cert = *cert;
    }
    if (std::filesystem::exists(authority_key_path)) {
      auto authority = privacy::ReadSigningPublicFile(authority_key_path);
      if (!authority.ok()) return Fail(authority.status());
      config.secagg_authority_key = *authority;
    }
  }

  if (*status) {
    auto reply = client::QueryStatus(config);
    if (!reply.ok()) return Fail(reply.status());
    std::printf("federation %s (%s)\nround %u of %u%s, %u completed\n", reply->federation().c_str(),
                reply->model_arch().c_str(), reply->round(), reply->rounds_total(),
                reply->round_active() ? " (running)" : "", reply->rounds_completed());
    if (reply->round_active()) {
      if (!reply->secagg_stage().empty()) {
        std::printf("secure aggregation: stage %s, %u of %u devices still in\n",
                    reply->secagg_stage().c_str(), reply->secagg_remaining(), reply->updates_expected());
      } else {
        std::printf("updates this round %u/%u\n", reply->updates_received(), reply->updates_expected());
      }
    }
    if (reply->failed_rounds_in_a_row() > 0 || reply->next_round_in_seconds() > 0) {
      std::printf("failed rounds in a row %u; next round in %.1f s\n", reply->failed_rounds_in_a_row(),
                  reply->next_round_in_seconds());
    }
    std::printf(
        "model version %llu\nclients known %u, connected %u, paused %u\nupdates rejected %llu\n"
        "store %.1f MB\nuptime %.0f s\n",
        static_cast<unsigned long long>(reply->model_version()), reply->known_clients(),
        reply->connected_clients(), reply->paused_clients(),
        static_cast<unsigned long long>(reply->updates_rejected()), reply->store_bytes() / 1e6,
        reply->uptime_seconds());
    return 0;
  }

  auto model_key = privacy::ReadSigningPublicFile(model_key_path);
  if (!model_key.ok()) return Fail(model_key.status());
  if (state_dir.empty()) state_dir = "flotilla-device-" + config.name;
  auto store = client::DeviceStore::Open(state_dir);
  if (!store.ok()) return Fail(store.status());

  if (*pull) {
    auto result = client::PullModel(config, store->get(), version, *model_key);
    if (!result.ok()) return Fail(result.status());
    if (result->up_to_date) {
      std::printf("up to date: holding model version %llu\n",
                  static_cast<unsigned long long>(result->model.version));
    } else {
      std::printf("pulled model version %llu (round %u): %d of %d tensors, %.2f MB, signature verified\n",
                  static_cast<unsigned long long>(result->model.version), result->model.round,
                  result->tensors_received, result->tensors_total, result->payload_bytes / 1e6);
    }
    if (!out_path.empty()) {
      auto weights = proto::WeightsFromProto(result->model.weights, nullptr);
      if (!weights.ok()) return Fail(weights.status());
      Status st =
          WriteRawWeights(out_path, *weights, result->model.arch, result->model.version, result->model.round);
      if (!st.ok()) return Fail(st);
      std::printf("wrote %s and %s.json\n", out_path.c_str(), out_path.c_str());
    }
    return 0;
  }

  // train
  if (index < 0 || index >= clients) {
    std::fprintf(stderr, "error: --index must be in [0, --clients)\n");
    return 2;
  }
  training::SetTorchThreads(threads);
  auto data = training::LoadFashionMnist(data_dir, training::Split::kTrain, train_limit);
  if (!data.ok()) return Fail(data.status());
  auto parts = training::PartitionByName(partition, data->labels, data->num_classes, clients,
                                         DeriveSeed(seed, "partition"));
  if (!parts.ok()) return Fail(parts.status());
  auto shared = std::make_shared<const training::Dataset>(std::move(data).value());
  training::DataView view{shared, (*parts)[index]};
  config.num_examples = view.size();
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto stats = client::RunClient(config, view, *model_key, &g_stop, store->get(), model_path);
  if (!stats.ok()) return Fail(stats.status());
  std::printf("flotilla client %s: trained %d rounds, %d updates acknowledged, %d reconnects\n",
              config.name.c_str(), stats->rounds_trained, stats->updates_acked, stats->reconnects);
  std::printf("recorded rounds:");
  for (uint32_t r : stats->recorded_rounds) std::printf(" %u", r);
  std::printf("\n");
  return 0;
}
