#include "aggregator/server.h"

#include <algorithm>
#include <cmath>

#include "aggregator/strategy.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/rng.h"
#include "privacy/clipping.h"
#include "privacy/noise.h"
#include "privacy/signing.h"
#include "proto/codec.h"

namespace flotilla::aggregator {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(50);
// A held TaskRequest is answered with Wait after this long, so clients can
// tell a live aggregator from a dead one.
constexpr auto kParkKeepalive = std::chrono::seconds(5);

uint64_t HashString(const std::string& s) { return DeriveSeed(0, s); }

}  // namespace

StatusOr<std::unique_ptr<Aggregator>> Aggregator::Create(const AggregatorConfig& given, net::Context* context,
                                                         Weights initial, EvalFn eval, RoundFn on_round,
                                                         std::unique_ptr<Store> store) {
  RETURN_IF_ERROR(given.Validate());
  AggregatorConfig config = given;
  if (config.secagg.enabled && config.dp.mode == DpConfig::Mode::kClientCentral) {
    // The aggregator never sees an individual update, so it cannot clip
    // them; each device clips and adds its share of the noise instead. The
    // accounting is the same.
    LOG_INFO("aggregator", "secure aggregation: central DP noise is replaced by distributed noise from the devices");
    config.dp.mode = DpConfig::Mode::kClientDistributed;
  }
  RETURN_IF_ERROR(initial.Validate().WithContext("initial model"));
  if (!store) {
    ASSIGN_OR_RETURN(store, Store::Open(config.store_path));
  }
  store->set_min_free_bytes(config.store_min_free_bytes);
  std::unique_ptr<net::ZapHandler> zap;
  if (config.socket.security == net::TransportSecurity::kCurve) {
    std::set<std::string> allowed = config.allowed_clients;
    if (!config.allowlist_path.empty()) {
      ASSIGN_OR_RETURN(std::set<std::string> from_file, net::ReadAllowlist(config.allowlist_path));
      allowed.insert(from_file.begin(), from_file.end());
    }
    // The handler must run before the socket binds (see net/zap.h).
    ASSIGN_OR_RETURN(zap, net::ZapHandler::Start(context, config.socket.zap_domain, std::move(allowed)));
  } else {
    LOG_WARN("aggregator", "INSECURE MODE: no encryption and no client allowlist. Use only for local debugging.");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<net::ServerSocket> socket,
                   net::ServerSocket::Bind(context, config.endpoint, config.socket));
  std::unique_ptr<Aggregator> agg(new Aggregator(config, std::move(store), std::move(zap), std::move(socket),
                                                 std::move(initial), std::move(eval), std::move(on_round)));
  if (!config.allowlist_path.empty()) {
    std::error_code ec;
    agg->allowlist_mtime_ = std::filesystem::last_write_time(config.allowlist_path, ec);
  }
  RETURN_IF_ERROR(agg->Recover());
  return agg;
}

Aggregator::Aggregator(const AggregatorConfig& config, std::unique_ptr<Store> store,
                       std::unique_ptr<net::ZapHandler> zap, std::unique_ptr<net::ServerSocket> socket,
                       Weights initial, EvalFn eval, RoundFn on_round)
    : config_(config),
      store_(std::move(store)),
      zap_(std::move(zap)),
      socket_(std::move(socket)),
      initial_(std::move(initial)),
      eval_(std::move(eval)),
      on_round_(std::move(on_round)),
      clients_(ClientRegistry::PausePolicy{config.pause_after_strikes, config.pause_seconds, config.max_pause_seconds}),
      norm_history_(config.validation.norm.window),
      backoff_(config.failed_round_backoff_seconds, config.max_failed_round_backoff_seconds),
      limits_(config.limits.Resolved(static_cast<uint64_t>(initial_.data.size()) * sizeof(float))) {}

Aggregator::~Aggregator() {
  socket_.reset();  // close the socket before its authenticator
  zap_.reset();
}

Status Aggregator::Recover() {
  RegistryOptions options;
  options.federation = config_.federation;
  options.arch = config_.model_arch;
  options.store_path = config_.store_path;
  options.signing_key = config_.signing_key;
  options.retain_last = config_.retain_last;
  options.retain_every = config_.retain_every;
  ASSIGN_OR_RETURN(registry_, ModelRegistry::Recover(options, store_.get(), std::move(initial_)));
  global_norm_ = L2Norm(global().data);

  // Records that no longer parse are moved aside, not tripped over.
  std::vector<std::string> bad_clients, bad_rounds;
  ASSIGN_OR_RETURN(std::vector<records::ClientRecord> known, store_->ListClients(&bad_clients));
  ASSIGN_OR_RETURN(std::vector<records::RoundRecord> rounds, store_->ListRounds(&bad_rounds));
  RETURN_IF_ERROR(QuarantineCorrupt(bad_clients, bad_rounds));

  // The sampling population: every client that ever said Hello here. They
  // reconnect on their own; their routing ids are learned again then.
  clients_.Restore(known, Clock::now(), NowUnixMs());

  // The norm bound's history: the accepted norms of the latest rounds,
  // oldest first.
  size_t first = rounds.size(), norms = 0;
  while (first > 0 && norms < static_cast<size_t>(config_.validation.norm.window)) {
    norms += static_cast<size_t>(rounds[--first].update_norms_size());
  }
  for (size_t i = first; i < rounds.size(); ++i) {
    for (float n : rounds[i].update_norms()) norm_history_.Add(n);
  }
  const records::RoundRecord* running = nullptr;
  for (const auto& r : rounds) {
    round_ = std::max(round_, r.round());
    if (r.outcome() == records::RoundRecord::OUTCOME_COMPLETED) ++rounds_done_;
    if (r.outcome() == records::RoundRecord::OUTCOME_RUNNING) running = &r;
  }
  if (running != nullptr && running->round() == round_ && running->secure_aggregation()) {
    // Secure aggregation keeps its keys and shares in memory only. The round
    // is not resumed: a new round starts with fresh keys (resuming with the
    // same masks and new inputs would leak their difference).
    RoundCommit failed;
    failed.round = *running;
    failed.round.set_outcome(records::RoundRecord::OUTCOME_FAILED);
    failed.round.set_note("interrupted by an aggregator restart during secure aggregation; not resumed");
    RETURN_IF_ERROR(store_->CommitRound(failed));
    LOG_WARN("aggregator", "round " << round_ << " was running secure aggregation when the aggregator stopped; "
                                    << "recorded as failed, the next round starts with fresh keys");
    running = nullptr;
  }
  if (running != nullptr && running->round() == round_) {
    if (running->base_model_version() != registry_->version()) {
      // Cannot happen with atomic commits; refuse to guess.
      return DataLoss("round " + std::to_string(round_) + " was running on model " +
                      std::to_string(running->base_model_version()) + " but the latest model is " +
                      std::to_string(registry_->version()));
    }
    selected_.assign(running->selected().begin(), running->selected().end());
    std::sort(selected_.begin(), selected_.end());
    round_q_ = running->sampling_rate();
    RETURN_IF_ERROR(RecoverUpdates());
    round_active_ = true;
    const auto now = Clock::now();
    const double elapsed = std::max(0.0, (NowUnixMs() - running->started_unix_ms()) / 1000.0);
    round_started_ = now - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(elapsed));
    const auto original_deadline =
        round_started_ + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(config_.round_deadline_seconds));
    if (original_deadline > now) {
      round_deadline_ = original_deadline;
    } else if (config_.deadline_policy == AggregatorConfig::DeadlinePolicy::kClose) {
      round_deadline_ = now;
    } else {
      round_deadline_ = now + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(config_.round_deadline_seconds));
    }
    LOG_INFO("aggregator", "resuming round " << round_ << " with " << received_.size() << "/" << selected_.size()
                                             << " updates already recorded");
  }
  RETURN_IF_ERROR(RecoverLedger(rounds));
  LOG_INFO("aggregator", "recovered model version " << registry_->version() << " after " << rounds_done_
                                                    << " completed rounds; " << clients_.size() << " known clients");
  return Status::Ok();
}

