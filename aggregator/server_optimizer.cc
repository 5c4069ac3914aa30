#include "aggregator/server_optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace flotilla::aggregator {

std::string ServerOptimizer::Name() const {
  switch (kind) {
    case Kind::kSgd:
      return "sgd";
    case Kind::kMomentum:
      return "momentum";
    case Kind::kAdam:
      return "adam";
    case Kind::kYogi:
      return "yogi";
    case Kind::kAdagrad:
      return "adagrad";
  }
  return "unknown";
}

Status ServerOptimizer::Validate() const {
  if (!(momentum >= 0.0 && momentum < 1.0))
    return InvalidArgument("server momentum must be in [0, 1), got " + std::to_string(momentum));
  if (!(beta1 >= 0.0 && beta1 < 1.0))
    return InvalidArgument("server beta1 must be in [0, 1), got " + std::to_string(beta1));
  if (!(beta2 >= 0.0 && beta2 < 1.0))
    return InvalidArgument("server beta2 must be in [0, 1), got " + std::to_string(beta2));
  if (!(tau > 0.0 && std::isfinite(tau)))
    return InvalidArgument("server tau must be positive (it keeps the step finite), got " +
                           std::to_string(tau));
  return Status::Ok();
}

StatusOr<ServerOptimizer::Kind> ParseServerOptimizer(const std::string& text) {
  using K = ServerOptimizer::Kind;
  if (text == "sgd") return K::kSgd;
  if (text == "momentum") return K::kMomentum;
  if (text == "adam") return K::kAdam;
  if (text == "yogi") return K::kYogi;
  if (text == "adagrad") return K::kAdagrad;
  return InvalidArgument("unknown server optimizer '" + text +
                         "' (use sgd, momentum, adam, yogi or adagrad)");
}

StatusOr<Weights> ServerStep(const ServerOptimizer& opt, double learning_rate, const Weights& global,
                             const Weights& delta, const ServerState& state, ServerState* next_state) {
  if (!global.layout || !delta.layout) return InvalidArgument("server step: weights without a layout");
  RETURN_IF_ERROR(global.layout->CheckSame(*delta.layout));
  const size_t n = global.data.size();
  using K = ServerOptimizer::Kind;
  const bool has_first = opt.stateful();
  const bool has_second = opt.has_second_moment();
  if (has_first && !state.first.empty() && state.first.size() != n)
    return InvalidArgument("server optimizer state has " + std::to_string(state.first.size()) +
                           " values for a model of " + std::to_string(n));
  if (has_second && !state.second.empty() && state.second.size() != n)
    return InvalidArgument("server optimizer state has " + std::to_string(state.second.size()) +
                           " second-moment values for a model of " + std::to_string(n));
  ServerState next;
  next.steps = state.steps + 1;
  next.control = state.control;
  if (has_first) next.first.resize(n);
  if (has_second) next.second.resize(n);
  const double tau2 = opt.tau * opt.tau;
  Weights out = global;
  for (size_t i = 0; i < n; ++i) {
    const double d = delta.data[i];
    double step = d;
    switch (opt.kind) {
      case K::kSgd:
        break;
      case K::kMomentum: {
        const double v = (state.first.empty() ? 0.0 : double{state.first[i]}) * opt.momentum + d;
        next.first[i] = static_cast<float>(v);
        step = double{next.first[i]};
        break;
      }
      case K::kAdam:
      case K::kYogi:
      case K::kAdagrad: {
        const double m0 = state.first.empty() ? 0.0 : double{state.first[i]};
        const double v0 = state.second.empty() ? tau2 : double{state.second[i]};
        const double m = opt.beta1 * m0 + (1.0 - opt.beta1) * d;
        const double d2 = d * d;
        double v;
        if (opt.kind == K::kAdam) {
          v = opt.beta2 * v0 + (1.0 - opt.beta2) * d2;
        } else if (opt.kind == K::kYogi) {
          const double diff = v0 - d2;
          const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
          v = v0 - (1.0 - opt.beta2) * d2 * sign;
        } else {
          v = v0 + d2;
        }
        // Stored as float: the next step reads back exactly what was stored.
        next.first[i] = static_cast<float>(m);
        next.second[i] = static_cast<float>(v);
        step = double{next.first[i]} / (std::sqrt(double{next.second[i]}) + opt.tau);
        break;
      }
    }
    out.data[i] = static_cast<float>(static_cast<double>(global.data[i]) + learning_rate * step);
  }
  RETURN_IF_ERROR(out.Validate());
  for (float v : next.first) {
    if (!std::isfinite(v)) return InvalidArgument("server optimizer state is not finite");
  }
  for (float v : next.second) {
    if (!std::isfinite(v)) return InvalidArgument("server optimizer state is not finite");
  }
  *next_state = std::move(next);
  return out;
}

