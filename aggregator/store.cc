#include "aggregator/store.h"

#include <sys/statvfs.h>

#include <chrono>
#include <filesystem>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

namespace flotilla::aggregator {
namespace {

// Column family indices; order matches kFamilies.
enum Family {
  kDefault = 0,
  kModels,
  kRounds,
  kUpdates,
  kClients,
  kPrivacyLedger,
  kMetrics,
  kStrategyState,
  kQuarantine,
  kNumFamilies
};
const char* const kFamilies[kNumFamilies] = {"default",        "models",  "rounds",         "updates",   "clients",
                                             "privacy_ledger", "metrics", "strategy_state", "quarantine"};

void AppendBigEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::string RoundKey(uint32_t round) {
  std::string key;
  AppendBigEndian(&key, round, 4);
  return key;
}

std::string ModelKey(uint64_t version) {
  std::string key;
  AppendBigEndian(&key, version, 8);
  return key;
}

std::string UpdateKey(uint32_t round, const std::string& client_id) {
  return RoundKey(round) + client_id;
}

uint64_t ReadBigEndian(const rocksdb::Slice& s, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(s[i]);
  return v;
}

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

template <typename Record>
Status ParseRecord(const std::string& bytes, Record* record, const std::string& what) {
  if (!record->ParseFromString(bytes)) return DataLoss("corrupt " + what + " record in store");
  return Status::Ok();
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

rocksdb::WriteOptions SyncWrite() {
  rocksdb::WriteOptions w;
  w.sync = true;
  return w;
}

}  // namespace

StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) { return OpenImpl(path, false); }

StatusOr<std::unique_ptr<Store>> Store::OpenReadOnly(const std::string& path) { return OpenImpl(path, true); }

StatusOr<std::unique_ptr<Store>> Store::OpenImpl(const std::string& path, bool read_only) {
  if (!read_only) {
    // RocksDB creates the store's own directory but not its parents.
    std::error_code ec;
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  }
  rocksdb::Options options;
  options.create_if_missing = !read_only;
  options.create_missing_column_families = !read_only;
  options.max_open_files = 256;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const char* name : kFamilies) {
    rocksdb::ColumnFamilyOptions cf_options;
    if (std::string(name) == "updates" || std::string(name) == "models") {
      // Model-sized values: keep them out of the LSM tree's compactions.
      cf_options.enable_blob_files = true;
      cf_options.min_blob_size = 4096;
    }
    families.emplace_back(name, cf_options);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status st = read_only ? rocksdb::DB::OpenForReadOnly(options, path, families, &handles, &db)
                                : rocksdb::DB::Open(options, path, families, &handles, &db);
  if (!st.ok()) {
    if (st.IsIOError() && st.ToString().find("lock") != std::string::npos) {
      return FailedPrecondition("store " + path +
                                " is locked by another process (is another aggregator running on it?): " +
                                st.ToString());
    }
    return FromRocks(st, "opening store " + path);
  }
  return std::unique_ptr<Store>(new Store(path, db, std::move(handles)));
}

Store::Store(std::string path, rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles)
    : path_(std::move(path)), db_(db), handles_(std::move(handles)) {}

Store::~Store() {
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
  db_->Close();
  delete db_;
}

Status Store::SyncedWrite(rocksdb::WriteBatch* batch, const std::string& what) {
  // Refuse writes while the disk is nearly full, before RocksDB itself runs
  // out of space: a WAL write that fails half-way leaves RocksDB refusing
  // every later write until the process restarts.
  struct statvfs fs {};
  if (min_free_bytes_ > 0 && ::statvfs(path_.c_str(), &fs) == 0) {
    const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
    const uint64_t needed = min_free_bytes_ + 2 * batch->GetDataSize();
    if (free_bytes < needed) {
      return ResourceExhausted(what + ": disk nearly full at " + path_ + " (" + std::to_string(free_bytes >> 20) +
                               " MiB free, keeping " + std::to_string(min_free_bytes_ >> 20) +
                               " MiB in reserve); free space: nothing was written and devices will retry");
    }
  }
  return FromRocks(db_->Write(SyncWrite(), batch), what);
}

Status Store::PutUpdate(const records::UpdateRecord& update) {
  if (HasUpdate(update.round(), update.client_id())) {
    return AlreadyExists("update for round " + std::to_string(update.round()) + " from " +
                         update.client_id() + " already recorded");
  }
  rocksdb::WriteBatch batch;
  batch.Put(cf(kUpdates), UpdateKey(update.round(), update.client_id()), update.SerializeAsString());
  return SyncedWrite(&batch, "writing update");
}

bool Store::HasUpdate(uint32_t round, const std::string& client_id) const {
  std::string value;
  return db_->Get(rocksdb::ReadOptions(), cf(kUpdates), UpdateKey(round, client_id), &value).ok();
}

Status Store::ForEachUpdate(uint32_t round, const std::function<Status(const records::UpdateRecord&)>& visit,
                            std::vector<std::string>* corrupt) const {
  const std::string prefix = RoundKey(round);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf(kUpdates)));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    records::UpdateRecord record;
    const std::string key_client = it->key().ToString().substr(prefix.size());
    // A record that does not parse, or contradicts its key, is corrupt.
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())) ||
        record.round() != round || record.client_id() != key_client) {
      if (corrupt == nullptr) return DataLoss("corrupt update record in store for round " + std::to_string(round));
      corrupt->push_back(key_client);
      continue;
    }
    RETURN_IF_ERROR(visit(record));
  }
  return FromRocks(it->status(), "reading updates");
}

