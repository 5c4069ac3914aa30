// SecureUpdate: a device's side of one secure-aggregation round. It turns
// the trained, clipped delta into a quantized (and, with distributed DP,
// noised) integer vector, then answers each of the aggregator's stage
// messages with the next one of its own, as privacy::SecAggClient decides.
// A fresh object (fresh X25519 keys) per round. See
// docs/secure-aggregation.md.
//
// Thread-safety: not thread-safe; owned by the session.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "core/status.h"
#include "privacy/keys.h"
#include "privacy/secagg.h"
#include "proto/flotilla.pb.h"

namespace flotilla::client {

class SecureUpdate {
 public:
  // Checks the setup (parameters, index, keys, quantization), quantizes
  // `delta` (clipping it to the setup's norm) and creates this round's keys.
  // InvalidArgument on a setup that cannot work, with the reason. With an
  // `authority_key` (the enrolment authority's Ed25519 public key), every
  // identity key must carry its certificate, or PermissionDenied: the
  // aggregator may be substituting keys. Without one, the identity keys are
  // taken on the aggregator's word.
  static StatusOr<std::unique_ptr<SecureUpdate>> Create(const wire::SecAggSetup& setup, uint32_t round,
                                                        const privacy::SigningKeyPair& identity,
                                                        const std::vector<float>& delta,
                                                        const std::vector<unsigned char>& authority_key = {});

  uint32_t round() const { return round_; }
  // The stage-0 message (the signed key advertisement).
  wire::SecAggMessage First() const;
  // Given the aggregator's stage s message (1 roster, 2 relayed shares,
  // 3 unmask request, 4 done), this device's stage s message, or nullopt
  // after "done". Any failed check aborts: every later call fails too and
  // nothing more is revealed.
  StatusOr<std::optional<wire::SecAggMessage>> Next(const wire::SecAggMessage& from_aggregator);

 private:
  SecureUpdate(uint32_t round, privacy::SecAggClient client, std::vector<uint32_t> input)
      : round_(round), client_(std::move(client)), input_(std::move(input)) {}
  wire::SecAggMessage Message(uint32_t stage, std::string payload) const;

  uint32_t round_;
  privacy::SecAggClient client_;
  std::vector<uint32_t> input_;  // quantized; wiped once masked
  uint32_t expected_stage_ = 1;
};

}  // namespace flotilla::client
