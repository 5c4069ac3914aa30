#include "sim/simulation.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "client/session.h"
#include "core/clock.h"
#include "core/fds.h"
#include "core/log.h"
#include "core/rng.h"
#include "privacy/keys.h"
#include "proto/codec.h"
#include "sim/attacks.h"
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
  if (data.window > 0) train_view = training::DataView::All(data.train);
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
  result.SetElapsed(start);
  return result;
}

// The run's keys: the aggregator's signing pair and CURVE pair (in the
// aggregator config), every device's CURVE pair (reproducible from the
// seed: identities decide sampling and merge order) and the enrolment
// authority that certifies their secure-aggregation identities.
struct FleetKeys {
  std::vector<unsigned char> model_key;  // the aggregator's signing public key
  privacy::SigningKeyPair authority;
  uint64_t seed = 0;
  // Device i's CURVE pair, derived again whenever it is needed: a device
  // away holds no key in memory.
  StatusOr<privacy::CurveKeyPair> Client(size_t i) const {
    return privacy::DeriveCurveKeyPairForSimulation(DeriveSeed(seed, "client-key", static_cast<uint64_t>(i)));
  }
  // The simulator's own observers (status requests), one per shard (each
  // within its own per-device limits), on the allowlist too.
  static constexpr int kMaxShards = 256;
  StatusOr<privacy::CurveKeyPair> Observer(int shard) const {
    return privacy::DeriveCurveKeyPairForSimulation(
        DeriveSeed(seed, "observer-key", static_cast<uint64_t>(shard)));
  }
};

// Every key of a simulation comes from its seed (simulation only: a real
// deployment's keys are random), so that separate processes (the server
// and its shards) agree on them without exchanging anything. The allowlist
// is needed by the serving side only.
StatusOr<FleetKeys> MakeKeys(const SimConfig& config, aggregator::AggregatorConfig* agg_config,
                             bool allowlist = true) {
  FleetKeys keys;
  keys.seed = agg_config->seed;
  auto derived_signing = [&](const char* label) -> StatusOr<privacy::SigningKeyPair> {
    ASSIGN_OR_RETURN(privacy::CurveKeyPair base,
                     privacy::DeriveCurveKeyPairForSimulation(DeriveSeed(keys.seed, label)));
    return privacy::DeriveSecAggIdentity(base);
  };
  ASSIGN_OR_RETURN(privacy::SigningKeyPair signing, derived_signing("sim-model-signing-key"));
  keys.model_key = signing.public_key;
  agg_config->signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing));
  ASSIGN_OR_RETURN(keys.authority, derived_signing("sim-enrolment-authority"));
  if (config.insecure) {
    LOG_WARN("sim", "INSECURE MODE: simulated traffic is not encrypted and no allowlist is enforced");
    agg_config->socket.security = net::TransportSecurity::kNone;
    return keys;
  }
  ASSIGN_OR_RETURN(privacy::CurveKeyPair server_keys,
                   privacy::DeriveCurveKeyPairForSimulation(DeriveSeed(keys.seed, "sim-aggregator-key")));
  agg_config->socket.security = net::TransportSecurity::kCurve;
  agg_config->socket.curve.public_key = server_keys.public_z85;
  agg_config->socket.curve.secret_key = server_keys.SecretZ85();
  if (!allowlist) return keys;
  for (int i = 0; i < config.clients; ++i) {
    ASSIGN_OR_RETURN(privacy::CurveKeyPair k, keys.Client(static_cast<size_t>(i)));
    agg_config->allowed_clients.insert(k.public_z85);
  }
  if (agg_config->checkin.enabled) {
    for (int shard = 0; shard < FleetKeys::kMaxShards; ++shard) {
      ASSIGN_OR_RETURN(privacy::CurveKeyPair observer, keys.Observer(shard));
      agg_config->allowed_clients.insert(observer.public_z85);
    }
    agg_config->non_device_keys = FleetKeys::kMaxShards;
  }
  return keys;
}

std::string DeviceName(size_t i) {
  char name[32];
  std::snprintf(name, sizeof(name), "client-%05zu", i);
  return name;
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
  sc.name = DeviceName(static_cast<size_t>(i));
  sc.federation = agg_config.federation;
  sc.num_examples = num_examples;
  sc.request_timeout = std::chrono::milliseconds(static_cast<int64_t>(1000 * config.request_timeout_seconds));
  sc.socket.security = agg_config.socket.security;
  if (!config.insecure) {
    ASSIGN_OR_RETURN(const privacy::CurveKeyPair k, keys.Client(static_cast<size_t>(i)));
    sc.socket.curve.public_key = k.public_z85;
    sc.socket.curve.secret_key = k.SecretZ85();
    sc.socket.curve.server_public_key = agg_config.socket.curve.public_key;
    if (agg_config.secagg.enabled) {
      ASSIGN_OR_RETURN(privacy::SigningKeyPair identity, privacy::DeriveSecAggIdentity(k));
      ASSIGN_OR_RETURN(sc.secagg_identity_cert,
                       privacy::CertifySecAggIdentity(keys.authority, identity.public_key));
      sc.secagg_authority_key = keys.authority.public_key;
      sc.secagg_identity = std::make_shared<const privacy::SigningKeyPair>(std::move(identity));
    }
  } else if (agg_config.secagg.enabled) {
    ASSIGN_OR_RETURN(privacy::SigningKeyPair identity, privacy::GenerateSigningKeyPair());
    sc.secagg_identity = std::make_shared<const privacy::SigningKeyPair>(std::move(identity));
  }
  sc.secagg_dropout = config.secagg_dropout;
  sc.secagg_executor = std::move(executor);
  sc.fault_seed = DeriveSeed(agg_config.seed, "faults", static_cast<uint64_t>(i));
  return sc;
}

