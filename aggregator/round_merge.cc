// The round engine's merge: from the round's updates to the next global
// model (see round_engine.h).
#include <cmath>

#include "aggregator/round_engine.h"
#include "aggregator/strategy.h"
#include "privacy/clipping.h"
#include "privacy/noise.h"
#include "proto/codec.h"

namespace flotilla::aggregator {

// Streams the round's updates from the store in client-id order (so the
// result does not depend on arrival order) into their weighted mean.
StatusOr<Weights> RoundEngine::MergeStoredUpdates() {
  const DpConfig& dp = config_.dp;
  // One of the two, so FedAvg does not hold every update and the robust
  // strategies do not allocate a running sum.
  std::optional<CoordinateWise> robust;
  std::optional<WeightedMean> mean;
  if (config_.strategy.NeedsIndividualUpdates()) {
    robust.emplace(global().layout, config_.strategy);
  } else {
    mean.emplace(global().layout);
  }
  // FedAvg's weights from the claimed example counts, capped against the
  // round's median claim by default (docs/security.md).
  std::map<std::string, double> weight;
  {
    std::vector<int64_t> claimed;
    for (const auto& [id, el] : train_loss_) claimed.push_back(el.first);
    const std::vector<double> w = ExampleWeights(claimed, config_.validation.weighting);
    size_t i = 0;
    for (const auto& kv : train_loss_) weight[kv.first] = w[i++];
  }
  RETURN_IF_ERROR(store_->ForEachUpdate(round_, [&](const records::UpdateRecord& u) -> Status {
    ASSIGN_OR_RETURN(Weights delta, proto::WeightsFromProto(u.delta(), global().layout));
    if (robust) return robust->Add(delta);
    if (dp.mode == DpConfig::Mode::kClientCentral) {
      // The trusted aggregator enforces the bound itself as well.
      privacy::ClipL2(delta.data.data(), delta.data.size(), budget_->clip_norm());
    }
    // Client-level DP averages with equal weights: example counts are
    // private and would change the sensitivity (docs/privacy.md).
    auto w = weight.find(u.client_id());
    if (w == weight.end()) return DataLoss("stored update from '" + u.client_id() + "' was never recorded");
    return mean->Add(delta, dp.client_level() ? 1.0 : w->second);
  }));
  const int merged = robust ? robust->count() : mean->count();
  if (merged != static_cast<int>(received_.size())) {
    return DataLoss("round " + std::to_string(round_) + " recorded " + std::to_string(received_.size()) +
                    " updates but the store holds " + std::to_string(merged));
  }
  return robust ? robust->Result() : mean->Mean();
}

// The secure sum of the survivors' clipped (and noised) deltas, divided by
// their number: an unweighted mean, since example counts stay on the devices.
StatusOr<Weights> RoundEngine::MergeSecureSum() {
  std::vector<float> sum = secure_->TakeSum();
  if (sum.size() != global().data.size() || received_.empty()) {
    return Internal("secure sum has " + std::to_string(sum.size()) + " values for " +
                    std::to_string(global().data.size()) + " parameters");
  }
  const float inv = 1.0f / static_cast<float>(received_.size());
  for (float& v : sum) {
    if (!std::isfinite(v)) return Internal("secure sum is not finite");
    v *= inv;
  }
  Weights mean{global().layout, std::move(sum)};
  return mean;
}

// From the round's mean delta to the next global model: client-level DP's
// scaling and central noise, the privacy accounting, adaptive clipping, the
// server learning rate; then the result is checked before anything signs
// it. InvalidArgument (the round fails) when it is not finite.
StatusOr<Weights> RoundEngine::FinalizeMerge(Weights mean_delta, records::RoundRecord* record,
                                             RoundSummary* summary,
                                             std::vector<records::LedgerEntry>* ledger) {
  const DpConfig& dp = config_.dp;
  for (float v : mean_delta.data) {
    if (!std::isfinite(v)) return InvalidArgument("the mean update is not finite");
  }
  // Computed before any privacy is accounted, so a round that fails here
  // charges nothing.
  ASSIGN_OR_RETURN(Weights next, ApplyDelta(global(), mean_delta, config_.server_learning_rate));
  if (dp.client_level()) {
    // sum / m with the fixed denominator m = clients sampled, plus central noise.
    const double m = static_cast<double>(selected_.size());
    const double sum_scale = static_cast<double>(received_.size()) / m;
    for (auto& v : mean_delta.data) v = static_cast<float>(v * sum_scale);
    if (dp.mode == DpConfig::Mode::kClientCentral) {
      ASSIGN_OR_RETURN(privacy::GaussianNoise noise, privacy::GaussianNoise::Create());
      noise.AddNoise(mean_delta.data.data(), mean_delta.data.size(),
                     budget_->EffectiveNoiseMultiplier() * budget_->clip_norm() / m);
    }
    record->set_clip_norm(budget_->clip_norm());
    summary->clip_norm = budget_->clip_norm();
    ASSIGN_OR_RETURN(next, ApplyDelta(global(), mean_delta, config_.server_learning_rate));
  }
  ASSIGN_OR_RETURN(*ledger,
                   budget_->Account(round_, sampling_rate_, selected_.size(), received_, dp_steps_, record));
  int64_t below = 0;
  for (const auto& kv : below_clip_) below += kv.second;
  RETURN_IF_ERROR(budget_->UpdateClip(below, static_cast<int64_t>(received_.size())));
  record->set_next_clip_norm(budget_->clip_norm());
  return next;
}

}  // namespace flotilla::aggregator
