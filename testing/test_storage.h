// Key-value stores for tests: one shared between several owners (an
// aggregator and its restart), and one that fails chosen writes, for tests
// that need a crash between two writes.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "storage/kv_store.h"

namespace flotilla::testing {

// Passes everything to a store it shares with others.
class SharedKvStore : public storage::KvStore {
 public:
  explicit SharedKvStore(std::shared_ptr<storage::KvStore> inner)
      : KvStore(inner->path()), inner_(std::move(inner)) {}
  Status Write(const storage::WriteBatch& batch, const std::string& what) override {
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
};

// The writes named with `fail_prefix` fail `times` times (with Unavailable,
// as a passing I/O error would, writing nothing); the rest go through.
class FailingKvStore : public SharedKvStore {
 public:
  FailingKvStore(std::shared_ptr<storage::KvStore> inner, std::string fail_prefix, int times)
      : SharedKvStore(std::move(inner)), fail_prefix_(std::move(fail_prefix)), left_(times) {}

  Status Write(const storage::WriteBatch& batch, const std::string& what) override {
    if (what.rfind(fail_prefix_, 0) == 0 && left_.fetch_sub(1) > 0)
      return Unavailable("injected failure: " + what);
    return SharedKvStore::Write(batch, what);
  }

 private:
  std::string fail_prefix_;
  std::atomic<int> left_;
};

}  // namespace flotilla::testing
