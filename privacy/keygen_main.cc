// flotilla-keygen: create CURVE and model-signing key pairs.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "privacy/keys.h"

int main(int argc, char** argv) {
  using namespace flotilla;
  std::string out_dir = ".";
  std::string name;
  bool signing = false, force = false;
  std::string allowlist;
  CLI::App app{"Flotilla key generator. Writes NAME.curve.key (secret, mode 0600) and NAME.curve.pub; with "
               "--signing also NAME.sign.key and NAME.sign.pub, the aggregator's model-signing pair. See "
               "docs/security.md for enrolment, rotation and revocation."};
  app.add_option("--name", name, "Key name, e.g. aggregator or the device id")->required();
  app.add_option("--out", out_dir, "Directory for the key files")->capture_default_str();
  app.add_flag("--signing", signing, "Also create an Ed25519 model-signing key pair (aggregator only)");
  app.add_flag("--force", force, "Overwrite existing key files");
  app.add_option("--allowlist", allowlist, "Append the new CURVE public key to this allowlist file");
  CLI11_PARSE(app, argc, argv);

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    std::fprintf(stderr, "flotilla-keygen: cannot create %s: %s\n", out_dir.c_str(), ec.message().c_str());
    return 1;
  }
  auto curve = privacy::GenerateCurveKeyPair();
  if (!curve.ok()) {
    std::fprintf(stderr, "flotilla-keygen: %s\n", curve.status().ToString().c_str());
    return 1;
  }
  if (Status st = privacy::WriteCurveKeyFiles(out_dir, name, *curve, force); !st.ok()) {
    std::fprintf(stderr, "flotilla-keygen: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("CURVE public key of %s: %s\n  written to %s/%s.curve.pub (secret: %s.curve.key, mode 0600)\n",
              name.c_str(), curve->public_z85.c_str(), out_dir.c_str(), name.c_str(), name.c_str());
  if (!allowlist.empty()) {
    std::ofstream out(allowlist, std::ios::app);
    out << curve->public_z85 << "  # " << name << "\n";
    if (!out) {
      std::fprintf(stderr, "flotilla-keygen: cannot append to %s\n", allowlist.c_str());
      return 1;
    }
    std::printf("  appended to allowlist %s\n", allowlist.c_str());
  }
  if (signing) {
    auto sign = privacy::GenerateSigningKeyPair();
    if (!sign.ok()) {
      std::fprintf(stderr, "flotilla-keygen: %s\n", sign.status().ToString().c_str());
      return 1;
    }
    if (Status st = privacy::WriteSigningKeyFiles(out_dir, name, *sign, force); !st.ok()) {
      std::fprintf(stderr, "flotilla-keygen: %s\n", st.ToString().c_str());
      return 1;
    }
    std::printf("model-signing public key: %s/%s.sign.pub (secret: %s.sign.key, mode 0600)\n", out_dir.c_str(),
                name.c_str(), name.c_str());
  }
  return 0;
}
