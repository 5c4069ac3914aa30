#include "privacy/keys.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/z85.h"

namespace flotilla::privacy {
namespace {

// Parses "name = value" lines; ignores blank lines and '#' comments.
StatusOr<std::map<std::string, std::string>> ReadKeyValues(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot read key file " + path + " (create one with flotilla keygen)");
  std::map<std::string, std::string> values;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.size() > 4096) return InvalidArgument(path + ":" + std::to_string(line_no) + ": line too long");
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    const auto eq = line.find('=');
    if (eq == std::string::npos)
      return InvalidArgument(path + ":" + std::to_string(line_no) + ": expected name = value");
    auto trim = [](std::string s) {
      const auto a = s.find_first_not_of(" \t\r");
      const auto b = s.find_last_not_of(" \t\r");
      return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
    };
    values[trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  return values;
}

Status WriteFileWithMode(const std::string& path, const std::string& content, mode_t mode, bool overwrite) {
  const int flags = O_WRONLY | O_CREAT | O_TRUNC | (overwrite ? 0 : O_EXCL);
  const int fd = ::open(path.c_str(), flags, mode);
  if (fd < 0) {
    if (errno == EEXIST) return AlreadyExists(path + " exists; pass --force to replace it");
    return Unavailable("cannot create " + path + ": " + std::strerror(errno));
  }
  ::fchmod(fd, mode);  // O_CREAT's mode is filtered by umask; make it exact
  const ssize_t written = ::write(fd, content.data(), content.size());
  const int sync_rc = ::fsync(fd);
  ::close(fd);
  if (written != static_cast<ssize_t>(content.size()) || sync_rc != 0) {
    return Unavailable("cannot write " + path + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

Status CheckPrivateMode(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return NotFound("cannot stat " + path);
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    return PermissionDenied("secret key file " + path + " is readable by group or others; run: chmod 600 " +
                            path);
  }
  return Status::Ok();
}

std::string Join(const std::string& dir, const std::string& file) {
  return (std::filesystem::path(dir) / file).string();
}

}  // namespace

Status EnsureSodium() {
  static const int rc = sodium_init();
  if (rc < 0) return Internal("libsodium failed to initialize");
  return Status::Ok();
}

SecretBytes::SecretBytes(size_t size) : bytes_(size, 0) {}
SecretBytes::~SecretBytes() { Wipe(); }
SecretBytes::SecretBytes(SecretBytes&& other) noexcept : bytes_(std::move(other.bytes_)) { other.Wipe(); }
SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    Wipe();
    bytes_ = std::move(other.bytes_);
    other.Wipe();
  }
  return *this;
}
void SecretBytes::Wipe() {
  if (!bytes_.empty()) sodium_memzero(bytes_.data(), bytes_.size());
  bytes_.clear();
}

std::string CurveKeyPair::SecretZ85() const {
  return Z85Encode(std::vector<unsigned char>(secret.data(), secret.data() + secret.size()));
}

StatusOr<CurveKeyPair> GenerateCurveKeyPair() {
  RETURN_IF_ERROR(EnsureSodium());
  CurveKeyPair pair;
  pair.secret = SecretBytes(crypto_box_SECRETKEYBYTES);
  std::vector<unsigned char> pub(crypto_box_PUBLICKEYBYTES);
  if (crypto_box_keypair(pub.data(), pair.secret.data()) != 0) return Internal("crypto_box_keypair failed");
  pair.public_z85 = Z85Encode(pub);
  return pair;
}

std::string KeyFingerprint(const std::vector<unsigned char>& public_key) {
  unsigned char hash[32];
  if (EnsureSodium().ok()) {
    crypto_generichash(hash, sizeof hash, public_key.data(), public_key.size(), nullptr, 0);
  } else {
    std::fill(std::begin(hash), std::end(hash), 0);
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 8; ++i) {
    if (i == 4) out += ':';
    out += kHex[hash[i] >> 4];
    out += kHex[hash[i] & 15];
  }
  return out;
}

StatusOr<CurveKeyPair> DeriveCurveKeyPairForSimulation(uint64_t seed) {
  RETURN_IF_ERROR(EnsureSodium());
  unsigned char input[24] = "flotilla-sim-curve-key";
  SecretBytes key_seed(crypto_box_SEEDBYTES);
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, key_seed.size());
  crypto_generichash_update(&state, input, sizeof(input));
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(seed >> (8 * i));
  crypto_generichash_update(&state, le, sizeof(le));
  crypto_generichash_final(&state, key_seed.data(), key_seed.size());
  CurveKeyPair pair;
  pair.secret = SecretBytes(crypto_box_SECRETKEYBYTES);
  std::vector<unsigned char> pub(crypto_box_PUBLICKEYBYTES);
  if (crypto_box_seed_keypair(pub.data(), pair.secret.data(), key_seed.data()) != 0) {
    return Internal("crypto_box_seed_keypair failed");
  }
  pair.public_z85 = Z85Encode(pub);
  return pair;
}

