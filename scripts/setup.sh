#!/usr/bin/env bash
# Installs the Debian 12 packages listed in scripts/deps.txt (idempotent:
# does nothing when all are present), then configures and builds Flotilla
# into build/. Usage: scripts/setup.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
mapfile -t packages < <(grep -v '^\s*#' scripts/deps.txt | grep -v '^\s*$')
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#packages[@]} Debian packages present"
fi

# uPlot, the chart library that the build embeds in the binary (web/), from
# npm: pinned in web/package.json, its hash in web/package-lock.json,
# installed into web/node_modules (not committed). npm ci runs only when the
# installed version is not the pinned one.
uplot_version() { sed -n 's/.*"'"$2"'": *"\([^"]*\)".*/\1/p' "$1" 2>/dev/null | head -1; }
pinned=$(uplot_version web/package.json uplot)
if [ "$(uplot_version web/node_modules/uplot/package.json version)" != "$pinned" ]; then
  if ! command -v npm >/dev/null; then
    # Debian's nodejs comes without npm; NodeSource's (which conflicts with Debian's npm) has it.
    echo "setup: installing Debian's npm"
    $SUDO apt-get install -y -q --no-install-recommends npm
  fi
  echo "setup: installing uPlot $pinned into web/node_modules (npm ci)"
  npm ci --prefix web --ignore-scripts --no-audit --no-fund --loglevel=error
else
  echo "setup: uPlot $pinned present"
fi

[ "${1:-}" = "--no-build" ] && exit 0

jobs=$(nproc)
echo "setup: configuring and building with $jobs jobs (first build takes several minutes: LibTorch headers are heavy)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${FLOTILLA_CMAKE_ARGS:-} >/dev/null
start=$(date +%s)
cmake --build build -j "$jobs"
echo "setup: build finished in $(( $(date +%s) - start )) s"
