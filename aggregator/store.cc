#include "aggregator/store.h"

#include "core/clock.h"
#include "core/log.h"
#include "proto/codec.h"
#include "storage/sealed_value.h"

namespace flotilla::aggregator {
namespace {

constexpr char kModels[] = "models";
constexpr char kModelIndex[] = "model_index";
constexpr char kRounds[] = "rounds";
constexpr char kUpdates[] = "updates";
constexpr char kServerState[] = "server_state";
constexpr char kServerStateKey[] = "optimizer";
constexpr char kClients[] = "clients";
constexpr char kLedger[] = "privacy_ledger";
constexpr char kQuarantine[] = "quarantine";

void AppendBigEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t ReadBigEndian(std::string_view s, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(s[i]);
  return v;
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

std::string UpdateKey(uint32_t round, const std::string& client_id) { return RoundKey(round) + client_id; }

std::string LedgerKey(const records::LedgerEntry& e) { return RoundKey(e.round()) + e.client_id(); }

template <typename Record>
Status ParseRecord(std::string_view bytes, Record* record, const std::string& what) {
  if (!record->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return DataLoss("corrupt " + what + " record in store");
  }
  return Status::Ok();
}

// The index entry of a model: its record without the weights.
std::string IndexValue(const records::ModelRecord& model) {
  records::ModelRecord summary = model;
  summary.clear_weights();
  return summary.SerializeAsString();
}

}  // namespace

storage::StoreOptions Store::Families() {
  storage::StoreOptions o;
  o.families = {kModels, kModelIndex, kRounds, kUpdates, kClients, kLedger, kQuarantine, kServerState};
  o.obsolete_families = {"metrics", "strategy_state"};  // created by earlier versions, never used
  o.blob_families = {kModels, kUpdates};
  // Updates are sealed with XXH3 (storage/sealed_value.h): the merge reads
  // a round's worth of them, and RocksDB's software CRC32C was most of it.
  o.self_checked_families = {kUpdates};
  o.mmap_reads = true;
  return o;
}

StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<storage::KvStore> kv, storage::OpenRocksDb(path, Families()));
  return OnKvStore(std::move(kv));
}

StatusOr<std::unique_ptr<Store>> Store::OpenReadOnly(const std::string& path) {
  storage::StoreOptions o = Families();
  o.read_only = true;
  ASSIGN_OR_RETURN(std::unique_ptr<storage::KvStore> kv, storage::OpenRocksDb(path, o));
  std::unique_ptr<Store> store(new Store(std::move(kv)));
  StatusOr<std::string> last_indexed = store->kv_->LastKey(kModelIndex);
  ASSIGN_OR_RETURN(std::string last_model, store->kv_->LastKey(kModels));
  store->no_index_ = !last_model.empty() && (!last_indexed.ok() || last_indexed->empty());
  return store;
}

StatusOr<std::unique_ptr<Store>> Store::OnKvStore(std::unique_ptr<storage::KvStore> kv) {
  std::unique_ptr<Store> store(new Store(std::move(kv)));
  RETURN_IF_ERROR(store->BuildModelIndexIfMissing());
  return store;
}

Status Store::BuildModelIndexIfMissing() {
  ASSIGN_OR_RETURN(std::string last_indexed, kv_->LastKey(kModelIndex));
  ASSIGN_OR_RETURN(std::string last_model, kv_->LastKey(kModels));
  if (!last_indexed.empty() || last_model.empty()) return Status::Ok();
  storage::WriteBatch batch;
  RETURN_IF_ERROR(kv_->Scan(kModels, "", [&](std::string_view key, std::string_view value) -> Status {
    records::ModelRecord m;
    RETURN_IF_ERROR(ParseRecord(value, &m, "model"));
    batch.Put(kModelIndex, std::string(key), IndexValue(m));
    return Status::Ok();
  }));
  LOG_INFO("aggregator", "indexed " << batch.ops().size()
                                    << " stored model versions (once, for stores written "
                                    << "before the model index)");
  return kv_->Write(batch, "building the model index");
}

Status Store::PutUpdate(const records::UpdateRecord& update) {
  if (HasUpdate(update.round(), update.client_id())) {
    return AlreadyExists("update for round " + std::to_string(update.round()) + " from " +
                         update.client_id() + " already recorded");
  }
  storage::WriteBatch batch;
  batch.Put(kUpdates, UpdateKey(update.round(), update.client_id()),
            storage::Seal(update.SerializeAsString()));
  return kv_->Write(batch, "writing update");
}

bool Store::HasUpdate(uint32_t round, const std::string& client_id) const {
  return kv_->Get(kUpdates, UpdateKey(round, client_id)).ok();
}

Status Store::ForEachUpdate(uint32_t round, const std::function<Status(const records::UpdateRecord&)>& visit,
                            std::vector<std::string>* corrupt) const {
  return ForEachUpdatePayload(
      round,
      [&](const records::UpdateRecord& meta, std::string_view data) -> Status {
        if (data.empty()) return visit(meta);
        records::UpdateRecord whole = meta;
        whole.mutable_delta()->set_data(std::string(data));
        return visit(whole);
      },
      corrupt);
}

