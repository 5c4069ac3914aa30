// Command-line options shared by flotilla-aggregator and flotilla-sim.
// Header-only so the aggregator library itself does not depend on CLI11.
#pragma once

#include <CLI/CLI.hpp>

#include "aggregator/server.h"

namespace flotilla::aggregator {

// DP flags; call ApplyDpMode after parsing.
struct DpFlags {
  std::string mode = "none";
};

inline void AddDpFlags(CLI::App* app, AggregatorConfig* c, DpFlags* f) {
  DpConfig* dp = &c->dp;
  app->add_option("--dp", f->mode,
                  "Differential privacy: none, client-central, client-distributed (DP-FedAvg), record (DP-SGD)")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "client-central", "client-distributed", "record"}));
  app->add_option("--dp-noise", dp->noise_multiplier, "Noise multiplier z (client level) or sigma (DP-SGD)")
      ->capture_default_str();
  app->add_option("--dp-clip", dp->clip_norm, "Clip norm C: update (client level) or per-example (DP-SGD)")
      ->capture_default_str();
  app->add_option("--dp-delta", dp->delta, "delta of the (epsilon, delta) guarantee")->capture_default_str();
  app->add_option("--dp-epsilon-budget", dp->epsilon_budget,
                  "Refuse rounds that would push epsilon past this (required with --dp)")
      ->capture_default_str();
  app->add_flag("--dp-adaptive-clip", dp->adaptive_clip, "Adaptive clipping (Andrew et al. 2021), client level");
  app->add_option("--dp-target-quantile", dp->target_quantile, "Adaptive clipping: target quantile of update norms")
      ->capture_default_str();
  app->add_option("--dp-sampling-rate", dp->dpsgd_sampling_rate, "DP-SGD: per-step record sampling rate q")
      ->capture_default_str();
}

inline void ApplyDpMode(const DpFlags& f, AggregatorConfig* c) {
  using Mode = DpConfig::Mode;
  c->dp.mode = f.mode == "client-central"       ? Mode::kClientCentral
               : f.mode == "client-distributed" ? Mode::kClientDistributed
               : f.mode == "record"             ? Mode::kRecord
                                                : Mode::kNone;
}

// Secure-aggregation flags; call ApplySecAggFlags after parsing.
struct SecAggFlags {
  std::string mode = "off";
};

inline void AddSecAggFlags(CLI::App* app, AggregatorConfig* c, SecAggFlags* f) {
  SecureAggregationConfig* s = &c->secagg;
  app->add_option("--secagg", f->mode,
                  "Secure aggregation: off, secagg+ (sparse Harary graph, Bell et al. 2020) or "
                  "complete (every pair, Bonawitz et al. 2017); the aggregator then sees only the sum")
      ->capture_default_str()
      ->check(CLI::IsMember({"off", "secagg+", "complete"}));
  app->add_option("--secagg-bits", s->bit_width, "Secure aggregation: bit width k of the modulus 2^k (8..32)")
      ->capture_default_str();
  app->add_option("--secagg-clip", s->clip_norm,
                  "Secure aggregation without DP: clip updates to this L2 norm before quantizing (with client-level "
                  "DP, --dp-clip is used)")
      ->capture_default_str();
  app->add_option("--secagg-degree", s->degree, "SecAgg+: neighbours per client, even (0 = 10 log2 n, rounded up)")
      ->capture_default_str();
  app->add_option("--secagg-threshold", s->threshold,
                  "Secure aggregation: shares needed to unmask, t (0 = the smallest strict majority of a neighbourhood)")
      ->capture_default_str();
  app->add_option("--secagg-stage-timeout", s->stage_timeout_seconds,
                  "Secure aggregation: seconds each stage after the first waits for stragglers")
      ->capture_default_str();
}

inline void ApplySecAggFlags(const SecAggFlags& f, AggregatorConfig* c) {
  c->secagg.enabled = f.mode != "off";
  c->secagg.graph = f.mode == "complete" ? privacy::SecAggGraph::kComplete : privacy::SecAggGraph::kHarary;
}

inline void AddRoundFlags(CLI::App* app, AggregatorConfig* c) {
  app->add_option("--arch", c->model_arch, "Model architecture: 2nn, cnn or logreg")->capture_default_str();
  app->add_option("--rounds", c->rounds, "Number of federated rounds")->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--fraction", c->fraction, "Fraction of clients sampled per round (0,1]")
      ->capture_default_str()
      ->check(CLI::Range(1e-9, 1.0));
  app->add_option("--epochs", c->epochs, "Local epochs per round (E)")->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--batch", c->batch_size, "Local batch size (B)")->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--lr", c->learning_rate, "Local learning rate")->capture_default_str();
  app->add_option("--momentum", c->momentum, "Local SGD momentum [0,1)")->capture_default_str();
  app->add_option("--weight-decay", c->weight_decay, "Local L2 weight decay")->capture_default_str();
  app->add_option("--server-lr", c->server_learning_rate, "Server learning rate applied to the mean delta")
      ->capture_default_str();
  app->add_option_function<std::string>(
         "--strategy",
         [c](const std::string& text) {
           StatusOr<Strategy> s = ParseStrategy(text);
           if (!s.ok()) throw CLI::ValidationError("--strategy", std::string(s.status().message()));
           c->strategy = *s;
         },
         "Aggregation: fedavg, median (coordinate-wise) or trimmed-mean:B (drop the B fraction at each end); "
         "the robust ones need individual updates, so not with --secagg")
      ->default_str("fedavg");
  app->add_option("--min-updates", c->min_updates, "Fewer updates than this by the deadline fails the round")
      ->capture_default_str();
  app->add_option("--deadline", c->round_deadline_seconds, "Per-round deadline in seconds")->capture_default_str();
  app->add_option("--seed", c->seed, "Run seed: sampling, initialization, batch order, partitions")
      ->capture_default_str();
  app->add_option("--max-message-bytes", c->socket.max_message_bytes,
                  "Largest accepted message in bytes (ZMQ_MAXMSGSIZE)")
      ->capture_default_str();
}

}  // namespace flotilla::aggregator
