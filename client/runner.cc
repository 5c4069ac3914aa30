#include "client/runner.h"

#include <algorithm>
#include <thread>

#include "client/local_trainer.h"
#include "client/pull.h"
#include "core/log.h"
#include "core/raw_weights.h"
#include "proto/codec.h"
#include "training/export.h"

namespace flotilla::client {

StatusOr<ClientStats> RunClient(const SessionConfig& config, const training::DataView& data,
                                const std::vector<unsigned char>& model_public_key,
                                const std::atomic<bool>* stop, DeviceStore* store,
                                const std::string& model_path, const std::function<bool()>& may_train) {
  std::unique_ptr<DataSource> source = FixedSource(data);
  RunOptions options;
  options.data = source.get();
  options.store = store;
  options.model_path = model_path;
  options.may_train = may_train;
  return RunClient(config, model_public_key, stop, options);
}

StatusOr<ClientStats> RunClient(const SessionConfig& config,
                                const std::vector<unsigned char>& model_public_key,
                                const std::atomic<bool>* stop, const RunOptions& options) {
  if (options.data == nullptr) return InvalidArgument("RunClient: no data source");
  DeviceStore* store = options.store;
  auto report = [&](Progress p) {
    if (options.on_progress) options.on_progress(p);
  };
  if (options.keep_final_model && store == nullptr) {
    return InvalidArgument("RunClient: keeping the final model needs a device store");
  }
  SessionConfig session_config = config;
  session_config.want_final_model = options.keep_final_model;
  RunnerCache runners(options.model_path);
  DeviceMemory memory;  // top-k error feedback and SCAFFOLD's c_i, across this device's rounds
  // What never travels (personal layers, local buffers, the memory above)
  // survives restarts in the store: read back when the model is built.
  std::optional<DeviceStore::LocalState> stored_local;
  if (store != nullptr) {
    ASSIGN_OR_RETURN(stored_local, store->GetLocalState(config.federation));
    if (stored_local) {
      memory.residual = stored_local->residual;
      memory.control = stored_local->control;
    }
  }
  net::Context context;
  ASSIGN_OR_RETURN(std::unique_ptr<Session> session, Session::Create(&context, session_config));
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
  auto decline = [&](uint32_t round, const Status& why) {
    Progress p;
    p.event = Progress::Event::kDeclined;
    p.round = round;
    p.detail = std::string(why.message());
    report(p);
    return session->AbandonTask(why);
  };
  while (!session->finished() && !(stop && stop->load())) {
    const auto wait = std::clamp(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     session->NextDeadline() - Session::Clock::now()),
                                 std::chrono::milliseconds(0), std::chrono::milliseconds(200));
    if (session->socket() != nullptr) {
      ASSIGN_OR_RETURN(std::vector<size_t> ready, net::PollReadable({session->socket()}, wait));
      if (!ready.empty()) RETURN_IF_ERROR(session->OnReadable());
    } else {
      std::this_thread::sleep_for(wait);  // away between check-ins: no connection
    }
    RETURN_IF_ERROR(session->OnTick());
    for (const Session::Settled& settled : session->TakeSettled()) {
      if (settled.recorded) stats.recorded_rounds.push_back(settled.round);
      if (store != nullptr) RETURN_IF_ERROR(store->RemoveOutbox(settled.round));
      Progress p;
      p.event = Progress::Event::kUpdateSettled;
      p.round = settled.round;
      p.recorded = settled.recorded;
      report(p);
    }
    std::optional<wire::TrainTask> task = session->TakeTask();
    if (!task) continue;
    const uint32_t round = task->round();
    const ScopedLogFields fields({{"round", std::to_string(round)}, {"device", config.name}});
    if (options.may_train && !options.may_train()) {
      ++stats.rounds_paused;
      LOG_INFO("client", config.name << ": paused; declining round " << round);
      RETURN_IF_ERROR(decline(round, Unavailable("paused on the device")));
      continue;
    }
    StatusOr<training::DataView> data = options.data->TrainingData();
    if (!data.ok()) {
      ++stats.rounds_without_data;
      LOG_WARN("client", config.name << ": no data for round " << round << ": " << data.status().message());
      RETURN_IF_ERROR(decline(round, data.status()));
      continue;
    }
    LOG_INFO("client", config.name << ": training round " << round << " on " << data->size() << " examples");
    {
      Progress p;
      p.event = Progress::Event::kTask;
      p.round = round;
      report(p);
    }
    training::ModelRunner* previous = runners.current();
    StatusOr<training::ModelRunner*> runner = runners.For(*task);
    if (!runner.ok()) {
      LOG_ERROR("client", config.name << ": cannot build the model for round " << round << ": "
                                      << runner.status().message());
      RETURN_IF_ERROR(decline(round, runner.status()));
      continue;
    }
    if (*runner != previous && stored_local && stored_local->tensors.layout_size() > 0) {
      // A freshly built model: put this device's own layers back.
      StatusOr<Weights> local = proto::WeightsFromProto(stored_local->tensors, nullptr);
      Status restored = local.ok() ? (*runner)->SetLocalState(*local) : local.status();
      if (restored.ok()) {
        LOG_INFO("client", config.name << ": restored its personal layers and local buffers from the store");
      } else {
        LOG_WARN("client", config.name << ": not restoring the stored local state: " << restored.message());
      }
    }
    LocalTraining local;
    local.max_pass_examples = options.max_pass_examples;
    StatusOr<training::DataView> held_out = training::DataView{};
    if (task->config().evaluate()) {
      held_out = options.data->HeldOutData();
      if (!held_out.ok()) {
        LOG_WARN("client",
                 config.name << ": no held-out examples to evaluate on: " << held_out.status().message());
      } else {
        local.held_out = &*held_out;
      }
    }
    bool paused_mid_round = false;
    local.on_step = [&](int64_t step, int64_t steps) {
      Progress p;
      p.event = Progress::Event::kStep;
      p.round = round;
      p.step = step;
      p.steps = steps;
      report(p);
      if ((options.may_train && !options.may_train()) || (stop && stop->load())) {
        paused_mid_round = true;
        return false;
      }
      return true;
    };
    StatusOr<wire::Update> update =
        task->model_version() < newest
            ? StatusOr<wire::Update>(PermissionDenied("the aggregator offered model version " +
                                                      std::to_string(task->model_version()) +
                                                      ", older than version " + std::to_string(newest) +
                                                      " this device has verified: refusing a rollback"))
            : RunTrainTask(*runner, *data, *task, model_public_key, config.federation, &memory, local);
    if (update.status().code() == StatusCode::kPermissionDenied) ++stats.models_refused;
    if (update.ok() && task->model_version() > newest) {
      newest = task->model_version();
      if (store != nullptr) RETURN_IF_ERROR(store->NoteVerified(config.federation, newest));
    }
    if (!update.ok()) {
      if (paused_mid_round) {
        ++stats.rounds_paused;
        LOG_INFO("client", config.name << ": paused during training; declining round " << round);
        RETURN_IF_ERROR(decline(round, Unavailable("paused on the device")));
      } else {
        RETURN_IF_ERROR(decline(round, update.status()));
      }
      continue;
    }
    ++stats.rounds_trained;
    if (store != nullptr) {
      std::optional<Weights> local_state = (*runner)->GetLocalState();
      if (local_state || !memory.residual.empty() || !memory.control.empty()) {
        DeviceStore::LocalState keep;
        if (local_state) proto::WeightsToProto(*local_state, &keep.tensors);
        keep.residual = memory.residual;
        keep.control = memory.control;
        RETURN_IF_ERROR(store->PutLocalState(config.federation, keep));
        stored_local = std::move(keep);
      }
    }
    // Durable before it leaves the device. (A secure-aggregation input
    // is never resent: a new attempt would need fresh keys anyway.)
    if (store != nullptr && !task->has_secagg()) RETURN_IF_ERROR(store->PutOutbox(*update));
    RETURN_IF_ERROR(session->SubmitUpdate(std::move(update).value()));
    {
      Progress p;
      p.event = Progress::Event::kUpdateSent;
      p.round = round;
      report(p);
    }
    if (options.hold_after_send.count() > 0) {
      LOG_WARN("client", config.name << ": FAULT INJECTION: update for round " << round << " sent; holding "
                                     << options.hold_after_send.count() << " ms before reading the reply");
      std::this_thread::sleep_for(options.hold_after_send);
    }
  }
  if (session->finished() && options.keep_final_model) {
    const auto& finished = session->finished_message();
    if (!finished || !finished->has_final_model()) {
      return Unavailable("the federation is over but the aggregator sent no final model");
    }
    ASSIGN_OR_RETURN(PullResult kept,
                     AcceptPulledModel(config, store, 0, finished->final_model(), model_public_key));
    stats.final_model_version = kept.model.version;
    if (!options.final_model_out.empty()) {
      ASSIGN_OR_RETURN(Weights final_weights, proto::WeightsFromProto(kept.model.weights, nullptr));
      training::ModelRunner* trained = runners.current();
      if (trained != nullptr && trained->arch() == training::kTorchScript) {
        RETURN_IF_ERROR(trained->SaveScript(final_weights, options.final_model_out));
      } else if (!options.model_path.empty()) {
        RETURN_IF_ERROR(
            training::WriteTorchScript(options.model_path, final_weights, options.final_model_out));
      } else {
        RETURN_IF_ERROR(WriteRawWeights(options.final_model_out, final_weights, kept.model.arch,
                                        kept.model.version, kept.model.round));
      }
    }
    LOG_INFO("client", config.name << ": kept the final model, version " << kept.model.version
                                   << " (signature verified)");
  }
  if (session->finished()) {
    Progress p;
    p.event = Progress::Event::kFinished;
    report(p);
  }
  stats.updates_acked = session->updates_acked();
  stats.reconnects = session->reconnects();
  return stats;
}

}  // namespace flotilla::client