Status Aggregator::QuarantineCorrupt(const std::vector<std::string>& bad_clients,
                                     const std::vector<std::string>& bad_rounds) {
  for (const auto& id : bad_clients) {
    RETURN_IF_ERROR(store_->QuarantineClient(id, "client record does not parse"));
    LOG_ERROR("aggregator", "quarantined a corrupt client record (see flotilla registry quarantine)");
  }
  for (const auto& key : bad_rounds) {
    RETURN_IF_ERROR(store_->QuarantineRound(key, "round record does not parse"));
    LOG_ERROR("aggregator", "quarantined a corrupt round record (see flotilla registry quarantine)");
  }
  return Status::Ok();
}

// Replays the running round's stored updates through the same validation
// as on arrival; what fails (an update an earlier version accepted, bytes
// that no longer parse) is quarantined instead of poisoning the merge.
Status Aggregator::RecoverUpdates() {
  std::vector<std::string> corrupt;
  std::vector<std::pair<std::string, std::string>> refused;  // client id, why
  RETURN_IF_ERROR(store_->ForEachUpdate(
      round_,
      [&](const records::UpdateRecord& u) -> Status {
        if (!std::binary_search(selected_.begin(), selected_.end(), u.client_id())) {
          refused.emplace_back(u.client_id(), "the client was not selected for round " + std::to_string(round_));
          return Status::Ok();
        }
        const UpdateVerdict verdict = ValidateUpdate(u.delta(), u.num_examples(), ExpectationNow());
        if (!verdict.accepted()) {
          refused.emplace_back(u.client_id(), verdict.reason + ": " + verdict.message);
          return Status::Ok();
        }
        norm_history_.Add(verdict.norm);
        round_norms_[u.client_id()] = verdict.norm;
        NoteRecorded(u.client_id(), u.num_examples(), u.metrics());
        return Status::Ok();
      },
      &corrupt));
  for (const auto& id : corrupt) refused.emplace_back(id, "update record does not parse");
  for (const auto& [id, why] : refused) {
    RETURN_IF_ERROR(store_->QuarantineUpdate(round_, id, "failed validation on replay: " + why));
    LOG_ERROR("aggregator", "round " << round_ << ": quarantined the stored update from '" << id
                                     << "' (failed validation on replay: " << why
                                     << "); see flotilla registry quarantine");
  }
  return Status::Ok();
}

UpdateExpectation Aggregator::ExpectationNow() const {
  UpdateExpectation e;
  e.layout = global().layout;
  e.max_norm = norm_history_.Bound(config_.validation.norm, global_norm_);
  e.max_examples = config_.validation.max_examples_per_update;
  return e;
}

Status Aggregator::RecoverLedger(const std::vector<records::RoundRecord>& rounds) {
  std::vector<records::LedgerEntry> ledger;
  if (config_.dp.enabled()) {
    ASSIGN_OR_RETURN(ledger, store_->ListLedger());
  }
  ASSIGN_OR_RETURN(PrivacyBudget budget, PrivacyBudget::Recover(config_.dp, config_.epochs,
                                                                config_.fraction * config_.min_clients, ledger, rounds));
  budget_.emplace(std::move(budget));
  return Status::Ok();
}

void Aggregator::MaybeReloadAllowlist() {
  if (!zap_ || config_.allowlist_path.empty()) return;
  const auto now = Clock::now();
  bool reload = reload_.exchange(false);
  if (!reload && now - last_allowlist_check_ < std::chrono::seconds(1)) return;
  last_allowlist_check_ = now;
  std::error_code ec;
  const auto mtime = std::filesystem::last_write_time(config_.allowlist_path, ec);
  if (!reload && !ec && allowlist_mtime_ && mtime == *allowlist_mtime_) return;
  if (!ec) allowlist_mtime_ = mtime;
  StatusOr<std::set<std::string>> allowed = net::ReadAllowlist(config_.allowlist_path);
  if (!allowed.ok()) {
    LOG_ERROR("aggregator", "allowlist not reloaded, keeping the previous one: " << allowed.status().message());
    return;
  }
  allowed->insert(config_.allowed_clients.begin(), config_.allowed_clients.end());
  LOG_INFO("aggregator", "allowlist reloaded: " << allowed->size() << " client keys");
  zap_->SetAllowed(std::move(allowed).value());
}

const std::string& Aggregator::endpoint() const { return socket_->endpoint(); }

Status Aggregator::Run() {
  LOG_INFO("aggregator", "serving '" << config_.federation << "' on " << endpoint() << ": " << config_.rounds
                                     << " rounds of " << config_.model_arch << " ("
                                     << global().layout->Describe() << "), waiting for " << config_.min_clients
                                     << " clients");
  while (!stop_.load()) {
    ASSIGN_OR_RETURN(std::optional<net::Incoming> in, socket_->Receive(kPollInterval));
    if (in) {
      RETURN_IF_ERROR(Step(*in));
    } else {
      RETURN_IF_ERROR(MaybeStartRound());
      RETURN_IF_ERROR(MaybeFinishRound());
    }
    AnswerParked(/*keepalive_only=*/true);
    MaybeReloadAllowlist();
    if (federation_done()) {
      const auto now = Clock::now();
      if (!finished_at_) {
        finished_at_ = now;
        AnswerParked(false);
      }
      bool all_told = std::all_of(clients_.begin(), clients_.end(), [](const auto& kv) {
        return kv.second.told_finished || kv.second.peer.empty();  // never reconnected since a restart
      });
      if (!config_.keep_serving &&
          (all_told || now - *finished_at_ > std::chrono::duration<double>(config_.finish_grace_seconds))) {
        break;
      }
    }
  }
  LOG_INFO("aggregator", "stopped after " << rounds_done_ << " rounds; final model version " << registry_->version());
  return Status::Ok();
}

