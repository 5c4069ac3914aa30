// The privacy budget of a federation: the RDP accountants (one for the
// deployment under client-level DP, one per device under DP-SGD), adaptive
// clipping, and what each round costs. It never writes to the store:
// Account returns the ledger entries the round's commit must write, so a
// crash before the commit charges nothing (docs/privacy.md).
//
// Thread-safety: not thread-safe; the aggregator's thread owns it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "aggregator/config.h"
#include "core/status.h"
#include "privacy/clipping.h"
#include "privacy/rdp_accountant.h"
#include "proto/records.pb.h"

namespace flotilla::aggregator {

class PrivacyBudget {
 public:
  // Replays the ledger and the completed rounds' clip norms. The expected
  // number of devices per round sizes the adaptive-clipping count noise.
  static StatusOr<PrivacyBudget> Recover(const DpConfig& dp, uint32_t local_epochs,
                                         double expected_clients_per_round,
                                         const std::vector<records::LedgerEntry>& ledger,
                                         const std::vector<records::RoundRecord>& rounds);

  double epsilon() const { return epsilon_; }  // cumulative (deployment, or max over devices)
  bool exhausted() const { return exhausted_; }
  double clip_norm() const { return clip_norm_; }  // client-level DP: this round's clip norm
  bool adaptive() const { return clipper_.has_value(); }

  // The noise multiplier applied to the updates: z, or z_delta with
  // adaptive clipping. Accounting always uses z.
  double EffectiveNoiseMultiplier() const;
  // Client-distributed DP: each of the m sampled devices adds N(0, (zC)^2/m).
  double DistributedNoiseStddev(size_t sampled) const;
  int64_t DpSgdStepsPerRound() const;

  // Record-level DP: the devices (of `ids`) whose next round stays within
  // their budget; when none does the budget is exhausted.
  StatusOr<std::vector<std::string>> EligibleDevices(const std::vector<std::string>& ids);
  // Client-level DP: whether a round sampling rate `q` stays within the
  // budget; when not, the budget is exhausted.
  StatusOr<bool> AllowsRound(uint32_t round, double q);

  // Charges round `round` (sampled `selected` devices at rate `q`; those in
  // `received` contributed; `dp_steps` are the DP-SGD steps they reported)
  // and returns the ledger entries its commit must write. Sets the round
  // record's epsilon.
  StatusOr<std::vector<records::LedgerEntry>> Account(uint32_t round, double q, size_t selected,
                                                      const std::set<std::string>& received,
                                                      const std::map<std::string, int64_t>& dp_steps,
                                                      records::RoundRecord* record);
  // Adaptive clipping: moves the clip norm after a round in which `below`
  // of `received` updates were under it (a noised count).
  Status UpdateClip(int64_t below, int64_t received);

 private:
  PrivacyBudget(const DpConfig& dp, uint32_t local_epochs, double expected_clients)
      : dp_(dp), local_epochs_(local_epochs), expected_clients_(expected_clients), clip_norm_(dp.clip_norm) {}
  // sigma_b: the configured count noise, or clients per round / 20.
  double ClipCountStddev() const;
  StatusOr<double> EpsilonAfter(const privacy::RdpAccountant& accountant, double q, double z,
                                int64_t steps) const;

  DpConfig dp_;
  uint32_t local_epochs_;
  double expected_clients_;
  privacy::RdpAccountant accountant_;                                 // deployment (client-level DP)
  std::map<std::string, privacy::RdpAccountant> device_accountants_;  // record-level DP
  std::optional<privacy::AdaptiveClipper> clipper_;
  double clip_norm_;
  double epsilon_ = 0.0;
  bool exhausted_ = false;
};

}  // namespace flotilla::aggregator
