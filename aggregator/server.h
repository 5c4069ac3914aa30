// The aggregator's server loop: a ROUTER socket, the transport's
// authenticator and allowlist reload, per-device limits, and the dispatch
// of each message to the part that owns it (the client registry for Hello,
// the model registry for pulls, the round engine for tasks, updates,
// declines and secure aggregation). It owns the replies: their size
// accounting, withholding from devices that do not read, and one log line
// per device and reason. The rounds themselves are the round engine's
// (round_engine.h). See docs/protocol.md for the message flow.
//
// Thread-safety: Run() owns the object until it returns; RequestStop() may be
// called from any thread (or a signal handler, via the atomic flag).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "aggregator/client_registry.h"
#include "aggregator/config.h"
#include "aggregator/metrics.h"
#include "aggregator/peer_limits.h"
#include "aggregator/round_engine.h"
#include "aggregator/secure_round.h"
#include "aggregator/store.h"
#include "core/fds.h"
#include "core/log.h"
#include "core/status.h"
#include "core/weights.h"
#include "monitoring/http_server.h"
#include "net/transport.h"
#include "net/zap.h"
#include "privacy/keys.h"
#include "proto/flotilla.pb.h"

namespace flotilla::aggregator {

class Aggregator {
 public:
  Aggregator(const Aggregator&) = delete;
  Aggregator& operator=(const Aggregator&) = delete;
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
  const Weights& global_model() const { return engine_->global(); }
  std::vector<std::string> client_ids() const;
  uint64_t messages_handled() const { return messages_handled_; }
  uint64_t model_version() const { return engine_->registry().version(); }
  const std::vector<RoundSummary>& history() const { return engine_->history(); }
  uint64_t rejected_messages() const { return rejected_messages_; }
  uint64_t rejected_updates() const { return engine_->rejected_updates(); }
  uint64_t rate_limited_messages() const { return limits_.refused(); }
  // Large replies not queued because the device had not read earlier ones.
  uint64_t withheld_replies() const { return withheld_replies_; }
  uint32_t failed_rounds_in_a_row() const { return engine_->backoff().failed_in_a_row(); }
  // The HTTP endpoint's URL ("" when [http] listen is off).
  std::string http_url() const { return http_ ? http_->url() : std::string(); }
  // What /metrics shows (also without the HTTP endpoint).
  std::string RenderMetrics() const { return metrics_->Render(); }

 private:
  using Clock = std::chrono::steady_clock;

  Aggregator(const AggregatorConfig& config, std::unique_ptr<Store> store,
             std::unique_ptr<net::ZapHandler> zap, std::unique_ptr<net::ServerSocket> socket,
             uint64_t model_bytes);
  void MaybeReloadAllowlist();

  Status HandleMessage(const net::Incoming& in);
  // The device a message after Hello comes from ("" when it said none).
  std::string IdentifyClient(const net::Incoming& in);
  Status HandleHello(const net::Incoming& in, const wire::Envelope& env);
  Status HandleCheckIn(const net::Incoming& in, const wire::Envelope& env);
  // Check-in: puts a stored device's record in memory if it is not there.
  // True when the device is known (in memory or in the store).
  StatusOr<bool> EnsureLoaded(const std::string& client_id);
  // Check-in: writes new and changed device records in one batch, then
  // drops from memory every device that is neither held nor in the round.
  void FlushRegistry(bool force);
  void ReplyComeBack(const std::string& client_id, uint64_t request_id, const RoundEngine::CheckInAnswer& a);
  void FillComeBack(const RoundEngine::CheckInAnswer& a, wire::ComeBack* out) const;
  // Check-in: when a device that checks in should come back (for an Ack or
  // an Error); nullopt for a device on a long-lived connection.
  std::optional<wire::ComeBack> ComeBackFor(const std::string& client_id, const std::string& reason);
  size_t FleetSize() const;
  void HandleTaskRequest(const std::string& client_id, uint64_t request_id);
  void HandleStatus(const net::Incoming& in, uint64_t request_id);
  void HandlePull(const net::Incoming& in, const wire::Envelope& env);
  Status HandleUpdate(const std::string& client_id, const wire::Envelope& env);
  void HandleDecline(const std::string& client_id, const wire::Envelope& env);
  void HandleSecAgg(const std::string& client_id, const wire::Envelope& env);
  void SendSecureReplies(std::vector<SecureRound::Reply> replies);
  void SendTask(const std::string& client_id, uint64_t request_id);
  void SendTasksToParked();
  void AnswerParked(bool keepalive_only);
  // Starts and closes rounds as the engine finds them due, and tells the
  // devices concerned.
  Status AdvanceRounds();

