// flotilla keygen: create CURVE and model-signing key pairs.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "privacy/keys.h"

int flotilla::cli::KeygenMain(int argc, char** argv, const FlagOrigins& /*origins*/) {
  using namespace flotilla;
  std::string out_dir = ".";
  std::string name;
  bool signing = false, force = false;
  std::string allowlist, certify, identity_file;
  CLI::App app{
      "Flotilla key generator. Writes NAME.curve.key (secret, mode 0600) and NAME.curve.pub; with "
      "--signing also NAME.sign.key and NAME.sign.pub, the aggregator's model-signing pair. See "
      "docs/security.md for enrolment, rotation and revocation."};
  app.add_option("--name", name, "Key name, e.g. aggregator or the device id")->required();
  app.add_option(
      "--identity", identity_file,
      "With --certify: certify the identity in this NAME.secagg.pub file (sent by a device that made its "
      "keys itself) instead of making new keys");
  app.add_option("--out", out_dir, "Directory for the key files")->capture_default_str();
  app.add_flag("--signing", signing, "Also create an Ed25519 model-signing key pair (aggregator only)");
  app.add_flag("--force", force, "Overwrite existing key files");
  app.add_option("--allowlist", allowlist, "Append the new CURVE public key to this allowlist file");
  app.add_option(
      "--certify", certify,
      "Enrolment authority's secret key file (create it once with --name enrolment --signing and keep "
      "it off the aggregator): also write NAME.secagg.cert, the authority's certificate for the "
      "device's secure-aggregation identity");
  CLI11_PARSE(app, argc, argv);

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  auto write_cert = [&](const std::vector<unsigned char>& identity_public) -> int {
    auto authority = privacy::ReadSigningSecretFile(certify);
    auto cert = authority.ok() ? privacy::CertifySecAggIdentity(*authority, identity_public)
                               : flotilla::StatusOr<std::string>(authority.status());
    const std::string path = out_dir + "/" + name + ".secagg.cert";
    flotilla::Status st = cert.ok() ? privacy::WriteSecAggCertFile(path, *cert, force) : cert.status();
    if (!st.ok()) {
      std::fprintf(stderr, "flotilla keygen: %s\n", st.ToString().c_str());
      return 1;
    }
    std::printf("  secure-aggregation identity certified by %s: %s\n", certify.c_str(), path.c_str());
    return 0;
  };
  if (!identity_file.empty()) {
    if (certify.empty()) {
      std::fprintf(stderr, "flotilla keygen: --identity needs --certify AUTHORITY.sign.key\n");
      return 2;
    }
    std::ifstream in(identity_file);
    std::string hex;
    std::getline(in, hex);
    auto identity_public = privacy::HexDecode(hex);
    if (!in || !identity_public.ok() || identity_public->size() != 32) {
      std::fprintf(stderr, "flotilla keygen: %s does not hold a 32-byte identity key in hex\n",
                   identity_file.c_str());
      return 1;
    }
    return write_cert(*identity_public);
  }
  if (ec) {
    std::fprintf(stderr, "flotilla keygen: cannot create %s: %s\n", out_dir.c_str(), ec.message().c_str());
    return 1;
  }
  auto curve = privacy::GenerateCurveKeyPair();
  if (!curve.ok()) {
    std::fprintf(stderr, "flotilla keygen: %s\n", curve.status().ToString().c_str());
    return 1;
  }
  if (Status st = privacy::WriteCurveKeyFiles(out_dir, name, *curve, force); !st.ok()) {
    std::fprintf(stderr, "flotilla keygen: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("CURVE public key of %s: %s\n  written to %s/%s.curve.pub (secret: %s.curve.key, mode 0600)\n",
              name.c_str(), curve->public_z85.c_str(), out_dir.c_str(), name.c_str(), name.c_str());
  if (!allowlist.empty()) {
    std::ofstream out(allowlist, std::ios::app);
    out << curve->public_z85 << "  # " << name << "\n";
    if (!out) {
      std::fprintf(stderr, "flotilla keygen: cannot append to %s\n", allowlist.c_str());
      return 1;
    }
    std::printf("  appended to allowlist %s\n", allowlist.c_str());
  }
  {
    // The device's secure-aggregation identity (derived from the CURVE
    // secret): its public half goes to the enrolment authority.
    auto identity = privacy::DeriveSecAggIdentity(*curve);
    if (!identity.ok()) {
      std::fprintf(stderr, "flotilla keygen: %s\n", identity.status().ToString().c_str());
      return 1;
    }
    const std::string path = out_dir + "/" + name + ".secagg.pub";
    std::ofstream out(path, std::ios::trunc);
    out << privacy::HexEncode(identity->public_key.data(), identity->public_key.size()) << "\n";
    if (!out) {
      std::fprintf(stderr, "flotilla keygen: cannot write %s\n", path.c_str());
      return 1;
    }
    std::printf("  secure-aggregation identity: %s (have it certified: --certify on the authority's host)\n",
                path.c_str());
    if (!certify.empty() && write_cert(identity->public_key) != 0) return 1;
  }
  if (signing) {
    auto sign = privacy::GenerateSigningKeyPair();
    if (!sign.ok()) {
      std::fprintf(stderr, "flotilla keygen: %s\n", sign.status().ToString().c_str());
      return 1;
    }
    if (Status st = privacy::WriteSigningKeyFiles(out_dir, name, *sign, force); !st.ok()) {
      std::fprintf(stderr, "flotilla keygen: %s\n", st.ToString().c_str());
      return 1;
    }
    std::printf("model-signing public key: %s/%s.sign.pub (secret: %s.sign.key, mode 0600)\n",
                out_dir.c_str(), name.c_str(), name.c_str());
  }
  return 0;
}
