// The client registry: every device that said Hello, keyed by its identity
// (its CURVE key as ZAP authenticated it, or its name without CURVE), with
// where to reach it, its held task request, its counters, and the strikes
// and pauses of a device that keeps declining or sending refused updates.
// It does no I/O: the aggregator writes the records it returns.
//
// Thread-safety: not thread-safe; the aggregator's thread owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "proto/flotilla.pb.h"
#include "proto/records.pb.h"

namespace flotilla::aggregator {

class ClientRegistry {
 public:
  using Clock = std::chrono::steady_clock;

  struct Client {
    std::string peer;  // current routing id ("" until it speaks after a restart)
    std::string name;
    int64_t num_examples = 0;
    std::optional<uint64_t> parked_request;  // request id of a held TaskRequest
    Clock::time_point parked_since;
    bool told_finished = false;
    bool wants_final_model = false;  // its TaskRequest asked for the final model with Finished
    std::string secagg_key;          // Ed25519 identity key from Hello (32 bytes, or empty)
    std::string secagg_cert;         // its enrolment certificate (64 bytes, or empty)
    int64_t first_seen_unix_ms = 0;
    uint32_t updates_accepted = 0;
    std::map<std::string, uint64_t> rejected;  // refused updates by reason
    uint32_t strikes = 0;                      // declines or refused updates in a row
    Clock::time_point paused_until{};
    int64_t paused_until_unix_ms = 0;
    bool dirty = false;      // changed since its record was written
    bool checks_in = false;  // speaks the check-in protocol (answered ComeBack, not Wait)
  };

  // A device with `after_strikes` strikes in a row is not sampled for
  // `seconds`, doubling per further strike up to `max_seconds`.
  struct PausePolicy {
    int after_strikes = 3;  // 0 = never
    double seconds = 30.0;
    double max_seconds = 600.0;
  };

  explicit ClientRegistry(PausePolicy policy) : policy_(policy) {}

  // The population after a restart, from the stored records.
  void Restore(const std::vector<records::ClientRecord>& records, Clock::time_point now, int64_t now_ms);
  // Puts one stored device back in memory (check-in: a device's record is
  // loaded when it checks in and dropped when it leaves).
  void Load(const records::ClientRecord& record, Clock::time_point now, int64_t now_ms) {
    Restore({record}, now, now_ms);
  }
  // Hello: registers the device or updates it (dirty only when something
  // changed). True when it is new.
  bool Register(const std::string& id, const std::string& peer, const wire::Hello& hello, int64_t now_ms);
  void Forget(const std::string& id) { clients_.erase(id); }

  // The device's record as it should be stored now.
  records::ClientRecord RecordOf(const std::string& id, int64_t now_ms) const;
  // Records of the devices changed since they were written; MarkWritten
  // after the write succeeded.
  std::vector<records::ClientRecord> Dirty(int64_t now_ms) const;
  void MarkWritten(const std::vector<records::ClientRecord>& written);

  void NoteAccepted(const std::string& id);
  void NoteRejected(const std::string& id, const std::string& reason);
  // A decline or a refused update; enough in a row pause the device.
  void AddStrike(const std::string& id, const std::string& why, Clock::time_point now, int64_t now_ms);
  bool Paused(const std::string& id, Clock::time_point now) const;
  size_t CountPaused(Clock::time_point now) const;

  // Without CURVE: the device that said Hello on this connection ("" if none).
  std::string FindByPeer(const std::string& peer) const;

  // Map-like access, in identity order.
  Client& operator[](const std::string& id) { return clients_[id]; }
  const Client& at(const std::string& id) const { return clients_.at(id); }
  size_t count(const std::string& id) const { return clients_.count(id); }
  size_t size() const { return clients_.size(); }
  std::map<std::string, Client>::iterator find(const std::string& id) { return clients_.find(id); }
  std::map<std::string, Client>::iterator begin() { return clients_.begin(); }
  std::map<std::string, Client>::iterator end() { return clients_.end(); }
  std::map<std::string, Client>::const_iterator begin() const { return clients_.begin(); }
  std::map<std::string, Client>::const_iterator end() const { return clients_.end(); }

 private:
  PausePolicy policy_;
  std::map<std::string, Client> clients_;
};

}  // namespace flotilla::aggregator
