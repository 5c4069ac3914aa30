// The round engine: one federation's rounds, without a socket. It recovers
// its state from the store, starts rounds (sampling, the privacy budget,
// secure aggregation's setup), records what devices send (validated, durable
// before it says so), declines and deadlines, and finishes rounds (merge,
// privacy accounting, signing, one atomic commit, the back-off after a
// failure). The server loop tells it what devices said and sends what it
// returns; the engine never sends anything itself, so tests drive it with an
// in-memory store and their own clock.
//
// Files: round_engine.cc (start, record, finish), round_recovery.cc (from
// the store after a restart), round_merge.cc (from updates to the next
// model).
//
// Thread-safety: not thread-safe; the aggregator's thread owns it.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "aggregator/client_registry.h"
#include "aggregator/config.h"
#include "aggregator/model_registry.h"
#include "aggregator/privacy_budget.h"
#include "aggregator/round_policy.h"
#include "aggregator/secure_round.h"
#include "aggregator/store.h"
#include "aggregator/update_validation.h"
#include "core/status.h"
#include "core/weights.h"
#include "proto/flotilla.pb.h"

namespace flotilla::aggregator {

struct RoundSummary {
  uint32_t round = 0;
  bool completed = false;  // false: failed, too few updates
  int selected = 0;
  int received = 0;
  int64_t total_examples = 0;
  double mean_train_loss = 0.0;  // example-weighted
  std::optional<double> test_loss, test_accuracy, test_auc, test_mae;
  // Federated evaluation of the round's base model on the devices' held-out
  // examples (example-weighted), when the devices reported one.
  int64_t federated_examples = 0;
  // Message bytes the aggregator received and sent during the round.
  uint64_t bytes_in = 0, bytes_out = 0;
  std::optional<double> federated_loss, federated_accuracy;
  double seconds = 0.0;  // start to commit: train_seconds + merge_seconds
  // Check-in: how long selection waited for check-ins before the round.
  double selection_seconds = 0.0;
  double train_seconds = 0.0;  // start to close: devices training and reporting
  double merge_seconds = 0.0;  // close to commit: merge, evaluation, signing, the write
  // Dropouts by stage, as the aggregator sees them: declined (the device
  // said it cannot train), refused (validation), unreported (selected but
  // no answer when the round closed: gone, or still training when
  // over-selection had its N).
  int declined = 0, refused = 0, unreported = 0;
  uint64_t model_version = 0;
  std::optional<double> epsilon;    // cumulative, when DP is on
  std::optional<double> clip_norm;  // client-level DP: the norm this round used
  bool secure = false;              // the round ran secure aggregation (no train loss known)
  // Asynchronous rounds: the buffer's staleness (versions between an
  // update's base model and the one it was merged into).
  bool async = false;
  double mean_staleness = 0.0;
  uint32_t max_staleness = 0;
  int64_t finished_unix_ms = 0;  // when it committed
};

struct EvalMetrics {
  double loss = 0.0;
  double accuracy = 0.0;
  double auc = NAN;  // binary cross-entropy models
  double mae = NAN;  // regression (mse) models
};

// Evaluates a global model (e.g. on a held-out test set). Called on the
// aggregator's thread after each round.
using EvalFn = std::function<StatusOr<EvalMetrics>(const Weights&)>;
using RoundFn = std::function<void(const RoundSummary&)>;

class RoundEngine {
 public:
  RoundEngine(const RoundEngine&) = delete;
  RoundEngine& operator=(const RoundEngine&) = delete;
  using Clock = std::chrono::steady_clock;

  // Why a device's message was not taken, for the error reply.
  struct Refusal {
    wire::ErrorCode code = wire::ERROR_UNSPECIFIED;
    std::string reason;   // short and stable: logs and counters use it
    std::string message;  // for the device
    bool counted = true;  // a rejected message (false: e.g. a resend that already counted)
  };

  // Reads the store: the model registry (stores `initial` as version 1 when
  // there is none), the device population into `clients`, the norm history,
  // the privacy ledger, and the round that was running, which resumes with
  // its recorded updates (each validated again). Records that do not parse
  // or contradict the store are quarantined, and a running round that
  // cannot resume is recorded as failed: recovery never refuses to start
  // over them. `store` and `clients` must outlive the engine.
  static StatusOr<std::unique_ptr<RoundEngine>> Recover(const AggregatorConfig& config, Store* store,
                                                        ClientRegistry* clients, Weights initial, EvalFn eval,
                                                        RoundFn on_round);

