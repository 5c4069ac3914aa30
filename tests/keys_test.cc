#include "privacy/keys.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "core/z85.h"
#include "net/zap.h"
#include "privacy/signing.h"

using namespace flotilla;

namespace {
std::filesystem::path TempDir(const std::string& name) {
  auto p =
      std::filesystem::temp_directory_path() / ("flotilla-keys-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}
}  // namespace

TEST_CASE("Z85 matches the RFC 32 test vector and rejects bad text", "[keys]") {
  const std::vector<unsigned char> bytes = {0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B};
  CHECK(Z85Encode(bytes) == "HelloWorld");
  auto back = Z85Decode("HelloWorld");
  REQUIRE(back.ok());
  CHECK(*back == bytes);
  CHECK(Z85Decode("Hello").ok());  // 5 characters are one group
  CHECK_FALSE(Z85Decode("Hell").ok());
  CHECK_FALSE(Z85Decode("Hell\"").ok());
  CHECK_FALSE(Z85Decode("#####").ok());  // overflows 32 bits
}

TEST_CASE("Key files round trip with private modes", "[keys]") {
  const auto dir = TempDir("files");
  auto curve = privacy::GenerateCurveKeyPair();
  REQUIRE(curve.ok());
  REQUIRE(privacy::WriteCurveKeyFiles(dir.string(), "dev", *curve, false).ok());
  struct stat st {};
  REQUIRE(::stat((dir / "dev.curve.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto read = privacy::ReadCurveSecretFile((dir / "dev.curve.key").string());
  REQUIRE(read.ok());
  CHECK(read->public_z85 == curve->public_z85);
  CHECK(read->SecretZ85() == curve->SecretZ85());
  CHECK(*privacy::ReadCurvePublicFile((dir / "dev.curve.pub").string()) == curve->public_z85);
  // No silent overwrite.
  CHECK(privacy::WriteCurveKeyFiles(dir.string(), "dev", *curve, false).code() == StatusCode::kAlreadyExists);
  // A world-readable secret is refused with the fix in the message.
  ::chmod((dir / "dev.curve.key").c_str(), 0644);
  auto open = privacy::ReadCurveSecretFile((dir / "dev.curve.key").string());
  CHECK(open.status().code() == StatusCode::kPermissionDenied);
  CHECK(open.status().message().find("chmod 600") != std::string::npos);

  auto signing = privacy::GenerateSigningKeyPair();
  REQUIRE(signing.ok());
  REQUIRE(privacy::WriteSigningKeyFiles(dir.string(), "agg", *signing, false).ok());
  auto sread = privacy::ReadSigningSecretFile((dir / "agg.sign.key").string());
  REQUIRE(sread.ok());
  CHECK(*privacy::ReadSigningPublicFile((dir / "agg.sign.pub").string()) == signing->public_key);
  CHECK(privacy::ReadCurveSecretFile((dir / "missing.key").string()).status().code() ==
        StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Model signatures bind version round and every weight", "[keys]") {
  auto key = privacy::GenerateSigningKeyPair();
  REQUIRE(key.ok());
  auto layout = std::make_shared<const Layout>(*Layout::Create({{"w", {3}}}));
  Weights w = Weights::Zeros(layout);
  w.data = {1.0f, 2.0f, 3.0f};
  const auto digest = privacy::ModelDigest(w);
  auto sig = privacy::SignModel(*key, "fed-a", 7, 6, digest);
  REQUIRE(sig.ok());
  CHECK(privacy::VerifyModel(key->public_key, "fed-a", 7, 6, digest, *sig).ok());
  CHECK_FALSE(privacy::VerifyModel(key->public_key, "fed-a", 8, 6, digest, *sig).ok());
  CHECK_FALSE(privacy::VerifyModel(key->public_key, "fed-a", 7, 5, digest, *sig).ok());
  Weights tampered = w;
  tampered.data[1] = std::nextafter(2.0f, 3.0f);
  CHECK_FALSE(
      privacy::VerifyModel(key->public_key, "fed-a", 7, 6, privacy::ModelDigest(tampered), *sig).ok());
  // Same values under another layout name digest differently.
  Weights renamed = w;
  renamed.layout = std::make_shared<const Layout>(*Layout::Create({{"v", {3}}}));
  CHECK(privacy::ModelDigest(renamed) != digest);
  CHECK_FALSE(privacy::VerifyModel(key->public_key, "fed-a", 7, 6, digest, "short").ok());
  // The signature covers the federation: the same model, version and round
  // signed for federation "fed-a" does not verify for "fed-b".
  Status other = privacy::VerifyModel(key->public_key, "fed-b", 7, 6, digest, *sig);
  CHECK(other.code() == StatusCode::kPermissionDenied);
  CHECK(std::string(other.message()).find("fed-b") != std::string::npos);
  // Version-1 signatures (no federation) are a different message.
  CHECK_FALSE(privacy::VerifyModelV1(key->public_key, 7, 6, digest, *sig).ok());
}

TEST_CASE("Allowlists accept keys containing '#' labels and comments", "[keys]") {
  const auto dir = TempDir("allow");
  // A key whose Z85 text contains '#'. No group of a key starts with it
  // (84 * 85^4 > 2^32), so a first word starting with '#' is a comment.
  std::string with_hash;
  for (int i = 0; i < 20000 && with_hash.empty(); ++i) {
    auto k = privacy::DeriveCurveKeyPairForSimulation(static_cast<uint64_t>(i));
    REQUIRE(k.ok());
    if (k->public_z85.find('#') != std::string::npos) with_hash = k->public_z85;
  }
  REQUIRE_FALSE(with_hash.empty());
  auto plain = privacy::DeriveCurveKeyPairForSimulation(99999);
  REQUIRE(plain.ok());
  const std::string other = plain->public_z85;
  const auto path = dir / "allowlist";
  {
    std::ofstream out(path);
    out << "# fleet allowlist\n\n" << with_hash << "  # ward 3\n  " << other << "\n";
  }
  auto keys = net::ReadAllowlist(path.string());
  REQUIRE(keys.ok());
  CHECK(keys->size() == 2);
  CHECK(keys->count(with_hash));
  CHECK(keys->count(other));
  {
    std::ofstream out(path, std::ios::app);
    out << "not-a-key\n";
  }
  auto bad = net::ReadAllowlist(path.string());
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find(":5:") != std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST_CASE("SecAgg identity certificates bind the authority to the identity key", "[keys][secagg]") {
  auto authority = privacy::GenerateSigningKeyPair();
  auto other_authority = privacy::GenerateSigningKeyPair();
  auto curve = privacy::GenerateCurveKeyPair();
  auto curve2 = privacy::GenerateCurveKeyPair();
  REQUIRE((authority.ok() && other_authority.ok() && curve.ok() && curve2.ok()));
  auto identity = privacy::DeriveSecAggIdentity(*curve);
  auto identity2 = privacy::DeriveSecAggIdentity(*curve2);
  REQUIRE((identity.ok() && identity2.ok()));
  // Derivation is deterministic in the CURVE secret and differs between devices.
  CHECK(privacy::DeriveSecAggIdentity(*curve)->public_key == identity->public_key);
  CHECK(identity->public_key != identity2->public_key);
  auto cert = privacy::CertifySecAggIdentity(*authority, identity->public_key);
  REQUIRE(cert.ok());
  CHECK(privacy::VerifySecAggIdentityCert(authority->public_key, identity->public_key, *cert).ok());
  // Another key, another authority, a flipped bit, or no certificate: refused.
  CHECK(privacy::VerifySecAggIdentityCert(authority->public_key, identity2->public_key, *cert).code() ==
        StatusCode::kPermissionDenied);
  CHECK(privacy::VerifySecAggIdentityCert(other_authority->public_key, identity->public_key, *cert).code() ==
        StatusCode::kPermissionDenied);
  std::string flipped = *cert;
  flipped[5] ^= 1;
  CHECK_FALSE(privacy::VerifySecAggIdentityCert(authority->public_key, identity->public_key, flipped).ok());
  CHECK_FALSE(privacy::VerifySecAggIdentityCert(authority->public_key, identity->public_key, "").ok());
  // The certificate file round-trips.
  const auto path = std::filesystem::temp_directory_path() / ("flotilla-cert-" + std::to_string(::getpid()));
  std::filesystem::remove(path);
  REQUIRE(privacy::WriteSecAggCertFile(path.string(), *cert, false).ok());
  CHECK_FALSE(privacy::WriteSecAggCertFile(path.string(), *cert, false).ok());  // no silent overwrite
  auto read = privacy::ReadSecAggCertFile(path.string());
  REQUIRE(read.ok());
  CHECK(*read == *cert);
  std::filesystem::remove(path);
}