void Aggregator::NoteRecorded(const std::string& client_id, int64_t num_examples,
                              const google::protobuf::Map<std::string, double>& metrics) {
  received_.insert(client_id);
  if (auto steps = metrics.find("dpsgd_steps"); steps != metrics.end()) {
    dp_steps_[client_id] = static_cast<int64_t>(std::min(steps->second, 1e12));
  }
  if (auto bit = metrics.find("below_clip"); bit != metrics.end()) below_clip_[client_id] = bit->second >= 0.5 ? 1 : 0;
  auto loss = metrics.find("train_loss");
  train_loss_[client_id] = {num_examples, loss != metrics.end() ? loss->second : 0.0};
}

Status Aggregator::Step(const net::Incoming& in) {
  RETURN_IF_ERROR(HandleMessage(in));
  RETURN_IF_ERROR(MaybeStartRound());
  return MaybeFinishRound();
}

std::vector<std::string> Aggregator::client_ids() const {
  std::vector<std::string> ids;
  for (const auto& kv : clients_) ids.push_back(kv.first);
  return ids;
}

Status Aggregator::HandleMessage(const net::Incoming& in) {
  ++messages_handled_;
  const auto now = Clock::now();
  // The device's identity for its limits and its queued-bytes account: the
  // authenticated key, or the connection without CURVE.
  const std::string& tag = in.user_id.empty() ? in.peer : in.user_id;
  if (now - last_limits_prune_ > std::chrono::seconds(5)) {
    limits_.Prune(now);
    last_limits_prune_ = now;
  }
  const PeerLimits::Admission admission = limits_.Admit(tag, in.payload.size(), now);
  if (!admission.admitted) {
    ++rejected_messages_;
    const uint64_t id = proto::DescribeParseFailure(in.payload.data(), in.payload.size(), Status::Ok()).request_id;
    const std::string why = admission.limit == "refused"
                                ? "this device is over its message limits; refused for a while"
                                : "this device sent more " + admission.limit + " than its limit";
    LogRejection(tag, "rate_limited", why);
    ReplyError(in.peer, tag, id, wire::ERROR_RATE_LIMITED, why + "; retry later",
               static_cast<uint32_t>(std::ceil(admission.retry_seconds * 1000)));
    return Status::Ok();
  }
  StatusOr<wire::Envelope> parsed = proto::ParseEnvelope(in.payload.data(), in.payload.size());
  if (!parsed.ok()) {
    ++rejected_messages_;
    const proto::ParseFailure failure =
        proto::DescribeParseFailure(in.payload.data(), in.payload.size(), parsed.status());
    LogRejection(tag, failure.code == wire::ERROR_VERSION ? "version" : "malformed",
                 std::string(parsed.status().message()));
    ReplyError(in.peer, tag, failure.request_id, failure.code, parsed.status().message());
    return Status::Ok();
  }
  const wire::Envelope& env = *parsed;
  // A key removed from the allowlist loses access at once, on every
  // message, not only on its next connection.
  if (zap_ && !zap_->IsAllowed(in.user_id)) {
    ++rejected_messages_;
    LogRejection(tag, "revoked", "a message from a key no longer on the allowlist");
    ReplyError(in.peer, tag, env.request_id(), wire::ERROR_PERMISSION_DENIED, "this client key is no longer allowed");
    return Status::Ok();
  }
  switch (env.body_case()) {
    case wire::Envelope::kHello:
      return HandleHello(in, env);
    // Status and pull need no Hello, only an enrolled key.
    case wire::Envelope::kStatusRequest:
      HandleStatus(in, env.request_id());
      return Status::Ok();
    case wire::Envelope::kPullRequest:
      HandlePull(in, env);
      return Status::Ok();
    default:
      break;
  }
  // Identity: the transport-authenticated key when there is one, else the
  // client that said Hello from this routing id.
  std::string client_id;
  if (zap_) {
    client_id = in.user_id;
    auto it = clients_.find(client_id);
    if (it == clients_.end()) {
      client_id.clear();
    } else {
      it->second.peer = in.peer;  // replies go to the connection the key spoke on
    }
  } else {
    client_id = clients_.FindByPeer(in.peer);
  }
  if (client_id.empty()) {
    ReplyError(in.peer, tag, env.request_id(), wire::ERROR_NOT_REGISTERED, "send Hello first");
    return Status::Ok();
  }
  switch (env.body_case()) {
    case wire::Envelope::kTaskRequest:
      HandleTaskRequest(client_id, env.request_id());
      return Status::Ok();
    case wire::Envelope::kUpdate:
      return HandleUpdate(client_id, env);
    case wire::Envelope::kSecagg:
      HandleSecAgg(client_id, env);
      return Status::Ok();
    case wire::Envelope::kDecline: {
      const uint32_t r = env.decline().round();
      if (round_active_ && r == round_ && std::binary_search(selected_.begin(), selected_.end(), client_id) &&
          !received_.count(client_id) && !declined_.count(client_id)) {
        declined_.insert(client_id);
        LOG_WARN("aggregator", "client '" << clients_[client_id].name << "' declined round " << r << ": "
                                          << env.decline().reason());
        clients_.AddStrike(client_id, "declined round " + std::to_string(r), Clock::now(), NowUnixMs());
      }
      wire::Envelope ack;
      ack.mutable_ack()->set_round(r);
      ReplyToClient(client_id, env.request_id(), std::move(ack));
      return Status::Ok();
    }
    default:
      ++rejected_messages_;
      LogRejection(tag, "unexpected", std::string(proto::BodyName(env)) + " is not a client-to-aggregator message");
      ReplyError(in.peer, tag, env.request_id(), wire::ERROR_UNEXPECTED,
                 std::string(proto::BodyName(env)) + " is not a client-to-aggregator message");
      return Status::Ok();
  }
}

void Aggregator::LogRejection(const std::string& who, const std::string& reason, const std::string& message) {
  uint64_t suppressed = 0;
  const std::string name = clients_.count(who) ? clients_.at(who).name : std::string();
  if (!log_limiter_.Allow(who + '\0' + reason, Clock::now(), &suppressed)) return;
  LOG_WARN("aggregator", "rejected from " << (name.empty() ? "peer" : "'" + name + "'") << " (" << who.substr(0, 12)
                                          << "), " << reason << ": " << message
                                          << (suppressed > 0 ? " (and " + std::to_string(suppressed) +
                                                                   " more of this kind since the last such line)"
                                                             : std::string()));
}

