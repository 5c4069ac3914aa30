#include "sim/report.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/log.h"

namespace flotilla::sim {

ProgressLine::ProgressLine(bool enabled) : enabled_(enabled), tty_(enabled && ::isatty(2) == 1) {}

std::string ProgressLine::Duration(double seconds) {
  char out[32];
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  if (seconds < 60) {
    std::snprintf(out, sizeof(out), "%.1fs", seconds);
  } else if (seconds < 3600) {
    std::snprintf(out, sizeof(out), "%dm%02ds", static_cast<int>(seconds) / 60,
                  static_cast<int>(seconds) % 60);
  } else {
    std::snprintf(out, sizeof(out), "%dh%02dm", static_cast<int>(seconds) / 3600,
                  static_cast<int>(seconds) % 3600 / 60);
  }
  return out;
}

void ProgressLine::Update(const std::string& text) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  text_ = text;
  if (tty_) {
    if (now - last_ < std::chrono::milliseconds(200)) return;
    std::fprintf(stderr, "\r\033[K%s", text_.c_str());
  } else {
    if (now - last_ < std::chrono::seconds(30)) return;
    std::fprintf(stderr, "%s\n", text_.c_str());
  }
  std::fflush(stderr);
  last_ = now;
}

void ProgressLine::Print(const std::string& line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (tty_ && !text_.empty()) std::fprintf(stderr, "\r\033[K");
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if (tty_ && !text_.empty()) {
    std::fprintf(stderr, "%s", text_.c_str());
    std::fflush(stderr);
  }
}

void ProgressLine::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  if (tty_ && !text_.empty()) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }
  text_.clear();
}