Status Store::ForEachUpdatePayload(uint32_t round, const PayloadVisit& visit,
                                   std::vector<std::string>* corrupt) const {
  const std::string prefix = RoundKey(round);
  // UpdateRecord.delta (4), WeightsProto.data (2).
  static const std::vector<int> kDeltaData = {4, 2};
  return kv_->Scan(kUpdates, prefix, [&](std::string_view key, std::string_view value) -> Status {
    records::UpdateRecord record;
    const std::string key_client(key.substr(prefix.size()));
    // A record whose checksum fails, that does not parse, or that
    // contradicts its key, is corrupt.
    std::string_view data;
    StatusOr<std::string_view> payload = storage::Unseal(value);
    StatusOr<std::string> rest = payload.ok() ? proto::SplitOutField(*payload, kDeltaData, &data)
                                              : StatusOr<std::string>(payload.status());
    if (!rest.ok() || !ParseRecord(*rest, &record, "update").ok() || record.round() != round ||
        record.client_id() != key_client) {
      if (corrupt == nullptr)
        return DataLoss("corrupt update record in store for round " + std::to_string(round));
      corrupt->push_back(key_client);
      return Status::Ok();
    }
    return visit(record, data);
  });
}

Status Store::CommitRound(const RoundCommit& c) {
  storage::WriteBatch batch;
  if (c.model != nullptr) {
    batch.Put(kModels, ModelKey(c.model->version()), c.model->SerializeAsString());
    batch.Put(kModelIndex, ModelKey(c.model->version()), IndexValue(*c.model));
  }
  for (uint64_t v : c.expire) {
    batch.Delete(kModels, ModelKey(v));
    batch.Delete(kModelIndex, ModelKey(v));
  }
  for (const auto& client : c.clients) batch.Put(kClients, client.client_id(), client.SerializeAsString());
  for (const auto& e : c.ledger) batch.Put(kLedger, LedgerKey(e), e.SerializeAsString());
  if (c.server_state != nullptr)
    batch.Put(kServerState, kServerStateKey, c.server_state->SerializeAsString());
  batch.Put(kRounds, RoundKey(c.round.round()), c.round.SerializeAsString());
  batch.DeleteRange(kUpdates, RoundKey(c.round.round()), RoundKey(c.round.round() + 1));
  return kv_->Write(batch, "committing round " + std::to_string(c.round.round()));
}

StatusOr<std::optional<records::ServerStateRecord>> Store::GetServerState() const {
  StatusOr<std::string> value = kv_->Get(kServerState, kServerStateKey);
  if (value.status().code() == StatusCode::kNotFound) return std::optional<records::ServerStateRecord>();
  RETURN_IF_ERROR(value.status());
  records::ServerStateRecord record;
  RETURN_IF_ERROR(ParseRecord(*value, &record, "server optimizer state"));
  return std::optional<records::ServerStateRecord>(std::move(record));
}

Status Store::PutRound(const records::RoundRecord& round) {
  storage::WriteBatch batch;
  batch.Put(kRounds, RoundKey(round.round()), round.SerializeAsString());
  return kv_->Write(batch, "writing round record");
}

StatusOr<std::optional<records::RoundRecord>> Store::GetRound(uint32_t round) const {
  StatusOr<std::string> value = kv_->Get(kRounds, RoundKey(round));
  if (value.status().code() == StatusCode::kNotFound) return std::optional<records::RoundRecord>();
  RETURN_IF_ERROR(value.status());
  records::RoundRecord record;
  RETURN_IF_ERROR(ParseRecord(*value, &record, "round"));
  return std::optional<records::RoundRecord>(std::move(record));
}

template <typename Record>
StatusOr<std::vector<Record>> Store::List(const std::string& family, const std::string& what,
                                          std::vector<std::string>* corrupt,
                                          std::string (*key_of)(const Record&)) const {
  std::vector<Record> out;
  RETURN_IF_ERROR(kv_->Scan(family, "", [&](std::string_view key, std::string_view value) -> Status {
    Record record;
    Status parsed = ParseRecord(value, &record, what);
    if (parsed.ok() && key_of != nullptr && key_of(record) != key) {
      parsed = DataLoss("a " + what + " record is stored under another key than its own");
    }
    if (!parsed.ok() && corrupt != nullptr) {
      corrupt->emplace_back(key);
      return Status::Ok();
    }
    RETURN_IF_ERROR(parsed);
    out.push_back(std::move(record));
    return Status::Ok();
  }));
  return out;
}

StatusOr<std::vector<records::RoundRecord>> Store::ListRounds(std::vector<std::string>* corrupt) const {
  return List<records::RoundRecord>(kRounds, "round", corrupt,
                                    [](const records::RoundRecord& r) { return RoundKey(r.round()); });
}

