// The aggregator's durable state in RocksDB, one column family per kind of
// record: models, rounds, updates, clients, privacy_ledger, strategy_state,
// metrics, quarantine. See docs/operations.md for the key layout. Keys
// sort so that iteration order is the merge order (round, then client id).
//
// Writes that acknowledge something to a peer use WriteOptions.sync = true.
// Thread-safety: all methods may be called from any thread (RocksDB is).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "proto/records.pb.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class WriteBatch;
}  // namespace rocksdb

namespace flotilla::aggregator {

class Store {
 public:
  // Opens (creating if needed) the store in directory `path`. A store locked
  // by another process gives FailedPrecondition naming the path.
  static StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  // Opens an existing store for reading only, without taking its lock, so
  // tools can inspect the store of a running aggregator. Writes fail.
  static StatusOr<std::unique_ptr<Store>> OpenReadOnly(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Durably records one accepted update (sync write). AlreadyExists if that
  // client already has an update for that round.
  Status PutUpdate(const records::UpdateRecord& update);
  bool HasUpdate(uint32_t round, const std::string& client_id) const;
  // Visits the updates of `round` in client-id order. Stops at the first
  // error, from RocksDB, a corrupt record, or `visit`; with `corrupt`, a
  // record that does not parse, or whose round or client id contradicts its
  // key, is skipped and the client id of its key listed there.
  Status ForEachUpdate(uint32_t round, const std::function<Status(const records::UpdateRecord&)>& visit,
                       std::vector<std::string>* corrupt = nullptr) const;

  // Atomically (one synced WriteBatch): stores the new model version (if
  // given), the round record and the client records in `clients`, deletes
  // that round's updates and the model versions in `expire`.
  Status CommitRound(const records::RoundRecord& round, const records::ModelRecord* model,
                     const std::vector<uint64_t>& expire = {},
                     const std::vector<records::ClientRecord>& clients = {});
  Status PutRound(const records::RoundRecord& round);
  StatusOr<std::optional<records::RoundRecord>> GetRound(uint32_t round) const;
  // With `corrupt`, records that do not parse are skipped and their keys
  // listed there (for QuarantineRound) instead of failing the listing.
  StatusOr<std::vector<records::RoundRecord>> ListRounds(std::vector<std::string>* corrupt = nullptr) const;

  Status PutModel(const records::ModelRecord& model);
  StatusOr<records::ModelRecord> GetModel(uint64_t version) const;
  // The highest stored version, or nullopt for an empty store.
  StatusOr<std::optional<uint64_t>> LatestModelVersion() const;
  // All stored versions, ascending.
  StatusOr<std::vector<uint64_t>> ListModelVersions() const;

  Status PutClient(const records::ClientRecord& client);
  StatusOr<std::optional<records::ClientRecord>> GetClient(const std::string& client_id) const;
  StatusOr<std::vector<records::ClientRecord>> ListClients(std::vector<std::string>* corrupt = nullptr) const;

  // Privacy ledger: appended with sync; listed in (round, client) order.
  Status PutLedgerEntry(const records::LedgerEntry& entry);
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
  uint64_t ApproximateSize() const;

  const std::string& path() const { return path_; }
  // Writes fail with ResourceExhausted (writing nothing) while less than
  // this much disk space is free. Default 64 MiB.
  void set_min_free_bytes(uint64_t bytes) { min_free_bytes_ = bytes; }

 private:
  Store(std::string path, rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles);
  static StatusOr<std::unique_ptr<Store>> OpenImpl(const std::string& path, bool read_only);
  // Writes `batch` with sync, resuming RocksDB after an earlier I/O or
  // no-space failure first.
  Status SyncedWrite(rocksdb::WriteBatch* batch, const std::string& what);
  Status Quarantine(int family, const std::string& key, const std::string& reason);
  rocksdb::ColumnFamilyHandle* cf(int index) const { return handles_[index]; }

  std::string path_;
  uint64_t min_free_bytes_ = uint64_t{64} << 20;
  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
};

}  // namespace flotilla::aggregator