// The malicious devices' side (sim/attacks.h): their finished training
// passes through here on its way out. Per-device attacks change it at once;
// the lie attack holds a round's colluders until all that got a task have
// trained, then sends the same poisoned vector for each.
class Adversary {
 public:
  Adversary(const FleetModel& model, size_t fleet, uint64_t seed) : seed_(seed), fleet_(fleet) {
    StatusOr<Attack> a = ParseAttack(model.attack);
    if (a.ok()) attack_ = *a;
    if (attack_.kind != Attack::Kind::kNone) malicious_ = MaliciousDevices(model.malicious, fleet, seed);
    for (bool m : malicious_) count_ += m;
  }
  size_t count() const { return count_; }
  bool is_malicious(size_t device) const { return device < malicious_.size() && malicious_[device]; }

  void TaskGiven(size_t device, uint32_t round) {
    if (is_malicious(device)) ++tasks_[round];
  }

  // The results to pass on now.
  StatusOr<std::vector<JobResult>> Process(JobResult r) {
    std::vector<JobResult> out;
    if (!is_malicious(r.client)) {
      out.push_back(std::move(r));
      return out;
    }
    if (attack_.kind != Attack::Kind::kLie) {
      if (r.update.ok()) RETURN_IF_ERROR(Poison(attack_, seed_, r.client, &r.update.value()));
      ++poisoned_;
      out.push_back(std::move(r));
      return out;
    }
    const uint32_t round = r.update.ok() ? r.update->round() : last_round_;
    if (r.update.ok()) last_round_ = round;
    std::vector<JobResult>& held = held_[round];
    held.push_back(std::move(r));
    if (held.size() < tasks_[round]) return out;
    std::vector<wire::Update*> updates;
    for (JobResult& h : held) {
      if (h.update.ok()) updates.push_back(&h.update.value());
    }
    RETURN_IF_ERROR(PoisonTogether(attack_, fleet_, count_, updates));
    poisoned_ += updates.size();
    out = std::move(held);
    held_.erase(round);
    tasks_.erase(round);
    return out;
  }
  uint64_t poisoned() const { return poisoned_; }

 private:
  Attack attack_;
  uint64_t seed_;
  size_t fleet_;
  std::vector<bool> malicious_;
  size_t count_ = 0;
  std::map<uint32_t, size_t> tasks_;
  std::map<uint32_t, std::vector<JobResult>> held_;
  uint32_t last_round_ = 0;
  uint64_t poisoned_ = 0;
};

// The devices' event loop: reads what is readable, hands finished training
// to its session, ticks every session and queues new tasks, until every
// session is finished (or the aggregator stopped 10 s ago without telling
// some of them).
Status DriveFleet(std::vector<std::unique_ptr<client::Session>>& sessions, TrainerPool& pool,
                  const std::atomic<bool>& agg_stopped, Adversary* adversary) {
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
    for (auto& finished : pool.TakeResults()) {
      ASSIGN_OR_RETURN(std::vector<JobResult> results, adversary->Process(std::move(finished)));
      for (auto& r : results) {
        RETURN_IF_ERROR(r.update.ok() ? sessions[r.client]->SubmitUpdate(std::move(r.update).value())
                                      : sessions[r.client]->AbandonTask(r.update.status()));
      }
    }
    done = 0;
    for (size_t i = 0; i < sessions.size(); ++i) {
      RETURN_IF_ERROR(sessions[i]->OnTick());
      if (std::optional<wire::TrainTask> task = sessions[i]->TakeTask()) {
        adversary->TaskGiven(i, task->round());
        pool.Submit(Job{i, std::move(*task), {}});
      }
      if (sessions[i]->finished()) ++done;
    }
  }
  return Status::Ok();
}

// Check-in fleets (docs/simulator.md): a device away is an index and the
// round it was told to come back for; it gets a session (a socket, keys)
// only from its check-in until it leaves again. Time is kept in rounds: the
// devices due for round r check in when the aggregator opens r's selection,
// which the simulator sees through status requests on one connection of
// its own. Devices that were not selected, and those that reported, go
// away until the round their ComeBack names.
class CheckInFleet {
 public:
  CheckInFleet(const SimConfig& config, const aggregator::AggregatorConfig& agg_config, const FleetKeys& keys,
               net::Context* context, std::string endpoint, const FleetData& data,
               std::function<void(std::function<void()>)> executor, ProgressLine* progress,
               ShardSpec slice = ShardSpec())
      : config_(config),
        progress_(progress),
        slice_(slice),
        agg_config_(agg_config),
        keys_(keys),
        context_(context),
        endpoint_(std::move(endpoint)),
        data_(data),
        executor_(std::move(executor)),
        adversary_(config.model, data.size(), agg_config.seed) {}

