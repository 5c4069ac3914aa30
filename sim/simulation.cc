#include "sim/simulation.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "client/session.h"
#include "core/log.h"
#include "core/rng.h"
#include "privacy/keys.h"
#include "sim/fleet_data.h"
#include "sim/report.h"
#include "sim/trainer_pool.h"
#include "training/dataset.h"
#include "training/model.h"
#include "training/partition.h"

namespace flotilla::sim {
namespace {

using Clock = std::chrono::steady_clock;

StatusOr<training::ModelSpec> ModelSpecOf(const SimConfig& config) {
  const aggregator::AggregatorConfig& a = config.aggregator;
  return training::MakeModelSpec(a.model_arch, config.model_path, a.model_buffers, a.model_freeze,
                                 a.model_personal, a.loss);
}

StatusOr<SimResult> RunCentral(const SimConfig& config, const FleetData& data) {
  const auto& a = config.aggregator;
  const auto start = Clock::now();
  training::SetTorchThreads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  ASSIGN_OR_RETURN(training::ModelSpec spec, ModelSpecOf(config));
  ASSIGN_OR_RETURN(std::unique_ptr<training::ModelRunner> runner,
                   training::ModelRunner::Create(spec, DeriveSeed(a.seed, "init")));
  // The union of the devices' data: their examples of the shared training
  // set, or (when devices hold their own copies) the union's own dataset.
  training::DataView train_view{data.train, {}};
  for (const auto& device : data.devices) {
    if (device.base != data.train) {
      train_view = training::DataView::All(data.train);
      break;
    }
    train_view.indices.insert(train_view.indices.end(), device.indices.begin(), device.indices.end());
  }
  std::sort(train_view.indices.begin(), train_view.indices.end());
  const training::DataView test_view = training::DataView::All(data.test);
  SimResult result;
  result.train_examples = train_view.size();
  for (int epoch = 1; epoch <= config.central_epochs; ++epoch) {
    const auto epoch_start = Clock::now();
    training::TrainConfig tc;
    tc.epochs = 1;
    tc.batch_size = static_cast<int>(a.batch_size);
    tc.learning_rate = a.learning_rate;
    tc.momentum = a.momentum;
    tc.weight_decay = a.weight_decay;
    ASSIGN_OR_RETURN(tc.optimizer, training::ParseOptimizer(a.optimizer));
    tc.seed = DeriveSeed(a.seed, "central", static_cast<uint64_t>(epoch));
    ASSIGN_OR_RETURN(training::TrainResult tr, runner->Train(train_view, tc));
    ASSIGN_OR_RETURN(training::EvalResult ev, runner->Evaluate(test_view));
    aggregator::RoundSummary r;
    r.round = static_cast<uint32_t>(epoch);
    r.completed = true;
    r.selected = r.received = 1;
    r.total_examples = tr.examples;
    r.mean_train_loss = tr.mean_loss;
    r.test_loss = ev.loss;
    r.test_accuracy = ev.accuracy;
    if (std::isfinite(ev.auc)) r.test_auc = ev.auc;
    if (std::isfinite(ev.mae)) r.test_mae = ev.mae;
    r.seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();
    result.rounds.push_back(r);
    if (!config.quiet) {
      std::printf("epoch %3d/%d  train_loss %.4f  test_loss %.4f  test_acc %.4f%s  %6.1fs\n", epoch,
                  config.central_epochs, tr.mean_loss, ev.loss, ev.accuracy,
                  std::isfinite(ev.auc)   ? ("  test_auc " + std::to_string(ev.auc).substr(0, 6)).c_str()
                  : std::isfinite(ev.mae) ? ("  test_mae " + std::to_string(ev.mae).substr(0, 6)).c_str()
                                          : "",
                  r.seconds);
      std::fflush(stdout);
    }
    result.final_accuracy = ev.accuracy;
    result.final_loss = ev.loss;
    result.final_auc = ev.auc;
    result.final_mae = ev.mae;
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

// The run's keys: the aggregator's signing pair and CURVE pair (in the
// aggregator config), every device's CURVE pair (reproducible from the
// seed: identities decide sampling and merge order) and the enrolment
// authority that certifies their secure-aggregation identities.
struct FleetKeys {
  std::vector<unsigned char> model_key;  // the aggregator's signing public key
  std::vector<privacy::CurveKeyPair> clients;
  privacy::SigningKeyPair authority;
};

StatusOr<FleetKeys> MakeKeys(const SimConfig& config, aggregator::AggregatorConfig* agg_config) {
  FleetKeys keys;
  ASSIGN_OR_RETURN(privacy::SigningKeyPair signing, privacy::GenerateSigningKeyPair());
  keys.model_key = signing.public_key;
  agg_config->signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing));
  ASSIGN_OR_RETURN(keys.authority, privacy::GenerateSigningKeyPair());
  if (config.insecure) {
    LOG_WARN("sim", "INSECURE MODE: simulated traffic is not encrypted and no allowlist is enforced");
    agg_config->socket.security = net::TransportSecurity::kNone;
    return keys;
  }
  ASSIGN_OR_RETURN(privacy::CurveKeyPair server_keys, privacy::GenerateCurveKeyPair());
  agg_config->socket.security = net::TransportSecurity::kCurve;
  agg_config->socket.curve.public_key = server_keys.public_z85;
  agg_config->socket.curve.secret_key = server_keys.SecretZ85();
  for (int i = 0; i < config.clients; ++i) {
    ASSIGN_OR_RETURN(privacy::CurveKeyPair k, privacy::DeriveCurveKeyPairForSimulation(DeriveSeed(
                                                  agg_config->seed, "client-key", static_cast<uint64_t>(i))));
    agg_config->allowed_clients.insert(k.public_z85);
    keys.clients.push_back(std::move(k));
  }
  return keys;
}

// Device i's session settings: its keys, its certified SecAgg identity,
// its fault seed. `executor` runs SecAgg steps (on the trainer pool).
StatusOr<client::SessionConfig> SessionConfigFor(int i, const SimConfig& config,
                                                 const aggregator::AggregatorConfig& agg_config,
                                                 const FleetKeys& keys, const std::string& endpoint,
                                                 int64_t num_examples,
                                                 std::function<void(std::function<void()>)> executor) {
  client::SessionConfig sc;
  sc.endpoint = endpoint;
  char name[32];
  std::snprintf(name, sizeof(name), "client-%05d", i);
  sc.name = name;
  sc.federation = agg_config.federation;
  sc.num_examples = num_examples;
  sc.request_timeout = std::chrono::milliseconds(static_cast<int64_t>(1000 * config.request_timeout_seconds));
  sc.socket.security = agg_config.socket.security;
  if (!config.insecure) {
    const privacy::CurveKeyPair& k = keys.clients[static_cast<size_t>(i)];
    sc.socket.curve.public_key = k.public_z85;
    sc.socket.curve.secret_key = k.SecretZ85();
    sc.socket.curve.server_public_key = agg_config.socket.curve.public_key;
    ASSIGN_OR_RETURN(privacy::SigningKeyPair identity, privacy::DeriveSecAggIdentity(k));
    ASSIGN_OR_RETURN(sc.secagg_identity_cert,
                     privacy::CertifySecAggIdentity(keys.authority, identity.public_key));
    sc.secagg_authority_key = keys.authority.public_key;
    sc.secagg_identity = std::make_shared<const privacy::SigningKeyPair>(std::move(identity));
  } else if (agg_config.secagg.enabled) {
    ASSIGN_OR_RETURN(privacy::SigningKeyPair identity, privacy::GenerateSigningKeyPair());
    sc.secagg_identity = std::make_shared<const privacy::SigningKeyPair>(std::move(identity));
  }
  sc.secagg_dropout = config.secagg_dropout;
  sc.secagg_executor = std::move(executor);
  sc.fault_seed = DeriveSeed(agg_config.seed, "faults", static_cast<uint64_t>(i));
  return sc;
}

// The devices' event loop: reads what is readable, hands finished training
// to its session, ticks every session and queues new tasks, until every
// session is finished (or the aggregator stopped 10 s ago without telling
// some of them).
Status DriveFleet(std::vector<std::unique_ptr<client::Session>>& sessions, TrainerPool& pool,
                  const std::atomic<bool>& agg_stopped) {
  std::vector<net::ClientSocket*> sockets;
  std::optional<Clock::time_point> agg_stopped_at;
  size_t done = 0;
  while (done < sessions.size()) {
    if (agg_stopped.load()) {
      // Sessions the aggregator did not tell before it stopped would
      // otherwise retry forever.
      if (!agg_stopped_at) agg_stopped_at = Clock::now();
      if (Clock::now() - *agg_stopped_at > std::chrono::seconds(10)) {
        LOG_WARN("sim", sessions.size() - done
                            << " of " << sessions.size()
                            << " clients were not told the federation ended; stopping them");
        return Status::Ok();
      }
    }
    sockets.clear();
    for (auto& s : sessions) sockets.push_back(s->socket());
    ASSIGN_OR_RETURN(std::vector<size_t> ready, net::PollReadable(sockets, std::chrono::milliseconds(20)));
    for (size_t i : ready) RETURN_IF_ERROR(sessions[i]->OnReadable());
    for (auto& r : pool.TakeResults()) {
      RETURN_IF_ERROR(r.update.ok() ? sessions[r.client]->SubmitUpdate(std::move(r.update).value())
                                    : sessions[r.client]->AbandonTask(r.update.status()));
    }
    done = 0;
    for (size_t i = 0; i < sessions.size(); ++i) {
      RETURN_IF_ERROR(sessions[i]->OnTick());
      if (std::optional<wire::TrainTask> task = sessions[i]->TakeTask())
        pool.Submit(Job{i, std::move(*task), {}});
      if (sessions[i]->finished()) ++done;
    }
  }
  return Status::Ok();
}

// The final accuracy and loss: the last round that was evaluated.
void SetFinalFigures(SimResult* result) {
  for (auto it = result->rounds.rbegin(); it != result->rounds.rend(); ++it) {
    if (it->test_accuracy) {
      result->final_accuracy = *it->test_accuracy;
      result->final_loss = it->test_loss.value_or(0.0);
      result->final_auc = it->test_auc.value_or(NAN);
      result->final_mae = it->test_mae.value_or(NAN);
      return;
    }
  }
}

}  // namespace

StatusOr<SimResult> RunSimulation(const SimConfig& config) {
  if (config.clients < 1) return InvalidArgument("need at least one client");
  std::error_code ec;
  std::filesystem::create_directories(config.out_dir, ec);
  if (ec) return Unavailable("cannot create output directory " + config.out_dir + ": " + ec.message());
  const auto start = Clock::now();
  ASSIGN_OR_RETURN(FleetData data, LoadFleetData(config));
  if (config.central_epochs > 0) {
    ASSIGN_OR_RETURN(SimResult central, RunCentral(config, data));
    RETURN_IF_ERROR(WriteOutputs(config, central));
    return central;
  }

  aggregator::AggregatorConfig agg_config = config.aggregator;
  if (!agg_config.model_personal.empty()) {
    // One trainer thread serves many simulated devices, so their personal
    // layers would mix.
    return InvalidArgument("personal layers are not simulated yet (run devices as separate clients)");
  }
  agg_config.store_path = (std::filesystem::path(config.out_dir) / "store").string();
  std::filesystem::remove_all(agg_config.store_path, ec);  // a simulation always starts fresh
  agg_config.min_clients = config.clients;
  ASSIGN_OR_RETURN(FleetKeys keys, MakeKeys(config, &agg_config));

  // The aggregator's evaluation model runs on its own thread.
  ASSIGN_OR_RETURN(training::ModelSpec spec, ModelSpecOf(config));
  ASSIGN_OR_RETURN(std::unique_ptr<training::ModelRunner> eval_runner,
                   training::ModelRunner::Create(spec, DeriveSeed(agg_config.seed, "init")));
  const training::DataView test_view = training::DataView::All(data.test);
  training::ModelRunner* eval_ptr = eval_runner.get();
  aggregator::EvalFn eval = [eval_ptr, &test_view](const Weights& w) -> StatusOr<aggregator::EvalMetrics> {
    RETURN_IF_ERROR(eval_ptr->SetWeights(w));
    ASSIGN_OR_RETURN(training::EvalResult r, eval_ptr->Evaluate(test_view));
    return aggregator::EvalMetrics{r.loss, r.accuracy, r.auc, r.mae};
  };
  SimResult result;
  std::mutex print_mu;
  aggregator::RoundFn on_round = [&](const aggregator::RoundSummary& r) {
    std::lock_guard<std::mutex> lock(print_mu);
    result.rounds.push_back(r);
    if (!config.quiet) {
      std::printf("%s\n", FormatRound(r, agg_config.rounds).c_str());
      std::fflush(stdout);
    }
  };

  net::Context context(1);
  ASSIGN_OR_RETURN(
      std::unique_ptr<aggregator::Aggregator> agg,
      aggregator::Aggregator::Create(agg_config, &context, eval_runner->GetWeights(), eval, on_round));
  // One Torch thread everywhere: at::set_num_threads also sets a process-wide
  // default that other threads pick up lazily, so giving the evaluator more
  // threads would race with the trainers and make runs irreproducible.
  training::SetTorchThreads(1);
  Status agg_status;
  std::atomic<bool> agg_stopped{false};
  std::thread agg_thread([&] {
    training::SetTorchThreads(1);
    agg_status = agg->Run();
    agg_stopped = true;
  });

  const std::vector<training::DataView>& views = data.devices;
  for (const auto& v : views) result.train_examples += v.size();
  // The sessions outlive the trainer pool: a SecAgg step running on a
  // trainer refers to its session. Until the pool exists (and after it is
  // gone) such steps run inline.
  Status client_status;
  std::vector<std::unique_ptr<client::Session>> sessions;
  TrainerPool* pool_slot = nullptr;
  auto executor = [&pool_slot](std::function<void()> work) {
    if (pool_slot != nullptr) {
      pool_slot->SubmitWork(std::move(work));
    } else {
      work();
    }
  };
  for (int i = 0; i < config.clients && client_status.ok(); ++i) {
    StatusOr<client::SessionConfig> sc = SessionConfigFor(i, config, agg_config, keys, agg->endpoint(),
                                                          views[static_cast<size_t>(i)].size(), executor);
    StatusOr<std::unique_ptr<client::Session>> s =
        sc.ok() ? client::Session::Create(&context, *sc)
                : StatusOr<std::unique_ptr<client::Session>>(sc.status());
    if (s.ok()) {
      sessions.push_back(std::move(s).value());
    } else {
      client_status = s.status();
    }
  }
  {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int workers = std::min(config.workers > 0 ? config.workers : cores, config.clients);
    TrainerPool pool(workers, config.model_path, &views, &data.held_out, keys.model_key,
                     agg_config.federation);
    pool_slot = &pool;
    if (client_status.ok()) client_status = DriveFleet(sessions, pool, agg_stopped);
  }
  pool_slot = nullptr;
  if (!client_status.ok()) agg->RequestStop();
  agg_thread.join();
  sessions.clear();
  RETURN_IF_ERROR(agg_status.WithContext("aggregator"));
  RETURN_IF_ERROR(client_status.WithContext("simulated clients"));
  agg.reset();

  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  SetFinalFigures(&result);
  RETURN_IF_ERROR(WriteOutputs(config, result));
  return result;
}

}  // namespace flotilla::sim
