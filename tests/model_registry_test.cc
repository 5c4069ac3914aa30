// The model registry as a part, on the in-memory store: signing for the
// federation, retention, pulls of changed tensors, and start-up checks.
#include "aggregator/model_registry.h"

#include <catch2/catch.hpp>

#include "aggregator/store.h"
#include "privacy/signing.h"
#include "proto/codec.h"
#include "storage/kv_store.h"

using namespace flotilla;
using namespace flotilla::aggregator;

namespace {

std::shared_ptr<const Layout> TwoTensors() {
  return std::make_shared<const Layout>(*Layout::Create({{"w", {2, 2}}, {"b", {2}}}));
}

Weights Filled(float w, float b) {
  Weights x = Weights::Zeros(TwoTensors());
  for (int i = 0; i < 4; ++i) x.data[i] = w;
  x.data[4] = x.data[5] = b;
  return x;
}

struct Fixture {
  std::unique_ptr<Store> store =
      std::move(Store::OnKvStore(storage::NewMemoryStore(Store::Families()))).value();
  RegistryOptions options;
  Fixture() {
    options.federation = "ward-3";
    options.arch = "tiny";
    options.store_path = "memory";
    options.signing_key =
        std::make_shared<const privacy::SigningKeyPair>(std::move(privacy::GenerateSigningKeyPair()).value());
  }
  // Commits `weights` as the next version the way a round does.
  void Commit(ModelRegistry* r, Weights weights, uint32_t round) {
    auto record = r->SignNext(weights, round, 0);
    REQUIRE(record.ok());
    RoundCommit c;
    c.round.set_round(round);
    c.model = &*record;
    c.expire = r->Expired(record->version());
    REQUIRE(store->CommitRound(c).ok());
    r->Committed(*record, std::move(weights), c.expire);
  }
};

}  // namespace

TEST_CASE("The registry signs version 1 for its federation and recovers the latest", "[model_registry]") {
  Fixture f;
  {
    auto r = ModelRegistry::Recover(f.options, f.store.get(), Filled(1, 2));
    REQUIRE(r.ok());
    CHECK((*r)->version() == 1);
    CHECK(privacy::VerifyModel(f.options.signing_key->public_key, "ward-3", 1, 0,
                               privacy::ModelDigest((*r)->global()), (*r)->signature())
              .ok());
    f.Commit(r->get(), Filled(3, 4), 1);
    CHECK((*r)->version() == 2);
  }
  auto again = ModelRegistry::Recover(f.options, f.store.get(), Filled(0, 0));
  REQUIRE(again.ok());
  CHECK((*again)->version() == 2);
  CHECK((*again)->round() == 1);
  CHECK((*again)->global().data == Filled(3, 4).data);
  // Another federation or architecture on the same store is refused.
  RegistryOptions other = f.options;
  other.federation = "ward-4";
  auto wrong = ModelRegistry::Recover(other, f.store.get(), Filled(0, 0));
  CHECK(wrong.status().code() == StatusCode::kFailedPrecondition);
  CHECK(wrong.status().message().find("ward-3") != std::string::npos);
  other = f.options;
  other.arch = "cnn";
  CHECK(ModelRegistry::Recover(other, f.store.get(), Filled(0, 0)).status().code() ==
        StatusCode::kFailedPrecondition);
}

TEST_CASE("Retention keeps the newest versions, milestones and version 1", "[model_registry]") {
  Fixture f;
  f.options.retain_last = 2;
  f.options.retain_every = 3;
  auto r = ModelRegistry::Recover(f.options, f.store.get(), Filled(0, 0));
  REQUIRE(r.ok());
  for (uint32_t round = 1; round <= 6; ++round)
    f.Commit(r->get(), Filled(static_cast<float>(round), 0), round);
  // Versions 1..7 were made; kept: 1 (first), 3 and 6 (every 3rd), 6 and 7 (newest two).
  CHECK(*f.store->ListModelVersions() == std::vector<uint64_t>{1, 3, 6, 7});
}

TEST_CASE("Pulls send the model, only its changed tensors, or nothing", "[model_registry]") {
  Fixture f;
  auto r = ModelRegistry::Recover(f.options, f.store.get(), Filled(1, 2));
  REQUIRE(r.ok());
  f.Commit(r->get(), Filled(1, 5), 1);  // only the bias changed
  wire::PullRequest full;
  auto a = (*r)->Pull(full);
  REQUIRE(a.ok());
  CHECK(a->version() == 2);
  CHECK(a->weights().data().size() == 6 * sizeof(float));
  wire::PullRequest delta;
  delta.set_have_version(1);
  auto b = (*r)->Pull(delta);
  REQUIRE(b.ok());
  CHECK(b->base_version() == 1);
  CHECK(std::vector<uint32_t>(b->changed_tensors().begin(), b->changed_tensors().end()) ==
        std::vector<uint32_t>{1});
  CHECK(b->weights().data().size() == 2 * sizeof(float));
  wire::PullRequest current;
  current.set_have_version(2);
  CHECK((*r)->Pull(current)->up_to_date());
  wire::PullRequest missing;
  missing.set_version(9);
  CHECK((*r)->Pull(missing).status().code() == StatusCode::kNotFound);
}

TEST_CASE("A stored model whose signature does not verify is refused at start-up", "[model_registry]") {
  Fixture f;
  const Weights w = Filled(1, 1);
  records::ModelRecord old;
  old.set_version(1);
  old.set_arch("tiny");
  proto::WeightsToProto(w, old.mutable_weights());
  auto digest = privacy::ModelDigest(w);
  old.set_signature(std::string(64, 'x'));  // not this key's
  REQUIRE(f.store->PutModel(old).ok());
  auto refused = ModelRegistry::Recover(f.options, f.store.get(), Filled(0, 0));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("another signing key") != std::string::npos);
  old.set_signature(*privacy::SignModel(*f.options.signing_key, "ward-3", 1, 0, digest));
  old.set_federation("ward-3");
  REQUIRE(f.store->PutModel(old).ok());
  CHECK(ModelRegistry::Recover(f.options, f.store.get(), Filled(0, 0)).ok());
}
