// flotilla client: one device.
//   run      the device daemon (alias: train): trains on its data whenever
//            the aggregator asks, until the federation is over; pausable
//            (a file, SIGUSR1/SIGUSR2), reconnects for as long as it takes,
//            writes the final model for the device's own code
//   pull     fetches a model version (verified) for local inference, as raw
//            weights or a TorchScript file
//   status   prints the aggregator's health and progress
//   predict  runs a TorchScript model over local data (no aggregator)
#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>

#include "cli/commands.h"
#include "cli/data_flags.h"
#include "cli/log_flags.h"
#include "client/data_source.h"
#include "client/device.h"
#include "client/pull.h"
#include "client/runner.h"
#include "core/log.h"
#include "core/raw_weights.h"
#include "core/rng.h"
#include "privacy/keys.h"
#include "proto/codec.h"
#include "training/csv.h"
#include "training/export.h"
#include "training/image_folder.h"
#include "training/model.h"
#include "training/partition.h"

namespace {
// The running device, for the signal handlers; Stop, Pause and Resume are
// atomic stores, so they are async-signal-safe.
std::atomic<flotilla::client::Device*> g_device{nullptr};
void OnSignal(int) {
  if (flotilla::client::Device* device = g_device.load()) device->Stop();
}
void OnPause(int) {
  if (flotilla::client::Device* device = g_device.load()) device->Pause();
}
void OnResume(int) {
  if (flotilla::client::Device* device = g_device.load()) device->Resume();
}

int Fail(const flotilla::Status& st) {
  std::fprintf(stderr, "flotilla client: %s\n", st.ToString().c_str());
  return 1;
}

// `flotilla client predict`: the model over local data, one forward pass
// per `batch` examples, timed.
int Predict(const std::string& model_path, const flotilla::client::FileSourceOptions& source, int batch) {
  using namespace flotilla;
  training::SetTorchThreads(1);
  auto loaded = client::LoadAllExamples(source);
  if (!loaded.ok()) return Fail(loaded.status());
  training::Dataset data = std::move(loaded).value();
  training::ModelSpec spec;
  spec.arch = training::kTorchScript;
  spec.path = model_path;
  auto runner = training::ModelRunner::Create(spec, 0);
  if (!runner.ok()) return Fail(runner.status());
  const auto view = training::DataView::All(std::make_shared<const training::Dataset>(std::move(data)));
  const auto start = std::chrono::steady_clock::now();
  auto result = (*runner)->Evaluate(view, batch);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!result.ok()) return Fail(result.status());
  std::printf("%lld examples: accuracy %.4f, loss %.4f, %.3f ms per example (batch %d)\n",
              static_cast<long long>(result->examples), result->accuracy, result->loss,
              1000.0 * seconds / static_cast<double>(result->examples), batch);
  return 0;
}
}  // namespace

