// The storage layer's one interface: a key-value store with column
// families ("families") and atomic, synced write batches. Its RocksDB
// implementation (storage/rocksdb_store.h) is the only code in Flotilla that
// includes RocksDB; an in-memory one (storage/memory_store.h) serves unit
// tests of the stores built on it (aggregator/store.h, client/device_store.h).
//
// Thread-safety: implementations are safe to call from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace flotilla::storage {

// A group of writes applied atomically by KvStore::Write.
class WriteBatch {
 public:
  struct Op {
    enum class Kind { kPut, kDelete, kDeleteRange };
    Kind kind;
    std::string family;
    std::string key;    // kDeleteRange: the first key removed
    std::string value;  // kPut: the value; kDeleteRange: the first key kept
  };

  void Put(std::string family, std::string key, std::string value);
  void Delete(std::string family, std::string key);
  // Removes every key in [begin, end).
  void DeleteRange(std::string family, std::string begin, std::string end);

  const std::vector<Op>& ops() const { return ops_; }
  bool empty() const { return ops_.empty(); }
  // Bytes of keys and values, for the free-space check.
  uint64_t bytes() const { return bytes_; }

 private:
  std::vector<Op> ops_;
  uint64_t bytes_ = 0;
};

struct StoreOptions {
  // Every family the store uses. RocksDB stores may hold others from older
  // versions: those in `obsolete_families` are dropped, any other is kept.
  std::vector<std::string> families;
  std::vector<std::string> obsolete_families;
  // Families with model-sized values (kept out of compactions as blobs).
  std::vector<std::string> blob_families;
  // Families whose values carry their own checksum (storage/sealed_value.h,
  // checked by whoever reads them): RocksDB reads them without verifying
  // its own block and blob checksums.
  std::vector<std::string> self_checked_families;
  // RocksDB: read through memory maps (no copy into a read buffer).
  bool mmap_reads = false;
  // RocksDB: open without the lock (tools beside a running process); a
  // family of `families` the store does not have yet reads as empty.
  bool read_only = false;
  // Writes fail with ResourceExhausted (writing nothing) while less disk
  // space than this is free.
  uint64_t min_free_bytes = uint64_t{64} << 20;
  // Bound on write-ahead logs: families written rarely are flushed rather
  // than keeping old logs alive.
  uint64_t max_wal_bytes = uint64_t{64} << 20;
  // Memory table size per family, before it is flushed to disk.
  uint64_t write_buffer_bytes = uint64_t{16} << 20;
};

class KvStore {
 public:
  virtual ~KvStore() = default;
  KvStore(const KvStore&) = delete;
  KvStore& operator=(const KvStore&) = delete;

  // Applies `batch` atomically and durably (synced). `what` names the write
  // in errors. ResourceExhausted when the disk is (nearly) full: nothing
  // was written; Unavailable for a passing I/O error.
  virtual Status Write(const WriteBatch& batch, const std::string& what) = 0;
  // NotFound when absent.
  virtual StatusOr<std::string> Get(const std::string& family, const std::string& key) const = 0;
  // Visits the keys starting with `prefix` in order, with their values,
  // until `visit` fails (that status is returned).
  virtual Status Scan(
      const std::string& family, const std::string& prefix,
      const std::function<Status(std::string_view key, std::string_view value)>& visit) const = 0;
  // The largest key of `family`, or empty when it has none.
  virtual StatusOr<std::string> LastKey(const std::string& family) const = 0;
  // Approximate bytes on disk (and in memory tables).
  virtual uint64_t ApproximateSize() const = 0;
  virtual void set_min_free_bytes(uint64_t bytes) = 0;
  const std::string& path() const { return path_; }

 protected:
  explicit KvStore(std::string path) : path_(std::move(path)) {}

 private:
  std::string path_;
};

// Opens (creating unless read_only) a RocksDB store in directory `path`.
// FailedPrecondition naming the path when another process holds its lock.
StatusOr<std::unique_ptr<KvStore>> OpenRocksDb(const std::string& path, const StoreOptions& options);

// A store in memory, for unit tests; `name` stands in for the path.
std::unique_ptr<KvStore> NewMemoryStore(const StoreOptions& options, const std::string& name = "memory");

}  // namespace flotilla::storage