Status Aggregator::HandleHello(const net::Incoming& in, const wire::Envelope& env) {
  const wire::Hello& hello = env.hello();
  std::string client_id = zap_ ? in.user_id : hello.client_name();
  if (client_id.empty()) {
    ReplyError(in.peer, in.peer, env.request_id(), wire::ERROR_MALFORMED, "hello without a client name");
    return Status::Ok();
  }
  const bool is_new = clients_.Register(client_id, in.peer, hello, NowUnixMs());
  if (config_.secagg.enabled && hello.secagg_identity_key().empty() && is_new) {
    LOG_WARN("aggregator", "client '" << hello.client_name() << "' has no secure-aggregation identity key; "
                                      << "it will not be sampled (update its software)");
  }
  // The registry is the sampling population after a restart: a device is
  // registered only once its record is durable.
  const records::ClientRecord record = clients_.RecordOf(client_id, NowUnixMs());
  if (Status st = store_->PutClient(record); !st.ok()) {
    if (is_new) clients_.Forget(client_id);
    if (!st.retryable() && st.code() != StatusCode::kResourceExhausted) return st;
    LOG_ERROR("aggregator", "could not record device '" << hello.client_name() << "': " << st.message());
    ReplyError(in.peer, client_id, env.request_id(), wire::ERROR_INTERNAL,
               "the aggregator could not record this device; retry");
    return Status::Ok();
  }
  clients_.MarkWritten({record});
  if (is_new) {
    LOG_INFO("aggregator", "client '" << hello.client_name() << "'"
                                      << (zap_ ? " (key " + client_id + ")" : std::string())
                                      << " joined (" << clients_.size() << "/" << config_.min_clients << ")");
  }
  wire::Envelope reply;
  reply.mutable_welcome()->set_federation(config_.federation);
  reply.mutable_welcome()->set_model_arch(config_.model_arch);
  reply.mutable_welcome()->set_current_round(round_);
  ReplyToClient(client_id, env.request_id(), std::move(reply));
  return Status::Ok();
}

void Aggregator::HandleStatus(const net::Incoming& in, uint64_t request_id) {
  wire::Envelope env;
  wire::StatusReply* r = env.mutable_status_reply();
  r->set_federation(config_.federation);
  r->set_model_arch(config_.model_arch);
  r->set_round(round_);
  r->set_round_active(round_active_);
  r->set_rounds_completed(rounds_done_);
  r->set_rounds_total(config_.rounds);
  r->set_model_version(registry_->version());
  r->set_known_clients(static_cast<uint32_t>(clients_.size()));
  r->set_connected_clients(static_cast<uint32_t>(
      std::count_if(clients_.begin(), clients_.end(), [](const auto& kv) { return !kv.second.peer.empty(); })));
  r->set_updates_received(static_cast<uint32_t>(received_.size()));
  r->set_updates_expected(round_active_ ? static_cast<uint32_t>(selected_.size()) : 0);
  r->set_store_bytes(store_->ApproximateSize());
  r->set_uptime_seconds(std::chrono::duration<double>(Clock::now() - started_).count());
  if (secure_) {
    r->set_secagg_stage(secure_->stage_name());
    r->set_secagg_remaining(secure_->remaining());
  }
  const auto now = Clock::now();
  r->set_failed_rounds_in_a_row(backoff_.failed_in_a_row());
  if (!round_active_) r->set_next_round_in_seconds(backoff_.SecondsLeft(now));
  r->set_paused_clients(static_cast<uint32_t>(clients_.CountPaused(now)));
  r->set_updates_rejected(rejected_updates_);
  Reply(in.peer, in.user_id.empty() ? in.peer : in.user_id, request_id, std::move(env));
}

void Aggregator::HandlePull(const net::Incoming& in, const wire::Envelope& env) {
  const wire::PullRequest& req = env.pull_request();
  const std::string& tag = in.user_id.empty() ? in.peer : in.user_id;
  // The same pull again before the device read the first answer is not
  // answered in full a second time.
  const std::string dedupe = "pull:" + std::to_string(req.version()) + ":" + std::to_string(req.have_version());
  // Checked before the model is read and the reply built, so a device that
  // does not read costs neither memory nor work.
  const uint64_t version = req.version() == 0 ? registry_->version() : req.version();
  const size_t model_bytes = global().data.size() * sizeof(float);
  if (req.have_version() != version && model_bytes >= (size_t{64} << 10) &&
      Withhold(in.peer, tag, env.request_id(), model_bytes, dedupe, "PullReply")) {
    return;
  }
  StatusOr<wire::PullReply> pulled = registry_->Pull(req);
  if (!pulled.ok()) {
    ReplyError(in.peer, tag, env.request_id(),
               pulled.status().code() == StatusCode::kNotFound ? wire::ERROR_NOT_FOUND : wire::ERROR_INTERNAL,
               pulled.status().message());
    return;
  }
  const bool up_to_date = pulled->up_to_date();
  wire::Envelope reply;
  *reply.mutable_pull_reply() = std::move(pulled).value();
  Reply(in.peer, tag, env.request_id(), std::move(reply), up_to_date ? std::string() : dedupe);
}

void Aggregator::HandleTaskRequest(const std::string& client_id, uint64_t request_id) {
  ClientRegistry::Client& state = clients_[client_id];
  if (federation_done()) {
    wire::Envelope reply;
    reply.mutable_finished()->set_rounds_completed(rounds_done_);
    reply.mutable_finished()->set_final_model_version(registry_->version());
    reply.mutable_finished()->set_reason("all rounds completed");
    ReplyToClient(client_id, request_id, std::move(reply));
    state.told_finished = true;
    return;
  }
  if (round_active_ && std::binary_search(selected_.begin(), selected_.end(), client_id) &&
      !received_.count(client_id) && !declined_.count(client_id) && !(secure_ && secure_->Advertised(client_id))) {
    SendTask(client_id, request_id);
    return;
  }
  // Nothing for this client now: hold the request until a round selects it.
  state.parked_request = request_id;
  state.parked_since = Clock::now();
}

void Aggregator::SendTask(const std::string& client_id, uint64_t request_id) {
  ClientRegistry::Client& state = clients_[client_id];
  state.parked_request.reset();
  const std::string dedupe = "task:" + std::to_string(round_);
  const size_t model_bytes = global().data.size() * sizeof(float);
  if (model_bytes >= (size_t{64} << 10) && Withhold(state.peer, client_id, request_id, model_bytes, dedupe, "TrainTask")) {
    return;
  }
  wire::Envelope env;
  wire::TrainTask* task = env.mutable_train_task();
  task->set_round(round_);
  task->set_model_version(registry_->version());
  task->set_model_arch(config_.model_arch);
  proto::WeightsToProto(global(), task->mutable_weights());
  wire::TrainConfig* tc = task->mutable_config();
  tc->set_epochs(config_.epochs);
  tc->set_batch_size(config_.batch_size);
  tc->set_learning_rate(config_.learning_rate);
  tc->set_momentum(config_.momentum);
  tc->set_weight_decay(config_.weight_decay);
  tc->set_seed(DeriveSeed(config_.seed, "train", round_, HashString(client_id)));
  task->set_deadline_seconds(std::chrono::duration<double>(round_deadline_ - Clock::now()).count());
  task->set_model_signature(registry_->signature());
  task->set_model_round(registry_->round());
  const DpConfig& dp = config_.dp;
  if (dp.client_level()) {
    tc->set_clip_norm(budget_->clip_norm());
    if (dp.mode == DpConfig::Mode::kClientDistributed && !secure_) {
      tc->set_noise_stddev(budget_->DistributedNoiseStddev(selected_.size()));
    }
  } else if (dp.mode == DpConfig::Mode::kRecord) {
    tc->set_dpsgd_noise_multiplier(dp.noise_multiplier);
    tc->set_dpsgd_clip(dp.clip_norm);
    tc->set_dpsgd_sampling_rate(dp.dpsgd_sampling_rate);
  }
  // Under secure aggregation the device clips, quantizes and adds its noise
  // on the integer path (the setup says how), then runs the SecAgg stages.
  if (secure_) *task->mutable_secagg() = secure_->SetupFor(client_id);
  // A device that repeats its request before reading the task gets it once.
  ReplyToClient(client_id, request_id, std::move(env), dedupe);
}

