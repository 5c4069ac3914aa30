#include "aggregator/round_json.h"

#include <cmath>

namespace flotilla::aggregator {

namespace {

nlohmann::json Optional(const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); }

std::optional<double> OptionalOf(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

}  // namespace

nlohmann::json RoundToJson(const RoundSummary& r) {
  nlohmann::json j = {
      {"round", r.round},
      {"completed", r.completed},
      {"selected", r.selected},
      {"received", r.received},
      {"declined", r.declined},
      {"refused", r.refused},
      {"unreported", r.unreported},
      {"examples", r.total_examples},
      {"train_loss", std::isfinite(r.mean_train_loss) ? nlohmann::json(r.mean_train_loss) : nlohmann::json()},
      {"test_loss", Optional(r.test_loss)},
      {"test_accuracy", Optional(r.test_accuracy)},
      {"test_auc", Optional(r.test_auc)},
      {"test_mae", Optional(r.test_mae)},
      {"federated_examples", r.federated_examples},
      {"federated_loss", Optional(r.federated_loss)},
      {"federated_accuracy", Optional(r.federated_accuracy)},
      {"model_version", r.model_version},
      {"epsilon", Optional(r.epsilon)},
      {"clip_norm", Optional(r.clip_norm)},
      {"secure", r.secure},
      {"seconds", r.seconds},
      {"selection_seconds", r.selection_seconds},
      {"train_seconds", r.train_seconds},
      {"merge_seconds", r.merge_seconds},
      {"bytes_in", r.bytes_in},
      {"bytes_out", r.bytes_out},
      {"finished_unix_ms", r.finished_unix_ms}};
  if (r.async) {
    j["async"] = true;
    j["mean_staleness"] = r.mean_staleness;
    j["max_staleness"] = r.max_staleness;
  }
  return j;
}

StatusOr<RoundSummary> RoundFromJson(const nlohmann::json& j) {
  try {
    RoundSummary r;
    r.round = j.at("round").get<uint32_t>();
    r.completed = j.at("completed").get<bool>();
    r.selected = j.at("selected").get<int>();
    r.received = j.at("received").get<int>();
    r.declined = j.value("declined", 0);
    r.refused = j.value("refused", 0);
    r.unreported = j.value("unreported", 0);
    r.total_examples = j.value("examples", int64_t{0});
    r.mean_train_loss = OptionalOf(j, "train_loss").value_or(NAN);
    r.test_loss = OptionalOf(j, "test_loss");
    r.test_accuracy = OptionalOf(j, "test_accuracy");
    r.test_auc = OptionalOf(j, "test_auc");
    r.test_mae = OptionalOf(j, "test_mae");
    r.federated_examples = j.value("federated_examples", int64_t{0});
    r.federated_loss = OptionalOf(j, "federated_loss");
    r.federated_accuracy = OptionalOf(j, "federated_accuracy");
    r.model_version = j.value("model_version", uint64_t{0});
    r.epsilon = OptionalOf(j, "epsilon");
    r.clip_norm = OptionalOf(j, "clip_norm");
    r.secure = j.value("secure", false);
    r.seconds = j.value("seconds", 0.0);
    r.selection_seconds = j.value("selection_seconds", 0.0);
    r.train_seconds = j.value("train_seconds", 0.0);
    r.merge_seconds = j.value("merge_seconds", 0.0);
    r.bytes_in = j.value("bytes_in", uint64_t{0});
    r.bytes_out = j.value("bytes_out", uint64_t{0});
    r.async = j.value("async", false);
    r.finished_unix_ms = j.value("finished_unix_ms", int64_t{0});
    r.mean_staleness = j.value("mean_staleness", 0.0);
    r.max_staleness = j.value("max_staleness", uint32_t{0});
    return r;
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(std::string("round entry: ") + e.what());
  }
}

}  // namespace flotilla::aggregator
