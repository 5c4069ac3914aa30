// RunClient: the device runtime's main loop for one client: connect, train
// when asked, upload, until the aggregator says the federation is over.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <string>

#include "client/data_source.h"
#include "client/device_store.h"
#include "client/session.h"
#include "core/status.h"
#include "training/dataset.h"
#include "training/model.h"

namespace flotilla::client {

struct ClientStats {
  int rounds_trained = 0;
  int updates_acked = 0;
  int reconnects = 0;
  int models_refused = 0;                 // failed signature verification
  int rounds_paused = 0;                  // declined because may_train said no
  int rounds_without_data = 0;            // declined because the data source failed
  std::vector<uint32_t> recorded_rounds;  // rounds whose update the aggregator confirmed
  uint64_t final_model_version = 0;       // the final model kept in the store (keep_final_model)
};

// What the runtime reports as it goes (RunOptions::on_progress).
struct Progress {
  enum class Event {
    kTask,           // a round's task arrived; training starts
    kStep,           // one optimizer step done (step of steps)
    kUpdateSent,     // the update is in the outbox and on its way
    kUpdateSettled,  // the aggregator recorded it (recorded) or refused it for good
    kDeclined,       // the round was declined (detail says why: paused, no data, ...)
    kFinished,       // the federation is over
  };
  Event event = Event::kTask;
  uint32_t round = 0;
  int64_t step = 0, steps = 0;
  bool recorded = false;
  std::string detail;
};

struct RunOptions {
  DataSource* data = nullptr;    // required: asked for its examples before every task
  DeviceStore* store = nullptr;  // outbox and anti-rollback; nullptr: nothing survives a restart
  std::string model_path;        // the device's copy of a TorchScript federation's model
  // Asked before each task and after every training step: false (the
  // device is busy, on battery, paused by its owner) declines the round
  // with "paused on the device" (a training in progress is stopped and its
  // work dropped), so the round does not wait for this device. Keep it cheap.
  std::function<bool()> may_train;
  std::function<void(const Progress&)> on_progress;
  int max_pass_examples = 0;  // training::TrainConfig::max_pass_examples
  // When the federation ends, take its final model (sent with Finished),
  // verify it and keep it in the store (RunOptions::store is then required):
  // what the device's own inference uses afterwards.
  bool keep_final_model = false;
  // With keep_final_model: also write the final model here for the device's
  // own inference. A TorchScript federation's model is written as a
  // TorchScript file with this device's trained personal layers and local
  // buffers in it (from its copy of the model file if it never trained); a
  // built-in one as float32 weights plus PATH.json (core/raw_weights.h).
  std::string final_model_out;
  // FAULT INJECTION (tests): after an update is handed to the socket, sleep
  // this long before reading the reply: a window in which to kill the
  // process between sending and the acknowledgement.
  std::chrono::milliseconds hold_after_send{0};
};

// Blocks until Finished, `*stop` becomes true, or a fatal error. The model
// is built for the architecture each task names: a built-in one, or the
// TorchScript file options.model_path split as the task's options say.
// Every model is verified with `model_public_key` before it is loaded.
// With a store, each update is written to its outbox (synced) before it is
// sent and removed once settled; an update left there by a crash is sent
// again first thing (the aggregator records it once).
StatusOr<ClientStats> RunClient(const SessionConfig& config,
                                const std::vector<unsigned char>& model_public_key,
                                const std::atomic<bool>* stop, const RunOptions& options);

// The same over a fixed set of examples.
StatusOr<ClientStats> RunClient(const SessionConfig& config, const training::DataView& data,
                                const std::vector<unsigned char>& model_public_key,
                                const std::atomic<bool>* stop, DeviceStore* store = nullptr,
                                const std::string& model_path = std::string(),
                                const std::function<bool()>& may_train = nullptr);

}  // namespace flotilla::client
