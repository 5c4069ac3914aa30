#include "client/device_store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

namespace flotilla::client {
namespace {

enum Family { kDefault = 0, kOutbox, kModels, kState, kNumFamilies };
const char* const kFamilies[kNumFamilies] = {"default", "outbox", "models", "state"};

std::string RoundKey(uint32_t round) {
  std::string key(4, '\0');
  for (int i = 0; i < 4; ++i) key[i] = static_cast<char>((round >> (8 * (3 - i))) & 0xff);
  return key;
}

Status FromRocks(const rocksdb::Status& st, const std::string& what) {
  if (st.ok()) return Status::Ok();
  if (st.IsNoSpace()) return ResourceExhausted(what + ": disk full (" + st.ToString() + ")");
  if (st.IsCorruption()) return DataLoss(what + ": " + st.ToString());
  return Unavailable(what + ": " + st.ToString());
}

rocksdb::WriteOptions Synced() {
  rocksdb::WriteOptions w;
  w.sync = true;
  return w;
}

constexpr char kLatestModelKey[] = "latest";

std::string NewestKey(const std::string& federation) { return "newest_verified/" + federation; }

}  // namespace

StatusOr<std::unique_ptr<DeviceStore>> DeviceStore::Open(const std::string& path) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.max_open_files = 64;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const char* name : kFamilies) families.emplace_back(name, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status st = rocksdb::DB::Open(options, path, families, &handles, &db);
  if (!st.ok()) {
    if (st.IsIOError() && st.ToString().find("lock") != std::string::npos) {
      return FailedPrecondition("device store " + path + " is in use by another process: " + st.ToString());
    }
    return FromRocks(st, "opening device store " + path);
  }
  return std::unique_ptr<DeviceStore>(new DeviceStore(db, std::move(handles)));
}

DeviceStore::DeviceStore(rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles)
    : db_(db), handles_(std::move(handles)) {}

DeviceStore::~DeviceStore() {
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
  db_->Close();
  delete db_;
}

Status DeviceStore::PutOutbox(const wire::Update& update) {
  return FromRocks(db_->Put(Synced(), handles_[kOutbox], RoundKey(update.round()), update.SerializeAsString()),
                   "writing outbox");
}

Status DeviceStore::RemoveOutbox(uint32_t round) {
  return FromRocks(db_->Delete(Synced(), handles_[kOutbox], RoundKey(round)), "clearing outbox");
}

StatusOr<std::vector<wire::Update>> DeviceStore::ListOutbox() const {
  std::vector<wire::Update> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handles_[kOutbox]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    wire::Update u;
    if (!u.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return DataLoss("corrupt outbox entry");
    }
    out.push_back(std::move(u));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "reading outbox"));
  return out;
}

Status DeviceStore::PutModel(const HeldModel& model) {
  wire::PullReply record;  // reuse the wire message as the record format
  record.set_version(model.version);
  record.set_round(model.round);
  record.set_model_arch(model.arch);
  *record.mutable_weights() = model.weights;
  record.set_signature(model.signature);
  return FromRocks(db_->Put(Synced(), handles_[kModels], kLatestModelKey, record.SerializeAsString()),
                   "writing model");
}

StatusOr<uint64_t> DeviceStore::NewestVerified(const std::string& federation) const {
  std::string value;
  rocksdb::Status st = db_->Get(rocksdb::ReadOptions(), handles_[kState], NewestKey(federation), &value);
  if (st.IsNotFound()) return uint64_t{0};
  RETURN_IF_ERROR(FromRocks(st, "reading the newest verified version"));
  if (value.size() != 8) return DataLoss("corrupt newest-verified record in device store");
  uint64_t v = 0;
  for (unsigned char c : value) v = (v << 8) | c;
  return v;
}

Status DeviceStore::NoteVerified(const std::string& federation, uint64_t version) {
  ASSIGN_OR_RETURN(uint64_t newest, NewestVerified(federation));
  if (version <= newest) return Status::Ok();
  std::string value(8, '\0');
  for (int i = 0; i < 8; ++i) value[i] = static_cast<char>((version >> (8 * (7 - i))) & 0xff);
  return FromRocks(db_->Put(Synced(), handles_[kState], NewestKey(federation), value),
                   "writing the newest verified version");
}

StatusOr<std::optional<HeldModel>> DeviceStore::GetModel() const {
  std::string value;
  rocksdb::Status st = db_->Get(rocksdb::ReadOptions(), handles_[kModels], kLatestModelKey, &value);
  if (st.IsNotFound()) return std::optional<HeldModel>();
  RETURN_IF_ERROR(FromRocks(st, "reading model"));
  wire::PullReply record;
  if (!record.ParseFromString(value)) return DataLoss("corrupt model record in device store");
  HeldModel m;
  m.version = record.version();
  m.round = record.round();
  m.arch = record.model_arch();
  m.weights = record.weights();
  m.signature = record.signature();
  return std::optional<HeldModel>(std::move(m));
}

}  // namespace flotilla::client