StatusOr<SigningKeyPair> DeriveSecAggIdentity(const CurveKeyPair& curve) {
  RETURN_IF_ERROR(EnsureSodium());
  if (curve.secret.size() != crypto_box_SECRETKEYBYTES)
    return InvalidArgument("CURVE secret key must be 32 bytes");
  static const char kLabel[] = "flotilla-secagg-identity-v1";
  SecretBytes seed(crypto_sign_SEEDBYTES);
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, seed.size());
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(kLabel), sizeof(kLabel) - 1);
  crypto_generichash_update(&state, curve.secret.data(), curve.secret.size());
  crypto_generichash_final(&state, seed.data(), seed.size());
  sodium_memzero(&state, sizeof(state));
  SigningKeyPair pair;
  pair.public_key.resize(crypto_sign_PUBLICKEYBYTES);
  pair.secret = SecretBytes(crypto_sign_SECRETKEYBYTES);
  if (crypto_sign_seed_keypair(pair.public_key.data(), pair.secret.data(), seed.data()) != 0) {
    return Internal("crypto_sign_seed_keypair failed");
  }
  return pair;
}

namespace {
constexpr char kSecAggCertLabel[] = "flotilla-secagg-identity-cert-v1";

std::vector<unsigned char> SecAggCertMessage(const std::vector<unsigned char>& identity_public) {
  // (Sized once and copied into: GCC 12 misreads a range insert here as out
  // of bounds, which -Werror would make fatal.)
  const size_t label = sizeof(kSecAggCertLabel) - 1;
  std::vector<unsigned char> m(label + identity_public.size());
  std::memcpy(m.data(), kSecAggCertLabel, label);
  if (!identity_public.empty()) std::memcpy(m.data() + label, identity_public.data(), identity_public.size());
  return m;
}
}  // namespace

StatusOr<std::string> CertifySecAggIdentity(const SigningKeyPair& authority,
                                            const std::vector<unsigned char>& identity_public) {
  RETURN_IF_ERROR(EnsureSodium());
  if (identity_public.size() != crypto_sign_PUBLICKEYBYTES)
    return InvalidArgument("identity key must be 32 bytes");
  if (authority.secret.size() != crypto_sign_SECRETKEYBYTES)
    return InvalidArgument("authority key must be 64 bytes");
  const std::vector<unsigned char> m = SecAggCertMessage(identity_public);
  std::string cert(crypto_sign_BYTES, '\0');
  if (crypto_sign_detached(reinterpret_cast<unsigned char*>(cert.data()), nullptr, m.data(), m.size(),
                           authority.secret.data()) != 0) {
    return Internal("crypto_sign_detached failed");
  }
  return cert;
}

Status VerifySecAggIdentityCert(const std::vector<unsigned char>& authority_public,
                                const std::vector<unsigned char>& identity_public, const std::string& cert) {
  RETURN_IF_ERROR(EnsureSodium());
  if (authority_public.size() != crypto_sign_PUBLICKEYBYTES ||
      identity_public.size() != crypto_sign_PUBLICKEYBYTES || cert.size() != crypto_sign_BYTES) {
    return PermissionDenied("SecAgg identity certificate missing or malformed");
  }
  const std::vector<unsigned char> m = SecAggCertMessage(identity_public);
  if (crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(cert.data()), m.data(), m.size(),
                                  authority_public.data()) != 0) {
    return PermissionDenied("SecAgg identity key is not certified by the enrolment authority");
  }
  return Status::Ok();
}