  // Sends `env` to `peer`, accounting its bytes to the device `tag` (its
  // identity). A large reply is withheld (a small ERROR_RATE_LIMITED goes
  // instead) while the device has more than the limit queued and unread, or
  // when it repeats `dedupe` (the same request) before it read the answer.
  // False when it was withheld or not delivered.
  bool Reply(const std::string& peer, const std::string& tag, uint64_t request_id, wire::Envelope env,
             const std::string& dedupe = std::string());
  void ReplyError(const std::string& peer, const std::string& tag, uint64_t request_id, wire::ErrorCode code,
                  const std::string& msg, uint32_t retry_ms = 0);
  // The check behind Reply's withholding, usable before a large reply is
  // built: true when it was withheld (the small error is sent).
  bool Withhold(const std::string& peer, const std::string& tag, uint64_t request_id, size_t bytes,
                const std::string& dedupe, const char* what);
  bool ReplyToClient(const std::string& client_id, uint64_t request_id, wire::Envelope env,
                     const std::string& dedupe = std::string());
  // One log line per device and reason per interval, with a count.
  void LogRejection(const std::string& who, const std::string& reason, const std::string& message);
  // Publishes the gauges for /metrics (at most every 250 ms unless `now`).
  void PublishMetrics(bool now);

  AggregatorConfig config_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<net::ZapHandler> zap_;  // started before the socket binds
  std::unique_ptr<net::ServerSocket> socket_;
  ClientRegistry clients_;               // every device that said Hello, by identity
  std::unique_ptr<RoundEngine> engine_;  // uses store_ and clients_: declared after them
  std::atomic<bool> reload_{false};
  std::optional<std::filesystem::file_time_type> allowlist_mtime_;
  Clock::time_point last_allowlist_check_{};
  std::atomic<bool> stop_{false};
  std::optional<Clock::time_point> finished_at_;
  // The final model as Finished carries it, built once for every device
  // that asks (the model no longer changes once the federation is done).
  std::optional<wire::PullReply> final_model_;
  uint64_t rejected_messages_ = 0;
  // Shared with the round callback and the HTTP threads.
  std::shared_ptr<AggregatorMetrics> metrics_;
  Clock::time_point metrics_published_{};
  std::atomic<bool> serving_{false};
  // Last: stopped first, before anything its handlers read.
  std::unique_ptr<monitoring::HttpServer> http_;
  uint64_t withheld_replies_ = 0;
  uint64_t messages_handled_ = 0;
  PeerLimits limits_;
  Clock::time_point last_limits_prune_{};
  std::map<std::string, std::string> last_large_request_;  // device tag -> the request last answered in bulk
  LogLimiter log_limiter_;
  Clock::time_point started_ = Clock::now();
  // Check-in: devices in the store (memory holds only the active ones).
  size_t known_clients_ = 0;
  size_t joined_since_log_ = 0;
  Clock::time_point last_flush_{}, last_join_log_{};
  // File descriptors (core/fds.h): sampled (more often near the limit) for
  // the metrics and, with check-in, handed to the engine, which stops
  // holding check-ins at the limit.
  void SampleFds(Clock::time_point now, bool force);
  void LogConnectionLimit();  // its transitions, once each
  std::optional<FdUsage> fds_;
  size_t idle_fds_ = SIZE_MAX;  // the fewest descriptors seen open: the server's own files
  Clock::time_point last_fd_sample_{};
  bool at_fd_limit_ = false;
};

}  // namespace flotilla::aggregator
