#include "aggregator/client_registry.h"

#include <algorithm>
#include <cmath>

#include "core/clock.h"
#include "core/log.h"

namespace flotilla::aggregator {

void ClientRegistry::Restore(const std::vector<records::ClientRecord>& records, Clock::time_point now,
                             int64_t now_ms) {
  for (const auto& c : records) {
    Client& state = clients_[c.client_id()];
    state.name = c.name();
    state.num_examples = c.num_examples();
    state.secagg_key = c.secagg_identity_key();
    state.secagg_cert = c.secagg_identity_cert();
    state.first_seen_unix_ms = c.first_seen_unix_ms();
    state.updates_accepted = c.updates_accepted();
    state.rejected.insert(c.rejected_by_reason().begin(), c.rejected_by_reason().end());
    state.strikes = c.strikes();
    state.paused_until_unix_ms = c.paused_until_unix_ms();
    if (c.paused_until_unix_ms() > now_ms) {
      state.paused_until = now + std::chrono::milliseconds(c.paused_until_unix_ms() - now_ms);
    }
  }
}

bool ClientRegistry::Register(const std::string& id, const std::string& peer, const wire::Hello& hello,
                              int64_t now_ms) {
  const bool is_new = !clients_.count(id);
  Client& state = clients_[id];
  state.peer = peer;
  state.parked_request.reset();
  if (is_new || state.name != hello.client_name() || state.num_examples != hello.num_examples() ||
      state.secagg_key != hello.secagg_identity_key() || state.secagg_cert != hello.secagg_identity_cert()) {
    state.name = hello.client_name();
    state.num_examples = hello.num_examples();
    state.secagg_key = hello.secagg_identity_key();
    state.secagg_cert = hello.secagg_identity_cert();
    state.dirty = true;
  }
  if (state.first_seen_unix_ms == 0) {
    state.first_seen_unix_ms = now_ms;
    state.dirty = true;
  }
  return is_new;
}

records::ClientRecord ClientRegistry::RecordOf(const std::string& id, int64_t now_ms) const {
  const Client& c = clients_.at(id);
  records::ClientRecord r;
  r.set_client_id(id);
  r.set_name(c.name);
  r.set_num_examples(c.num_examples);
  r.set_first_seen_unix_ms(c.first_seen_unix_ms);
  r.set_last_seen_unix_ms(now_ms);
  r.set_secagg_identity_key(c.secagg_key);
  r.set_secagg_identity_cert(c.secagg_cert);
  r.set_updates_accepted(c.updates_accepted);
  uint64_t rejected = 0;
  for (const auto& [reason, n] : c.rejected) {
    (*r.mutable_rejected_by_reason())[reason] = n;
    rejected += n;
  }
  r.set_updates_rejected(static_cast<uint32_t>(std::min<uint64_t>(rejected, UINT32_MAX)));
  r.set_strikes(c.strikes);
  r.set_paused_until_unix_ms(c.paused_until_unix_ms);
  return r;
}

std::vector<records::ClientRecord> ClientRegistry::Dirty(int64_t now_ms) const {
  std::vector<records::ClientRecord> out;
  for (const auto& [id, c] : clients_) {
    if (c.dirty) out.push_back(RecordOf(id, now_ms));
  }
  return out;
}

void ClientRegistry::MarkWritten(const std::vector<records::ClientRecord>& written) {
  for (const auto& r : written) {
    auto it = clients_.find(r.client_id());
    if (it != clients_.end()) it->second.dirty = false;
  }
}

void ClientRegistry::NoteAccepted(const std::string& id) {
  Client& c = clients_[id];
  ++c.updates_accepted;
  c.strikes = 0;
  c.dirty = true;
}

void ClientRegistry::NoteRejected(const std::string& id, const std::string& reason) {
  Client& c = clients_[id];
  ++c.rejected[reason];
  c.dirty = true;
}

void ClientRegistry::AddStrike(const std::string& id, const std::string& why, Clock::time_point now,
                               int64_t now_ms) {
  Client& c = clients_[id];
  ++c.strikes;
  c.dirty = true;
  if (policy_.after_strikes <= 0 || c.strikes < static_cast<uint32_t>(policy_.after_strikes)) return;
  const int doublings = std::min<int>(20, static_cast<int>(c.strikes) - policy_.after_strikes);
  const double pause = std::min(policy_.max_seconds, policy_.seconds * std::ldexp(1.0, doublings));
  c.paused_until = now + SecondsOf(pause);
  c.paused_until_unix_ms = now_ms + static_cast<int64_t>(pause * 1000);
  LOG_WARN("aggregator", "client '" << c.name << "' " << why << " (" << c.strikes
                                    << " in a row): not sampled for " << pause << " s");
}

bool ClientRegistry::Paused(const std::string& id, Clock::time_point now) const {
  auto it = clients_.find(id);
  return it != clients_.end() && now < it->second.paused_until;
}

size_t ClientRegistry::CountPaused(Clock::time_point now) const {
  return static_cast<size_t>(std::count_if(clients_.begin(), clients_.end(),
                                           [&](const auto& kv) { return now < kv.second.paused_until; }));
}

std::string ClientRegistry::FindByPeer(const std::string& peer) const {
  for (const auto& [id, state] : clients_) {
    if (state.peer == peer) return id;
  }
  return std::string();
}

}  // namespace flotilla::aggregator
