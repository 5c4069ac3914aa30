// The in-memory KvStore: ordered maps per family behind one mutex. Batches
// apply all-or-nothing (an unknown family fails the whole batch first).
#include <map>
#include <mutex>

#include "storage/kv_store.h"

namespace flotilla::storage {
namespace {

class MemoryStore : public KvStore {
 public:
  MemoryStore(const StoreOptions& options, std::string name) : KvStore(std::move(name)) {
    for (const auto& f : options.families) families_[f];
  }

  Status Write(const WriteBatch& batch, const std::string& what) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& op : batch.ops()) {
      if (!families_.count(op.family)) return Internal(what + ": no column family '" + op.family + "'");
    }
    for (const auto& op : batch.ops()) {
      auto& f = families_[op.family];
      switch (op.kind) {
        case WriteBatch::Op::Kind::kPut:
          f[op.key] = op.value;
          break;
        case WriteBatch::Op::Kind::kDelete:
          f.erase(op.key);
          break;
        case WriteBatch::Op::Kind::kDeleteRange:
          f.erase(f.lower_bound(op.key), f.lower_bound(op.value));
          break;
      }
    }
    return Status::Ok();
  }

  StatusOr<std::string> Get(const std::string& family, const std::string& key) const override {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(const Family* f, Find(family));
    auto it = f->find(key);
    if (it == f->end()) return NotFound(family + " has no such key");
    return it->second;
  }

  Status Scan(const std::string& family, const std::string& prefix,
              const std::function<Status(std::string_view, std::string_view)>& visit) const override {
    // Copy the range first so that `visit` may write to the store.
    std::vector<std::pair<std::string, std::string>> range;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ASSIGN_OR_RETURN(const Family* f, Find(family));
      for (auto it = f->lower_bound(prefix);
           it != f->end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
        range.emplace_back(*it);
      }
    }
    for (const auto& [k, v] : range) RETURN_IF_ERROR(visit(k, v));
    return Status::Ok();
  }

  StatusOr<std::string> LastKey(const std::string& family) const override {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(const Family* f, Find(family));
    return f->empty() ? std::string() : f->rbegin()->first;
  }

  uint64_t ApproximateSize() const override {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t total = 0;
    for (const auto& [name, f] : families_) {
      for (const auto& [k, v] : f) total += k.size() + v.size();
    }
    return total;
  }

  void set_min_free_bytes(uint64_t) override {}

 private:
  using Family = std::map<std::string, std::string>;
  StatusOr<const Family*> Find(const std::string& family) const {
    auto it = families_.find(family);
    if (it == families_.end()) return Internal("no column family '" + family + "'");
    return &it->second;
  }

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
};

}  // namespace

std::unique_ptr<KvStore> NewMemoryStore(const StoreOptions& options, const std::string& name) {
  return std::make_unique<MemoryStore>(options, name);
}

}  // namespace flotilla::storage