void Aggregator::AnswerParked(bool keepalive_only) {
  const auto now = Clock::now();
  if (secure_ && keepalive_only) SendSecureReplies(secure_->Keepalive(now, kParkKeepalive));
  for (auto& [id, state] : clients_) {
    if (!state.parked_request) continue;
    const uint64_t request_id = *state.parked_request;
    if (!keepalive_only) {
      const auto since = state.parked_since;
      state.parked_request.reset();
      HandleTaskRequest(id, request_id);
      // Still held: it keeps its age, or rounds shorter than the keepalive
      // would postpone the keepalive forever.
      if (state.parked_request == request_id) state.parked_since = since;
    } else if (now - state.parked_since > kParkKeepalive) {
      state.parked_request.reset();
      wire::Envelope env;
      env.mutable_wait()->set_retry_ms(0);
      env.mutable_wait()->set_reason(round_active_ ? "not selected for this round" : "waiting for clients");
      ReplyToClient(id, request_id, std::move(env));
    }
  }
}

Status Aggregator::HandleUpdate(const std::string& client_id, const wire::Envelope& env) {
  const wire::Update& update = env.update();
  auto reject = [&](wire::ErrorCode code, const std::string& reason, const std::string& why) {
    ++rejected_messages_;
    LogRejection(client_id, reason, "update for round " + std::to_string(update.round()) + ": " + why);
    ReplyError(clients_[client_id].peer, client_id, env.request_id(), code, why);
    return Status::Ok();
  };
  if (secure_) {
    return reject(wire::ERROR_UNEXPECTED, "plaintext_in_secure_round",
                  "this round uses secure aggregation: plaintext updates are refused");
  }
  if (!round_active_ || update.round() != round_) {
    // A resend of an update that was recorded before the round closed (the
    // ack was lost, e.g. in a crash): tell the device it counted.
    if (update.round() <= round_) {
      StatusOr<std::optional<records::RoundRecord>> past = store_->GetRound(update.round());
      if (past.ok() && past->has_value()) {
        const auto& got = past->value().received();
        if (std::find(got.begin(), got.end(), client_id) != got.end()) {
          ReplyError(clients_[client_id].peer, client_id, env.request_id(), wire::ERROR_DUPLICATE,
                     "the update for round " + std::to_string(update.round()) + " was recorded before it closed");
          return Status::Ok();
        }
      }
    }
    return reject(wire::ERROR_WRONG_ROUND, "wrong_round",
                  "round " + std::to_string(update.round()) + " is not open (current " + std::to_string(round_) +
                      (round_active_ ? ", open)" : ", closed)"));
  }
  if (!std::binary_search(selected_.begin(), selected_.end(), client_id)) {
    return reject(wire::ERROR_WRONG_ROUND, "not_selected",
                  "client was not selected for round " + std::to_string(round_));
  }
  if (received_.count(client_id)) {
    return reject(wire::ERROR_DUPLICATE, "duplicate",
                  "an update for round " + std::to_string(round_) + " is already recorded");
  }
  if (declined_.count(client_id)) {
    return reject(wire::ERROR_WRONG_ROUND, "out_of_round",
                  "this device declined round " + std::to_string(round_) + " or its update was refused");
  }
  if (update.model_version() != registry_->version()) {
    return reject(wire::ERROR_WRONG_ROUND, "wrong_model",
                  "update is against model version " + std::to_string(update.model_version()) + ", current is " +
                      std::to_string(registry_->version()));
  }
  // Content: layout, finite values, norm, example count. A refused update
  // never reaches the store or the merge, and the device is out of the round.
  UpdateVerdict verdict = ValidateUpdate(update.delta(), update.num_examples(), ExpectationNow());
  if (!verdict.accepted()) {
    ++rejected_updates_;
    clients_.NoteRejected(client_id, verdict.reason);
    declined_.insert(client_id);
    clients_.AddStrike(client_id, "sent a refused update (" + verdict.reason + ")", Clock::now(), NowUnixMs());
    return reject(wire::ERROR_BAD_UPDATE, verdict.reason, verdict.message);
  }

  records::UpdateRecord record;
  record.set_round(round_);
  record.set_client_id(client_id);
  record.set_num_examples(update.num_examples());
  *record.mutable_delta() = update.delta();
  for (const auto& [k, v] : update.metrics()) (*record.mutable_metrics())[k] = v;
  record.set_received_unix_ms(NowUnixMs());
  // Durable before acknowledged.
  if (Status st = store_->PutUpdate(record); !st.ok()) {
    if (st.code() == StatusCode::kAlreadyExists) return reject(wire::ERROR_DUPLICATE, "duplicate", st.message());
    LOG_ERROR("aggregator", "could not store update: " << st.ToString());
    ReplyError(clients_[client_id].peer, client_id, env.request_id(), wire::ERROR_INTERNAL,
               "aggregator could not store the update; retry");
    // A full disk or a passing I/O error is not fatal: the device keeps its
    // update and retries; everyone else is still served.
    return st.retryable() || st.code() == StatusCode::kResourceExhausted ? Status::Ok() : st;
  }
  NoteRecorded(client_id, update.num_examples(), update.metrics());
  norm_history_.Add(verdict.norm);
  round_norms_[client_id] = verdict.norm;
  clients_.NoteAccepted(client_id);
  wire::Envelope ack;
  ack.mutable_ack()->set_round(round_);
  ReplyToClient(client_id, env.request_id(), std::move(ack));
  LOG_DEBUG("aggregator", "round " << round_ << ": update " << received_.size() << "/" << selected_.size()
                                   << " from '" << client_id << "' (norm " << verdict.norm << ")");
  return Status::Ok();
}