Status Store::PutModel(const records::ModelRecord& model) {
  storage::WriteBatch batch;
  batch.Put(kModels, ModelKey(model.version()), model.SerializeAsString());
  batch.Put(kModelIndex, ModelKey(model.version()), IndexValue(model));
  return kv_->Write(batch, "writing model version " + std::to_string(model.version()));
}

StatusOr<records::ModelRecord> Store::GetModel(uint64_t version) const {
  StatusOr<std::string> value = kv_->Get(kModels, ModelKey(version));
  if (value.status().code() == StatusCode::kNotFound) {
    return NotFound("model version " + std::to_string(version) + " is not in " + path());
  }
  RETURN_IF_ERROR(value.status());
  records::ModelRecord record;
  RETURN_IF_ERROR(ParseRecord(*value, &record, "model"));
  return record;
}

StatusOr<std::vector<records::ModelRecord>> Store::ListModelSummaries() const {
  if (!no_index_) return List<records::ModelRecord>(kModelIndex, "model index", nullptr);
  ASSIGN_OR_RETURN(std::vector<records::ModelRecord> models,
                   List<records::ModelRecord>(kModels, "model", nullptr));
  for (auto& m : models) m.clear_weights();
  return models;
}

StatusOr<std::vector<uint64_t>> Store::ListModelVersions() const {
  std::vector<uint64_t> versions;
  RETURN_IF_ERROR(
      kv_->Scan(no_index_ ? kModels : kModelIndex, "", [&](std::string_view key, std::string_view) -> Status {
        if (key.size() != 8) return DataLoss("bad model key in store " + path());
        versions.push_back(ReadBigEndian(key, 8));
        return Status::Ok();
      }));
  return versions;
}

StatusOr<std::optional<uint64_t>> Store::LatestModelVersion() const {
  ASSIGN_OR_RETURN(std::string key, kv_->LastKey(no_index_ ? kModels : kModelIndex));
  if (key.empty()) return std::optional<uint64_t>();
  if (key.size() != 8) return DataLoss("bad model key in store " + path());
  return std::optional<uint64_t>(ReadBigEndian(key, 8));
}

StatusOr<std::vector<records::LedgerEntry>> Store::ListLedger() const {
  return List<records::LedgerEntry>(kLedger, "ledger", nullptr);
}

StatusOr<std::vector<records::ClientRecord>> Store::ListClients(std::vector<std::string>* corrupt) const {
  return List<records::ClientRecord>(kClients, "client", corrupt,
                                     [](const records::ClientRecord& c) { return c.client_id(); });
}

Status Store::PutClient(const records::ClientRecord& client) {
  storage::WriteBatch batch;
  batch.Put(kClients, client.client_id(), client.SerializeAsString());
  return kv_->Write(batch, "writing client record");
}

Status Store::PutClients(const std::vector<records::ClientRecord>& clients) {
  if (clients.empty()) return Status::Ok();
  storage::WriteBatch batch;
  for (const auto& c : clients) batch.Put(kClients, c.client_id(), c.SerializeAsString());
  return kv_->Write(batch, "writing client records");
}

StatusOr<std::optional<records::ClientRecord>> Store::GetClient(const std::string& client_id) const {
  StatusOr<std::string> value = kv_->Get(kClients, client_id);
  if (value.status().code() == StatusCode::kNotFound) return std::optional<records::ClientRecord>();
  RETURN_IF_ERROR(value.status());
  records::ClientRecord record;
  RETURN_IF_ERROR(ParseRecord(*value, &record, "client"));
  return std::optional<records::ClientRecord>(std::move(record));
}

Status Store::Quarantine(const std::string& family, const std::string& key, const std::string& reason) {
  StatusOr<std::string> value = kv_->Get(family, key);
  if (value.status().code() == StatusCode::kNotFound)
    return NotFound(family + " record to quarantine is gone");
  RETURN_IF_ERROR(value.status());
  records::QuarantineRecord q;
  q.set_family(family);
  q.set_key(key);
  // A sealed update is kept as its record, for an operator to read (or
  // whole when its checksum fails).
  StatusOr<std::string_view> payload =
      family == kUpdates ? storage::Unseal(*value) : StatusOr<std::string_view>(std::string_view(*value));
  q.set_value(payload.ok() ? std::string(*payload) : *value);
  q.set_reason(reason);
  q.set_quarantined_unix_ms(NowUnixMs());
  // Time-ordered and unique: milliseconds, then where the record was.
  std::string qkey;
  AppendBigEndian(&qkey, static_cast<uint64_t>(q.quarantined_unix_ms()), 8);
  qkey += family;
  qkey.push_back('\0');
  qkey += key;
  storage::WriteBatch batch;
  batch.Put(kQuarantine, qkey, q.SerializeAsString());
  batch.Delete(family, key);
  return kv_->Write(batch, "quarantining a " + family + " record");
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
  return List<records::QuarantineRecord>(kQuarantine, "quarantine", nullptr);
}

}  // namespace flotilla::aggregator
