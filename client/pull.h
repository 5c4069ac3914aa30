// Requests outside training rounds: pull a model version (verified before it
// replaces the device's copy) and query the aggregator's status.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "client/device_store.h"
#include "client/session.h"
#include "core/status.h"
#include "core/weights.h"

namespace flotilla::client {

struct PullResult {
  HeldModel model;           // what the device holds now
  bool up_to_date = false;   // nothing was downloaded
  size_t payload_bytes = 0;  // weight bytes received
  int tensors_received = 0;
  int tensors_total = 0;
};

// Asks for `version` (0 = latest), telling the aggregator which version the
// device holds so that only changed tensors travel. The reassembled model is
// verified with `model_public_key` for config.federation; on any failure the
// device keeps its model. Anti-rollback: as the latest, a version older than
// the newest this device has verified is refused (PermissionDenied); an
// older version is taken only when asked for by number.
StatusOr<PullResult> PullModel(const SessionConfig& config, DeviceStore* store, uint64_t version,
                               const std::vector<unsigned char>& model_public_key,
                               std::chrono::milliseconds timeout = std::chrono::seconds(30));

// The checks and the store update of PullModel for a reply already in hand
// (the final model a Finished message carries; `version` 0 = as the latest).
StatusOr<PullResult> AcceptPulledModel(const SessionConfig& config, DeviceStore* store, uint64_t version,
                                       const wire::PullReply& reply,
                                       const std::vector<unsigned char>& model_public_key);

StatusOr<wire::StatusReply> QueryStatus(const SessionConfig& config,
                                        std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace flotilla::client