Status WriteSecAggCertFile(const std::string& path, const std::string& cert, bool overwrite) {
  if (cert.size() != crypto_sign_BYTES) return InvalidArgument("a SecAgg identity certificate is 64 bytes");
  if (!overwrite && std::filesystem::exists(path)) {
    return AlreadyExists(path + " exists; pass --force to overwrite");
  }
  std::ofstream out(path, std::ios::trunc);
  out << HexEncode(reinterpret_cast<const unsigned char*>(cert.data()), cert.size()) << "\n";
  if (!out) return Unavailable("cannot write " + path);
  return Status::Ok();
}

StatusOr<std::string> ReadSecAggCertFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot read SecAgg identity certificate " + path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  ASSIGN_OR_RETURN(std::vector<unsigned char> bytes, HexDecode(line));
  if (bytes.size() != crypto_sign_BYTES) return InvalidArgument(path + ": a certificate is 64 bytes in hex");
  return std::string(bytes.begin(), bytes.end());
}

StatusOr<SigningKeyPair> GenerateSigningKeyPair() {
  RETURN_IF_ERROR(EnsureSodium());
  SigningKeyPair pair;
  pair.public_key.resize(crypto_sign_PUBLICKEYBYTES);
  pair.secret = SecretBytes(crypto_sign_SECRETKEYBYTES);
  if (crypto_sign_keypair(pair.public_key.data(), pair.secret.data()) != 0) {
    return Internal("crypto_sign_keypair failed");
  }
  return pair;
}

Status WriteCurveKeyFiles(const std::string& dir, const std::string& name, const CurveKeyPair& pair,
                          bool overwrite) {
  const std::string pub =
      "# Flotilla CURVE public key of '" + name + "'. Share it.\npublic = " + pair.public_z85 + "\n";
  std::string secret = "# Flotilla CURVE secret key of '" + name +
                       "'. Keep it private (mode 0600).\npublic = " + pair.public_z85 +
                       "\nsecret = " + pair.SecretZ85() + "\n";
  Status st = WriteFileWithMode(Join(dir, name + ".curve.key"), secret, 0600, overwrite);
  sodium_memzero(secret.data(), secret.size());
  RETURN_IF_ERROR(st);
  return WriteFileWithMode(Join(dir, name + ".curve.pub"), pub, 0644, overwrite);
}

Status WriteSigningKeyFiles(const std::string& dir, const std::string& name, const SigningKeyPair& pair,
                            bool overwrite) {
  const std::string pub_hex = HexEncode(pair.public_key.data(), pair.public_key.size());
  const std::string pub = "# Flotilla model-signing public key of '" + name +
                          "'. Give it to every client.\npublic = " + pub_hex + "\n";
  std::string secret = "# Flotilla model-signing secret key of '" + name +
                       "'. Keep it private (mode 0600).\npublic = " + pub_hex +
                       "\nsecret = " + HexEncode(pair.secret.data(), pair.secret.size()) + "\n";
  Status st = WriteFileWithMode(Join(dir, name + ".sign.key"), secret, 0600, overwrite);
  sodium_memzero(secret.data(), secret.size());
  RETURN_IF_ERROR(st);
  return WriteFileWithMode(Join(dir, name + ".sign.pub"), pub, 0644, overwrite);
}

Status CheckCurvePublicKey(const std::string& z85) {
  if (z85.size() != 40)
    return InvalidArgument("a CURVE public key is 40 Z85 characters, got " + std::to_string(z85.size()));
  ASSIGN_OR_RETURN(std::vector<unsigned char> bytes, Z85Decode(z85));
  if (bytes.size() != 32) return InvalidArgument("CURVE key does not decode to 32 bytes");
  return Status::Ok();
}

