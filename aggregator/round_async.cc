// The round engine's asynchronous mode (FedBuff, Nguyen et al. 2022; see
// round_engine.h and docs/strategies.md#fedbuff): a round is one buffer of
// updates; tasks go to whoever asks while fewer than C devices train;
// updates are taken from any recent task and weighted by their staleness.
#include <algorithm>

#include "aggregator/round_engine.h"
#include "core/clock.h"
#include "core/log.h"

namespace flotilla::aggregator {
StatusOr<bool> RoundEngine::MaybeStartBuffer(Clock::time_point now) {
  now_ = now;
  if (active_ || federation_done() || backoff_.Waiting(now)) return false;
  const size_t population = config_.checkin.enabled ? fleet_ : clients_->size();
  if (population < static_cast<size_t>(std::max(config_.min_clients, 1))) return false;
  if (config_.dp.client_level()) {
    // Who trains is whoever is available, not a sample we draw: each
    // version is accounted as a Gaussian mechanism without subsampling.
    ASSIGN_OR_RETURN(bool allowed, budget_->AllowsRound(round_ + 1, 1.0));
    if (!allowed) {
      LOG_WARN("aggregator", "stopping after " << rounds_done_ << " versions: the privacy budget is spent");
      return false;
    }
  }
  ASSIGN_OR_RETURN(bool started, BeginRound({}, 1.0, now));
  if (started) {
    // A task older than every update that could still count is forgotten
    // (the bound moves once per buffer).
    const uint32_t oldest =
        round_ > config_.async.max_staleness + 1 ? round_ - config_.async.max_staleness - 1 : 0;
    for (auto it = in_flight_.begin(); it != in_flight_.end();) {
      it = it->second.round < oldest ? in_flight_.erase(it) : std::next(it);
    }
  }
  return started;
}

size_t RoundEngine::in_flight() const {
  const auto timeout = SecondsOf(config_.round_deadline_seconds);
  return static_cast<size_t>(std::count_if(in_flight_.begin(), in_flight_.end(),
                                           [&](const auto& kv) { return now_ - kv.second.sent < timeout; }));
}

bool RoundEngine::HasCapacity() const {
  return async() && active_ && in_flight() < static_cast<size_t>(config_.async.Concurrency());
}

void RoundEngine::TaskSent(const std::string& client_id, Clock::time_point now) {
  if (!async()) return;
  now_ = now;
  in_flight_[client_id] = InFlight{round_, now};
  // The round record's `selected`: the devices given a task during it.
  auto at = std::lower_bound(selected_.begin(), selected_.end(), client_id);
  if (at == selected_.end() || *at != client_id) selected_.insert(at, client_id);
}

bool RoundEngine::AsyncAlreadyMerged(const std::string& client_id, uint32_t task_round) const {
  // Rounds close to each other in versions; a resend older than the
  // staleness bound is refused before it gets here.
  const uint32_t last = std::min<uint32_t>(round_, task_round + config_.async.max_staleness + 16);
  for (uint32_t r = task_round; r < last; ++r) {
    StatusOr<std::optional<records::RoundRecord>> past = store_->GetRound(r);
    if (!past.ok() || !past->has_value()) continue;
    const records::RoundRecord& record = past->value();
    for (int i = 0; i < record.received_size() && i < record.received_task_rounds_size(); ++i) {
      if (record.received(i) == client_id && record.received_task_rounds(i) == task_round) return true;
    }
  }
  return false;
}

StatusOr<std::optional<RoundEngine::Refusal>> RoundEngine::CheckAsyncUpdate(const std::string& client_id,
                                                                            const wire::Update& update,
                                                                            uint32_t* staleness) {
  if (!active_) {
    return Refuse(wire::ERROR_WRONG_ROUND, "no_buffer",
                  federation_done() ? "the federation is over" : "no buffer is open (after a failed one)",
                  false);
  }
  if (received_.count(client_id)) {
    return Refuse(wire::ERROR_DUPLICATE, "duplicate",
                  "an update from this device is already in buffer " + std::to_string(round_), false);
  }
  const uint64_t version = registry_->version();
  if (update.model_version() > version || update.model_version() == 0 || update.round() > round_) {
    return Refuse(wire::ERROR_WRONG_ROUND, "wrong_model",
                  "update is against model version " + std::to_string(update.model_version()) + " (round " +
                      std::to_string(update.round()) + "), current is " + std::to_string(version));
  }
  const uint64_t s = version - update.model_version();
  if (s > config_.async.max_staleness) {
    return Refuse(wire::ERROR_WRONG_ROUND, "stale",
                  "update is " + std::to_string(s) + " versions old (max " +
                      std::to_string(config_.async.max_staleness) + "); ask for a new task",
                  false);
  }
  auto task = in_flight_.find(client_id);
  const bool assigned = task != in_flight_.end() && task->second.round == update.round();
  if (!assigned) {
    if (AsyncAlreadyMerged(client_id, update.round())) {
      return Refuse(wire::ERROR_DUPLICATE, "duplicate",
                    "the update for the task of round " + std::to_string(update.round()) +
                        " was merged into an earlier version",
                    false);
    }
    // Tasks handed out before a restart are not known; any other update
    // needs the task it answers.
    if (update.round() > restart_round_) {
      return Refuse(wire::ERROR_WRONG_ROUND, "not_assigned",
                    "no task of round " + std::to_string(update.round()) + " was given to this device");
    }
  }
  *staleness = static_cast<uint32_t>(s);
  return std::optional<Refusal>();
}

}  // namespace flotilla::aggregator
