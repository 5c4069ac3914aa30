#include "aggregator/server.h"

#include <algorithm>
#include <cmath>

#include "core/clock.h"
#include "core/fds.h"
#include "core/log.h"
#include "proto/codec.h"

namespace flotilla::aggregator {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(50);
// A held TaskRequest is answered with Wait after this long, so clients can
// tell a live aggregator from a dead one.
constexpr auto kParkKeepalive = std::chrono::seconds(5);

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
    LOG_INFO("aggregator",
             "secure aggregation: central DP noise is replaced by distributed noise from the devices");
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
    LOG_WARN("aggregator",
             "INSECURE MODE: no encryption and no client allowlist. Use only for local debugging.");
  }
  // The last replies (Finished, with a final model) must leave before the
  // process exits: up to a second to flush them on close.
  net::SocketOptions socket_options = config.socket;
  socket_options.linger_ms = std::max(socket_options.linger_ms, 1000);
  ASSIGN_OR_RETURN(std::unique_ptr<net::ServerSocket> socket,
                   net::ServerSocket::Bind(context, config.endpoint, socket_options));
  const uint64_t model_bytes = static_cast<uint64_t>(initial.data.size()) * sizeof(float);
  std::unique_ptr<Aggregator> agg(
      new Aggregator(config, std::move(store), std::move(zap), std::move(socket), model_bytes));
  if (!config.allowlist_path.empty()) {
    std::error_code ec;
    agg->allowlist_mtime_ = std::filesystem::last_write_time(config.allowlist_path, ec);
  }
  AggregatorInfo info;
  info.federation = config.federation;
  info.model_arch = config.model_arch;
  info.strategy = config.strategy.Name();
  if (config.signing_key)
    info.signing_key_fingerprint = privacy::KeyFingerprint(config.signing_key->public_key);
  agg->metrics_ = std::make_shared<AggregatorMetrics>(std::move(info));
  RoundFn counted = [metrics = agg->metrics_, on_round = std::move(on_round)](const RoundSummary& r) {
    metrics->RoundFinished(r);
    if (on_round) on_round(r);
  };
  ASSIGN_OR_RETURN(agg->engine_,
                   RoundEngine::Recover(config, agg->store_.get(), &agg->clients_, std::move(initial),
                                        std::move(eval), std::move(counted)));
  agg->known_clients_ = agg->clients_.size();
  if (config.checkin.enabled) agg->FlushRegistry(/*force=*/true);  // keeps only a resumed round's devices
  agg->PublishMetrics(true);
  if (!config.http.listen.empty()) {
    monitoring::HttpHandlers handlers;
    handlers.metrics = [metrics = agg->metrics_] { return metrics->Render(); };
    handlers.state_json = [metrics = agg->metrics_] { return metrics->RenderJson(); };
    Aggregator* self = agg.get();
    handlers.ready = [self](std::string* why) {
      if (self->serving_.load()) return true;
      *why = "the aggregator is not serving devices (starting or stopped)";
      return false;
    };
    ASSIGN_OR_RETURN(agg->http_, monitoring::HttpServer::Start(config.http, std::move(handlers)));
  }
  return agg;
}

Aggregator::Aggregator(const AggregatorConfig& config, std::unique_ptr<Store> store,
                       std::unique_ptr<net::ZapHandler> zap, std::unique_ptr<net::ServerSocket> socket,
                       uint64_t model_bytes)
    : config_(config),
      store_(std::move(store)),
      zap_(std::move(zap)),
      socket_(std::move(socket)),
      clients_(ClientRegistry::PausePolicy{config.pause_after_strikes, config.pause_seconds,
                                           config.max_pause_seconds}),
      limits_(config.limits.Resolved(model_bytes)) {}