  Status Drive(TrainerPool& pool, const std::atomic<bool>& agg_stopped) {
    const size_t fleet = data_.size();
    // The first check-in of each device, spread as the aggregator's pace
    // steering would spread it.
    const aggregator::CheckInConfig& c = agg_config_.checkin;
    const double wanted = static_cast<double>(aggregator::SelectionTarget(
                              aggregator::UpdatesPerRound(c.clients_per_round, agg_config_.fraction, fleet),
                              c.over_selection)) *
                          c.checkin_margin;
    wake_.assign(fleet, UINT32_MAX);
    wake_at_.assign(fleet, Clock::time_point{});
    released_for_.assign(fleet, 0);
    for (size_t i = static_cast<size_t>(slice_.index); i < fleet; i += static_cast<size_t>(slice_.count)) {
      wake_[i] = aggregator::PlanComeBack(DeviceName(i), 1, fleet, wanted, 0, 0, agg_config_.seed).round;
      ++devices_;
    }
    RETURN_IF_ERROR(ConnectObserver());
    std::vector<net::ClientSocket*> sockets;
    std::vector<size_t> owners;
    // Until the aggregator stops (in this process) or says the federation
    // is over; an aggregator that stops answering for longer than a device
    // would wait is an error (a restarting one answers again well before).
    const double patience = std::max(60.0, config_.request_timeout_seconds);
    while (!agg_stopped.load() && !status_.finished()) {
      if (std::chrono::duration<double>(Clock::now() - last_reply_).count() > patience) {
        return Unavailable("the aggregator at " + endpoint_ + " has not answered for " +
                           std::to_string(static_cast<int>(patience)) + " s");
      }
      RETURN_IF_ERROR(PollObserver());
      if (slice_.on_tick) slice_.on_tick(status_);
      sockets.clear();
      owners.clear();
      for (auto& [i, session] : active_) {
        if (session->socket() != nullptr) {
          sockets.push_back(session->socket());
          owners.push_back(i);
        }
      }
      ASSIGN_OR_RETURN(std::vector<size_t> ready, net::PollReadable(sockets, std::chrono::milliseconds(10)));
      for (size_t k : ready) RETURN_IF_ERROR(active_.at(owners[k])->OnReadable());
      const auto now = Clock::now();
      for (auto& finished : pool.TakeResults()) {
        ASSIGN_OR_RETURN(std::vector<JobResult> results, adversary_.Process(std::move(finished)));
        for (auto& r : results) {
          if (!active_.count(r.client)) continue;
          RETURN_IF_ERROR(TrainingDone(r.client, std::move(r.update), now));
        }
      }
      RETURN_IF_ERROR(RunDue(pool, now));
      bool missed_release = false;
      for (auto it = active_.begin(); it != active_.end();) {
        client::Session& session = *it->second;
        RETURN_IF_ERROR(session.OnTick());
        if (std::optional<wire::TrainTask> task = session.TakeTask()) {
          if (!TaskArrived(it->first, std::move(*task), now)) {
            it = active_.erase(it);  // vanished before training
            continue;
          }
        }
        if (session.state() == client::Session::State::kAway) {
          // Back for the round it was told, and never twice for one round.
          // A device told (while its round ran) to come back for the round
          // whose selection opened before it left checks in at once.
          const bool open = status_.selecting_round() == released_ && !agg_config_.async.enabled();
          if (session.come_back_round() <= released_ && released_for_[it->first] < released_ && open) {
            wake_[it->first] = released_;
            missed_release = true;
          } else if (session.come_back_round() == released_ && open) {
            // Sent away from the open selection (the aggregator at its
            // connection limit): tries it again at the time it was told.
            wake_[it->first] = released_;
            wake_at_[it->first] = session.wake_at();
            retry_pending_ = true;
          } else {
            wake_[it->first] = std::max(session.come_back_round(), released_ + 1);
          }
          // Asynchronous rounds: back when the ComeBack said, in time.
          if (agg_config_.async.enabled()) {
            wake_[it->first] = 0;
            wake_at_[it->first] = session.wake_at();
          }
          if (drop_when_away_.erase(it->first)) wake_[it->first] = std::max(wake_[it->first], released_ + 2);
          check_ins_ += static_cast<uint64_t>(session.check_ins());
          faults_.erase(it->first);
          it = active_.erase(it);
        } else if (session.finished()) {
          wake_[it->first] = UINT32_MAX;
          drop_when_away_.erase(it->first);
          check_ins_ += static_cast<uint64_t>(session.check_ins());
          it = active_.erase(it);
        } else {
          ++it;
        }
      }
      if (missed_release) RETURN_IF_ERROR(Release(released_, now));
      peak_active_ = std::max(peak_active_, active_.size());
      while (!zombies_.empty() && zombies_.front().first <= now) zombies_.erase(zombies_.begin());
    }
    return Status::Ok();
  }

  uint64_t check_ins() const { return check_ins_; }
  size_t peak_active() const { return peak_active_; }
  size_t devices() const { return devices_; }
  InjectedFaults injected() const {
    InjectedFaults f = injected_;
    f.poisoned = adversary_.poisoned();
    return f;
  }

 private:
  Status ConnectObserver() {
    net::SocketOptions options;
    options.security = agg_config_.socket.security;
    if (!config_.insecure) {
      ASSIGN_OR_RETURN(privacy::CurveKeyPair k, keys_.Observer(slice_.index));
      options.curve.public_key = k.public_z85;
      options.curve.secret_key = k.SecretZ85();
      options.curve.server_public_key = agg_config_.socket.curve.public_key;
    }
    ASSIGN_OR_RETURN(observer_, net::ClientSocket::Connect(context_, endpoint_, options));
    return Status::Ok();
  }

