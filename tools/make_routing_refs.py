#!/usr/bin/env python3
"""Router choices of the golden models, from Hugging Face transformers in float64.

    python3 tools/make_routing_refs.py [--data tests/data] [--only NAME ...]

For each golden model directory (tests/data/NAME, made by tools/make_golden.py) this
loads the model with transformers (float64, eager), runs one forward pass over the 20
tokens of its reference.json, and records what each layer's router chose: a forward
hook on every `*TopKRouter` module (the `gate` of each sparse MoE block) keeps its
returned (router_logits, scores, indices). Dense layers (mlp_only_layers) have no
router and are recorded as such. The output, NAME/routing.json:

    {"model": NAME, "tokens": [20 ids], "n_layer": L, "n_expert": E, "n_expert_used": K,
     "layers": [{"dense": false, "experts": [[K ids] x 20], "weights": [[K floats] x 20]}
                or {"dense": true}] x L,
     "counts": [[E ints] x L],          # tokens routed to each expert (0 for dense layers)
     "weight_sums": [[E floats] x L],   # the sum of their router weights
     "transformers_version": ..., "torch_version": ...}

tests/test_routing.c checks moecl's routing counters and per-token callback against it.
The golden prompts were drawn so that every router decision has a gap of at least 1e-3
between the k-th and (k+1)-th router logit, so a float32 implementation cannot flip one.
Needs torch, transformers 5.x and numpy (as make_golden.py). Deterministic.
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden  # noqa: E402  (load_hf, the model tables)

MODELS = ["tiny-f32", "tiny-e8", "tiny-top1", "tiny-qwen3moe", "tiny-olmoe", "tiny-qwen2moe"]


def family_of(name):
    return make_golden.FAMILY_MODELS[name][1] if name in make_golden.FAMILY_MODELS else "mixtral"


def routing_of(data_dir, name):
    import torch
    import transformers
    d = os.path.join(data_dir, name)
    with open(os.path.join(d, "reference.json")) as f:
        ref = json.load(f)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    fam = make_golden.FAMILIES[family_of(name)]
    L, E, K = cfg["num_hidden_layers"], cfg[fam["n_expert"]], cfg["num_experts_per_tok"]
    model = make_golden.load_hf(d, family_of(name))
    seen = {}

    def hook(layer):
        def fn(_module, _inputs, out):
            _logits, scores, indices = out
            seen[layer] = (indices.numpy().tolist(), scores.double().numpy().tolist())
        return fn

    for mname, mod in model.named_modules():
        if type(mod).__name__.endswith("TopKRouter"):
            m = re.search(r"layers\.(\d+)\.", mname)
            mod.register_forward_hook(hook(int(m.group(1))))
    with torch.no_grad():
        model(torch.tensor([ref["tokens"]]))
    layers, counts, wsums = [], [], []
    for il in range(L):
        c, w = [0] * E, [0.0] * E
        if il not in seen:
            layers.append({"dense": True})
        else:
            experts, weights = seen[il]
            for ex, wt in zip(experts, weights):
                for e, x in zip(ex, wt):
                    c[e] += 1
                    w[e] += x
            layers.append({"dense": False, "experts": experts, "weights": weights})
        counts.append(c)
        wsums.append(w)
    return {"model": name, "tokens": ref["tokens"], "n_layer": L, "n_expert": E, "n_expert_used": K,
            "layers": layers, "counts": counts, "weight_sums": wsums,
            "transformers_version": transformers.__version__, "torch_version": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    ap.add_argument("--only", action="append", choices=MODELS)
    args = ap.parse_args()
    for name in args.only or MODELS:
        r = routing_of(args.data, name)
        path = os.path.join(args.data, name, "routing.json")
        with open(path, "w") as f:
            json.dump(r, f, separators=(",", ":"))
            f.write("\n")
        dense = [i for i, l in enumerate(r["layers"]) if l["dense"]]
        print("%s: %d layers (dense: %s), counts %s" % (path, r["n_layer"], dense or "none", r["counts"]))


if __name__ == "__main__":
    main()
