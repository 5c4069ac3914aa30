#include "aggregator/metrics.h"

#include <nlohmann/json.hpp>

#include "aggregator/round_json.h"

namespace flotilla::aggregator {

using monitoring::DurationBuckets;

AggregatorMetrics::AggregatorMetrics(AggregatorInfo info)
    : info_(std::move(info)),
      selection_(DurationBuckets()),
      training_(DurationBuckets()),
      merging_(DurationBuckets()),
      round_(DurationBuckets()) {}

void AggregatorMetrics::Publish(const AggregatorGauges& gauges) {
  std::lock_guard<std::mutex> lock(mu_);
  gauges_ = gauges;
}

void AggregatorMetrics::RoundFinished(const RoundSummary& s) {
  std::lock_guard<std::mutex> lock(mu_);
  ++(s.completed ? rounds_completed_ : rounds_failed_);
  updates_accepted_ += static_cast<uint64_t>(s.received);
  declined_ += static_cast<uint64_t>(s.declined);
  unreported_ += static_cast<uint64_t>(s.unreported);
  if (s.completed) examples_ += static_cast<uint64_t>(s.total_examples);
  if (s.secure) {
    ++secure_rounds_;
    secure_dropouts_ += static_cast<uint64_t>(std::max(0, s.selected - s.received));
  }
  if (s.selection_seconds > 0) selection_.Observe(s.selection_seconds);
  training_.Observe(s.train_seconds);
  if (s.completed) {
    merging_.Observe(s.merge_seconds);
    round_.Observe(s.seconds);
  }
  if (s.test_accuracy) test_accuracy_ = s.test_accuracy;
  if (s.test_loss) test_loss_ = s.test_loss;
  if (s.epsilon) epsilon_ = s.epsilon;
  rounds_.push_back(s);
  if (rounds_.size() > 1000) rounds_.pop_front();
}

void AggregatorMetrics::Rejected(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ++rejected_[reason];
}

void AggregatorMetrics::Bytes(uint64_t in, uint64_t out) {
  std::lock_guard<std::mutex> lock(mu_);
  bytes_in_ += in;
  bytes_out_ += out;
}

std::string AggregatorMetrics::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  const AggregatorGauges& g = gauges_;
  monitoring::PromText t;
  t.Family("flotilla_info", "gauge", "The federation this aggregator serves (always 1).");
  t.Sample(1, {{"federation", info_.federation}, {"arch", info_.model_arch}, {"strategy", info_.strategy}});
  // Rounds.
  t.Counter("flotilla_rounds_started_total", "Rounds started by this process.",
            static_cast<double>(rounds_completed_ + rounds_failed_ + (g.round_active ? 1 : 0)));
  t.Counter("flotilla_rounds_completed_total", "Rounds that produced a new model.",
            static_cast<double>(rounds_completed_));
  t.Counter("flotilla_rounds_failed_total", "Rounds that closed with too few updates (model kept).",
            static_cast<double>(rounds_failed_));
  t.Gauge("flotilla_round", "The current (or last) round number.", g.round);
  t.Gauge("flotilla_round_active", "1 while a round runs.", g.round_active ? 1 : 0);
  t.Gauge("flotilla_rounds_planned", "Rounds the federation runs in all.", g.rounds_planned);
  t.Gauge("flotilla_federation_finished", "1 once every round is done (or the privacy budget is spent).",
          g.finished ? 1 : 0);
  t.Gauge("flotilla_model_version", "The latest signed global model version.",
          static_cast<double>(g.model_version));
  // Devices.
  t.Family("flotilla_devices", "gauge", "Devices by state.");
  t.Sample(static_cast<double>(g.known_devices), {{"state", "registered"}});
  t.Sample(static_cast<double>(g.connected_devices), {{"state", "connected"}});
  t.Sample(static_cast<double>(g.paused_devices), {{"state", "paused"}});
  t.Sample(static_cast<double>(g.checked_in_devices), {{"state", "checked_in"}});
  t.Sample(static_cast<double>(g.selected_devices), {{"state", "selected"}});
  t.Sample(static_cast<double>(g.reporting_devices), {{"state", "reporting"}});
  // Updates.
  t.Counter("flotilla_updates_accepted_total", "Updates recorded in finished rounds.",
            static_cast<double>(updates_accepted_));
  t.Counter("flotilla_updates_rejected_total", "Updates refused by validation.",
            static_cast<double>(g.updates_rejected));
  t.Counter("flotilla_updates_declined_total", "Selected devices that declined their round.",
            static_cast<double>(declined_));
  t.Counter("flotilla_updates_unreported_total",
            "Selected devices that did not answer before their round closed.",
            static_cast<double>(unreported_));
  t.Family("flotilla_messages_rejected_total", "counter", "Messages refused, by reason.");
  for (const auto& [reason, n] : rejected_) t.Sample(static_cast<double>(n), {{"reason", reason}});
  t.Counter("flotilla_examples_total", "Training examples behind the merged updates.",
            static_cast<double>(examples_));
  // Wire.
  t.Counter("flotilla_received_bytes_total", "Message bytes received from devices.",
            static_cast<double>(bytes_in_));
  t.Counter("flotilla_sent_bytes_total", "Message bytes sent to devices.", static_cast<double>(bytes_out_));
  // Time.
  t.Family("flotilla_round_phase_duration_seconds", "histogram",
           "Round time by phase: selection (check-in window), training (start to close), merging (close to "
           "commit).");
  t.HistogramSamples(selection_.data(), {{"phase", "selection"}});
  t.HistogramSamples(training_.data(), {{"phase", "training"}});
  t.HistogramSamples(merging_.data(), {{"phase", "merging"}});
  t.Family("flotilla_round_duration_seconds", "histogram", "Completed rounds, start to commit.");
  t.HistogramSamples(round_.data());
  // The model.
  if (test_accuracy_)
    t.Gauge("flotilla_model_test_accuracy", "Test accuracy of the latest evaluated model (--eval-every).",
            *test_accuracy_);
  if (test_loss_) t.Gauge("flotilla_model_test_loss", "Test loss of the latest model.", *test_loss_);
  // Privacy.
  if (g.epsilon_budget > 0) {
    t.Gauge("flotilla_dp_epsilon_spent", "Differential privacy: epsilon spent so far.",
            epsilon_.value_or(0.0));
    t.Gauge("flotilla_dp_epsilon_budget", "Differential privacy: the epsilon budget.", g.epsilon_budget);
  }
  // Secure aggregation.
  t.Counter("flotilla_secagg_rounds_total", "Rounds run with secure aggregation.",
            static_cast<double>(secure_rounds_));
  t.Counter("flotilla_secagg_dropouts_total", "Devices that left secure rounds before the end.",
            static_cast<double>(secure_dropouts_));
  t.Family("flotilla_secagg_stage", "gauge",
           "The running secure round's stage (1), with its devices still in.");
  if (!g.secagg_stage.empty()) t.Sample(1, {{"stage", g.secagg_stage}});
  t.Gauge("flotilla_secagg_devices_remaining", "Devices still in the running secure round.",
          static_cast<double>(g.secagg_remaining));
  // Storage.
  t.Gauge("flotilla_store_size_bytes", "Approximate size of the aggregator's store on disk.",
          static_cast<double>(g.store_bytes));
  if (g.fd_limit > 0) {
    t.Gauge("flotilla_open_fds",
            "File descriptors the aggregator holds (a connection each, and the store's).",
            static_cast<double>(g.open_fds));
    t.Gauge("flotilla_fd_limit", "The aggregator's limit of open file descriptors (RLIMIT_NOFILE).",
            static_cast<double>(g.fd_limit));
  }
  return t.text();
}

