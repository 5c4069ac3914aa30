// The aggregator's durable state, on the storage layer (storage/kv_store.h),
// one column family per kind of record: models (with a small model_index
// beside them, so that listing versions and recovering never read model
// blobs), rounds, updates, clients, privacy_ledger, quarantine, server_state. See
// docs/operations.md for the key layout. Keys sort so that iteration order
// is the merge order (round, then client id).
//
// Every write is one synced batch; everything a round commits (round
// record, model version, ledger entries, client records, the removal of
// its updates and of expired versions) is one batch.
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "proto/records.pb.h"
#include "storage/kv_store.h"

namespace flotilla::aggregator {

// What one round commits, atomically.
struct RoundCommit {
  records::RoundRecord round;
  const records::ModelRecord* model = nullptr;  // the new version, if the round produced one
  std::vector<uint64_t> expire;                 // model versions to delete (retention)
  std::vector<records::ClientRecord> clients;   // device records whose counters changed
  std::vector<records::LedgerEntry> ledger;     // the privacy cost of this round
  // The server optimizer's state after this round (stateful strategies).
  const records::ServerStateRecord* server_state = nullptr;
};

class Store {
 public:
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
  // Opens (creating if needed) the RocksDB store in directory `path`. A
  // store locked by another process gives FailedPrecondition naming the path.
  static StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  // Opens an existing store for reading only, without taking its lock, so
  // tools can inspect the store of a running aggregator. Writes fail. A
  // store no aggregator of this version has opened yet has no model index:
  // listings then read the models themselves.
  static StatusOr<std::unique_ptr<Store>> OpenReadOnly(const std::string& path);
  // On any key-value store (in memory for unit tests, or one that injects
  // faults); `kv` must have been opened with Families().
  static StatusOr<std::unique_ptr<Store>> OnKvStore(std::unique_ptr<storage::KvStore> kv);
  // The column families the store uses, and those older versions had.
  static storage::StoreOptions Families();

  // Durably records one accepted update (sync write). AlreadyExists if that
  // client already has an update for that round.
  Status PutUpdate(const records::UpdateRecord& update);
  bool HasUpdate(uint32_t round, const std::string& client_id) const;
  // Visits the updates of `round` in client-id order. Stops at the first
  // error, from the store, a corrupt record, or `visit`; with `corrupt`, a
  // record that does not parse, or whose round or client id contradicts its
  // key, is skipped and the client id of its key listed there.
  Status ForEachUpdate(uint32_t round, const std::function<Status(const records::UpdateRecord&)>& visit,
                       std::vector<std::string>* corrupt = nullptr) const;
  // The same without copying each update's payload: `visit` gets the record
  // with delta.data unset and the payload beside it (valid during the call).
  using PayloadVisit = std::function<Status(const records::UpdateRecord&, std::string_view delta_data)>;
  Status ForEachUpdatePayload(uint32_t round, const PayloadVisit& visit,
                              std::vector<std::string>* corrupt = nullptr) const;

  // One synced batch: the new model version (and its index entry), the
  // round record, client records and ledger entries; deletes the round's
  // updates and the expired versions.
  Status CommitRound(const RoundCommit& commit);
  Status PutRound(const records::RoundRecord& round);
  StatusOr<std::optional<records::RoundRecord>> GetRound(uint32_t round) const;
  // With `corrupt`, records that do not parse are skipped and their keys
  // listed there (for QuarantineRound) instead of failing the listing.
  StatusOr<std::vector<records::RoundRecord>> ListRounds(std::vector<std::string>* corrupt = nullptr) const;

  Status PutModel(const records::ModelRecord& model);
  StatusOr<records::ModelRecord> GetModel(uint64_t version) const;
  // Every stored version's record without its weights, ascending; read
  // from the index, never from the model blobs.
  StatusOr<std::vector<records::ModelRecord>> ListModelSummaries() const;
  // All stored versions, ascending (keys of the index only).
  StatusOr<std::vector<uint64_t>> ListModelVersions() const;
  // The highest stored version, or nullopt for an empty store.
  StatusOr<std::optional<uint64_t>> LatestModelVersion() const;

  Status PutClient(const records::ClientRecord& client);
  // Several in one synced batch (check-in registrations, grouped).
  Status PutClients(const std::vector<records::ClientRecord>& clients);
  StatusOr<std::optional<records::ClientRecord>> GetClient(const std::string& client_id) const;
  StatusOr<std::vector<records::ClientRecord>> ListClients(std::vector<std::string>* corrupt = nullptr) const;

  // The server optimizer's state as of the latest committed round that had
  // one (written by CommitRound); nullopt when none was ever written.
  StatusOr<std::optional<records::ServerStateRecord>> GetServerState() const;

  // Privacy ledger, in (round, client) order. Entries are written by CommitRound.
  StatusOr<std::vector<records::LedgerEntry>> ListLedger() const;

  // Quarantine: moves a record that failed validation on replay out of its
  // column family into `quarantine` with the reason (one synced batch), so
  // a restart does not trip over it again. NotFound if it is gone.
  Status QuarantineUpdate(uint32_t round, const std::string& client_id, const std::string& reason);
  Status QuarantineClient(const std::string& client_id, const std::string& reason);
  Status QuarantineRound(const std::string& key, const std::string& reason);
  // Oldest first.
  StatusOr<std::vector<records::QuarantineRecord>> ListQuarantine() const;

  // Approximate size: SST and blob files plus the memtables (whose data is
  // in the write-ahead log until flushed).
  uint64_t ApproximateSize() const { return kv_->ApproximateSize(); }

  const std::string& path() const { return kv_->path(); }
  // Writes fail with ResourceExhausted (writing nothing) while less disk
  // space than this is free. Default 64 MiB.
  void set_min_free_bytes(uint64_t bytes) { kv_->set_min_free_bytes(bytes); }

 private:
  explicit Store(std::unique_ptr<storage::KvStore> kv) : kv_(std::move(kv)) {}
  // Stores written before the model index existed get one (reads every
  // model once).
  Status BuildModelIndexIfMissing();
  Status Quarantine(const std::string& family, const std::string& key, const std::string& reason);
  // Lists a family; with `corrupt`, records that do not parse, or (with
  // `key_of`) are stored under another key than their own, are listed
  // there instead of failing the listing.
  template <typename Record>
  StatusOr<std::vector<Record>> List(const std::string& family, const std::string& what,
                                     std::vector<std::string>* corrupt,
                                     std::string (*key_of)(const Record&) = nullptr) const;

  std::unique_ptr<storage::KvStore> kv_;
  // Read-only on a store written before the index: list from the models.
  bool no_index_ = false;
};

// Whether the aggregator evaluated a completed round's model on its test
// set (eval_every). proto3 keeps no presence: a round without an
// evaluation has 0 for both its test loss and accuracy.
inline bool RoundWasEvaluated(const records::RoundRecord& r) {
  return r.outcome() == records::RoundRecord::OUTCOME_COMPLETED &&
         (r.test_loss() != 0 || r.test_accuracy() != 0);
}

}  // namespace flotilla::aggregator
