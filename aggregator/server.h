// The aggregator: a single-threaded round engine behind a ROUTER socket.
//
// Synchronous FedAvg rounds: wait for min_clients, sample a fraction, hand
// each sampled client a TrainTask when it asks for work, record each valid
// update durably before acknowledging it, and close the round when every
// sampled client reported or the deadline passed. The merge streams the
// round's updates from the store in client-id order, so the result does not
// depend on arrival order. See docs/protocol.md for the message flow.
//
// Thread-safety: Run() owns the object until it returns; RequestStop() may be
// called from any thread (or a signal handler, via the atomic flag).
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
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
#include "aggregator/peer_limits.h"
#include "aggregator/privacy_budget.h"
#include "aggregator/round_policy.h"
#include "aggregator/secure_round.h"
#include "aggregator/store.h"
#include "aggregator/strategy.h"
#include "aggregator/update_validation.h"
#include "core/log.h"
#include "core/status.h"
#include "core/weights.h"
#include "net/transport.h"
#include "net/zap.h"
#include "privacy/keys.h"
#include "proto/flotilla.pb.h"

namespace flotilla::aggregator {

struct RoundSummary {
  uint32_t round = 0;
  bool completed = false;     // false: failed, too few updates
  int selected = 0;
  int received = 0;
  int64_t total_examples = 0;
  double mean_train_loss = 0.0;  // example-weighted
  std::optional<double> test_loss, test_accuracy;
  double seconds = 0.0;
  uint64_t model_version = 0;
  std::optional<double> epsilon;    // cumulative, when DP is on
  std::optional<double> clip_norm;  // client-level DP: the norm this round used
  bool secure = false;              // the round ran secure aggregation (no train loss known)
};

struct EvalMetrics {
  double loss = 0.0;
  double accuracy = 0.0;
};

// Evaluates a global model (e.g. on a held-out test set). Called on the
// aggregator's thread after each round.
using EvalFn = std::function<StatusOr<EvalMetrics>(const Weights&)>;
using RoundFn = std::function<void(const RoundSummary&)>;

class Aggregator {
 public:
  // Opens the store (config.store_path, or `store` when given: tests use
  // in-memory or fault-injecting ones), binds the socket and stores
  // `initial` as model version 1 if the store has no model yet.
  static StatusOr<std::unique_ptr<Aggregator>> Create(const AggregatorConfig& config, net::Context* context,
                                                      Weights initial, EvalFn eval, RoundFn on_round,
                                                      std::unique_ptr<Store> store = nullptr);
  ~Aggregator();

  // The bound endpoint (useful with "tcp://127.0.0.1:*").
  const std::string& endpoint() const;

  // Serves until all rounds are done (then the finish grace period) or
  // RequestStop(). Returns the first fatal error (a store failure); bad
  // peer input is never fatal.
  Status Run();
  void RequestStop() { stop_.store(true); }
  // Re-reads the allowlist file on the next loop iteration (SIGHUP).
  void RequestReload() { reload_.store(true); }
  // Number of keys currently allowed (0 without CURVE).
  size_t allowed_count() const { return zap_ ? zap_->allowed_count() : 0; }

  // One step of the loop without the socket read: processes `in` as if it
  // had arrived (replies go to in.peer), then starts or closes rounds as
  // due. Run() does the same; fuzzers and tests may call Step() instead of
  // Run(), never concurrently with it.
  Status Step(const net::Incoming& in);

  // Read these after Run() returns (or from the thread that calls Handle).
  const Weights& global_model() const { return global(); }
  std::vector<std::string> client_ids() const;
  uint64_t messages_handled() const { return messages_handled_; }
  uint64_t model_version() const { return registry_->version(); }
  const std::vector<RoundSummary>& history() const { return history_; }
  uint64_t rejected_messages() const { return rejected_messages_; }
  uint64_t rejected_updates() const { return rejected_updates_; }
  uint64_t rate_limited_messages() const { return limits_.refused(); }
  // Large replies not queued because the device had not read earlier ones.
  uint64_t withheld_replies() const { return withheld_replies_; }
  uint32_t failed_rounds_in_a_row() const { return backoff_.failed_in_a_row(); }

 private:
  using Clock = std::chrono::steady_clock;

  Aggregator(const AggregatorConfig& config, std::unique_ptr<Store> store, std::unique_ptr<net::ZapHandler> zap,
             std::unique_ptr<net::ServerSocket> socket, Weights initial, EvalFn eval, RoundFn on_round);
  Status Recover();
  void MaybeReloadAllowlist();
  const Weights& global() const { return registry_->global(); }

