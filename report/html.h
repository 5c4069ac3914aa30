// A run report: one self-contained HTML page (uPlot, its stylesheet, the
// runs' data and the plotting script inline; nothing fetched) with accuracy
// and loss, participation and dropouts, bytes on the wire, the round-time
// split and epsilon against the budget, per round, for one run or several
// overlaid. See docs/reports.md.
// Thread-safety: plain functions over their arguments.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "report/run_data.h"

namespace flotilla::report {

// The page for `runs` (at least one), titled `title` (HTML-escaped here).
// When the page's script has drawn every chart it adds an element with id
// "report-ok"; if it throws, one with id "report-error" and the message.
std::string RenderReport(const std::vector<RunData>& runs, const std::string& title);

// "a & <b>" -> "a &amp; &lt;b&gt;".
std::string EscapeHtml(const std::string& text);

}  // namespace flotilla::report
