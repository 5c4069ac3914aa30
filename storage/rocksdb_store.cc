// The RocksDB KvStore: the only file in Flotilla that includes RocksDB.
// One error mapping, one lock detection, one free-space check.
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "core/log.h"
#include "storage/kv_store.h"

namespace flotilla::storage {
namespace {

Status FromRocks(const rocksdb::Status& st, const std::string& what) {
  if (st.ok()) return Status::Ok();
  if (st.IsNoSpace()) {
    return ResourceExhausted(what + ": disk full (" + st.ToString() +
                             "); free space and restart, nothing acknowledged was lost");
  }
  if (st.IsIOError()) return Unavailable(what + ": " + st.ToString());
  if (st.IsCorruption()) return DataLoss(what + ": " + st.ToString());
  return Internal(what + ": " + st.ToString());
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

class RocksDbStore : public KvStore {
 public:
  RocksDbStore(std::string path, const StoreOptions& options) : KvStore(std::move(path)), options_(options) {}

  ~RocksDbStore() override {
    for (auto& [name, handle] : handles_) db_->DestroyColumnFamilyHandle(handle);
    if (db_) db_->Close();
  }

  Status Open() {
    const std::string& dir = path();
    if (!options_.read_only) {
      // RocksDB creates the store's own directory but not its parents.
      std::error_code ec;
      const std::filesystem::path parent = std::filesystem::path(dir).parent_path();
      if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    }
    rocksdb::Options options;
    options.create_if_missing = !options_.read_only;
    options.create_missing_column_families = !options_.read_only;
    options.max_open_files = 256;
    options.max_total_wal_size = options_.max_wal_bytes;
    // Reads map the files instead of copying them into buffers: a merge
    // reads a round's model-sized updates back (64-bit address space).
    options.allow_mmap_reads = options_.mmap_reads;
    std::vector<std::string> names = {rocksdb::kDefaultColumnFamilyName};
    std::vector<std::string> existing;
    if (rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(options), dir, &existing).ok()) {
      for (const auto& n : existing) {
        if (!Contains(names, n)) names.push_back(n);
      }
    }
    for (const auto& n : options_.families) {
      if (!Contains(names, n) && !(options_.read_only && !Contains(existing, n))) names.push_back(n);
    }
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (const auto& n : names) {
      rocksdb::ColumnFamilyOptions cf;
      cf.write_buffer_size = options_.write_buffer_bytes;
      if (Contains(options_.blob_families, n)) {
        // Model-sized values: keep them out of the LSM tree's compactions,
        // and reclaim the blob files of deleted values as compactions run.
        cf.enable_blob_files = true;
        cf.min_blob_size = 4096;
        cf.enable_blob_garbage_collection = true;
        cf.blob_garbage_collection_age_cutoff = 0.5;
      }
      families.emplace_back(n, cf);
    }
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    rocksdb::Status st = options_.read_only
                             ? rocksdb::DB::OpenForReadOnly(options, dir, families, &handles, &db)
                             : rocksdb::DB::Open(options, dir, families, &handles, &db);
    if (!st.ok()) {
      if (st.IsIOError() && st.ToString().find("lock") != std::string::npos) {
        return FailedPrecondition(
            "store " + dir +
            " is locked by another process (is another one running on it?): " + st.ToString());
      }
      return FromRocks(st, "opening store " + dir);
    }
    db_.reset(db);
    for (size_t i = 0; i < names.size(); ++i) handles_[names[i]] = handles[i];
    if (!options_.read_only) {
      for (const auto& n : options_.obsolete_families) {
        auto it = handles_.find(n);
        if (it == handles_.end()) continue;
        RETURN_IF_ERROR(FromRocks(db_->DropColumnFamily(it->second), "dropping unused column family " + n));
        db_->DestroyColumnFamilyHandle(it->second);
        handles_.erase(it);
        LOG_INFO("storage", "dropped the unused column family '" << n << "' from " << dir);
      }
    }
    return Status::Ok();
  }

  Status Write(const WriteBatch& batch, const std::string& what) override {
    if (options_.read_only) return FailedPrecondition(what + ": store " + path() + " is open read-only");
    // Refuse writes while the disk is nearly full, before RocksDB itself
    // runs out of space: a WAL write that fails half-way leaves RocksDB
    // refusing every later write until the process restarts.
    struct statvfs fs {};
    if (min_free_bytes_ > 0 && ::statvfs(path().c_str(), &fs) == 0) {
      const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
      const uint64_t needed = min_free_bytes_ + 2 * batch.bytes();
      if (free_bytes < needed) {
        return ResourceExhausted(what + ": disk nearly full at " + path() + " (" +
                                 std::to_string(free_bytes >> 20) + " MiB free, keeping " +
                                 std::to_string(min_free_bytes_ >> 20) +
                                 " MiB in reserve); free space: nothing was written and devices will retry");
      }
    }
    rocksdb::WriteBatch b;
    for (const auto& op : batch.ops()) {
      ASSIGN_OR_RETURN(rocksdb::ColumnFamilyHandle * cf, Handle(op.family));
      rocksdb::Status st;
      switch (op.kind) {
        case WriteBatch::Op::Kind::kPut:
          st = b.Put(cf, op.key, op.value);
          break;
        case WriteBatch::Op::Kind::kDelete:
          st = b.Delete(cf, op.key);
          break;
        case WriteBatch::Op::Kind::kDeleteRange:
          st = b.DeleteRange(cf, op.key, op.value);
          break;
      }
      RETURN_IF_ERROR(FromRocks(st, what));
    }
    rocksdb::WriteOptions w;
    w.sync = true;
    return FromRocks(db_->Write(w, &b), what);
  }

  StatusOr<std::string> Get(const std::string& family, const std::string& key) const override {
    if (MissingReadOnly(family)) return NotFound(family + " does not exist in " + path());
    ASSIGN_OR_RETURN(rocksdb::ColumnFamilyHandle * cf, Handle(family));
    std::string value;
    rocksdb::Status st = db_->Get(ReadOptionsFor(family), cf, key, &value);
    if (st.IsNotFound()) return NotFound(family + " has no such key in " + path());
    RETURN_IF_ERROR(FromRocks(st, "reading " + family));
    return value;
  }

  Status Scan(const std::string& family, const std::string& prefix,
              const std::function<Status(std::string_view, std::string_view)>& visit) const override {
    if (MissingReadOnly(family)) return Status::Ok();
    ASSIGN_OR_RETURN(rocksdb::ColumnFamilyHandle * cf, Handle(family));
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ReadOptionsFor(family), cf));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      RETURN_IF_ERROR(visit(std::string_view(it->key().data(), it->key().size()),
                            std::string_view(it->value().data(), it->value().size())));
    }
    return FromRocks(it->status(), "reading " + family);
  }

  StatusOr<std::string> LastKey(const std::string& family) const override {
    if (MissingReadOnly(family)) return std::string();
    ASSIGN_OR_RETURN(rocksdb::ColumnFamilyHandle * cf, Handle(family));
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf));
    it->SeekToLast();
    if (!it->Valid()) {
      RETURN_IF_ERROR(FromRocks(it->status(), "reading " + family));
      return std::string();
    }
    return it->key().ToString();
  }

  uint64_t ApproximateSize() const override {
    uint64_t total = 0;
    for (const char* property : {"rocksdb.total-sst-files-size", "rocksdb.total-blob-file-size",
                                 "rocksdb.cur-size-all-mem-tables"}) {
      for (const auto& [name, h] : handles_) {
        uint64_t v = 0;
        if (db_->GetIntProperty(h, property, &v)) total += v;
      }
    }
    return total;
  }

  void set_min_free_bytes(uint64_t bytes) override { min_free_bytes_ = bytes; }

 private:
  // Read-only on a store an older version wrote: a family it never created
  // reads as empty.
  bool MissingReadOnly(const std::string& family) const {
    return options_.read_only && !handles_.count(family) && Contains(options_.families, family);
  }
  rocksdb::ReadOptions ReadOptionsFor(const std::string& family) const {
    rocksdb::ReadOptions ro;
    // Their values carry their own (faster) checksum; see sealed_value.h.
    if (Contains(options_.self_checked_families, family)) ro.verify_checksums = false;
    return ro;
  }
  StatusOr<rocksdb::ColumnFamilyHandle*> Handle(const std::string& family) const {
    auto it = handles_.find(family);
    if (it == handles_.end()) return Internal("store " + path() + " has no column family '" + family + "'");
    return it->second;
  }

  StoreOptions options_;
  uint64_t min_free_bytes_ = options_.min_free_bytes;
  struct DbCloser {
    void operator()(rocksdb::DB* db) const { delete db; }
  };
  std::unique_ptr<rocksdb::DB, DbCloser> db_;
  std::map<std::string, rocksdb::ColumnFamilyHandle*> handles_;
};

}  // namespace

StatusOr<std::unique_ptr<KvStore>> OpenRocksDb(const std::string& path, const StoreOptions& options) {
  auto store = std::make_unique<RocksDbStore>(path, options);
  RETURN_IF_ERROR(store->Open());
  return std::unique_ptr<KvStore>(std::move(store));
}

}  // namespace flotilla::storage
