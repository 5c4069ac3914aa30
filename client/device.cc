#include "client/device.h"

#include "core/log.h"
#include "training/model.h"

namespace flotilla::client {

StatusOr<std::unique_ptr<Device>> Device::Create(DeviceOptions options, std::unique_ptr<DataSource> data,
                                                 DeviceCallbacks callbacks) {
  if (data == nullptr) return InvalidArgument("Device: no data source");
  if (options.session.name.empty())
    return InvalidArgument("Device: session.name (the device's name) is empty");
  if (options.model_public_key.empty()) {
    return InvalidArgument(
        "Device: model_public_key is empty; every model is verified with the aggregator's "
        "model-signing key (keys/aggregator.sign.pub)");
  }
  if (options.threads < 1) return InvalidArgument("Device: threads must be >= 1");
  if (options.max_pass_examples < 0) return InvalidArgument("Device: max_pass_examples must be >= 0");
  if ((options.keep_final_model || !options.final_model_out.empty()) && options.state_dir.empty()) {
    return InvalidArgument("Device: keep_final_model needs a state_dir to keep it in");
  }
  std::unique_ptr<Device> device(new Device(std::move(options), std::move(data), std::move(callbacks)));
  if (!device->options_.state_dir.empty()) {
    ASSIGN_OR_RETURN(device->store_, DeviceStore::Open(device->options_.state_dir));
  }
  return device;
}

StatusOr<ClientStats> Device::Run() {
  training::SetTorchThreads(options_.threads);
  SessionConfig session = options_.session;
  // Hello announces how many examples the device has now.
  StatusOr<training::DataView> first = data_->TrainingData();
  if (first.ok()) {
    session.num_examples = first->size();
    LOG_INFO("client", session.name << ": " << data_->Describe());
  } else {
    LOG_WARN("client", session.name << ": no data yet: " << first.status().message());
  }
  RunOptions run;
  run.data = data_.get();
  run.store = store_.get();
  run.model_path = options_.model_path;
  run.max_pass_examples = options_.max_pass_examples;
  run.keep_final_model = options_.keep_final_model || !options_.final_model_out.empty();
  run.final_model_out = options_.final_model_out;
  run.hold_after_send = options_.hold_after_send;
  run.on_progress = callbacks_.on_progress;
  run.may_train = [this] {
    if (paused_.load()) return false;
    return !callbacks_.may_train || callbacks_.may_train();
  };
  return RunClient(session, options_.model_public_key, &stop_, run);
}

}  // namespace flotilla::client
