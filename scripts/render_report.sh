#!/usr/bin/env bash
# A run report as an image, for docs/: `flotilla report` writes the page,
# headless Chromium (Debian's chromium, in scripts/deps.txt) screenshots it.
# Usage: scripts/render_report.sh OUT.png RUN_DIR... [flotilla report flags]
#   SIZE=WIDTH,HEIGHT (default 1100,2400) sets the browser window, that is
#   the image; FLOTILLA=path picks the binary (default build/flotilla).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
out=$1
shift
flotilla=${FLOTILLA:-build/flotilla}
size=${SIZE:-1100,2400}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$flotilla" report "$@" --out "$tmp/report.html" >/dev/null
# As root the sandbox must be off; the other flags keep Chromium from
# reaching for the network (there is none here) and from a shared profile.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$tmp/profile" --window-size="$size" \
  --screenshot="$(realpath -m "$out")" "file://$tmp/report.html" 2>/dev/null
echo "render_report: wrote $out ($(du -k "$out" | cut -f1) KB)"
