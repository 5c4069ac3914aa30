#!/usr/bin/env bash
# clang-format over every C++ file in the repository, against its own
# .clang-format. Usage:
#   scripts/format.sh           reformat in place
#   scripts/format.sh --check   list the files that differ and fail (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || bash scripts/setup.sh --no-build
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.cc' '*.h')
if [ "${1:-}" = "--check" ]; then
  bad=()
  for f in "${files[@]}"; do
    clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
  done
  if [ ${#bad[@]} -gt 0 ]; then
    printf 'format: %s\n' "${bad[@]}" >&2
    echo "format: ${#bad[@]} file(s) differ from .clang-format; run scripts/format.sh and commit" >&2
    exit 1
  fi
  echo "format: ${#files[@]} files match .clang-format"
else
  clang-format -i "${files[@]}"
fi
