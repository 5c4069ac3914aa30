// The model registry: the current global model and its signature, every
// stored version under the retention policy, and pulls. Signs each version
// for the federation (privacy/signing.h); verifies the latest stored one at
// start-up (re-signing a store written before signatures covered the
// federation). New versions are stored by the round's commit, not here.
//
// Thread-safety: not thread-safe; the aggregator's thread owns it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aggregator/store.h"
#include "core/status.h"
#include "core/weights.h"
#include "privacy/keys.h"
#include "proto/flotilla.pb.h"
#include "proto/records.pb.h"

namespace flotilla::aggregator {

struct RegistryOptions {
  std::string federation;
  std::string arch;
  std::string store_path;  // for messages
  std::shared_ptr<const privacy::SigningKeyPair> signing_key;
  // Keep the newest `retain_last` versions plus every version divisible by
  // `retain_every` (and version 1). 0 = keep everything.
  uint64_t retain_last = 0;
  uint64_t retain_every = 0;
};

class ModelRegistry {
 public:
  // Loads the latest stored model (verified), or stores `initial` as
  // version 1 of an empty store. FailedPrecondition when the store holds
  // another architecture or federation; PermissionDenied-based errors when
  // the stored model does not verify with the signing key.
  static StatusOr<std::unique_ptr<ModelRegistry>> Recover(const RegistryOptions& options, Store* store,
                                                          Weights initial);

  const Weights& global() const { return global_; }
  uint64_t version() const { return version_; }
  uint32_t round() const { return round_; }                        // the round that produced version()
  const std::vector<uint64_t>& stored() const { return stored_; }  // the versions in the store, ascending
  const std::string& signature() const { return signature_; }

  // The signed record of the next version (`weights`, produced by `round`).
  StatusOr<records::ModelRecord> SignNext(const Weights& weights, uint32_t round,
                                          int64_t created_unix_ms) const;
  // Versions the retention policy drops once version `newest` exists.
  std::vector<uint64_t> Expired(uint64_t newest) const;
  // After the round's commit stored `record` (and deleted `expired`).
  void Committed(const records::ModelRecord& record, Weights weights, const std::vector<uint64_t>& expired);

  // The reply to a pull: up to date, the full model, or only the tensors
  // that differ from the version the device holds (when still stored).
  // NotFound for a version the registry does not hold.
  StatusOr<wire::PullReply> Pull(const wire::PullRequest& request) const;

 private:
  ModelRegistry(RegistryOptions options, Store* store, Weights initial)
      : options_(std::move(options)), store_(store), global_(std::move(initial)) {}
  Status ResignLegacyModels();

  RegistryOptions options_;
  Store* store_;
  Weights global_;
  uint64_t version_ = 0;
  uint32_t round_ = 0;
  std::string signature_;
  std::vector<uint64_t> stored_;  // ascending
};

}  // namespace flotilla::aggregator
