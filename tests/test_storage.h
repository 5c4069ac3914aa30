// A KvStore that fails chosen writes, for tests that need a crash between
// two writes: the writes named with `fail_prefix` fail `times` times (with
// Unavailable, as a passing I/O error would), the rest go to `inner`.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "storage/kv_store.h"

namespace flotilla::testing {

class FailingKvStore : public storage::KvStore {
 public:
  FailingKvStore(std::shared_ptr<storage::KvStore> inner, std::string fail_prefix, int times)
      : KvStore(inner->path()), inner_(std::move(inner)), fail_prefix_(std::move(fail_prefix)), left_(times) {}

  Status Write(const storage::WriteBatch& batch, const std::string& what) override {
    if (what.rfind(fail_prefix_, 0) == 0 && left_.fetch_sub(1) > 0) return Unavailable("injected failure: " + what);
    return inner_->Write(batch, what);
  }
  StatusOr<std::string> Get(const std::string& family, const std::string& key) const override {
    return inner_->Get(family, key);
  }
  Status Scan(const std::string& family, const std::string& prefix,
              const std::function<Status(std::string_view, std::string_view)>& visit) const override {
    return inner_->Scan(family, prefix, visit);
  }
  StatusOr<std::string> LastKey(const std::string& family) const override { return inner_->LastKey(family); }
  uint64_t ApproximateSize() const override { return inner_->ApproximateSize(); }
  void set_min_free_bytes(uint64_t bytes) override { inner_->set_min_free_bytes(bytes); }

 private:
  std::shared_ptr<storage::KvStore> inner_;
  std::string fail_prefix_;
  std::atomic<int> left_;
};

// Shares one store between several owners (an aggregator and its restart).
class SharedKvStore : public storage::KvStore {
 public:
  explicit SharedKvStore(std::shared_ptr<storage::KvStore> inner) : KvStore(inner->path()), inner_(std::move(inner)) {}
  Status Write(const storage::WriteBatch& batch, const std::string& what) override { return inner_->Write(batch, what); }
  StatusOr<std::string> Get(const std::string& family, const std::string& key) const override {
    return inner_->Get(family, key);
  }
  Status Scan(const std::string& family, const std::string& prefix,
              const std::function<Status(std::string_view, std::string_view)>& visit) const override {
    return inner_->Scan(family, prefix, visit);
  }
  StatusOr<std::string> LastKey(const std::string& family) const override { return inner_->LastKey(family); }
  uint64_t ApproximateSize() const override { return inner_->ApproximateSize(); }
  void set_min_free_bytes(uint64_t bytes) override { inner_->set_min_free_bytes(bytes); }

 private:
  std::shared_ptr<storage::KvStore> inner_;
};

}  // namespace flotilla::testing
