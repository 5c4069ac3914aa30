// Per-device limits on what one peer may cost the aggregator: messages and
// bytes in (token buckets, refilled continuously), after which the device
// is refused for a while. Bytes queued out are counted by the transport
// (net::ServerSocket::QueuedBytes); the aggregator checks them against
// max_queued_bytes before it queues a large reply.
//
// Keys are device identities (the CURVE key), so one device cannot escape
// its limits by opening more connections.
//
// Thread-safety: not thread-safe; the aggregator's thread owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "core/status.h"

namespace flotilla::aggregator {

struct PeerLimitsConfig {
  // Messages in per device: sustained rate and burst (0 = unlimited).
  double messages_per_second = 50.0;
  double message_burst = 200.0;
  // Bytes in per device (0 = unlimited); burst 0 = 4 models + 16 MiB.
  double bytes_per_second = 32.0 * (1 << 20);
  double byte_burst = 0.0;
  // Bytes the aggregator may hold queued for one device that has not read
  // them (0 = 2 models + 1 MiB). Larger replies wait until it reads.
  uint64_t max_queued_bytes = 0;
  // A device over a limit is refused (ERROR_RATE_LIMITED) this long.
  double refusal_seconds = 2.0;

  Status Validate() const;
  // Resolves the automatic values for a model of `model_bytes`.
  PeerLimitsConfig Resolved(uint64_t model_bytes) const;
};

class PeerLimits {
 public:
  using Clock = std::chrono::steady_clock;

  // REQUIRES: config was Resolved().
  explicit PeerLimits(const PeerLimitsConfig& config) : config_(config) {}

  struct Admission {
    bool admitted = true;
    std::string limit;           // which limit was exceeded ("messages", "bytes")
    double retry_seconds = 0;    // when the device may try again
    bool first_refusal = false;  // the first refusal of this refusal period
  };
  // Charges one inbound message of `bytes` to `key`.
  Admission Admit(const std::string& key, size_t bytes, Clock::time_point now);

  // Forgets devices whose buckets have refilled (bounds memory when keys
  // are routing ids, without CURVE). Cheap; call every few seconds.
  void Prune(Clock::time_point now);
  size_t tracked() const { return peers_.size(); }
  const PeerLimitsConfig& config() const { return config_; }
  uint64_t refused() const { return refused_; }

 private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point updated;
  };
  struct Peer {
    Bucket messages, bytes;
    Clock::time_point refused_until;
  };
  static bool Take(Bucket* b, double rate, double burst, double amount, Clock::time_point now);

  PeerLimitsConfig config_;
  std::unordered_map<std::string, Peer> peers_;
  uint64_t refused_ = 0;
};

}  // namespace flotilla::aggregator