StatusOr<CurveKeyPair> ReadCurveSecretFile(const std::string& path) {
  RETURN_IF_ERROR(CheckPrivateMode(path));
  ASSIGN_OR_RETURN(auto values, ReadKeyValues(path));
  if (!values.count("public") || !values.count("secret")) {
    return InvalidArgument(path + " is not a CURVE secret key file (needs public and secret)");
  }
  RETURN_IF_ERROR(CheckCurvePublicKey(values["public"]).WithContext(path));
  ASSIGN_OR_RETURN(std::vector<unsigned char> secret, Z85Decode(values["secret"]));
  sodium_memzero(values["secret"].data(), values["secret"].size());
  if (secret.size() != 32) return InvalidArgument(path + ": secret key must decode to 32 bytes");
  CurveKeyPair pair;
  pair.public_z85 = values["public"];
  pair.secret = SecretBytes(32);
  std::memcpy(pair.secret.data(), secret.data(), 32);
  sodium_memzero(secret.data(), secret.size());
  // The public key must belong to the secret key.
  RETURN_IF_ERROR(EnsureSodium());
  std::vector<unsigned char> derived(32);
  crypto_scalarmult_base(derived.data(), pair.secret.data());
  if (Z85Encode(derived) != pair.public_z85)
    return InvalidArgument(path + ": public key does not match secret key");
  return pair;
}

StatusOr<std::string> ReadCurvePublicFile(const std::string& path) {
  ASSIGN_OR_RETURN(auto values, ReadKeyValues(path));
  if (!values.count("public")) return InvalidArgument(path + " has no 'public = ' line");
  RETURN_IF_ERROR(CheckCurvePublicKey(values["public"]).WithContext(path));
  return values["public"];
}

StatusOr<SigningKeyPair> ReadSigningSecretFile(const std::string& path) {
  RETURN_IF_ERROR(CheckPrivateMode(path));
  ASSIGN_OR_RETURN(auto values, ReadKeyValues(path));
  if (!values.count("public") || !values.count("secret")) {
    return InvalidArgument(path + " is not a signing secret key file (needs public and secret)");
  }
  SigningKeyPair pair;
  ASSIGN_OR_RETURN(pair.public_key, HexDecode(values["public"]));
  ASSIGN_OR_RETURN(std::vector<unsigned char> secret, HexDecode(values["secret"]));
  sodium_memzero(values["secret"].data(), values["secret"].size());
  if (pair.public_key.size() != crypto_sign_PUBLICKEYBYTES || secret.size() != crypto_sign_SECRETKEYBYTES) {
    return InvalidArgument(path + ": wrong signing key sizes");
  }
  pair.secret = SecretBytes(secret.size());
  std::memcpy(pair.secret.data(), secret.data(), secret.size());
  sodium_memzero(secret.data(), secret.size());
  if (std::memcmp(pair.secret.data() + 32, pair.public_key.data(), 32) != 0) {
    return InvalidArgument(path + ": public key does not match secret key");
  }
  return pair;
}

StatusOr<std::vector<unsigned char>> ReadSigningPublicFile(const std::string& path) {
  ASSIGN_OR_RETURN(auto values, ReadKeyValues(path));
  if (!values.count("public")) return InvalidArgument(path + " has no 'public = ' line");
  ASSIGN_OR_RETURN(std::vector<unsigned char> key, HexDecode(values["public"]));
  if (key.size() != crypto_sign_PUBLICKEYBYTES)
    return InvalidArgument(path + ": signing public key must be 32 bytes");
  return key;
}

std::string HexEncode(const unsigned char* data, size_t size) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kHex[data[i] >> 4]);
    out.push_back(kHex[data[i] & 15]);
  }
  return out;
}

StatusOr<std::vector<unsigned char>> HexDecode(const std::string& hex) {
  if (hex.size() % 2 != 0) return InvalidArgument("hex string has odd length");
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::vector<unsigned char> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return InvalidArgument("invalid hex character");
    out[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return out;
}

}  // namespace flotilla::privacy