  // Starts the next round when one is due: enough devices, no back-off, the
  // budget allows it. `eligible` filters the population (the server passes
  // its allowlist). True when a round started.
  StatusOr<bool> MaybeStart(Clock::time_point now, const std::function<bool(const std::string&)>& eligible);
  // Check-in selection (config.checkin.enabled; docs/protocol.md). The
  // server keeps the fleet size current (registered devices, or the
  // allowlist when it is larger): it sets N and the pace.
  void SetFleetSize(size_t n) { fleet_ = n; }
  // How many more connections the server can take (its file-descriptor
  // headroom, sampled). Each device held for selection spends one; at zero,
  // check-ins are told to come back and selection closes with what it
  // holds (if at least min_clients) instead of waiting for its window.
  // Unbounded (SIZE_MAX) unless set. `capacity`: the most connections the
  // server could hold with none open (its limit less its reserve and its
  // own files; SIZE_MAX: unknown). Selection closes at the limit only once
  // it holds half of that (or its target): below it, most connections are
  // check-ins still being answered, which free as the devices leave.
  void SetConnectionHeadroom(size_t n, size_t capacity = SIZE_MAX) {
    headroom_ = n;
    capacity_ = capacity;
  }
  bool at_connection_limit() const { return headroom_ == 0; }
  // Opens selection for the next round when one is due: no round running,
  // no back-off, rounds left. True when it opened.
  bool MaybeOpenSelection(Clock::time_point now);
  struct CheckInAnswer {
    bool hold = false;      // held for the open selection; answered when it closes
    uint32_t after_ms = 0;  // otherwise: check in again after this long,
    uint32_t round = 0;     // for this round
    std::string reason;
  };
  // A device checks in (it is registered and loaded). Held when selection
  // is open and it is eligible (`eligible`, not paused, budget left), else
  // told when to come back.
  CheckInAnswer CheckIn(const std::string& client_id, Clock::time_point now,
                        const std::function<bool(const std::string&)>& eligible);
  // Pace steering for a device that is not needed now.
  CheckInAnswer ComeBack(const std::string& client_id, Clock::time_point now, std::string reason) const;
  // Closes selection when due, samples the round's devices among those
  // held and starts the round; the devices held but not selected are put in
  // `released` (tell them to come back). True when a round started.
  StatusOr<bool> MaybeCloseSelection(Clock::time_point now, std::vector<std::string>* released);
  bool selecting() const { return selecting_; }
  size_t held_count() const { return held_.size(); }
  // Held for selection, or selected for the running round: the server keeps
  // such a device's record in memory; every other one lives in the store.
  bool Involves(const std::string& client_id) const;
  // The updates the running round keeps (N under over-selection, else
  // every selected device).
  size_t target_updates() const { return target_updates_; }

  // Closes the round when every selected device answered or the deadline
  // passed; a secure round advances its stages first and its messages for
  // devices go to `out`. True when a round closed (completed or failed).
  StatusOr<bool> MaybeFinish(Clock::time_point now, std::vector<SecureRound::Reply>* out);

  // An update from `client_id`: checked against the round and validated,
  // then stored before it counts. nullopt: recorded (acknowledge it). An
  // error status only when the store failed for good (a full disk or a
  // passing I/O error is a Refusal: the device keeps its update and retries).
  StatusOr<std::optional<Refusal>> RecordUpdate(const std::string& client_id, const wire::Update& update,
                                                Clock::time_point now);
  // A device declines `round`: it is out of the round, with a strike.
  void Decline(const std::string& client_id, uint32_t round, const std::string& reason,
               Clock::time_point now);
  // True when `client_id` is selected for the running round and still owes
  // its update (and, under secure aggregation, has not advertised yet).
  bool AwaitsTask(const std::string& client_id) const;
  // Bytes the aggregator received and sent while a round runs (the server
  // counts every message); reported with the round.
  void CountBytes(uint64_t in, uint64_t out) {
    if (!active_) return;
    bytes_in_ += in;
    bytes_out_ += out;
  }
  // The running round's TrainTask for `client_id`. REQUIRES: AwaitsTask.
  wire::Envelope MakeTask(const std::string& client_id, Clock::time_point now) const;