  // Asks for the aggregator's status ten times a second; when a new round's
  // selection is open, the devices due for it check in.
  Status PollObserver() {
    const auto now = Clock::now();
    while (true) {
      ASSIGN_OR_RETURN(std::optional<std::string> bytes, observer_->Receive(std::chrono::milliseconds(0)));
      if (!bytes) break;
      StatusOr<wire::Envelope> env = proto::ParseEnvelope(bytes->data(), bytes->size());
      if (!env.ok()) continue;
      if (env->has_error()) {  // e.g. over its limits: ask again after the time it was told
        asked_ = false;
        next_ask_ = now + std::chrono::milliseconds(std::max<uint32_t>(100, env->error().retry_ms()));
        continue;
      }
      if (!env->has_status_reply()) continue;
      status_ = env->status_reply();
      asked_ = false;
      last_reply_ = now;
      ShowProgress(now);
      if (agg_config_.async.enabled()) {
        // Asynchronous rounds: no selection; due devices that are online
        // check in whenever they like, and are given a task or told later.
        RETURN_IF_ERROR(Release(std::max<uint32_t>(1, status_.round()), now));
      } else if (status_.selecting_round() > released_ ||
                 ((TimeBasedAvailability(config_.model) || retry_pending_) &&
                  status_.selecting_round() == released_ && released_ > 0)) {
        // (With availability in time, devices that come online while
        // selection is open check in too; so do devices told to try the
        // open selection again later.)
        RETURN_IF_ERROR(Release(status_.selecting_round(), now));
      }
    }
    // Ten status requests a second: well within a device's message limits.
    if ((!asked_ && now >= next_ask_) || (asked_ && now - asked_at_ > std::chrono::seconds(2))) {
      if (asked_) {  // lost (the aggregator restarted): a new connection
        RETURN_IF_ERROR(ConnectObserver());
      }
      wire::Envelope req;
      req.mutable_status_request();
      req.set_request_id(++request_id_);
      RETURN_IF_ERROR(observer_->Send(proto::SerializeEnvelope(&req)));
      asked_ = true;
      asked_at_ = now;
      next_ask_ = now + std::chrono::milliseconds(100);
    }
    return Status::Ok();
  }

  // What the scenario does to a device between its task and its update
  // (sim/fleet_model.h): the link delays both, a slow or straggling device
  // takes longer than its training did, and faults drop or crash it at
  // their stage. Each is drawn from the seed, the device and the round.
  using DueAt = std::multimap<Clock::time_point, std::function<Status(TrainerPool&)>>;

  bool TaskArrived(size_t i, wire::TrainTask task, Clock::time_point now) {
    const FleetModel& m = config_.model;
    const uint64_t seed = agg_config_.seed;
    const Fault fault = FaultFor(m, seed, i, task.round());
    if (fault == Fault::kDropBeforeTraining) {
      ++injected_.dropped_before_training;
      wake_[i] = released_ + 2;
      return false;
    }
    faults_[i] = fault;
    adversary_.TaskGiven(i, task.round());
    const double down = LinkSeconds(m, seed, i, task.round(), "link-down", task.ByteSizeLong(),
                                    config_.request_timeout_seconds);
    auto shared = std::make_shared<wire::TrainTask>(std::move(task));
    Later(now, down, [i, shared](TrainerPool& pool) {
      pool.Submit(Job{i, std::move(*shared), {}});
      return Status::Ok();
    });
    return true;
  }

  Status TrainingDone(size_t i, StatusOr<wire::Update> update, Clock::time_point now) {
    const FleetModel& m = config_.model;
    const uint64_t seed = agg_config_.seed;
    const Fault fault = faults_.count(i) ? faults_[i] : Fault::kNone;
    if (fault == Fault::kDropWhileTraining) {
      ++injected_.dropped_while_training;
      Vanish(i);
      return Status::Ok();
    }
    double delay = 0.0;
    if (update.ok()) {
      const auto t = update->metrics().find("train_seconds");
      const double trained = t != update->metrics().end() ? t->second : 0.0;
      const uint32_t round = update->round();
      const bool straggles = Straggles(m, seed, i, round);
      if (straggles) ++injected_.stragglers;
      const double takes = trained / Speed(m, seed, i) * (straggles ? m.straggler_factor : 1.0);
      delay =
          std::max(0.0, takes - trained) +
          LinkSeconds(m, seed, i, round, "link-up", update->ByteSizeLong(), config_.request_timeout_seconds);
    }
    auto shared = std::make_shared<StatusOr<wire::Update>>(std::move(update));
    Later(now, delay, [this, i, fault, shared](TrainerPool&) -> Status {
      auto it = active_.find(i);
      if (it == active_.end()) return Status::Ok();
      if (TimeBasedAvailability(config_.model) &&
          !Available(config_.model, agg_config_.seed, i, 0, SecondsSinceStart())) {
        // Its online slot ended before it finished: gone with its update.
        ++injected_.went_offline;
        Vanish(i);
        return Status::Ok();
      }
      if (!shared->ok()) return it->second->AbandonTask(shared->status());
      const wire::Update sent = shared->value();
      RETURN_IF_ERROR(it->second->SubmitUpdate(**shared));
      if (fault == Fault::kDropAfterSending) {
        // Gone once its update is delivered (acknowledged: a resend after an
        // aggregator restart included, so a kill does not lose it), and away
        // longer than pace steering asks.
        ++injected_.dropped_after_sending;
        faults_.erase(i);
        drop_when_away_.insert(i);
      } else if (fault == Fault::kCrashAfterSending) {
        // Gone before its Ack: the session is kept (unread) for a second so
        // that what it sent leaves, then closed. It restarts with the update
        // still in its outbox, and resends it.
        zombies_.emplace_back(Clock::now() + std::chrono::seconds(1), std::move(it->second));
        active_.erase(it);
        faults_.erase(i);
        ++injected_.crashed;
        wake_[i] = UINT32_MAX;
        Later(Clock::now(), config_.model.rejoin_seconds,
              [this, i, sent](TrainerPool&) { return Rejoin(i, sent); });
      }
      return Status::Ok();
    });
    return Status::Ok();
  }

  // Device i connects and checks in (its keys derived again).
  StatusOr<std::unique_ptr<client::Session>> CheckIn(size_t i) {
    ASSIGN_OR_RETURN(client::SessionConfig sc,
                     SessionConfigFor(static_cast<int>(i), config_, agg_config_, keys_, endpoint_,
                                      data_.Examples(i), executor_));
    sc.checkin = true;
    sc.wake_by_timer = false;
    return client::Session::Create(context_, sc);
  }

