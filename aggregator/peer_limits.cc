#include "aggregator/peer_limits.h"

#include <algorithm>
#include <cmath>

namespace flotilla::aggregator {

Status PeerLimitsConfig::Validate() const {
  auto non_negative = [](double v) { return v >= 0 && std::isfinite(v); };
  if (!non_negative(messages_per_second) || !non_negative(message_burst) || !non_negative(bytes_per_second) ||
      !non_negative(byte_burst) || !non_negative(refusal_seconds)) {
    return InvalidArgument("per-device limits must be finite and not negative (0 = unlimited or automatic)");
  }
  if (messages_per_second > 0 && message_burst < 1) {
    return InvalidArgument("the per-device message burst must be at least 1 when a message rate is set");
  }
  return Status::Ok();
}

PeerLimitsConfig PeerLimitsConfig::Resolved(uint64_t model_bytes) const {
  PeerLimitsConfig c = *this;
  if (c.byte_burst <= 0) c.byte_burst = 4.0 * static_cast<double>(model_bytes) + 16.0 * (1 << 20);
  if (c.max_queued_bytes == 0) c.max_queued_bytes = 2 * model_bytes + (uint64_t{1} << 20);
  return c;
}

bool PeerLimits::Take(Bucket* b, double rate, double burst, double amount, Clock::time_point now) {
  if (rate <= 0) return true;
  const double elapsed = std::chrono::duration<double>(now - b->updated).count();
  b->tokens = std::min(burst, b->tokens + std::max(0.0, elapsed) * rate);
  b->updated = now;
  // One message larger than the whole burst may pass when the bucket is full.
  if (b->tokens >= std::min(amount, burst)) {
    b->tokens -= amount;
    return true;
  }
  return false;
}

PeerLimits::Admission PeerLimits::Admit(const std::string& key, size_t bytes, Clock::time_point now) {
  Admission a;
  auto [it, inserted] = peers_.try_emplace(key);
  Peer& p = it->second;
  if (inserted) {
    p.messages = {config_.message_burst, now};
    p.bytes = {config_.byte_burst, now};
  }
  if (now < p.refused_until) {
    ++refused_;
    a.admitted = false;
    a.limit = "refused";
    a.retry_seconds = std::chrono::duration<double>(p.refused_until - now).count();
    return a;
  }
  const bool messages_ok = Take(&p.messages, config_.messages_per_second, config_.message_burst, 1.0, now);
  const bool bytes_ok = messages_ok && Take(&p.bytes, config_.bytes_per_second, config_.byte_burst,
                                            static_cast<double>(bytes), now);
  if (messages_ok && bytes_ok) return a;
  ++refused_;
  a.admitted = false;
  a.first_refusal = true;
  a.limit = messages_ok ? "bytes" : "messages";
  a.retry_seconds = config_.refusal_seconds;
  p.refused_until = now + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(config_.refusal_seconds));
  return a;
}

void PeerLimits::Prune(Clock::time_point now) {
  for (auto it = peers_.begin(); it != peers_.end();) {
    const Peer& p = it->second;
    const double idle =
        std::chrono::duration<double>(now - std::max(p.messages.updated, p.bytes.updated)).count();
    // Idle long enough for both buckets to be full again: nothing to remember.
    const double refill_m =
        config_.messages_per_second > 0 ? config_.message_burst / config_.messages_per_second : 0;
    const double refill_b = config_.bytes_per_second > 0 ? config_.byte_burst / config_.bytes_per_second : 0;
    if (now >= p.refused_until && idle > std::max(refill_m, refill_b)) {
      it = peers_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace flotilla::aggregator