int flotilla::cli::ClientMain(int argc, char** argv, const FlagOrigins& origins) {
  using namespace flotilla;
  client::SessionConfig config;
  flotilla::cli::LogFlags log_flags;
  std::string curve_key_path, server_key_path = "keys/aggregator.curve.pub",
                              model_key_path = "keys/aggregator.sign.pub";
  std::string cert_path, authority_key_path = "keys/enrolment.sign.pub";
  std::string state_dir;
  bool insecure = false;
  int request_timeout_ms = 30000;

  CLI::App app{"Flotilla client (device runtime). Subcommands: run (alias train), pull, status, predict."};
  bool print_config = false;
  flotilla::cli::PrepareApp(&app, &print_config);
  app.require_subcommand(1);
  app.add_option("--connect", config.endpoint, "Aggregator endpoint")->capture_default_str();
  app.add_option("--name", config.name,
                 "Device name; also names its key file and state directory (required but for predict)");
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
  int max_backoff_ms = 10000;
  app.add_option("--max-backoff-ms", max_backoff_ms,
                 "Longest wait between reconnection attempts (from 0.5 s, doubling, with jitter)")
      ->capture_default_str()
      ->check(CLI::Range(500, 3600000));
  flotilla::cli::AddLogFlags(&app, &log_flags);

  CLI::App* train = app.add_subcommand(
      "run",
      "The device daemon: train whenever the aggregator asks, until the federation ends (alias: train). "
      "SIGUSR1 pauses it, SIGUSR2 resumes it, SIGTERM stops it");
  train->alias("train");
  std::string data_dir = training::kDefaultFashionMnistDir;
  client::FileSourceOptions files;
  int threads = 1, max_pass_examples = 0;
  train->add_option("--data-dir", data_dir, "Fashion-MNIST directory")->capture_default_str();
  std::string csv_delimiter = ",";
  AddCsvFlags(train, &files.source, &files.csv, &csv_delimiter, &files.images);
  train->add_option("--partition", files.partition, "iid | dirichlet:ALPHA | shards:K")
      ->capture_default_str();
  train->add_option("--clients", files.parts, "Number of partitions (a device with its own file: 1)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--index", files.index, "Which partition is this device's (0-based)")
      ->capture_default_str();
  train->add_option("--seed", files.seed, "Partition seed (use the aggregator's --seed)")
      ->capture_default_str();
  train->add_option("--train-limit", files.limit, "Use only the first N examples of the file (0 = all)")
      ->capture_default_str();
  train
      ->add_option("--held-out-fraction", files.held_out_fraction,
                   "Fraction of this device's examples never trained on, kept for evaluating the global "
                   "model on the device")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.99));
  train->add_option("--threads", threads, "Torch threads for local training")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  train
      ->add_option("--max-pass-examples", max_pass_examples,
                   "Examples per forward/backward pass (0 = the task's batch); a larger batch is accumulated "
                   "over passes: the same update with less memory")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  train->add_flag("--checkin", config.checkin,
                  "Check in instead of holding a connection: connect, take a task or a 'come back after T', "
                  "and disconnect until then (the aggregator must run with --checkin; docs/protocol.md)");
  std::string model_path, pause_file, model_out;
  train->add_option("--pause-file", pause_file,
                    "While this file exists the device does not train: it declines the rounds it is offered "
                    "and stops a training in progress (create it when the machine is busy, remove it to "
                    "resume)");
  train
      ->add_option("--model-path", model_path,
                   "This device's copy of the federation's TorchScript model (when it trains one)")
      ->check(CLI::ExistingFile);
  train->add_option("--model-out", model_out,
                    "When the federation ends, write its final verified model here: a TorchScript file with "
                    "--model-path (personal layers kept), else float32 weights and OUT.json");

  CLI::App* pull = app.add_subcommand("pull", "Fetch a model version, verify it, and write it for inference");
  uint64_t version = 0;
  std::string out_path;
  pull->add_option(
          "--version", version,
          "Model version (0 = latest). As the latest, a version older than one this device has verified "
          "is refused as a rollback; asking for it by number takes it deliberately")
      ->capture_default_str();
  pull->add_option("--out", out_path, "Write float32 weights here (and OUT.json with the layout)");
  std::string script_out, pull_model_path;
  pull->add_option("--script-out", script_out,
                   "TorchScript federation: write the model as a TorchScript file your code loads with "
                   "torch::jit::load, with this device's own trained layers (needs --model-path)");
  pull->add_option("--model-path", pull_model_path,
                   "This device's copy of the federation's TorchScript model (its personal layers and local "
                   "buffers are kept)")
      ->check(CLI::ExistingFile);

  CLI::App* predict = app.add_subcommand(
      "predict", "Run a model on local data: accuracy, loss and latency per example (no aggregator needed)");
  std::string predict_model, predict_delimiter = ",";
  client::FileSourceOptions predict_source;
  int predict_batch = 1;
  predict->add_option("--model", predict_model, "A TorchScript file (e.g. from pull --script-out)")
      ->required()
      ->check(CLI::ExistingFile);
  AddCsvFlags(predict, &predict_source.source, &predict_source.csv, &predict_delimiter,
              &predict_source.images);
  predict->add_option("--data-dir", data_dir, "Fashion-MNIST directory (its test split is used)")
      ->capture_default_str();
  predict->add_option("--limit", predict_source.limit, "Use only the first N examples (0 = all)")
      ->capture_default_str();
  predict->add_option("--batch", predict_batch, "Examples per forward pass (1: latency of one example)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  CLI::App* status = app.add_subcommand("status", "Print the aggregator's status");
  if (std::optional<int> exit_code = flotilla::cli::Parse(&app, argc, argv, &print_config, origins))
    return *exit_code;

  if (!flotilla::cli::ApplyLogFlags(log_flags, "flotilla client")) return 2;
  if (*predict) {
    if (!ResolveCsvFlags(predict_delimiter, &predict_source.csv)) return 2;
    predict_source.fashion_mnist_dir = data_dir;
    return Predict(predict_model, predict_source, predict_batch);
  }
  if (config.name.empty()) {
    std::fprintf(stderr,
                 "error: --name is required (the device's name; its key file is keys/NAME.curve.key)\n");
    return 2;
  }
  config.request_timeout = std::chrono::milliseconds(request_timeout_ms);
  config.max_backoff = std::chrono::milliseconds(max_backoff_ms);
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

  if (*pull) {
    auto store = client::DeviceStore::Open(state_dir);
    if (!store.ok()) return Fail(store.status());
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
    if (!script_out.empty()) {
      if (pull_model_path.empty()) {
        std::fprintf(stderr,
                     "error: --script-out needs --model-path (this device's copy of the model file)\n");
        return 2;
      }
      auto weights = proto::WeightsFromProto(result->model.weights, nullptr);
      if (!weights.ok()) return Fail(weights.status());
      // This device's own layers (personal parameters, local buffers), as
      // its last training kept them in the store.
      auto local = (*store)->GetLocalState(config.federation);
      if (!local.ok()) return Fail(local.status());
      std::optional<Weights> own;
      if (local->has_value() && (*local)->tensors.layout_size() > 0) {
        auto tensors = proto::WeightsFromProto((*local)->tensors, nullptr);
        if (!tensors.ok()) return Fail(tensors.status());
        own = std::move(tensors).value();
      }
      Status st = training::WriteTorchScript(pull_model_path, *weights, script_out, own ? &*own : nullptr);
      if (!st.ok()) return Fail(st);
      const bool with_local = own.has_value();
      std::printf("wrote %s (TorchScript, model version %llu%s)\n", script_out.c_str(),
                  static_cast<unsigned long long>(result->model.version),
                  with_local ? ", with this device's own trained layers" : "");
    }
    return 0;
  }

  // run (train)
  if (!ResolveCsvFlags(csv_delimiter, &files.csv)) return 2;
  files.fashion_mnist_dir = data_dir;
  auto source = client::LoadFileSource(files);
  if (!source.ok()) return Fail(source.status());
  client::DeviceOptions options;
  options.session = config;
  options.model_public_key = *model_key;
  options.model_path = model_path;
  options.threads = threads;
  options.max_pass_examples = max_pass_examples;
  options.final_model_out = model_out;
  if (const char* hold = std::getenv("FLOTILLA_FAULT_HOLD_AFTER_SEND_MS")) {
    options.hold_after_send = std::chrono::milliseconds(std::atoll(hold));
  }
  client::DeviceCallbacks callbacks;
  callbacks.may_train = [pause_file] {  // (SIGUSR1 pauses the Device itself)
    std::error_code ec;
    return pause_file.empty() || !std::filesystem::exists(pause_file, ec);
  };
  callbacks.on_progress = [name = config.name](const client::Progress& p) {
    using Event = client::Progress::Event;
    switch (p.event) {
      case Event::kStep:
        // A line at each quarter of the round's steps.
        if (p.steps > 0 && (p.step * 4 / p.steps) != ((p.step - 1) * 4 / p.steps)) {
          LOG_INFO("client", name << ": round " << p.round << ": step " << p.step << " of " << p.steps);
        }
        break;
      case Event::kUpdateSent:
        LOG_INFO("client", name << ": round " << p.round << ": update sent");
        break;
      case Event::kUpdateSettled:
        LOG_INFO("client", name << ": round " << p.round << ": update "
                                << (p.recorded ? "recorded by the aggregator" : "refused"));
        break;
      case Event::kDeclined:
        LOG_INFO("client", name << ": round " << p.round << ": declined: " << p.detail);
        break;
      default:
        break;
    }
  };
  options.state_dir = state_dir;
  auto device = client::Device::Create(std::move(options), std::move(source).value(), callbacks);
  if (!device.ok()) return Fail(device.status());
  g_device.store(device->get());
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGUSR1, OnPause);
  std::signal(SIGUSR2, OnResume);
  auto stats = (*device)->Run();
  g_device.store(nullptr);
  if (!stats.ok()) return Fail(stats.status());
  std::printf(
      "flotilla client %s: trained %d rounds, %d updates acknowledged, %d reconnects, %d rounds paused\n",
      config.name.c_str(), stats->rounds_trained, stats->updates_acked, stats->reconnects,
      stats->rounds_paused);
  std::printf("recorded rounds:");
  for (uint32_t r : stats->recorded_rounds) std::printf(" %u", r);
  std::printf("\n");
  if (!model_out.empty() && stats->final_model_version > 0) {
    std::printf("wrote the final model (version %llu, signature verified) to %s\n",
                static_cast<unsigned long long>(stats->final_model_version), model_out.c_str());
  }
  return 0;
}
