#include "aggregator/model_registry.h"

#include <algorithm>

#include "core/clock.h"
#include "core/log.h"
#include "privacy/signing.h"
#include "proto/codec.h"

namespace flotilla::aggregator {

StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Recover(const RegistryOptions& options, Store* store,
                                                                Weights initial) {
  std::unique_ptr<ModelRegistry> r(new ModelRegistry(options, store, std::move(initial)));
  ASSIGN_OR_RETURN(r->stored_, store->ListModelVersions());
  if (r->stored_.empty()) {
    ASSIGN_OR_RETURN(records::ModelRecord record, r->SignNext(r->global_, 0, NowUnixMs()));  // version 1
    RETURN_IF_ERROR(store->PutModel(record));
    r->Committed(record, std::move(r->global_), {});
    return r;
  }
  const uint64_t latest = r->stored_.back();
  ASSIGN_OR_RETURN(records::ModelRecord record, store->GetModel(latest));
  if (record.arch() != options.arch) {
    return FailedPrecondition("store " + options.store_path + " holds a '" + record.arch() +
                              "' model, not '" + options.arch + "'; use another --store");
  }
  ASSIGN_OR_RETURN(Weights stored, proto::WeightsFromProto(record.weights(), r->global_.layout));
  const privacy::Digest digest = privacy::ModelDigest(stored);
  const auto& key = options.signing_key->public_key;
  Status verified =
      privacy::VerifyModel(key, options.federation, latest, record.round(), digest, record.signature());
  if (!verified.ok() && record.federation().empty() &&
      privacy::VerifyModelV1(key, latest, record.round(), digest, record.signature()).ok()) {
    RETURN_IF_ERROR(r->ResignLegacyModels());
    ASSIGN_OR_RETURN(record, store->GetModel(latest));
    verified = Status::Ok();
  }
  if (!verified.ok() && !record.federation().empty() && record.federation() != options.federation) {
    return FailedPrecondition("store " + options.store_path + " belongs to federation '" +
                              record.federation() + "', not '" + options.federation +
                              "'; use another --store or --federation");
  }
  RETURN_IF_ERROR(verified.WithContext("stored model (was the store written with another signing key?)"));
  r->global_ = std::move(stored);
  r->version_ = latest;
  r->round_ = record.round();
  r->signature_ = record.signature();
  return r;
}

// A store written before signatures covered the federation id: re-sign
// every stored version (each must verify with the old format first).
Status ModelRegistry::ResignLegacyModels() {
  for (uint64_t v : stored_) {
    ASSIGN_OR_RETURN(records::ModelRecord m, store_->GetModel(v));
    ASSIGN_OR_RETURN(Weights w, proto::WeightsFromProto(m.weights(), global_.layout));
    const privacy::Digest digest = privacy::ModelDigest(w);
    RETURN_IF_ERROR(
        privacy::VerifyModelV1(options_.signing_key->public_key, v, m.round(), digest, m.signature())
            .WithContext("re-signing the store's models"));
    ASSIGN_OR_RETURN(std::string sig,
                     privacy::SignModel(*options_.signing_key, options_.federation, v, m.round(), digest));
    m.set_signature(sig);
    m.set_federation(options_.federation);
    RETURN_IF_ERROR(store_->PutModel(m));
  }
  LOG_INFO("aggregator", "re-signed " << stored_.size() << " stored model versions with signatures that "
                                      << "cover the federation id '" << options_.federation << "'");
  return Status::Ok();
}

StatusOr<records::ModelRecord> ModelRegistry::SignNext(const Weights& weights, uint32_t round,
                                                       int64_t created_unix_ms) const {
  records::ModelRecord model;
  model.set_version(version_ + 1);
  model.set_round(round);
  model.set_parent_version(version_);
  model.set_arch(options_.arch);
  model.set_federation(options_.federation);
  proto::WeightsToProto(weights, model.mutable_weights());
  model.set_created_unix_ms(created_unix_ms);
  ASSIGN_OR_RETURN(std::string signature,
                   privacy::SignModel(*options_.signing_key, options_.federation, model.version(), round,
                                      privacy::ModelDigest(weights)));
  model.set_signature(signature);
  return model;
}

std::vector<uint64_t> ModelRegistry::Expired(uint64_t newest) const {
  std::vector<uint64_t> expired;
  if (options_.retain_last == 0) return expired;
  for (uint64_t v : stored_) {
    const bool recent = v + options_.retain_last > newest;
    const bool milestone = options_.retain_every > 0 && v % options_.retain_every == 0;
    if (!recent && !milestone && v != 1) expired.push_back(v);
  }
  return expired;
}

void ModelRegistry::Committed(const records::ModelRecord& record, Weights weights,
                              const std::vector<uint64_t>& expired) {
  stored_.push_back(record.version());
  for (uint64_t v : expired) stored_.erase(std::remove(stored_.begin(), stored_.end(), v), stored_.end());
  global_ = std::move(weights);
  version_ = record.version();
  round_ = record.round();
  signature_ = record.signature();
}

StatusOr<wire::PullReply> ModelRegistry::Pull(const wire::PullRequest& req) const {
  const uint64_t version = req.version() == 0 ? version_ : req.version();
  wire::PullReply r;
  r.set_version(version);
  if (req.have_version() == version) {
    r.set_up_to_date(true);
    return r;
  }
  ASSIGN_OR_RETURN(records::ModelRecord model, store_->GetModel(version));
  r.set_round(model.round());
  r.set_model_arch(model.arch());
  r.set_signature(model.signature());
  // Send only the tensors that differ from the device's copy, when we still
  // hold that version.
  StatusOr<records::ModelRecord> base = req.have_version() != 0
                                            ? store_->GetModel(req.have_version())
                                            : StatusOr<records::ModelRecord>(NotFound(""));
  if (!base.ok()) {
    *r.mutable_weights() = std::move(*model.mutable_weights());
    return r;
  }
  const auto& tensors = global_.layout->tensors();
  const std::string& target = model.weights().data();
  const std::string& have = base->weights().data();
  *r.mutable_weights()->mutable_layout() = model.weights().layout();
  r.set_base_version(req.have_version());
  std::string* data = r.mutable_weights()->mutable_data();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const size_t offset = static_cast<size_t>(tensors[i].offset) * sizeof(float);
    const size_t bytes = static_cast<size_t>(tensors[i].numel) * sizeof(float);
    if (offset + bytes > target.size() || offset + bytes > have.size() ||
        target.compare(offset, bytes, have, offset, bytes) != 0) {
      r.add_changed_tensors(static_cast<uint32_t>(i));
      data->append(target, offset, bytes);
    }
  }
  return r;
}

}  // namespace flotilla::aggregator