Status Aggregator::MaybeStartRound() {
  if (round_active_ || federation_done()) return Status::Ok();
  if (static_cast<int>(clients_.size()) < config_.min_clients) return Status::Ok();
  const auto now = Clock::now();
  if (backoff_.Waiting(now)) return Status::Ok();  // backing off after failed rounds
  std::vector<std::string> ids;
  for (const auto& kv : clients_) {
    // Revoked keys stay in the registry but are never sampled.
    if (zap_ && !zap_->IsAllowed(kv.first)) continue;
    // Under secure aggregation a device needs its identity key.
    if (config_.secagg.enabled && kv.second.secagg_key.size() != 32) continue;
    ids.push_back(kv.first);  // sorted
  }
  if (static_cast<int>(ids.size()) < config_.min_clients) return Status::Ok();
  // Devices paused after repeated declines or refused updates sit out.
  ids.erase(std::remove_if(ids.begin(), ids.end(), [&](const std::string& id) { return clients_.Paused(id, now); }),
            ids.end());
  if (ids.empty()) return Status::Ok();
  const DpConfig& dp = config_.dp;
  if (dp.mode == DpConfig::Mode::kRecord) {
    // Per-client budgets: a device whose next round would exceed it is no
    // longer sampled.
    ASSIGN_OR_RETURN(ids, budget_->EligibleDevices(ids));
    if (ids.empty()) {
      LOG_WARN("aggregator", "stopping after " << rounds_done_ << " rounds: the privacy budget is spent");
      return Status::Ok();
    }
  }
  Sample sample = SampleDevices(std::move(ids), config_.fraction, config_.seed, round_ + 1);
  round_q_ = sample.sampling_rate;
  if (dp.client_level()) {
    ASSIGN_OR_RETURN(bool allowed, budget_->AllowsRound(round_ + 1, round_q_));
    if (!allowed) {
      LOG_WARN("aggregator", "stopping after " << rounds_done_ << " rounds: the privacy budget is spent");
      return Status::Ok();
    }
  }
  ++round_;
  selected_ = std::move(sample.selected);
  received_.clear();
  declined_.clear();
  round_norms_.clear();
  train_loss_.clear();
  dp_steps_.clear();
  below_clip_.clear();
  round_active_ = true;
  round_started_ = Clock::now();
  round_deadline_ = round_started_ + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(config_.round_deadline_seconds));
  records::RoundRecord record;
  record.set_round(round_);
  record.set_outcome(records::RoundRecord::OUTCOME_RUNNING);
  for (const auto& id : selected_) record.add_selected(id);
  record.set_base_model_version(registry_->version());
  record.set_started_unix_ms(NowUnixMs());
  record.set_sampling_rate(round_q_);
  record.set_secure_aggregation(config_.secagg.enabled);
  if (config_.secagg.enabled) {
    // Parameters that cannot work (too few clients for the threshold, a
    // quantization that would overflow) are a configuration error.
    RETURN_IF_ERROR(StartSecureRound());
    record.set_secagg_threshold(secure_->params().threshold);
  }
  if (Status st = store_->PutRound(record); !st.ok()) {
    // Not started: undo, and try again on a later iteration (a full disk
    // is the usual cause; devices wait meanwhile).
    round_active_ = false;
    secure_.reset();
    --round_;
    if (st.code() != StatusCode::kResourceExhausted && !st.retryable()) return st;
    static Clock::time_point last_log{};
    if (Clock::now() - last_log > std::chrono::seconds(10)) {
      last_log = Clock::now();
      LOG_ERROR("aggregator", "cannot start round " << round_ + 1 << ": " << st.message());
    }
    return Status::Ok();
  }
  LOG_DEBUG("aggregator", "round " << round_ << " started with " << selected_.size() << " clients");
  // Hand tasks to the selected clients that are already waiting.
  for (const auto& id : selected_) {
    ClientRegistry::Client& state = clients_[id];
    if (state.parked_request) SendTask(id, *state.parked_request);
  }
  return Status::Ok();
}

Status Aggregator::MaybeFinishRound() {
  if (!round_active_) return Status::Ok();
  if (secure_) {
    SendSecureReplies(secure_->Advance(Clock::now(), declined_));
    if (secure_->done() || secure_->aborted()) return FinishRound(false);
    return Status::Ok();
  }
  if (received_.size() + declined_.size() >= selected_.size()) return FinishRound(false);
  if (Clock::now() >= round_deadline_) return FinishRound(true);
  return Status::Ok();
}

