// RunClient: the device runtime's main loop for one client: connect, train
// when asked, upload, until the aggregator says the federation is over.
#pragma once

#include <atomic>
#include <functional>
#include <string>

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
  std::vector<uint32_t> recorded_rounds;  // rounds whose update the aggregator confirmed
};

// Blocks until Finished, `*stop` becomes true, or a fatal error. The model
// is built for the architecture each task names: a built-in one, or the
// TorchScript file `model_path` split as the task's options say.
// Every model is verified with `model_public_key` before it is loaded.
// With a `store`, each update is written to its outbox (synced) before it is
// sent and removed once settled; an update left there by a crash is sent
// again first thing.
// `may_train` (when given) is asked before each task: false (the device is
// busy, on battery, paused by its owner) declines that round with the
// reason "paused on the device" instead of training, so the round does not
// wait for it.
StatusOr<ClientStats> RunClient(const SessionConfig& config, const training::DataView& data,
                                const std::vector<unsigned char>& model_public_key,
                                const std::atomic<bool>* stop, DeviceStore* store = nullptr,
                                const std::string& model_path = std::string(),
                                const std::function<bool()>& may_train = nullptr);

}  // namespace flotilla::client
