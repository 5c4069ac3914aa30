// The round engine's merge: from the round's updates to the next global
// model (see round_engine.h).
#include <algorithm>
#include <cmath>

#include "aggregator/round_engine.h"
#include "aggregator/strategy.h"
#include "core/log.h"
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
  std::optional<RobustCombiner> robust;
  std::optional<WeightedMean> mean;
  if (config_.strategy.NeedsIndividualUpdates()) {
    robust.emplace(global().layout, config_.strategy);
  } else {
    mean.emplace(global().layout);
  }
  // FedAvg's weights from the claimed example counts, capped against the
  // round's median claim by default (docs/security.md). Client-level DP
  // averages with equal weights: example counts are private and would
  // change the sensitivity (docs/privacy.md).
  std::map<std::string, double> weight;
  if (dp.client_level()) {
    for (const auto& kv : train_loss_) weight[kv.first] = 1.0;
  } else {
    std::vector<int64_t> claimed;
    for (const auto& [id, el] : train_loss_) claimed.push_back(el.first);
    const std::vector<double> w = ExampleWeights(claimed, config_.validation.weighting);
    size_t i = 0;
    for (const auto& kv : train_loss_) weight[kv.first] = w[i++];
  }
  // Asynchronous rounds (FedBuff): each update's weight is discounted by
  // its staleness s, and the mean is taken over the undiscounted weights,
  // so the buffer moves the model by sum(w_i d(s_i) delta_i) / sum(w_i).
  double discount = 1.0;
  if (async()) {
    double plain = 0.0, discounted = 0.0;
    for (auto& [id, w] : weight) {
      auto b = buffered_.find(id);
      const double d = config_.async.Weight(b != buffered_.end() ? b->second.staleness : 0);
      plain += w;
      w *= d;
      discounted += w;
    }
    if (plain > 0 && discounted > 0) discount = discounted / plain;
  }
  // Server-side norm bounding: clip (not refuse) every update to an
  // absolute bound or a multiple of this round's median norm.
  const NormBound& clip = config_.strategy.clip;
  double clip_bound = 0.0;
  if (clip.mode == NormBound::Mode::kAbsolute) {
    clip_bound = clip.absolute;
  } else if (clip.mode == NormBound::Mode::kMedian) {
    std::vector<double> round_norms;
    for (const auto& [id, norm] : norms_) {
      if (received_.count(id)) round_norms.push_back(norm);
    }
    if (!round_norms.empty()) {
      clip_bound = clip.median_multiple * Median(std::move(round_norms));
      if (clip.absolute > 0) clip_bound = std::min(clip_bound, clip.absolute);
    }
  }
  // FedAvg over plain float32 updates that nothing rescales reads each
  // payload once, straight into the sum (no decoded copy).
  const bool streamed = mean && clip_bound == 0 && dp.mode != DpConfig::Mode::kClientCentral;
  // SCAFFOLD: the unweighted mean of the control-variate changes.
  std::optional<WeightedMean> control;
  if (config_.strategy.scaffold) control.emplace(global().layout);
  control_mean_.reset();
  RETURN_IF_ERROR(store_->ForEachUpdatePayload(
      round_, [&](const records::UpdateRecord& meta, std::string_view data) -> Status {
        if (control) {
          if (!meta.has_control_delta())
            return DataLoss("stored update from '" + meta.client_id() +
                            "' has no control_delta in a SCAFFOLD round");
          ASSIGN_OR_RETURN(Weights dc, proto::WeightsFromProto(meta.control_delta(), global().layout));
          RETURN_IF_ERROR(control->Add(dc, 1.0));
        }
        if (streamed && meta.delta().encoding() == wire::WeightsProto::FLOAT32) {
          // Read in place from the store's buffer, straight into the sum.
          auto w = weight.find(meta.client_id());
          if (w == weight.end())
            return DataLoss("stored update from '" + meta.client_id() + "' was never recorded");
          ASSIGN_OR_RETURN(std::string_view payload,
                           proto::Float32Payload(meta.delta(), data, *global().layout));
          return mean->AddFloat32(payload, w->second);
        }
        records::UpdateRecord u = meta;
        u.mutable_delta()->set_data(std::string(data));
        ASSIGN_OR_RETURN(Weights delta, proto::WeightsFromProto(u.delta(), global().layout));
        if (clip_bound > 0) ClipToNorm(&delta, L2Norm(delta.data), clip_bound);
        if (robust) return robust->Add(delta);
        if (dp.mode == DpConfig::Mode::kClientCentral) {
          // The trusted aggregator enforces the bound itself as well.
          privacy::ClipL2(delta.data.data(), delta.data.size(), budget_->clip_norm());
        }
        auto w = weight.find(u.client_id());
        if (w == weight.end())
          return DataLoss("stored update from '" + u.client_id() + "' was never recorded");
        return mean->Add(delta, w->second);
      }));
  const int merged = robust ? robust->count() : mean->count();
  if (merged != static_cast<int>(received_.size())) {
    return DataLoss("round " + std::to_string(round_) + " recorded " + std::to_string(received_.size()) +
                    " updates but the store holds " + std::to_string(merged));
  }
  if (control) {
    ASSIGN_OR_RETURN(Weights c, control->Mean());
    control_mean_ = std::move(c);
  }
  if (!robust) {
    ASSIGN_OR_RETURN(Weights result, mean->Mean());
    if (discount != 1.0) {
      for (float& v : result.data) v = static_cast<float>(v * discount);
    }
    return result;
  }
  StatusOr<Weights> combined = robust->Result();
  if (combined.ok() && !robust->picked().empty()) {
    if (robust->byzantine_used() < config_.strategy.byzantine) {
      LOG_WARN("aggregator", "round " << round_ << ": " << robust->count() << " updates are too few for "
                                      << config_.strategy.CombinerName()
                                      << "; it tolerated F = " << robust->byzantine_used() << " this round");
    }
    LOG_DEBUG("aggregator", "round " << round_ << ": " << config_.strategy.CombinerName() << " kept "
                                     << robust->picked().size() << " of " << robust->count() << " updates");
  }
  return combined;
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
  next_server_state_.emplace();
  ASSIGN_OR_RETURN(Weights next, ServerStep(config_.strategy.optimizer, config_.ServerLearningRate(),
                                            global(), mean_delta, server_state_, &*next_server_state_));
  if (config_.strategy.scaffold) {
    if (!control_mean_) return Internal("SCAFFOLD round without the control-variate changes' mean");
    // N: the fleet (the check-in fleet size, or the registered devices).
    const double fleet = static_cast<double>(std::max({fleet_, clients_->size(), received_.size()}));
    RETURN_IF_ERROR(ScaffoldControlStep(server_state_.control, *control_mean_,
                                        static_cast<double>(received_.size()) / fleet,
                                        &next_server_state_->control));
  }
  // The fixed denominator m of client-level DP: the clients sampled (async:
  // the buffer size).
  const size_t cohort = async() ? target_updates_ : selected_.size();
  if (dp.client_level()) {
    // sum / m, plus central noise.
    const double m = static_cast<double>(cohort);
    const double sum_scale = static_cast<double>(received_.size()) / m;
    for (auto& v : mean_delta.data) v = static_cast<float>(v * sum_scale);
    if (dp.mode == DpConfig::Mode::kClientCentral) {
      ASSIGN_OR_RETURN(privacy::GaussianNoise noise, privacy::GaussianNoise::Create());
      noise.AddNoise(mean_delta.data.data(), mean_delta.data.size(),
                     budget_->EffectiveNoiseMultiplier() * budget_->clip_norm() / m);
    }
    record->set_clip_norm(budget_->clip_norm());
    summary->clip_norm = budget_->clip_norm();
    ASSIGN_OR_RETURN(next, ServerStep(config_.strategy.optimizer, config_.ServerLearningRate(), global(),
                                      mean_delta, server_state_, &*next_server_state_));
  }
  ASSIGN_OR_RETURN(*ledger, budget_->Account(round_, sampling_rate_, cohort, received_, dp_steps_, record));
  int64_t below = 0;
  for (const auto& kv : below_clip_) below += kv.second;
  RETURN_IF_ERROR(budget_->UpdateClip(below, static_cast<int64_t>(received_.size())));
  record->set_next_clip_norm(budget_->clip_norm());
  return next;
}

}  // namespace flotilla::aggregator