  // Asynchronous rounds (config.async, FedBuff; docs/strategies.md#fedbuff):
  // a round is one buffer of updates, open from the moment the previous one
  // committed. Any eligible device that asks gets a task on the current
  // version while fewer than C devices train; updates count when they
  // arrive, discounted by their staleness, and refused past the maximum.
  // Starts the next buffer when none is open. True when one started.
  StatusOr<bool> MaybeStartBuffer(Clock::time_point now);
  // The server sent `client_id` its task (MakeTask): it trains from now.
  void TaskSent(const std::string& client_id, Clock::time_point now);
  // Async: a task can go to one more device now.
  bool HasCapacity() const;
  // Async: devices given a task that have not answered yet (and whose task
  // is younger than the round deadline, the task timeout in async mode).
  size_t in_flight() const;
  bool async() const { return config_.async.enabled(); }

  bool federation_done() const { return rounds_done_ >= config_.rounds || budget_->exhausted(); }
  uint32_t round() const { return round_; }  // current or last round number
  bool active() const { return active_; }
  Clock::time_point deadline() const { return deadline_; }  // the running round's
  uint32_t rounds_done() const { return rounds_done_; }
  // Devices selected for the running round (async: training now).
  size_t selected_count() const { return async() ? in_flight() : selected_.size(); }
  size_t received_count() const { return received_.size(); }
  const Weights& global() const { return registry_->global(); }
  const ModelRegistry& registry() const { return *registry_; }
  const std::vector<RoundSummary>& history() const { return history_; }
  uint64_t rejected_updates() const { return rejected_updates_; }
  const Backoff& backoff() const { return backoff_; }
  // The running round's secure aggregation (null when none).
  SecureRound* secure() { return secure_.get(); }
  const SecureRound* secure() const { return secure_.get(); }

 private:
  RoundEngine(const AggregatorConfig& config, Store* store, ClientRegistry* clients, EvalFn eval,
              RoundFn on_round);

  // round_recovery.cc
  Status RecoverFromStore(Weights initial);
  Status QuarantineCorrupt(const std::vector<std::string>& bad_clients,
                           const std::vector<std::string>& bad_rounds);
  // Records a running round that cannot resume as failed; true if it did.
  StatusOr<bool> FailUnresumable(const records::RoundRecord& running);
  Status ResumeRound(const records::RoundRecord& running);
  Status RecoverUpdates();
  Status RecoverLedger(const std::vector<records::RoundRecord>& rounds);
  Status RecoverServerState();

  // round_merge.cc: the mean delta of the round (streamed from the store,
  // or the secure sum), then the next model from it.
  StatusOr<Weights> MergeStoredUpdates();
  StatusOr<Weights> MergeSecureSum();
  StatusOr<Weights> FinalizeMerge(Weights mean_delta, records::RoundRecord* record, RoundSummary* summary,
                                  std::vector<records::LedgerEntry>* ledger);

  // Starts round round_ + 1 with `selected` (sorted): the round record,
  // secure aggregation's setup. False (nothing changed) when the store
  // refused the record for now.
  StatusOr<bool> BeginRound(std::vector<std::string> selected, double sampling_rate, Clock::time_point now);
  size_t SelectionTarget() const;  // ceil(N x over_selection)
  size_t UpdatesPerRound() const;  // N
  Status StartSecureRound();
  Status FinishRound(bool deadline_passed);
  Status CommitFailed(const std::string& failure, records::RoundRecord record, RoundSummary summary);
  // The mean of `own` (the last round's merge) and the stored models of
  // rounds config.swa_from on; `count`: how many.
  StatusOr<Weights> TailAverage(const Weights& own, size_t* count) const;
  Status CommitCompleted(Weights next, records::RoundRecord record, RoundSummary summary,
                         std::vector<records::LedgerEntry> ledger);
  UpdateExpectation ExpectationNow() const;
  // Bookkeeping for an update that is in the store (on arrival or recovery).
  void NoteRecorded(const std::string& client_id, int64_t num_examples, double norm,
                    const google::protobuf::Map<std::string, double>& metrics);

