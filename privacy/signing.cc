#include "privacy/signing.h"

#include <sodium.h>

#include <cstring>

namespace flotilla::privacy {
namespace {

constexpr char kContextV1[] = "flotilla-model-v1";
constexpr char kContextV2[] = "flotilla-model-v2";

template <typename T>
void AppendLe(std::string* out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i)
    out->push_back(static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff));
}

std::string SignedBytesV1(uint64_t version, uint32_t round, const Digest& digest) {
  std::string msg(kContextV1);
  AppendLe(&msg, version);
  AppendLe(&msg, round);
  msg.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  return msg;
}

std::string SignedBytes(const std::string& federation, uint64_t version, uint32_t round,
                        const Digest& digest) {
  std::string msg(kContextV2);
  AppendLe(&msg, static_cast<uint32_t>(federation.size()));
  msg += federation;
  AppendLe(&msg, version);
  AppendLe(&msg, round);
  msg.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  return msg;
}

}  // namespace

Digest ModelDigest(const Weights& weights) {
  (void)EnsureSodium();
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, 32);
  std::string header;
  for (const TensorSpec& t : weights.layout->tensors()) {
    AppendLe(&header, static_cast<uint32_t>(t.name.size()));
    header += t.name;
    AppendLe(&header, static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) AppendLe(&header, d);
  }
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(header.data()), header.size());
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(weights.data.data()),
                            weights.data.size() * sizeof(float));
  Digest digest;
  crypto_generichash_final(&state, digest.data(), digest.size());
  return digest;
}

StatusOr<std::string> SignModel(const SigningKeyPair& key, const std::string& federation, uint64_t version,
                                uint32_t round, const Digest& digest) {
  RETURN_IF_ERROR(EnsureSodium());
  if (key.secret.size() != crypto_sign_SECRETKEYBYTES) return InvalidArgument("signing key is not loaded");
  const std::string msg = SignedBytes(federation, version, round, digest);
  std::string sig(crypto_sign_BYTES, '\0');
  if (crypto_sign_detached(reinterpret_cast<unsigned char*>(sig.data()), nullptr,
                           reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
                           key.secret.data()) != 0) {
    return Internal("crypto_sign_detached failed");
  }
  return sig;
}

namespace {

Status VerifyBytes(const std::vector<unsigned char>& public_key, const std::string& msg, uint64_t version,
                   const std::string& signature, const std::string& what) {
  RETURN_IF_ERROR(EnsureSodium());
  if (public_key.size() != crypto_sign_PUBLICKEYBYTES)
    return InvalidArgument("model-signing public key must be 32 bytes");
  if (signature.size() != crypto_sign_BYTES) {
    return PermissionDenied("model version " + std::to_string(version) + " has no valid signature (" +
                            std::to_string(signature.size()) + " bytes)");
  }
  if (crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(signature.data()),
                                  reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
                                  public_key.data()) != 0) {
    return PermissionDenied("model version " + std::to_string(version) +
                            " failed signature verification: it was " + "not signed by the aggregator's key" +
                            what + ", or its weights were altered; refusing to " + "load it");
  }
  return Status::Ok();
}

}  // namespace

Status VerifyModel(const std::vector<unsigned char>& public_key, const std::string& federation,
                   uint64_t version, uint32_t round, const Digest& digest, const std::string& signature) {
  return VerifyBytes(public_key, SignedBytes(federation, version, round, digest), version, signature,
                     " for federation '" + federation + "'");
}

Status VerifyModelV1(const std::vector<unsigned char>& public_key, uint64_t version, uint32_t round,
                     const Digest& digest, const std::string& signature) {
  return VerifyBytes(public_key, SignedBytesV1(version, round, digest), version, signature, "");
}

}  // namespace flotilla::privacy
