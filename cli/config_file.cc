#include "cli/config_file.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <fstream>
#include <set>

namespace flotilla::cli {

const std::vector<ConfigKey>& ConfigKeys() {
  static const std::vector<ConfigKey> keys = [] {
    std::vector<ConfigKey> k;
    auto both = [&](const char* section, const char* key, const char* flag) {
      k.push_back({section, key, "aggregator", flag});
      k.push_back({section, key, "sim", flag});
    };
    // [federation]
    k.push_back({"federation", "name", "aggregator", "--federation"});
    k.push_back({"federation", "name", "client", "--federation"});
    k.push_back({"federation", "endpoint", "aggregator", "--endpoint"});
    k.push_back({"federation", "endpoint", "client", "--connect"});
    k.push_back({"federation", "store", "aggregator", "--store"});
    both("federation", "arch", "--arch");
    // [model]: a TorchScript module and how it is split
    both("model", "path", "--model-path");
    k.push_back({"model", "path", "client run", "--model-path"});
    both("model", "buffers", "--buffers");
    both("model", "freeze", "--freeze");
    both("model", "personal", "--personal");
    both("federation", "rounds", "--rounds");
    both("federation", "seed", "--seed");
    k.push_back({"federation", "seed", "client run", "--seed"});
    // [round]
    both("round", "min_clients", "--min-clients");
    both("round", "fraction", "--fraction");
    both("round", "epochs", "--epochs");
    both("round", "batch", "--batch");
    both("round", "lr", "--lr");
    both("round", "lr_decay", "--lr-decay");
    both("round", "eval_every", "--eval-every");
    both("round", "swa_from", "--swa-from");
    both("round", "momentum", "--momentum");
    both("round", "weight_decay", "--weight-decay");
    both("round", "server_lr", "--server-lr");
    both("round", "compression", "--compression");
    both("round", "federated_eval", "--federated-eval");
    both("round", "optimizer", "--optimizer");
    both("model", "loss", "--loss");
    both("round", "strategy", "--strategy");
    both("round", "server_optimizer", "--server-optimizer");
    both("round", "proximal_mu", "--proximal-mu");
    both("round", "server_momentum", "--server-momentum");
    both("round", "server_beta1", "--server-beta1");
    both("round", "server_beta2", "--server-beta2");
    both("round", "server_tau", "--server-tau");
    both("round", "clip_updates", "--clip-updates");
    both("round", "min_updates", "--min-updates");
    both("round", "deadline", "--deadline");
    both("round", "failed_round_backoff", "--failed-round-backoff");
    both("round", "max_failed_round_backoff", "--max-failed-round-backoff");
    both("round", "pause_after", "--pause-after");
    both("round", "pause_seconds", "--pause-seconds");
    both("round", "checkin", "--checkin");
    both("round", "clients_per_round", "--clients-per-round");
    both("round", "over_selection", "--over-selection");
    both("round", "selection_window", "--selection-window");
    both("round", "selection_quiet", "--selection-quiet");
    both("round", "checkin_margin", "--checkin-margin");
    both("round", "min_come_back", "--min-come-back");
    both("round", "max_come_back", "--max-come-back");
    // [async]
    both("async", "buffer", "--async-buffer");
    both("async", "concurrency", "--async-concurrency");
    both("async", "max_staleness", "--max-staleness");
    both("async", "staleness_weight", "--staleness-weight");
    // [validation]
    both("validation", "update_norm_bound", "--update-norm-bound");
    both("validation", "max_examples", "--max-examples");
    both("validation", "example_weighting", "--example-weighting");
    // [limits]
    both("limits", "device_messages_per_second", "--device-messages-per-second");
    both("limits", "device_message_burst", "--device-message-burst");
    both("limits", "device_bytes_per_second", "--device-bytes-per-second");
    both("limits", "device_max_queued_bytes", "--device-max-queued-bytes");
    both("limits", "max_message_bytes", "--max-message-bytes");
    // [dp]
    both("dp", "mode", "--dp");
    both("dp", "noise", "--dp-noise");
    both("dp", "clip", "--dp-clip");
    both("dp", "delta", "--dp-delta");
    both("dp", "epsilon_budget", "--dp-epsilon-budget");
    both("dp", "adaptive_clip", "--dp-adaptive-clip");
    both("dp", "target_quantile", "--dp-target-quantile");
    both("dp", "sampling_rate", "--dp-sampling-rate");
    // [secagg]
    both("secagg", "mode", "--secagg");
    both("secagg", "bits", "--secagg-bits");
    both("secagg", "clip", "--secagg-clip");
    both("secagg", "degree", "--secagg-degree");
    both("secagg", "threshold", "--secagg-threshold");
    both("secagg", "stage_timeout", "--secagg-stage-timeout");
    // [http]
    both("http", "listen", "--http-listen");
    both("http", "token_file", "--http-token-file");
    // [keys]
    k.push_back({"keys", "curve_key", "aggregator", "--curve-key"});
    k.push_back({"keys", "signing_key", "aggregator", "--signing-key"});
    k.push_back({"keys", "allowlist", "aggregator", "--allowlist"});
    k.push_back({"keys", "server_key", "client", "--server-key"});
    k.push_back({"keys", "model_key", "client", "--model-key"});
    k.push_back({"keys", "enrolment_key", "client", "--enrolment-key"});
    // [data]
    both("data", "dir", "--data-dir");
    k.push_back({"data", "source", "sim", "--data"});
    k.push_back({"data", "source", "client run", "--data"});
    k.push_back({"data", "csv_label", "sim", "--csv-label"});
    k.push_back({"data", "csv_label", "client run", "--csv-label"});
    k.push_back({"data", "csv_skip_rows", "sim", "--csv-skip-rows"});
    k.push_back({"data", "csv_skip_rows", "client run", "--csv-skip-rows"});
    k.push_back({"data", "csv_header", "sim", "--csv-header"});
    k.push_back({"data", "csv_header", "client run", "--csv-header"});
    k.push_back({"data", "csv_delimiter", "sim", "--csv-delimiter"});
    k.push_back({"data", "csv_delimiter", "client run", "--csv-delimiter"});
    k.push_back({"data", "csv_features", "sim", "--csv-features"});
    k.push_back({"data", "csv_features", "client run", "--csv-features"});
    k.push_back({"data", "csv_target", "sim", "--csv-target"});
    k.push_back({"data", "csv_target", "client run", "--csv-target"});
    k.push_back({"data", "test_fraction", "sim", "--test-fraction"});
    k.push_back({"data", "dir", "client run", "--data-dir"});
    both("data", "test_limit", "--test-limit");
    k.push_back({"data", "partition", "sim", "--partition"});
    k.push_back({"data", "partition", "client run", "--partition"});
    k.push_back({"data", "clients", "sim", "--clients"});
    k.push_back({"data", "clients", "client run", "--clients"});
    k.push_back({"data", "train_limit", "sim", "--train-limit"});
    k.push_back({"data", "train_limit", "client run", "--train-limit"});
    // [sim]
    k.push_back({"sim", "workers", "sim", "--workers"});
    k.push_back({"sim", "out", "sim", "--out"});
    k.push_back({"sim", "central_epochs", "sim", "--central-epochs"});
    k.push_back({"sim", "request_timeout", "sim", "--request-timeout"});
    k.push_back({"sim", "secagg_dropout", "sim", "--secagg-dropout"});
    // [fleet] and [faults]: a scenario's heterogeneity and fault schedule
    k.push_back({"fleet", "sizes", "sim", "--sizes"});
    k.push_back({"fleet", "label_skew", "sim", "--label-skew"});
    k.push_back({"fleet", "availability", "sim", "--availability"});
    k.push_back({"fleet", "speed", "sim", "--speed"});
    k.push_back({"fleet", "latency_ms", "sim", "--latency-ms"});
    k.push_back({"fleet", "bandwidth_mbps", "sim", "--bandwidth-mbps"});
    k.push_back({"fleet", "link_loss", "sim", "--link-loss"});
    k.push_back({"faults", "dropout", "sim", "--dropout"});
    k.push_back({"faults", "crash", "sim", "--crash"});
    k.push_back({"faults", "rejoin_seconds", "sim", "--rejoin-seconds"});
    k.push_back({"faults", "straggler", "sim", "--straggler"});
    k.push_back({"faults", "straggler_factor", "sim", "--straggler-factor"});
    k.push_back({"faults", "malicious", "sim", "--malicious"});
    k.push_back({"faults", "attack", "sim", "--attack"});
    k.push_back({"faults", "aggregator_restarts", "sim", "--aggregator-restarts"});
    k.push_back({"faults", "aggregator_down_seconds", "sim", "--aggregator-down-seconds"});
    k.push_back({"data", "held_out_fraction", "client run", "--held-out-fraction"});
    k.push_back({"data", "held_out_fraction", "sim", "--held-out-fraction"});
    for (const char* role : {"sim", "client run"}) {
      k.push_back({"data", "image_height", role, "--image-height"});
      k.push_back({"data", "image_width", role, "--image-width"});
      k.push_back({"data", "image_channels", role, "--image-channels"});
    }
    // [device]: one device's identity, store and limits (device.toml)
    k.push_back({"device", "name", "client", "--name"});
    k.push_back({"device", "state_dir", "client", "--state-dir"});
    k.push_back({"device", "curve_key", "client", "--curve-key"});
    k.push_back({"device", "secagg_cert", "client", "--secagg-cert"});
    k.push_back({"device", "request_timeout_ms", "client", "--request-timeout-ms"});
    k.push_back({"device", "max_backoff_ms", "client", "--max-backoff-ms"});
    k.push_back({"device", "threads", "client run", "--threads"});
    k.push_back({"device", "max_pass_examples", "client run", "--max-pass-examples"});
    k.push_back({"device", "pause_file", "client run", "--pause-file"});
    k.push_back({"device", "model_out", "client run", "--model-out"});
    k.push_back({"device", "checkin", "client run", "--checkin"});
    // [log]
    k.push_back({"log", "level", "aggregator", "--log"});
    k.push_back({"log", "level", "sim", "--log"});
    k.push_back({"log", "level", "client", "--log"});
    for (const char* role : {"aggregator", "sim", "client"}) {
      k.push_back({"log", "format", role, "--log-format"});
      k.push_back({"log", "file", role, "--log-file"});
    }
    return k;
  }();
  return keys;
}

StatusOr<ConfigFlags> ReadConfigFlags(const std::string& path, const std::string& role) {
  std::ifstream in(path);
  if (!in) return InvalidArgument("cannot read config file " + path);
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigTOML().from_config(in);
  } catch (const CLI::Error& e) {
    return InvalidArgument(path + ": not a valid TOML config: " + e.what());
  }
  const std::vector<ConfigKey>& keys = ConfigKeys();
  ConfigFlags out;
  for (const CLI::ConfigItem& item : items) {
    std::string section;
    for (const auto& p : item.parents) section += (section.empty() ? "" : ".") + p;
    if (item.name == "++" || item.name == "--") continue;  // CLI11's section markers
    if (section.empty()) {
      return InvalidArgument(
          path + ": key '" + item.name + "' is outside any section; put it under one of " +
          "[federation], [model], [round], [validation], [limits], [dp], [secagg], [keys], [data], [sim], " +
          "[fleet], [faults], [device], [log] (see docs/configuration.md)");
    }
    std::set<std::string> sections, allowed;
    bool known = false;
    for (const ConfigKey& k : keys) {
      sections.insert(k.section);
      if (section != k.section) continue;
      allowed.insert(k.key);
      if (item.name != k.key) continue;
      known = true;
      if (role != k.role) continue;
      std::string value;
      for (size_t i = 0; i < item.inputs.size(); ++i) value += (i ? "," : "") + item.inputs[i];
      out.flags.push_back(std::string(k.flag) + "=" + value);
      out.origin[k.flag] = "[" + section + "] " + item.name + " in " + path;
    }
    if (!sections.count(section)) {
      std::string list;
      for (const auto& s : sections) list += (list.empty() ? "" : ", ") + ("[" + s + "]");
      return InvalidArgument(path + ": unknown section [" + section + "]; allowed: " + list);
    }
    if (!known) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      return InvalidArgument(path + ": unknown key '" + item.name + "' in [" + section +
                             "]; allowed: " + list);
    }
  }
  return out;
}

}  // namespace flotilla::cli
