#!/usr/bin/env bash
# Installs the Node.js clients of the OpenAI-compatible HTTP API end-to-end
# test (tests/receiver_service/openai_e2e_test.cc, driving
# tests/js/openai_clients_test.cjs): the official `openai` package and
# @grpc/grpc-js + @grpc/proto-loader, at pinned versions, into
# KVWIRE_OPENAI_NPM_DIR (default: <repo>/.cache/openai_clients, git-ignored;
# nothing is committed). ctest runs it as the fixture of that test.
#
# Without node on PATH it does nothing and succeeds (the test then skips);
# with node but a failed install it fails, so the test cannot pass silently.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${KVWIRE_OPENAI_NPM_DIR:-${repo}/.cache/openai_clients}"
# Pinned so the test does not move under us. openai 7.x needs node >= 22
# (Debian 12 ships 18): 6.30.1 is the newest that runs on the CI image.
pkgs=(openai@6.30.1 @grpc/grpc-js@1.14.7 @grpc/proto-loader@0.8.1)

if ! command -v node >/dev/null; then
  echo "openai_clients: node not found on PATH; the OpenAI client e2e test skips"
  exit 0
fi
command -v npm >/dev/null || { echo "openai_clients: ERROR: node without npm" >&2; exit 1; }

mkdir -p "${cache}"
stamp="${cache}/.installed"
want="${pkgs[*]}"
if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${want}" ]]; then
  [[ -f "${cache}/package.json" ]] || echo '{"name":"kvwire-openai-clients","private":true}' >"${cache}/package.json"
  echo "openai_clients: npm install ${want} into ${cache}"
  if ! npm install --prefix "${cache}" --no-audit --no-fund --loglevel=error "${pkgs[@]}"; then
    echo "openai_clients: ERROR: npm install failed (is the npm registry reachable?)" >&2
    exit 1
  fi
  echo "${want}" >"${stamp}"
fi
echo "openai_clients: ${cache}/node_modules"
