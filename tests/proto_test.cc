#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>

#include "proto/codec.h"

using namespace flotilla;

namespace {
std::shared_ptr<const Layout> TestLayout() {
  return std::make_shared<const Layout>(*Layout::Create({{"fc.weight", {2, 3}}, {"fc.bias", {2}}}));
}
}  // namespace

TEST_CASE("Weights survive the wire bit for bit", "[proto]") {
  Weights w = Weights::Zeros(TestLayout());
  for (size_t i = 0; i < w.data.size(); ++i) w.data[i] = 0.1f * i - 0.37f;
  w.data[3] = std::nextafter(1.0f, 2.0f);
  wire::WeightsProto p;
  proto::WeightsToProto(w, &p);
  auto back = proto::WeightsFromProto(p, nullptr);
  REQUIRE(back.ok());
  CHECK(std::memcmp(back->data.data(), w.data.data(), w.data.size() * 4) == 0);
  CHECK(*back->layout == *w.layout);
  auto shared = proto::WeightsFromProto(p, w.layout);
  REQUIRE(shared.ok());
  CHECK(shared->layout == w.layout);
}

TEST_CASE("Hostile weight payloads are rejected", "[proto]") {
  Weights w = Weights::Zeros(TestLayout());
  wire::WeightsProto p;
  proto::WeightsToProto(w, &p);

  SECTION("payload shorter than the layout") {
    p.mutable_data()->resize(p.data().size() - 1);
    CHECK_FALSE(proto::WeightsFromProto(p, nullptr).ok());
  }
  SECTION("NaN value") {
    float nan = NAN;
    std::memcpy(&(*p.mutable_data())[4], &nan, 4);
    CHECK_FALSE(proto::WeightsFromProto(p, nullptr).ok());
  }
  SECTION("wrong shape against the expected layout") {
    p.mutable_layout(0)->set_shape(0, 3);
    p.mutable_layout(0)->set_shape(1, 2);
    auto r = proto::WeightsFromProto(p, w.layout);
    CHECK_FALSE(r.ok());
    CHECK(r.status().message().find("shape") != std::string::npos);
  }
  SECTION("huge declared shape does not allocate") {
    p.mutable_layout(0)->set_shape(0, int64_t{1} << 40);
    CHECK_FALSE(proto::WeightsFromProto(p, nullptr).ok());
  }
  SECTION("negative dimension") {
    p.mutable_layout(0)->set_shape(0, -2);
    CHECK_FALSE(proto::WeightsFromProto(p, nullptr).ok());
  }
  SECTION("too many dimensions") {
    for (int i = 0; i < 20; ++i) p.mutable_layout(1)->add_shape(1);
    CHECK_FALSE(proto::WeightsFromProto(p, nullptr).ok());
  }
}

TEST_CASE("Envelopes are parsed with bounds", "[proto]") {
  wire::Envelope env;
  env.mutable_hello()->set_client_name("dev-1");
  std::string bytes = proto::SerializeEnvelope(&env);
  auto ok = proto::ParseEnvelope(bytes.data(), bytes.size());
  REQUIRE(ok.ok());
  CHECK(ok->hello().client_name() == "dev-1");

  SECTION("garbage") {
    const char junk[] = "\xff\xff\xff\xff\x0f not a protobuf";
    CHECK_FALSE(proto::ParseEnvelope(junk, sizeof(junk)).ok());
  }
  SECTION("wrong version") {
    wire::Envelope v;
    v.mutable_task_request();
    v.set_version(static_cast<wire::ProtocolVersion>(9));
    std::string b = v.SerializeAsString();
    auto r = proto::ParseEnvelope(b.data(), b.size());
    CHECK_FALSE(r.ok());
    CHECK(r.status().message().find("version") != std::string::npos);
  }
  SECTION("empty body") {
    wire::Envelope v;
    std::string b = proto::SerializeEnvelope(&v);
    CHECK_FALSE(proto::ParseEnvelope(b.data(), b.size()).ok());
  }
  SECTION("oversized name") {
    wire::Envelope v;
    v.mutable_hello()->set_client_name(std::string(10000, 'x'));
    std::string b = proto::SerializeEnvelope(&v);
    CHECK_FALSE(proto::ParseEnvelope(b.data(), b.size()).ok());
  }
  SECTION("non-finite metric and bad example count") {
    wire::Envelope v;
    v.mutable_update()->set_num_examples(10);
    (*v.mutable_update()->mutable_metrics())["train_loss"] = NAN;
    std::string b = proto::SerializeEnvelope(&v);
    CHECK_FALSE(proto::ParseEnvelope(b.data(), b.size()).ok());
    v.mutable_update()->clear_metrics();
    v.mutable_update()->set_num_examples(-1);
    b = proto::SerializeEnvelope(&v);
    CHECK_FALSE(proto::ParseEnvelope(b.data(), b.size()).ok());
  }
  SECTION("truncated messages never crash") {
    wire::Envelope u;
    u.mutable_update()->set_num_examples(5);
    proto::WeightsToProto(Weights::Zeros(TestLayout()), u.mutable_update()->mutable_delta());
    std::string b = proto::SerializeEnvelope(&u);
    for (size_t n = 0; n < b.size(); ++n) (void)proto::ParseEnvelope(b.data(), n);
    SUCCEED();
  }
}

TEST_CASE("SplitOutField takes a nested payload out of a record without copying it", "[proto]") {
  wire::Update u;
  u.set_round(7);
  u.set_num_examples(11);
  u.mutable_delta()->set_data(std::string(4000, 'x'));
  u.mutable_delta()->set_encoding(wire::WeightsProto::FLOAT32);
  u.mutable_delta()->add_layout()->set_name("w");
  (*u.mutable_metrics())["loss"] = 1.5;
  const std::string bytes = u.SerializeAsString();
  std::string_view data;
  auto rest = proto::SplitOutField(bytes, {4, 2}, &data);  // Update.delta, WeightsProto.data
  REQUIRE(rest.ok());
  wire::Update back;
  REQUIRE(back.ParseFromString(*rest));
  CHECK(data.size() == 4000);
  CHECK(data.data() >= bytes.data());
  CHECK(data.data() < bytes.data() + bytes.size());  // a view into the input
  CHECK(back.delta().data().empty());
  CHECK(back.delta().layout(0).name() == "w");
  CHECK(back.round() == 7);
  CHECK(back.num_examples() == 11);
  CHECK(back.metrics().at("loss") == 1.5);
  // Absent: the record unchanged.
  std::string_view none;
  auto same = proto::SplitOutField(bytes, {99}, &none);
  REQUIRE(same.ok());
  CHECK(none.empty());
  CHECK(*same == bytes);
  // Not a message: an error, not a crash.
  for (std::string bad : {std::string("\xff\xff\xff"), std::string("\x1a\x7f", 2), std::string("\x0b", 1)}) {
    CHECK_FALSE(proto::SplitOutField(bad, {3, 2}, &none).ok());
  }
}
