// flotilla dp: (epsilon, delta) of DP-SGD / DP-FedAvg training with
// the subsampled Gaussian mechanism, or the noise multiplier needed for a
// target epsilon. Counterpart of TF Privacy's compute_dp_sgd_privacy.
//
// Exit codes: 0 success, 1 computation failed (e.g. target unreachable),
// 2 bad usage (missing, contradictory or out-of-range flags).
#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/status.h"
#include "privacy/rdp_accountant.h"

namespace flotilla::privacy {
namespace {

// Flags as given; zero counts mean "not given".
struct Options {
  int64_t n = 0;
  int64_t batch = 0;
  double q = 0.0;
  int64_t steps = 0;
  double epochs = 0.0;
  double noise = 0.0;
  double target_epsilon = 0.0;
  double delta = 0.0;
  bool json = false;

  bool has_n = false;
  bool has_batch = false;
  bool has_q = false;
  bool has_steps = false;
  bool has_epochs = false;
  bool has_noise = false;
  bool has_target_epsilon = false;
  bool has_delta = false;
};

// What the tool computed, for printing.
struct Report {
  bool solved_for_noise = false;  // mode 2
  double q = 0.0;
  int64_t steps = 0;
  double noise = 0.0;
  PrivacySpent spent;
  bool order_at_edge = false;  // best order is the smallest or largest usable
};

// Shortest representation that reads back as the same double.
std::string Num(double v) {
  char buf[64];
  const std::to_chars_result result = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, result.ptr);
}

// Resolves the sampling rate and number of steps from the flags.
// Fails with InvalidArgument on missing, contradictory or out-of-range flags.
Status ResolveSampling(const Options& o, double* q, int64_t* steps) {
  if (o.has_q && (o.has_n || o.has_batch)) {
    return InvalidArgument("give either --q or --n and --batch, not both");
  }
  if (o.has_n != o.has_batch) {
    return InvalidArgument("--n and --batch must be given together");
  }
  if (!o.has_q && !o.has_n) {
    return InvalidArgument("missing sampling rate: give --n and --batch, or --q");
  }
  if (o.has_steps && o.has_epochs) {
    return InvalidArgument("give either --steps or --epochs, not both");
  }
  if (!o.has_steps && !o.has_epochs) {
    return InvalidArgument("missing training length: give --epochs or --steps");
  }
  if (o.has_n) {
    if (o.n <= 0) return InvalidArgument("--n must be > 0");
    if (o.batch <= 0 || o.batch > o.n) {
      return InvalidArgument("--batch must be in [1, --n]");
    }
    *q = static_cast<double>(o.batch) / static_cast<double>(o.n);
  } else {
    if (!std::isfinite(o.q) || !(o.q > 0.0) || o.q > 1.0) {
      return InvalidArgument("--q must be in (0, 1], got " + Num(o.q));
    }
    *q = o.q;
  }
  if (o.has_steps) {
    if (o.steps < 0) return InvalidArgument("--steps must be >= 0");
    *steps = o.steps;
    return Status::Ok();
  }
  if (!std::isfinite(o.epochs) || o.epochs < 0.0) {
    return InvalidArgument("--epochs must be finite and >= 0");
  }
  // As TF Privacy: steps = ceil(epochs * n / batch); with --q, epochs / q.
  // The small slack keeps 15 / 0.0025 from rounding up to 6001.
  const double exact =
      o.has_n ? o.epochs * static_cast<double>(o.n) / static_cast<double>(o.batch) : o.epochs / *q;
  if (exact > 9e15) return InvalidArgument("too many steps");
  *steps = static_cast<int64_t>(std::ceil(exact * (1.0 - 1e-12)));
  return Status::Ok();
}

// Computes the report for the flags. Fails with InvalidArgument on bad usage,
// with OutOfRange if the target epsilon is unreachable.
StatusOr<Report> Run(const Options& o) {
  if (o.has_noise == o.has_target_epsilon) {
    return InvalidArgument(o.has_noise ? "give either --noise or --target-epsilon, not both"
                                       : "give --noise (to compute epsilon) or --target-epsilon "
                                         "(to compute the noise multiplier)");
  }
  if (!o.has_delta) return InvalidArgument("missing --delta, e.g. --delta 1e-5");
  Report report;
  RETURN_IF_ERROR(ResolveSampling(o, &report.q, &report.steps));
  const std::vector<double> orders = DefaultRdpOrders();
  if (o.has_target_epsilon) {
    report.solved_for_noise = true;
    ASSIGN_OR_RETURN(report.noise,
                     ComputeNoiseMultiplier(report.q, report.steps, o.target_epsilon, o.delta, orders));
  } else {
    report.noise = o.noise;
  }
  ASSIGN_OR_RETURN(std::vector<double> rdp, ComputeRdp(report.q, report.noise, report.steps, orders));
  ASSIGN_OR_RETURN(report.spent, GetPrivacySpent(orders, rdp, o.delta));
  report.order_at_edge = std::isfinite(report.spent.epsilon) && report.spent.epsilon > 0.0 &&
                         (report.spent.order == orders.back() || report.spent.order == orders.front());
  return report;
}

std::string JsonNumber(double v) { return std::isfinite(v) ? Num(v) : "null"; }

void Print(const Report& r, bool json) {
  if (json) {
    std::printf(
        "{\"epsilon\": %s, \"delta\": %s, \"best_order\": %s, "
        "\"noise_multiplier\": %s, \"q\": %s, \"steps\": %lld}\n",
        JsonNumber(r.spent.epsilon).c_str(), Num(r.spent.delta).c_str(), JsonNumber(r.spent.order).c_str(),
        Num(r.noise).c_str(), Num(r.q).c_str(), static_cast<long long>(r.steps));
    return;
  }
  if (r.solved_for_noise) {
    std::printf("noise_multiplier: %s\n", Num(r.noise).c_str());
  }
  std::printf("epsilon: %s\n", Num(r.spent.epsilon).c_str());
  std::printf("delta: %s\n", Num(r.spent.delta).c_str());
  std::printf("best_order: %s\n", Num(r.spent.order).c_str());
  if (!r.solved_for_noise) {
    std::printf("noise_multiplier: %s\n", Num(r.noise).c_str());
  }
  std::printf("q: %s\n", Num(r.q).c_str());
  std::printf("steps: %lld\n", static_cast<long long>(r.steps));
  if (r.order_at_edge) {
    std::fprintf(stderr,
                 "note: the best RDP order is at the end of the order list; "
                 "epsilon may be loose\n");
  }
}

}  // namespace
}  // namespace flotilla::privacy

