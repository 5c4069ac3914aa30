// Front-end libraries compiled into the binary, so that pages Flotilla
// writes or serves (run reports, the dashboard) work offline with no file
// beside them: inline each in a <script> or <style> element.
// The bytes come from the npm package pinned in web/package.json.
// Thread-safety: constants, readable from any thread.
#pragma once

#include <string>
#include <string_view>

namespace flotilla::web {

// uPlot's minified browser build (defines the global `uPlot`), its
// stylesheet, and its MIT license (to keep beside the code in a page).
extern const std::string_view kUplotJs;
extern const std::string_view kUplotCss;
extern const std::string_view kUplotLicense;

// The embedded uPlot's version, "1.6.32".
std::string_view UplotVersion();

// `text` made safe inside an inline <script> or <style> element: every
// "</" becomes "<\/" (the same string to JavaScript and to CSS's parser
// inside strings and comments), so the element cannot be closed early.
std::string EscapeForInlineElement(std::string_view text);

}  // namespace flotilla::web