Aggregator::~Aggregator() {
  http_.reset();    // its handlers read this object
  socket_.reset();  // close the socket before its authenticator
  zap_.reset();
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
    LOG_ERROR("aggregator",
              "allowlist not reloaded, keeping the previous one: " << allowed.status().message());
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
                                     << engine_->global().layout->Describe() << "), waiting for "
                                     << config_.min_clients << " clients");
  serving_.store(true);
  struct NotServing {
    std::atomic<bool>* flag;
    ~NotServing() { flag->store(false); }
  } not_serving{&serving_};
  while (!stop_.load()) {
    PublishMetrics(false);
    ASSIGN_OR_RETURN(std::optional<net::Incoming> in, socket_->Receive(kPollInterval));
    if (in) {
      RETURN_IF_ERROR(Step(*in));
    } else {
      RETURN_IF_ERROR(AdvanceRounds());
    }
    AnswerParked(/*keepalive_only=*/true);
    if (config_.checkin.enabled) FlushRegistry(false);
    MaybeReloadAllowlist();
    if (engine_->federation_done()) {
      const auto now = Clock::now();
      if (!finished_at_) {
        finished_at_ = now;
        AnswerParked(false);
      }
      bool all_told = std::all_of(clients_.begin(), clients_.end(), [](const auto& kv) {
        return kv.second.told_finished || kv.second.peer.empty();  // never reconnected since a restart
      });
      // Under check-in most devices are away: they learn of the end when
      // they next check in, during the grace period (or from a pull).
      if (!config_.keep_serving &&
          ((all_told && !config_.checkin.enabled) ||
           now - *finished_at_ > std::chrono::duration<double>(config_.finish_grace_seconds))) {
        break;
      }
    }
  }
  PublishMetrics(true);
  LOG_INFO("aggregator",
           "stopped after " << engine_->rounds_done() << " rounds; final model version " << model_version());
  return Status::Ok();
}

Status Aggregator::Step(const net::Incoming& in) {
  RETURN_IF_ERROR(HandleMessage(in));
  return AdvanceRounds();
}

Status Aggregator::AdvanceRounds() {
  const ScopedLogFields fields({{"round", std::to_string(engine_->round())}});
  const auto now = Clock::now();
  if (engine_->async()) {
    // Asynchronous rounds: a buffer is always open; tasks go to waiting
    // devices whenever a slot is free.
    engine_->SetFleetSize(FleetSize());
    ASSIGN_OR_RETURN(bool started, engine_->MaybeStartBuffer(now));
    std::vector<SecureRound::Reply> none;
    ASSIGN_OR_RETURN(bool finished, engine_->MaybeFinish(now, &none));
    if (finished) {
      ASSIGN_OR_RETURN(started, engine_->MaybeStartBuffer(now));
      AnswerParked(false);
    }
    if (started || engine_->HasCapacity()) SendTasksToParked();
    return Status::Ok();
  }
  if (!config_.checkin.enabled) {
    ASSIGN_OR_RETURN(bool started, engine_->MaybeStart(now, [this](const std::string& id) {
      return !zap_ || zap_->IsAllowed(id);
    }));
    if (started) SendTasksToParked();
  }
  std::vector<SecureRound::Reply> secure_replies;
  StatusOr<bool> finished = engine_->MaybeFinish(now, &secure_replies);
  SendSecureReplies(std::move(secure_replies));
  RETURN_IF_ERROR(finished.status());
  if (*finished) AnswerParked(false);
  if (config_.checkin.enabled) {
    // Check-in: selection for the next round opens once no round runs (at
    // once after one closes), and starts the round when it closes.
    engine_->SetFleetSize(FleetSize());
    SampleFds(now, false);
    // A new selection starts from a fresh count.
    if (engine_->MaybeOpenSelection(now)) SampleFds(now, true);
    LogConnectionLimit();
    std::vector<std::string> released;
    ASSIGN_OR_RETURN(bool started, engine_->MaybeCloseSelection(now, &released));
    for (const auto& id : released) {
      auto it = clients_.find(id);
      if (it == clients_.end() || !it->second.parked_request) continue;
      const uint64_t request_id = *it->second.parked_request;
      it->second.parked_request.reset();
      ReplyComeBack(id, request_id,
                    engine_->ComeBack(id, now,
                                      started ? "not selected for round " + std::to_string(engine_->round())
                                              : "the federation is over"));
    }
    if (started) SendTasksToParked();
  }
  return Status::Ok();
}

