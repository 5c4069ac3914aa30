// Update validation, per-device limits, quiet logs and the quarantine, as
// units: each checked against hand-computed answers.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cfloat>
#include <cmath>
#include <filesystem>

#include "aggregator/peer_limits.h"
#include "aggregator/store.h"
#include "aggregator/update_validation.h"
#include "core/log.h"
#include "proto/codec.h"

using namespace flotilla;
using namespace flotilla::aggregator;
using namespace std::chrono_literals;

namespace {

std::shared_ptr<const Layout> TinyLayout() {
  return std::make_shared<const Layout>(*Layout::Create({{"w", {2, 2}}, {"b", {1}}}));
}

wire::WeightsProto Delta(std::vector<float> values) {
  Weights w;
  w.layout = TinyLayout();
  w.data = std::move(values);
  wire::WeightsProto p;
  proto::WeightsToProto(w, &p);
  return p;
}

UpdateExpectation Expect(double max_norm) {
  UpdateExpectation e;
  e.layout = TinyLayout();
  e.max_norm = max_norm;
  e.max_examples = 1000;
  return e;
}

}  // namespace

TEST_CASE("Update validation accepts a good update and names each fault", "[validation]") {
  // norm of (3, 4, 0, 0, 0) is 5
  UpdateVerdict ok = ValidateUpdate(Delta({3, 4, 0, 0, 0}), 10, Expect(5.0));
  REQUIRE(ok.accepted());
  CHECK(ok.norm == Approx(5.0));
  CHECK(ok.delta.data == std::vector<float>{3, 4, 0, 0, 0});

  CHECK(ValidateUpdate(Delta({3, 4, 0, 0, 0.1f}), 10, Expect(5.0)).reason == "norm");
  CHECK(ValidateUpdate(Delta({3, 4, 0, 0, 0}), 1001, Expect(5.0)).reason == "examples");
  CHECK(ValidateUpdate(Delta({3, 4, 0, 0, 0}), 0, Expect(5.0)).reason == "examples");
  CHECK(ValidateUpdate(Delta({NAN, 0, 0, 0, 0}), 10, Expect(0)).reason == "non_finite");
  CHECK(ValidateUpdate(Delta({0, INFINITY, 0, 0, 0}), 10, Expect(0)).reason == "non_finite");
  wire::WeightsProto short_payload = Delta({1, 2, 3, 4, 5});
  short_payload.mutable_data()->resize(16);
  CHECK(ValidateUpdate(short_payload, 10, Expect(0)).reason == "layout");
  wire::WeightsProto renamed = Delta({1, 2, 3, 4, 5});
  renamed.mutable_layout(0)->set_name("v");
  CHECK(ValidateUpdate(renamed, 10, Expect(0)).reason == "layout");
  // Unbounded norm: only finiteness matters, and the norm of float-max
  // values is computed without overflow.
  UpdateVerdict huge = ValidateUpdate(Delta({FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX}), 10, Expect(0));
  REQUIRE(huge.accepted());
  CHECK(huge.norm == Approx(std::sqrt(5.0) * FLT_MAX));
  CHECK(ValidateUpdate(Delta({FLT_MAX, 0, 0, 0, 0}), 10, Expect(1e30)).reason == "norm");
}

TEST_CASE("The median norm bound follows the accepted norms", "[validation]") {
  NormBound bound;  // median:10, model multiple 10, min history 5
  NormHistory history(bound.window);
  // Without history: 10 x max(1, ||global||).
  CHECK(history.Bound(bound, 0.2) == Approx(10.0));
  CHECK(history.Bound(bound, 3.0) == Approx(30.0));
  for (double n : {1.0, 2.0, 3.0, 4.0}) history.Add(n);
  CHECK(history.Bound(bound, 3.0) == Approx(30.0));  // 4 < min history
  history.Add(100.0);                                // one outlier does not move the median much
  CHECK(history.Bound(bound, 3.0) == Approx(30.0));  // median 3
  history.Add(5.0);
  CHECK(history.Bound(bound, 3.0) == Approx(35.0));  // median of 1,2,3,4,5,100 = 3.5
  bound.absolute = 20;
  CHECK(history.Bound(bound, 3.0) == Approx(20.0));  // an extra cap
  NormBound abs = *ParseNormBound("absolute:7.5");
  CHECK(history.Bound(abs, 3.0) == Approx(7.5));
  CHECK(history.Bound(*ParseNormBound("off"), 3.0) == 0.0);
  // The window keeps the latest.
  NormHistory small(3);
  for (double n : {100.0, 100.0, 100.0, 1.0, 1.0, 1.0}) small.Add(n);
  NormBound b3;
  b3.min_history = 3;
  CHECK(small.Bound(b3, 0) == Approx(10.0));
}

