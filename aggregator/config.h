// The aggregator's configuration: every setting of a deployment, with the
// validation that names the first bad field. Plain structs; no I/O.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "aggregator/peer_limits.h"
#include "aggregator/secure_round.h"
#include "aggregator/strategy.h"
#include "aggregator/update_validation.h"
#include "core/status.h"
#include "monitoring/http_server.h"
#include "net/transport.h"
#include "privacy/keys.h"

namespace flotilla::aggregator {

// Differential privacy for a deployment. See docs/privacy.md.
struct DpConfig {
  enum class Mode {
    kNone,
    kClientCentral,      // DP-FedAvg: devices clip, the aggregator adds the noise (trusted aggregator)
    kClientDistributed,  // DP-FedAvg: devices clip and each adds its share of the noise
    kRecord,             // DP-SGD on every device; per-client accounting
  };
  Mode mode = Mode::kNone;
  double noise_multiplier = 1.0;  // z (client level) or sigma (DP-SGD)
  double clip_norm = 1.0;         // C: client-level update clip, or DP-SGD per-example clip
  double delta = 1e-6;
  double epsilon_budget = 0.0;  // rounds that would exceed it are refused; required when DP is on
  // Adaptive clipping (client level): track this quantile of update norms.
  bool adaptive_clip = false;
  double target_quantile = 0.5;
  double clip_learning_rate = 0.2;
  double clip_count_stddev = 0.0;  // sigma_b; 0 = expected clients per round / 20, as Andrew et al.
  // DP-SGD: per-step sampling rate q of each device's records.
  double dpsgd_sampling_rate = 0.01;

