#!/usr/bin/env python3
"""moecl generate's models of every family, as transformers reads them.

For each family, at a shape that exercises its options (dense layers, QK-norm,
biases, shared expert, the router rule, BF16 storage), `moecl generate` writes
a directory; transformers loads it in float64 with no missing or unexpected
weights and computes the logits of 20 tokens; test_golden then runs moecl on
the same directory against those logits (bound 1e-4, the reference tokens fed).
So the generator's names, shapes and config keys mean to transformers what
they mean to moecl. Skips (77) without torch, transformers and numpy.

usage: test_generate.py MOECL TEST_GOLDEN
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import transformers
except ImportError as e:
    print(f"generate_transformers: SKIP: {e.name} not installed (pip install torch transformers numpy)",
          file=sys.stderr)
    sys.exit(77)

SHAPE = ["--preset", "tiny", "--vocab", "300", "--layers", "3", "--experts", "8", "--top-k", "3", "--ff", "48"]
CASES = {
    "mixtral": ["--arch", "mixtral", "--kv-heads", "1"],
    "qwen3moe": ["--arch", "qwen3moe", "--head-dim", "24", "--dense-layers", "1", "--ff-dense", "80",
                 "--norm-topk", "1"],
    "qwen3moe-noren": ["--arch", "qwen3moe", "--norm-topk", "0", "--dtype", "bf16"],
    "qwen2moe": ["--arch", "qwen2moe", "--ff-shexp", "40", "--dense-layers", "1"],
    "olmoe": ["--arch", "olmoe", "--kv-heads", "4"],
}


def main():
    moecl, golden = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="moecl_generate_py.")
    try:
        for name, opts in CASES.items():
            d = os.path.join(out, name)
            subprocess.run([moecl, "generate", d] + SHAPE + opts, check=True, stderr=subprocess.DEVNULL)
            model, info = transformers.AutoModelForCausalLM.from_pretrained(
                d, dtype=torch.float64, attn_implementation="eager", experts_implementation="eager",
                output_loading_info=True)
            bad = {k: v for k, v in info.items() if v}
            if bad:
                sys.exit(f"{name}: transformers reported loading problems: {bad}")
            model.eval()
            cfg = json.load(open(os.path.join(d, "config.json")))
            V = cfg["vocab_size"]
            tokens = [int(t) for t in np.random.default_rng(len(name)).integers(3, V, 20)]
            with torch.no_grad():
                logits = model(torch.tensor([tokens])).logits[0].numpy()
            logits.astype(np.float32).tofile(os.path.join(d, "logits.f32"))
            json.dump({"model": name, "prompt": tokens[:12], "tokens": tokens, "n_vocab": V,
                       "logits_file": "logits.f32", "n_positions": 20,
                       "transformers_version": transformers.__version__}, open(os.path.join(d, "reference.json"), "w"))
            r = subprocess.run([golden, d, "--no-argmax"], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{name}: moecl against transformers failed:\n{r.stdout}{r.stderr}")
            print(f"{name}: transformers loads it; moecl's logits agree", file=sys.stderr)
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
