#include "sim/simulation.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/local_trainer.h"
#include "client/session.h"
#include "core/log.h"
#include "core/rng.h"
#include "privacy/keys.h"
#include "training/dataset.h"
#include "training/model.h"
#include "training/partition.h"

namespace flotilla::sim {
namespace {

using Clock = std::chrono::steady_clock;

struct Job {
  size_t client = 0;
  wire::TrainTask task;
  std::function<void()> work;  // set: a secure-aggregation step instead of training
};
struct JobResult {
  size_t client;
  StatusOr<wire::Update> update;
};

// Trainer threads, each with its own model, fed through a queue.
class TrainerPool {
 public:
  TrainerPool(int workers, const std::string& arch, const std::vector<training::DataView>* views,
              std::vector<unsigned char> model_key, std::string federation)
      : views_(views), model_key_(std::move(model_key)), federation_(std::move(federation)) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, arch] { Work(arch); });
  }
  ~TrainerPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Runs `work` on a trainer thread (before queued training: it is short
  // and the round waits for it).
  void SubmitWork(std::function<void()> work) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      Job job;
      job.work = std::move(work);
      jobs_.push_front(std::move(job));
    }
    cv_.notify_one();
  }
  void Submit(Job job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }
  std::vector<JobResult> TakeResults() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<JobResult> out(std::make_move_iterator(results_.begin()), std::make_move_iterator(results_.end()));
    results_.clear();
    return out;
  }

 private:
  void Work(const std::string& arch) {
    training::SetTorchThreads(1);
    StatusOr<std::unique_ptr<training::ModelRunner>> runner = training::ModelRunner::Create(arch, 0);
    while (true) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (stopping_) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      if (job.work) {
        job.work();
        continue;
      }
      JobResult result{job.client, runner.ok() ? client::RunTrainTask(runner->get(), (*views_)[job.client], job.task, model_key_, federation_)
                                               : StatusOr<wire::Update>(runner.status())};
      std::lock_guard<std::mutex> lock(mu_);
      results_.push_back(std::move(result));
    }
  }

  const std::vector<training::DataView>* views_;
  const std::vector<unsigned char> model_key_;
  const std::string federation_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::deque<JobResult> results_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

std::string FormatRound(const aggregator::RoundSummary& r, uint32_t rounds) {
  char line[256];
  if (!r.completed) {
    std::snprintf(line, sizeof(line), "round %3u/%u  clients %3d/%-3d  FAILED (too few updates)  %6.1fs", r.round,
                  rounds, r.received, r.selected, r.seconds);
    return line;
  }
  std::snprintf(line, sizeof(line), "round %3u/%u  clients %3d/%-3d  train_loss %.4f  test_loss %.4f  test_acc %.4f  %6.1fs",
                r.round, rounds, r.received, r.selected, r.mean_train_loss, r.test_loss.value_or(NAN),
                r.test_accuracy.value_or(NAN), r.seconds);
  std::string out = line;
  if (r.epsilon) {
    std::snprintf(line, sizeof(line), "  eps %.3f", *r.epsilon);
    out += line;
  }
  if (r.clip_norm) {
    std::snprintf(line, sizeof(line), "  clip %.3f", *r.clip_norm);
    out += line;
  }
  return out;
}