void Aggregator::SendTasksToParked() {
  // Hand tasks to the selected clients that are already waiting.
  for (auto& [id, state] : clients_) {
    if (state.parked_request && engine_->AwaitsTask(id)) SendTask(id, *state.parked_request);
    if (engine_->async() && !engine_->HasCapacity()) break;
  }
}

std::vector<std::string> Aggregator::client_ids() const {
  std::vector<std::string> ids;
  for (const auto& kv : clients_) ids.push_back(kv.first);
  return ids;
}

Status Aggregator::HandleMessage(const net::Incoming& in) {
  ++messages_handled_;
  // Every line logged while handling it carries the round and the device's
  // key prefix (never the whole key).
  const ScopedLogFields fields(
      {{"round", std::to_string(engine_->round())},
       {"device", in.user_id.empty() ? std::string("peer") : in.user_id.substr(0, 12)}});
  const auto now = Clock::now();
  // The device's identity for its limits and its queued-bytes account: the
  // authenticated key, or the connection without CURVE.
  const std::string& tag = in.user_id.empty() ? in.peer : in.user_id;
  if (now - last_limits_prune_ > std::chrono::seconds(5)) {
    limits_.Prune(now);
    last_limits_prune_ = now;
  }
  engine_->CountBytes(in.payload.size(), 0);
  metrics_->Bytes(in.payload.size(), 0);
  const PeerLimits::Admission admission = limits_.Admit(tag, in.payload.size(), now);
  if (!admission.admitted) {
    ++rejected_messages_;
    const uint64_t id =
        proto::DescribeParseFailure(in.payload.data(), in.payload.size(), Status::Ok()).request_id;
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
    ReplyError(in.peer, tag, env.request_id(), wire::ERROR_PERMISSION_DENIED,
               "this client key is no longer allowed");
    return Status::Ok();
  }
  switch (env.body_case()) {
    case wire::Envelope::kHello:
      return HandleHello(in, env);
    case wire::Envelope::kCheckIn:
      return HandleCheckIn(in, env);
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
  const std::string client_id = IdentifyClient(in);
  if (client_id.empty()) {
    ReplyError(in.peer, tag, env.request_id(), wire::ERROR_NOT_REGISTERED, "send Hello first");
    return Status::Ok();
  }
  switch (env.body_case()) {
    case wire::Envelope::kTaskRequest:
      clients_[client_id].wants_final_model = env.task_request().final_model();
      HandleTaskRequest(client_id, env.request_id());
      return Status::Ok();
    case wire::Envelope::kUpdate:
      return HandleUpdate(client_id, env);
    case wire::Envelope::kSecagg:
      HandleSecAgg(client_id, env);
      return Status::Ok();
    case wire::Envelope::kDecline:
      HandleDecline(client_id, env);
      return Status::Ok();
    default:
      ++rejected_messages_;
      LogRejection(tag, "unexpected",
                   std::string(proto::BodyName(env)) + " is not a client-to-aggregator message");
      ReplyError(in.peer, tag, env.request_id(), wire::ERROR_UNEXPECTED,
                 std::string(proto::BodyName(env)) + " is not a client-to-aggregator message");
      return Status::Ok();
  }
}

// The transport-authenticated key when there is one, else the client that
// said Hello from this routing id.
std::string Aggregator::IdentifyClient(const net::Incoming& in) {
  if (!zap_) return clients_.FindByPeer(in.peer);
  auto it = clients_.find(in.user_id);
  if (it == clients_.end() && config_.checkin.enabled) {
    // An away device's record is in the store (e.g. it resends an update
    // after a crash, or a Hello-speaking device asks again).
    StatusOr<bool> known = EnsureLoaded(in.user_id);
    if (known.ok() && *known) it = clients_.find(in.user_id);
  }
  if (it == clients_.end()) return std::string();
  it->second.peer = in.peer;  // replies go to the connection the key spoke on
  return in.user_id;
}

void Aggregator::HandleDecline(const std::string& client_id, const wire::Envelope& env) {
  engine_->Decline(client_id, env.decline().round(), env.decline().reason(), Clock::now());
  wire::Envelope ack;
  ack.mutable_ack()->set_round(env.decline().round());
  if (auto come_back = ComeBackFor(client_id, "declined"))
    *ack.mutable_ack()->mutable_come_back() = *come_back;
  ReplyToClient(client_id, env.request_id(), std::move(ack));
}

void Aggregator::PublishMetrics(bool now) {
  const auto t = Clock::now();
  if (!now && t - metrics_published_ < std::chrono::milliseconds(250)) return;
  metrics_published_ = t;
  const RoundEngine& engine = *engine_;
  AggregatorGauges g;
  g.round = engine.round();
  g.round_active = engine.active();
  g.rounds_planned = config_.rounds;
  g.model_version = model_version();
  g.known_devices = config_.checkin.enabled ? known_clients_ : clients_.size();
  g.connected_devices = static_cast<uint64_t>(std::count_if(
      clients_.begin(), clients_.end(), [](const auto& kv) { return !kv.second.peer.empty(); }));
  g.paused_devices = clients_.CountPaused(t);
  g.checked_in_devices = engine.selecting() ? engine.held_count() : 0;
  g.selected_devices = engine.active() ? engine.selected_count() : 0;
  g.reporting_devices = engine.active() ? engine.received_count() : 0;
  g.updates_rejected = engine.rejected_updates();
  g.store_bytes = store_->ApproximateSize();
  SampleFds(t, false);
  if (fds_) {
    g.open_fds = fds_->open;
    g.fd_limit = fds_->limit;
  }
  if (const SecureRound* secure = engine.secure()) {
    g.secagg_stage = secure->stage_name();
    g.secagg_remaining = secure->remaining();
  }
  g.finished = engine.federation_done();
  if (config_.dp.enabled()) g.epsilon_budget = config_.dp.epsilon_budget;
  metrics_->Publish(g);
}

void Aggregator::LogRejection(const std::string& who, const std::string& reason, const std::string& message) {
  metrics_->Rejected(reason);
  uint64_t suppressed = 0;
  const std::string name = clients_.count(who) ? clients_.at(who).name : std::string();
  if (!log_limiter_.Allow(who + '\0' + reason, Clock::now(), &suppressed)) return;
  LOG_WARN("aggregator", "rejected from "
                             << (name.empty() ? "peer" : "'" + name + "'") << " (" << who.substr(0, 12)
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
  if (config_.checkin.enabled) {
    // Its record may be in the store only (devices away are not in memory).
    StatusOr<bool> known = EnsureLoaded(client_id);
    if (known.ok() && !*known) ++known_clients_;
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
                                      << (zap_ ? " (key " + client_id + ")" : std::string()) << " joined ("
                                      << clients_.size() << "/" << config_.min_clients << ")");
  }
  wire::Envelope reply;
  reply.mutable_welcome()->set_federation(config_.federation);
  reply.mutable_welcome()->set_model_arch(config_.model_arch);
  reply.mutable_welcome()->set_current_round(engine_->round());
  ReplyToClient(client_id, env.request_id(), std::move(reply));
  return Status::Ok();
}

StatusOr<bool> Aggregator::EnsureLoaded(const std::string& client_id) {
  if (clients_.count(client_id)) return true;
  ASSIGN_OR_RETURN(std::optional<records::ClientRecord> stored, store_->GetClient(client_id));
  if (!stored) return false;
  if (stored->client_id() != client_id) return false;  // stored under another key: recovery quarantines it
  clients_.Load(*stored, Clock::now(), NowUnixMs());
  return true;
}

Status Aggregator::HandleCheckIn(const net::Incoming& in, const wire::Envelope& env) {
  const wire::CheckIn& check_in = env.check_in();
  const std::string client_id = zap_ ? in.user_id : check_in.hello().client_name();
  const std::string& tag = in.user_id.empty() ? in.peer : in.user_id;
  if (client_id.empty()) {
    ReplyError(in.peer, tag, env.request_id(), wire::ERROR_MALFORMED, "check-in without a client name");
    return Status::Ok();
  }
  if (!config_.checkin.enabled) {
    ReplyError(in.peer, tag, env.request_id(), wire::ERROR_UNEXPECTED,
               "this aggregator keeps long-lived connections: say Hello, then TaskRequest (or start it "
               "with check-in selection, [round] checkin = true)");
    return Status::Ok();
  }
  StatusOr<bool> known = EnsureLoaded(client_id);
  if (!known.ok()) {
    if (!known.status().retryable()) return known.status();
    LOG_ERROR("aggregator", "could not read device record: " << known.status().message());
    ReplyError(in.peer, tag, env.request_id(), wire::ERROR_INTERNAL,
               "the aggregator could not read this "
               "device's record; retry");
    return Status::Ok();
  }
  clients_.Register(client_id, in.peer, check_in.hello(), NowUnixMs());
  if (!*known) {
    ++known_clients_;
    ++joined_since_log_;
    LOG_DEBUG("aggregator", "device '" << check_in.hello().client_name() << "' registered");
  }
  ClientRegistry::Client& state = clients_[client_id];
  state.checks_in = true;
  state.wants_final_model = check_in.final_model();
  HandleTaskRequest(client_id, env.request_id());
  return Status::Ok();
}

void Aggregator::SampleFds(Clock::time_point now, bool force) {
  // Listing /proc/self/fd costs about a microsecond per descriptor: every
  // 250 ms near the limit, every second below half of it (the engine counts
  // its headroom down per device held in between).
  const bool near = fds_ && fds_->open * 2 >= fds_->limit;
  if (!force && now - last_fd_sample_ < std::chrono::milliseconds(near ? 250 : 1000)) return;
  last_fd_sample_ = now;
  fds_ = ReadFdUsage();
  if (!fds_) return;
  idle_fds_ = std::min(idle_fds_, fds_->open);
  if (config_.checkin.enabled) {
    const size_t own = idle_fds_ + fds_->reserve;
    engine_->SetConnectionHeadroom(fds_->headroom(), fds_->limit > own ? fds_->limit - own : 0);
  }
}

void Aggregator::LogConnectionLimit() {
  // The engine reaches the limit by a sample, or by counting the devices it
  // held since one.
  const bool at = engine_->at_connection_limit();
  if (at == at_fd_limit_ || !fds_) return;
  at_fd_limit_ = at;
  if (at) {
    LOG_WARN("aggregator", "at the limit of open connections (" << fds_->limit << " file descriptors, "
                                                                << fds_->reserve << " kept for the store): "
                                                                << "selection holds no more check-ins and "
                                                                << "devices are told to come back; raise "
                                                                << "`ulimit -n` (LimitNOFILE= under systemd) "
                                                                << "to hold more devices at once");
  } else {
    LOG_INFO("aggregator", "below the limit of open connections again (" << fds_->open << " of "
                                                                         << fds_->limit << " open)");
  }
}

size_t Aggregator::FleetSize() const {
  const size_t allowed = zap_ ? zap_->allowed_count() : size_t{0};
  const size_t devices = allowed > config_.non_device_keys ? allowed - config_.non_device_keys : 0;
  return std::max(known_clients_, devices);
}

void Aggregator::FlushRegistry(bool force) {
  const auto now = Clock::now();
  if (!force && now - last_flush_ < std::chrono::milliseconds(100)) return;
  last_flush_ = now;
  std::vector<records::ClientRecord> dirty = clients_.Dirty(NowUnixMs());
  if (!dirty.empty()) {
    // New devices and changed records, grouped: one synced write per batch
    // instead of one per check-in. A device whose record is not written
    // yet stays in memory; if the aggregator dies first it registers again
    // at its next check-in.
    if (Status st = store_->PutClients(dirty); st.ok()) {
      clients_.MarkWritten(dirty);
    } else if (uint64_t n = 0; log_limiter_.Allow("registry-flush", now, &n)) {
      LOG_ERROR("aggregator", "could not write " << dirty.size() << " device records (kept in memory, "
                                                 << "retried): " << st.message());
    }
  }
  std::vector<std::string> away;
  for (const auto& [id, c] : clients_) {
    if (!c.dirty && !c.parked_request && !engine_->Involves(id)) away.push_back(id);
  }
  for (const auto& id : away) clients_.Forget(id);
  if (joined_since_log_ > 0 && (force || now - last_join_log_ > std::chrono::seconds(10))) {
    LOG_INFO("aggregator", joined_since_log_ << " devices registered since the last such line; "
                                             << known_clients_ << " known, " << clients_.size() << " active");
    joined_since_log_ = 0;
    last_join_log_ = now;
  }
}

std::optional<wire::ComeBack> Aggregator::ComeBackFor(const std::string& client_id,
                                                      const std::string& reason) {
  // Only a device that checks in leaves; one on a long-lived connection
  // asks again on it.
  if (!config_.checkin.enabled || !clients_[client_id].checks_in) return std::nullopt;
  wire::ComeBack come_back;
  FillComeBack(engine_->ComeBack(client_id, Clock::now(), reason), &come_back);
  return come_back;
}

void Aggregator::FillComeBack(const RoundEngine::CheckInAnswer& a, wire::ComeBack* c) const {
  c->set_after_ms(a.after_ms);
  c->set_round(a.round);
  c->set_reason(a.reason);
  c->set_federation(config_.federation);
}

void Aggregator::ReplyComeBack(const std::string& client_id, uint64_t request_id,
                               const RoundEngine::CheckInAnswer& a) {
  wire::Envelope env;
  if (clients_[client_id].checks_in) {
    FillComeBack(a, env.mutable_come_back());
  } else {
    // A device on a long-lived connection waits on it.
    env.mutable_wait()->set_retry_ms(a.after_ms);
    env.mutable_wait()->set_reason(a.reason);
  }
  ReplyToClient(client_id, request_id, std::move(env));
}

void Aggregator::HandleStatus(const net::Incoming& in, uint64_t request_id) {
  const auto now = Clock::now();
  const RoundEngine& engine = *engine_;
  wire::Envelope env;
  wire::StatusReply* r = env.mutable_status_reply();
  r->set_federation(config_.federation);
  r->set_model_arch(config_.model_arch);
  r->set_round(engine.round());
  r->set_round_active(engine.active());
  r->set_rounds_completed(engine.rounds_done());
  r->set_rounds_total(config_.rounds);
  r->set_finished(engine.federation_done());
  r->set_model_version(model_version());
  r->set_known_clients(static_cast<uint32_t>(config_.checkin.enabled ? known_clients_ : clients_.size()));
  if (engine.selecting()) {
    r->set_selecting_round(engine.round() + 1);
    r->set_checked_in(static_cast<uint32_t>(engine.held_count()));
  }
  r->set_connected_clients(static_cast<uint32_t>(std::count_if(
      clients_.begin(), clients_.end(), [](const auto& kv) { return !kv.second.peer.empty(); })));
  r->set_updates_received(static_cast<uint32_t>(engine.received_count()));
  r->set_updates_expected(!engine.active() ? 0
                          : engine.async() ? static_cast<uint32_t>(engine.target_updates())
                                           : static_cast<uint32_t>(engine.selected_count()));
  r->set_store_bytes(store_->ApproximateSize());
  r->set_uptime_seconds(std::chrono::duration<double>(now - started_).count());
  if (const SecureRound* secure = engine.secure()) {
    r->set_secagg_stage(secure->stage_name());
    r->set_secagg_remaining(secure->remaining());
  }
  r->set_failed_rounds_in_a_row(engine.backoff().failed_in_a_row());
  if (!engine.active()) r->set_next_round_in_seconds(engine.backoff().SecondsLeft(now));
  r->set_paused_clients(static_cast<uint32_t>(clients_.CountPaused(now)));
  r->set_updates_rejected(engine.rejected_updates());
  Reply(in.peer, in.user_id.empty() ? in.peer : in.user_id, request_id, std::move(env));
}

void Aggregator::HandlePull(const net::Incoming& in, const wire::Envelope& env) {
  const wire::PullRequest& req = env.pull_request();
  const std::string& tag = in.user_id.empty() ? in.peer : in.user_id;
  // The same pull again before the device read the first answer is not
  // answered in full a second time.
  const std::string dedupe =
      "pull:" + std::to_string(req.version()) + ":" + std::to_string(req.have_version());
  // Checked before the model is read and the reply built, so a device that
  // does not read costs neither memory nor work.
  const uint64_t version = req.version() == 0 ? model_version() : req.version();
  const size_t model_bytes = global_model().data.size() * sizeof(float);
  if (req.have_version() != version && model_bytes >= (size_t{64} << 10) &&
      Withhold(in.peer, tag, env.request_id(), model_bytes, dedupe, "PullReply")) {
    return;
  }
  StatusOr<wire::PullReply> pulled = engine_->registry().Pull(req);
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
  if (engine_->federation_done()) {
    wire::Envelope reply;
    reply.mutable_finished()->set_rounds_completed(engine_->rounds_done());
    reply.mutable_finished()->set_final_model_version(model_version());
    reply.mutable_finished()->set_reason("all rounds completed");
    if (state.wants_final_model && !final_model_) {
      StatusOr<wire::PullReply> final_model = engine_->registry().Pull(wire::PullRequest());
      if (final_model.ok()) {
        final_model_ = std::move(final_model).value();
      } else {
        LOG_WARN("aggregator", "cannot attach the final model for '"
                                   << state.name << "': " << final_model.status().message());
      }
    }
    if (state.wants_final_model && final_model_)
      *reply.mutable_finished()->mutable_final_model() = *final_model_;
    ReplyToClient(client_id, request_id, std::move(reply));
    state.told_finished = true;
    return;
  }
  if (engine_->AwaitsTask(client_id)) {
    SendTask(client_id, request_id);
    return;
  }
  if (config_.checkin.enabled) {
    const RoundEngine::CheckInAnswer a = engine_->CheckIn(
        client_id, Clock::now(), [this](const std::string& id) { return !zap_ || zap_->IsAllowed(id); });
    if (!a.hold) {
      ReplyComeBack(client_id, request_id, a);
      return;
    }
  }
  // Nothing for this client now: hold the request until a round selects it.
  state.parked_request = request_id;
  state.parked_since = Clock::now();
}

void Aggregator::SendTask(const std::string& client_id, uint64_t request_id) {
  ClientRegistry::Client& state = clients_[client_id];
  state.parked_request.reset();
  const std::string dedupe = "task:" + std::to_string(engine_->round());
  const size_t model_bytes = global_model().data.size() * sizeof(float);
  if (model_bytes >= (size_t{64} << 10) &&
      Withhold(state.peer, client_id, request_id, model_bytes, dedupe, "TrainTask")) {
    return;
  }
  // A device that repeats its request before reading the task gets it once.
  const auto now = Clock::now();
  if (ReplyToClient(client_id, request_id, engine_->MakeTask(client_id, now), dedupe))
    engine_->TaskSent(client_id, now);
}

void Aggregator::AnswerParked(bool keepalive_only) {
  const auto now = Clock::now();
  if (engine_->secure() && keepalive_only)
    SendSecureReplies(engine_->secure()->Keepalive(now, kParkKeepalive));
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
      env.mutable_wait()->set_reason(engine_->active() ? "not selected for this round"
                                                       : "waiting for clients");
      ReplyToClient(id, request_id, std::move(env));
    }
  }
}

