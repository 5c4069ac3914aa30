#include "aggregator/secure_round.h"

#include <cmath>

#include "core/log.h"
#include "proto/codec.h"

namespace flotilla::aggregator {
namespace {

std::string Str(uint64_t v) { return std::to_string(v); }

// Parses a stage payload as M, checks that it speaks for the sender's own
// index, and hands it to the server.
template <typename M>
Status HandleAs(const std::string& bytes, uint32_t index, privacy::SecAggServer* server,
                Status (privacy::SecAggServer::*handle)(const M&)) {
  ASSIGN_OR_RETURN(M message, M::Parse(bytes));
  if (message.sender != index) {
    return PermissionDenied("message for index " + Str(message.sender) + ", yours is " + Str(index));
  }
  return (server->*handle)(message);
}

// A stage message's wire bytes, or why it could not be made.
template <typename M>
StatusOr<std::string> SerializeOr(const StatusOr<M>& message) {
  if (!message.ok()) return message.status();
  return message->Serialize();
}

wire::Envelope MakeWait(const char* reason) {
  wire::Envelope env;
  env.mutable_wait()->set_retry_ms(0);
  env.mutable_wait()->set_reason(reason);
  return env;
}

}  // namespace

Status SecureAggregationConfig::Validate() const {
  if (!enabled) return Status::Ok();
  if (bit_width < 8 || bit_width > 32) return InvalidArgument("--secagg-bits must be 8..32");
  if (!(clip_norm > 0) || !std::isfinite(clip_norm)) return InvalidArgument("--secagg-clip must be positive");
  if (!(stage_timeout_seconds > 0)) return InvalidArgument("--secagg-stage-timeout must be positive");
  if (graph == privacy::SecAggGraph::kHarary && degree % 2 != 0) {
    return InvalidArgument("--secagg-degree must be even (a Harary graph H(n, d) with even d)");
  }
  return Status::Ok();
}

SecureRound::SecureRound(privacy::SecAggServer server, Options options,
                         privacy::QuantizationConfig quantization)
    : server_(std::move(server)),
      params_(server_.params()),
      quantization_(quantization),
      options_(std::move(options)) {
  for (uint32_t i = 0; i < options_.clients.size(); ++i) index_[options_.clients[i]] = i;
  reached_.assign(options_.clients.size(), -1);
  stage_deadline_ = options_.advertise_deadline;
}

StatusOr<std::unique_ptr<SecureRound>> SecureRound::Start(const SecureAggregationConfig& config,
                                                          Options options) {
  const auto n = static_cast<uint32_t>(options.clients.size());
  if (n < 2) {
    return InvalidArgument("secure aggregation needs at least 2 clients per round, this round has " + Str(n) +
                           " (raise --fraction or the number of clients)");
  }
  if (options.identity_keys.size() != n) return InvalidArgument("one identity key per client is required");
  privacy::SecAggParams p;
  p.num_clients = n;
  p.bit_width = config.bit_width;
  p.graph = config.graph;
  p.vector_length = options.vector_length;
  p.round = options.round;
  if (config.graph == privacy::SecAggGraph::kHarary) {
    p.degree =
        config.degree != 0 ? std::min(config.degree, (n - 1) / 2 * 2) : privacy::RecommendedHararyDegree(n);
    p.graph_seed = options.graph_seed;
    if (p.degree < 2 || p.degree >= n - 1) {
      // Too few clients for a sparse graph: the complete graph is the same thing.
      p.graph = privacy::SecAggGraph::kComplete;
      p.degree = 0;
      p.graph_seed = 0;
    }
  }
  p.threshold = config.threshold != 0 ? config.threshold : privacy::RecommendedThreshold(p.EffectiveDegree());
  RETURN_IF_ERROR(privacy::ValidateSecAggParams(p).WithContext("secure aggregation parameters"));

  // The quantization: the largest scale for which n clipped inputs (plus
  // their noise, with 10-sigma headroom) cannot wrap the modulus.
  privacy::QuantizationConfig q;
  q.clip_norm = options.clip_norm;
  q.bit_width = config.bit_width;
  q.num_clients = n;
  double noise = options.noise_stddev;
  q.scale = privacy::MaxSafeScale(q.clip_norm, q.bit_width, n, noise * 1.01);
  if (noise > 0) {
    // Stochastic rounding moves each coordinate by less than one level, so
    // it can grow the L2 norm by up to sqrt(length) / scale: noise is scaled
    // up by that factor so the sensitivity the accountant assumes still holds.
    const double inflation =
        1.0 + std::sqrt(static_cast<double>(options.vector_length)) / (q.scale * q.clip_norm);
    if (inflation > 1.01) {
      return InvalidArgument("quantization at " + Str(config.bit_width) + " bits is too coarse for " +
                             Str(n) + " clients with DP noise (rounding would add " +
                             std::to_string(100 * (inflation - 1)) +
                             "% to the sensitivity); use more --secagg-bits");
    }
    noise *= inflation;
  }
  q.noise_stddev = noise;
  RETURN_IF_ERROR(privacy::CheckQuantization(q).WithContext("secure aggregation quantization"));

  ASSIGN_OR_RETURN(privacy::SecAggServer server, privacy::SecAggServer::Create(p, options.identity_keys));
  std::unique_ptr<SecureRound> round(new SecureRound(std::move(server), std::move(options), q));
  round->stage_timeout_ = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(config.stage_timeout_seconds));
  return round;
}

