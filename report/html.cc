#include "report/html.h"

#include <string_view>

#include "web/assets.h"

namespace flotilla::report {

// The page's template and script (report/page.html, report/page.js),
// generated into page_data.cc by web/embed.cmake.
extern const std::string_view kPageHtml;
extern const std::string_view kPageJs;

namespace {

// JSON inside <script type="application/json">: '<' appears only inside
// strings there, where \u003c is the same character and cannot close the
// element or open a comment.
std::string JsonForScript(const nlohmann::json& value) {
  const std::string text = value.dump();
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '<') {
      out += "\\u003c";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string EscapeHtml(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string RenderReport(const std::vector<RunData>& runs, const std::string& title) {
  nlohmann::json data = nlohmann::json::array();
  for (const RunData& run : runs) data.push_back(RunToJson(run));
  const std::string values[][2] = {
      {"TITLE", EscapeHtml(title)},
      {"UPLOT_VERSION", std::string(web::UplotVersion())},
      {"UPLOT_LICENSE", EscapeHtml(std::string(web::kUplotLicense))},
      {"UPLOT_CSS", web::EscapeForInlineElement(web::kUplotCss)},
      {"UPLOT_JS", web::EscapeForInlineElement(web::kUplotJs)},
      {"DATA", JsonForScript(data)},
      {"PAGE_JS", web::EscapeForInlineElement(kPageJs)},
  };
  // One pass over the template: what is put in is never searched again.
  std::string page;
  const std::string_view tmpl = kPageHtml;
  size_t pos = 0;
  while (pos < tmpl.size()) {
    const size_t open = tmpl.find("{{", pos);
    if (open == std::string_view::npos) break;
    const size_t close = tmpl.find("}}", open);
    if (close == std::string_view::npos) break;
    page.append(tmpl.substr(pos, open - pos));
    const std::string_view key = tmpl.substr(open + 2, close - open - 2);
    bool found = false;
    for (const auto& [name, value] : values) {
      if (key == name) {
        page += value;
        found = true;
      }
    }
    if (!found) page.append(tmpl.substr(open, close + 2 - open));
    pos = close + 2;
  }
  page.append(tmpl.substr(pos));
  return page;
}

}  // namespace flotilla::report
