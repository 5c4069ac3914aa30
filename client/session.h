// Session: a device's conversation with the aggregator, as an event-driven
// state machine that does no training itself. The caller polls socket(),
// feeds events in, runs the tasks it hands out (on any thread) and submits
// the results. One thread can drive thousands of sessions (the simulator);
// RunClient() in client/runner.h drives one.
//
//   Hello -> Welcome -> TaskRequest -> (Wait | TrainTask | Finished)
//   TrainTask -> [caller trains] -> Update -> (Ack | Error) -> TaskRequest ...
//
// A TrainTask with a SecAggSetup (secure aggregation) is answered not with
// an Update but with the four SecAgg stages (client/secure_update.h): each
// SecAggMessage the session sends is answered by the aggregator's next one
// once that stage has closed; a Wait meanwhile makes the session poll.
//
// A request with no reply within request_timeout is treated as a lost
// connection: the socket is recreated and the session says Hello again
// (resending an unacknowledged update afterwards), with exponential backoff
// (0.5 s doubling up to max_backoff) and jitter, so it keeps trying for as
// long as the aggregator is away.
//
// Thread-safety: not thread-safe; one thread drives a session.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/secure_update.h"
#include "core/status.h"
#include "net/transport.h"
#include "privacy/keys.h"
#include "proto/flotilla.pb.h"

namespace flotilla::client {

struct SessionConfig {
  std::string endpoint = "tcp://127.0.0.1:7400";
  std::string name;  // display name (and identity without CURVE)
  // The federation this device is enrolled in: the aggregator's Welcome
  // must name it, and every model's signature must cover it.
  std::string federation = "flotilla";
  int64_t num_examples = 0;  // announced in Hello
  // Ask for the federation's final model with Finished (finished_message()
  // then carries it, unverified: client/pull.h AcceptPulledModel).
  bool want_final_model = false;
  // Check-in (docs/protocol.md, "Check-in"): instead of Hello and a
  // connection held for the whole federation, connect, CheckIn, and on
  // ComeBack (or after an Ack) close the connection until it is time to
  // check in again.
  bool checkin = false;
  // Check in again when ComeBack's after_ms has passed. Off: the session
  // stays away until CheckInNow() (a simulator that keeps time in rounds).
  bool wake_by_timer = true;
  std::chrono::milliseconds request_timeout{30000};
  std::chrono::milliseconds max_backoff{10000};
  net::SocketOptions socket;
  // Signs this device's secure-aggregation keys (privacy::DeriveSecAggIdentity);
  // its public half goes in Hello. Without one the device is not sampled
  // for secure-aggregation rounds.
  std::shared_ptr<const privacy::SigningKeyPair> secagg_identity;
  // The enrolment authority's certificate for that identity (sent in Hello),
  // and the authority's public key: with it, this device accepts a round's
  // identity keys only with valid certificates. Without it the device trusts
  // the aggregator for them (and says so once).
  std::string secagg_identity_cert;
  std::vector<unsigned char> secagg_authority_key;
  // FAULT INJECTION (simulator and tests): in each secure round, with this
  // probability the device vanishes at a stage drawn uniformly from 1..3
  // (it sends nothing more for that round), or at `secagg_drop_stage` when
  // that is >= 0.
  // Runs a secure-aggregation step (key agreement, share encryption,
  // masking: tens of ms per stage) on another thread; the session picks the
  // result up in OnTick. Unset: the steps run inline. The simulator hands
  // them to its trainer pool so one event loop can drive many devices.
  std::function<void(std::function<void()>)> secagg_executor;
  double secagg_dropout = 0.0;
  int secagg_drop_stage = -1;
  uint32_t secagg_fault_last_round = 0;  // faults only up to this round (0 = every round)
  uint64_t fault_seed = 0;
};

class Session {
 public:
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  using Clock = std::chrono::steady_clock;
  enum class State {
    kHello,
    kRequesting,
    kWaiting,
    kTraining,
    kUploading,
    kSecAgg,
    kSecAggComputing,
    kAway,  // check-in: disconnected until the next check-in
    kFinished
  };

  // Creates the socket and sends Hello (queued until the aggregator is up).
  static StatusOr<std::unique_ptr<Session>> Create(net::Context* context, const SessionConfig& config);

  // Null while away (check-in).
  net::ClientSocket* socket() const { return socket_.get(); }
  State state() const { return state_; }
  bool finished() const { return state_ == State::kFinished; }
  const std::string& name() const { return config_.name; }

