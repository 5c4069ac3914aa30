#include "client/session.h"

#include <algorithm>

#include "core/log.h"
#include "proto/codec.h"

namespace flotilla::client {

const char* StateName(Session::State state) {
  switch (state) {
    case Session::State::kHello: return "hello";
    case Session::State::kRequesting: return "requesting";
    case Session::State::kWaiting: return "waiting";
    case Session::State::kTraining: return "training";
    case Session::State::kUploading: return "uploading";
    case Session::State::kFinished: return "finished";
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

Status Session::SendHello() {
  wire::Envelope env;
  env.mutable_hello()->set_client_name(config_.name);
  env.mutable_hello()->set_num_examples(config_.num_examples);
  env.mutable_hello()->set_software("flotilla-client/0.1.0");
  return Send(&env, State::kHello);
}

Status Session::SendTaskRequest() {
  wire::Envelope env;
  env.mutable_task_request();
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
  // A full queue is like a lost message: the timeout will reconnect.
  if (!st.ok() && !st.retryable()) return st;
  return Status::Ok();
}

Status Session::OnReadable() {
  while (true) {
    ASSIGN_OR_RETURN(std::optional<std::string> bytes, socket_->Receive(std::chrono::milliseconds(0)));
    if (!bytes) return Status::Ok();
    StatusOr<wire::Envelope> env = proto::ParseEnvelope(bytes->data(), bytes->size());
    if (!env.ok()) {
      LOG_WARN("client", config_.name << ": ignoring bad message from aggregator: " << env.status().message());
      continue;
    }
    if (env->request_id() != outstanding_id_) {
      LOG_DEBUG("client", config_.name << ": ignoring stale reply " << proto::BodyName(*env));
      continue;
    }
    outstanding_id_ = 0;
    RETURN_IF_ERROR(Handle(*env));
  }
}

Status Session::Handle(const wire::Envelope& env) {
  backoff_ = std::chrono::milliseconds(0);
  switch (env.body_case()) {
    case wire::Envelope::kWelcome:
      if (pending_update_) return SendUpdate();
      return SendTaskRequest();
    case wire::Envelope::kWait:
      state_ = State::kWaiting;
      retry_at_ = Clock::now() + std::chrono::milliseconds(env.wait().retry_ms());
      return Status::Ok();
    case wire::Envelope::kTrainTask:
      pending_task_ = env.train_task();
      training_round_ = env.train_task().round();
      state_ = State::kTraining;
      return Status::Ok();
    case wire::Envelope::kAck:
      if (pending_update_) {  // (an Ack may also answer a Decline)
        Settle(true);
        ++updates_acked_;
      }
      return SendTaskRequest();
    case wire::Envelope::kFinished:
      finished_msg_ = env.finished();
      state_ = State::kFinished;
      LOG_DEBUG("client", config_.name << ": federation finished");
      return Status::Ok();
    case wire::Envelope::kError: {
      const wire::Error& err = env.error();
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
  if (state_ == State::kWaiting && now >= retry_at_) {
    if (pending_update_) return SendUpdate();
    return SendTaskRequest();
  }
  if ((state_ == State::kHello || state_ == State::kRequesting || state_ == State::kUploading) &&
      now >= reply_deadline_) {
    backoff_ = std::min(config_.max_backoff, std::max(std::chrono::milliseconds(500), backoff_ * 2));
    ++reconnects_;
    LOG_INFO("client", config_.name << ": no reply from " << config_.endpoint << " in "
                                    << config_.request_timeout.count() << " ms; reconnecting");
    RETURN_IF_ERROR(Reconnect());
    reply_deadline_ = now + config_.request_timeout + backoff_;
  }
  return Status::Ok();
}

Session::Clock::time_point Session::NextDeadline() const {
  switch (state_) {
    case State::kWaiting: return retry_at_;
    case State::kHello:
    case State::kRequesting:
    case State::kUploading: return reply_deadline_;
    default: return Clock::now() + std::chrono::hours(1);
  }
}

std::optional<wire::TrainTask> Session::TakeTask() {
  std::optional<wire::TrainTask> task;
  task.swap(pending_task_);
  return task;
}

Status Session::SubmitUpdate(wire::Update update) {
  if (state_ != State::kTraining) return FailedPrecondition("no task is being trained");
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

Status Session::AbandonTask(const Status& why) {
  LOG_WARN("client", config_.name << ": local training failed, declining round " << training_round_ << ": "
                                  << why.ToString());
  pending_task_.reset();
  // Tell the aggregator, so that the round does not wait for this device.
  wire::Envelope env;
  env.mutable_decline()->set_round(training_round_);
  env.mutable_decline()->set_reason(why.message().substr(0, 1000));
  return Send(&env, State::kRequesting);
}

}  // namespace flotilla::client
