#include "client/runner.h"

#include <algorithm>

#include "client/local_trainer.h"
#include "core/log.h"

namespace flotilla::client {

StatusOr<ClientStats> RunClient(const SessionConfig& config, const training::DataView& data,
                                const std::vector<unsigned char>& model_public_key,
                                const std::atomic<bool>* stop, DeviceStore* store,
                                const std::string& model_path, const std::function<bool()>& may_train) {
  RunnerCache runners(model_path);
  std::vector<float> residual;  // top-k error feedback, across this device's rounds
  net::Context context;
  ASSIGN_OR_RETURN(std::unique_ptr<Session> session, Session::Create(&context, config));
  ClientStats stats;
  // Anti-rollback: never train on a model older than one already verified.
  uint64_t newest = 0;
  if (store != nullptr) {
    ASSIGN_OR_RETURN(newest, store->NewestVerified(config.federation));
  }
  if (store != nullptr) {
    ASSIGN_OR_RETURN(std::vector<wire::Update> outbox, store->ListOutbox());
    if (!outbox.empty()) {
      // Only the newest can still matter; older rounds are long closed.
      for (size_t i = 0; i + 1 < outbox.size(); ++i) RETURN_IF_ERROR(store->RemoveOutbox(outbox[i].round()));
      LOG_INFO("client", config.name << ": re-sending the update for round " << outbox.back().round()
                                     << " from the outbox");
      RETURN_IF_ERROR(session->ResumeUpdate(outbox.back()));
    }
  }
  while (!session->finished() && !(stop && stop->load())) {
    const auto wait = std::clamp(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     session->NextDeadline() - Session::Clock::now()),
                                 std::chrono::milliseconds(0), std::chrono::milliseconds(200));
    ASSIGN_OR_RETURN(std::vector<size_t> ready, net::PollReadable({session->socket()}, wait));
    if (!ready.empty()) RETURN_IF_ERROR(session->OnReadable());
    RETURN_IF_ERROR(session->OnTick());
    for (const Session::Settled& settled : session->TakeSettled()) {
      if (settled.recorded) stats.recorded_rounds.push_back(settled.round);
      if (store != nullptr) RETURN_IF_ERROR(store->RemoveOutbox(settled.round));
    }
    if (std::optional<wire::TrainTask> task = session->TakeTask()) {
      if (may_train && !may_train()) {
        ++stats.rounds_paused;
        LOG_INFO("client", config.name << ": paused; declining round " << task->round());
        RETURN_IF_ERROR(session->AbandonTask(Unavailable("paused on the device")));
        continue;
      }
      LOG_INFO("client",
               config.name << ": training round " << task->round() << " on " << data.size() << " examples");
      StatusOr<training::ModelRunner*> runner = runners.For(*task);
      if (!runner.ok()) {
        LOG_ERROR("client", config.name << ": cannot build the model for round " << task->round() << ": "
                                        << runner.status().message());
        RETURN_IF_ERROR(session->AbandonTask(runner.status()));
        continue;
      }
      StatusOr<wire::Update> update =
          task->model_version() < newest
              ? StatusOr<wire::Update>(PermissionDenied("the aggregator offered model version " +
                                                        std::to_string(task->model_version()) +
                                                        ", older than version " + std::to_string(newest) +
                                                        " this device has verified: refusing a rollback"))
              : RunTrainTask(*runner, data, *task, model_public_key, config.federation, &residual);
      if (update.status().code() == StatusCode::kPermissionDenied) ++stats.models_refused;
      if (update.ok() && task->model_version() > newest) {
        newest = task->model_version();
        if (store != nullptr) RETURN_IF_ERROR(store->NoteVerified(config.federation, newest));
      }
      if (update.ok()) {
        ++stats.rounds_trained;
        // Durable before it leaves the device. (A secure-aggregation input
        // is never resent: a new attempt would need fresh keys anyway.)
        if (store != nullptr && !task->has_secagg()) RETURN_IF_ERROR(store->PutOutbox(*update));
        RETURN_IF_ERROR(session->SubmitUpdate(std::move(update).value()));
      } else {
        RETURN_IF_ERROR(session->AbandonTask(update.status()));
      }
    }
  }
  stats.updates_acked = session->updates_acked();
  stats.reconnects = session->reconnects();
  return stats;
}

}  // namespace flotilla::client