TEST_CASE("Bound and weighting settings parse or say what is wrong", "[validation]") {
  CHECK(ParseNormBound("median:5")->median_multiple == 5.0);
  CHECK(ParseNormBound("median:0.5").status().code() == StatusCode::kInvalidArgument);
  CHECK(ParseNormBound("absolute:-1").status().code() == StatusCode::kInvalidArgument);
  CHECK(ParseNormBound("median").status().code() == StatusCode::kInvalidArgument);
  CHECK(ParseNormBound("bogus").status().message().find("median:K") != std::string::npos);
  CHECK(ParseExampleWeighting("uniform")->mode == ExampleWeighting::Mode::kUniform);
  CHECK(ParseExampleWeighting("capped:3")->cap_multiple == 3.0);
  CHECK_FALSE(ParseExampleWeighting("capped:x").ok());
  ValidationConfig c;
  CHECK(c.Validate().ok());
  c.max_examples_per_update = 0;
  CHECK_FALSE(c.Validate().ok());
}

TEST_CASE("FedAvg weights are capped at a multiple of the round's median claim", "[validation]") {
  ExampleWeighting capped;  // capped:4
  // Claims 100, 200, 300 and a liar's 2^30: median 250, cap 1000.
  const std::vector<double> w = ExampleWeights({100, 200, 300, int64_t{1} << 30}, capped);
  CHECK(w == std::vector<double>{100, 200, 300, 1000});
  ExampleWeighting claimed;
  claimed.mode = ExampleWeighting::Mode::kClaimed;
  CHECK(ExampleWeights({100, 200}, claimed) == std::vector<double>{100, 200});
  ExampleWeighting uniform;
  uniform.mode = ExampleWeighting::Mode::kUniform;
  CHECK(ExampleWeights({100, 200}, uniform) == std::vector<double>{1, 1});
}

TEST_CASE("Per-device limits refuse a flood for a while and refill", "[validation]") {
  PeerLimitsConfig c;
  c.messages_per_second = 10;
  c.message_burst = 5;
  c.bytes_per_second = 1000;
  c.byte_burst = 3000;
  c.refusal_seconds = 1;
  PeerLimits limits(c.Resolved(100));
  const auto t0 = PeerLimits::Clock::now();
  for (int i = 0; i < 5; ++i) CHECK(limits.Admit("a", 10, t0).admitted);
  PeerLimits::Admission refused = limits.Admit("a", 10, t0);
  CHECK_FALSE(refused.admitted);
  CHECK(refused.limit == "messages");
  CHECK(refused.first_refusal);
  CHECK(refused.retry_seconds == Approx(1.0));
  CHECK(limits.Admit("b", 10, t0).admitted);  // another device is not affected
  // Still refused during the refusal period, even though tokens refilled.
  CHECK_FALSE(limits.Admit("a", 10, t0 + 900ms).admitted);
  CHECK(limits.Admit("a", 10, t0 + 1100ms).admitted);
  // Bytes: the burst of 3000, then refused.
  CHECK(limits.Admit("c", 2500, t0).admitted);
  PeerLimits::Admission bytes = limits.Admit("c", 1000, t0);
  CHECK_FALSE(bytes.admitted);
  CHECK(bytes.limit == "bytes");
  CHECK(limits.refused() == 3);
  // Idle devices are forgotten once their buckets are full again.
  limits.Prune(t0 + 10s);
  CHECK(limits.tracked() == 0);
  // 0 = unlimited; the automatic values follow the model size.
  PeerLimitsConfig unlimited;
  unlimited.messages_per_second = 0;
  unlimited.bytes_per_second = 0;
  PeerLimits open(unlimited.Resolved(100));
  for (int i = 0; i < 1000; ++i) REQUIRE(open.Admit("a", 1 << 20, t0).admitted);
  CHECK(PeerLimitsConfig().Resolved(1 << 20).max_queued_bytes == (3u << 20));
  PeerLimitsConfig bad;
  bad.messages_per_second = -1;
  CHECK_FALSE(bad.Validate().ok());
}