  const AggregatorConfig config_;
  Store* store_;
  ClientRegistry* clients_;
  EvalFn eval_;
  RoundFn on_round_;
  std::unique_ptr<ModelRegistry> registry_;  // the current model, versions, pulls
  std::optional<PrivacyBudget> budget_;

  uint32_t round_ = 0;        // current or last round number
  uint32_t rounds_done_ = 0;  // completed rounds
  bool active_ = false;
  std::vector<std::string> selected_;  // sorted client ids
  std::set<std::string> received_;
  std::set<std::string> declined_;  // declined this round, or had its update refused
  std::map<std::string, std::pair<int64_t, double>> train_loss_;  // client -> (examples, loss)
  struct DeviceEval {
    int64_t examples;
    double loss, accuracy;
  };
  std::map<std::string, DeviceEval> federated_eval_;  // this round's federated evaluation
  uint64_t bytes_in_ = 0, bytes_out_ = 0;             // this round's traffic
  std::map<std::string, int64_t> dp_steps_;           // DP-SGD steps each client reported
  std::map<std::string, int> below_clip_;             // adaptive-clipping bits this round
  std::map<std::string, double> norms_;               // this round's accepted norms
  double sampling_rate_ = 0.0;
  Clock::time_point started_, deadline_;
  std::unique_ptr<SecureRound> secure_;
  std::vector<RoundSummary> history_;
  uint64_t rejected_updates_ = 0;
  // Validation: recent accepted norms and the norm of the current model.
  NormHistory norm_history_;
  double global_norm_ = 0.0;
  Backoff backoff_;
  Clock::time_point last_start_error_log_{};
  size_t target_updates_ = 0;
  // Check-in selection.
  size_t fleet_ = 0;
  bool selecting_ = false;
  std::set<std::string> held_;
  size_t headroom_ = SIZE_MAX;  // SetConnectionHeadroom
  size_t capacity_ = SIZE_MAX;
  Clock::time_point selection_opened_{}, last_checkin_{}, last_round_start_{};
  double selection_seconds_ = 0.0;     // the running round's
  int refused_ = 0;                    // the running round's refused updates
  Clock::time_point closed_{};         // when the round closed (merge time from here)
  double round_period_seconds_ = 0.0;  // moving average of the time between round starts
  // The server optimizer's state (server_optimizer.h): as of the latest
  // model, and the one the round being merged produces (committed with it).
  ServerState server_state_;
  std::optional<ServerState> next_server_state_;
  // SCAFFOLD: the mean control-variate change of the round being merged.
  std::optional<Weights> control_mean_;
  // Asynchronous rounds.
  struct InFlight {
    uint32_t round = 0;  // of the task
    Clock::time_point sent{};
  };
  std::map<std::string, InFlight> in_flight_;  // devices training, by id
  struct Buffered {
    uint32_t task_round = 0;
    uint32_t staleness = 0;
  };
  std::map<std::string, Buffered> buffered_;  // the open buffer's updates
  // Tasks of rounds up to this one may have been handed out before the
  // last restart (in-flight tasks are not stored): their updates count.
  uint32_t restart_round_ = 0;
  Clock::time_point now_{};  // the latest time a call brought
  static std::optional<Refusal> Refuse(wire::ErrorCode code, std::string reason, std::string message,
                                       bool counted = true);
  // Sync: refuses an update that does not answer the running round's task.
  std::optional<Refusal> CheckSyncUpdate(const std::string& client_id, const wire::Update& update) const;
  // Async: refuses what an update must not be (nullopt: record it), and
  // its staleness.
  StatusOr<std::optional<Refusal>> CheckAsyncUpdate(const std::string& client_id, const wire::Update& update,
                                                    uint32_t* staleness);
  // True when `client_id`'s update for the task of `task_round` is in a
  // buffer that already committed (a resend whose Ack was lost).
  bool AsyncAlreadyMerged(const std::string& client_id, uint32_t task_round) const;
};

}  // namespace flotilla::aggregator
