// SecureRound: the aggregator's side of one secure-aggregation round, on top
// of privacy::SecAggServer. It maps client ids to SecAgg indices, holds each
// device's stage request until the stage closes (answering it then with the
// next stage's message), closes stages when everyone still in has answered
// or the stage deadline passes, and finally yields the dequantized sum of the
// survivors' updates. See docs/secure-aggregation.md for the message flow.
//
// Thread-safety: not thread-safe; owned by the aggregator's loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/status.h"
#include "privacy/secagg.h"
#include "proto/flotilla.pb.h"

namespace flotilla::aggregator {

// Secure aggregation for a deployment (--secagg). See
// docs/secure-aggregation.md for how to choose the parameters.
struct SecureAggregationConfig {
  bool enabled = false;
  privacy::SecAggGraph graph = privacy::SecAggGraph::kHarary;  // SecAgg+ by default
  uint32_t degree = 0;      // Harary graph degree; 0 = RecommendedHararyDegree(n)
  uint32_t threshold = 0;   // t; 0 = RecommendedThreshold(degree)
  uint32_t bit_width = 32;  // k: inputs and the sum live in Z_{2^k}
  // C for quantization when client-level DP is off (with DP, the DP clip
  // norm is used): updates are clipped to this L2 norm.
  double clip_norm = 10.0;
  // Each stage after the first (which waits for training, up to the round
  // deadline) closes after this long with whoever answered.
  double stage_timeout_seconds = 60.0;

  Status Validate() const;
};

class SecureRound {
 public:
  using Clock = std::chrono::steady_clock;
  struct Reply {
    std::string client_id;
    uint64_t request_id = 0;
    wire::Envelope envelope;
  };
  struct Options {
    uint32_t round = 0;
    std::vector<std::string> clients;                       // sorted; index = position
    std::vector<std::vector<unsigned char>> identity_keys;  // Ed25519, aligned with clients
    std::vector<std::string> identity_certs;                // enrolment certificates (or empty), aligned
    uint32_t vector_length = 0;
    double clip_norm = 1.0;
    // Per-client distributed DP noise, value units before the rounding
    // inflation (0 = none).
    double noise_stddev = 0.0;
    uint64_t graph_seed = 0;
    Clock::time_point advertise_deadline;  // end of stage 0 (training time)
  };

  // Validates the parameters (InvalidArgument saying what to change).
  static StatusOr<std::unique_ptr<SecureRound>> Start(const SecureAggregationConfig& config, Options options);

  const privacy::SecAggParams& params() const { return params_; }
  const privacy::QuantizationConfig& quantization() const { return quantization_; }
  // The setup to put in `client`'s TrainTask. REQUIRES: client is in the round.
  wire::SecAggSetup SetupFor(const std::string& client) const;
  bool Includes(const std::string& client) const { return index_.count(client) > 0; }
  // True once `client`'s advertisement was accepted (it must not be given
  // the task again: a second set of keys would be refused).
  bool Advertised(const std::string& client) const;

  // One SecAggMessage from `client`: the reply to send now, or nullopt
  // while the request is held until its stage closes.
  std::optional<wire::Envelope> Handle(const std::string& client, uint64_t request_id,
                                       const wire::SecAggMessage& message);

  // Closes every stage that is due (everyone still in answered, or the stage
  // deadline passed; `declined` devices are not waited for in stage 0) and
  // returns the replies for held requests. After the last stage, done() is
  // true and the sum is ready (or aborted() with the reason).
  std::vector<Reply> Advance(Clock::time_point now, const std::set<std::string>& declined);
  // Wait replies for requests held longer than `after`, so devices can tell
  // a live aggregator from a dead one.
  std::vector<Reply> Keepalive(Clock::time_point now, Clock::duration after);

  bool done() const { return stage_ == Stage::kDone; }
  bool aborted() const { return stage_ == Stage::kAborted; }
  const Status& abort_status() const { return abort_status_; }
  // Name of the open stage, for logs and status.
  const char* stage_name() const;
  // How many devices are still in (|U1|, |U2|, ... as the stages close).
  uint32_t remaining() const;

  // After done(): the survivors (U3) and the sum of their dequantized
  // updates (clipped delta plus their noise), in value units.
  const std::vector<std::string>& survivors() const { return survivors_; }
  std::vector<float> TakeSum() { return std::move(sum_); }

 private:
  enum class Stage { kAdvertise = 0, kShareKeys = 1, kMaskedInput = 2, kUnmask = 3, kDone = 4, kAborted = 5 };
  struct Held {
    uint64_t request_id = 0;
    Clock::time_point since;
  };

  SecureRound(privacy::SecAggServer server, Options options, privacy::QuantizationConfig quantization);
  // The stage-(s+1) message for a device whose stage-s message was accepted.
  wire::Envelope NextMessage(uint32_t index, uint32_t stage) const;
  wire::Envelope AbortError() const;
  Status CloseStage();
  void Abort(const Status& why);

  privacy::SecAggServer server_;
  privacy::SecAggParams params_;
  privacy::QuantizationConfig quantization_;
  Options options_;
  std::map<std::string, uint32_t> index_;
  std::vector<int> reached_;  // per index: last stage whose message was accepted (-1 none)
  std::map<uint32_t, Held> held_;
  Stage stage_ = Stage::kAdvertise;
  Clock::time_point stage_deadline_;
  Clock::duration stage_timeout_;
  Status abort_status_;
  std::vector<std::string> survivors_;
  std::vector<float> sum_;
};

}  // namespace flotilla::aggregator
