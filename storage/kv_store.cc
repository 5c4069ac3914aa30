#include "storage/kv_store.h"

namespace flotilla::storage {

void WriteBatch::Put(std::string family, std::string key, std::string value) {
  bytes_ += key.size() + value.size();
  ops_.push_back({Op::Kind::kPut, std::move(family), std::move(key), std::move(value)});
}

void WriteBatch::Delete(std::string family, std::string key) {
  bytes_ += key.size();
  ops_.push_back({Op::Kind::kDelete, std::move(family), std::move(key), std::string()});
}

void WriteBatch::DeleteRange(std::string family, std::string begin, std::string end) {
  bytes_ += begin.size() + end.size();
  ops_.push_back({Op::Kind::kDeleteRange, std::move(family), std::move(begin), std::move(end)});
}

}  // namespace flotilla::storage
