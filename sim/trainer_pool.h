// The simulator's trainer threads: each owns a model, takes jobs from one
// queue (training a device's task, or a short secure-aggregation step that
// goes first), and leaves results for the event loop to collect. A virtual
// device costs a socket and a data view, not a thread.
//
// Thread-safety: Submit, SubmitWork and TakeResults may be called from any
// thread; the destructor joins the threads (queued jobs are dropped).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/local_trainer.h"
#include "core/status.h"
#include "proto/flotilla.pb.h"
#include "sim/fleet_data.h"
#include "training/dataset.h"

namespace flotilla::sim {

struct Job {
  size_t client = 0;
  wire::TrainTask task;
  std::function<void()> work;  // set: a secure-aggregation step instead of training
};
struct JobResult {
  size_t client;
  StatusOr<wire::Update> update;
};

// Trainer threads, each with its own model, fed through a queue.
class TrainerPool {
 public:
  TrainerPool(const TrainerPool&) = delete;
  TrainerPool& operator=(const TrainerPool&) = delete;
  // `model_path`: the TorchScript file every simulated device trains (when
  // the federation's model is one). `data` has each device's examples and
  // held-out examples (what federated evaluation runs on); it outlives the pool.
  TrainerPool(int workers, std::string model_path, const FleetData* data,
              std::vector<unsigned char> model_key, std::string federation)
      : data_(data),
        model_key_(std::move(model_key)),
        federation_(std::move(federation)),
        memories_(data->size()) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, model_path] { Work(model_path); });
  }
  ~TrainerPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Runs `work` on a trainer thread (before queued training: it is short
  // and the round waits for it).
  void SubmitWork(std::function<void()> work) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      Job job;
      job.work = std::move(work);
      jobs_.push_front(std::move(job));
    }
    cv_.notify_one();
  }
  void Submit(Job job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }
  std::vector<JobResult> TakeResults() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<JobResult> out(std::make_move_iterator(results_.begin()),
                               std::make_move_iterator(results_.end()));
    results_.clear();
    return out;
  }

 private:
  void Work(const std::string& model_path);

  const FleetData* data_;
  const std::vector<unsigned char> model_key_;
  const std::string federation_;
  // Each device's memory (top-k's error feedback, SCAFFOLD's c_i). A device
  // has one job at a time, so its slot is never used by two trainers at once.
  std::vector<client::DeviceMemory> memories_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::deque<JobResult> results_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace flotilla::sim