std::string AggregatorMetrics::RenderJson() const {
  std::lock_guard<std::mutex> lock(mu_);
  const AggregatorGauges& g = gauges_;
  nlohmann::json rounds = nlohmann::json::array();
  for (const RoundSummary& r : rounds_) rounds.push_back(RoundToJson(r));
  nlohmann::json rejected = nlohmann::json::object();
  for (const auto& [reason, n] : rejected_) rejected[reason] = n;
  const nlohmann::json state = {
      {"federation", info_.federation},
      {"model_arch", info_.model_arch},
      {"strategy", info_.strategy},
      {"signing_key_fingerprint", info_.signing_key_fingerprint},
      {"uptime_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count()},
      {"round", g.round},
      {"round_active", g.round_active},
      {"rounds_planned", g.rounds_planned},
      {"finished", g.finished},
      {"model_version", g.model_version},
      {"registered", g.known_devices},
      {"connected", g.connected_devices},
      {"paused", g.paused_devices},
      {"checked_in", g.checked_in_devices},
      {"selected", g.selected_devices},
      {"reporting", g.reporting_devices},
      {"updates_rejected", g.updates_rejected},
      {"epsilon_budget", g.epsilon_budget},
      {"epsilon_spent", epsilon_.value_or(0.0)},
      {"secagg_stage", g.secagg_stage},
      {"store_bytes", g.store_bytes},
      {"rounds", rounds},
      {"rejected", rejected},
  };
  return state.dump();
}

}  // namespace flotilla::aggregator