Status WriteOutputs(const SimConfig& config, const SimResult& result) {
  const std::filesystem::path dir(config.out_dir);
  std::ofstream csv(dir / "metrics.csv");
  csv << "round,completed,selected,received,examples,train_loss,test_loss,test_accuracy,seconds,model_version,"
         "epsilon,clip_norm\n";
  for (const auto& r : result.rounds) {
    csv << r.round << "," << (r.completed ? 1 : 0) << "," << r.selected << "," << r.received << ","
        << r.total_examples << "," << r.mean_train_loss << "," << r.test_loss.value_or(NAN) << ","
        << r.test_accuracy.value_or(NAN) << "," << r.seconds << "," << r.model_version << ","
        << r.epsilon.value_or(NAN) << "," << r.clip_norm.value_or(NAN) << "\n";
  }
  if (!csv) return Unavailable("could not write " + (dir / "metrics.csv").string());
  const auto& a = config.aggregator;
  nlohmann::json summary = {
      {"mode", config.central_epochs > 0 ? "central" : "federated"},
      {"arch", a.model_arch},
      {"clients", config.clients},
      {"partition", config.partition},
      {"rounds", a.rounds},
      {"fraction", a.fraction},
      {"epochs", a.epochs},
      {"batch_size", a.batch_size},
      {"learning_rate", a.learning_rate},
      {"momentum", a.momentum},
      {"strategy", a.strategy.Name()},
      {"seed", a.seed},
      {"central_epochs", config.central_epochs},
      {"dp", aggregator::DpModeName(a.dp.mode)},
      {"dp_noise_multiplier", a.dp.noise_multiplier},
      {"dp_clip_norm", a.dp.clip_norm},
      {"dp_delta", a.dp.delta},
      {"dp_epsilon_budget", a.dp.epsilon_budget},
      {"dp_adaptive_clip", a.dp.adaptive_clip},
      {"dp_sampling_rate", a.dp.dpsgd_sampling_rate},
      {"secagg", !a.secagg.enabled ? "off" : a.secagg.graph == privacy::SecAggGraph::kHarary ? "secagg+" : "complete"},
      {"secagg_bits", a.secagg.bit_width},
      {"secagg_dropout", config.secagg_dropout},
      {"epsilon_spent", result.rounds.empty() || !result.rounds.back().epsilon ? 0.0 : *result.rounds.back().epsilon},
      {"train_examples", result.train_examples},
      {"final_test_accuracy", result.final_accuracy},
      {"final_test_loss", result.final_loss},
      {"seconds", result.seconds},
  };
  std::ofstream js(dir / "summary.json");
  js << summary.dump(2) << "\n";
  if (!js) return Unavailable("could not write " + (dir / "summary.json").string());
  return Status::Ok();
}

struct Data {
  std::shared_ptr<const training::Dataset> train, test;
  training::Partition partition;
};

StatusOr<Data> LoadData(const SimConfig& config) {
  Data data;
  ASSIGN_OR_RETURN(training::Dataset train,
                   training::LoadFashionMnist(config.data_dir, training::Split::kTrain, config.train_limit));
  ASSIGN_OR_RETURN(training::Dataset test,
                   training::LoadFashionMnist(config.data_dir, training::Split::kTest, config.test_limit));
  ASSIGN_OR_RETURN(data.partition,
                   training::PartitionByName(config.partition, train.labels, train.num_classes, config.clients,
                                             DeriveSeed(config.aggregator.seed, "partition")));
  data.train = std::make_shared<const training::Dataset>(std::move(train));
  data.test = std::make_shared<const training::Dataset>(std::move(test));
  return data;
}

