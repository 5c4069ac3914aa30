#include "privacy/secagg_codec.h"

#include <string>

namespace flotilla::privacy::secagg_internal {

Status ByteReader::Truncated() const {
  return InvalidArgument(std::string(what_) + ": truncated or malformed");
}

Status ReadHeader(ByteReader* r, uint8_t tag) {
  uint8_t got_tag = 0, version = 0;
  if (!r->U8(&got_tag) || !r->U8(&version)) return r->Truncated();
  if (got_tag != tag) {
    return InvalidArgument(std::string(r->what()) + ": wrong message type " + std::to_string(got_tag));
  }
  if (version != kWireVersion) {
    return InvalidArgument(std::string(r->what()) + ": unsupported version " + std::to_string(version));
  }
  return Status::Ok();
}

Status ExpectEnd(const ByteReader& r) {
  if (r.left() != 0) {
    return InvalidArgument(std::string(r.what()) + ": " + std::to_string(r.left()) + " trailing bytes");
  }
  return Status::Ok();
}

}  // namespace flotilla::privacy::secagg_internal