wire::SecAggSetup SecureRound::SetupFor(const std::string& client) const {
  wire::SecAggSetup setup;
  setup.set_params(params_.Serialize());
  setup.set_index(index_.at(client));
  for (const auto& key : options_.identity_keys) setup.add_identity_keys(key.data(), key.size());
  for (const auto& cert : options_.identity_certs) setup.add_identity_certs(cert);
  setup.set_clip_norm(quantization_.clip_norm);
  setup.set_scale(quantization_.scale);
  setup.set_noise_stddev(quantization_.noise_stddev);
  return setup;
}

bool SecureRound::Advertised(const std::string& client) const {
  auto it = index_.find(client);
  return it != index_.end() && reached_[it->second] >= 0;
}

const char* SecureRound::stage_name() const {
  switch (stage_) {
    case Stage::kAdvertise:
      return "advertise-keys";
    case Stage::kShareKeys:
      return "share-keys";
    case Stage::kMaskedInput:
      return "masked-input";
    case Stage::kUnmask:
      return "unmasking";
    case Stage::kDone:
      return "done";
    case Stage::kAborted:
      return "aborted";
  }
  return "unknown";
}

uint32_t SecureRound::remaining() const {
  const int s = static_cast<int>(stage_);
  uint32_t count = 0;
  for (int r : reached_) count += (stage_ == Stage::kAdvertise || r >= s - 1) ? 1 : 0;
  return count;
}

wire::Envelope SecureRound::AbortError() const {
  return proto::MakeError(wire::ERROR_WRONG_ROUND, "secure aggregation for round " + Str(options_.round) +
                                                       " aborted: " + std::string(abort_status_.message()));
}

wire::Envelope SecureRound::NextMessage(uint32_t index, uint32_t stage) const {
  wire::Envelope env;
  wire::SecAggMessage* m = env.mutable_secagg();
  m->set_round(options_.round);
  m->set_stage(stage + 1);
  // Stage 3 answered: done, empty payload.
  const StatusOr<std::string> payload = stage == 0   ? SerializeOr(server_.RosterFor(index))
                                        : stage == 1 ? SerializeOr(server_.SharesFor(index))
                                        : stage == 2 ? SerializeOr(server_.UnmaskRequestFor(index))
                                                     : StatusOr<std::string>(std::string());
  if (!payload.ok()) return proto::MakeError(wire::ERROR_INTERNAL, std::string(payload.status().message()));
  m->set_payload(*payload);
  return env;
}

std::optional<wire::Envelope> SecureRound::Handle(const std::string& client, uint64_t request_id,
                                                  const wire::SecAggMessage& message) {
  auto it = index_.find(client);
  if (it == index_.end()) {
    return proto::MakeError(wire::ERROR_WRONG_ROUND,
                            "client is not in the secure aggregation of round " + Str(options_.round));
  }
  const uint32_t index = it->second;
  if (stage_ == Stage::kAborted) return AbortError();
  const uint32_t s = message.stage();
  if (s > 3)
    return proto::MakeError(wire::ERROR_MALFORMED, "secure aggregation stage " + Str(s) + " does not exist");
  const int current = static_cast<int>(stage_);  // kDone = 4
  const bool accepted_before = reached_[index] >= static_cast<int>(s);
  if (static_cast<int>(s) > current) {
    return proto::MakeError(
        wire::ERROR_UNEXPECTED,
        "secure aggregation is at stage " + std::string(stage_name()) + ", not stage " + Str(s) + " yet");
  }
  if (static_cast<int>(s) < current) {
    // That stage has closed: answer from its outcome.
    if (accepted_before) return NextMessage(index, s);
    return proto::MakeError(wire::ERROR_WRONG_ROUND, "secure aggregation stage " + Str(s) + " of round " +
                                                         Str(options_.round) + " closed without this client");
  }
  // The open stage.
  if (message.payload().empty()) {
    if (!accepted_before) {
      return proto::MakeError(wire::ERROR_NOT_FOUND,
                              "no stage " + Str(s) + " message from this client; send it");
    }
  } else if (!accepted_before) {
    const std::string& bytes = message.payload();
    using privacy::SecAggServer;
    Status st = s == 0   ? HandleAs(bytes, index, &server_, &SecAggServer::HandleAdvertiseKeys)
                : s == 1 ? HandleAs(bytes, index, &server_, &SecAggServer::HandleShareKeys)
                : s == 2 ? HandleAs(bytes, index, &server_, &SecAggServer::HandleMaskedInput)
                         : HandleAs(bytes, index, &server_, &SecAggServer::HandleUnmask);
    if (!st.ok() && st.code() != StatusCode::kAlreadyExists) {
      LOG_WARN("aggregator", "secure aggregation round " << options_.round << ": refused stage " << s
                                                         << " from '" << client << "': " << st.message());
      return proto::MakeError(
          st.code() == StatusCode::kPermissionDenied ? wire::ERROR_PERMISSION_DENIED : wire::ERROR_BAD_UPDATE,
          std::string(st.message()));
    }
    reached_[index] = static_cast<int>(s);
  }
  // The unmasking answer completes this device's part.
  if (s == 3) return NextMessage(index, 3);
  held_[index] = Held{request_id, Clock::now()};
  return std::nullopt;
}