std::string FormatRound(const aggregator::RoundSummary& r, uint32_t rounds) {
  char line[256];
  if (!r.completed) {
    std::snprintf(line, sizeof(line), "round %3u/%u  clients %3d/%-3d  FAILED (too few updates)  %6.1fs",
                  r.round, rounds, r.received, r.selected, r.seconds);
    return line;
  }
  // A round the aggregator did not evaluate (--eval-every) shows "-".
  auto metric = [](const std::optional<double>& v) {
    char text[32];
    if (v) {
      std::snprintf(text, sizeof(text), "%.4f", *v);
    } else {
      std::snprintf(text, sizeof(text), "%-6s", "-");
    }
    return std::string(text);
  };
  std::snprintf(line, sizeof(line),
                "round %3u/%u  clients %3d/%-3d  train_loss %.4f  test_loss %s  test_acc %s  %6.1fs", r.round,
                rounds, r.received, r.selected, r.mean_train_loss, metric(r.test_loss).c_str(),
                metric(r.test_accuracy).c_str(), r.seconds);
  std::string out = line;
  if (r.bytes_in + r.bytes_out > 0) {
    std::snprintf(line, sizeof(line), "  MB in/out %.2f/%.2f", static_cast<double>(r.bytes_in) / 1e6,
                  static_cast<double>(r.bytes_out) / 1e6);
    out += line;
  }
  if (r.async) {
    std::snprintf(line, sizeof(line), "  staleness %.2f (max %u)", r.mean_staleness, r.max_staleness);
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
  if (r.selection_seconds > 0) {
    // Check-in: waiting for check-ins, training and reporting, merging.
    std::snprintf(line, sizeof(line), "  wait/train/merge %.1f/%.1f/%.1fs", r.selection_seconds,
                  r.train_seconds, r.merge_seconds);
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
  double round_seconds = 0, best = -1, selection = 0, training = 0, merging = 0;
  int64_t declined = 0, refused = 0, unreported = 0;
  uint32_t best_round = 0;
  std::optional<double> federated;
  for (const auto& r : result.rounds) {
    (r.completed ? completed : failed) += 1;
    selected += r.selected;
    received += r.received;
    bytes_in += r.bytes_in;
    bytes_out += r.bytes_out;
    round_seconds += r.seconds + r.selection_seconds;
    selection += r.selection_seconds;
    training += r.train_seconds;
    merging += r.merge_seconds;
    declined += r.declined;
    refused += r.refused;
    unreported += r.unreported;
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
  if (declined + refused + unreported > 0 && !central) {
    add("dropouts", fmt("%lld declined, %lld refused, %lld unreported", static_cast<long long>(declined),
                        static_cast<long long>(refused), static_cast<long long>(unreported)));
  }
  const InjectedFaults& f = result.injected;
  if (f.dropped_before_training + f.dropped_while_training + f.dropped_after_sending + f.crashed +
          f.stragglers + f.aggregator_restarts >
      0) {
    add("faults injected",
        fmt("%llu dropped (%llu before training, %llu while, %llu after sending), %llu crashed and rejoined, "
            "%llu stragglers, %llu aggregator restarts",
            static_cast<unsigned long long>(f.dropped_before_training + f.dropped_while_training +
                                            f.dropped_after_sending),
            static_cast<unsigned long long>(f.dropped_before_training),
            static_cast<unsigned long long>(f.dropped_while_training),
            static_cast<unsigned long long>(f.dropped_after_sending),
            static_cast<unsigned long long>(f.crashed), static_cast<unsigned long long>(f.stragglers),
            static_cast<unsigned long long>(f.aggregator_restarts)));
  }
  if (f.went_offline > 0) {
    add("availability", fmt("%llu devices went offline while training (their updates were lost)",
                            static_cast<unsigned long long>(f.went_offline)));
  }
  if (f.poisoned > 0) {
    add("attack",
        fmt("%llu poisoned updates from %s devices (%s)", static_cast<unsigned long long>(f.poisoned),
            fmt("%g%%", 100.0 * result.malicious_fraction).c_str(), result.attack.c_str()));
  }
  if (result.check_ins > 0) {
    add("check-ins", fmt("%llu, at most %zu devices connected at once",
                         static_cast<unsigned long long>(result.check_ins), result.peak_active_devices));
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
  if (selection > 0) {
    add("time per round", fmt("%.2f s waiting for check-ins, %.2f s training, %.2f s merging", selection / n,
                              training / n, merging / n));
  }
  return out;
}

StatusOr<std::vector<aggregator::RoundSummary>> ReadRoundLog(const std::string& path) {
  std::ifstream in(path);
  std::vector<aggregator::RoundSummary> rounds;
  if (!in) return rounds;  // nothing yet
  std::string line;
  size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      // A line cut short by a kill while it was written: the round is
      // committed in the store, but its figures are lost with it.
      LOG_WARN("sim", path << " line " << number << " is not complete JSON; skipped");
      continue;
    }
    ASSIGN_OR_RETURN(aggregator::RoundSummary r, RoundFromJson(j));
    // A round logged twice (a restart) keeps its last entry.
    rounds.erase(std::remove_if(rounds.begin(), rounds.end(),
                                [&](const aggregator::RoundSummary& o) { return o.round == r.round; }),
                 rounds.end());
    rounds.push_back(r);
  }
  std::sort(
      rounds.begin(), rounds.end(),
      [](const aggregator::RoundSummary& a, const aggregator::RoundSummary& b) { return a.round < b.round; });
  return rounds;
}

Status WriteOutputs(const SimConfig& config, const SimResult& result) {
  const std::filesystem::path dir(config.out_dir);
  // metrics.csv: what the federation computed, the same to the last digit
  // for the same scenario and seed. timing.csv: what this machine measured.
  // rounds.json: both, one object per round.
  std::ofstream csv(dir / "metrics.csv");
  csv << "round,completed,selected,received,declined,refused,unreported,examples,train_loss,test_loss,"
         "test_accuracy,test_auc,test_mae,federated_examples,federated_loss,federated_accuracy,model_version,"
         "epsilon,clip_norm,mean_staleness\n";
  std::ofstream timing(dir / "timing.csv");
  timing
      << "round,seconds,selection_seconds,train_seconds,merge_seconds,bytes_in,bytes_out,elapsed_seconds\n";
  nlohmann::json rounds = nlohmann::json::array();
  for (const auto& r : result.rounds) {
    csv << r.round << "," << (r.completed ? 1 : 0) << "," << r.selected << "," << r.received << ","
        << r.declined << "," << r.refused << "," << r.unreported << "," << r.total_examples << ","
        << r.mean_train_loss << "," << r.test_loss.value_or(NAN) << "," << r.test_accuracy.value_or(NAN)
        << "," << r.test_auc.value_or(NAN) << "," << r.test_mae.value_or(NAN) << "," << r.federated_examples
        << "," << r.federated_loss.value_or(NAN) << "," << r.federated_accuracy.value_or(NAN) << ","
        << r.model_version << "," << r.epsilon.value_or(NAN) << "," << r.clip_norm.value_or(NAN) << ","
        << (r.async ? r.mean_staleness : NAN) << "\n";
    timing << r.round << "," << r.seconds << "," << r.selection_seconds << "," << r.train_seconds << ","
           << r.merge_seconds << "," << r.bytes_in << "," << r.bytes_out << ","
           << (r.finished_unix_ms > 0 && result.started_unix_ms > 0
                   ? static_cast<double>(r.finished_unix_ms - result.started_unix_ms) / 1000.0
                   : NAN)
           << "\n";
    rounds.push_back(RoundToJson(r));
  }
  if (!csv) return Unavailable("could not write " + (dir / "metrics.csv").string());
  if (!timing) return Unavailable("could not write " + (dir / "timing.csv").string());
  {
    std::ofstream rj(dir / "rounds.json");
    rj << rounds.dump(1) << "\n";
    if (!rj) return Unavailable("could not write " + (dir / "rounds.json").string());
  }
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
      {"checkin", a.checkin.enabled},
      {"clients_per_round", a.checkin.clients_per_round},
      {"over_selection", a.checkin.over_selection},
      {"sizes", config.sizes},
      {"label_skew", config.label_skew},
      {"availability", config.model.availability},
      {"speed", config.model.speed},
      {"check_ins", result.check_ins},
      {"peak_connected_devices", result.peak_active_devices},
      {"faults_injected",
       {{"dropped_before_training", result.injected.dropped_before_training},
        {"dropped_while_training", result.injected.dropped_while_training},
        {"went_offline", result.injected.went_offline},
        {"dropped_after_sending", result.injected.dropped_after_sending},
        {"crashed", result.injected.crashed},
        {"stragglers", result.injected.stragglers},
        {"aggregator_restarts", result.injected.aggregator_restarts},
        {"poisoned_updates", result.injected.poisoned}}},
      {"bytes_in", bytes_in},
      {"bytes_out", bytes_out},
  };
  std::ofstream js(dir / "summary.json");
  js << summary.dump(2) << "\n";
  if (!js) return Unavailable("could not write " + (dir / "summary.json").string());
  return Status::Ok();
}

}  // namespace flotilla::sim
