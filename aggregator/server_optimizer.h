// The server's step: how a round's combined delta moves the global model.
//
//   sgd        x += eta * delta                       (FedAvg with a server
//              learning rate; McMahan et al. 2017)
//   momentum   v = beta * v + delta;  x += eta * v    (FedAvgM; Hsu et al. 2019)
//   adam       m = b1 m + (1 - b1) delta
//              v = b2 v + (1 - b2) delta^2
//              x += eta * m / (sqrt(v) + tau)         (FedAdam; Reddi et al.
//                                                     2021, Algorithm 2)
//   yogi       as adam, but v -= (1 - b2) delta^2 sign(v - delta^2)   (FedYogi)
//   adagrad    as adam, but v += delta^2                              (FedAdagrad)
//
// As in Reddi et al., there is no bias correction, m starts at 0 and v at
// tau^2. A step is a pure function of the global model, the delta and the
// explicit state; the round engine keeps the state and writes it with the
// round that produced it (records::ServerStateRecord), so an aggregator
// killed and restarted continues bit for bit.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/weights.h"
#include "proto/records.pb.h"

namespace flotilla::aggregator {

struct ServerOptimizer {
  enum class Kind { kSgd, kMomentum, kAdam, kYogi, kAdagrad };
  Kind kind = Kind::kSgd;
  double momentum = 0.9;  // FedAvgM's beta
  double beta1 = 0.9;     // Adam/Yogi/Adagrad's first-moment decay
  double beta2 = 0.99;    // Adam/Yogi's second-moment decay
  double tau = 1e-3;      // adaptivity: added to sqrt(v)

  std::string Name() const;
  bool stateful() const { return kind != Kind::kSgd; }
  bool has_second_moment() const {
    return kind == Kind::kAdam || kind == Kind::kYogi || kind == Kind::kAdagrad;
  }
  // InvalidArgument naming the bad parameter.
  Status Validate() const;
};

// "sgd", "momentum", "adam", "yogi" or "adagrad".
StatusOr<ServerOptimizer::Kind> ParseServerOptimizer(const std::string& text);

// The optimizer's state between rounds. Empty vectors: no step taken yet.
struct ServerState {
  uint64_t steps = 0;
  std::vector<float> first;   // momentum buffer, or m
  std::vector<float> second;  // v
  // SCAFFOLD's server control variate c (empty: zero). ServerStep carries
  // it over unchanged; ScaffoldControlStep moves it.
  std::vector<float> control;
};

// next = global moved by `delta` under `opt` from `state`; the state after
// the step goes to *next_state (which may not alias `state`). Fails,
// changing nothing, on a layout mismatch or a non-finite result.
StatusOr<Weights> ServerStep(const ServerOptimizer& opt, double learning_rate, const Weights& global,
                             const Weights& delta, const ServerState& state, ServerState* next_state);

// SCAFFOLD's server step for c (Karimireddy et al. 2020, Algorithm 1,
// line 17): c + (|S| / N) * mean_control_delta, where `fraction` = |S| / N
// (the devices that reported over the fleet). The result goes to *control.
// Fails, changing nothing, on a size mismatch or a non-finite result.
Status ScaffoldControlStep(const std::vector<float>& c, const Weights& mean_control_delta, double fraction,
                           std::vector<float>* control);

// To and from the stored record under `name` (the optimizer's name, with
// "+scaffold" when SCAFFOLD's c is kept too); FromRecord checks the name and
// the vectors' sizes against the model (DataLoss or FailedPrecondition with
// what to do).
records::ServerStateRecord ServerStateToRecord(const std::string& name, const ServerState& state,
                                               uint64_t model_version, uint32_t round);
StatusOr<ServerState> ServerStateFromRecord(const records::ServerStateRecord& record, const std::string& name,
                                            size_t num_parameters);

}  // namespace flotilla::aggregator
