#!/usr/bin/env bash
# Prints the Debian packages that own the shared libraries BINARY... link
# against (via ldd and dpkg -S), one per line: the runtime stage of
# Dockerfile.cpu installs exactly these, so the image carries no -dev
# packages and nothing stale when scripts/deps.txt changes.
set -euo pipefail
for bin in "$@"; do
  ldd "$bin" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  real=$(readlink -f "$lib")
  dpkg -S "$lib" 2>/dev/null || dpkg -S "$real" 2>/dev/null || true
done | cut -d: -f1 | sed 's/,.*//' | sort -u