  Status Rejoin(size_t i, const wire::Update& outbox) {
    ASSIGN_OR_RETURN(std::unique_ptr<client::Session> session, CheckIn(i));
    RETURN_IF_ERROR(session->ResumeUpdate(outbox));
    active_[i] = std::move(session);
    return Status::Ok();
  }

  double SecondsSinceStart() const { return std::chrono::duration<double>(Clock::now() - started_).count(); }

  void Vanish(size_t i) {
    active_.erase(i);
    faults_.erase(i);
    wake_[i] = released_ + 2;
  }

  void Later(Clock::time_point now, double seconds, std::function<Status(TrainerPool&)> action) {
    due_.emplace(now + SecondsOf(seconds), std::move(action));
  }

  Status RunDue(TrainerPool& pool, Clock::time_point now) {
    while (!due_.empty() && due_.begin()->first <= now) {
      auto action = std::move(due_.begin()->second);
      due_.erase(due_.begin());
      RETURN_IF_ERROR(action(pool));
    }
    return Status::Ok();
  }

  // round 7/20 | checked in 1234 | reporting 800/1000 | 1m02s elapsed | ETA 2m10s
  void ShowProgress(Clock::time_point now) {
    const wire::StatusReply& s = status_;
    if (!first_round_ && (s.round_active() || s.rounds_completed() > 0)) first_round_ = now;
    std::string line = "round " + std::to_string(s.selecting_round() ? s.selecting_round() : s.round()) +
                       "/" + std::to_string(s.rounds_total());
    if (s.selecting_round()) {
      line += " | selecting, " + std::to_string(s.checked_in()) + " checked in";
    } else if (s.round_active()) {
      line +=
          " | reporting " + std::to_string(s.updates_received()) + "/" + std::to_string(s.updates_expected());
    }
    line += " | " + std::to_string(active_.size()) + " devices connected | " +
            ProgressLine::Duration(std::chrono::duration<double>(now - started_).count()) + " elapsed";
    if (first_round_ && s.rounds_completed() > 0) {
      const double per_round = std::chrono::duration<double>(now - *first_round_).count() /
                               static_cast<double>(s.rounds_completed());
      line += " | ETA " + ProgressLine::Duration(per_round * (s.rounds_total() - s.rounds_completed()));
    }
    progress_->Update(line);
  }

  // Takes room for one more device session if this process has it: its
  // open files (core/fds.h) sampled every 250 ms, three per session
  // (ZeroMQ's mailbox and the connection here, and the connection at an
  // aggregator in the same process), counted down in between.
  bool TakeSessionRoom(Clock::time_point now) {
    if (now - room_sampled_ >= std::chrono::milliseconds(250)) {
      room_sampled_ = now;
      const std::optional<FdUsage> fds = ReadFdUsage();
      room_ = fds ? fds->headroom() / 3 : SIZE_MAX;
      if (room_ > 0) at_fd_limit_ = false;
    }
    if (room_ == 0) return false;
    if (room_ != SIZE_MAX) --room_;
    return true;
  }

  // The devices due by `round` (and, in asynchronous rounds, by the time
  // their ComeBack named) that are online check in.
  Status Release(uint32_t round, Clock::time_point now) {
    if (round != released_) retry_pending_ = false;
    released_ = round;
    const double seconds = SecondsSinceStart();
    const bool async = agg_config_.async.enabled();
    for (size_t i = 0; i < wake_.size(); ++i) {
      // A time to wait counts in asynchronous rounds, and for a retry of the
      // round it was sent away from; a later round's release frees it.
      const bool waiting = wake_at_[i] > now && (async || wake_[i] == round);
      if (wake_[i] > round || waiting || active_.count(i)) continue;
      // Offline now: it checks in at the first round it is online.
      if (!Available(config_.model, agg_config_.seed, i, round, seconds)) continue;
      if (!TakeSessionRoom(now)) {
        // This process is out of file descriptors for now: the rest check
        // in at a later status reply, as sessions close.
        retry_pending_ = true;
        if (!at_fd_limit_) {
          at_fd_limit_ = true;
          LOG_WARN("sim", "devices wait to check in: this process is near its limit of open files ("
                              << active_.size() << " devices connected; raise `ulimit -n`, or run more "
                              << "shards)");
        }
        break;
      }
      ASSIGN_OR_RETURN(std::unique_ptr<client::Session> session, CheckIn(i));
      active_.emplace(i, std::move(session));
      released_for_[i] = round;
    }
    return Status::Ok();
  }

  const SimConfig& config_;
  ProgressLine* progress_;
  const ShardSpec slice_;
  const Clock::time_point started_ = Clock::now();
  Clock::time_point last_reply_ = Clock::now();
  std::optional<Clock::time_point> first_round_;
  const aggregator::AggregatorConfig& agg_config_;
  const FleetKeys& keys_;
  net::Context* context_;
  const std::string endpoint_;
  const FleetData& data_;
  std::function<void(std::function<void()>)> executor_;
  std::vector<uint32_t> wake_;              // per device: the round it checks in for
  std::vector<Clock::time_point> wake_at_;  // asynchronous rounds: and the time
  std::vector<uint32_t> released_for_;      // per device: the last round it checked in for
  bool retry_pending_ = false;              // devices wait to try the open selection again
  size_t room_ = SIZE_MAX;                  // TakeSessionRoom
  Clock::time_point room_sampled_{};
  bool at_fd_limit_ = false;
  std::map<size_t, std::unique_ptr<client::Session>> active_;
  uint32_t released_ = 0;
  std::unique_ptr<net::ClientSocket> observer_;
  bool asked_ = false;
  Clock::time_point asked_at_{}, next_ask_{};
  uint64_t request_id_ = 0;
  wire::StatusReply status_;
  uint64_t check_ins_ = 0;
  size_t peak_active_ = 0;
  size_t devices_ = 0;
  DueAt due_;
  std::map<size_t, Fault> faults_;   // this round's fault of each device with a task
  std::set<size_t> drop_when_away_;  // dropped after sending: away longer once acknowledged
  Adversary adversary_;
  std::vector<std::pair<Clock::time_point, std::unique_ptr<client::Session>>> zombies_;
  InjectedFaults injected_;
};

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