Status Aggregator::HandleUpdate(const std::string& client_id, const wire::Envelope& env) {
  const wire::Update& update = env.update();
  if (engine_->async() && engine_->federation_done()) {
    // Updates still training when the last version was published: the
    // device learns the federation is over (Finished), not a refusal.
    HandleTaskRequest(client_id, env.request_id());
    return Status::Ok();
  }
  ASSIGN_OR_RETURN(std::optional<RoundEngine::Refusal> refused,
                   engine_->RecordUpdate(client_id, update, Clock::now()));
  if (!refused) {
    wire::Envelope ack;
    ack.mutable_ack()->set_round(update.round());
    if (auto come_back = ComeBackFor(client_id, "update recorded"))
      *ack.mutable_ack()->mutable_come_back() = *come_back;
    ReplyToClient(client_id, env.request_id(), std::move(ack));
    return Status::Ok();
  }
  if (refused->counted) {
    ++rejected_messages_;
    LogRejection(client_id, refused->reason,
                 "update for round " + std::to_string(update.round()) + ": " + refused->message);
  }
  wire::Envelope err = proto::MakeError(refused->code, refused->message);
  // Unless it should retry, its part in the round is over: away until pace
  // steering wants it.
  if (refused->code != wire::ERROR_INTERNAL && refused->code != wire::ERROR_DUPLICATE) {
    if (auto come_back = ComeBackFor(client_id, refused->reason))
      *err.mutable_error()->mutable_come_back() = *come_back;
  }
  ReplyToClient(client_id, env.request_id(), std::move(err));
  return Status::Ok();
}

