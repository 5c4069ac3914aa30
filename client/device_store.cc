#include "client/device_store.h"

#include <cstring>

namespace flotilla::client {
namespace {

constexpr char kOutbox[] = "outbox";
constexpr char kModels[] = "models";
constexpr char kState[] = "state";
constexpr char kLatestModelKey[] = "latest";

std::string RoundKey(uint32_t round) {
  std::string key(4, '\0');
  for (int i = 0; i < 4; ++i) key[i] = static_cast<char>((round >> (8 * (3 - i))) & 0xff);
  return key;
}

std::string NewestKey(const std::string& federation) { return "newest_verified/" + federation; }
std::string LocalKey(const std::string& federation) { return "local_state/" + federation; }

}  // namespace

storage::StoreOptions DeviceStore::Families() {
  storage::StoreOptions o;
  o.families = {kOutbox, kModels, kState};
  o.min_free_bytes = 0;  // devices have small disks; RocksDB's own no-space error is the signal
  return o;
}

StatusOr<std::unique_ptr<DeviceStore>> DeviceStore::Open(const std::string& path) {
  StatusOr<std::unique_ptr<storage::KvStore>> kv = storage::OpenRocksDb(path, Families());
  if (kv.status().code() == StatusCode::kFailedPrecondition) {
    return FailedPrecondition("device store " + path +
                              " is in use by another process: " + std::string(kv.status().message()));
  }
  RETURN_IF_ERROR(kv.status());
  return OnKvStore(std::move(kv).value());
}

std::unique_ptr<DeviceStore> DeviceStore::OnKvStore(std::unique_ptr<storage::KvStore> kv) {
  return std::unique_ptr<DeviceStore>(new DeviceStore(std::move(kv)));
}

Status DeviceStore::PutOutbox(const wire::Update& update) {
  storage::WriteBatch batch;
  batch.Put(kOutbox, RoundKey(update.round()), update.SerializeAsString());
  return kv_->Write(batch, "writing outbox");
}

Status DeviceStore::RemoveOutbox(uint32_t round) {
  storage::WriteBatch batch;
  batch.Delete(kOutbox, RoundKey(round));
  return kv_->Write(batch, "clearing outbox");
}

StatusOr<std::vector<wire::Update>> DeviceStore::ListOutbox() const {
  std::vector<wire::Update> out;
  RETURN_IF_ERROR(kv_->Scan(kOutbox, "", [&](std::string_view, std::string_view value) -> Status {
    wire::Update u;
    if (!u.ParseFromArray(value.data(), static_cast<int>(value.size())))
      return DataLoss("corrupt outbox entry");
    out.push_back(std::move(u));
    return Status::Ok();
  }));
  return out;
}

Status DeviceStore::PutModel(const HeldModel& model) {
  wire::PullReply record;  // reuse the wire message as the record format
  record.set_version(model.version);
  record.set_round(model.round);
  record.set_model_arch(model.arch);
  *record.mutable_weights() = model.weights;
  record.set_signature(model.signature);
  storage::WriteBatch batch;
  batch.Put(kModels, kLatestModelKey, record.SerializeAsString());
  return kv_->Write(batch, "writing model");
}

StatusOr<std::optional<HeldModel>> DeviceStore::GetModel() const {
  StatusOr<std::string> value = kv_->Get(kModels, kLatestModelKey);
  if (value.status().code() == StatusCode::kNotFound) return std::optional<HeldModel>();
  RETURN_IF_ERROR(value.status());
  wire::PullReply record;
  if (!record.ParseFromString(*value)) return DataLoss("corrupt model record in device store");
  HeldModel m;
  m.version = record.version();
  m.round = record.round();
  m.arch = record.model_arch();
  m.weights = record.weights();
  m.signature = record.signature();
  return std::optional<HeldModel>(std::move(m));
}

StatusOr<uint64_t> DeviceStore::NewestVerified(const std::string& federation) const {
  StatusOr<std::string> value = kv_->Get(kState, NewestKey(federation));
  if (value.status().code() == StatusCode::kNotFound) return uint64_t{0};
  RETURN_IF_ERROR(value.status());
  if (value->size() != 8) return DataLoss("corrupt newest-verified record in device store");
  uint64_t v = 0;
  for (unsigned char c : *value) v = (v << 8) | c;
  return v;
}

Status DeviceStore::NoteVerified(const std::string& federation, uint64_t version) {
  ASSIGN_OR_RETURN(uint64_t newest, NewestVerified(federation));
  if (version <= newest) return Status::Ok();
  std::string value(8, '\0');
  for (int i = 0; i < 8; ++i) value[i] = static_cast<char>((version >> (8 * (7 - i))) & 0xff);
  storage::WriteBatch batch;
  batch.Put(kState, NewestKey(federation), value);
  return kv_->Write(batch, "writing the newest verified version");
}

namespace {

// The local-state record reuses the wire's weights message: the tensors,
// then the kept vectors as float32 tensors named after them (they have no
// layout of their own). The residual's name is "" (older records).
constexpr char kResidualName[] = "";
constexpr char kControlName[] = "@control";

void AppendVector(const char* name, const std::vector<float>& v, wire::WeightsProto* record) {
  if (v.empty()) return;
  auto* t = record->add_layout();
  t->set_name(name);
  t->add_shape(static_cast<int64_t>(v.size()));
  record->mutable_data()->append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

}  // namespace

Status DeviceStore::PutLocalState(const std::string& federation, const LocalState& state) {
  wire::WeightsProto record = state.tensors;
  AppendVector(kResidualName, state.residual, &record);
  AppendVector(kControlName, state.control, &record);
  storage::WriteBatch batch;
  batch.Put(kState, LocalKey(federation), record.SerializeAsString());
  return kv_->Write(batch, "writing the device's local state");
}

StatusOr<std::optional<DeviceStore::LocalState>> DeviceStore::GetLocalState(
    const std::string& federation) const {
  StatusOr<std::string> value = kv_->Get(kState, LocalKey(federation));
  if (value.status().code() == StatusCode::kNotFound) return std::optional<LocalState>();
  RETURN_IF_ERROR(value.status());
  wire::WeightsProto record;
  if (!record.ParseFromString(*value)) return DataLoss("corrupt local-state record in device store");
  LocalState state;
  // The kept vectors, from the end.
  while (record.layout_size() > 0) {
    const auto& last = record.layout(record.layout_size() - 1);
    std::vector<float>* into = last.name() == kResidualName  ? &state.residual
                               : last.name() == kControlName ? &state.control
                                                             : nullptr;
    if (into == nullptr) break;
    const int64_t n = last.shape_size() == 1 ? last.shape(0) : -1;
    const size_t bytes = static_cast<size_t>(n) * sizeof(float);
    if (n < 0 || record.data().size() < bytes) return DataLoss("corrupt local-state record in device store");
    into->resize(static_cast<size_t>(n));
    std::memcpy(into->data(), record.data().data() + record.data().size() - bytes, bytes);
    record.mutable_data()->resize(record.data().size() - bytes);
    record.mutable_layout()->RemoveLast();
  }
  state.tensors = std::move(record);
  return std::optional<LocalState>(std::move(state));
}

}  // namespace flotilla::client
