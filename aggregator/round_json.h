// A round's summary as JSON and back: the simulator's round log and
// rounds.json, and the dashboard's /api/state. Unknown keys are ignored and
// missing optional ones read as absent, so older logs still load.
// Thread-safety: plain functions.
#pragma once

#include <nlohmann/json.hpp>

#include "aggregator/round_engine.h"
#include "core/status.h"

namespace flotilla::aggregator {

nlohmann::json RoundToJson(const RoundSummary& r);
// InvalidArgument naming what is missing or of the wrong type.
StatusOr<RoundSummary> RoundFromJson(const nlohmann::json& j);

}  // namespace flotilla::aggregator