Status Store::CommitRound(const records::RoundRecord& round, const records::ModelRecord* model,
                          const std::vector<uint64_t>& expire, const std::vector<records::ClientRecord>& clients) {
  rocksdb::WriteBatch batch;
  if (model != nullptr) batch.Put(cf(kModels), ModelKey(model->version()), model->SerializeAsString());
  for (uint64_t v : expire) batch.Delete(cf(kModels), ModelKey(v));
  for (const auto& c : clients) batch.Put(cf(kClients), c.client_id(), c.SerializeAsString());
  batch.Put(cf(kRounds), RoundKey(round.round()), round.SerializeAsString());
  batch.DeleteRange(cf(kUpdates), RoundKey(round.round()), RoundKey(round.round() + 1));
  return SyncedWrite(&batch, "committing round " + std::to_string(round.round()));
}

Status Store::PutRound(const records::RoundRecord& round) {
  rocksdb::WriteBatch batch;
  batch.Put(cf(kRounds), RoundKey(round.round()), round.SerializeAsString());
  return SyncedWrite(&batch, "writing round record");
}

StatusOr<std::optional<records::RoundRecord>> Store::GetRound(uint32_t round) const {
  std::string value;
  rocksdb::Status st = db_->Get(rocksdb::ReadOptions(), cf(kRounds), RoundKey(round), &value);
  if (st.IsNotFound()) return std::optional<records::RoundRecord>();
  RETURN_IF_ERROR(FromRocks(st, "reading round record"));
  records::RoundRecord record;
  RETURN_IF_ERROR(ParseRecord(value, &record, "round"));
  return std::optional<records::RoundRecord>(std::move(record));
}

StatusOr<std::vector<records::RoundRecord>> Store::ListRounds(std::vector<std::string>* corrupt) const {
  std::vector<records::RoundRecord> rounds;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf(kRounds)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    records::RoundRecord record;
    Status parsed = ParseRecord(it->value().ToString(), &record, "round");
    if (!parsed.ok() && corrupt != nullptr) {
      corrupt->push_back(it->key().ToString());
      continue;
    }
    RETURN_IF_ERROR(parsed);
    rounds.push_back(std::move(record));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "listing rounds"));
  return rounds;
}

Status Store::PutModel(const records::ModelRecord& model) {
  rocksdb::WriteBatch batch;
  batch.Put(cf(kModels), ModelKey(model.version()), model.SerializeAsString());
  return SyncedWrite(&batch, "writing model version " + std::to_string(model.version()));
}

StatusOr<records::ModelRecord> Store::GetModel(uint64_t version) const {
  std::string value;
  rocksdb::Status st = db_->Get(rocksdb::ReadOptions(), cf(kModels), ModelKey(version), &value);
  if (st.IsNotFound()) return NotFound("model version " + std::to_string(version) + " is not in " + path_);
  RETURN_IF_ERROR(FromRocks(st, "reading model"));
  records::ModelRecord record;
  RETURN_IF_ERROR(ParseRecord(value, &record, "model"));
  return record;
}

StatusOr<std::optional<uint64_t>> Store::LatestModelVersion() const {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf(kModels)));
  it->SeekToLast();
  if (!it->Valid()) {
    RETURN_IF_ERROR(FromRocks(it->status(), "reading models"));
    return std::optional<uint64_t>();
  }
  if (it->key().size() != 8) return DataLoss("bad model key in store " + path_);
  return std::optional<uint64_t>(ReadBigEndian(it->key(), 8));
}

StatusOr<std::vector<uint64_t>> Store::ListModelVersions() const {
  std::vector<uint64_t> versions;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf(kModels)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key().size() != 8) return DataLoss("bad model key in store " + path_);
    versions.push_back(ReadBigEndian(it->key(), 8));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "listing models"));
  return versions;
}

