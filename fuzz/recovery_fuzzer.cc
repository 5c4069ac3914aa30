// libFuzzer target for what an enrolled device's update can become: update
// validation on arbitrary payloads, and an aggregator restarting on a store
// that holds arbitrary records (what an earlier version, a bug or a disk
// left behind). Recovery must never crash, never refuse to start over bad
// records (it quarantines them), and the resumed round must finish with a
// finite model or fail cleanly. Built only with -DFLOTILLA_FUZZ=ON and clang.
//
// The store is the storage layer's in-memory one, so an input costs an
// aggregator start (socket, ZAP handler), not a RocksDB directory.
//
// Input: the first byte picks the harness (odd: validation). For recovery
// the next byte picks structured mode (odd: one well-formed update record
// whose example count and values come from the input) or raw mode: up to
// three parts separated by the byte 0xFE, an update record, a client record
// and a round record, each written raw into its column family.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "aggregator/server.h"
#include "aggregator/store.h"
#include "aggregator/update_validation.h"
#include "core/log.h"
#include "privacy/keys.h"
#include "proto/codec.h"
#include "proto/records.pb.h"
#include "storage/kv_store.h"

using namespace flotilla;

namespace {

std::shared_ptr<const Layout> TinyLayout() {
  static auto layout =
      std::make_shared<const Layout>(*Layout::Create({{"fc.weight", {2, 3}}, {"fc.bias", {2}}}));
  return layout;
}

std::string RoundKey(uint32_t round) {
  std::string key;
  for (int i = 3; i >= 0; --i) key.push_back(static_cast<char>((round >> (8 * i)) & 0xff));
  return key;
}

struct Template {
  aggregator::AggregatorConfig config;
  std::string keys[2];

  Template() {
    SetLogLevel(LogLevel::kOff);
    config.endpoint = "tcp://127.0.0.1:*";
    config.store_path = "memory";
    config.model_arch = "tiny";
    config.rounds = 2;
    config.min_clients = 1;
    config.failed_round_backoff_seconds = 0;
    config.max_failed_round_backoff_seconds = 0;
    config.limits.messages_per_second = 0;
    config.limits.bytes_per_second = 0;
    auto signing = privacy::GenerateSigningKeyPair();
    if (!signing.ok()) std::abort();
    config.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing).value());
    // No CURVE (and so no ZAP handler to start per input): devices are
    // known by the names they say Hello with. The transport's own checks
    // are fuzzed by aggregator_fuzzer.
    config.socket.security = net::TransportSecurity::kNone;
    keys[0] = "c0";
    keys[1] = "c1";
  }
};

// Writes the raw parts into a fresh in-memory store, as records a store
// could hold when the aggregator starts (it then writes model version 1).
std::unique_ptr<storage::KvStore> StoreWith(const std::vector<std::string>& parts, const Template& t) {
  std::unique_ptr<storage::KvStore> kv = storage::NewMemoryStore(aggregator::Store::Families());
  // A running round 1 over both clients, unless the input brings its own.
  records::RoundRecord round;
  round.set_round(1);
  round.set_outcome(records::RoundRecord::OUTCOME_RUNNING);
  round.add_selected(std::min(t.keys[0], t.keys[1]));
  round.add_selected(std::max(t.keys[0], t.keys[1]));
  round.set_base_model_version(1);
  storage::WriteBatch batch;
  batch.Put("rounds", RoundKey(1), parts.size() > 2 ? parts[2] : round.SerializeAsString());
  if (!parts.empty()) batch.Put("updates", RoundKey(1) + t.keys[0], parts[0]);
  if (parts.size() > 1) batch.Put("clients", t.keys[0], parts[1]);
  if (!kv->Write(batch, "fuzz records").ok()) std::abort();
  return kv;
}

