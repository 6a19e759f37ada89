#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for building on an offline GPU host: the
# Debian packages of scripts/gpu-debs.txt in .gpu/debs (scripts/gpu_deps.sh
# fetch; run on a networked Debian 12 machine) and .gpu/device-env.sh, which
# sources scripts/gpu_env.sh (GPU_CMAKE_ARGS for the scripts/gpu_*.sh runs).
# Carry .gpu/ with the working tree, then on the host: source
# .gpu/device-env.sh. scripts/quickstart.sh and scripts/test.sh need only
# KVWIRE_SKIP_DEPS=1 KVWIRE_DEPS_DEBS=.gpu/debs (README, "With a GPU").
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$root/.gpu"
rm -f "$root/.gpu/device-env.sh"
cat >"$root/.gpu/device-env.sh" <<'SH'
# Written by scripts/gpu_kit.sh: source it from the repository root.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/gpu_env.sh"
SH
"$root/scripts/gpu_deps.sh" fetch "$root/.gpu/debs"