int flotilla::cli::DpMain(int argc, char** argv, const FlagOrigins& /*origins*/) {
  using flotilla::StatusCode;
  namespace privacy = flotilla::privacy;
  privacy::Options o;
  CLI::App app{
      "flotilla dp: privacy of training with the Poisson-subsampled "
      "Gaussian mechanism (DP-SGD, DP-FedAvg), by RDP accounting (Mironov et "
      "al. 2019) and the RDP-to-(epsilon, delta) conversion of Balle et al. "
      "2020, as in TF Privacy and Opacus.\n"
      "Mode 1: --noise gives epsilon and the best RDP order.\n"
      "Mode 2: --target-epsilon gives the smallest noise multiplier reaching "
      "it.\n"
      "Sampling: --n and --batch, or --q. Length: --epochs or --steps.\n"
      "Exit codes: 0 ok, 1 computation failed, 2 bad usage."};
  auto* n = app.add_option("--n", o.n, "Number of examples in the dataset (with --batch)");
  auto* batch =
      app.add_option("--batch", o.batch, "Expected batch size; sampling rate q = batch / n (with --n)");
  auto* q = app.add_option("--q", o.q, "Sampling rate in (0, 1], instead of --n/--batch");
  auto* epochs = app.add_option("--epochs", o.epochs,
                                "Training epochs; steps = ceil(epochs * n / batch) or ceil(epochs / q)");
  auto* steps = app.add_option("--steps", o.steps, "Number of noisy steps, instead of --epochs");
  auto* noise = app.add_option("--noise", o.noise,
                               "Noise multiplier (noise stddev / clipping norm); mode 1: compute epsilon");
  auto* target = app.add_option("--target-epsilon", o.target_epsilon,
                                "Target epsilon > 0; mode 2: compute the noise multiplier");
  auto* delta =
      app.add_option("--delta", o.delta, "Target delta in (0, 1), e.g. 1e-5; typically below 1/n (required)");
  app.add_flag("--json", o.json, "Print one JSON object instead of key: value lines");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "flotilla dp: %s\nRun with --help for usage.\n", e.what());
    return 2;
  }
  o.has_n = n->count() > 0;
  o.has_batch = batch->count() > 0;
  o.has_q = q->count() > 0;
  o.has_epochs = epochs->count() > 0;
  o.has_steps = steps->count() > 0;
  o.has_noise = noise->count() > 0;
  o.has_target_epsilon = target->count() > 0;
  o.has_delta = delta->count() > 0;

  auto report = privacy::Run(o);
  if (!report.ok()) {
    std::fprintf(stderr, "flotilla dp: %s\n", report.status().message().c_str());
    return report.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  privacy::Print(*report, o.json);
  return 0;
}
