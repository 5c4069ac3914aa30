#include "sim/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

namespace flotilla::sim {

std::string FormatRound(const aggregator::RoundSummary& r, uint32_t rounds) {
  char line[256];
  if (!r.completed) {
    std::snprintf(line, sizeof(line), "round %3u/%u  clients %3d/%-3d  FAILED (too few updates)  %6.1fs",
                  r.round, rounds, r.received, r.selected, r.seconds);
    return line;
  }
  std::snprintf(line, sizeof(line),
                "round %3u/%u  clients %3d/%-3d  train_loss %.4f  test_loss %.4f  test_acc %.4f  %6.1fs",
                r.round, rounds, r.received, r.selected, r.mean_train_loss, r.test_loss.value_or(NAN),
                r.test_accuracy.value_or(NAN), r.seconds);
  std::string out = line;
  if (r.bytes_in + r.bytes_out > 0) {
    std::snprintf(line, sizeof(line), "  MB in/out %.2f/%.2f", static_cast<double>(r.bytes_in) / 1e6,
                  static_cast<double>(r.bytes_out) / 1e6);
    out += line;
  }
  if (r.test_auc) {
    std::snprintf(line, sizeof(line), "  test_auc %.4f", *r.test_auc);
    out += line;
  }
  if (r.test_mae) {
    std::snprintf(line, sizeof(line), "  test_mae %.4f", *r.test_mae);
    out += line;
  }
  if (r.federated_accuracy) {
    // The devices' held-out view of the model this round started from.
    std::snprintf(line, sizeof(line), "  fed_acc %.4f (%lld held out)", *r.federated_accuracy,
                  static_cast<long long>(r.federated_examples));
    out += line;
  }
  if (r.epsilon) {
    std::snprintf(line, sizeof(line), "  eps %.3f", *r.epsilon);
    out += line;
  }
  if (r.clip_norm) {
    std::snprintf(line, sizeof(line), "  clip %.3f", *r.clip_norm);
    out += line;
  }
  return out;
}

std::string FormatSummaryTable(const SimResult& result, uint32_t rounds_planned, bool central) {
  int completed = 0, failed = 0;
  int64_t selected = 0, received = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  double round_seconds = 0, best = -1;
  uint32_t best_round = 0;
  std::optional<double> federated;
  for (const auto& r : result.rounds) {
    (r.completed ? completed : failed) += 1;
    selected += r.selected;
    received += r.received;
    bytes_in += r.bytes_in;
    bytes_out += r.bytes_out;
    round_seconds += r.seconds;
    if (r.test_accuracy && *r.test_accuracy > best) {
      best = *r.test_accuracy;
      best_round = r.round;
    }
    if (r.federated_accuracy) federated = r.federated_accuracy;
  }
  const double n = static_cast<double>(std::max<size_t>(1, result.rounds.size()));
  std::string out;
  char line[256];
  auto add = [&](const char* label, const std::string& value) {
    std::snprintf(line, sizeof(line), "  %-26s %s\n", label, value.c_str());
    out += line;
  };
  auto fmt = [&](const char* f, auto... v) {
    std::snprintf(line, sizeof(line), f, v...);
    return std::string(line);
  };
  out += "summary\n";
  if (central) {
    add("epochs", fmt("%d of %u (central training)", completed, rounds_planned));
  } else {
    add("rounds", fmt("%d completed, %d failed (of %u planned)", completed, failed, rounds_planned));
  }
  if (selected > 0 && !central) {
    add("participation", fmt("%lld of %lld selected updates arrived (%.1f%%)",
                             static_cast<long long>(received), static_cast<long long>(selected),
                             100.0 * static_cast<double>(received) / static_cast<double>(selected)));
  }
  if (best >= 0) {
    add("test accuracy", fmt("%.4f final, %.4f best (%s %u)", result.final_accuracy, best,
                             central ? "epoch" : "round", best_round));
  }
  if (std::isfinite(result.final_auc)) add("test AUC", fmt("%.4f final", result.final_auc));
  if (std::isfinite(result.final_mae)) add("test MAE", fmt("%.4f final", result.final_mae));
  if (federated) add("devices' held-out accuracy", fmt("%.4f (last round)", *federated));
  if (!result.rounds.empty() && result.rounds.back().epsilon) {
    add("epsilon spent", fmt("%.3f", *result.rounds.back().epsilon));
  }
  if (bytes_in + bytes_out > 0) {
    add("bytes on the wire", fmt("%.1f MB in, %.1f MB out (aggregator)", static_cast<double>(bytes_in) / 1e6,
                                 static_cast<double>(bytes_out) / 1e6));
  }
  add("time", fmt("%.1f s: %.2f s per %s, %.1f s before the first", result.seconds, round_seconds / n,
                  central ? "epoch" : "round", std::max(0.0, result.seconds - round_seconds)));
  return out;
}

Status WriteOutputs(const SimConfig& config, const SimResult& result) {
  const std::filesystem::path dir(config.out_dir);
  std::ofstream csv(dir / "metrics.csv");
  csv << "round,completed,selected,received,examples,train_loss,test_loss,test_accuracy,seconds,model_"
         "version,"
         "epsilon,clip_norm,federated_examples,federated_loss,federated_accuracy,test_auc,test_mae,bytes_in,"
         "bytes_out\n";
  for (const auto& r : result.rounds) {
    csv << r.round << "," << (r.completed ? 1 : 0) << "," << r.selected << "," << r.received << ","
        << r.total_examples << "," << r.mean_train_loss << "," << r.test_loss.value_or(NAN) << ","
        << r.test_accuracy.value_or(NAN) << "," << r.seconds << "," << r.model_version << ","
        << r.epsilon.value_or(NAN) << "," << r.clip_norm.value_or(NAN) << "," << r.federated_examples << ","
        << r.federated_loss.value_or(NAN) << "," << r.federated_accuracy.value_or(NAN) << ","
        << r.test_auc.value_or(NAN) << "," << r.test_mae.value_or(NAN) << "," << r.bytes_in << ","
        << r.bytes_out << "\n";
  }
  if (!csv) return Unavailable("could not write " + (dir / "metrics.csv").string());
  const auto& a = config.aggregator;
  uint64_t bytes_in = 0, bytes_out = 0;
  for (const auto& r : result.rounds) {
    bytes_in += r.bytes_in;
    bytes_out += r.bytes_out;
  }
  nlohmann::json summary = {
      {"mode", config.central_epochs > 0 ? "central" : "federated"},
      {"arch", a.model_arch},
      {"model_path", config.model_path},
      {"buffers", a.model_buffers},
      {"clients", config.clients},
      {"partition", config.partition},
      {"rounds", a.rounds},
      {"fraction", a.fraction},
      {"epochs", a.epochs},
      {"batch_size", a.batch_size},
      {"learning_rate", a.learning_rate},
      {"momentum", a.momentum},
      {"strategy", a.strategy.Name()},
      {"compression", a.compression},
      {"loss", a.loss},
      {"optimizer", a.optimizer},
      {"federated_eval", a.federated_eval},
      {"held_out_fraction", config.held_out_fraction},
      {"seed", a.seed},
      {"central_epochs", config.central_epochs},
      {"dp", aggregator::DpModeName(a.dp.mode)},
      {"dp_noise_multiplier", a.dp.noise_multiplier},
      {"dp_clip_norm", a.dp.clip_norm},
      {"dp_delta", a.dp.delta},
      {"dp_epsilon_budget", a.dp.epsilon_budget},
      {"dp_adaptive_clip", a.dp.adaptive_clip},
      {"dp_sampling_rate", a.dp.dpsgd_sampling_rate},
      {"secagg", !a.secagg.enabled                                 ? "off"
                 : a.secagg.graph == privacy::SecAggGraph::kHarary ? "secagg+"
                                                                   : "complete"},
      {"secagg_bits", a.secagg.bit_width},
      {"secagg_dropout", config.secagg_dropout},
      {"epsilon_spent",
       result.rounds.empty() || !result.rounds.back().epsilon ? 0.0 : *result.rounds.back().epsilon},
      {"train_examples", result.train_examples},
      {"final_test_accuracy", result.final_accuracy},
      {"final_test_loss", result.final_loss},
      {"final_test_auc",
       std::isfinite(result.final_auc) ? nlohmann::json(result.final_auc) : nlohmann::json()},
      {"final_test_mae",
       std::isfinite(result.final_mae) ? nlohmann::json(result.final_mae) : nlohmann::json()},
      {"seconds", result.seconds},
      {"bytes_in", bytes_in},
      {"bytes_out", bytes_out},
  };
  std::ofstream js(dir / "summary.json");
  js << summary.dump(2) << "\n";
  if (!js) return Unavailable("could not write " + (dir / "summary.json").string());
  return Status::Ok();
}

}  // namespace flotilla::sim
