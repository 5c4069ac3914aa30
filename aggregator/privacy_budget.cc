#include "aggregator/privacy_budget.h"

#include <algorithm>
#include <cmath>

#include "core/clock.h"
#include "core/log.h"
#include "privacy/noise.h"

namespace flotilla::aggregator {
namespace {

records::LedgerEntry Entry(uint32_t round, const std::string& client_id, const DpConfig& dp, double q,
                           double z, int64_t steps, double clip, double epsilon_after) {
  records::LedgerEntry e;
  e.set_round(round);
  e.set_client_id(client_id);
  e.set_mechanism(DpModeName(dp.mode));
  e.set_sampling_rate(q);
  e.set_noise_multiplier(z);
  e.set_steps(steps);
  e.set_clip_norm(clip);
  e.set_delta(dp.delta);
  e.set_epsilon_after(epsilon_after);
  e.set_recorded_unix_ms(NowUnixMs());
  return e;
}

}  // namespace

StatusOr<PrivacyBudget> PrivacyBudget::Recover(const DpConfig& dp, uint32_t local_epochs,
                                               double expected_clients_per_round,
                                               const std::vector<records::LedgerEntry>& ledger,
                                               const std::vector<records::RoundRecord>& rounds) {
  PrivacyBudget b(dp, local_epochs, expected_clients_per_round);
  if (!dp.enabled()) return b;
  for (const auto& e : ledger) {
    privacy::RdpAccountant& acct =
        e.client_id().empty() ? b.accountant_ : b.device_accountants_[e.client_id()];
    RETURN_IF_ERROR(
        acct.Compose(e.sampling_rate(), e.noise_multiplier(), e.steps()).WithContext("privacy ledger"));
    b.epsilon_ = std::max(b.epsilon_, e.epsilon_after());
  }
  for (const auto& r : rounds) {
    if (r.outcome() == records::RoundRecord::OUTCOME_COMPLETED && r.next_clip_norm() > 0) {
      b.clip_norm_ = r.next_clip_norm();
    }
  }
  if (dp.adaptive_clip) {
    const double sigma_b = b.ClipCountStddev();
    // The count of clipped updates is released too; its noise must leave
    // budget for the update noise (Andrew et al. 2021, Theorem 1).
    RETURN_IF_ERROR(privacy::AdaptiveClippingNoiseMultiplier(dp.noise_multiplier, sigma_b)
                        .status()
                        .WithContext("adaptive clipping (lower --dp-noise, or sample more clients per round: "
                                     "the count noise defaults to clients-per-round / 20)"));
    ASSIGN_OR_RETURN(
        privacy::AdaptiveClipper clipper,
        privacy::AdaptiveClipper::Create(b.clip_norm_, dp.target_quantile, dp.clip_learning_rate, sigma_b));
    b.clipper_ = std::move(clipper);
  }
  if (!ledger.empty()) {
    LOG_INFO("aggregator", "privacy ledger: " << ledger.size() << " entries, epsilon " << b.epsilon_
                                              << " of budget " << dp.epsilon_budget << " (delta " << dp.delta
                                              << ")");
  }
  return b;
}

// sigma_b: the configured count noise, or clients per round / 20 (Andrew et
// al. 2021), estimated from min_clients and the sampling fraction.
double PrivacyBudget::ClipCountStddev() const {
  if (dp_.clip_count_stddev > 0) return dp_.clip_count_stddev;
  return std::max(1.0, expected_clients_) / 20.0;
}

double PrivacyBudget::EffectiveNoiseMultiplier() const {
  if (!clipper_) return dp_.noise_multiplier;
  // Part of the budget goes to the noised count of clipped updates.
  StatusOr<double> z = privacy::AdaptiveClippingNoiseMultiplier(dp_.noise_multiplier, ClipCountStddev());
  return z.ok() ? *z : dp_.noise_multiplier;
}

double PrivacyBudget::DistributedNoiseStddev(size_t sampled) const {
  return EffectiveNoiseMultiplier() * clip_norm_ / std::sqrt(static_cast<double>(sampled));
}

int64_t PrivacyBudget::DpSgdStepsPerRound() const {
  return static_cast<int64_t>(std::ceil(local_epochs_ / dp_.dpsgd_sampling_rate - 1e-9));
}

StatusOr<double> PrivacyBudget::EpsilonAfter(const privacy::RdpAccountant& accountant, double q, double z,
                                             int64_t steps) const {
  privacy::RdpAccountant copy = accountant;
  RETURN_IF_ERROR(copy.Compose(q, z, steps));
  ASSIGN_OR_RETURN(privacy::PrivacySpent spent, copy.GetPrivacySpent(dp_.delta));
  return spent.epsilon;
}

StatusOr<std::vector<std::string>> PrivacyBudget::EligibleDevices(const std::vector<std::string>& ids) {
  std::vector<std::string> eligible;
  for (const auto& id : ids) {
    ASSIGN_OR_RETURN(double eps, EpsilonAfter(device_accountants_[id], dp_.dpsgd_sampling_rate,
                                              dp_.noise_multiplier, DpSgdStepsPerRound()));
    if (eps <= dp_.epsilon_budget) eligible.push_back(id);
  }
  if (eligible.empty()) {
    exhausted_ = true;
    LOG_WARN("aggregator", "privacy budget: every client's next round would exceed epsilon "
                               << dp_.epsilon_budget << " (delta " << dp_.delta << ")");
  }
  return eligible;
}

StatusOr<bool> PrivacyBudget::AllowsRound(uint32_t round, double q) {
  ASSIGN_OR_RETURN(double eps, EpsilonAfter(accountant_, q, dp_.noise_multiplier, 1));
  if (eps <= dp_.epsilon_budget) return true;
  exhausted_ = true;
  LOG_WARN("aggregator", "privacy budget: round " << round << " would raise epsilon to " << eps
                                                  << ", over the budget of " << dp_.epsilon_budget
                                                  << " (delta " << dp_.delta << "); stopping at epsilon "
                                                  << epsilon_);
  return false;
}

StatusOr<std::vector<records::LedgerEntry>> PrivacyBudget::Account(
    uint32_t round, double q, size_t selected, const std::set<std::string>& received,
    const std::map<std::string, int64_t>& dp_steps, records::RoundRecord* record) {
  std::vector<records::LedgerEntry> ledger;
  if (dp_.client_level()) {
    // With adaptive clipping the updates carry noise z_delta > z and the
    // clipped-count carries sigma_b; together they are exactly as private
    // as the Gaussian mechanism with multiplier z (Andrew et al. 2021, Thm 1).
    double z = dp_.noise_multiplier;
    const double m = static_cast<double>(selected);
    if (dp_.mode == DpConfig::Mode::kClientDistributed && received.size() < selected) {
      // Distributed noise comes only from the devices that reported: with r
      // of m, the sum carries N(0, (r/m) (z_delta C)^2). Charge what was
      // really added (Andrew et al.'s composition with the count noise when
      // clipping is adaptive), not what was planned.
      const double z_updates =
          EffectiveNoiseMultiplier() * std::sqrt(static_cast<double>(received.size()) / m);
      z = clipper_ ? 1.0 / std::sqrt(1.0 / (z_updates * z_updates) +
                                     1.0 / (4.0 * ClipCountStddev() * ClipCountStddev()))
                   : z_updates;
      LOG_WARN("aggregator", "round " << round << ": " << received.size() << " of " << selected
                                      << " devices added their share of the noise; charging noise multiplier "
                                      << z << " instead of " << dp_.noise_multiplier);
    }
    RETURN_IF_ERROR(accountant_.Compose(q, z, 1));
    ASSIGN_OR_RETURN(privacy::PrivacySpent spent, accountant_.GetPrivacySpent(dp_.delta));
    epsilon_ = spent.epsilon;
    ledger.push_back(Entry(round, "", dp_, q, z, 1, clip_norm_, epsilon_));
    if (epsilon_ > dp_.epsilon_budget) {
      // Only possible when devices dropped out of a distributed-noise round.
      exhausted_ = true;
      LOG_WARN("aggregator", "privacy budget: dropouts in round "
                                 << round << " raised epsilon to " << epsilon_ << ", past the budget of "
                                 << dp_.epsilon_budget << "; no further rounds");
    }
  } else if (dp_.mode == DpConfig::Mode::kRecord) {
    for (const auto& id : received) {
      // Every participant ran the configured number of DP-SGD steps (the
      // device reports them; we charge the larger of the two).
      int64_t steps = DpSgdStepsPerRound();
      auto it = dp_steps.find(id);
      if (it != dp_steps.end()) steps = std::max(steps, it->second);
      privacy::RdpAccountant& acct = device_accountants_[id];
      RETURN_IF_ERROR(acct.Compose(dp_.dpsgd_sampling_rate, dp_.noise_multiplier, steps));
      ASSIGN_OR_RETURN(privacy::PrivacySpent spent, acct.GetPrivacySpent(dp_.delta));
      epsilon_ = std::max(epsilon_, spent.epsilon);
      ledger.push_back(Entry(round, id, dp_, dp_.dpsgd_sampling_rate, dp_.noise_multiplier, steps,
                             dp_.clip_norm, spent.epsilon));
    }
  }
  record->set_epsilon(epsilon_);
  return ledger;
}

Status PrivacyBudget::UpdateClip(int64_t below, int64_t received) {
  if (!clipper_) return Status::Ok();
  ASSIGN_OR_RETURN(privacy::GaussianNoise noise, privacy::GaussianNoise::Create());
  ASSIGN_OR_RETURN(double next, clipper_->Update(below, received, noise));
  clip_norm_ = next;
  return Status::Ok();
}

}  // namespace flotilla::aggregator
