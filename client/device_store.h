// A device's durable state, on the storage layer: the outbox (updates sent but not yet
// acknowledged, so a crash or reboot does not lose finished training), the
// models it pulled (verified), and small state values.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "proto/flotilla.pb.h"
#include "storage/kv_store.h"

namespace flotilla::client {

// A verified model held by the device.
struct HeldModel {
  uint64_t version = 0;
  uint32_t round = 0;
  std::string arch;
  wire::WeightsProto weights;  // full
  std::string signature;
};

class DeviceStore {
 public:
  // Opens (creating) the store in `path`; a store locked by another process
  // gives FailedPrecondition naming the path.
  static StatusOr<std::unique_ptr<DeviceStore>> Open(const std::string& path);
  // On any key-value store opened with Families() (in memory for tests).
  static std::unique_ptr<DeviceStore> OnKvStore(std::unique_ptr<storage::KvStore> kv);
  static storage::StoreOptions Families();
  DeviceStore(const DeviceStore&) = delete;
  DeviceStore& operator=(const DeviceStore&) = delete;

  // Outbox: at most one pending update per round; synced writes.
  Status PutOutbox(const wire::Update& update);
  Status RemoveOutbox(uint32_t round);
  StatusOr<std::vector<wire::Update>> ListOutbox() const;

  // The latest verified model (replaces the previous one atomically).
  Status PutModel(const HeldModel& model);
  StatusOr<std::optional<HeldModel>> GetModel() const;

  // Anti-rollback: the newest model version this device has verified for
  // `federation` (in a task or a pull), 0 if none. NoteVerified keeps the
  // larger of the stored and the given version (synced).
  StatusOr<uint64_t> NewestVerified(const std::string& federation) const;
  Status NoteVerified(const std::string& federation, uint64_t version);

  // What this device keeps of a federation's model that never travels: its
  // personal parameters and local buffers (training::ModelRunner::
  // GetLocalState), its top-k error-feedback residual and SCAFFOLD's c_i. Replaced as a
  // whole after each round it trains (synced), read back when the model is
  // rebuilt after a restart.
  struct LocalState {
    wire::WeightsProto tensors;  // empty layout: none
    std::vector<float> residual;
    std::vector<float> control;
  };
  Status PutLocalState(const std::string& federation, const LocalState& state);
  StatusOr<std::optional<LocalState>> GetLocalState(const std::string& federation) const;

 private:
  explicit DeviceStore(std::unique_ptr<storage::KvStore> kv) : kv_(std::move(kv)) {}
  std::unique_ptr<storage::KvStore> kv_;
};

}  // namespace flotilla::client
