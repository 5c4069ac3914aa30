#include "aggregator/round_engine.h"

#include <algorithm>
#include <cmath>

#include "core/clock.h"
#include "core/log.h"
#include "core/rng.h"
#include "proto/codec.h"

namespace flotilla::aggregator {

namespace {
// A device sent away at the connection limit tries the same selection again
// within this many shortest waits (min_come_back); selection closes at the
// limit once none was held for as long.
constexpr double kLimitRetrySpan = 5.0;
}  // namespace

RoundEngine::RoundEngine(const AggregatorConfig& config, Store* store, ClientRegistry* clients, EvalFn eval,
                         RoundFn on_round)
    : config_(config),
      store_(store),
      clients_(clients),
      eval_(std::move(eval)),
      on_round_(std::move(on_round)),
      norm_history_(config.validation.norm.window),
      backoff_(config.failed_round_backoff_seconds, config.max_failed_round_backoff_seconds) {}

UpdateExpectation RoundEngine::ExpectationNow() const {
  UpdateExpectation e;
  e.layout = global().layout;
  e.max_norm = norm_history_.Bound(config_.validation.norm, global_norm_);
  e.max_examples = config_.validation.max_examples_per_update;
  e.control = config_.strategy.scaffold;
  return e;
}

void RoundEngine::NoteRecorded(const std::string& client_id, int64_t num_examples, double norm,
                               const google::protobuf::Map<std::string, double>& metrics) {
  received_.insert(client_id);
  norm_history_.Add(norm);
  norms_[client_id] = norm;
  if (auto steps = metrics.find("dpsgd_steps"); steps != metrics.end()) {
    dp_steps_[client_id] = static_cast<int64_t>(std::min(steps->second, 1e12));
  }
  if (auto bit = metrics.find("below_clip"); bit != metrics.end())
    below_clip_[client_id] = bit->second >= 0.5 ? 1 : 0;
  auto loss = metrics.find("train_loss");
  train_loss_[client_id] = {num_examples, loss != metrics.end() ? loss->second : 0.0};
  // Federated evaluation: kept only when complete and plausible.
  auto eval_n = metrics.find("eval_examples"), eval_loss = metrics.find("eval_loss"),
       eval_acc = metrics.find("eval_accuracy");
  if (eval_n != metrics.end() && eval_loss != metrics.end() && eval_acc != metrics.end() &&
      eval_n->second >= 1 && eval_n->second <= 1e9 && std::isfinite(eval_loss->second) &&
      eval_loss->second >= 0 && eval_acc->second >= 0 && eval_acc->second <= 1) {
    federated_eval_[client_id] = {static_cast<int64_t>(eval_n->second), eval_loss->second, eval_acc->second};
  }
}

bool RoundEngine::AwaitsTask(const std::string& client_id) const {
  if (async()) {
    // Any device not already in the buffer, while a slot is free (or to
    // replace the task it has, e.g. after it restarted).
    return active_ && !received_.count(client_id) && (in_flight_.count(client_id) || HasCapacity()) &&
           !clients_->Paused(client_id, now_);
  }
  return active_ && std::binary_search(selected_.begin(), selected_.end(), client_id) &&
         !received_.count(client_id) && !declined_.count(client_id) &&
         !(secure_ && secure_->Advertised(client_id));
}

// Synchronous rounds: the update answers the running round's task.
std::optional<RoundEngine::Refusal> RoundEngine::Refuse(wire::ErrorCode code, std::string reason,
                                                        std::string message, bool counted) {
  return Refusal{code, std::move(reason), std::move(message), counted};
}

std::optional<RoundEngine::Refusal> RoundEngine::CheckSyncUpdate(const std::string& client_id,
                                                                 const wire::Update& update) const {
  if (!active_ && update.round() == round_ &&
      std::binary_search(selected_.begin(), selected_.end(), client_id) && !received_.count(client_id) &&
      !declined_.count(client_id)) {
    // Over-selection: the round kept the first updates and closed.
    return Refuse(wire::ERROR_WRONG_ROUND, "round_closed",
                  "round " + std::to_string(round_) + " closed with enough updates; this one is not needed",
                  false);
  }
  if (!active_ || update.round() != round_) {
    // A resend of an update that was recorded before the round closed (the
    // ack was lost, e.g. in a crash): tell the device it counted.
    if (update.round() <= round_) {
      StatusOr<std::optional<records::RoundRecord>> past = store_->GetRound(update.round());
      if (past.ok() && past->has_value()) {
        const auto& got = past->value().received();
        if (std::find(got.begin(), got.end(), client_id) != got.end()) {
          return Refuse(
              wire::ERROR_DUPLICATE, "duplicate",
              "the update for round " + std::to_string(update.round()) + " was recorded before it closed",
              false);
        }
      }
    }
    return Refuse(wire::ERROR_WRONG_ROUND, "wrong_round",
                  "round " + std::to_string(update.round()) + " is not open (current " +
                      std::to_string(round_) + (active_ ? ", open)" : ", closed)"));
  }
  if (!std::binary_search(selected_.begin(), selected_.end(), client_id)) {
    return Refuse(wire::ERROR_WRONG_ROUND, "not_selected",
                  "client was not selected for round " + std::to_string(round_));
  }
  if (received_.count(client_id)) {
    return Refuse(wire::ERROR_DUPLICATE, "duplicate",
                  "an update for round " + std::to_string(round_) + " is already recorded");
  }
  if (declined_.count(client_id)) {
    return Refuse(wire::ERROR_WRONG_ROUND, "out_of_round",
                  "this device declined round " + std::to_string(round_) + " or its update was refused");
  }
  if (update.model_version() != registry_->version()) {
    return Refuse(wire::ERROR_WRONG_ROUND, "wrong_model",
                  "update is against model version " + std::to_string(update.model_version()) +
                      ", current is " + std::to_string(registry_->version()));
  }
  return std::nullopt;
}

StatusOr<std::optional<RoundEngine::Refusal>> RoundEngine::RecordUpdate(const std::string& client_id,
                                                                        const wire::Update& update,
                                                                        Clock::time_point now) {
  if (secure_) {
    return Refuse(wire::ERROR_UNEXPECTED, "plaintext_in_secure_round",
                  "this round uses secure aggregation: plaintext updates are refused");
  }
  now_ = now;
  uint32_t staleness = 0;
  {
    using R = std::optional<Refusal>;
    ASSIGN_OR_RETURN(R refused, async() ? CheckAsyncUpdate(client_id, update, &staleness)
                                        : StatusOr<R>(CheckSyncUpdate(client_id, update)));
    if (refused) return refused;
  }
  // Content: layout, finite values, norm, example count. A refused update
  // never reaches the store or the merge, and the device is out of the round.
  UpdateVerdict verdict = ValidateUpdate(update.delta(), update.num_examples(), ExpectationNow(),
                                         update.has_control_delta() ? &update.control_delta() : nullptr);
  if (!verdict.accepted()) {
    ++rejected_updates_;
    ++refused_;
    clients_->NoteRejected(client_id, verdict.reason);
    declined_.insert(client_id);
    in_flight_.erase(client_id);
    clients_->AddStrike(client_id, "sent a refused update (" + verdict.reason + ")", now, NowUnixMs());
    return Refuse(wire::ERROR_BAD_UPDATE, verdict.reason, verdict.message);
  }

  records::UpdateRecord record;
  record.set_round(round_);
  record.set_client_id(client_id);
  record.set_num_examples(update.num_examples());
  if (async()) {
    record.set_task_round(update.round());
    record.set_staleness(staleness);
  }
  *record.mutable_delta() = update.delta();
  if (update.has_control_delta()) *record.mutable_control_delta() = update.control_delta();
  for (const auto& [k, v] : update.metrics()) (*record.mutable_metrics())[k] = v;
  record.set_received_unix_ms(NowUnixMs());
  // Durable before acknowledged.
  if (Status st = store_->PutUpdate(record); !st.ok()) {
    if (st.code() == StatusCode::kAlreadyExists)
      return Refuse(wire::ERROR_DUPLICATE, "duplicate", st.message());
    LOG_ERROR("aggregator", "could not store update: " << st.ToString());
    // A full disk or a passing I/O error is not fatal: the device keeps its
    // update and retries; everyone else is still served.
    if (!st.retryable() && st.code() != StatusCode::kResourceExhausted) return st;
    return Refuse(wire::ERROR_INTERNAL, "store", "aggregator could not store the update; retry", false);
  }
  NoteRecorded(client_id, update.num_examples(), verdict.norm, update.metrics());
  if (async()) {
    buffered_[client_id] = Buffered{update.round(), staleness};
    in_flight_.erase(client_id);
  }
  clients_->NoteAccepted(client_id);
  LOG_DEBUG("aggregator", "round " << round_ << ": update " << received_.size() << "/" << selected_.size()
                                   << " from '" << client_id << "' (norm " << verdict.norm << ")");
  return std::optional<Refusal>();
}

void RoundEngine::Decline(const std::string& client_id, uint32_t round, const std::string& reason,
                          Clock::time_point now) {
  now_ = now;
  if (async()) {
    auto task = in_flight_.find(client_id);
    if (task == in_flight_.end() || task->second.round != round) return;
    in_flight_.erase(task);
    if (active_) declined_.insert(client_id);
    LOG_WARN("aggregator", "client '" << (*clients_)[client_id].name << "' declined its task: " << reason);
    clients_->AddStrike(client_id, "declined a task", now, NowUnixMs());
    return;
  }
  if (!active_ || round != round_ || !std::binary_search(selected_.begin(), selected_.end(), client_id) ||
      received_.count(client_id) || declined_.count(client_id)) {
    return;
  }
  declined_.insert(client_id);
  LOG_WARN("aggregator",
           "client '" << (*clients_)[client_id].name << "' declined round " << round << ": " << reason);
  clients_->AddStrike(client_id, "declined round " + std::to_string(round), now, NowUnixMs());
}

wire::Envelope RoundEngine::MakeTask(const std::string& client_id, Clock::time_point now) const {
  wire::Envelope env;
  wire::TrainTask* task = env.mutable_train_task();
  task->set_round(round_);
  task->set_model_version(registry_->version());
  task->set_model_arch(config_.model_arch);
  proto::WeightsToProto(global(), task->mutable_weights());
  wire::TrainConfig* tc = task->mutable_config();
  tc->set_epochs(config_.epochs);
  tc->set_batch_size(config_.batch_size);
  tc->set_learning_rate(config_.LearningRateFor(round_));
  tc->set_momentum(config_.momentum);
  tc->set_weight_decay(config_.weight_decay);
  if (config_.compression != "none") tc->set_compression(config_.compression);
  if (config_.federated_eval) tc->set_evaluate(true);
  if (config_.optimizer != "sgd") tc->set_optimizer(config_.optimizer);
  if (config_.strategy.proximal_mu > 0) tc->set_proximal_mu(config_.strategy.proximal_mu);
  if (config_.strategy.scaffold) {
    tc->set_scaffold(true);
    Weights c = Weights::Zeros(global().layout);
    if (!server_state_.control.empty()) c.data = server_state_.control;
    proto::WeightsToProto(c, task->mutable_control());
  }
  tc->set_seed(DeriveSeed(config_.seed, "train", round_, DeriveSeed(0, client_id)));
  task->set_deadline_seconds(async() ? config_.round_deadline_seconds
                                     : std::chrono::duration<double>(deadline_ - now).count());
  if (config_.model_arch == "torchscript") {
    wire::ModelOptions* options = task->mutable_model_options();
    options->set_buffers(config_.model_buffers);
    if (config_.loss != "cross_entropy") options->set_loss(config_.loss);
    for (const auto& g : config_.model_freeze) options->add_freeze(g);
    for (const auto& g : config_.model_personal) options->add_personal(g);
  }
  task->set_model_signature(registry_->signature());
  task->set_model_round(registry_->round());
  const DpConfig& dp = config_.dp;
  if (dp.client_level()) {
    tc->set_clip_norm(budget_->clip_norm());
    if (dp.mode == DpConfig::Mode::kClientDistributed && !secure_) {
      tc->set_noise_stddev(budget_->DistributedNoiseStddev(selected_.size()));
    }
  } else if (dp.mode == DpConfig::Mode::kRecord) {
    tc->set_dpsgd_noise_multiplier(dp.noise_multiplier);
    tc->set_dpsgd_clip(dp.clip_norm);
    tc->set_dpsgd_sampling_rate(dp.dpsgd_sampling_rate);
  }
  // Under secure aggregation the device clips, quantizes and adds its noise
  // on the integer path (the setup says how), then runs the SecAgg stages.
  if (secure_) *task->mutable_secagg() = secure_->SetupFor(client_id);
  return env;
}

StatusOr<bool> RoundEngine::MaybeStart(Clock::time_point now,
                                       const std::function<bool(const std::string&)>& eligible) {
  if (active_ || federation_done()) return false;
  if (static_cast<int>(clients_->size()) < config_.min_clients) return false;
  if (backoff_.Waiting(now)) return false;  // backing off after failed rounds
  std::vector<std::string> ids;
  for (const auto& [id, client] : *clients_) {
    // Revoked keys stay in the registry but are never sampled.
    if (eligible && !eligible(id)) continue;
    // Under secure aggregation a device needs its identity key.
    if (config_.secagg.enabled && client.secagg_key.size() != 32) continue;
    ids.push_back(id);  // sorted
  }
  if (static_cast<int>(ids.size()) < config_.min_clients) return false;
  // Devices paused after repeated declines or refused updates sit out.
  ids.erase(std::remove_if(ids.begin(), ids.end(),
                           [&](const std::string& id) { return clients_->Paused(id, now); }),
            ids.end());
  if (ids.empty()) return false;
  const DpConfig& dp = config_.dp;
  if (dp.mode == DpConfig::Mode::kRecord) {
    // Per-client budgets: a device whose next round would exceed it is no
    // longer sampled.
    ASSIGN_OR_RETURN(ids, budget_->EligibleDevices(ids));
    if (ids.empty()) {
      LOG_WARN("aggregator", "stopping after " << rounds_done_ << " rounds: the privacy budget is spent");
      return false;
    }
  }
  Sample sample = SampleDevices(std::move(ids), config_.fraction, config_.seed, round_ + 1);
  if (dp.client_level()) {
    ASSIGN_OR_RETURN(bool allowed, budget_->AllowsRound(round_ + 1, sample.sampling_rate));
    if (!allowed) {
      LOG_WARN("aggregator", "stopping after " << rounds_done_ << " rounds: the privacy budget is spent");
      return false;
    }
  }
  return BeginRound(std::move(sample.selected), sample.sampling_rate, now);
}

StatusOr<bool> RoundEngine::BeginRound(std::vector<std::string> selected, double sampling_rate,
                                       Clock::time_point now) {
  ++round_;
  sampling_rate_ = sampling_rate;
  selected_ = std::move(selected);
  target_updates_ = async()                   ? static_cast<size_t>(config_.async.buffer)
                    : config_.checkin.enabled ? std::min(selected_.size(), UpdatesPerRound())
                                              : selected_.size();
  buffered_.clear();
  received_.clear();
  declined_.clear();
  norms_.clear();
  train_loss_.clear();
  federated_eval_.clear();
  bytes_in_ = bytes_out_ = 0;
  dp_steps_.clear();
  below_clip_.clear();
  refused_ = 0;
  // Waiting for check-ins: from selection's opening to this start.
  selection_seconds_ = config_.checkin.enabled && !async()
                           ? std::chrono::duration<double>(now - selection_opened_).count()
                           : 0.0;
  active_ = true;
  started_ = now;
  deadline_ = started_ + SecondsOf(config_.round_deadline_seconds);
  records::RoundRecord record;
  record.set_round(round_);
  record.set_outcome(records::RoundRecord::OUTCOME_RUNNING);
  for (const auto& id : selected_) record.add_selected(id);
  record.set_base_model_version(registry_->version());
  record.set_started_unix_ms(NowUnixMs());
  record.set_sampling_rate(sampling_rate_);
  record.set_target_updates(static_cast<uint32_t>(target_updates_));
  record.set_secure_aggregation(config_.secagg.enabled);
  if (config_.secagg.enabled) {
    // Parameters that cannot work (too few clients for the threshold, a
    // quantization that would overflow) are a configuration error.
    RETURN_IF_ERROR(StartSecureRound());
    record.set_secagg_threshold(secure_->params().threshold);
  }
  if (Status st = store_->PutRound(record); !st.ok()) {
    // Not started: undo, and try again on a later iteration (a full disk
    // is the usual cause; devices wait meanwhile).
    active_ = false;
    secure_.reset();
    --round_;
    if (st.code() != StatusCode::kResourceExhausted && !st.retryable()) return st;
    if (now - last_start_error_log_ > std::chrono::seconds(10)) {
      last_start_error_log_ = now;
      LOG_ERROR("aggregator", "cannot start round " << round_ + 1 << ": " << st.message());
    }
    return false;
  }
  if (last_round_start_ != Clock::time_point{}) {
    const double period = std::chrono::duration<double>(now - last_round_start_).count();
    round_period_seconds_ =
        round_period_seconds_ == 0.0 ? period : 0.7 * round_period_seconds_ + 0.3 * period;
  }
  last_round_start_ = now;
  LOG_DEBUG("aggregator", "round " << round_ << " started with " << selected_.size() << " clients");
  return true;
}

size_t RoundEngine::UpdatesPerRound() const {
  return aggregator::UpdatesPerRound(config_.checkin.clients_per_round, config_.fraction, fleet_);
}

size_t RoundEngine::SelectionTarget() const {
  return aggregator::SelectionTarget(UpdatesPerRound(), config_.checkin.over_selection);
}

bool RoundEngine::Involves(const std::string& client_id) const {
  return held_.count(client_id) || in_flight_.count(client_id) ||
         (active_ && std::binary_search(selected_.begin(), selected_.end(), client_id));
}

bool RoundEngine::MaybeOpenSelection(Clock::time_point now) {
  // Selection opens when the running round has closed. (Opening it while
  // the round trains, as Bonawitz et al. do, made rounds slower on two
  // cores: the check-ins then compete with training for the same cores.)
  if (selecting_ || active_ || federation_done() || backoff_.Waiting(now) || round_ + 1 > config_.rounds)
    return false;
  selecting_ = true;
  selection_opened_ = last_checkin_ = now;
  held_.clear();
  LOG_DEBUG("aggregator",
            "selection for round " << round_ + 1 << " open: wants " << SelectionTarget() << " check-ins");
  return true;
}

RoundEngine::CheckInAnswer RoundEngine::CheckIn(const std::string& client_id, Clock::time_point now,
                                                const std::function<bool(const std::string&)>& eligible) {
  if (async()) {
    // (AwaitsTask said no: every slot is taken, or the device is paused or
    // already in the open buffer.)
    return ComeBack(client_id, now,
                    clients_->Paused(client_id, now) ? "paused after repeated failures"
                    : received_.count(client_id)
                        ? "its update is in version " + std::to_string(registry_->version() + 1) + "'s buffer"
                        : "all " + std::to_string(config_.async.Concurrency()) + " training slots are taken");
  }
  if (!selecting_) {
    return ComeBack(client_id, now,
                    active_ ? "round " + std::to_string(round_) + " is running" : "no round is selecting");
  }
  if (held_.count(client_id)) return CheckInAnswer{true, 0, 0, {}};
  if (eligible && !eligible(client_id)) return ComeBack(client_id, now, "not eligible");
  if (clients_->Paused(client_id, now)) return ComeBack(client_id, now, "paused after repeated failures");
  if (config_.dp.mode == DpConfig::Mode::kRecord) {
    StatusOr<std::vector<std::string>> ok = budget_->EligibleDevices({client_id});
    if (!ok.ok() || ok->empty()) return ComeBack(client_id, now, "its privacy budget is spent");
  }
  // A bound on how many connections selection holds; pace steering keeps
  // check-ins near the target, so only a burst reaches it.
  if (held_.size() >= 4 * std::max<size_t>(SelectionTarget(), 1))
    return ComeBack(client_id, now, "selection for round " + std::to_string(round_ + 1) + " is full");
  if (headroom_ == 0) {
    // Back for this same selection once connections free: after one to
    // kLimitRetrySpan shortest waits (spread by device, so that retries do
    // not come back as one burst).
    CheckInAnswer answer;
    answer.round = round_ + 1;
    Rng rng(DeriveSeed(config_.seed, "connection-limit", round_ + 1, DeriveSeed(0, client_id)));
    answer.after_ms = static_cast<uint32_t>(1000.0 * config_.checkin.min_come_back_seconds *
                                            (1.0 + (kLimitRetrySpan - 1.0) * rng.UniformDouble()));
    answer.reason = "the aggregator is at its limit of open connections; selection for round " +
                    std::to_string(round_ + 1) + " holds " + std::to_string(held_.size());
    return answer;
  }
  if (headroom_ != SIZE_MAX) --headroom_;
  held_.insert(client_id);
  last_checkin_ = now;
  return CheckInAnswer{true, 0, 0, {}};
}

RoundEngine::CheckInAnswer RoundEngine::ComeBack(const std::string& client_id, Clock::time_point now,
                                                 std::string reason) const {
  const CheckInConfig& c = config_.checkin;
  // The round after the running one (or after the one being selected: the
  // device was not taken for it).
  const uint32_t next = round_ + 1 + (selecting_ ? 1 : 0);
  // Async: slots free at any moment, so there is no round's remainder to
  // wait out: the device tries again after a pause, or after the versions
  // its place in the fleet's cycle puts it after (measured time per
  // version; none yet: the shortest pause).
  double period = round_period_seconds_;
  if (!async() && period <= 0) period = std::min(config_.round_deadline_seconds, c.window_seconds);
  double left = 0.0;
  if (!async() && (active_ || selecting_)) {
    left = std::max(
        0.0, period - std::chrono::duration<double>(now - (active_ ? started_ : selection_opened_)).count());
  }
  const double wanted =
      static_cast<double>(async() ? static_cast<size_t>(config_.async.Concurrency()) : SelectionTarget()) *
      c.checkin_margin;
  const ComeBackPlan plan = PlanComeBack(client_id, next, fleet_, wanted, period, left, config_.seed);
  CheckInAnswer answer;
  answer.round = plan.round;
  answer.after_ms = static_cast<uint32_t>(
      1000.0 * std::clamp(plan.seconds, c.min_come_back_seconds, c.max_come_back_seconds));
  answer.reason = std::move(reason);
  return answer;
}

StatusOr<bool> RoundEngine::MaybeCloseSelection(Clock::time_point now, std::vector<std::string>* released) {
  if (!selecting_) return false;  // (selection only opens with no round running)
  const size_t target = SelectionTarget();
  const bool enough =
      held_.size() >= target && now - last_checkin_ >= SecondsOf(config_.checkin.quiet_seconds);
  const bool window = now - selection_opened_ >= SecondsOf(config_.checkin.window_seconds) &&
                      held_.size() >= static_cast<size_t>(config_.min_clients);
  // No room for more connections, and none held since the devices sent
  // away could all have tried again (the last round's connections may
  // still have been closing): waiting would only turn devices away.
  const auto settle = SecondsOf(
      std::max(config_.checkin.quiet_seconds, kLimitRetrySpan * config_.checkin.min_come_back_seconds));
  // (Holding under half of what the server could hold, the limit is the
  // check-ins it has yet to answer: a burst at the selection's opening.)
  const size_t fills = capacity_ == SIZE_MAX ? 0 : std::min(target, capacity_ / 2);
  const bool full = headroom_ == 0 && held_.size() >= static_cast<size_t>(std::max(config_.min_clients, 1)) &&
                    held_.size() >= fills && now - last_checkin_ >= settle &&
                    now - selection_opened_ >= settle;
  if (!enough && !window && !full) return false;
  if (full && !enough && !federation_done()) {
    LOG_WARN("aggregator", "round " << round_ + 1 << ": starting with the " << held_.size() << " of "
                                    << target
                                    << " wanted check-ins it could hold: the aggregator is at its limit of "
                                    << "open connections (raise `ulimit -n`, or LimitNOFILE= under systemd)");
  }
  if (federation_done()) {
    selecting_ = false;
    released->assign(held_.begin(), held_.end());
    held_.clear();
    return false;
  }
  std::vector<std::string> candidates(held_.begin(), held_.end());
  Sample sample = SampleCount(candidates, target, config_.seed, round_ + 1);
  // The sampling rate against the fleet: the chance a registered device is
  // in the round (held ones were chosen by availability, not by us).
  const double rate =
      fleet_ > 0 ? std::min(1.0, static_cast<double>(sample.selected.size()) / static_cast<double>(fleet_))
                 : 1.0;
  std::vector<std::string> chosen = sample.selected;
  ASSIGN_OR_RETURN(bool started, BeginRound(std::move(sample.selected), rate, now));
  if (!started) return false;  // the store refused the record: selection stays open
  selecting_ = false;
  released->clear();
  for (const auto& id : candidates) {
    if (!std::binary_search(chosen.begin(), chosen.end(), id)) released->push_back(id);
  }
  held_.clear();
  LOG_DEBUG("aggregator", "round " << round_ << ": selected " << selected_.size() << " of "
                                   << candidates.size() << " check-ins (keeps the first " << target_updates_
                                   << " updates)");
  return true;
}

Status RoundEngine::StartSecureRound() {
  SecureRound::Options options;
  options.round = round_;
  options.clients = selected_;
  for (const auto& id : selected_) {
    const ClientRegistry::Client& client = clients_->at(id);
    options.identity_keys.emplace_back(client.secagg_key.begin(), client.secagg_key.end());
    options.identity_certs.push_back(client.secagg_cert);
  }
  options.vector_length = static_cast<uint32_t>(global().data.size());
  const DpConfig& dp = config_.dp;
  options.clip_norm = dp.client_level() ? budget_->clip_norm() : config_.secagg.clip_norm;
  if (dp.mode == DpConfig::Mode::kClientDistributed) {
    options.noise_stddev = budget_->DistributedNoiseStddev(selected_.size());
  }
  options.graph_seed = DeriveSeed(config_.seed, "secagg-graph", round_);
  options.advertise_deadline = deadline_;
  ASSIGN_OR_RETURN(secure_, SecureRound::Start(config_.secagg, std::move(options)));
  const privacy::SecAggParams& p = secure_->params();
  LOG_INFO("aggregator", "round " << round_ << ": secure aggregation over " << p.num_clients << " clients, "
                                  << (p.graph == privacy::SecAggGraph::kHarary
                                          ? "SecAgg+ (Harary degree " + std::to_string(p.degree) + ")"
                                          : std::string("complete graph"))
                                  << ", threshold " << p.threshold << ", " << p.bit_width << "-bit, scale "
                                  << secure_->quantization().scale);
  return Status::Ok();
}

StatusOr<bool> RoundEngine::MaybeFinish(Clock::time_point now, std::vector<SecureRound::Reply>* out) {
  now_ = now;
  if (!active_) return false;
  bool due = false;
  bool deadline_passed = false;
  if (async()) {
    // A full buffer; or, past the deadline, a partial one with min_updates
    // (an emptier one stays open: nothing is lost by waiting).
    due = received_.size() >= target_updates_ ||
          (now >= deadline_ && static_cast<int>(received_.size()) >= std::max(config_.min_updates, 1));
    deadline_passed = due && received_.size() < target_updates_;
  } else if (secure_) {
    std::vector<SecureRound::Reply> replies = secure_->Advance(now, declined_);
    out->insert(out->end(), std::make_move_iterator(replies.begin()), std::make_move_iterator(replies.end()));
    due = secure_->done() || secure_->aborted();
  } else if (received_.size() + declined_.size() >= selected_.size() || received_.size() >= target_updates_) {
    due = true;
  } else if (now >= deadline_) {
    due = deadline_passed = true;
  }
  if (!due) return false;
  RETURN_IF_ERROR(FinishRound(deadline_passed));
  return true;
}

Status RoundEngine::FinishRound(bool deadline_passed) {
  active_ = false;
  closed_ = Clock::now();
  // A secure round's contributors are the survivors of its last stage.
  std::string failure;
  if (secure_) {
    received_.clear();
    if (secure_->done()) {
      received_.insert(secure_->survivors().begin(), secure_->survivors().end());
    } else {
      failure = "secure aggregation aborted: " + std::string(secure_->abort_status().message());
    }
  }
  RoundSummary summary;
  summary.round = round_;
  summary.secure = secure_ != nullptr;
  summary.selected = static_cast<int>(selected_.size());
  summary.received = static_cast<int>(received_.size());
  summary.refused = refused_;
  summary.declined = static_cast<int>(declined_.size()) - refused_;
  summary.unreported = std::max(0, summary.selected - summary.received - static_cast<int>(declined_.size()));
  summary.selection_seconds = selection_seconds_;
  summary.train_seconds = std::chrono::duration<double>(closed_ - started_).count();
  records::RoundRecord record;
  record.set_round(round_);
  for (const auto& id : selected_) record.add_selected(id);
  for (const auto& id : received_) record.add_received(id);
  for (const auto& [id, norm] : norms_) {
    if (received_.count(id)) record.add_update_norms(static_cast<float>(norm));
  }
  record.set_base_model_version(registry_->version());
  record.set_started_unix_ms(
      NowUnixMs() -
      static_cast<int64_t>(1000 * std::chrono::duration<double>(Clock::now() - started_).count()));
  record.set_target_updates(static_cast<uint32_t>(target_updates_));
  record.set_sampling_rate(sampling_rate_);
  if (secure_) {
    record.set_secure_aggregation(true);
    record.set_secagg_threshold(secure_->params().threshold);
    record.set_secagg_survivors(static_cast<uint32_t>(received_.size()));
  }
  if (async()) {
    // Tasks of this buffer still training count toward later ones.
    summary.unreported = 0;
    summary.async = true;
    record.set_async_buffer(true);
    uint64_t sum = 0;
    for (const auto& id : received_) {
      auto b = buffered_.find(id);
      const Buffered got = b != buffered_.end() ? b->second : Buffered{};
      record.add_received_task_rounds(got.task_round);
      record.add_received_staleness(got.staleness);
      sum += got.staleness;
      summary.max_staleness = std::max(summary.max_staleness, got.staleness);
    }
    if (!received_.empty())
      summary.mean_staleness = static_cast<double>(sum) / static_cast<double>(received_.size());
  }
  // Krum and Bulyan need enough updates for the F they tolerate.
  const int min_updates = std::max(config_.min_updates, config_.strategy.MinUpdates());
  if (failure.empty() && static_cast<int>(received_.size()) < min_updates) {
    failure =
        "only " + std::to_string(received_.size()) + " of " + std::to_string(selected_.size()) +
        " updates by the deadline (min " + std::to_string(min_updates) +
        (min_updates > config_.min_updates ? " for " + config_.strategy.CombinerName() : std::string()) + ")";
  }
  if (failure.empty() && deadline_passed) {
    LOG_WARN("aggregator", "round " << round_ << " deadline passed with " << received_.size() << " of "
                                    << selected_.size() << " updates; aggregating those");
  }
  // The new model, unless the round already failed. A merge or a result
  // that is not usable fails the round; it never stops the aggregator.
  std::optional<Weights> next;
  std::vector<records::LedgerEntry> ledger;  // committed with the round
  if (failure.empty()) {
    StatusOr<Weights> merged = secure_ ? MergeSecureSum() : MergeStoredUpdates();
    StatusOr<Weights> applied =
        merged.ok() ? StatusOr<Weights>(FinalizeMerge(std::move(merged).value(), &record, &summary, &ledger))
                    : StatusOr<Weights>(merged.status());
    if (applied.ok()) {
      next = std::move(applied).value();
    } else if (applied.status().code() == StatusCode::kUnavailable) {
      secure_.reset();
      return applied.status().WithContext("merging round " + std::to_string(round_));  // the store failed
    } else {
      failure = "the merged model is not usable (" + std::string(applied.status().message()) +
                "); the previous model is kept";
    }
  }
  secure_.reset();
  // The round's traffic, whatever its outcome.
  summary.bytes_in = bytes_in_;
  summary.bytes_out = bytes_out_;
  record.set_bytes_in(bytes_in_);
  record.set_bytes_out(bytes_out_);
  record.set_declined(static_cast<uint32_t>(summary.declined));
  record.set_refused(static_cast<uint32_t>(summary.refused));
  record.set_selection_seconds(summary.selection_seconds);
  record.set_train_seconds(summary.train_seconds);
  if (!failure.empty()) return CommitFailed(failure, std::move(record), std::move(summary));
  return CommitCompleted(std::move(*next), std::move(record), std::move(summary), std::move(ledger));
}

Status RoundEngine::CommitFailed(const std::string& failure, records::RoundRecord record,
                                 RoundSummary summary) {
  record.set_outcome(records::RoundRecord::OUTCOME_FAILED);
  record.set_note(failure);
  const double wait = backoff_.Failed(Clock::now());
  LOG_WARN("aggregator", "round " << round_ << " failed (" << backoff_.failed_in_a_row()
                                  << " in a row): " << failure << "; next round in " << wait << " s");
  summary.seconds = std::chrono::duration<double>(Clock::now() - started_).count();
  summary.merge_seconds = std::chrono::duration<double>(Clock::now() - closed_).count();
  record.set_seconds(summary.seconds);
  record.set_merge_seconds(summary.merge_seconds);
  RoundCommit commit;
  commit.round = record;
  commit.clients = clients_->Dirty(NowUnixMs());
  RETURN_IF_ERROR(store_->CommitRound(commit));
  clients_->MarkWritten(commit.clients);
  summary.model_version = registry_->version();
  summary.finished_unix_ms = NowUnixMs();
  history_.push_back(summary);
  if (on_round_) on_round_(summary);
  return Status::Ok();
}

StatusOr<Weights> RoundEngine::TailAverage(const Weights& own, size_t* count) const {
  std::vector<double> sum(own.data.begin(), own.data.end());
  size_t n = 1;
  // Newest first: versions ascend with the rounds that produced them.
  const std::vector<uint64_t>& stored = registry_->stored();
  for (auto v = stored.rbegin(); v != stored.rend(); ++v) {
    ASSIGN_OR_RETURN(records::ModelRecord m, store_->GetModel(*v));
    if (m.round() < config_.swa_from || m.round() == 0) break;
    ASSIGN_OR_RETURN(Weights w, proto::WeightsFromProto(m.weights(), own.layout));
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += static_cast<double>(w.data[i]);
    ++n;
  }
  Weights mean = own;
  for (size_t i = 0; i < sum.size(); ++i) mean.data[i] = static_cast<float>(sum[i] / static_cast<double>(n));
  *count = n;
  return mean;
}

Status RoundEngine::CommitCompleted(Weights next, records::RoundRecord record, RoundSummary summary,
                                    std::vector<records::LedgerEntry> ledger) {
  if (config_.dp.enabled()) summary.epsilon = budget_->epsilon();
  double loss_sum = 0.0;
  int64_t examples = 0;
  for (const auto& [id, el] : train_loss_) {
    loss_sum += el.second * static_cast<double>(el.first);
    examples += el.first;
  }
  summary.total_examples = examples;
  // Under secure aggregation no per-device loss reaches the aggregator.
  summary.mean_train_loss = examples > 0     ? loss_sum / static_cast<double>(examples)
                            : summary.secure ? NAN
                                             : 0.0;

  // The federation's last round (failed rounds do not count).
  const bool last = rounds_done_ + 1 >= config_.rounds;
  size_t averaged = 0;
  if (last && config_.swa_from > 0) {
    // Publish the mean of the last rounds' models (tail averaging); the
    // round's own merge is evaluated for the log line.
    std::optional<EvalMetrics> own;
    if (eval_) {
      StatusOr<EvalMetrics> m = eval_(next);
      if (m.ok()) own = *m;
    }
    StatusOr<Weights> mean = TailAverage(next, &averaged);
    if (mean.ok()) {
      next = std::move(mean).value();
      record.set_note("the mean of the " + std::to_string(averaged) + " models of rounds " +
                      std::to_string(config_.swa_from) + "-" + std::to_string(round_) + " (swa_from)");
      if (own) {
        LOG_INFO("aggregator", "round " << round_ << " publishes the mean of the " << averaged
                                        << " models of rounds " << config_.swa_from << "-" << round_
                                        << " (swa_from); the round's own model: test accuracy "
                                        << own->accuracy << ", loss " << own->loss);
      }
    } else {
      averaged = 0;
      LOG_WARN("aggregator", "round " << round_ << " publishes its own model, not the mean of rounds "
                                      << config_.swa_from << "-" << round_
                                      << " (swa_from): " << mean.status().ToString());
    }
  }
  ASSIGN_OR_RETURN(records::ModelRecord model, registry_->SignNext(next, round_, NowUnixMs()));
  (*model.mutable_metrics())["train_loss"] = summary.mean_train_loss;
  if (averaged > 0) (*model.mutable_metrics())["swa_models"] = static_cast<double>(averaged);
  if (eval_ && config_.EvaluatesRound(round_, last)) {
    StatusOr<EvalMetrics> metrics = eval_(next);
    if (metrics.ok()) {
      summary.test_loss = metrics->loss;
      summary.test_accuracy = metrics->accuracy;
      (*model.mutable_metrics())["test_loss"] = metrics->loss;
      (*model.mutable_metrics())["test_accuracy"] = metrics->accuracy;
      record.set_test_loss(metrics->loss);
      record.set_test_accuracy(metrics->accuracy);
      if (std::isfinite(metrics->auc)) {
        summary.test_auc = metrics->auc;
        (*model.mutable_metrics())["test_auc"] = metrics->auc;
      }
      if (std::isfinite(metrics->mae)) {
        summary.test_mae = metrics->mae;
        (*model.mutable_metrics())["test_mae"] = metrics->mae;
      }
    } else {
      LOG_WARN("aggregator", "evaluation failed: " << metrics.status().ToString());
    }
  }
  if (!federated_eval_.empty()) {
    int64_t n = 0;
    double loss = 0, accuracy = 0;
    for (const auto& [id, e] : federated_eval_) {
      n += e.examples;
      loss += e.loss * static_cast<double>(e.examples);
      accuracy += e.accuracy * static_cast<double>(e.examples);
    }
    summary.federated_examples = n;
    summary.federated_loss = loss / static_cast<double>(n);
    summary.federated_accuracy = accuracy / static_cast<double>(n);
    record.set_federated_examples(n);
    record.set_federated_loss(*summary.federated_loss);
    record.set_federated_accuracy(*summary.federated_accuracy);
  }
  summary.seconds = std::chrono::duration<double>(Clock::now() - started_).count();
  summary.merge_seconds = std::chrono::duration<double>(Clock::now() - closed_).count();
  record.set_merge_seconds(summary.merge_seconds);
  record.set_outcome(records::RoundRecord::OUTCOME_COMPLETED);
  record.set_result_model_version(model.version());
  record.set_mean_train_loss(summary.mean_train_loss);
  record.set_total_examples(examples);
  record.set_seconds(summary.seconds);
  RoundCommit commit;
  commit.round = record;
  commit.model = &model;
  commit.expire = registry_->Expired(model.version());
  commit.clients = clients_->Dirty(NowUnixMs());
  commit.ledger = std::move(ledger);
  std::optional<records::ServerStateRecord> server_state;
  if (next_server_state_ && config_.strategy.stateful()) {
    server_state =
        ServerStateToRecord(config_.strategy.StateName(), *next_server_state_, model.version(), round_);
    commit.server_state = &*server_state;
  }
  RETURN_IF_ERROR(store_->CommitRound(commit));
  clients_->MarkWritten(commit.clients);
  registry_->Committed(model, std::move(next), commit.expire);
  if (next_server_state_) server_state_ = std::move(*next_server_state_);
  next_server_state_.reset();
  global_norm_ = L2Norm(global().data);
  ++rounds_done_;
  backoff_.Succeeded();
  summary.completed = true;
  summary.model_version = registry_->version();
  summary.finished_unix_ms = NowUnixMs();
  history_.push_back(summary);
  if (on_round_) on_round_(summary);
  return Status::Ok();
}

}  // namespace flotilla::aggregator