// The aggregator's settings in a simulation: its store in out_dir (fresh
// unless resuming), every device needed before the first round with
// long-lived connections, or the check-ins selection gets with check-in.
// A check-in fleet's N from `fraction` counts the devices only: the
// aggregator's allowlist also holds the simulator's observer keys, which
// its own fleet size would count. Server and shards size rounds the same.
aggregator::AggregatorConfig WithRoundSize(const SimConfig& config) {
  aggregator::AggregatorConfig agg_config = config.aggregator;
  aggregator::CheckInConfig& c = agg_config.checkin;
  if (c.enabled && c.clients_per_round == 0) {
    c.clients_per_round = static_cast<int>(
        aggregator::UpdatesPerRound(0, agg_config.fraction, static_cast<size_t>(config.clients)));
  }
  return agg_config;
}

aggregator::AggregatorConfig SimAggregatorConfig(const SimConfig& config, bool fresh) {
  aggregator::AggregatorConfig agg_config = WithRoundSize(config);
  agg_config.store_path = (std::filesystem::path(config.out_dir) / "store").string();
  std::error_code ec;
  if (fresh) std::filesystem::remove_all(agg_config.store_path, ec);
  if (agg_config.checkin.enabled) {
    agg_config.min_clients = std::min(agg_config.min_clients, config.clients);
  } else {
    agg_config.min_clients = config.clients;
  }
  return agg_config;
}

// The serving side of a simulation: the aggregator with the evaluation on
// the test set, one line per round (through the progress line), and the
// round log the outputs are written from.
class SimServer {
 public:
  static StatusOr<std::unique_ptr<SimServer>> Create(const SimConfig& config,
                                                     const aggregator::AggregatorConfig& agg_config,
                                                     const FleetData& data, net::Context* context,
                                                     ProgressLine* progress, bool resume) {
    std::unique_ptr<SimServer> server(new SimServer(config, data, progress));
    server->log_path_ = (std::filesystem::path(config.out_dir) / "rounds.jsonl").string();
    server->log_.open(server->log_path_, resume ? std::ios::app : std::ios::trunc);
    if (!server->log_) return Unavailable("cannot write " + server->log_path_);
    ASSIGN_OR_RETURN(training::ModelSpec spec, ModelSpecOf(config));
    ASSIGN_OR_RETURN(server->eval_runner_,
                     training::ModelRunner::Create(spec, DeriveSeed(agg_config.seed, "init")));
    SimServer* self = server.get();
    aggregator::EvalFn eval = [self](const Weights& w) -> StatusOr<aggregator::EvalMetrics> {
      RETURN_IF_ERROR(self->eval_runner_->SetWeights(w));
      ASSIGN_OR_RETURN(training::EvalResult r, self->eval_runner_->Evaluate(self->test_view_));
      return aggregator::EvalMetrics{r.loss, r.accuracy, r.auc, r.mae};
    };
    const uint32_t rounds = agg_config.rounds;
    aggregator::RoundFn on_round = [self, rounds](const aggregator::RoundSummary& r) {
      std::lock_guard<std::mutex> lock(self->mu_);
      self->log_ << RoundToJson(r).dump() << "\n";
      self->log_.flush();
      if (!self->config_.quiet) self->progress_->Print(FormatRound(r, rounds));
    };
    ASSIGN_OR_RETURN(server->agg_,
                     aggregator::Aggregator::Create(agg_config, context, server->eval_runner_->GetWeights(),
                                                    eval, on_round));
    if (const std::string url = server->agg_->http_url(); !url.empty()) {
      // Where to look (and, for scripts and tests, OUT/http.url).
      std::printf("metrics: %s/metrics\n", url.c_str());
      std::fflush(stdout);
      std::ofstream((std::filesystem::path(config.out_dir) / "http.url").string()) << url << "\n";
    }
    return server;
  }

  aggregator::Aggregator& agg() { return *agg_; }
  // The rounds of the run (those before a restart included), once it is over.
  StatusOr<SimResult> Result(Clock::time_point start) {
    // The aggregator's counters at the end, as /metrics showed them.
    const std::string prom = (std::filesystem::path(config_.out_dir) / "metrics.prom").string();
    std::ofstream(prom) << agg_->RenderMetrics();
    agg_.reset();
    log_.close();
    SimResult result;
    ASSIGN_OR_RETURN(result.rounds, ReadRoundLog(log_path_));
    for (size_t i = 0; i < data_.size(); ++i) result.train_examples += data_.Examples(i);
    result.SetElapsed(start);
    SetFinalFigures(&result);
    return result;
  }

 private:
  SimServer(const SimConfig& config, const FleetData& data, ProgressLine* progress)
      : config_(config), data_(data), progress_(progress), test_view_(training::DataView::All(data.test)) {}

  const SimConfig& config_;
  const FleetData& data_;
  ProgressLine* progress_;
  const training::DataView test_view_;
  std::unique_ptr<training::ModelRunner> eval_runner_;
  std::mutex mu_;
  std::string log_path_;
  std::ofstream log_;
  std::unique_ptr<aggregator::Aggregator> agg_;  // last: its thread may call the members above
};

