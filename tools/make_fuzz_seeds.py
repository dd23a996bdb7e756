#!/usr/bin/env python3
"""Write the tokenizer.json seeds of tests/fuzz/corpus/fuzz_tokenizer_json/: models/tokenizer.json
cut down to its first N ids and the merges among them (libFuzzer's inputs stay under 64 KiB), in
the legacy Llama form as on the hub and in the Metaspace form. Standard library only.

    python3 tools/make_fuzz_seeds.py [N]
"""
import json
import os
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
with open(os.path.join(root, "models", "tokenizer.json"), encoding="utf-8") as f:
    tj = json.load(f)
model = tj["model"]
vocab = {t: i for t, i in model["vocab"].items() if i < n}
merges = []
for m in model["merges"]:
    left, right = m if isinstance(m, list) else m.split(" ")
    if left in vocab and right in vocab and left + right in vocab:
        merges.append(m)
model["vocab"], model["merges"] = vocab, merges
tj["added_tokens"] = [t for t in tj.get("added_tokens", []) if t["id"] < n]
out = os.path.join(root, "tests", "fuzz", "corpus", "fuzz_tokenizer_json")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "seed-legacy.json"), "w", encoding="utf-8") as f:
    json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
tj["normalizer"] = None
tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
tj["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
with open(os.path.join(out, "seed-metaspace.json"), "w", encoding="utf-8") as f:
    json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
print(f"{out}: {len(vocab)} ids, {len(merges)} merges")
