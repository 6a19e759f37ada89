#!/usr/bin/env bash
# Configures and builds kvwire the way scripts/quickstart.sh does (its build
# step, kvwire_build_release in scripts/common.sh): Release, tests and
# benchmarks off, and with KVWIRE_WITH_CUDA=ON for the GPUs' architectures
# on the GPU path (scripts/gpu_detect.sh). docker/Dockerfile.cuda builds its
# binaries with it, so the image and the quickstart share one build step.
# Installs nothing (the quickstart installs first; the image has its
# packages): dependencies in a prefix come from KVWIRE_DEPS_DEBS /
# KVWIRE_DEPS_PREFIX as in the quickstart.
#
# Usage: scripts/build.sh BUILD_DIR [TARGET...]   (all targets without)
#   KVWIRE_GPU=1 KVWIRE_CUDA_ARCHS="80;86;89;90" builds for CUDA on a
#   machine without a GPU (an image build), given nvcc and a CUDA LibTorch.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
(($#)) || { echo "usage: $0 BUILD_DIR [TARGET...]" >&2; exit 2; }
kvwire_deps_prefix
kvwire_gpu_detect
kvwire_build_release "$@"