void Aggregator::HandleSecAgg(const std::string& client_id, const wire::Envelope& env) {
  const wire::SecAggMessage& m = env.secagg();
  SecureRound* secure = engine_->secure();
  if (!engine_->active() || secure == nullptr || m.round() != engine_->round()) {
    ReplyError(clients_[client_id].peer, client_id, env.request_id(), wire::ERROR_WRONG_ROUND,
               "no secure aggregation is running for round " + std::to_string(m.round()) + " (current " +
                   std::to_string(engine_->round()) + (engine_->active() ? ", open)" : ", closed)"));
    return;
  }
  std::optional<wire::Envelope> reply = secure->Handle(client_id, env.request_id(), m);
  if (reply) {
    if (reply->has_error()) ++rejected_messages_;
    ReplyToClient(client_id, env.request_id(), std::move(*reply));
  }
}

void Aggregator::SendSecureReplies(std::vector<SecureRound::Reply> replies) {
  for (auto& r : replies) ReplyToClient(r.client_id, r.request_id, std::move(r.envelope));
}

bool Aggregator::ReplyToClient(const std::string& client_id, uint64_t request_id, wire::Envelope env,
                               const std::string& dedupe) {
  return Reply(clients_[client_id].peer, client_id, request_id, std::move(env), dedupe);
}

