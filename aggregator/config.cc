#include "aggregator/config.h"

#include <cmath>
#include <cstdlib>
#include <optional>

#include "proto/compression.h"

namespace flotilla::aggregator {

const char* DpModeName(DpConfig::Mode mode) {
  switch (mode) {
    case DpConfig::Mode::kNone:
      return "none";
    case DpConfig::Mode::kClientCentral:
      return "dp-fedavg-central";
    case DpConfig::Mode::kClientDistributed:
      return "dp-fedavg-distributed";
    case DpConfig::Mode::kRecord:
      return "dp-sgd";
  }
  return "unknown";
}

Status DpConfig::Validate() const {
  if (!enabled()) return Status::Ok();
  if (!(noise_multiplier > 0) || !std::isfinite(noise_multiplier)) {
    return InvalidArgument("DP noise multiplier must be positive");
  }
  if (!(clip_norm > 0) || !std::isfinite(clip_norm)) return InvalidArgument("DP clip norm must be positive");
  if (!(delta > 0 && delta < 1)) return InvalidArgument("DP delta must be in (0, 1)");
  if (!(epsilon_budget > 0)) {
    return InvalidArgument("DP is on but no privacy budget is set: pass --dp-epsilon-budget (e.g. 8)");
  }
  if (mode == Mode::kRecord && !(dpsgd_sampling_rate > 0 && dpsgd_sampling_rate <= 1)) {
    return InvalidArgument("DP-SGD sampling rate must be in (0, 1]");
  }
  if (adaptive_clip) {
    if (!client_level()) return InvalidArgument("adaptive clipping applies to client-level DP only");
    if (!(target_quantile > 0 && target_quantile < 1))
      return InvalidArgument("target quantile must be in (0, 1)");
  }
  return Status::Ok();
}

namespace {

// A of "poly:A" (0 <= A <= 10); nullopt for any other spec.
std::optional<double> PolyExponent(const std::string& spec) {
  if (spec.rfind("poly:", 0) != 0) return std::nullopt;
  const std::string a = spec.substr(5);
  char* end = nullptr;
  const double v = std::strtod(a.c_str(), &end);
  if (a.empty() || end != a.c_str() + a.size() || !std::isfinite(v) || v < 0 || v > 10) return std::nullopt;
  return v;
}

}  // namespace

double AsyncConfig::Weight(uint32_t staleness) const {
  const double s = static_cast<double>(staleness);
  if (staleness_weight == "constant") return 1.0;
  if (std::optional<double> a = PolyExponent(staleness_weight)) return std::pow(1.0 + s, -*a);
  return 1.0 / std::sqrt(1.0 + s);
}

Status AsyncConfig::Validate() const {
  if (buffer < 0 || buffer > 100000) return InvalidArgument("async buffer must be in [0, 100000]");
  if (concurrency < 0 || (concurrency > 0 && concurrency < buffer))
    return InvalidArgument("async concurrency must be 0 (2 x buffer) or at least the buffer (" +
                           std::to_string(buffer) + ")");
  if (max_staleness > 1000) return InvalidArgument("max staleness must be at most 1000 versions");
  if (staleness_weight == "sqrt" || staleness_weight == "constant" || PolyExponent(staleness_weight))
    return Status::Ok();
  return InvalidArgument("staleness weight must be sqrt, constant or poly:A with 0 <= A <= 10, got '" +
                         staleness_weight + "'");
}

Status AggregatorConfig::Validate() const {
  if (rounds == 0) return InvalidArgument("rounds must be at least 1");
  if (min_clients < 1) return InvalidArgument("min_clients must be at least 1");
  if (!(fraction > 0.0 && fraction <= 1.0)) return InvalidArgument("fraction must be in (0, 1]");
  if (min_updates < 1) return InvalidArgument("min_updates must be at least 1");
  if (!(round_deadline_seconds > 0)) return InvalidArgument("round deadline must be positive");
  if (epochs == 0) return InvalidArgument("epochs must be at least 1");
  if (batch_size == 0) return InvalidArgument("batch size must be at least 1");
  if (!(learning_rate > 0) || !std::isfinite(learning_rate))
    return InvalidArgument("learning rate must be positive");
  if (!(lr_decay > 0 && lr_decay <= 1))
    return InvalidArgument("lr_decay must be in (0, 1] (1: a constant rate)");
  if (eval_every < 1) return InvalidArgument("eval_every must be at least 1 (1: evaluate every round)");
  if (swa_from > rounds) {
    return InvalidArgument(
        "swa_from (" + std::to_string(swa_from) + ") must be at most rounds (" + std::to_string(rounds) +
        "): the last round publishes the mean of rounds swa_from.." + std::to_string(rounds));
  }
  if (swa_from > 0 && retain_last > 0 && retain_last < rounds - swa_from + 1) {
    return InvalidArgument("swa_from " + std::to_string(swa_from) + " averages the models of the last " +
                           std::to_string(rounds - swa_from + 1) + " rounds, but retain_last keeps " +
                           std::to_string(retain_last) + " versions: raise retain_last or swa_from");
  }
  if (momentum < 0 || momentum >= 1) return InvalidArgument("momentum must be in [0, 1)");
  if (!(server_learning_rate >= 0) || !std::isfinite(server_learning_rate))
    return InvalidArgument("server learning rate must be positive (or 0 for the server optimizer's default)");
  {
    StatusOr<proto::Compression> c = proto::ParseCompression(compression);
    if (!c.ok()) return c.status();
    if (c->kind != proto::Compression::Kind::kNone && secagg.enabled) {
      return InvalidArgument(
          "compression '" + compression +
          "' cannot combine with secure aggregation: SecAgg masks every element of a fixed-point "
          "encoding of its own (see --secagg-bits); use compression none");
    }
  }
  if (optimizer != "sgd" && optimizer != "adam") {
    return InvalidArgument("optimizer must be sgd or adam, got '" + optimizer + "'");
  }
  if (loss != "cross_entropy" && loss != "bce" && loss != "mse") {
    return InvalidArgument("loss must be cross_entropy, bce or mse, got '" + loss + "'");
  }
  if (loss != "cross_entropy" && model_arch != "torchscript") {
    return InvalidArgument("the built-in architectures are 10-class classifiers (loss cross_entropy); loss " +
                           loss + " needs a TorchScript model ([model] path)");
  }
  if (federated_eval && (dp.enabled() || secagg.enabled)) {
    return InvalidArgument(std::string("federated evaluation reports each device's loss and accuracy on its "
                                       "held-out records without noise, which ") +
                           (dp.enabled() ? "differential privacy does not cover"
                                         : "would travel in the clear beside a securely aggregated update") +
                           "; turn off one of them (--federated-eval)");
  }
  if (model_buffers != "federated" && model_buffers != "local") {
    return InvalidArgument("model buffers must be 'federated' or 'local', got '" + model_buffers + "'");
  }
  if (model_arch != "torchscript" && (!model_freeze.empty() || !model_personal.empty())) {
    return InvalidArgument("freeze and personal apply to TorchScript models ([model] path)");
  }
  RETURN_IF_ERROR(dp.Validate());
  RETURN_IF_ERROR(secagg.Validate());
  RETURN_IF_ERROR(validation.Validate());
  RETURN_IF_ERROR(limits.Validate());
  if (!(failed_round_backoff_seconds >= 0) ||
      !(max_failed_round_backoff_seconds >= failed_round_backoff_seconds)) {
    return InvalidArgument("failed-round back-off must be >= 0 and not above its maximum");
  }
  if (pause_after_strikes < 0 || !(pause_seconds >= 0) || !(max_pause_seconds >= pause_seconds)) {
    return InvalidArgument("device pause settings must be >= 0, with the pause not above its maximum");
  }
  if (secagg.enabled && strategy.NeedsIndividualUpdates()) {
    return InvalidArgument(
        "the " + strategy.Name() +
        " strategy needs every device's update, but secure aggregation shows the aggregator "
        "only their sum; use --strategy fedavg with --secagg, or turn secure aggregation off");
  }
  RETURN_IF_ERROR(strategy.optimizer.Validate());
  if (!(strategy.proximal_mu >= 0) || !std::isfinite(strategy.proximal_mu))
    return InvalidArgument("proximal mu must be >= 0");
  if (strategy.proximal_mu > 0 && dp.mode == DpConfig::Mode::kRecord) {
    return InvalidArgument(
        "FedProx's proximal term is not implemented in DP-SGD training yet; drop --proximal-mu (or fedprox) "
        "or "
        "record-level DP");
  }
  if (strategy.scaffold) {
    if (secagg.enabled)
      return InvalidArgument(
          "SCAFFOLD needs each device's control-variate change, which secure aggregation hides; use "
          "--strategy fedavg with --secagg");
    if (dp.enabled())
      return InvalidArgument(
          "SCAFFOLD's control variates are computed from each device's update and are not covered by the "
          "privacy accounting; use --strategy fedavg (or fedadam, fedavgm) with DP");
    if (optimizer != "sgd")
      return InvalidArgument(
          "SCAFFOLD's control variates assume SGD steps on the devices; use --optimizer sgd");
  }
  if (strategy.clip.mode != NormBound::Mode::kOff && secagg.enabled) {
    return InvalidArgument(
        "server-side update clipping (--clip-updates) needs each device's update, which secure aggregation "
        "hides; the devices clip their own with --secagg-clip");
  }
  if (dp.client_level() && strategy.NeedsIndividualUpdates()) {
    return InvalidArgument("client-level DP calibrates its noise to the mean of clipped updates; the " +
                           strategy.Name() +
                           " strategy is not covered by its accounting (use --strategy fedavg)");
  }
  if (secagg.enabled && dp.adaptive_clip) {
    return InvalidArgument(
        "adaptive clipping needs each device's clipped-or-not bit, which secure aggregation hides; "
        "drop --dp-adaptive-clip or --secagg");
  }
  if (checkin.enabled) {
    const CheckInConfig& c = checkin;
    if (c.clients_per_round < 0) return InvalidArgument("check-in: clients_per_round must be >= 0");
    if (!(c.over_selection >= 1.0 && c.over_selection <= 10.0))
      return InvalidArgument("check-in: over_selection must be in [1, 10]");
    if (!(c.window_seconds > 0) || !(c.quiet_seconds >= 0) || !(c.checkin_margin >= 1.0))
      return InvalidArgument("check-in: window must be > 0, quiet >= 0 and checkin_margin >= 1");
    if (!(c.min_come_back_seconds >= 0) || !(c.max_come_back_seconds >= c.min_come_back_seconds) ||
        c.max_come_back_seconds > 86400.0 * 40) {
      return InvalidArgument("check-in: come-back bounds must satisfy 0 <= min <= max <= 40 days");
    }
    if (dp.client_level() || secagg.enabled) {
      return InvalidArgument(std::string("check-in selection does not support ") +
                             (secagg.enabled ? "secure aggregation" : "client-level DP") +
                             " yet: its accounting and key agreement assume a population sampled "
                             "uniformly; use long-lived connections (--checkin off) for it");
    }
  }
  if (async.enabled()) {
    RETURN_IF_ERROR(async.Validate());
    if (swa_from > 0)
      return InvalidArgument(
          "swa_from (tail averaging) is for synchronous rounds; asynchronous versions are not rounds of one "
          "cohort: drop --swa-from or --async-buffer");
    if (secagg.enabled)
      return InvalidArgument(
          "asynchronous rounds take updates one at a time, but secure aggregation needs a fixed cohort "
          "that reports together; use synchronous rounds (--async-buffer 0) with --secagg");
    if (dp.mode == DpConfig::Mode::kClientDistributed || dp.mode == DpConfig::Mode::kRecord) {
      return InvalidArgument(
          std::string("asynchronous rounds support client-level DP with central noise only (--dp client, "
                      "accounted per published version without subsampling); ") +
          (dp.mode == DpConfig::Mode::kRecord
               ? "record-level DP checks each device's budget when a round samples it, which asynchronous "
                 "rounds do not do"
               : "distributed noise assumes a fixed cohort per round") +
          "; use synchronous rounds (--async-buffer 0)");
    }
    if (strategy.scaffold)
      return InvalidArgument(
          "SCAFFOLD's control variates assume every device trains on the current model; use synchronous "
          "rounds (--async-buffer 0) with --strategy scaffold");
    if (min_updates > async.buffer)
      return InvalidArgument("--min-updates " + std::to_string(min_updates) + " is more than the buffer (" +
                             std::to_string(async.buffer) + " updates)");
  }
  if (!signing_key)
    return InvalidArgument("a model-signing key is required (create one with flotilla keygen --signing)");
  if (socket.security == net::TransportSecurity::kCurve && allowlist_path.empty() &&
      allowed_clients.empty()) {
    return InvalidArgument("CURVE is on but no client is allowed: pass an allowlist file");
  }
  return Status::Ok();
}

}  // namespace flotilla::aggregator