namespace {

std::string FloatBytes(const std::vector<float>& v) {
  std::string out(v.size() * sizeof(float), '\0');
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

StatusOr<std::vector<float>> BytesToFloats(const std::string& bytes, size_t n, const char* what) {
  if (bytes.empty()) return std::vector<float>();
  if (bytes.size() != n * sizeof(float)) {
    return DataLoss(std::string("stored server optimizer ") + what + " has " + std::to_string(bytes.size()) +
                    " bytes for a model of " + std::to_string(n) + " parameters");
  }
  std::vector<float> v(n);
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

}  // namespace

Status ScaffoldControlStep(const std::vector<float>& c, const Weights& mean_control_delta, double fraction,
                           std::vector<float>* control) {
  const size_t n = mean_control_delta.data.size();
  if (!c.empty() && c.size() != n) {
    return InvalidArgument("SCAFFOLD's control variate has " + std::to_string(c.size()) +
                           " values for a model of " + std::to_string(n));
  }
  if (!(fraction > 0.0 && fraction <= 1.0))
    return InvalidArgument("SCAFFOLD's fraction of reporting devices must be in (0, 1], got " +
                           std::to_string(fraction));
  std::vector<float> next(n);
  for (size_t i = 0; i < n; ++i) {
    const double v = (c.empty() ? 0.0 : double{c[i]}) + fraction * double{mean_control_delta.data[i]};
    next[i] = static_cast<float>(v);
    if (!std::isfinite(next[i])) return InvalidArgument("SCAFFOLD's control variate is not finite");
  }
  *control = std::move(next);
  return Status::Ok();
}

records::ServerStateRecord ServerStateToRecord(const std::string& name, const ServerState& state,
                                               uint64_t model_version, uint32_t round) {
  records::ServerStateRecord r;
  r.set_optimizer(name);
  r.set_model_version(model_version);
  r.set_round(round);
  r.set_steps(state.steps);
  r.set_first_moment(FloatBytes(state.first));
  r.set_second_moment(FloatBytes(state.second));
  r.set_control(FloatBytes(state.control));
  r.set_num_parameters(std::max({state.first.size(), state.second.size(), state.control.size()}));
  return r;
}

StatusOr<ServerState> ServerStateFromRecord(const records::ServerStateRecord& record, const std::string& name,
                                            size_t num_parameters) {
  if (record.optimizer() != name) {
    return FailedPrecondition("the store holds server optimizer state for '" + record.optimizer() +
                              "' but this aggregator is configured with '" + name +
                              "'; run with the same strategy, or start a new store");
  }
  ServerState state;
  state.steps = record.steps();
  ASSIGN_OR_RETURN(state.first, BytesToFloats(record.first_moment(), num_parameters, "first moment"));
  ASSIGN_OR_RETURN(state.second, BytesToFloats(record.second_moment(), num_parameters, "second moment"));
  ASSIGN_OR_RETURN(state.control, BytesToFloats(record.control(), num_parameters, "control variate"));
  return state;
}

}  // namespace flotilla::aggregator
