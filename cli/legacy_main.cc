// The single-purpose executables of earlier versions (flotilla-aggregator,
// flotilla-client, ...): each runs one `flotilla` subcommand, so scripts
// that call them keep working. FLOTILLA_COMMAND names the function.
#include "cli/commands.h"

int main(int argc, char** argv) { return flotilla::cli::FLOTILLA_COMMAND(argc, argv); }