// What every federated run checks before loading any data.
Status CheckFleetConfig(const SimConfig& config) {
  if (config.clients < 1) return InvalidArgument("need at least one client");
  RETURN_IF_ERROR(config.model.Validate());
  const FleetModel plain;
  if (!config.aggregator.checkin.enabled &&
      (config.model.any_fault() || config.model.availability != plain.availability ||
       config.model.speed != plain.speed || config.model.latency_ms > 0 || config.model.bandwidth_mbps > 0 ||
       config.model.loss > 0)) {
    return InvalidArgument(
        "a fleet's heterogeneity and faults are simulated on check-in fleets: add --checkin");
  }
  if (!config.aggregator.model_personal.empty()) {
    // One trainer thread serves many simulated devices, so their personal
    // layers would mix.
    return InvalidArgument("personal layers are not simulated yet (run devices as separate clients)");
  }
  return Status::Ok();
}

Status MakeOutDir(const SimConfig& config) {
  std::error_code ec;
  std::filesystem::create_directories(config.out_dir, ec);
  if (ec) return Unavailable("cannot create output directory " + config.out_dir + ": " + ec.message());
  return Status::Ok();
}

// Runs SecAgg steps on the trainer pool while there is one (`*slot`), and
// inline before it exists and after it is gone.
std::function<void(std::function<void()>)> OnPoolOrInline(TrainerPool* const* slot) {
  return [slot](std::function<void()> work) {
    if (*slot != nullptr) {
      (*slot)->SubmitWork(std::move(work));
    } else {
      work();
    }
  };
}

int Workers(const SimConfig& config) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::min(config.workers > 0 ? config.workers : cores, config.clients);
}

}  // namespace

StatusOr<SimResult> RunSimulation(const SimConfig& config) {
  const auto start = Clock::now();
  if (config.clients < 1) return InvalidArgument("need at least one client");
  if (config.central_epochs == 0) RETURN_IF_ERROR(CheckFleetConfig(config));
  RETURN_IF_ERROR(MakeOutDir(config));
  ASSIGN_OR_RETURN(FleetData data, LoadFleetData(config));
  if (config.central_epochs > 0) {
    ASSIGN_OR_RETURN(SimResult central, RunCentral(config, data));
    RETURN_IF_ERROR(WriteOutputs(config, central));
    return central;
  }
  aggregator::AggregatorConfig agg_config = SimAggregatorConfig(config, /*fresh=*/true);
  // In one process the devices away stop with the aggregator.
  if (agg_config.checkin.enabled)
    agg_config.finish_grace_seconds = std::min(agg_config.finish_grace_seconds, 0.5);
  ASSIGN_OR_RETURN(FleetKeys keys, MakeKeys(config, &agg_config));

  // The aggregator and the devices each get a ZeroMQ context, so that each
  // side has its own I/O thread (CURVE handshakes and encryption run
  // there): one thread for both halved the rate of check-ins.
  net::Context agg_context(1);
  net::Context context(1);
  ProgressLine progress(!config.quiet);
  ASSIGN_OR_RETURN(std::unique_ptr<SimServer> server,
                   SimServer::Create(config, agg_config, data, &agg_context, &progress, /*resume=*/false));
  aggregator::Aggregator* agg = &server->agg();
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

  // The sessions outlive the trainer pool: a SecAgg step running on a
  // trainer refers to its session. Until the pool exists (and after it is
  // gone) such steps run inline.
  Status client_status;
  std::vector<std::unique_ptr<client::Session>> sessions;
  TrainerPool* pool_slot = nullptr;
  auto executor = OnPoolOrInline(&pool_slot);
  for (int i = 0; i < config.clients && client_status.ok() && !agg_config.checkin.enabled; ++i) {
    StatusOr<client::SessionConfig> sc = SessionConfigFor(i, config, agg_config, keys, agg->endpoint(),
                                                          data.Examples(static_cast<size_t>(i)), executor);
    StatusOr<std::unique_ptr<client::Session>> s =
        sc.ok() ? client::Session::Create(&context, *sc)
                : StatusOr<std::unique_ptr<client::Session>>(sc.status());
    if (s.ok()) {
      sessions.push_back(std::move(s).value());
    } else {
      client_status = s.status();
    }
  }
  uint64_t check_ins = 0;
  size_t peak_active = 0;
  InjectedFaults injected;
  {
    TrainerPool pool(Workers(config), config.model_path, &data, keys.model_key, agg_config.federation);
    pool_slot = &pool;
    if (client_status.ok() && agg_config.checkin.enabled) {
      CheckInFleet fleet(config, agg_config, keys, &context, agg->endpoint(), data, executor, &progress);
      client_status = fleet.Drive(pool, agg_stopped);
      check_ins = fleet.check_ins();
      peak_active = fleet.peak_active();
      injected = fleet.injected();
    } else if (client_status.ok()) {
      Adversary adversary(config.model, data.size(), agg_config.seed);
      client_status = DriveFleet(sessions, pool, agg_stopped, &adversary);
      injected.poisoned = adversary.poisoned();
    }
  }
  pool_slot = nullptr;
  if (!client_status.ok()) agg->RequestStop();
  agg_thread.join();
  sessions.clear();
  RETURN_IF_ERROR(agg_status.WithContext("aggregator"));
  RETURN_IF_ERROR(client_status.WithContext("simulated clients"));
  progress.Clear();
  ASSIGN_OR_RETURN(SimResult result, server->Result(start));
  result.check_ins = check_ins;
  result.peak_active_devices = peak_active;
  result.malicious_fraction = config.model.malicious;
  result.attack = config.model.attack;
  result.injected = injected;
  RETURN_IF_ERROR(WriteOutputs(config, result));
  return result;
}