void FuzzValidation(const uint8_t* data, size_t size) {
  wire::WeightsProto delta;
  if (!delta.ParseFromArray(data, static_cast<int>(size))) return;
  aggregator::UpdateExpectation e;
  e.layout = TinyLayout();
  e.max_norm = size % 2 ? 0.0 : 10.0;
  e.max_examples = 1000;
  const int64_t examples = size > 0 ? static_cast<int64_t>(data[0]) * 8 - 4 : 0;
  aggregator::UpdateVerdict v = aggregator::ValidateUpdate(delta, examples, e);
  if (!v.accepted()) return;
  // Accepted: exactly the layout, finite, within the bounds.
  if (v.delta.data.size() != 8 || examples < 1 || examples > 1000) std::abort();
  for (float x : v.delta.data) {
    if (!std::isfinite(x)) std::abort();
  }
  if (e.max_norm > 0 && !(v.norm <= e.max_norm)) std::abort();
}

// A well-formed update record of the right layout whose example count and
// values come from the input: reaches the deep checks without a corpus.
std::string StructuredUpdate(const uint8_t* data, size_t size, const std::string& client) {
  records::UpdateRecord u;
  u.set_round(1);
  u.set_client_id(client);
  int64_t examples = 0;
  for (size_t i = 0; i < 8 && i < size; ++i) examples = (examples << 8) | data[i];
  u.set_num_examples(examples);
  Weights w = Weights::Zeros(TinyLayout());
  for (size_t i = 8; i + 4 <= size && (i - 8) / 4 < w.data.size(); i += 4) {
    std::memcpy(&w.data[(i - 8) / 4], data + i, 4);
  }
  proto::WeightsToProto(w, u.mutable_delta());  // no checks: an earlier version may have stored anything
  return u.SerializeAsString();
}

void FuzzRecovery(const uint8_t* data, size_t size) {
  static Template* t = new Template();
  std::vector<std::string> parts(1);
  if (size > 0 && (data[0] & 1)) {
    parts[0] = StructuredUpdate(data + 1, size - 1, t->keys[0]);
  } else {
    for (size_t i = 0; i < size && parts.size() <= 3; ++i) {
      if (data[i] == 0xFE) {
        parts.emplace_back();
      } else {
        parts.back().push_back(static_cast<char>(data[i]));
      }
    }
  }
  auto store = aggregator::Store::OnKvStore(StoreWith(parts, *t));
  if (!store.ok()) std::abort();
  static net::Context* context = new net::Context();
  auto agg = aggregator::Aggregator::Create(t->config, context, Weights::Zeros(TinyLayout()), nullptr,
                                            nullptr, std::move(store).value());
  // Bad records are quarantined, never a reason not to start.
  if (!agg.ok()) {
    std::fprintf(stderr, "recovery_fuzzer: recovery refused: %s\n", agg.status().ToString().c_str());
    std::abort();
  }
  // Both devices speak; the second sends a sane update to the resumed round.
  for (int i = 0; i < 2; ++i) {
    wire::Envelope hello;
    hello.mutable_hello()->set_client_name(t->keys[i]);
    if (!(*agg)->Step({"p" + std::to_string(i), "", proto::SerializeEnvelope(&hello)}).ok()) std::abort();
  }
  wire::Envelope update;
  update.mutable_update()->set_round((*agg)->history().empty() ? 1 : 2);
  update.mutable_update()->set_model_version((*agg)->model_version());
  update.mutable_update()->set_num_examples(3);
  Weights d = Weights::Zeros(TinyLayout());
  for (float& x : d.data) x = 0.01f;
  proto::WeightsToProto(d, update.mutable_update()->mutable_delta());
  if (!(*agg)->Step({"p1", "", proto::SerializeEnvelope(&update)}).ok()) std::abort();
  for (float x : (*agg)->global_model().data) {
    if (!std::isfinite(x)) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1) {
    FuzzValidation(data + 1, size - 1);
  } else {
    FuzzRecovery(data + 1, size - 1);
  }
  return 0;
}