Status Aggregator::FinishRound(bool deadline_passed) {
  round_active_ = false;
  // A secure round's contributors are the survivors of its last stage.
  std::string failure;
  if (secure_) {
    received_.clear();
    if (secure_->done()) {
      received_.insert(secure_->survivors().begin(), secure_->survivors().end());
    } else {
      failure = "secure aggregation aborted: " + std::string(secure_->abort_status().message());
    }
  }
  RoundSummary summary;
  summary.round = round_;
  summary.secure = secure_ != nullptr;
  summary.selected = static_cast<int>(selected_.size());
  summary.received = static_cast<int>(received_.size());
  records::RoundRecord record;
  record.set_round(round_);
  for (const auto& id : selected_) record.add_selected(id);
  for (const auto& id : received_) record.add_received(id);
  for (const auto& [id, norm] : round_norms_) {
    if (received_.count(id)) record.add_update_norms(static_cast<float>(norm));
  }
  record.set_base_model_version(registry_->version());
  record.set_started_unix_ms(NowUnixMs() - static_cast<int64_t>(1000 * std::chrono::duration<double>(
                                                                             Clock::now() - round_started_).count()));
  record.set_sampling_rate(round_q_);
  if (secure_) {
    record.set_secure_aggregation(true);
    record.set_secagg_threshold(secure_->params().threshold);
    record.set_secagg_survivors(static_cast<uint32_t>(received_.size()));
  }
  if (failure.empty() && static_cast<int>(received_.size()) < config_.min_updates) {
    failure = "only " + std::to_string(received_.size()) + " of " + std::to_string(selected_.size()) +
              " updates by the deadline (min " + std::to_string(config_.min_updates) + ")";
  }
  if (failure.empty() && deadline_passed) {
    LOG_WARN("aggregator", "round " << round_ << " deadline passed with " << received_.size() << " of "
                                    << selected_.size() << " updates; aggregating those");
  }
  // The new model, unless the round already failed. A merge or a result
  // that is not usable fails the round; it never stops the aggregator.
  const DpConfig& dp = config_.dp;
  std::optional<Weights> next;
  std::vector<records::LedgerEntry> ledger;  // committed with the round
  if (failure.empty()) {
    StatusOr<Weights> merged = secure_ ? MergeSecureSum() : MergeStoredUpdates();
    StatusOr<Weights> applied = merged.ok() ? StatusOr<Weights>(FinalizeMerge(std::move(merged).value(), &record,
                                                                              &summary, &ledger))
                                            : StatusOr<Weights>(merged.status());
    if (applied.ok()) {
      next = std::move(applied).value();
    } else if (applied.status().code() == StatusCode::kUnavailable) {
      secure_.reset();
      return applied.status().WithContext("merging round " + std::to_string(round_));  // the store failed
    } else {
      failure = "the merged model is not usable (" + std::string(applied.status().message()) +
                "); the previous model is kept";
    }
  }
  secure_.reset();

  if (!failure.empty()) {
    record.set_outcome(records::RoundRecord::OUTCOME_FAILED);
    record.set_note(failure);
    const double wait = backoff_.Failed(Clock::now());
    LOG_WARN("aggregator", "round " << round_ << " failed (" << backoff_.failed_in_a_row() << " in a row): " << failure
                                    << "; next round in " << wait << " s");
    summary.seconds = std::chrono::duration<double>(Clock::now() - round_started_).count();
    record.set_seconds(summary.seconds);
    RoundCommit commit;
    commit.round = record;
    commit.clients = clients_.Dirty(NowUnixMs());
    RETURN_IF_ERROR(store_->CommitRound(commit));
    clients_.MarkWritten(commit.clients);
    summary.model_version = registry_->version();
    history_.push_back(summary);
    if (on_round_) on_round_(summary);
    AnswerParked(false);
    return Status::Ok();
  }
  if (dp.enabled()) summary.epsilon = budget_->epsilon();

  double loss_sum = 0.0;
  int64_t examples = 0;
  for (const auto& [id, el] : train_loss_) {
    loss_sum += el.second * static_cast<double>(el.first);
    examples += el.first;
  }
  summary.total_examples = examples;
  // Under secure aggregation no per-device loss reaches the aggregator.
  summary.mean_train_loss = examples > 0 ? loss_sum / static_cast<double>(examples) : summary.secure ? NAN : 0.0;

  ASSIGN_OR_RETURN(records::ModelRecord model, registry_->SignNext(*next, round_, NowUnixMs()));
  (*model.mutable_metrics())["train_loss"] = summary.mean_train_loss;
  if (eval_) {
    StatusOr<EvalMetrics> metrics = eval_(*next);
    if (metrics.ok()) {
      summary.test_loss = metrics->loss;
      summary.test_accuracy = metrics->accuracy;
      (*model.mutable_metrics())["test_loss"] = metrics->loss;
      (*model.mutable_metrics())["test_accuracy"] = metrics->accuracy;
      record.set_test_loss(metrics->loss);
      record.set_test_accuracy(metrics->accuracy);
    } else {
      LOG_WARN("aggregator", "evaluation failed: " << metrics.status().ToString());
    }
  }
  summary.seconds = std::chrono::duration<double>(Clock::now() - round_started_).count();
  record.set_outcome(records::RoundRecord::OUTCOME_COMPLETED);
  record.set_result_model_version(model.version());
  record.set_mean_train_loss(summary.mean_train_loss);
  record.set_total_examples(examples);
  record.set_seconds(summary.seconds);
  RoundCommit commit;
  commit.round = record;
  commit.model = &model;
  commit.expire = registry_->Expired(model.version());
  commit.clients = clients_.Dirty(NowUnixMs());
  commit.ledger = std::move(ledger);
  RETURN_IF_ERROR(store_->CommitRound(commit));
  clients_.MarkWritten(commit.clients);
  registry_->Committed(model, std::move(*next), commit.expire);
  global_norm_ = L2Norm(global().data);
  ++rounds_done_;
  backoff_.Succeeded();
  summary.completed = true;
  summary.model_version = registry_->version();
  history_.push_back(summary);
  if (on_round_) on_round_(summary);
  AnswerParked(false);
  return Status::Ok();
}

// From the round's mean delta to the next global model: client-level DP's
// scaling and central noise, the privacy accounting, adaptive clipping, the
// server learning rate; then the result is checked before anything signs
// it. InvalidArgument (the round fails) when it is not finite.
StatusOr<Weights> Aggregator::FinalizeMerge(Weights mean_delta, records::RoundRecord* record, RoundSummary* summary,
                                            std::vector<records::LedgerEntry>* ledger) {
  const DpConfig& dp = config_.dp;
  for (float v : mean_delta.data) {
    if (!std::isfinite(v)) return InvalidArgument("the mean update is not finite");
  }
  // Computed before any privacy is accounted, so a round that fails here
  // charges nothing.
  ASSIGN_OR_RETURN(Weights next, ApplyDelta(global(), mean_delta, config_.server_learning_rate));
  if (dp.client_level()) {
    // sum / m with the fixed denominator m = clients sampled, plus central noise.
    const double m = static_cast<double>(selected_.size());
    const double sum_scale = static_cast<double>(received_.size()) / m;
    for (auto& v : mean_delta.data) v = static_cast<float>(v * sum_scale);
    if (dp.mode == DpConfig::Mode::kClientCentral) {
      ASSIGN_OR_RETURN(privacy::GaussianNoise noise, privacy::GaussianNoise::Create());
      noise.AddNoise(mean_delta.data.data(), mean_delta.data.size(),
                     budget_->EffectiveNoiseMultiplier() * budget_->clip_norm() / m);
    }
    record->set_clip_norm(budget_->clip_norm());
    summary->clip_norm = budget_->clip_norm();
    ASSIGN_OR_RETURN(next, ApplyDelta(global(), mean_delta, config_.server_learning_rate));
  }
  ASSIGN_OR_RETURN(*ledger, budget_->Account(round_, round_q_, selected_.size(), received_, dp_steps_, record));
  int64_t below = 0;
  for (const auto& kv : below_clip_) below += kv.second;
  RETURN_IF_ERROR(budget_->UpdateClip(below, static_cast<int64_t>(received_.size())));
  record->set_next_clip_norm(budget_->clip_norm());
  return next;
}

// Streams the round's updates from the store in client-id order (so the
// result does not depend on arrival order) into their weighted mean.
StatusOr<Weights> Aggregator::MergeStoredUpdates() {
  const DpConfig& dp = config_.dp;
  // One of the two, so FedAvg does not hold every update and the robust
  // strategies do not allocate a running sum.
  std::optional<CoordinateWise> robust;
  std::optional<WeightedMean> mean;
  if (config_.strategy.NeedsIndividualUpdates()) {
    robust.emplace(global().layout, config_.strategy);
  } else {
    mean.emplace(global().layout);
  }
  // FedAvg's weights from the claimed example counts, capped against the
  // round's median claim by default (docs/security.md).
  std::map<std::string, double> weight;
  {
    std::vector<int64_t> claimed;
    for (const auto& [id, el] : train_loss_) claimed.push_back(el.first);
    const std::vector<double> w = ExampleWeights(claimed, config_.validation.weighting);
    size_t i = 0;
    for (const auto& kv : train_loss_) weight[kv.first] = w[i++];
  }
  RETURN_IF_ERROR(store_->ForEachUpdate(round_, [&](const records::UpdateRecord& u) -> Status {
    ASSIGN_OR_RETURN(Weights delta, proto::WeightsFromProto(u.delta(), global().layout));
    if (robust) return robust->Add(delta);
    if (dp.mode == DpConfig::Mode::kClientCentral) {
      // The trusted aggregator enforces the bound itself as well.
      privacy::ClipL2(delta.data.data(), delta.data.size(), budget_->clip_norm());
    }
    // Client-level DP averages with equal weights: example counts are
    // private and would change the sensitivity (docs/privacy.md).
    auto w = weight.find(u.client_id());
    if (w == weight.end()) return DataLoss("stored update from '" + u.client_id() + "' was never recorded");
    return mean->Add(delta, dp.client_level() ? 1.0 : w->second);
  }));
  const int merged = robust ? robust->count() : mean->count();
  if (merged != static_cast<int>(received_.size())) {
    return DataLoss("round " + std::to_string(round_) + " recorded " + std::to_string(received_.size()) +
                    " updates but the store holds " + std::to_string(merged));
  }
  return robust ? robust->Result() : mean->Mean();
}

