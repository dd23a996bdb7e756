#!/usr/bin/env python3
"""Check that a GGUF file is a Mixtral as llama.cpp expects it, optionally against HF weights.

    python3 tools/check_gguf.py FILE.gguf [--hf HF_DIR] [--logits OUT.f32 [--json OUT.json]]

Without --hf: reads FILE with gguf.GGUFReader and checks the ``llama`` metadata (required
keys present with the value types llama.cpp's loader accepts), the tokenizer keys when
present, every tensor name and shape (stacked ``ffn_*_exps`` or per-expert ``ffn_*.E``
layout, ``output`` optional when tied) and that every tensor type is one moecl reads
(F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K), that 1-D tensors and ffn_gate_inp are F32,
and that no tensor is missing or unexpected.

With --hf HF_DIR: dequantizes every tensor with gguf.quants.dequantize, undoes the Q/K
row permutation, compares with the HF weights and prints the normalised error per tensor
type: RMS(deq - hf) / RMS(hf) over all tensors of that type, and the worst tensor.
Non-quantized types must match exactly (F32) or to the rounding of the type (F16/BF16).

With --logits OUT.f32 (needs --hf): runs a float64 numpy Mixtral forward
(tools/make_golden.py numpy_forward) with the *dequantized* weights on the tokens in
HF_DIR/reference.json, writes the [T, V] logits as little-endian float32 and prints (and
with --json stores) the normalised error against HF_DIR/logits.f32 (the transformers
float64 reference of the unquantized model).

Exit status 0 when every check passes, 1 otherwise.  Also used to check GGUFs written by
moecl's own quantizer.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MOECL_TYPES = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"}

# key -> GGUF value type name llama.cpp's loader accepts
REQUIRED_KEYS = {
    "general.architecture": "STRING",
    "general.file_type": "UINT32",
    "llama.context_length": "UINT32",
    "llama.embedding_length": "UINT32",
    "llama.block_count": "UINT32",
    "llama.feed_forward_length": "UINT32",
    "llama.attention.head_count": "UINT32",
    "llama.attention.head_count_kv": "UINT32",
    "llama.rope.freq_base": "FLOAT32",
    "llama.attention.layer_norm_rms_epsilon": "FLOAT32",
    "llama.expert_count": "UINT32",
    "llama.expert_used_count": "UINT32",
    "llama.rope.dimension_count": "UINT32",
    "llama.vocab_size": "UINT32",
}
OPTIONAL_KEYS = {"general.name": "STRING", "general.quantization_version": "UINT32",
                 "general.alignment": "UINT32", "llama.attention.key_length": "UINT32",
                 "llama.attention.value_length": "UINT32"}

# Per-type bound on RMS(deq - hf) / RMS(hf) for any one tensor (random Gaussian weights;
# Q4_0 about 0.09, Q4_K about 0.07: the bound leaves room for small tensors).
WEIGHT_BOUND = {"F32": 0.0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01, "Q6_K": 0.03,
                "Q5_K": 0.06, "Q4_K": 0.12, "Q4_0": 0.15, "Q5_0": 0.08, "Q5_1": 0.08}


class Checker:
    def __init__(self):
        self.errors = []

    def fail(self, msg):
        self.errors.append(msg)
        print("FAIL:", msg)


def field_value(f):
    """Scalar, string or list value of a GGUFReader field."""
    from gguf import GGUFValueType
    t = f.types[0]
    if t == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
    if t == GGUFValueType.ARRAY:
        return [f.parts[i].tolist()[0] if f.types[1] != GGUFValueType.STRING
                else bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
    return f.parts[f.data[0]].tolist()[0]


def check_metadata(r, ck):
    from gguf import GGUFValueType
    meta = {}
    for key, tname in {**REQUIRED_KEYS, **OPTIONAL_KEYS}.items():
        f = r.fields.get(key)
        if f is None:
            if key in REQUIRED_KEYS:
                ck.fail(f"metadata key {key} missing")
            continue
        if f.types[0] != GGUFValueType[tname]:
            ck.fail(f"{key} has type {f.types[0].name}, llama.cpp expects {tname}")
            continue
        meta[key] = field_value(f)
    if meta.get("general.architecture") not in (None, "llama"):
        ck.fail(f"general.architecture is {meta['general.architecture']!r}, expected 'llama'")
    return meta


def check_tokenizer(r, ck, n_vocab):
    from gguf import GGUFValueType as T
    if "tokenizer.ggml.model" not in r.fields:
        return None
    model = field_value(r.fields["tokenizer.ggml.model"])
    arrays = {"tokenizer.ggml.tokens": T.STRING, "tokenizer.ggml.scores": T.FLOAT32,
              "tokenizer.ggml.token_type": T.INT32}
    n = None
    for key, et in arrays.items():
        f = r.fields.get(key)
        if f is None:
            ck.fail(f"{key} missing")
            continue
        if f.types[0] != T.ARRAY or f.types[1] != et:
            ck.fail(f"{key} is not an array of {et.name}")
            continue
        if n is None:
            n = len(f.data)
        elif len(f.data) != n:
            ck.fail(f"{key} has {len(f.data)} entries, tokens has {n}")
    if n is not None and n != n_vocab:
        ck.fail(f"{n} tokens but llama.vocab_size is {n_vocab}")
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id"):
        f = r.fields.get(key)
        if f is not None:
            if f.types[0] != T.UINT32:
                ck.fail(f"{key} is {f.types[0].name}, expected UINT32")
            elif n is not None and field_value(f) >= n:
                ck.fail(f"{key} = {field_value(f)} is not a token id")
    for key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"):
        f = r.fields.get(key)
        if f is not None and f.types[0] != T.BOOL:
            ck.fail(f"{key} is {f.types[0].name}, expected BOOL")
    if "tokenizer.ggml.merges" in r.fields:
        f = r.fields["tokenizer.ggml.merges"]
        if f.types[0] != T.ARRAY or f.types[1] != T.STRING:
            ck.fail("tokenizer.ggml.merges is not an array of STRING")
    return model, n


def expected_tensors(meta, names):
    """{name: GGUF ne (ne[0] = row length)}; layout and tying decided from `names`."""
    D = meta["llama.embedding_length"]
    L = meta["llama.block_count"]
    F = meta["llama.feed_forward_length"]
    H = meta["llama.attention.head_count"]
    KV = meta["llama.attention.head_count_kv"]
    E = meta["llama.expert_count"]
    V = meta["llama.vocab_size"]
    hd = meta.get("llama.attention.key_length", meta["llama.rope.dimension_count"])
    split = "blk.0.ffn_gate.0.weight" in names
    ex = {"token_embd.weight": [D, V], "output_norm.weight": [D]}
    if "output.weight" in names:
        ex["output.weight"] = [D, V]
    for l in range(L):
        b = f"blk.{l}."
        ex.update({b + "attn_norm.weight": [D], b + "attn_q.weight": [D, H * hd],
                   b + "attn_k.weight": [D, KV * hd], b + "attn_v.weight": [D, KV * hd],
                   b + "attn_output.weight": [H * hd, D], b + "ffn_norm.weight": [D],
                   b + "ffn_gate_inp.weight": [D, E]})
        if split:
            for e in range(E):
                ex.update({f"{b}ffn_gate.{e}.weight": [D, F], f"{b}ffn_up.{e}.weight": [D, F],
                           f"{b}ffn_down.{e}.weight": [F, D]})
        else:
            ex.update({b + "ffn_gate_exps.weight": [D, F, E], b + "ffn_up_exps.weight": [D, F, E],
                       b + "ffn_down_exps.weight": [F, D, E]})
    return ex, split


def check_tensors(r, meta, ck):
    names = {t.name for t in r.tensors}
    ex, split = expected_tensors(meta, names)
    for t in r.tensors:
        ty = t.tensor_type.name
        if t.name not in ex:
            ck.fail(f"unexpected tensor {t.name}")
            continue
        if [int(v) for v in t.shape] != ex[t.name]:
            ck.fail(f"{t.name}: ne {list(map(int, t.shape))}, expected {ex[t.name]}")
        if ty not in MOECL_TYPES:
            ck.fail(f"{t.name}: type {ty} is not one moecl reads")
        if (len(ex[t.name]) == 1 or ".ffn_gate_inp." in t.name) and ty != "F32":
            ck.fail(f"{t.name}: {ty}, llama.cpp keeps it F32")
    for n in sorted(set(ex) - names):
        ck.fail(f"tensor {n} missing")
    return split


def dequantized_weights(r, meta):
    """HF-named float64 weights from the GGUF (permutation undone, experts split)."""
    from gguf.quants import dequantize
    from convert_gguf import unpermute_rows
    H = meta["llama.attention.head_count"]
    KV = meta["llama.attention.head_count_kv"]
    E = meta["llama.expert_count"]
    W, types = {}, {}

    def put(name, arr, ty):
        W[name] = arr
        types[name] = ty

    for t in r.tensors:
        x = dequantize(t.data, t.tensor_type).astype(np.float64)
        x = x.reshape([int(v) for v in reversed(t.shape)])
        ty = t.tensor_type.name
        n = t.name
        if n == "token_embd.weight":
            put("model.embed_tokens.weight", x, ty)
        elif n == "output_norm.weight":
            put("model.norm.weight", x, ty)
        elif n == "output.weight":
            put("lm_head.weight", x, ty)
        else:
            parts = n.split(".")
            l, kind = parts[1], parts[2]
            p = f"model.layers.{l}."
            m = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_gate_inp": "block_sparse_moe.gate"}
            w_of = {"ffn_gate": "w1", "ffn_down": "w2", "ffn_up": "w3"}
            if kind in m:
                put(p + m[kind] + ".weight", x, ty)
            elif kind == "attn_q":
                put(p + "self_attn.q_proj.weight", unpermute_rows(x, H), ty)
            elif kind == "attn_k":
                put(p + "self_attn.k_proj.weight", unpermute_rows(x, KV), ty)
            elif kind.endswith("_exps"):
                w = w_of[kind[:-5]]
                for e in range(E):
                    put(f"{p}block_sparse_moe.experts.{e}.{w}.weight", x[e], ty)
            elif kind in w_of:
                put(f"{p}block_sparse_moe.experts.{parts[3]}.{w_of[kind]}.weight", x, ty)
    return W, types


def compare_hf(W, types, hf_dir, ck):
    from convert_gguf import HFWeights
    hf = HFWeights(hf_dir)
    stats = {}
    for name, x in W.items():
        if name not in hf:
            ck.fail(f"{name}: not in {hf_dir}")
            continue
        ref = hf.get(name).astype(np.float64)
        if ref.shape != x.shape:
            ck.fail(f"{name}: shape {x.shape} vs HF {ref.shape}")
            continue
        rms_ref = float(np.sqrt(np.mean(ref ** 2))) or 1.0
        err = float(np.sqrt(np.mean((x - ref) ** 2))) / rms_ref
        s = stats.setdefault(types[name], dict(n=0, se=0.0, sr=0.0, worst=0.0, worst_name=""))
        s["n"] += 1
        s["se"] += float(np.sum((x - ref) ** 2))
        s["sr"] += float(np.sum(ref ** 2))
        if err >= s["worst"]:
            s["worst"], s["worst_name"] = err, name
        bound = WEIGHT_BOUND.get(types[name], 0.2)
        if err > bound:
            ck.fail(f"{name} ({types[name]}): normalised RMS error {err:.3g} > {bound}")
    missing = [n for n in hf.files if n not in W and n != "lm_head.weight"]
    for n in missing:
        ck.fail(f"HF tensor {n} has no GGUF counterpart")
    print("weights vs HF, normalised RMS error = RMS(deq - hf) / RMS(hf):")
    for ty, s in sorted(stats.items()):
        tot = (s["se"] / s["sr"]) ** 0.5 if s["sr"] else 0.0
        print(f"  {ty:5s} {s['n']:3d} tensors  all {tot:.3e}  worst {s['worst']:.3e} "
              f"({s['worst_name']})")
    return {ty: (s["se"] / s["sr"]) ** 0.5 if s["sr"] else 0.0 for ty, s in stats.items()}


def cfg_from_meta(meta):
    """make_golden.numpy_forward's config, from the GGUF metadata only."""
    D, H = meta["llama.embedding_length"], meta["llama.attention.head_count"]
    c = dict(vocab_size=meta["llama.vocab_size"], hidden_size=D,
             intermediate_size=meta["llama.feed_forward_length"],
             num_hidden_layers=meta["llama.block_count"], num_attention_heads=H,
             num_key_value_heads=meta["llama.attention.head_count_kv"],
             num_local_experts=meta["llama.expert_count"],
             num_experts_per_tok=meta["llama.expert_used_count"],
             rms_norm_eps=meta["llama.attention.layer_norm_rms_epsilon"],
             rope_theta=meta["llama.rope.freq_base"], sliding_window=None)
    hd = meta.get("llama.attention.key_length", meta["llama.rope.dimension_count"])
    if hd != D // H:
        c["head_dim"] = hd
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf_file")
    ap.add_argument("--hf", help="HF directory the file was converted from")
    ap.add_argument("--logits", help="write the dequantized model's logits here (needs --hf)")
    ap.add_argument("--json", help="with --logits: write a summary JSON here")
    args = ap.parse_args()
    if args.logits and not args.hf:
        ap.error("--logits needs --hf")

    from gguf import GGUFReader
    ck = Checker()
    r = GGUFReader(args.gguf_file)
    meta = check_metadata(r, ck)
    if any(k not in meta for k in REQUIRED_KEYS):
        print(f"{args.gguf_file}: FAILED ({len(ck.errors)} problems)")
        return 1
    tok = check_tokenizer(r, ck, meta["llama.vocab_size"])
    split = check_tensors(r, meta, ck)
    counts = {}
    for t in r.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    print(f"{args.gguf_file}: llama, {meta['llama.block_count']} layers, "
          f"{meta['llama.expert_count']} experts (top {meta['llama.expert_used_count']}), "
          f"{'split' if split else 'stacked'} experts, file_type {meta['general.file_type']}, "
          f"{len(r.tensors)} tensors ({', '.join(f'{k} x{v}' for k, v in sorted(counts.items()))})"
          f"{', tokenizer ' + repr(tok[0]) + f' ({tok[1]} tokens)' if tok else ', no tokenizer'}")

    summary = {}
    if args.hf and not ck.errors:
        W, types = dequantized_weights(r, meta)
        summary["weight_err_rms_by_type"] = compare_hf(W, types, args.hf, ck)
        if args.logits:
            from make_golden import numpy_forward
            with open(os.path.join(args.hf, "reference.json"), encoding="utf-8") as f:
                ref = json.load(f)
            tokens = ref["tokens"]
            V = ref["n_vocab"]
            want = np.fromfile(os.path.join(args.hf, ref["logits_file"]), "<f4")
            want = want.reshape(len(tokens), V).astype(np.float64)
            got = numpy_forward(cfg_from_meta(meta), W, tokens)
            got.astype("<f4").tofile(args.logits)
            d = got - want
            e_max = float(np.abs(d).max() / np.abs(want).max())
            e_rms = float(np.sqrt(np.mean(d ** 2) / np.mean(want ** 2)))
            greedy = sum(int(np.argmax(got[i]) == tokens[i + 1])
                         for i in range(len(ref["prompt"]) - 1, len(tokens) - 1))
            n_greedy = len(tokens) - len(ref["prompt"])
            print(f"logits of the dequantized model vs the F32 transformers reference: "
                  f"max|d|/max|ref| {e_max:.3e}, RMS(d)/RMS(ref) {e_rms:.3e}, "
                  f"greedy argmax kept {greedy}/{n_greedy}")
            summary.update({
                "gguf": os.path.basename(args.gguf_file), "model": ref["model"],
                "file_type": meta["general.file_type"],
                "tensor_types": dict(sorted(counts.items())),
                "tokens": tokens, "n_vocab": V, "n_positions": len(tokens),
                "logits_file": os.path.basename(args.logits),
                "reference_logits": f"{ref['model']}/{ref['logits_file']}",
                "err_maxabs_vs_reference": e_max, "err_rms_vs_reference": e_rms,
                "greedy_argmax_kept": greedy, "greedy_steps": n_greedy,
            })
            if args.json:
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(summary, f, indent=1)
                    f.write("\n")
    if ck.errors:
        print(f"{args.gguf_file}: FAILED ({len(ck.errors)} problems)")
        return 1
    print(f"{args.gguf_file}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