  // Reads and handles every message waiting on the socket.
  Status OnReadable();
  // Check-in: connects and checks in now (REQUIRES: state() == kAway).
  Status CheckInNow();
  // Check-in: the round the last ComeBack named, and when it said to
  // return.
  uint32_t come_back_round() const { return come_back_round_; }
  Clock::time_point wake_at() const { return wake_at_; }
  // Handles timers (retry after Wait, request timeouts). Call at least as
  // often as NextDeadline() says.
  Status OnTick();
  Clock::time_point NextDeadline() const;

  // A task handed out by the aggregator, once; the session is then in
  // kTraining until SubmitUpdate() or AbandonTask().
  std::optional<wire::TrainTask> TakeTask();
  Status SubmitUpdate(wire::Update update);
  // Training failed locally: decline the round (the aggregator stops
  // waiting for this device), then ask for new work.
  Status AbandonTask(const Status& why);
  // Queues an update recovered from the device's outbox, to be sent right
  // after the next Welcome. REQUIRES: state() == kHello.
  Status ResumeUpdate(wire::Update update);
  // Updates settled since the last call: acknowledged or already recorded
  // (recorded = true), or refused for good (false). Drop them from the outbox.
  struct Settled {
    uint32_t round;
    bool recorded;
  };
  std::vector<Settled> TakeSettled();

  // Counters for reports.
  int updates_acked() const { return updates_acked_; }
  int secagg_completed() const { return secagg_completed_; }
  int secagg_aborted() const { return secagg_aborted_; }
  int reconnects() const { return reconnects_; }
  int check_ins() const { return check_ins_; }
  const std::optional<wire::Finished>& finished_message() const { return finished_msg_; }

 private:
  Session(net::Context* context, const SessionConfig& config)
      : context_(context),
        config_(config),
        jitter_seed_(std::hash<std::string>()(config.name) ^
                     static_cast<uint64_t>(Clock::now().time_since_epoch().count())) {}
  Status Reconnect();
  void FillHello(wire::Hello* hello) const;  // Hello's fields, also what CheckIn carries
  Status SendHello();
  Status SendTaskRequest();
  Status SendCheckIn();
  // Check-in: closes the connection until `come_back` says to return.
  Status GoAway(const wire::ComeBack& come_back);
  Status SendUpdate();
  // Secure aggregation: start after training, send the current stage (the
  // full message, or an empty poll), move on with the aggregator's answer.
  Status StartSecureUpdate(const wire::Update& update);
  Status SendSecAgg(bool poll);
  Status HandleSecAgg(const wire::SecAggMessage& message);
  Status ContinueSecAgg(StatusOr<std::optional<wire::SecAggMessage>> next);
  Status EndSecureUpdate(bool completed, const std::string& why);
  Status Send(wire::Envelope* env, State next);
  Status Handle(const wire::Envelope& env);

  net::Context* context_;
  SessionConfig config_;
  std::unique_ptr<net::ClientSocket> socket_;
  State state_ = State::kHello;
  uint64_t next_request_id_ = 1;
  uint64_t outstanding_id_ = 0;
  Clock::time_point reply_deadline_{};
  Clock::time_point retry_at_{};
  std::chrono::milliseconds backoff_{0};
  std::optional<wire::TrainTask> pending_task_;
  uint32_t training_round_ = 0;
  std::optional<wire::Update> pending_update_;     // sent, not yet acknowledged
  std::optional<wire::SecAggSetup> secagg_setup_;  // of the task being trained
  std::shared_ptr<SecureUpdate> secure_;
  // The step running on the executor (state kSecAggComputing); the worker
  // touches only *secure_ and this slot until `done` is set.
  struct SecAggJob {
    std::atomic<bool> done{false};
    StatusOr<std::optional<wire::SecAggMessage>> result = std::optional<wire::SecAggMessage>();
  };
  std::shared_ptr<SecAggJob> secagg_job_;
  wire::SecAggMessage secagg_out_;  // the stage message last sent
  int secagg_drop_at_ = -1;         // fault injection for the current round
  int secagg_completed_ = 0;
  int secagg_aborted_ = 0;
  bool warned_no_authority_ = false;
  std::optional<wire::Finished> finished_msg_;
  std::vector<Settled> settled_;
  void Settle(bool recorded);
  int updates_acked_ = 0;
  int reconnects_ = 0;
  int check_ins_ = 0;
  uint32_t come_back_round_ = 0;
  Clock::time_point wake_at_{};
  std::optional<wire::ComeBack> deferred_come_back_;  // told to go while an update was still to send
  uint64_t jitter_seed_;
};

const char* StateName(Session::State state);

}  // namespace flotilla::client