  bool enabled() const { return mode != Mode::kNone; }
  bool client_level() const { return mode == Mode::kClientCentral || mode == Mode::kClientDistributed; }
  Status Validate() const;
};

const char* DpModeName(DpConfig::Mode mode);

// Check-in selection (docs/protocol.md, "Check-in"): devices connect when
// they are available, check in, and are either selected for the round whose
// selection is open or told when to come back (pace steering), and then
// disconnect. Idle devices cost the aggregator their record in the store
// only. Without it every device holds a connection for the whole
// federation (simpler for a few cross-silo members).
struct CheckInConfig {
  bool enabled = false;
  // N: the updates a round keeps. 0 = ceil(fraction x registered devices).
  int clients_per_round = 0;
  // Over-selection: select ceil(N x this) devices, keep the first N updates
  // to arrive (the rest are told the round closed).
  double over_selection = 1.3;
  // Selection closes once it holds ceil(N x over_selection) check-ins and no
  // new one came for quiet_seconds (it then samples among all it holds), or
  // after window_seconds with at least min_clients.
  double window_seconds = 30.0;
  double quiet_seconds = 0.2;
  // Pace steering aims at this many check-ins per selected device, and
  // never tells a device to wait less or more than these.
  double checkin_margin = 1.5;
  double min_come_back_seconds = 1.0;
  double max_come_back_seconds = 3600.0;
};

// Asynchronous buffered aggregation (FedBuff, Nguyen et al. 2022;
// docs/strategies.md#fedbuff): devices train whenever they are available,
// on the version they were given; the aggregator keeps the first `buffer`
// updates to arrive, discounts each by its staleness (versions published
// since its base), and publishes the next version. A "round" is one buffer.
struct AsyncConfig {
  int buffer = 0;                         // K: updates per published version; 0 = synchronous rounds
  int concurrency = 0;                    // C: devices training at once; 0 = 2K
  uint32_t max_staleness = 10;            // updates on older versions are refused
  std::string staleness_weight = "sqrt";  // sqrt: 1/sqrt(1+s); constant: 1; poly:A: (1+s)^-A
  bool enabled() const { return buffer > 0; }
  int Concurrency() const { return concurrency > 0 ? concurrency : 2 * buffer; }
  // The factor an update `staleness` versions old is weighted with.
  double Weight(uint32_t staleness) const;
  Status Validate() const;
};

struct AggregatorConfig {
  std::string endpoint = "tcp://127.0.0.1:7400";
  std::string store_path = "flotilla-aggregator.db";
  std::string federation = "flotilla";
  std::string model_arch = "2nn";  // a built-in architecture, or "torchscript"
  // For a TorchScript model: how devices split it (see wire::ModelOptions);
  // sent with every task.
  std::string model_buffers = "federated";
  std::vector<std::string> model_freeze, model_personal;
  uint32_t rounds = 10;
  int min_clients = 2;    // registered clients needed before a round starts
  double fraction = 1.0;  // of registered clients sampled per round
  int min_updates = 1;    // fewer by the deadline fails the round
  double round_deadline_seconds = 600.0;
  // The server's step size; 0 = the optimizer's default: 1 for sgd and
  // momentum (plain FedAvg), 0.01 for adam, yogi and adagrad (Reddi et al.
  // 2021 tune it in [1e-3, 1e-1]; 1 would move every weight by about 1).
  double server_learning_rate = 0.0;
  double ServerLearningRate() const {
    if (server_learning_rate > 0) return server_learning_rate;
    return strategy.optimizer.has_second_moment() ? 0.01 : 1.0;
  }
  Strategy strategy;  // fedavg, median or trimmed mean
  uint64_t seed = 1;
  // Local training settings sent with every task (seed is derived per client).
  uint32_t epochs = 1;
  uint32_t batch_size = 32;
  double learning_rate = 0.05;
  // The local learning rate decays per round: round r's tasks carry
  // learning_rate x lr_decay^(r-1) (1 = constant; asynchronous rounds count
  // versions).
  double lr_decay = 1.0;
  // The aggregator evaluates the global model every `eval_every` rounds
  // (and after the last round); the rounds in between publish their model
  // without test metrics. 1 = every round.
  uint32_t eval_every = 1;
  // Tail averaging (stochastic weight averaging on the server: Izmailov et
  // al. 2018; Caldarola et al. 2022 for federated learning): the last
  // round publishes the mean of the global models of rounds swa_from..rounds
  // (read back from the store) instead of its own merge. Training is
  // unchanged: earlier rounds' tasks carry their own global models.
  // 0 = off.
  uint32_t swa_from = 0;
  bool EvaluatesRound(uint32_t round, bool last) const {
    return last || eval_every <= 1 || round % eval_every == 0;
  }
  double LearningRateFor(uint32_t round) const {
    return learning_rate * std::pow(lr_decay, static_cast<double>(round > 0 ? round - 1 : 0));
  }
  double momentum = 0.0;
  double weight_decay = 0.0;
  // How devices encode their updates: "none", "int8" or "topk:F"
  // (proto/compression.h). Not with secure aggregation (it has its own
  // integer encoding and needs every element).
  std::string compression = "none";
  // Federated evaluation: every task asks the device to evaluate the model
  // it receives on its held-out examples before training; each round's
  // record has the example-weighted result. Not with DP (the metrics are
  // computed on private records without noise) or secure aggregation
  // (they would travel beside a masked update in the clear).
  bool federated_eval = false;
  // What devices minimize: "cross_entropy", "bce" or "mse" (a TorchScript
  // model's; training::Loss), and with what: "sgd" (with momentum) or "adam".
  std::string loss = "cross_entropy";
  std::string optimizer = "sgd";
  // What a device's update must satisfy (norm bound, example counts) and
  // how FedAvg weighs the counts it claims. See docs/security.md.
  ValidationConfig validation;
  // Per-device limits on messages and bytes in and bytes queued out.
  PeerLimitsConfig limits;
  // After a failed round the next waits this long, doubling with every
  // further failure in a row up to the maximum.
  double failed_round_backoff_seconds = 1.0;
  double max_failed_round_backoff_seconds = 60.0;
  // A device that declines or sends a refused update this many times in a
  // row is not sampled for pause_seconds (doubling while it goes on, up to
  // the maximum). 0 = never paused.
  int pause_after_strikes = 3;
  double pause_seconds = 30.0;
  double max_pause_seconds = 600.0;
  // After the last round, keep answering Finished this long so clients learn
  // the federation is over.
  double finish_grace_seconds = 3.0;
  // Keep serving after the last round (status, pull, Finished) until
  // RequestStop() / SIGTERM, instead of exiting after the grace period.
  bool keep_serving = false;
  // A round resumed after a restart: kExtend gives it a fresh deadline from
  // the restart (or keeps the original one when that is later), so the
  // outage does not eat the devices' time; kClose keeps the original
  // deadline and, when it passed while the aggregator was down, closes the
  // round at once with the updates it has (or fails it below min_updates).
  enum class DeadlinePolicy { kExtend, kClose };
  DeadlinePolicy deadline_policy = DeadlinePolicy::kExtend;
  // The HTTP endpoint for operators (/metrics, /healthz, /readyz;
  // monitoring/http_server.h). Empty listen: off.
  monitoring::HttpOptions http = [] {
    monitoring::HttpOptions o;
    o.listen.clear();
    return o;
  }();
  // Model registry retention: keep the newest `retain_last` versions plus
  // every version divisible by `retain_every`. 0 = keep everything.
  uint64_t retain_last = 0;
  uint64_t retain_every = 0;
  // Refuse writes (devices retry) while less disk space than this is free.
  uint64_t store_min_free_bytes = uint64_t{64} << 20;
  // Transport: CURVE keys (socket.curve) and security mode. With CURVE on
  // (the default) the allowlist comes from allowlist_path, reloaded when the
  // file changes or on RequestReload(), or else from allowed_clients.
  net::SocketOptions socket = DefaultSocketOptions();
  std::string allowlist_path;
  std::set<std::string> allowed_clients;
  // Allowlisted keys that are not devices (the simulator's observers): the
  // fleet size that pace steering plans with leaves them out.
  size_t non_device_keys = 0;
  DpConfig dp;
  CheckInConfig checkin;
  AsyncConfig async;
  // Secure aggregation (SecAgg / SecAgg+): the aggregator sees only the sum.
  SecureAggregationConfig secagg;
  // Every model version is signed with this key (required).
  std::shared_ptr<const privacy::SigningKeyPair> signing_key;

  // InvalidArgument naming the first bad field.
  Status Validate() const;
  // The aggregator's transport defaults: small per-peer queues (a device
  // has at most a request or two in flight), so one peer cannot make
  // ZeroMQ buffer much on its behalf.
  static net::SocketOptions DefaultSocketOptions() {
    net::SocketOptions o;
    o.send_high_water_mark = 100;
    o.receive_high_water_mark = 16;
    return o;
  }
};

}  // namespace flotilla::aggregator