void SecureRound::Abort(const Status& why) {
  stage_ = Stage::kAborted;
  abort_status_ = why;
  LOG_WARN("aggregator", "secure aggregation for round " << options_.round << " aborted: " << why.message());
}

Status SecureRound::CloseStage() {
  switch (stage_) {
    case Stage::kAdvertise:
      RETURN_IF_ERROR(server_.EndAdvertiseKeys());
      break;
    case Stage::kShareKeys:
      RETURN_IF_ERROR(server_.EndShareKeys());
      break;
    case Stage::kMaskedInput:
      RETURN_IF_ERROR(server_.EndMaskedInput());
      break;
    case Stage::kUnmask: {
      ASSIGN_OR_RETURN(std::vector<uint32_t> sum, server_.Finish());
      const std::vector<uint32_t> survivors = server_.Survivors();
      ASSIGN_OR_RETURN(sum_,
                       privacy::Dequantize(sum, static_cast<uint32_t>(survivors.size()), quantization_));
      for (uint32_t i : survivors) survivors_.push_back(options_.clients[i]);
      break;
    }
    default:
      return Status::Ok();
  }
  stage_ = static_cast<Stage>(static_cast<int>(stage_) + 1);
  return Status::Ok();
}

std::vector<SecureRound::Reply> SecureRound::Advance(Clock::time_point now,
                                                     const std::set<std::string>& declined) {
  std::vector<Reply> replies;
  while (stage_ != Stage::kDone && stage_ != Stage::kAborted) {
    const int s = static_cast<int>(stage_);
    // Who we still wait for: everyone in the previous set who has not answered.
    bool all_in = true;
    for (uint32_t i = 0; i < reached_.size() && all_in; ++i) {
      const bool in_set = s == 0 ? !declined.count(options_.clients[i]) : reached_[i] >= s - 1;
      if (in_set && reached_[i] < s) all_in = false;
    }
    if (!all_in && now < stage_deadline_) break;
    const Stage closing = stage_;
    if (Status st = CloseStage(); !st.ok()) {
      Abort(st);
      break;
    }
    LOG_DEBUG("aggregator", "secure aggregation round " << options_.round << ": stage " << s << " closed, "
                                                        << remaining() << " clients remain");
    stage_deadline_ = now + stage_timeout_;
    // Answer the held stage-s requests.
    for (auto it = held_.begin(); it != held_.end();) {
      if (reached_[it->first] == static_cast<int>(closing)) {
        replies.push_back(
            Reply{options_.clients[it->first], it->second.request_id, NextMessage(it->first, s)});
        it = held_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (stage_ == Stage::kAborted) {
    for (const auto& [index, held] : held_)
      replies.push_back(Reply{options_.clients[index], held.request_id, AbortError()});
    held_.clear();
  }
  return replies;
}

std::vector<SecureRound::Reply> SecureRound::Keepalive(Clock::time_point now, Clock::duration after) {
  std::vector<Reply> replies;
  for (auto it = held_.begin(); it != held_.end();) {
    if (now - it->second.since > after) {
      replies.push_back(Reply{options_.clients[it->first], it->second.request_id,
                              MakeWait("secure aggregation: waiting for the other clients")});
      it = held_.erase(it);
    } else {
      ++it;
    }
  }
  return replies;
}

}  // namespace flotilla::aggregator
