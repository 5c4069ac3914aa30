// The round engine after a restart: everything it knows comes from the
// store (see round_engine.h).
#include <algorithm>

#include "aggregator/round_engine.h"
#include "core/clock.h"
#include "core/log.h"

namespace flotilla::aggregator {

StatusOr<std::unique_ptr<RoundEngine>> RoundEngine::Recover(const AggregatorConfig& config, Store* store,
                                                            ClientRegistry* clients, Weights initial,
                                                            EvalFn eval, RoundFn on_round) {
  std::unique_ptr<RoundEngine> engine(
      new RoundEngine(config, store, clients, std::move(eval), std::move(on_round)));
  RETURN_IF_ERROR(engine->RecoverFromStore(std::move(initial)));
  return engine;
}

Status RoundEngine::RecoverFromStore(Weights initial) {
  RegistryOptions options;
  options.federation = config_.federation;
  options.arch = config_.model_arch;
  options.store_path = config_.store_path;
  options.signing_key = config_.signing_key;
  options.retain_last = config_.retain_last;
  options.retain_every = config_.retain_every;
  ASSIGN_OR_RETURN(registry_, ModelRegistry::Recover(options, store_, std::move(initial)));
  global_norm_ = L2Norm(global().data);

  // Records that no longer parse are moved aside, not tripped over.
  std::vector<std::string> bad_clients, bad_rounds;
  ASSIGN_OR_RETURN(std::vector<records::ClientRecord> known, store_->ListClients(&bad_clients));
  ASSIGN_OR_RETURN(std::vector<records::RoundRecord> rounds, store_->ListRounds(&bad_rounds));
  RETURN_IF_ERROR(QuarantineCorrupt(bad_clients, bad_rounds));

  // The sampling population: every client that ever said Hello here. They
  // reconnect on their own; their routing ids are learned again then.
  clients_->Restore(known, Clock::now(), NowUnixMs());

  // The norm bound's history: the accepted norms of the latest rounds,
  // oldest first.
  size_t first = rounds.size(), norms = 0;
  while (first > 0 && norms < static_cast<size_t>(config_.validation.norm.window)) {
    norms += static_cast<size_t>(rounds[--first].update_norms_size());
  }
  for (size_t i = first; i < rounds.size(); ++i) {
    for (float n : rounds[i].update_norms()) norm_history_.Add(n);
  }
  const records::RoundRecord* running = nullptr;
  for (const auto& r : rounds) {
    round_ = std::max(round_, r.round());
    if (r.outcome() == records::RoundRecord::OUTCOME_COMPLETED) ++rounds_done_;
    if (r.outcome() == records::RoundRecord::OUTCOME_RUNNING) running = &r;
  }
  // Tasks handed out before the restart were not stored: their updates are
  // taken (asynchronous rounds) without the record of the task.
  restart_round_ = round_;
  now_ = Clock::now();
  if (running != nullptr && running->round() == round_) {
    ASSIGN_OR_RETURN(bool failed, FailUnresumable(*running));
    if (!failed) RETURN_IF_ERROR(ResumeRound(*running));
  }
  RETURN_IF_ERROR(RecoverLedger(rounds));
  RETURN_IF_ERROR(RecoverServerState());
  LOG_INFO("aggregator", "recovered model version " << registry_->version() << " after " << rounds_done_
                                                    << " completed rounds; " << clients_->size()
                                                    << " known clients");
  return Status::Ok();
}

// A running round that cannot be resumed is recorded as failed; the next
// round starts fresh. Secure aggregation keeps its keys and shares in memory
// only (resuming with the same masks and new inputs would leak their
// difference). A round on another model than the latest cannot happen with
// atomic commits: its updates are deltas against a model that is not the
// global one, so they are not merged.
StatusOr<bool> RoundEngine::FailUnresumable(const records::RoundRecord& running) {
  std::string why;
  if (running.secure_aggregation()) {
    why = "interrupted by an aggregator restart during secure aggregation; not resumed";
  } else if (running.base_model_version() != registry_->version()) {
    why = "was running on model " + std::to_string(running.base_model_version()) +
          " but the latest model is " + std::to_string(registry_->version()) + "; not resumed";
  }
  if (why.empty()) return false;
  RoundCommit failed;
  failed.round = running;
  failed.round.set_outcome(records::RoundRecord::OUTCOME_FAILED);
  failed.round.set_note(why);
  RETURN_IF_ERROR(store_->CommitRound(failed));
  LOG_WARN("aggregator",
           "round " << round_ << " " << why << "; recorded as failed, the next round starts fresh");
  return true;
}

Status RoundEngine::ResumeRound(const records::RoundRecord& running) {
  selected_.assign(running.selected().begin(), running.selected().end());
  std::sort(selected_.begin(), selected_.end());
  // Over-selection's N (older records have none: every selected device).
  target_updates_ = running.target_updates() > 0
                        ? std::min<size_t>(running.target_updates(), selected_.size())
                        : selected_.size();
  // Async: the buffer's size (its `selected` are the tasks handed out).
  if (async()) target_updates_ = static_cast<size_t>(config_.async.buffer);
  sampling_rate_ = running.sampling_rate();
  RETURN_IF_ERROR(RecoverUpdates());
  active_ = true;
  const auto now = Clock::now();
  const double elapsed = std::max(0.0, (NowUnixMs() - running.started_unix_ms()) / 1000.0);
  started_ = now - SecondsOf(elapsed);
  const auto deadline_length = SecondsOf(config_.round_deadline_seconds);
  // The devices that still owe an update were cut off while the aggregator
  // was down and must reconnect: under kExtend the outage does not eat
  // their time (a full deadline from the restart, or the original one when
  // that is later). kClose keeps the original deadline, or closes at once.
  const auto original_deadline = started_ + deadline_length;
  if (config_.deadline_policy == AggregatorConfig::DeadlinePolicy::kExtend) {
    deadline_ = std::max(original_deadline, now + deadline_length);
  } else {
    deadline_ = std::max(original_deadline, now);
  }
  LOG_INFO("aggregator", "resuming round " << round_ << " with " << received_.size() << "/"
                                           << selected_.size() << " updates already recorded");
  return Status::Ok();
}

Status RoundEngine::QuarantineCorrupt(const std::vector<std::string>& bad_clients,
                                      const std::vector<std::string>& bad_rounds) {
  for (const auto& id : bad_clients) {
    RETURN_IF_ERROR(
        store_->QuarantineClient(id, "client record does not parse or is stored under another id"));
    LOG_ERROR("aggregator", "quarantined a corrupt client record (see flotilla registry quarantine)");
  }
  for (const auto& key : bad_rounds) {
    RETURN_IF_ERROR(
        store_->QuarantineRound(key, "round record does not parse or is stored under another round"));
    LOG_ERROR("aggregator", "quarantined a corrupt round record (see flotilla registry quarantine)");
  }
  return Status::Ok();
}

// Replays the running round's stored updates through the same validation
// as on arrival; what fails (an update an earlier version accepted, bytes
// that no longer parse) is quarantined instead of poisoning the merge.
Status RoundEngine::RecoverUpdates() {
  std::vector<std::string> corrupt;
  std::vector<std::pair<std::string, std::string>> refused;  // client id, why
  RETURN_IF_ERROR(store_->ForEachUpdate(
      round_,
      [&](const records::UpdateRecord& u) -> Status {
        if (!async() && !std::binary_search(selected_.begin(), selected_.end(), u.client_id())) {
          refused.emplace_back(u.client_id(),
                               "the client was not selected for round " + std::to_string(round_));
          return Status::Ok();
        }
        const UpdateVerdict verdict = ValidateUpdate(u.delta(), u.num_examples(), ExpectationNow(),
                                                     u.has_control_delta() ? &u.control_delta() : nullptr);
        if (!verdict.accepted()) {
          refused.emplace_back(u.client_id(), verdict.reason + ": " + verdict.message);
          return Status::Ok();
        }
        NoteRecorded(u.client_id(), u.num_examples(), verdict.norm, u.metrics());
        if (async()) buffered_[u.client_id()] = Buffered{u.task_round(), u.staleness()};
        return Status::Ok();
      },
      &corrupt));
  for (const auto& id : corrupt) refused.emplace_back(id, "update record does not parse");
  for (const auto& [id, why] : refused) {
    RETURN_IF_ERROR(store_->QuarantineUpdate(round_, id, "failed validation on replay: " + why));
    LOG_ERROR("aggregator", "round " << round_ << ": quarantined the stored update from '" << id
                                     << "' (failed validation on replay: " << why
                                     << "); see flotilla registry quarantine");
  }
  return Status::Ok();
}

Status RoundEngine::RecoverLedger(const std::vector<records::RoundRecord>& rounds) {
  std::vector<records::LedgerEntry> ledger;
  if (config_.dp.enabled()) {
    ASSIGN_OR_RETURN(ledger, store_->ListLedger());
  }
  ASSIGN_OR_RETURN(PrivacyBudget budget,
                   PrivacyBudget::Recover(config_.dp, config_.epochs, config_.fraction * config_.min_clients,
                                          ledger, rounds));
  budget_.emplace(std::move(budget));
  return Status::Ok();
}

// The server optimizer continues from the state committed with the latest
// model. A store without one (a new federation, or one that ran with a
// stateless strategy so far) starts from zero, and says so; so does one
// whose state is another optimizer's or an older model's (the strategy was
// changed between runs).
Status RoundEngine::RecoverServerState() {
  const std::string name = config_.strategy.StateName();
  ASSIGN_OR_RETURN(std::optional<records::ServerStateRecord> stored, store_->GetServerState());
  if (!config_.strategy.stateful()) {
    if (stored) {
      LOG_WARN("aggregator", "the store holds '" << stored->optimizer()
                                                 << "' server optimizer state, which this run's strategy ("
                                                 << config_.strategy.Name() << ") does not use");
    }
    return Status::Ok();
  }
  if (!stored) {
    if (rounds_done_ > 0) {
      LOG_INFO("aggregator",
               "server state " << name << " starts from zero at model version " << registry_->version());
    }
    return Status::Ok();
  }
  // Another optimizer's state, or state from before a stretch of rounds run
  // with another strategy: the configuration changed, so start afresh.
  if (stored->optimizer() != name || stored->model_version() != registry_->version()) {
    LOG_WARN("aggregator", "the store's server optimizer state is "
                               << stored->optimizer() << "'s for model version " << stored->model_version()
                               << "; " << name << " starts from zero at model version "
                               << registry_->version());
    return Status::Ok();
  }
  ASSIGN_OR_RETURN(server_state_, ServerStateFromRecord(*stored, name, global().data.size()));
  LOG_INFO("aggregator", "server state " << name << " resumes after " << server_state_.steps
                                         << " steps (model version " << registry_->version() << ")");
  return Status::Ok();
}

}  // namespace flotilla::aggregator