Status Store::PutLedgerEntry(const records::LedgerEntry& entry) {
  rocksdb::WriteBatch batch;
  batch.Put(cf(kPrivacyLedger), RoundKey(entry.round()) + entry.client_id(), entry.SerializeAsString());
  return SyncedWrite(&batch, "writing privacy ledger");
}

StatusOr<std::vector<records::LedgerEntry>> Store::ListLedger() const {
  std::vector<records::LedgerEntry> entries;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf(kPrivacyLedger)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    records::LedgerEntry entry;
    RETURN_IF_ERROR(ParseRecord(it->value().ToString(), &entry, "ledger"));
    entries.push_back(std::move(entry));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "reading privacy ledger"));
  return entries;
}

StatusOr<std::vector<records::ClientRecord>> Store::ListClients(std::vector<std::string>* corrupt) const {
  std::vector<records::ClientRecord> clients;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf(kClients)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    records::ClientRecord record;
    Status parsed = ParseRecord(it->value().ToString(), &record, "client");
    if (!parsed.ok() && corrupt != nullptr) {
      corrupt->push_back(it->key().ToString());
      continue;
    }
    RETURN_IF_ERROR(parsed);
    clients.push_back(std::move(record));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "listing clients"));
  return clients;
}

uint64_t Store::ApproximateSize() const {
  uint64_t total = 0;
  for (const char* property :
       {"rocksdb.total-sst-files-size", "rocksdb.total-blob-file-size", "rocksdb.cur-size-all-mem-tables"}) {
    for (auto* h : handles_) {
      uint64_t v = 0;
      if (db_->GetIntProperty(h, property, &v)) total += v;
    }
  }
  return total;
}

Status Store::PutClient(const records::ClientRecord& client) {
  rocksdb::WriteBatch batch;
  batch.Put(cf(kClients), client.client_id(), client.SerializeAsString());
  return SyncedWrite(&batch, "writing client record");
}

StatusOr<std::optional<records::ClientRecord>> Store::GetClient(const std::string& client_id) const {
  std::string value;
  rocksdb::Status st = db_->Get(rocksdb::ReadOptions(), cf(kClients), client_id, &value);
  if (st.IsNotFound()) return std::optional<records::ClientRecord>();
  RETURN_IF_ERROR(FromRocks(st, "reading client record"));
  records::ClientRecord record;
  RETURN_IF_ERROR(ParseRecord(value, &record, "client"));
  return std::optional<records::ClientRecord>(std::move(record));
}

Status Store::Quarantine(int family, const std::string& key, const std::string& reason) {
  std::string value;
  rocksdb::Status st = db_->Get(rocksdb::ReadOptions(), cf(family), key, &value);
  if (st.IsNotFound()) return NotFound(std::string(kFamilies[family]) + " record to quarantine is gone");
  RETURN_IF_ERROR(FromRocks(st, "reading a record to quarantine"));
  records::QuarantineRecord q;
  q.set_family(kFamilies[family]);
  q.set_key(key);
  q.set_value(value);
  q.set_reason(reason);
  q.set_quarantined_unix_ms(NowUnixMs());
  // Time-ordered and unique: milliseconds, then where the record was.
  std::string qkey;
  AppendBigEndian(&qkey, static_cast<uint64_t>(q.quarantined_unix_ms()), 8);
  qkey += kFamilies[family];
  qkey.push_back('\0');
  qkey += key;
  rocksdb::WriteBatch batch;
  batch.Put(cf(kQuarantine), qkey, q.SerializeAsString());
  batch.Delete(cf(family), key);
  return SyncedWrite(&batch, "quarantining a " + std::string(kFamilies[family]) + " record");
}

Status Store::QuarantineUpdate(uint32_t round, const std::string& client_id, const std::string& reason) {
  return Quarantine(kUpdates, UpdateKey(round, client_id), reason);
}

Status Store::QuarantineClient(const std::string& client_id, const std::string& reason) {
  return Quarantine(kClients, client_id, reason);
}

Status Store::QuarantineRound(const std::string& key, const std::string& reason) {
  return Quarantine(kRounds, key, reason);
}

StatusOr<std::vector<records::QuarantineRecord>> Store::ListQuarantine() const {
  std::vector<records::QuarantineRecord> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf(kQuarantine)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    records::QuarantineRecord record;
    RETURN_IF_ERROR(ParseRecord(it->value().ToString(), &record, "quarantine"));
    out.push_back(std::move(record));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "listing quarantine"));
  return out;
}

}  // namespace flotilla::aggregator