bool Aggregator::Reply(const std::string& peer, const std::string& tag, uint64_t request_id,
                       wire::Envelope env, const std::string& dedupe) {
  // Replies below this size are never withheld (they are bounded by the
  // socket's per-peer message queue instead).
  constexpr size_t kLargeReply = size_t{64} << 10;
  env.set_request_id(request_id);
  std::string bytes = proto::SerializeEnvelope(&env);
  if (bytes.size() >= kLargeReply) {
    if (Withhold(peer, tag, request_id, bytes.size(), dedupe, proto::BodyName(env))) return false;
    if (!dedupe.empty()) {
      if (last_large_request_.size() > 4096)
        last_large_request_.clear();  // a bound; only repeats are affected
      last_large_request_[tag] = dedupe;
    }
  }
  const size_t size = bytes.size();
  engine_->CountBytes(0, size);
  metrics_->Bytes(0, size);
  if (Status st = socket_->Send(peer, std::move(bytes), tag); !st.ok()) {
    LOG_DEBUG("aggregator", "reply " << proto::BodyName(env) << " not delivered: " << st.message());
    return false;
  }
  LOG_DEBUG("aggregator",
            "reply " << proto::BodyName(env) << " #" << request_id << " sent (" << size << " bytes)");
  return true;
}

bool Aggregator::Withhold(const std::string& peer, const std::string& tag, uint64_t request_id, size_t bytes,
                          const std::string& dedupe, const char* what) {
  const int64_t queued = socket_->QueuedBytes(tag);
  std::string why;
  auto last = last_large_request_.find(tag);
  if (!dedupe.empty() && queued > 0 && last != last_large_request_.end() && last->second == dedupe) {
    why = "the answer to this same request is still queued for this device; read it first";
  } else if (static_cast<uint64_t>(queued) + bytes > limits_.config().max_queued_bytes) {
    why =
        std::to_string(queued) + " bytes are queued for this device and not yet read; read them, then retry";
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
