#include "sim/trainer_pool.h"

#include "client/local_trainer.h"
#include "training/model.h"

namespace flotilla::sim {

void TrainerPool::Work(const std::string& model_path) {
  training::SetTorchThreads(1);
  client::RunnerCache runners(model_path);  // one model per trainer thread
  while (true) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    if (job.work) {
      job.work();
      continue;
    }
    StatusOr<training::ModelRunner*> runner = runners.For(job.task);
    client::LocalTraining local;
    const training::DataView held_out = data_->HeldOut(job.client);
    local.held_out = &held_out;
    JobResult result{
        job.client, runner.ok() ? client::RunTrainTask(*runner, data_->View(job.client), job.task, model_key_,
                                                       federation_, &memories_[job.client], local)
                                : StatusOr<wire::Update>(runner.status())};
    std::lock_guard<std::mutex> lock(mu_);
    results_.push_back(std::move(result));
  }
}

}  // namespace flotilla::sim
