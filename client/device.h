// flotilla::client::Device: the device runtime as a library, for an
// application that takes part in a federation from its own process.
//
//   client::DeviceOptions options;              // who, where, keys, limits
//   options.session.endpoint = "tcp://aggregator.example:7400";
//   ...
//   client::DeviceCallbacks callbacks;
//   callbacks.may_train = [] { return OnMainsPower(); };
//   auto device = client::Device::Create(options, client::CallbackSource(fetch, 0.1), callbacks);
//   auto stats = (*device)->Run();               // blocks; Stop() from another thread
//
// `flotilla client run --config device.toml` is this class behind a
// command line (docs/client.md).
//
// Thread-safety: Run() on one thread; Stop(), Pause(), Resume() and
// paused() from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "client/data_source.h"
#include "client/device_store.h"
#include "client/runner.h"
#include "client/session.h"
#include "core/status.h"

namespace flotilla::client {

struct DeviceOptions {
  // Endpoint, name, federation, CURVE keys, timeouts (client/session.h).
  SessionConfig session;
  std::vector<unsigned char> model_public_key;  // the aggregator's Ed25519 model-signing key
  // The device store (outbox, newest verified model); empty: none, and an
  // update in flight is lost if the process dies.
  std::string state_dir;
  std::string model_path;                        // the device's copy of a TorchScript federation's model
  int threads = 1;                               // Torch threads for training (the process's pool)
  int max_pass_examples = 0;                     // examples per forward/backward pass (0 = the task's batch)
  bool keep_final_model = false;                 // RunOptions::keep_final_model (needs state_dir)
  std::string final_model_out;                   // RunOptions::final_model_out (implies keep_final_model)
  std::chrono::milliseconds hold_after_send{0};  // FAULT INJECTION (tests): RunOptions::hold_after_send
};

struct DeviceCallbacks {
  // Asked before each task and after every training step; false declines
  // the round (see RunOptions::may_train).
  std::function<bool()> may_train;
  // Called on Run()'s thread as the device works (client/runner.h Progress).
  std::function<void(const Progress&)> on_progress;
};

class Device {
 public:
  // Checks the options and opens the store. InvalidArgument naming the
  // option at fault.
  static StatusOr<std::unique_ptr<Device>> Create(DeviceOptions options, std::unique_ptr<DataSource> data,
                                                  DeviceCallbacks callbacks = DeviceCallbacks());
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  // Takes part in the federation until it is over (the statistics), Stop()
  // is called (the statistics so far), or a fatal error (a wrong federation,
  // the store failing). Losing the aggregator is not an error: the device
  // reconnects with backoff and jitter for as long as it takes.
  StatusOr<ClientStats> Run();
  void Stop() { stop_.store(true); }
  // While paused the device declines the rounds it is offered and stops a
  // training in progress (its work is dropped); Resume() undoes it.
  void Pause() { paused_.store(true); }
  void Resume() { paused_.store(false); }
  bool paused() const { return paused_.load(); }

  DataSource* data() { return data_.get(); }
  DeviceStore* store() { return store_.get(); }

 private:
  Device(DeviceOptions options, std::unique_ptr<DataSource> data, DeviceCallbacks callbacks)
      : options_(std::move(options)), data_(std::move(data)), callbacks_(std::move(callbacks)) {}

  DeviceOptions options_;
  std::unique_ptr<DataSource> data_;
  DeviceCallbacks callbacks_;
  std::unique_ptr<DeviceStore> store_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> paused_{false};
};

}  // namespace flotilla::client
