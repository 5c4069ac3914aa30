// Command-line options shared by flotilla aggregator and flotilla sim.
// Header-only so the aggregator library itself does not depend on CLI11.
#pragma once

#include <CLI/CLI.hpp>
#include <fstream>
#include <string>

#include "aggregator/server.h"

namespace flotilla::aggregator {

// DP flags; call ApplyDpMode after parsing.
struct DpFlags {
  std::string mode = "none";
};

inline void AddDpFlags(CLI::App* app, AggregatorConfig* c, DpFlags* f) {
  DpConfig* dp = &c->dp;
  app->add_option(
         "--dp", f->mode,
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
  app->add_flag("--dp-adaptive-clip", dp->adaptive_clip,
                "Adaptive clipping (Andrew et al. 2021), client level");
  app->add_option("--dp-target-quantile", dp->target_quantile,
                  "Adaptive clipping: target quantile of update norms")
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
  app->add_option(
         "--secagg-clip", s->clip_norm,
         "Secure aggregation without DP: clip updates to this L2 norm before quantizing (with client-level "
         "DP, --dp-clip is used)")
      ->capture_default_str();
  app->add_option("--secagg-degree", s->degree,
                  "SecAgg+: neighbours per client, even (0 = 10 log2 n, rounded up)")
      ->capture_default_str();
  app->add_option("--secagg-threshold", s->threshold,
                  "Secure aggregation: shares needed to unmask, t (0 = the smallest strict majority of a "
                  "neighbourhood)")
      ->capture_default_str();
  app->add_option("--secagg-stage-timeout", s->stage_timeout_seconds,
                  "Secure aggregation: seconds each stage after the first waits for stragglers")
      ->capture_default_str();
}

inline void ApplySecAggFlags(const SecAggFlags& f, AggregatorConfig* c) {
  c->secagg.enabled = f.mode != "off";
  c->secagg.graph = f.mode == "complete" ? privacy::SecAggGraph::kComplete : privacy::SecAggGraph::kHarary;
}

// Distrust of what enrolled devices say: update validation, back-off,
// per-device limits (docs/security.md, "A compromised enrolled device").
inline void AddDefenceFlags(CLI::App* app, AggregatorConfig* c) {
  ValidationConfig* v = &c->validation;
  app->add_option_function<std::string>(
         "--update-norm-bound",
         [v](const std::string& text) {
           StatusOr<NormBound> b = ParseNormBound(text);
           if (!b.ok()) throw CLI::ValidationError("--update-norm-bound", std::string(b.status().message()));
           v->norm = *b;
         },
         "Refuse updates whose L2 norm is over median:K (K x the median of recently accepted norms; before 5 "
         "are "
         "known, 10 x the model's own norm), absolute:X, or off")
      ->default_str(v->norm.Describe());
  app->add_option("--max-examples", v->max_examples_per_update,
                  "Refuse updates that claim more training examples than this")
      ->capture_default_str();
  app->add_option_function<std::string>(
         "--example-weighting",
         [v](const std::string& text) {
           StatusOr<ExampleWeighting> w = ParseExampleWeighting(text);
           if (!w.ok()) throw CLI::ValidationError("--example-weighting", std::string(w.status().message()));
           v->weighting = *w;
         },
         "FedAvg weights: capped:K (claimed examples, at most K x the round's median claim), claimed, or "
         "uniform")
      ->default_str(v->weighting.Describe());
  app->add_option("--failed-round-backoff", c->failed_round_backoff_seconds,
                  "Seconds before the round after a failed one (doubling per failure in a row)")
      ->capture_default_str();
  app->add_option("--max-failed-round-backoff", c->max_failed_round_backoff_seconds,
                  "Largest wait after failed rounds, in seconds")
      ->capture_default_str();
  app->add_option("--pause-after", c->pause_after_strikes,
                  "Pause a device after this many declines or refused updates in a row (0 = never)")
      ->capture_default_str();
  app->add_option("--pause-seconds", c->pause_seconds,
                  "First pause of such a device (doubling while it goes on)")
      ->capture_default_str();
  PeerLimitsConfig* l = &c->limits;
  app->add_option("--device-messages-per-second", l->messages_per_second,
                  "Per-device message rate (burst --device-message-burst); 0 = unlimited")
      ->capture_default_str();
  app->add_option("--device-message-burst", l->message_burst, "Per-device message burst")
      ->capture_default_str();
  app->add_option("--device-bytes-per-second", l->bytes_per_second,
                  "Per-device inbound byte rate; 0 = unlimited")
      ->capture_default_str();
  app->add_option("--device-max-queued-bytes", l->max_queued_bytes,
                  "Bytes the aggregator queues for a device that has not read them (0 = 2 models + 1 MiB)")
      ->capture_default_str();
}

// A TorchScript model: its file and how it is split. Call ResolveModel
// after parsing.
// The HTTP endpoint for operators; call ApplyHttpFlags after parsing.
struct HttpFlags {
  std::string token_file;
};

inline void AddHttpFlags(CLI::App* app, AggregatorConfig* c, HttpFlags* f) {
  app->add_option(
         "--http-listen", c->http.listen,
         "Serve /metrics (Prometheus), /healthz and /readyz on HOST:PORT, e.g. 127.0.0.1:9464 (port 0 "
         "picks one; empty = off). Any address but loopback needs --http-token-file")
      ->capture_default_str();
  app->add_option("--http-token-file", f->token_file,
                  "File holding the bearer token (16+ characters) HTTP clients must send; required when "
                  "--http-listen is not a loopback address")
      ->capture_default_str();
}

// Reads the token file; a one-line error for the user when it cannot.
inline Status ApplyHttpFlags(const HttpFlags& f, AggregatorConfig* c) {
  if (f.token_file.empty()) return Status::Ok();
  std::ifstream in(f.token_file);
  if (!in) return InvalidArgument("cannot read --http-token-file " + f.token_file);
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.size() < 16)
    return InvalidArgument("--http-token-file " + f.token_file +
                           ": the token must be at least 16 characters (e.g. openssl rand -hex 24)");
  c->http.token = token;
  return Status::Ok();
}

inline void AddModelFlags(CLI::App* app, AggregatorConfig* c, std::string* model_path) {
  app->add_option("--model-path", *model_path,
                  "A TorchScript module (torch.jit.save) to federate instead of a built-in --arch")
      ->check(CLI::ExistingFile);
  app->add_option(
         "--buffers", c->model_buffers,
         "TorchScript model: BatchNorm statistics and other float buffers 'federated' or kept 'local'")
      ->capture_default_str()
      ->check(CLI::IsMember({"federated", "local"}));
  app->add_option("--freeze", c->model_freeze,
                  "TorchScript model: parameters never trained (globs, e.g. backbone.*)")
      ->delimiter(',');
  app->add_option("--personal", c->model_personal,
                  "TorchScript model: parameters trained on each device that never leave it (globs)")
      ->delimiter(',');
}

// A --model-path makes the model a TorchScript one.
inline void ResolveModel(AggregatorConfig* c, const std::string& model_path) {
  if (!model_path.empty()) c->model_arch = "torchscript";
}

inline void AddRoundFlags(CLI::App* app, AggregatorConfig* c) {
  app->add_option(
         "--loss", c->loss,
         "What devices minimize: cross_entropy (K classes; accuracy), bce (one logit; accuracy, AUC) or "
         "mse (one output, real targets: --csv-target real; MSE, MAE); not cross_entropy needs a "
         "TorchScript model")
      ->capture_default_str()
      ->check(CLI::IsMember({"cross_entropy", "bce", "mse"}));
  app->add_option("--optimizer", c->optimizer, "Local optimizer: sgd (with --momentum) or adam")
      ->capture_default_str()
      ->check(CLI::IsMember({"sgd", "adam"}));
  app->add_flag("--federated-eval", c->federated_eval,
                "Devices evaluate each round's global model on their held-out examples (reported beside the "
                "central evaluation; not with DP or secure aggregation)");
  app->add_option("--compression", c->compression,
                  "How devices encode updates: none, int8 (stochastic rounding) or topk:F (largest F of the "
                  "elements, with error feedback)")
      ->capture_default_str();
  app->add_option("--arch", c->model_arch,
                  "Model architecture: 2nn, cnn or logreg (or a TorchScript file: --model-path)")
      ->capture_default_str();
  app->add_option("--rounds", c->rounds, "Number of federated rounds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app->add_option("--fraction", c->fraction, "Fraction of clients sampled per round (0,1]")
      ->capture_default_str()
      ->check(CLI::Range(1e-9, 1.0));
  app->add_option("--epochs", c->epochs, "Local epochs per round (E)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app->add_option("--batch", c->batch_size, "Local batch size (B)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app->add_option("--lr", c->learning_rate, "Local learning rate")->capture_default_str();
  app->add_option(
         "--lr-decay", c->lr_decay,
         "Per-round decay of the local learning rate: round r trains at lr x decay^(r-1) (1: constant)")
      ->capture_default_str();
  app->add_option(
         "--eval-every", c->eval_every,
         "Evaluate the global model on the test set every N rounds and after the last (1: every round)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app->add_option("--swa-from", c->swa_from,
                  "Tail averaging: the last round publishes the mean of the global models of rounds R..last "
                  "(0: off; docs/strategies.md)")
      ->capture_default_str();
  app->add_option("--momentum", c->momentum, "Local SGD momentum [0,1)")->capture_default_str();
  app->add_option("--weight-decay", c->weight_decay, "Local L2 weight decay")->capture_default_str();
  app->add_option(
         "--server-lr", c->server_learning_rate,
         "Server learning rate applied to the combined update (0: 1 for sgd and momentum, 0.01 for adam, "
         "yogi, adagrad)")
      ->capture_default_str();
  app->add_option_function<std::string>(
         "--strategy",
         [c](const std::string& text) {
           StatusOr<Strategy> s = ParseStrategy(text);
           if (!s.ok()) throw CLI::ValidationError("--strategy", std::string(s.status().message()));
           c->strategy = *s;
         },
         "Aggregation: fedavg, fedavgm, fedadam, fedyogi, fedadagrad, median, trimmed-mean:B, krum:F, "
         "multi-krum:F:M or bulyan:F (docs/strategies.md); the robust ones need individual updates, so not "
         "with --secagg")
      ->default_str("fedavg");
  app->add_option_function<std::string>(
         "--server-optimizer",
         [c](const std::string& text) {
           StatusOr<ServerOptimizer::Kind> k = ParseServerOptimizer(text);
           if (!k.ok()) throw CLI::ValidationError("--server-optimizer", std::string(k.status().message()));
           if (c->strategy.optimizer_from_name && *k != c->strategy.optimizer.kind) {
             throw CLI::ValidationError("--server-optimizer",
                                        "strategy " + c->strategy.Name() + " already uses " +
                                            c->strategy.optimizer.Name() + ", not " + text);
           }
           c->strategy.optimizer.kind = *k;
         },
         "The server's step with the combined update: sgd, momentum, adam, yogi or adagrad (default: what "
         "the "
         "strategy names, else sgd); with a robust strategy, e.g. krum:2 and momentum")
      ->default_str("sgd");
  app->add_option("--proximal-mu", c->strategy.proximal_mu,
                  "FedProx: the devices add (mu/2)||w - w_global||^2 to their local objective (0 = off; "
                  "--strategy fedprox:MU sets it too)")
      ->capture_default_str();
  app->add_option("--server-momentum", c->strategy.optimizer.momentum, "Server momentum beta (fedavgm)")
      ->capture_default_str();
  app->add_option("--server-beta1", c->strategy.optimizer.beta1,
                  "First-moment decay (fedadam, fedyogi, fedadagrad)")
      ->capture_default_str();
  app->add_option("--server-beta2", c->strategy.optimizer.beta2, "Second-moment decay (fedadam, fedyogi)")
      ->capture_default_str();
  app->add_option("--server-tau", c->strategy.optimizer.tau,
                  "Adaptivity tau, added to sqrt(v) (fedadam, fedyogi, fedadagrad)")
      ->capture_default_str();
  app->add_option_function<std::string>(
         "--clip-updates",
         [c](const std::string& text) {
           StatusOr<NormBound> b = ParseNormBound(text);
           if (!b.ok()) throw CLI::ValidationError("--clip-updates", std::string(b.status().message()));
           c->strategy.clip = *b;
         },
         "Server-side norm bounding: clip every update to absolute:X, or to median:K times the round's "
         "median "
         "update norm, before combining (off)")
      ->default_str("off");
  app->add_option("--min-updates", c->min_updates, "Fewer updates than this by the deadline fails the round")
      ->capture_default_str();
  app->add_option("--deadline", c->round_deadline_seconds, "Per-round deadline in seconds")
      ->capture_default_str();
  app->add_option("--seed", c->seed, "Run seed: sampling, initialization, batch order, partitions")
      ->capture_default_str();
  app->add_option("--max-message-bytes", c->socket.max_message_bytes,
                  "Largest accepted message in bytes (ZMQ_MAXMSGSIZE)")
      ->capture_default_str();
  // Check-in selection (docs/protocol.md, "Check-in").
  app->add_flag("--checkin,!--no-checkin", c->checkin.enabled,
                "Check-in selection: devices connect when available, check in, and are selected or told "
                "when to come back (idle devices hold no connection and no aggregator memory)");
  app->add_option("--clients-per-round", c->checkin.clients_per_round,
                  "Check-in: the updates a round keeps (N); 0 = --fraction of the registered fleet")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app->add_option("--over-selection", c->checkin.over_selection,
                  "Check-in: select this many times N and keep the first N updates")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 10.0));
  app->add_option("--selection-window", c->checkin.window_seconds,
                  "Check-in: selection starts the round after this many seconds with what it holds")
      ->capture_default_str();
  app->add_option("--selection-quiet", c->checkin.quiet_seconds,
                  "Check-in: with enough held, selection closes once no check-in came for this long")
      ->capture_default_str();
  app->add_option("--checkin-margin", c->checkin.checkin_margin,
                  "Check-in: pace steering aims at this many check-ins per device a round selects")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 10.0));
  app->add_option("--min-come-back", c->checkin.min_come_back_seconds,
                  "Check-in: the shortest wait a ComeBack asks for (seconds)")
      ->capture_default_str();
  app->add_option("--max-come-back", c->checkin.max_come_back_seconds,
                  "Check-in: the longest wait a ComeBack asks for (seconds)")
      ->capture_default_str();
  // Asynchronous buffered aggregation (docs/strategies.md#fedbuff).
  app->add_option("--async-buffer", c->async.buffer,
                  "Asynchronous rounds (FedBuff): publish a new version every K updates, from devices "
                  "training on whatever version they were given (0 = synchronous rounds)")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));
  app->add_option("--async-concurrency", c->async.concurrency,
                  "Asynchronous rounds: at most this many devices train at once (0 = 2 x --async-buffer)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app->add_option("--max-staleness", c->async.max_staleness,
                  "Asynchronous rounds: refuse updates on a version more than this many versions old")
      ->capture_default_str();
  app->add_option("--staleness-weight", c->async.staleness_weight,
                  "Asynchronous rounds: how an update s versions old is discounted: sqrt (1/sqrt(1+s)), "
                  "constant (1) or poly:A ((1+s)^-A)")
      ->capture_default_str();
  AddDefenceFlags(app, c);
}

}  // namespace flotilla::aggregator