TEST_CASE("The log limiter lets one line per key and interval through with a count", "[validation]") {
  LogLimiter limiter(10s);
  const auto t0 = LogLimiter::Clock::now();
  uint64_t suppressed = 99;
  CHECK(limiter.Allow("a", t0, &suppressed));
  CHECK(suppressed == 0);
  for (int i = 0; i < 1000; ++i) CHECK_FALSE(limiter.Allow("a", t0 + 1s, &suppressed));
  CHECK(limiter.Allow("b", t0 + 1s, &suppressed));
  CHECK(limiter.Allow("a", t0 + 11s, &suppressed));
  CHECK(suppressed == 1000);
}

TEST_CASE("A failed parse still yields the request id and the version error", "[validation]") {
  wire::Envelope env;
  env.set_request_id(4242);
  env.mutable_hello()->set_client_name(std::string(5000, 'x'));
  const std::string bytes = proto::SerializeEnvelope(&env);
  auto parsed = proto::ParseEnvelope(bytes.data(), bytes.size());
  REQUIRE_FALSE(parsed.ok());
  proto::ParseFailure f = proto::DescribeParseFailure(bytes.data(), bytes.size(), parsed.status());
  CHECK(f.request_id == 4242);
  CHECK(f.code == wire::ERROR_MALFORMED);
  env.set_version(static_cast<wire::ProtocolVersion>(7));
  env.mutable_hello()->set_client_name("ok");
  const std::string v7 = env.SerializeAsString();
  parsed = proto::ParseEnvelope(v7.data(), v7.size());
  REQUIRE_FALSE(parsed.ok());
  f = proto::DescribeParseFailure(v7.data(), v7.size(), parsed.status());
  CHECK(f.code == wire::ERROR_VERSION);
  CHECK(f.request_id == 4242);
  const char junk[] = "\xff\xff\xff\xff\x0f garbage";
  CHECK(proto::DescribeParseFailure(junk, sizeof(junk), Status::Ok()).request_id == 0);
  CHECK(proto::DescribeParseFailure(nullptr, 0, Status::Ok()).request_id == 0);
}

TEST_CASE("Quarantine moves a record aside with its reason", "[validation]") {
  const auto dir =
      std::filesystem::temp_directory_path() / ("flotilla-quarantine-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  {
    auto store = Store::Open(dir.string());
    REQUIRE(store.ok());
    records::UpdateRecord u;
    u.set_round(3);
    u.set_client_id("dev");
    u.set_num_examples(5);
    REQUIRE((*store)->PutUpdate(u).ok());
    REQUIRE((*store)->QuarantineUpdate(3, "dev", "norm over bound").ok());
    CHECK_FALSE((*store)->HasUpdate(3, "dev"));
    CHECK((*store)->QuarantineUpdate(3, "dev", "again").code() == StatusCode::kNotFound);
    // Client records written with a round commit.
    records::ClientRecord c;
    c.set_client_id("dev");
    (*c.mutable_rejected_by_reason())["norm"] = 2;
    records::RoundRecord r;
    r.set_round(3);
    r.set_outcome(records::RoundRecord::OUTCOME_FAILED);
    RoundCommit commit;
    commit.round = r;
    commit.clients = {c};
    REQUIRE((*store)->CommitRound(commit).ok());
  }
  auto store = Store::OpenReadOnly(dir.string());
  REQUIRE(store.ok());
  auto q = (*store)->ListQuarantine();
  REQUIRE(q.ok());
  REQUIRE(q->size() == 1);
  CHECK(q->at(0).family() == "updates");
  CHECK(q->at(0).reason() == "norm over bound");
  records::UpdateRecord back;
  REQUIRE(back.ParseFromString(q->at(0).value()));
  CHECK(back.client_id() == "dev");
  auto client = (*store)->GetClient("dev");
  REQUIRE(client.ok());
  REQUIRE(client->has_value());
  CHECK(client->value().rejected_by_reason().at("norm") == 2);
  store->reset();
  std::filesystem::remove_all(dir);
}