StatusOr<SimResult> ServeSimulation(const SimConfig& config, const ServeOptions& options) {
  const auto start = Clock::now();
  if (!config.aggregator.checkin.enabled) {
    return InvalidArgument(
        "flotilla sim serve runs check-in simulations (--checkin): its shards' devices "
        "join by checking in");
  }
  if (config.central_epochs > 0)
    return InvalidArgument("the central baseline runs in one process (flotilla sim)");
  RETURN_IF_ERROR(CheckFleetConfig(config));
  RETURN_IF_ERROR(MakeOutDir(config));
  ASSIGN_OR_RETURN(FleetData data, LoadFleetData(config, /*device_data=*/false));
  aggregator::AggregatorConfig agg_config = SimAggregatorConfig(config, /*fresh=*/!options.resume);
  agg_config.finish_grace_seconds = options.finish_grace_seconds;
  ASSIGN_OR_RETURN(FleetKeys keys, MakeKeys(config, &agg_config));
  training::SetTorchThreads(1);
  net::Context context(1);
  ProgressLine progress(false);  // the shards show progress; the server prints rounds
  ASSIGN_OR_RETURN(std::unique_ptr<SimServer> server,
                   SimServer::Create(config, agg_config, data, &context, &progress, options.resume));
  const std::string endpoint = server->agg().endpoint();
  if (!options.endpoint_file.empty()) {
    const std::string tmp = options.endpoint_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << endpoint << "\n";
      if (!out) return Unavailable("cannot write " + tmp);
    }
    std::error_code ec;
    std::filesystem::rename(tmp, options.endpoint_file, ec);
    if (ec) return Unavailable("cannot write " + options.endpoint_file + ": " + ec.message());
  }
  if (!config.quiet) {
    std::printf("serving on %s: %d devices, %s\n", endpoint.c_str(), config.clients,
                options.resume ? "resuming the store" : "fresh store");
    std::fflush(stdout);
  }
  RETURN_IF_ERROR(server->agg().Run().WithContext("aggregator"));
  ASSIGN_OR_RETURN(SimResult result, server->Result(start));
  RETURN_IF_ERROR(WriteOutputs(config, result));
  return result;
}

StatusOr<SimResult> ReadServedResult(const SimConfig& config) {
  SimResult result;
  ASSIGN_OR_RETURN(result.rounds,
                   ReadRoundLog((std::filesystem::path(config.out_dir) / "rounds.jsonl").string()));
  SetFinalFigures(&result);
  return result;
}

StatusOr<ShardSpec> ResolveShard(ShardSpec flags, bool index_given, bool count_given) {
  auto env_int = [](const char* name) -> std::optional<int> {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return std::nullopt;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end != '\0' || n < 0 || n > 1000000) return std::nullopt;
    return static_cast<int>(n);
  };
  ShardSpec s = flags;
  const char* source = "flags";
  if (!index_given) {
    if (auto rank = env_int("OMPI_COMM_WORLD_RANK")) {
      s.index = *rank;
      if (!count_given) s.count = env_int("OMPI_COMM_WORLD_SIZE").value_or(s.count);
      source = "OpenMPI";
    } else if (auto proc = env_int("SLURM_PROCID")) {
      s.index = *proc;
      if (!count_given) s.count = env_int("SLURM_NTASKS").value_or(s.count);
      source = "Slurm";
    } else if (auto job = env_int("JOB_COMPLETION_INDEX")) {
      s.index = *job;
      source = "Kubernetes";
      if (!count_given) {
        return InvalidArgument(
            "a Kubernetes Indexed Job gives the shard's index only: pass --of N "
            "(the Job's completions)");
      }
    } else {
      return InvalidArgument(
          "no shard index: pass --index I --of N, or start the shards with mpirun, srun "
          "or a Kubernetes Indexed Job");
    }
  }
  if (s.count > FleetKeys::kMaxShards) {
    return InvalidArgument("at most " + std::to_string(FleetKeys::kMaxShards) + " shards (got " +
                           std::to_string(s.count) + ")");
  }
  if (s.count < 1 || s.index < 0 || s.index >= s.count) {
    return InvalidArgument("shard index " + std::to_string(s.index) + " of " + std::to_string(s.count) +
                           " (from " + source + "): need 0 <= index < count");
  }
  if (s.join.empty())
    return InvalidArgument("a shard needs --join ENDPOINT (what flotilla sim serve printed)");
  return s;
}

StatusOr<ShardResult> RunShard(const SimConfig& config, const ShardSpec& shard) {
  const auto start = Clock::now();
  if (!config.aggregator.checkin.enabled) {
    return InvalidArgument("shards drive check-in simulations (--checkin, as the server)");
  }
  RETURN_IF_ERROR(CheckFleetConfig(config));
  ASSIGN_OR_RETURN(FleetData data, LoadFleetData(config));
  aggregator::AggregatorConfig agg_config = WithRoundSize(config);
  ASSIGN_OR_RETURN(FleetKeys keys, MakeKeys(config, &agg_config, /*allowlist=*/false));
  training::SetTorchThreads(1);
  net::Context context(1);
  ProgressLine progress(!config.quiet);
  std::atomic<bool> never{false};
  TrainerPool* pool_slot = nullptr;
  auto executor = OnPoolOrInline(&pool_slot);
  ShardResult result;
  Status status;
  {
    TrainerPool pool(Workers(config), config.model_path, &data, keys.model_key, agg_config.federation);
    pool_slot = &pool;
    CheckInFleet fleet(config, agg_config, keys, &context, shard.join, data, executor, &progress, shard);
    status = fleet.Drive(pool, never);
    result.devices = fleet.devices();
    result.check_ins = fleet.check_ins();
    result.peak_active = fleet.peak_active();
    result.injected = fleet.injected();
  }
  progress.Clear();
  RETURN_IF_ERROR(
      status.WithContext("shard " + std::to_string(shard.index) + " of " + std::to_string(shard.count)));
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace flotilla::sim
