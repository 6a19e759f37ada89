#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for building on an offline GPU host: the shared
# kit from ../shared/gpu plus the extra Debian packages this project needs
# (scripts/gpu-extra-debs.txt). Send it with `carry: [".gpu"]`, then on the
# host: source .gpu/device-env.sh (see ../shared/gpu/README.md).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kit=${KVWIRE_GPU_KIT:-$root/../shared/gpu}
mkdir -p "$root/.gpu"
cp "$kit/device-env.sh" "$kit/fetch-debs.sh" "$root/.gpu/"
cat "$kit/deb-list.txt" "$root/scripts/gpu-extra-debs.txt" >"$root/.gpu/deb-list.txt"
bash "$root/.gpu/fetch-debs.sh" "$root/.gpu/debs"
