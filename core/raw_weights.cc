#include "core/raw_weights.h"

#include <fstream>
#include <sstream>

namespace flotilla {
namespace {

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace

Status WriteRawWeights(const std::string& path, const Weights& weights, const std::string& arch,
                       uint64_t version, uint32_t round) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(weights.data.data()),
              static_cast<std::streamsize>(weights.data.size() * sizeof(float)));
    if (!out) return Unavailable("cannot write " + path);
  }
  std::ostringstream json;
  json << "{\n  \"format\": \"float32-le\",\n  \"arch\": \"" << JsonEscape(arch)
       << "\",\n  \"version\": " << version << ",\n  \"round\": " << round << ",\n  \"tensors\": [\n";
  const auto& tensors = weights.layout->tensors();
  for (size_t i = 0; i < tensors.size(); ++i) {
    json << "    {\"name\": \"" << JsonEscape(tensors[i].name) << "\", \"offset\": " << tensors[i].offset
         << ", \"shape\": [";
    for (size_t d = 0; d < tensors[i].shape.size(); ++d) json << (d ? ", " : "") << tensors[i].shape[d];
    json << "]}" << (i + 1 < tensors.size() ? "," : "") << "\n";
  }
  json << "  ]\n}\n";
  std::ofstream meta(path + ".json", std::ios::trunc);
  meta << json.str();
  if (!meta) return Unavailable("cannot write " + path + ".json");
  return Status::Ok();
}

}  // namespace flotilla