StatusOr<SimResult> RunCentral(const SimConfig& config, const Data& data) {
  const auto& a = config.aggregator;
  const auto start = Clock::now();
  training::SetTorchThreads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  ASSIGN_OR_RETURN(std::unique_ptr<training::ModelRunner> runner,
                   training::ModelRunner::Create(a.model_arch, DeriveSeed(a.seed, "init")));
  training::DataView train_view{data.train, {}};
  for (const auto& part : data.partition) train_view.indices.insert(train_view.indices.end(), part.begin(), part.end());
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
    r.seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();
    result.rounds.push_back(r);
    if (!config.quiet) {
      std::printf("epoch %3d/%d  train_loss %.4f  test_loss %.4f  test_acc %.4f  %6.1fs\n", epoch,
                  config.central_epochs, tr.mean_loss, ev.loss, ev.accuracy, r.seconds);
      std::fflush(stdout);
    }
    result.final_accuracy = ev.accuracy;
    result.final_loss = ev.loss;
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace

StatusOr<SimResult> RunSimulation(const SimConfig& config) {
  if (config.clients < 1) return InvalidArgument("need at least one client");
  std::error_code ec;
  std::filesystem::create_directories(config.out_dir, ec);
  if (ec) return Unavailable("cannot create output directory " + config.out_dir + ": " + ec.message());
  const auto start = Clock::now();
  ASSIGN_OR_RETURN(Data data, LoadData(config));
  if (config.central_epochs > 0) {
    ASSIGN_OR_RETURN(SimResult central, RunCentral(config, data));
    RETURN_IF_ERROR(WriteOutputs(config, central));
    return central;
  }

  aggregator::AggregatorConfig agg_config = config.aggregator;
  agg_config.store_path = (std::filesystem::path(config.out_dir) / "store").string();
  std::filesystem::remove_all(agg_config.store_path, ec);  // a simulation always starts fresh
  agg_config.min_clients = config.clients;

  // Keys: a signing pair for the aggregator, CURVE pairs for everyone.
  ASSIGN_OR_RETURN(privacy::SigningKeyPair signing, privacy::GenerateSigningKeyPair());
  const std::vector<unsigned char> model_key = signing.public_key;
  agg_config.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing));
  std::vector<privacy::CurveKeyPair> client_keys;
  // An enrolment authority certifies every device's SecAgg identity, and
  // every device checks its peers' certificates.
  ASSIGN_OR_RETURN(privacy::SigningKeyPair authority, privacy::GenerateSigningKeyPair());
  if (config.insecure) {
    LOG_WARN("sim", "INSECURE MODE: simulated traffic is not encrypted and no allowlist is enforced");
    agg_config.socket.security = net::TransportSecurity::kNone;
  } else {
    ASSIGN_OR_RETURN(privacy::CurveKeyPair server_keys, privacy::GenerateCurveKeyPair());
    agg_config.socket.security = net::TransportSecurity::kCurve;
    agg_config.socket.curve.public_key = server_keys.public_z85;
    agg_config.socket.curve.secret_key = server_keys.SecretZ85();
    for (int i = 0; i < config.clients; ++i) {
      // Client identities (and so sampling and merge order) must be
      // reproducible from the run's seed.
      ASSIGN_OR_RETURN(privacy::CurveKeyPair k, privacy::DeriveCurveKeyPairForSimulation(
                                                    DeriveSeed(agg_config.seed, "client-key", static_cast<uint64_t>(i))));
      agg_config.allowed_clients.insert(k.public_z85);
      client_keys.push_back(std::move(k));
    }
  }

  // The aggregator's evaluation model runs on its own thread.
  ASSIGN_OR_RETURN(std::unique_ptr<training::ModelRunner> eval_runner,
                   training::ModelRunner::Create(agg_config.model_arch, DeriveSeed(agg_config.seed, "init")));
  const training::DataView test_view = training::DataView::All(data.test);
  training::ModelRunner* eval_ptr = eval_runner.get();
  aggregator::EvalFn eval = [eval_ptr, &test_view](const Weights& w) -> StatusOr<aggregator::EvalMetrics> {
    RETURN_IF_ERROR(eval_ptr->SetWeights(w));
    ASSIGN_OR_RETURN(training::EvalResult r, eval_ptr->Evaluate(test_view));
    return aggregator::EvalMetrics{r.loss, r.accuracy};
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
  ASSIGN_OR_RETURN(std::unique_ptr<aggregator::Aggregator> agg,
                   aggregator::Aggregator::Create(agg_config, &context, eval_runner->GetWeights(), eval, on_round));
  Status agg_status;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // One Torch thread everywhere: at::set_num_threads also sets a process-wide
  // default that other threads pick up lazily, so giving the evaluator more
  // threads would race with the trainers and make runs irreproducible.
  training::SetTorchThreads(1);
  std::atomic<bool> agg_stopped{false};
  std::thread agg_thread([&] {
    training::SetTorchThreads(1);
    agg_status = agg->Run();
    agg_stopped = true;
  });

  std::vector<training::DataView> views;
  for (const auto& part : data.partition) {
    views.push_back(training::DataView{data.train, part});
    result.train_examples += static_cast<int64_t>(part.size());
  }
  std::vector<std::unique_ptr<client::Session>> sessions;
  Status client_status;
  TrainerPool* pool_ptr = nullptr;
  for (int i = 0; i < config.clients && client_status.ok(); ++i) {
    client::SessionConfig sc;
    sc.endpoint = agg->endpoint();
    char name[32];
    std::snprintf(name, sizeof(name), "client-%05d", i);
    sc.name = name;
    sc.federation = agg_config.federation;
    sc.num_examples = views[i].size();
    sc.request_timeout = std::chrono::milliseconds(static_cast<int64_t>(1000 * config.request_timeout_seconds));
    sc.socket.security = agg_config.socket.security;
    if (!config.insecure) {
      sc.socket.curve.public_key = client_keys[i].public_z85;
      sc.socket.curve.secret_key = client_keys[i].SecretZ85();
      sc.socket.curve.server_public_key = agg_config.socket.curve.public_key;
      StatusOr<privacy::SigningKeyPair> identity = privacy::DeriveSecAggIdentity(client_keys[i]);
      if (!identity.ok()) {
        client_status = identity.status();
        break;
      }
      StatusOr<std::string> cert = privacy::CertifySecAggIdentity(authority, identity->public_key);
      if (!cert.ok()) {
        client_status = cert.status();
        break;
      }
      sc.secagg_identity_cert = *cert;
      sc.secagg_authority_key = authority.public_key;
      sc.secagg_identity = std::make_shared<const privacy::SigningKeyPair>(std::move(identity).value());
    } else if (agg_config.secagg.enabled) {
      StatusOr<privacy::SigningKeyPair> identity = privacy::GenerateSigningKeyPair();
      if (!identity.ok()) {
        client_status = identity.status();
        break;
      }
      sc.secagg_identity = std::make_shared<const privacy::SigningKeyPair>(std::move(identity).value());
    }
    sc.secagg_dropout = config.secagg_dropout;
    // Filled in once the pool exists; sessions only call it while it does.
    sc.secagg_executor = [pool_slot = &pool_ptr](std::function<void()> work) {
      if (*pool_slot != nullptr) {
        (*pool_slot)->SubmitWork(std::move(work));
      } else {
        work();
      }
    };
    sc.fault_seed = DeriveSeed(agg_config.seed, "faults", static_cast<uint64_t>(i));
    StatusOr<std::unique_ptr<client::Session>> s = client::Session::Create(&context, sc);
    if (s.ok()) sessions.push_back(std::move(s).value());
    else client_status = s.status();
  }
  {
    const int workers = std::min(config.workers > 0 ? config.workers : cores, config.clients);
    TrainerPool pool(workers, agg_config.model_arch, &views, model_key, agg_config.federation);
    pool_ptr = &pool;
    std::vector<net::ClientSocket*> sockets;
    size_t done = 0;
    std::optional<Clock::time_point> agg_stopped_at;
    while (client_status.ok() && done < sessions.size()) {
      if (agg_stopped.load()) {
        // Sessions the aggregator did not tell before it stopped would
        // otherwise retry forever.
        if (!agg_stopped_at) agg_stopped_at = Clock::now();
        if (Clock::now() - *agg_stopped_at > std::chrono::seconds(10)) {
          LOG_WARN("sim", sessions.size() - done << " of " << sessions.size()
                                                 << " clients were not told the federation ended; stopping them");
          break;
        }
      }
      sockets.clear();
      for (auto& s : sessions) sockets.push_back(s->socket());
      StatusOr<std::vector<size_t>> ready = net::PollReadable(sockets, std::chrono::milliseconds(20));
      if (!ready.ok()) {
        client_status = ready.status();
        break;
      }
      for (size_t i : *ready) {
        if (Status st = sessions[i]->OnReadable(); !st.ok()) client_status = st;
      }
      for (auto& r : pool.TakeResults()) {
        Status st = r.update.ok() ? sessions[r.client]->SubmitUpdate(std::move(r.update).value())
                                  : sessions[r.client]->AbandonTask(r.update.status());
        if (!st.ok()) client_status = st;
      }
      done = 0;
      for (size_t i = 0; i < sessions.size(); ++i) {
        if (Status st = sessions[i]->OnTick(); !st.ok()) client_status = st;
        if (std::optional<wire::TrainTask> task = sessions[i]->TakeTask()) pool.Submit(Job{i, std::move(*task), {}});
        if (sessions[i]->finished()) ++done;
      }
    }
  }
  pool_ptr = nullptr;
  if (!client_status.ok()) agg->RequestStop();
  agg_thread.join();
  sessions.clear();
  RETURN_IF_ERROR(agg_status.WithContext("aggregator"));
  RETURN_IF_ERROR(client_status.WithContext("simulated clients"));
  agg.reset();

  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto it = result.rounds.rbegin(); it != result.rounds.rend(); ++it) {
    if (it->test_accuracy) {
      result.final_accuracy = *it->test_accuracy;
      result.final_loss = it->test_loss.value_or(0.0);
      break;
    }
  }
  RETURN_IF_ERROR(WriteOutputs(config, result));
  return result;
}

}  // namespace flotilla::sim
