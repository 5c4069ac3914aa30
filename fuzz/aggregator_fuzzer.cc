// libFuzzer target for the aggregator's message handling: every input is
// one message from an enrolled, registered client (first byte picks which
// identity speaks, and whether the aggregator runs plain FedAvg or secure
// aggregation), fed through Aggregator::Step with a round open. Built
// only with -DFLOTILLA_FUZZ=ON and clang; see scripts/fuzz.sh.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "aggregator/server.h"
#include "core/log.h"
#include "privacy/keys.h"
#include "proto/codec.h"

using namespace flotilla;

namespace {

struct Harness {
  net::Context context;
  std::unique_ptr<aggregator::Aggregator> agg;
  std::string keys[3];

  explicit Harness(bool secure) {
    SetLogLevel(LogLevel::kOff);
    const auto store = std::filesystem::temp_directory_path() /
                       ("flotilla-fuzz-" + std::to_string(::getpid()) + (secure ? "-secure" : ""));
    std::filesystem::remove_all(store);
    aggregator::AggregatorConfig config;
    config.endpoint = "tcp://127.0.0.1:*";
    config.store_path = store.string();
    config.model_arch = "tiny";
    config.rounds = 1000000;
    config.min_clients = 2;
    config.secagg.enabled = secure;
    config.secagg.graph = privacy::SecAggGraph::kComplete;
    // Every input must reach the message handling, not the rate limits.
    config.limits.messages_per_second = 0;
    config.limits.bytes_per_second = 0;
    config.failed_round_backoff_seconds = 0;
    config.max_failed_round_backoff_seconds = 0;
    auto signing = privacy::GenerateSigningKeyPair();
    auto server = privacy::GenerateCurveKeyPair();
    if (!signing.ok() || !server.ok()) std::abort();
    config.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing).value());
    config.socket.curve.public_key = server->public_z85;
    config.socket.curve.secret_key = server->SecretZ85();
    for (int i = 0; i < 3; ++i) {
      keys[i] = privacy::DeriveCurveKeyPairForSimulation(i)->public_z85;
      if (i < 2) config.allowed_clients.insert(keys[i]);  // keys[2] is enrolled nowhere
    }
    auto layout = std::make_shared<const Layout>(*Layout::Create({{"fc.weight", {2, 3}}, {"fc.bias", {2}}}));
    auto created = aggregator::Aggregator::Create(config, &context, Weights::Zeros(layout), nullptr, nullptr);
    if (!created.ok()) std::abort();
    agg = std::move(created).value();
    // Register both enrolled clients so a round opens.
    for (int i = 0; i < 2; ++i) {
      wire::Envelope hello;
      hello.mutable_hello()->set_client_name("c" + std::to_string(i));
      auto identity = privacy::DeriveSecAggIdentity(*privacy::DeriveCurveKeyPairForSimulation(i));
      if (!identity.ok()) std::abort();
      hello.mutable_hello()->set_secagg_identity_key(identity->public_key.data(),
                                                     identity->public_key.size());
      net::Incoming in{"peer" + std::to_string(i), keys[i], proto::SerializeEnvelope(&hello)};
      if (!agg->Step(in).ok()) std::abort();
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Harness* plain = new Harness(false);
  static Harness* secure = new Harness(true);
  if (size == 0) return 0;
  const int who = data[0] % 3;
  Harness* harness = (data[0] & 0x80) ? secure : plain;
  net::Incoming in{"peer" + std::to_string(who), harness->keys[who],
                   std::string(reinterpret_cast<const char*>(data + 1), size - 1)};
  Status st = harness->agg->Step(in);
  // Bad input must never be fatal; only the store failing may be.
  if (!st.ok() && st.code() != StatusCode::kUnavailable && st.code() != StatusCode::kResourceExhausted)
    std::abort();
  return 0;
}
