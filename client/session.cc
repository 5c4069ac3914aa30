#include "client/session.h"

#include <algorithm>
#include <cstring>

#include "core/log.h"
#include "core/rng.h"
#include "proto/codec.h"

namespace flotilla::client {

const char* StateName(Session::State state) {
  switch (state) {
    case Session::State::kHello:
      return "hello";
    case Session::State::kRequesting:
      return "requesting";
    case Session::State::kWaiting:
      return "waiting";
    case Session::State::kTraining:
      return "training";
    case Session::State::kUploading:
      return "uploading";
    case Session::State::kSecAgg:
      return "secure-aggregation";
    case Session::State::kSecAggComputing:
      return "secure-aggregation-computing";
    case Session::State::kAway:
      return "away";
    case Session::State::kFinished:
      return "finished";
  }
  return "unknown";
}

StatusOr<std::unique_ptr<Session>> Session::Create(net::Context* context, const SessionConfig& config) {
  if (config.name.empty()) return InvalidArgument("a client needs a name");
  std::unique_ptr<Session> session(new Session(context, config));
  RETURN_IF_ERROR(session->Reconnect());
  return session;
}

Status Session::Reconnect() {
  socket_.reset();
  ASSIGN_OR_RETURN(socket_, net::ClientSocket::Connect(context_, config_.endpoint, config_.socket));
  return SendHello();
}

void Session::FillHello(wire::Hello* hello) const {
  hello->set_client_name(config_.name);
  hello->set_num_examples(config_.num_examples);
  hello->set_software("flotilla-client/0.1.0");
  if (config_.secagg_identity) {
    const auto& key = config_.secagg_identity->public_key;
    hello->set_secagg_identity_key(key.data(), key.size());
    if (!config_.secagg_identity_cert.empty()) hello->set_secagg_identity_cert(config_.secagg_identity_cert);
  }
}

Status Session::SendHello() {
  if (config_.checkin) return SendCheckIn();
  wire::Envelope env;
  FillHello(env.mutable_hello());
  return Send(&env, State::kHello);
}

Status Session::SendCheckIn() {
  wire::Envelope env;
  FillHello(env.mutable_check_in()->mutable_hello());
  env.mutable_check_in()->set_final_model(config_.want_final_model);
  env.mutable_check_in()->set_round(come_back_round_);
  ++check_ins_;
  return Send(&env, State::kHello);
}

Status Session::CheckInNow() {
  if (state_ != State::kAway) return FailedPrecondition("CheckInNow: the session is not away");
  return Reconnect();
}

Status Session::GoAway(const wire::ComeBack& come_back) {
  if (pending_update_) {
    // The update goes first; the device leaves once it is settled.
    deferred_come_back_ = come_back;
    return SendUpdate();
  }
  socket_.reset();
  state_ = State::kAway;
  outstanding_id_ = 0;
  come_back_round_ = come_back.round();
  wake_at_ = Clock::now() + std::chrono::milliseconds(come_back.after_ms());
  LOG_DEBUG("client", config_.name << ": away until round " << come_back.round() << " ("
                                   << come_back.after_ms() << " ms): " << come_back.reason());
  return Status::Ok();
}

Status Session::SendTaskRequest() {
  if (config_.checkin) {
    if (deferred_come_back_) {
      wire::ComeBack come_back = std::move(*deferred_come_back_);
      deferred_come_back_.reset();
      return GoAway(come_back);
    }
    return SendCheckIn();
  }
  wire::Envelope env;
  env.mutable_task_request()->set_final_model(config_.want_final_model);
  return Send(&env, State::kRequesting);
}

Status Session::SendUpdate() {
  wire::Envelope env;
  *env.mutable_update() = *pending_update_;
  return Send(&env, State::kUploading);
}

Status Session::Send(wire::Envelope* env, State next) {
  outstanding_id_ = next_request_id_++;
  env->set_request_id(outstanding_id_);
  state_ = next;
  reply_deadline_ = Clock::now() + config_.request_timeout;
  Status st = socket_->Send(proto::SerializeEnvelope(env));
  LOG_DEBUG("client", config_.name << ": sent " << proto::BodyName(*env) << " #" << outstanding_id_
                                   << (st.ok() ? "" : " FAILED: " + std::string(st.message())));
  // A full queue is like a lost message: the timeout will reconnect.
  if (!st.ok() && !st.retryable()) return st;
  return Status::Ok();
}

Status Session::OnReadable() {
  while (socket_) {  // a ComeBack closes it
    ASSIGN_OR_RETURN(std::optional<std::string> bytes, socket_->Receive(std::chrono::milliseconds(0)));
    if (!bytes) return Status::Ok();
    StatusOr<wire::Envelope> env = proto::ParseEnvelope(bytes->data(), bytes->size());
    if (!env.ok()) {
      LOG_WARN("client",
               config_.name << ": ignoring bad message from aggregator: " << env.status().message());
      continue;
    }
    if (env->request_id() != outstanding_id_) {
      LOG_DEBUG("client", config_.name << ": ignoring stale reply " << proto::BodyName(*env));
      continue;
    }
    outstanding_id_ = 0;
    LOG_DEBUG("client", config_.name << ": got " << proto::BodyName(*env) << " #" << env->request_id()
                                     << " in state " << StateName(state_));
    RETURN_IF_ERROR(Handle(*env));
  }
  return Status::Ok();
}

Status Session::Handle(const wire::Envelope& env) {
  backoff_ = std::chrono::milliseconds(0);
  switch (env.body_case()) {
    case wire::Envelope::kWelcome:
      if (env.welcome().federation() != config_.federation) {
        state_ = State::kFinished;
        return FailedPrecondition("the aggregator at " + config_.endpoint + " serves federation '" +
                                  env.welcome().federation() + "', but this device is enrolled in '" +
                                  config_.federation + "' (--federation)");
      }
      if (secure_) return SendSecAgg(/*poll=*/false);
      if (pending_update_) return SendUpdate();
      return SendTaskRequest();
    case wire::Envelope::kWait:
      state_ = State::kWaiting;
      retry_at_ = Clock::now() + std::chrono::milliseconds(env.wait().retry_ms());
      return Status::Ok();
    case wire::Envelope::kComeBack:
      if (env.come_back().federation() != config_.federation) {
        state_ = State::kFinished;
        return FailedPrecondition("the aggregator at " + config_.endpoint + " serves federation '" +
                                  env.come_back().federation() + "', but this device is enrolled in '" +
                                  config_.federation + "' (--federation)");
      }
      return GoAway(env.come_back());
    case wire::Envelope::kTrainTask:
      if (pending_update_) {
        // Checked in again before the update reached the aggregator: the
        // same round's task is answered with that update, not trained again.
        if (pending_update_->round() == env.train_task().round()) return SendUpdate();
        Settle(false);
      }
      pending_task_ = env.train_task();
      training_round_ = env.train_task().round();
      secagg_setup_.reset();
      if (env.train_task().has_secagg()) secagg_setup_ = env.train_task().secagg();
      state_ = State::kTraining;
      return Status::Ok();
    case wire::Envelope::kAck:
      if (pending_update_) {  // (an Ack may also answer a Decline)
        Settle(true);
        ++updates_acked_;
      }
      if (config_.checkin && env.ack().has_come_back()) {
        deferred_come_back_.reset();
        return GoAway(env.ack().come_back());
      }
      return SendTaskRequest();
    case wire::Envelope::kFinished:
      finished_msg_ = env.finished();
      state_ = State::kFinished;
      LOG_DEBUG("client", config_.name << ": federation finished");
      return Status::Ok();
    case wire::Envelope::kSecagg:
      if (!secure_) {
        LOG_WARN("client", config_.name << ": secure aggregation message without a secure round");
        return SendTaskRequest();
      }
      return HandleSecAgg(env.secagg());
    case wire::Envelope::kError: {
      const wire::Error& err = env.error();
      if (err.code() == wire::ERROR_RATE_LIMITED) {
        // Over a per-device limit: wait as told, then repeat what was refused
        // (a secure stage polls first; the aggregator says if it is missing).
        LOG_WARN("client", config_.name << ": aggregator is limiting this device: " << err.message());
        state_ = State::kWaiting;
        retry_at_ = Clock::now() + std::chrono::milliseconds(std::max<uint32_t>(100, err.retry_ms()));
        return Status::Ok();
      }
      if (secure_) {
        switch (err.code()) {
          case wire::ERROR_NOT_REGISTERED:
            return SendHello();
          case wire::ERROR_NOT_FOUND:
            return SendSecAgg(/*poll=*/false);  // our message never arrived
          case wire::ERROR_INTERNAL:
            state_ = State::kWaiting;
            retry_at_ = Clock::now() + std::chrono::seconds(1);
            return Status::Ok();
          default:
            return EndSecureUpdate(false, err.message());
        }
      }
      switch (err.code()) {
        case wire::ERROR_NOT_REGISTERED:
          return SendHello();
        case wire::ERROR_DUPLICATE:
          // Already recorded (our earlier copy got through): same as an Ack.
          Settle(true);
          ++updates_acked_;
          return SendTaskRequest();
        case wire::ERROR_INTERNAL:
          // Aggregator-side trouble: keep the update and retry shortly.
          state_ = State::kWaiting;
          retry_at_ = Clock::now() + std::chrono::seconds(1);
          return Status::Ok();
        default:
          if (config_.checkin && err.has_come_back()) {
            // Check-in: the round is over for this device (over-selection
            // had its N, or the update was refused); leave until told.
            if (err.code() == wire::ERROR_WRONG_ROUND) {
              LOG_DEBUG("client", config_.name << ": update not needed: " << err.message());
            } else {
              LOG_WARN("client", config_.name << ": update refused: " << err.message());
            }
            Settle(false);
            deferred_come_back_.reset();
            return GoAway(err.come_back());
          }
          if (pending_update_) {
            LOG_WARN("client", config_.name << ": update for round " << pending_update_->round()
                                            << " refused: " << err.message());
            Settle(false);
          } else {
            LOG_WARN("client", config_.name << ": aggregator error: " << err.message());
          }
          state_ = State::kWaiting;
          retry_at_ = Clock::now() + std::chrono::milliseconds(200);
          return Status::Ok();
      }
    }
    default:
      LOG_WARN("client", config_.name << ": unexpected " << proto::BodyName(env) << " from aggregator");
      return Status::Ok();
  }
}

Status Session::OnTick() {
  const auto now = Clock::now();
  if (state_ == State::kSecAggComputing && secagg_job_ && secagg_job_->done.load(std::memory_order_acquire)) {
    std::shared_ptr<SecAggJob> job = std::move(secagg_job_);
    return ContinueSecAgg(std::move(job->result));
  }
  if (state_ == State::kAway) {
    if (config_.wake_by_timer && now >= wake_at_) return CheckInNow();
    return Status::Ok();
  }
  if (state_ == State::kWaiting && now >= retry_at_) {
    if (secure_) return SendSecAgg(/*poll=*/true);
    if (pending_update_) return SendUpdate();
    return SendTaskRequest();
  }
  if ((state_ == State::kHello || state_ == State::kRequesting || state_ == State::kUploading ||
       state_ == State::kSecAgg) &&
      now >= reply_deadline_) {
    backoff_ = std::min(config_.max_backoff, std::max(std::chrono::milliseconds(500), backoff_ * 2));
    ++reconnects_;
    LOG_INFO("client", config_.name << ": no reply from " << config_.endpoint << " in "
                                    << config_.request_timeout.count() << " ms; reconnecting");
    RETURN_IF_ERROR(Reconnect());
    // Jittered, uniform in [backoff/2, backoff]: a fleet that lost its
    // aggregator does not come back in lockstep.
    Rng jitter(DeriveSeed(jitter_seed_, "reconnect", static_cast<uint64_t>(reconnects_)));
    const auto half = backoff_ / 2;
    reply_deadline_ = now + config_.request_timeout + half +
                      std::chrono::milliseconds(jitter.UniformInt(static_cast<uint64_t>(half.count()) + 1));
  }
  return Status::Ok();
}

Session::Clock::time_point Session::NextDeadline() const {
  switch (state_) {
    case State::kWaiting:
      return retry_at_;
    case State::kHello:
    case State::kRequesting:
    case State::kUploading:
    case State::kSecAgg:
      return reply_deadline_;
    case State::kSecAggComputing:
      return Clock::now() + std::chrono::milliseconds(5);  // poll for the result
    case State::kAway:
      return config_.wake_by_timer ? wake_at_ : Clock::now() + std::chrono::hours(1);
    default:
      return Clock::now() + std::chrono::hours(1);
  }
}

std::optional<wire::TrainTask> Session::TakeTask() {
  std::optional<wire::TrainTask> task;
  task.swap(pending_task_);
  return task;
}

Status Session::SubmitUpdate(wire::Update update) {
  if (state_ != State::kTraining) return FailedPrecondition("no task is being trained");
  if (secagg_setup_) return StartSecureUpdate(update);
  pending_update_ = std::move(update);
  return SendUpdate();
}

void Session::Settle(bool recorded) {
  if (pending_update_) settled_.push_back({pending_update_->round(), recorded});
  pending_update_.reset();
}

std::vector<Session::Settled> Session::TakeSettled() {
  std::vector<Settled> out;
  out.swap(settled_);
  return out;
}

Status Session::ResumeUpdate(wire::Update update) {
  if (state_ != State::kHello) return FailedPrecondition("ResumeUpdate must come before the Welcome");
  pending_update_ = std::move(update);
  return Status::Ok();
}

Status Session::StartSecureUpdate(const wire::Update& update) {
  const wire::SecAggSetup setup = *secagg_setup_;
  secagg_setup_.reset();
  StatusOr<std::vector<float>> delta = [&]() -> StatusOr<std::vector<float>> {
    if (!config_.secagg_identity)
      return FailedPrecondition("this device has no secure-aggregation identity key");
    const std::string& data = update.delta().data();
    if (data.size() % sizeof(float) != 0) return InvalidArgument("update delta is not a float vector");
    std::vector<float> values(data.size() / sizeof(float));
    std::memcpy(values.data(), data.data(), data.size());
    return values;
  }();
  StatusOr<std::unique_ptr<SecureUpdate>> made =
      delta.ok() ? SecureUpdate::Create(setup, update.round(), *config_.secagg_identity, *delta,
                                        config_.secagg_authority_key)
                 : StatusOr<std::unique_ptr<SecureUpdate>>(delta.status());
  if (config_.secagg_authority_key.empty() && !warned_no_authority_) {
    warned_no_authority_ = true;
    LOG_WARN("client",
             config_.name << ": no enrolment authority key: the round's identity keys are taken on the "
                             "aggregator's word (see docs/secure-aggregation.md)");
  }
  if (!made.ok()) {
    ++secagg_aborted_;
    return AbandonTask(made.status());
  }
  secure_ = std::move(made).value();
  secagg_out_ = secure_->First();
  const bool faulty =
      config_.secagg_fault_last_round == 0 || update.round() <= config_.secagg_fault_last_round;
  secagg_drop_at_ = faulty ? config_.secagg_drop_stage : -1;
  if (faulty && secagg_drop_at_ < 0 && config_.secagg_dropout > 0) {
    Rng rng(DeriveSeed(config_.fault_seed, "secagg-dropout", update.round()));
    if (rng.UniformDouble() < config_.secagg_dropout)
      secagg_drop_at_ = 1 + static_cast<int>(rng.UniformInt(3));
  }
  return SendSecAgg(/*poll=*/false);
}

Status Session::SendSecAgg(bool poll) {
  if (static_cast<int>(secagg_out_.stage()) == secagg_drop_at_) {
    // Fault injection: vanish from this round. Ask for work again later; the
    // aggregator does not hand this round's task out twice.
    LOG_INFO("client", config_.name << ": FAULT INJECTION: dropping out of secure aggregation at stage "
                                    << secagg_out_.stage() << " of round " << secure_->round());
    secure_.reset();
    state_ = State::kWaiting;
    retry_at_ = Clock::now() + std::chrono::seconds(1);
    return Status::Ok();
  }
  wire::Envelope env;
  *env.mutable_secagg() = secagg_out_;
  if (poll) env.mutable_secagg()->clear_payload();
  return Send(&env, State::kSecAgg);
}

Status Session::HandleSecAgg(const wire::SecAggMessage& message) {
  if (!config_.secagg_executor) return ContinueSecAgg(secure_->Next(message));
  // Off this thread; nothing else touches secure_ until the job is done (no
  // request is outstanding in kSecAggComputing, so no reply or timeout can).
  state_ = State::kSecAggComputing;
  auto job = std::make_shared<SecAggJob>();
  secagg_job_ = job;
  config_.secagg_executor([job, secure = secure_, message] {
    job->result = secure->Next(message);
    job->done.store(true, std::memory_order_release);
  });
  return Status::Ok();
}

Status Session::ContinueSecAgg(StatusOr<std::optional<wire::SecAggMessage>> next) {
  if (!next.ok()) return EndSecureUpdate(false, std::string(next.status().message()));
  if (!next->has_value()) return EndSecureUpdate(true, "");
  secagg_out_ = std::move(**next);
  return SendSecAgg(/*poll=*/false);
}

Status Session::EndSecureUpdate(bool completed, const std::string& why) {
  const uint32_t round = secure_->round();
  secure_.reset();
  if (completed) {
    ++secagg_completed_;
    ++updates_acked_;
    settled_.push_back({round, true});
    LOG_DEBUG("client", config_.name << ": secure aggregation for round " << round << " done");
    return SendTaskRequest();
  }
  ++secagg_aborted_;
  LOG_WARN("client", config_.name << ": secure aggregation for round " << round << " ended: " << why);
  settled_.push_back({round, false});
  state_ = State::kWaiting;
  retry_at_ = Clock::now() + std::chrono::milliseconds(200);
  return Status::Ok();
}

Status Session::AbandonTask(const Status& why) {
  LOG_WARN("client", config_.name << ": declining round " << training_round_ << ": " << why.ToString());
  pending_task_.reset();
  // Tell the aggregator, so that the round does not wait for this device.
  wire::Envelope env;
  env.mutable_decline()->set_round(training_round_);
  env.mutable_decline()->set_reason(why.message().substr(0, 1000));
  return Send(&env, State::kRequesting);
}

}  // namespace flotilla::client