// The secure sum of the survivors' clipped (and noised) deltas, divided by
// their number: an unweighted mean, since example counts stay on the devices.
StatusOr<Weights> Aggregator::MergeSecureSum() {
  std::vector<float> sum = secure_->TakeSum();
  if (sum.size() != global().data.size() || received_.empty()) {
    return Internal("secure sum has " + std::to_string(sum.size()) + " values for " +
                    std::to_string(global().data.size()) + " parameters");
  }
  const float inv = 1.0f / static_cast<float>(received_.size());
  for (float& v : sum) {
    if (!std::isfinite(v)) return Internal("secure sum is not finite");
    v *= inv;
  }
  Weights mean{global().layout, std::move(sum)};
  return mean;
}

Status Aggregator::StartSecureRound() {
  SecureRound::Options options;
  options.round = round_;
  options.clients = selected_;
  for (const auto& id : selected_) {
    const std::string& key = clients_[id].secagg_key;
    options.identity_keys.emplace_back(key.begin(), key.end());
    options.identity_certs.push_back(clients_[id].secagg_cert);
  }
  options.vector_length = static_cast<uint32_t>(global().data.size());
  const DpConfig& dp = config_.dp;
  options.clip_norm = dp.client_level() ? budget_->clip_norm() : config_.secagg.clip_norm;
  if (dp.mode == DpConfig::Mode::kClientDistributed) options.noise_stddev = budget_->DistributedNoiseStddev(selected_.size());
  options.graph_seed = DeriveSeed(config_.seed, "secagg-graph", round_);
  options.advertise_deadline = round_deadline_;
  ASSIGN_OR_RETURN(secure_, SecureRound::Start(config_.secagg, std::move(options)));
  const privacy::SecAggParams& p = secure_->params();
  LOG_INFO("aggregator", "round " << round_ << ": secure aggregation over " << p.num_clients << " clients, "
                                  << (p.graph == privacy::SecAggGraph::kHarary
                                          ? "SecAgg+ (Harary degree " + std::to_string(p.degree) + ")"
                                          : std::string("complete graph"))
                                  << ", threshold " << p.threshold << ", " << p.bit_width << "-bit, scale "
                                  << secure_->quantization().scale);
  return Status::Ok();
}

void Aggregator::HandleSecAgg(const std::string& client_id, const wire::Envelope& env) {
  const wire::SecAggMessage& m = env.secagg();
  if (!round_active_ || !secure_ || m.round() != round_) {
    ReplyError(clients_[client_id].peer, client_id, env.request_id(), wire::ERROR_WRONG_ROUND,
               "no secure aggregation is running for round " + std::to_string(m.round()) + " (current " +
                   std::to_string(round_) + (round_active_ ? ", open)" : ", closed)"));
    return;
  }
  std::optional<wire::Envelope> reply = secure_->Handle(client_id, env.request_id(), m);
  if (reply) {
    if (reply->has_error()) ++rejected_messages_;
    ReplyToClient(client_id, env.request_id(), std::move(*reply));
  }
}

void Aggregator::SendSecureReplies(std::vector<SecureRound::Reply> replies) {
  for (auto& r : replies) ReplyToClient(r.client_id, r.request_id, std::move(r.envelope));
}

void Aggregator::ReplyToClient(const std::string& client_id, uint64_t request_id, wire::Envelope env,
                               const std::string& dedupe) {
  Reply(clients_[client_id].peer, client_id, request_id, std::move(env), dedupe);
}

void Aggregator::Reply(const std::string& peer, const std::string& tag, uint64_t request_id, wire::Envelope env,
                       const std::string& dedupe) {
  // Replies below this size are never withheld (they are bounded by the
  // socket's per-peer message queue instead).
  constexpr size_t kLargeReply = size_t{64} << 10;
  env.set_request_id(request_id);
  std::string bytes = proto::SerializeEnvelope(&env);
  if (bytes.size() >= kLargeReply) {
    if (Withhold(peer, tag, request_id, bytes.size(), dedupe, proto::BodyName(env))) return;
    if (!dedupe.empty()) {
      if (last_large_request_.size() > 4096) last_large_request_.clear();  // a bound; only repeats are affected
      last_large_request_[tag] = dedupe;
    }
  }
  const size_t size = bytes.size();
  if (Status st = socket_->Send(peer, std::move(bytes), tag); !st.ok()) {
    LOG_DEBUG("aggregator", "reply " << proto::BodyName(env) << " not delivered: " << st.message());
  } else {
    LOG_DEBUG("aggregator", "reply " << proto::BodyName(env) << " #" << request_id << " sent (" << size << " bytes)");
  }
}

bool Aggregator::Withhold(const std::string& peer, const std::string& tag, uint64_t request_id, size_t bytes,
                          const std::string& dedupe, const char* what) {
  const int64_t queued = socket_->QueuedBytes(tag);
  std::string why;
  auto last = last_large_request_.find(tag);
  if (!dedupe.empty() && queued > 0 && last != last_large_request_.end() && last->second == dedupe) {
    why = "the answer to this same request is still queued for this device; read it first";
  } else if (static_cast<uint64_t>(queued) + bytes > limits_.config().max_queued_bytes) {
    why = std::to_string(queued) + " bytes are queued for this device and not yet read; read them, then retry";
  }
  if (why.empty()) return false;
  ++withheld_replies_;
  LogRejection(tag, "unread_replies", "withheld a " + std::string(what) + ": " + why);
  wire::Envelope err = proto::MakeError(wire::ERROR_RATE_LIMITED, why);
  err.mutable_error()->set_retry_ms(1000);
  err.set_request_id(request_id);
  (void)socket_->Send(peer, proto::SerializeEnvelope(&err), tag);
  return true;
}

void Aggregator::ReplyError(const std::string& peer, const std::string& tag, uint64_t request_id,
                            wire::ErrorCode code, const std::string& msg, uint32_t retry_ms) {
  wire::Envelope env = proto::MakeError(code, msg);
  if (retry_ms > 0) env.mutable_error()->set_retry_ms(retry_ms);
  Reply(peer, tag, request_id, std::move(env));
}

}  // namespace flotilla::aggregator
