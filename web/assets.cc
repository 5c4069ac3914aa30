// The embedded assets' metadata; their bytes are generated into
// uplot_data.cc by web/embed.cmake.
#include "web/assets.h"

namespace flotilla::web {

std::string_view UplotVersion() { return FLOTILLA_UPLOT_VERSION; }

std::string EscapeForInlineElement(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    out += text[i];
    if (text[i] == '<' && i + 1 < text.size() && text[i + 1] == '/') out += '\\';
  }
  return out;
}

}  // namespace flotilla::web