  Status HandleMessage(const net::Incoming& in);
  Status HandleHello(const net::Incoming& in, const wire::Envelope& env);
  void HandleTaskRequest(const std::string& client_id, uint64_t request_id);
  void HandleStatus(const net::Incoming& in, uint64_t request_id);
  void HandlePull(const net::Incoming& in, const wire::Envelope& env);
  Status HandleUpdate(const std::string& client_id, const wire::Envelope& env);
  void HandleSecAgg(const std::string& client_id, const wire::Envelope& env);
  void SendSecureReplies(std::vector<SecureRound::Reply> replies);
  Status StartSecureRound();
  // The mean delta of the round: streamed from the store, or the secure sum.
  StatusOr<Weights> MergeStoredUpdates();
  StatusOr<Weights> MergeSecureSum();
  // Sends `env` to `peer`, accounting its bytes to the device `tag` (its
  // identity). A large reply is withheld (a small ERROR_RATE_LIMITED goes
  // instead) while the device has more than the limit queued and unread, or
  // when it repeats `dedupe` (the same request) before it read the answer.
  void Reply(const std::string& peer, const std::string& tag, uint64_t request_id, wire::Envelope env,
             const std::string& dedupe = std::string());
  void ReplyError(const std::string& peer, const std::string& tag, uint64_t request_id, wire::ErrorCode code,
                  const std::string& msg, uint32_t retry_ms = 0);
  // The check behind Reply's withholding, usable before a large reply is
  // built: true when it was withheld (the small error is sent).
  bool Withhold(const std::string& peer, const std::string& tag, uint64_t request_id, size_t bytes,
                const std::string& dedupe, const char* what);
  void ReplyToClient(const std::string& client_id, uint64_t request_id, wire::Envelope env,
                     const std::string& dedupe = std::string());
  // One log line per device and reason per interval, with a count.
  void LogRejection(const std::string& who, const std::string& reason, const std::string& message);
  Status RecoverUpdates();
  // Moves the records that did not parse (listed by the recovery) aside.
  Status QuarantineCorrupt(const std::vector<std::string>& bad_clients, const std::vector<std::string>& bad_rounds);
  UpdateExpectation ExpectationNow() const;
  StatusOr<Weights> FinalizeMerge(Weights mean_delta, records::RoundRecord* record, RoundSummary* summary,
                                  std::vector<records::LedgerEntry>* ledger);
  void SendTask(const std::string& client_id, uint64_t request_id);
  void AnswerParked(bool keepalive_only);

  Status MaybeStartRound();
  Status MaybeFinishRound();
  Status FinishRound(bool deadline_passed);
  bool federation_done() const { return rounds_done_ >= config_.rounds || (budget_ && budget_->exhausted()); }
  // Privacy accounting (see DpConfig).
  // The privacy budget from the ledger and the rounds read by the recovery.
  Status RecoverLedger(const std::vector<records::RoundRecord>& rounds);
  // Bookkeeping for an update that is in the store (on arrival or recovery).
  void NoteRecorded(const std::string& client_id, int64_t num_examples,
                    const google::protobuf::Map<std::string, double>& metrics);

  AggregatorConfig config_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<net::ZapHandler> zap_;  // started before the socket binds
  std::unique_ptr<net::ServerSocket> socket_;
  Weights initial_;  // until Recover hands it to the registry
  std::unique_ptr<ModelRegistry> registry_;  // set by Recover: the current model, versions, pulls
  std::atomic<bool> reload_{false};
  std::optional<std::filesystem::file_time_type> allowlist_mtime_;
  Clock::time_point last_allowlist_check_{};
  EvalFn eval_;
  RoundFn on_round_;
  std::atomic<bool> stop_{false};

  ClientRegistry clients_;  // every device that said Hello, by identity
  uint32_t round_ = 0;                          // current or last round number
  uint32_t rounds_done_ = 0;                    // completed rounds
  bool round_active_ = false;
  std::vector<std::string> selected_;           // sorted client ids
  std::set<std::string> received_;
  std::set<std::string> declined_;  // declined this round, or had its update refused
  std::map<std::string, std::pair<int64_t, double>> train_loss_;  // client -> (examples, loss)
  std::map<std::string, int64_t> dp_steps_;   // DP-SGD steps each client reported this round
  std::map<std::string, int> below_clip_;     // adaptive-clipping bits this round
  Clock::time_point round_started_, round_deadline_;
  std::optional<Clock::time_point> finished_at_;
  std::vector<RoundSummary> history_;
  std::optional<PrivacyBudget> budget_;  // set by Recover
  std::unique_ptr<SecureRound> secure_;  // the running round's secure aggregation
  double round_q_ = 0.0;       // sampling rate of the current round
  uint64_t rejected_messages_ = 0;
  uint64_t rejected_updates_ = 0;
  uint64_t withheld_replies_ = 0;
  uint64_t messages_handled_ = 0;
  // Validation: recent accepted norms, the norm of the current model, and
  // this round's accepted norms (client-id order, for the round record).
  NormHistory norm_history_;
  double global_norm_ = 0.0;
  std::map<std::string, double> round_norms_;
  Backoff backoff_;  // after failed rounds
  PeerLimits limits_;
  Clock::time_point last_limits_prune_{};
  std::map<std::string, std::string> last_large_request_;  // device tag -> the request last answered in bulk
  LogLimiter log_limiter_;
  Clock::time_point started_ = Clock::now();
};

}  // namespace flotilla::aggregator
