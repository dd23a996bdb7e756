#!/usr/bin/env python3
"""Reference perplexities for `moecl perplexity`, computed by transformers in float64.

The chunking is the one tools/perplexity.c and llama.cpp's perplexity tool use:
the whole input is one token sequence (for text: the Hugging Face tokenizer's
encoding, BOS first); chunk c is tokens [c*n_ctx, (c+1)*n_ctx), run from an
empty cache with its first token replaced by BOS (text input only); the
positions n_ctx/2 .. n_ctx-2 are scored on the token that follows them.

Two references, written under tests/data/ppl/:

* tiny-f32.json: the golden model tests/data/tiny-f32 (vocabulary 128) on 320
  token ids drawn from a fixed seed, given as ids (--tokens), n_ctx 32 and 64.
* default.json: the trained default model models/default/ on
  tests/data/ppl/heldout.txt (text held out from its training), n_ctx 128,
  tokenized by the `tokenizers` library from models/default/tokenizer.json.

    python3 tools/make_ppl_refs.py            # both
    python3 tools/make_ppl_refs.py --only tiny

Needs torch, transformers, tokenizers, numpy (PyPI). Deterministic.
"""

import argparse
import hashlib
import json
import math
import os

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "ppl")


def load(path):
    return transformers.MixtralForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="eager",
                                                           experts_implementation="eager").eval()


@torch.no_grad()
def perplexity(model, ids, n_ctx, bos=None):
    """llama.cpp-style chunked perplexity; returns (mean NLL, count, running PPL per chunk, +/-)."""
    if len(ids) < 2 * n_ctx:
        raise SystemExit(f"{len(ids)} tokens: n_ctx {n_ctx} needs {2 * n_ctx}")
    n_chunks, first = len(ids) // n_ctx, n_ctx // 2
    nll, nll2, count, running = 0.0, 0.0, 0, []
    for c in range(n_chunks):
        chunk = list(ids[c * n_ctx:(c + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        logits = model(input_ids=torch.tensor([chunk])).logits[0]  # [n_ctx, V] float64
        logp = torch.log_softmax(logits, dim=-1)
        for j in range(first, n_ctx - 1):
            x = -logp[j, chunk[j + 1]].item()
            nll += x
            nll2 += x * x
            count += 1
        running.append(math.exp(nll / count))
    mean = nll / count
    var = nll2 / count - mean * mean
    return mean, count, running, math.sqrt(var / (count - 1)) * math.exp(mean)


def write(name, rec):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(rec, f, indent=1)
        f.write("\n")
    print("wrote", os.path.join(OUT, name))


def versions():
    return {"transformers": transformers.__version__, "torch": torch.__version__}


def tiny():
    rng = np.random.default_rng(20261129)
    ids = [int(v) for v in rng.integers(3, 128, size=320)]
    model = load(os.path.join(ROOT, "tests", "data", "tiny-f32"))
    refs = []
    for n_ctx in (32, 64):
        mean, count, running, pm = perplexity(model, ids, n_ctx)
        refs.append({"n_ctx": n_ctx, "mean_nll": mean, "ppl": math.exp(mean), "ppl_pm": pm, "count": count,
                     "running_ppl": running})
    write("tiny-f32.json", {"model": "tests/data/tiny-f32", "tokens": ids, "refs": refs, **versions()})


def default():
    mdir = os.path.join(ROOT, "models", "default")
    text_path = os.path.join(OUT, "heldout.txt")
    with open(text_path, "rb") as f:
        text = f.read().decode("utf-8")
    tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    ids = tok.encode(text).ids
    assert ids[0] == 1, "the Mistral tokenizer adds BOS"
    model = load(mdir)
    refs = []
    for n_ctx in (128,):
        mean, count, running, pm = perplexity(model, ids, n_ctx, bos=1)
        refs.append({"n_ctx": n_ctx, "mean_nll": mean, "ppl": math.exp(mean), "ppl_pm": pm, "count": count,
                     "running_ppl": running})
    write("default.json", {"model": "models/default", "text": "tests/data/ppl/heldout.txt", "n_tokens": len(ids),
                           "model_sha256": hashlib.sha256(open(os.path.join(mdir, "model.safetensors"), "rb")
                                                          .read()).hexdigest(),
                           "refs": refs, **versions()})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["tiny", "default"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.only in (None, "tiny"):
        tiny()
    if a.only in (None, "default"):
        default()


if __name__ == "__main__":
    main()
