// flotilla registry: inspect and export the model versions in an
// aggregator's store. Opens the store read-only, so it works while the
// aggregator runs.
#include <CLI/CLI.hpp>
#include <cctype>
#include <cstdio>
#include <ctime>

#include "aggregator/store.h"
#include "cli/commands.h"
#include "core/raw_weights.h"
#include "privacy/keys.h"
#include "privacy/signing.h"
#include "proto/codec.h"
#include "training/export.h"

namespace {
int Fail(const flotilla::Status& st) {
  std::fprintf(stderr, "flotilla registry: %s\n", st.ToString().c_str());
  return 1;
}
std::string Time(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}
}  // namespace

int flotilla::cli::RegistryMain(int argc, char** argv, const FlagOrigins& /*origins*/) {
  using namespace flotilla;
  std::string store_path = "flotilla-aggregator.db";
  CLI::App app{"Flotilla model registry: list, show and export the model versions an aggregator stored."};
  app.require_subcommand(1);
  app.add_option("--store", store_path, "The aggregator's RocksDB directory")->capture_default_str();
  CLI::App* list = app.add_subcommand("list", "One line per stored model version");
  CLI::App* show = app.add_subcommand("show", "Everything about one version");
  CLI::App* exp = app.add_subcommand("export", "Write one version for inference");
  CLI::App* rounds = app.add_subcommand("rounds", "One line per round record");
  CLI::App* ledger = app.add_subcommand("ledger", "The privacy ledger, as an auditor reads it");
  CLI::App* clients =
      app.add_subcommand("clients", "One line per device: accepted and refused updates, pauses");
  CLI::App* quarantine =
      app.add_subcommand("quarantine", "Records moved aside because they failed validation when read back");
  uint64_t version = 0;
  std::string out, format = "torch", verify_key;
  show->add_option("version", version, "Model version (0 = latest)")->capture_default_str();
  exp->add_option("version", version, "Model version (0 = latest)")->capture_default_str();
  exp->add_option("--out", out, "Output file")->required();
  exp->add_option(
         "--format", format,
         "torch: a LibTorch archive for torch::load into the model class; raw: float32 + OUT.json layout")
      ->capture_default_str()
      ->check(CLI::IsMember({"torch", "raw"}));
  show->add_option("--verify-key", verify_key, "Check the signature with this .sign.pub file");
  (void)list;
  CLI11_PARSE(app, argc, argv);

  auto store = aggregator::Store::OpenReadOnly(store_path);
  if (!store.ok()) return Fail(store.status());
  auto versions = (*store)->ListModelVersions();
  if (!versions.ok()) return Fail(versions.status());

  if (*ledger) {
    auto entries = (*store)->ListLedger();
    if (!entries.ok()) return Fail(entries.status());
    if (entries->empty()) {
      std::printf("the privacy ledger is empty: this federation ran without differential privacy\n");
      return 0;
    }
    std::printf("%6s %-22s %-44s %10s %8s %8s %8s %10s %12s  %s\n", "round", "mechanism", "client", "q",
                "noise", "steps", "clip", "delta", "epsilon", "recorded");
    double worst = 0;
    for (const auto& e : *entries) {
      std::printf("%6u %-22s %-44s %10.6f %8.4f %8lld %8.4f %10.2e %12.6f  %s\n", e.round(),
                  e.mechanism().c_str(), e.client_id().empty() ? "(deployment)" : e.client_id().c_str(),
                  e.sampling_rate(), e.noise_multiplier(), static_cast<long long>(e.steps()), e.clip_norm(),
                  e.delta(), e.epsilon_after(), Time(e.recorded_unix_ms()).c_str());
      worst = std::max(worst, e.epsilon_after());
    }
    std::printf(
        "%zu entries; largest cumulative epsilon %.6f at delta %.2e (RDP accountant, Poisson-subsampled "
        "Gaussian, Balle et al. 2020 conversion)\n",
        entries->size(), worst, entries->back().delta());
    return 0;
  }
  if (*clients) {
    auto all = (*store)->ListClients();
    if (!all.ok()) return Fail(all.status());
    std::printf("%-40s %-16s %8s %8s %8s %-20s %s\n", "client", "name", "accepted", "refused", "strikes",
                "paused until", "refused by reason");
    for (const auto& c : *all) {
      std::string reasons;
      for (const auto& [reason, n] : c.rejected_by_reason()) {
        reasons += (reasons.empty() ? "" : ", ") + reason + " " + std::to_string(n);
      }
      std::printf("%-40s %-16s %8u %8u %8u %-20s %s\n", c.client_id().c_str(), c.name().c_str(),
                  c.updates_accepted(), c.updates_rejected(), c.strikes(),
                  c.paused_until_unix_ms() > 0 ? Time(c.paused_until_unix_ms()).c_str() : "-",
                  reasons.c_str());
    }
    std::printf("%zu devices\n", all->size());
    return 0;
  }
  if (*quarantine) {
    auto all = (*store)->ListQuarantine();
    if (!all.ok()) return Fail(all.status());
    for (const auto& q : *all) {
      std::string key;
      for (unsigned char ch : q.key()) key += std::isprint(ch) ? static_cast<char>(ch) : '.';
      std::printf("%s  %-8s key %s (%zu bytes): %s\n", Time(q.quarantined_unix_ms()).c_str(),
                  q.family().c_str(), key.c_str(), q.value().size(), q.reason().c_str());
    }
    std::printf("%zu quarantined records%s\n", all->size(),
                all->empty() ? "" : " (kept whole in the store's quarantine column family for inspection)");
    return 0;
  }
  if (*rounds) {
    auto all = (*store)->ListRounds();
    if (!all.ok()) return Fail(all.status());
    std::printf("%6s %-10s %8s %8s %10s %10s %10s %8s %s\n", "round", "outcome", "updates", "model",
                "train_loss", "test_acc", "fed_acc", "seconds", "note");
    for (const auto& r : *all) {
      const char* outcome = r.outcome() == records::RoundRecord::OUTCOME_COMPLETED ? "completed"
                            : r.outcome() == records::RoundRecord::OUTCOME_FAILED  ? "failed"
                                                                                   : "running";
      // fed_acc: the devices' held-out accuracy of the model the round started from.
      // test_acc "-": a round the aggregator did not evaluate (--eval-every).
      const bool evaluated = aggregator::RoundWasEvaluated(r);
      std::printf(
          "%6u %-10s %4d/%-3d %8llu %10.4f %10s %10s %8.1f %s\n", r.round(), outcome, r.received_size(),
          r.selected_size(), static_cast<unsigned long long>(r.result_model_version()), r.mean_train_loss(),
          evaluated ? std::to_string(r.test_accuracy()).substr(0, 6).c_str() : "-",
          r.federated_examples() > 0 ? std::to_string(r.federated_accuracy()).substr(0, 6).c_str() : "-",
          r.seconds(), r.note().c_str());
    }
    return 0;
  }
  if (*list) {
    std::printf("%8s %6s %8s %-6s %10s %10s %s\n", "version", "round", "parent", "arch", "train_loss",
                "test_acc", "created");
    auto summaries = (*store)->ListModelSummaries();  // the index: no model blob is read
    if (!summaries.ok()) return Fail(summaries.status());
    for (const auto& summary : *summaries) {
      const uint64_t v = summary.version();
      const records::ModelRecord* m = &summary;
      auto metric = [&](const char* k) {
        auto it = m->metrics().find(k);
        return it == m->metrics().end() ? NAN : it->second;
      };
      std::printf("%8llu %6u %8llu %-6s %10.4f %10.4f %s\n", static_cast<unsigned long long>(v), m->round(),
                  static_cast<unsigned long long>(m->parent_version()), m->arch().c_str(),
                  metric("train_loss"), metric("test_accuracy"), Time(m->created_unix_ms()).c_str());
    }
    std::printf("%zu versions, store %.1f MB\n", versions->size(), (*store)->ApproximateSize() / 1e6);
    return 0;
  }
  if (versions->empty()) return Fail(NotFound("the store holds no model"));
  if (version == 0) version = versions->back();
  auto model = (*store)->GetModel(version);
  if (!model.ok()) return Fail(model.status());
  auto weights = proto::WeightsFromProto(model->weights(), nullptr);
  if (!weights.ok()) return Fail(weights.status().WithContext("stored model"));
  if (*show) {
    const auto digest = privacy::ModelDigest(*weights);
    std::printf(
        "version %llu\nround %u\nparent %llu\narch %s\ncreated %s\nlayout %s\ndigest %s\nsignature %s\n",
        static_cast<unsigned long long>(version), model->round(),
        static_cast<unsigned long long>(model->parent_version()), model->arch().c_str(),
        Time(model->created_unix_ms()).c_str(), weights->layout->Describe().c_str(),
        privacy::HexEncode(digest.data(), digest.size()).c_str(),
        privacy::HexEncode(reinterpret_cast<const unsigned char*>(model->signature().data()),
                           model->signature().size())
            .c_str());
    for (const auto& [k, v] : model->metrics()) std::printf("metric %s %.6f\n", k.c_str(), v);
    for (const auto& t : weights->layout->tensors()) {
      std::printf("tensor %s [", t.name.c_str());
      for (size_t d = 0; d < t.shape.size(); ++d)
        std::printf("%s%lld", d ? "," : "", static_cast<long long>(t.shape[d]));
      std::printf("]\n");
    }
    if (!verify_key.empty()) {
      auto key = privacy::ReadSigningPublicFile(verify_key);
      if (!key.ok()) return Fail(key.status());
      Status st = model->federation().empty()
                      ? privacy::VerifyModelV1(*key, version, model->round(), digest, model->signature())
                      : privacy::VerifyModel(*key, model->federation(), version, model->round(), digest,
                                             model->signature());
      if (!st.ok()) return Fail(st);
      std::printf("signature verified with %s\n", verify_key.c_str());
    }
    return 0;
  }
  // export
  Status st = format == "raw" ? WriteRawWeights(out, *weights, model->arch(), version, model->round())
                              : training::ExportTorchModule(model->arch(), *weights, out);
  if (!st.ok()) return Fail(st);
  std::printf("exported model version %llu (%s, round %u) to %s\n", static_cast<unsigned long long>(version),
              format.c_str(), model->round(), out.c_str());
  return 0;
}
