#!/usr/bin/env bash
# Installs the Debian 12 packages listed in scripts/deps.txt (idempotent:
# does nothing when all are present), then configures and builds Flotilla
# into build/. Usage: scripts/setup.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t packages < <(grep -v '^\s*#' scripts/deps.txt | grep -v '^\s*$')
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#packages[@]} Debian packages present"
fi

[ "${1:-}" = "--no-build" ] && exit 0

jobs=$(nproc)
echo "setup: configuring and building with $jobs jobs (first build takes several minutes: LibTorch headers are heavy)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${FLOTILLA_CMAKE_ARGS:-} >/dev/null
start=$(date +%s)
cmake --build build -j "$jobs"
echo "setup: build finished in $(( $(date +%s) - start )) s"
