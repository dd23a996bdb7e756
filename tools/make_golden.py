#!/usr/bin/env python3
"""Build tiny random MoE models and golden logits from Hugging Face transformers.

MODELS are Mixtral; FAMILY_MODELS are the other families moecl's table of architectures
(src/arch/) runs: Qwen3-MoE (per-head QK-norm before RoPE, explicit head_dim, dense layers
from mlp_only_layers / decoder_sparse_step, norm_topk_prob), OLMoE (QK-norm over the whole
projection, top-k softmax weights not renormalised, attention_bias) and Qwen2-MoE (QKV
biases, a shared expert scaled by sigmoid(x . shared_expert_gate), no renormalisation).
Each is written with its own config keys and per-expert tensor names
(``mlp.experts.E.gate_proj/up_proj/down_proj``), loaded with its transformers class, and
checked the same way; ``numpy_forward`` implements every family's options.  ``tiny-fused``
is a Mixtral written in transformers 5's fused layout (``mlp.experts.gate_up_proj``,
``mlp.experts.down_proj``, ``mlp.gate.weight``).

For every model this script

1. draws random weights from a fixed seed (numpy PCG64, so the draw does not depend on
   the torch version) and rounds them to the storage dtype (F32, BF16 or F16);
2. writes a Hugging Face model directory ``<out>/<name>/``: ``config.json`` in the
   classic Mixtral form and ``*.safetensors`` in the classic *per-expert* layout
   (``block_sparse_moe.experts.E.w1/w2/w3``), one file or several shards plus
   ``model.safetensors.index.json``.  We write these files ourselves: in memory,
   transformers 5 keeps the experts fused (``mlp.experts.gate_up_proj`` [E, 2F, D] and
   ``mlp.experts.down_proj`` [E, D, F]); its ``save_pretrained`` (5.23) happens to convert
   back to the classic names, but it also writes a v5-style config.json
   (``rope_parameters``, ``dtype``, ``head_dim: null``) and chooses sharding and bytes
   itself, whereas here every name, dtype, shard boundary and config key is fixed;
3. loads that directory back with ``MixtralForCausalLM.from_pretrained(dir,
   dtype=torch.float64, attn_implementation="eager", experts_implementation="eager")``
   -- transformers' own weight-conversion mapping turns w1/w3 into gate_up_proj and w2
   into down_proj -- and checks that every reloaded parameter equals the weight we wrote
   (upcast to float64), with no missing or unexpected keys;
4. picks a random 12-token prompt (ids in [3, V)), greedily generates 8 more tokens, runs
   one forward over all 20 tokens and stores the 20 x V logits (``logits.f32``) and
   ``reference.json``.  It asserts that the greedy tokens are the argmax of the stored
   rows, that a step-by-step run with the KV cache gives the same logits (within
   STEP_TOL, see the precision note), and that an independent numpy float64
   implementation of the forward pass (written from the rules below) agrees with
   transformers.  A prompt is rejected (and the next
   prompt seed tried) when a greedy step's top-2 logits, or a router's k-th and
   (k+1)-th logits, are closer than MIN_GAP (near-ties would make the C tests flaky), or
   when the greedy tokens have fewer than MIN_DISTINCT distinct values.

Semantics a C implementation must match (read from transformers 5 modeling_mixtral.py
and masking_utils.py, and checked here by the numpy implementation):

* Sliding window (``sliding_window = w``, eager attention): a query at position q attends
  to key position k iff ``q - w < k <= q`` -- the w most recent positions, itself
  included (``sliding_window_overlay``: ``kv_idx > q_idx - sliding_window`` AND-ed with
  the causal ``kv_idx <= q_idx``).  The KV cache keeps the last w-1 positions plus the
  new one.
* GQA: query head h uses key/value head ``h // (n_heads / n_kv_heads)`` (repeat_kv).
* RoPE: rotate-half (NeoX) form on each head, pairs (i, i + hd/2);
  inv_freq[i] = theta^(-2i/hd), angle = position * inv_freq.
* Attention scale: head_dim^-0.5 (head_dim from config when given, else D / n_heads).
* Router: logits = W_gate x; p = softmax(logits); take the top-k p; weights = top-k p /
  their sum (renormalised, for top-1 the weight is exactly 1).
* Expert: w2 (silu(w1 x) * (w3 x)); w1 = first F rows of gate_up_proj[e] (the "gate"
  chunk), w3 = the next F rows (the "up" chunk).
* RMSNorm: weight * x / sqrt(mean(x^2) + eps).

Precision note: even with dtype=float64, transformers computes four steps in float32:
RMSNorm (input cast to float32, normalised, cast back, then times the float64 weight),
the eager attention softmax (softmax(..., dtype=float32)), the router softmax
(router_logits.float(); the top-k weights stay float32) and RoPE (inv_freq, the angles
and cos/sin in float32).  Weights, matmuls, the residual stream and the LM head are
float64.  So the "float64" reference carries float32-level rounding at those points: it
differs from a pure float64 computation by a few 1e-6 on the logits (printed per model
as "numpy err"), which is far below any float32 C tolerance.  With those four casts
patched out, transformers and numpy_forward() agree to ~1e-14, i.e. the rules above are
exactly transformers' rules.

Usage:  python3 tools/make_golden.py [--out tests/data] [--only NAME]
Needs torch, transformers (5.x), safetensors and numpy; the C test suite does not.
Running it twice produces byte-identical files.
"""

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np

N_PROMPT = 12      # prompt length
N_GEN = 8          # greedy tokens generated after the prompt
MIN_GAP = 1e-3     # minimum top-1/top-2 logit gap (greedy) and k/k+1 gap (router)
MIN_DISTINCT = 4   # minimum number of distinct tokens among the greedy ones
# Full forward vs. step-by-step with the KV cache.  Not 1e-10: transformers rounds the
# RMSNorm input and the attention-softmax to float32 even in a float64 model, so 1e-16
# differences between the two orders of computation occasionally flip a float32 rounding
# (measured: ~1e-6 on the logits; with those two casts patched out it is ~2e-14).
STEP_TOL = 2e-5
# transformers vs. the independent pure-float64 numpy implementation (measured ~3e-6;
# ~1e-14 with transformers' four float32 steps patched out, see the module docstring).
NUMPY_TOL = 1e-4

# Shared shape of tiny-f32 / tiny-bf16 / tiny-f16.
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
            num_experts_per_tok=2)
# Smaller shape for the feature models, to keep tests/data small.
SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
             num_experts_per_tok=2)

# name -> (weight seed, storage dtype, number of shards, config overrides, description)
MODELS = {
    "tiny-f32": (101, "f32", 1, dict(BASE),
                 "baseline: F32 weights, 2 layers, GQA 4/2 heads, 4 experts top-2"),
    "tiny-bf16": (102, "bf16", 1, dict(BASE),
                  "same shape as tiny-f32, weights stored as BF16"),
    "tiny-f16": (103, "f16", 1, dict(BASE),
                 "same shape as tiny-f32, weights stored as F16"),
    "tiny-top1": (104, "f32", 1, dict(SMALL, num_experts_per_tok=1),
                  "top-1 routing of 4 experts (renormalised weight is exactly 1)"),
    "tiny-e8": (105, "f32", 1, dict(SMALL, num_local_experts=8, num_hidden_layers=3),
                "8 experts top-2, 3 layers"),
    "tiny-headdim": (106, "f32", 1, dict(SMALL, head_dim=24, num_key_value_heads=1),
                     "explicit head_dim 24 != hidden/heads (32/4 = 8); 1 kv head (MQA)"),
    "tiny-sharded": (107, "f32", 3, dict(SMALL),
                     "3 safetensors shards + model.safetensors.index.json; "
                     "tensors of one layer are split across shards"),
    "tiny-swa": (108, "f32", 1, dict(SMALL, sliding_window=5),
                 "sliding_window 5 (20 positions exercise the window)"),
    "tiny-tied": (109, "f32", 1, dict(SMALL, tie_word_embeddings=True, rope_theta=10000.0,
                                      rms_norm_eps=1e-6),
                  "tie_word_embeddings (no lm_head tensor), rope_theta 1e4, rms_norm_eps 1e-6"),
    # Every row length (D and F) a multiple of 256, so that the K-quants (256-value super-
    # blocks) apply to every matrix when tools/convert_gguf.py writes it as a GGUF.
    # The layout transformers 5 keeps in memory, written as such: mlp.experts.gate_up_proj
    # [E, 2F, D] (gate rows, then up rows), mlp.experts.down_proj [E, D, F], mlp.gate.weight.
    "tiny-fused": (111, "f32", 1, dict(SMALL, num_local_experts=4, num_experts_per_tok=2),
                   "transformers-5 fused expert layout (gate_up_proj, down_proj, mlp.gate)"),
    "tiny-q": (110, "f32", 1, dict(vocab_size=256, hidden_size=256, intermediate_size=256,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, num_local_experts=4,
                                   num_experts_per_tok=2),
               "D = F = V = 256 so K-quants apply to every matrix (GGUF quantization tests)"),
}

# Other families (src/arch/): model name -> (seed, family, config overrides, description).
# Shapes exercise each family's options at sizes that keep every directory under ~1 MB.
FAMILY_MODELS = {
    "tiny-qwen3moe": (201, "qwen3_moe", dict(
        vocab_size=128, hidden_size=64, moe_intermediate_size=32, intermediate_size=96,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        num_experts=8, num_experts_per_tok=4, norm_topk_prob=True, mlp_only_layers=[1],
        decoder_sparse_step=1, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=1e6),
        "Qwen3-MoE: 8 experts top-4 renormalised, per-head QK-norm, explicit head_dim 24 "
        "(64/4 = 16), layer 1 dense (mlp_only_layers), untied output"),
    "tiny-olmoe": (202, "olmoe", dict(
        vocab_size=128, hidden_size=64, intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, num_experts=16, num_experts_per_tok=4,
        norm_topk_prob=False, attention_bias=True, tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_theta=10000.0),
        "OLMoE: 16 experts top-4 not renormalised, QK-norm over the whole projection, "
        "attention_bias (Q, K, V and O biases)"),
    "tiny-qwen2moe": (203, "qwen2_moe", dict(
        vocab_size=128, hidden_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        intermediate_size=80, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1,
        mlp_only_layers=[2], tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0),
        "Qwen2-MoE: 8 experts top-2 not renormalised plus a shared expert with a sigmoid gate, "
        "QKV bias, layer 2 dense, tied output"),
}

# What tells the families apart, as the C side's table does (src/arch/).
FAMILIES = {
    "mixtral": dict(cls="MixtralForCausalLM", moe="block_sparse_moe", names=("w1", "w3", "w2"),
                    n_expert="num_local_experts", ff="intermediate_size", qk_norm=None),
    "qwen3_moe": dict(cls="Qwen3MoeForCausalLM", moe="mlp", names=("gate_proj", "up_proj", "down_proj"),
                      n_expert="num_experts", ff="moe_intermediate_size", qk_norm="head", dense=True),
    "olmoe": dict(cls="OlmoeForCausalLM", moe="mlp", names=("gate_proj", "up_proj", "down_proj"),
                  n_expert="num_experts", ff="intermediate_size", qk_norm="full"),
    "qwen2_moe": dict(cls="Qwen2MoeForCausalLM", moe="mlp", names=("gate_proj", "up_proj", "down_proj"),
                      n_expert="num_experts", ff="moe_intermediate_size", qk_norm=None, dense=True,
                      shared=True, qkv_bias=True),
}

DTYPE_INFO = {  # storage dtype -> (torch dtype name, config torch_dtype)
    "f32": ("float32", "float32"),
    "bf16": ("bfloat16", "bfloat16"),
    "f16": ("float16", "float16"),
}


# --------------------------------------------------------------------------------------
# Configuration and weights
# --------------------------------------------------------------------------------------

def make_config(overrides, dtype):
    """The classic Mixtral config.json contents (key order fixed for byte-identical output)."""
    c = dict(rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False, sliding_window=None)
    c.update(overrides)
    cfg = {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": c["vocab_size"],
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
    }
    if "head_dim" in c:
        cfg["head_dim"] = c["head_dim"]
    cfg.update({
        "num_local_experts": c["num_local_experts"],
        "num_experts_per_tok": c["num_experts_per_tok"],
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"],
        "max_position_embeddings": 256,
        "sliding_window": c["sliding_window"],
        "tie_word_embeddings": c["tie_word_embeddings"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "torch_dtype": DTYPE_INFO[dtype][1],
    })
    return cfg


def make_family_config(family, overrides):
    """config.json of another family: its own keys, every value given explicitly."""
    cfg = {"architectures": [FAMILIES[family]["cls"]], "model_type": family}
    cfg.update(overrides)
    cfg.update({"max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
                "hidden_act": "silu", "torch_dtype": "float32"})
    if family in ("qwen3_moe", "qwen2_moe"):
        cfg["use_sliding_window"] = False
    if family == "qwen3_moe":
        cfg["attention_bias"] = False
    return cfg


def spec_of(cfg):
    """The shape and options of a config of any family, in one vocabulary."""
    family = cfg["model_type"]
    f = FAMILIES[family]
    L = cfg["num_hidden_layers"]
    dense = set()
    if f.get("dense"):
        step = cfg.get("decoder_sparse_step", 1)
        dense = {l for l in range(L) if l in cfg.get("mlp_only_layers", []) or (l + 1) % step != 0}
    return dict(
        family=family, f=f, V=cfg["vocab_size"], D=cfg["hidden_size"], F=cfg[f["ff"]],
        F_dense=cfg.get("intermediate_size"), F_sh=cfg.get("shared_expert_intermediate_size"),
        L=L, H=cfg["num_attention_heads"], KV=cfg["num_key_value_heads"], hd=head_dim_of(cfg),
        E=cfg[f["n_expert"]], K=cfg["num_experts_per_tok"], dense=dense,
        norm_topk=cfg.get("norm_topk_prob", family == "mixtral"),
        qkv_bias=cfg.get("qkv_bias", True) if f.get("qkv_bias") else cfg.get("attention_bias", False),
        o_bias=cfg.get("attention_bias", False), qk_norm=f["qk_norm"], shared=f.get("shared", False))


def head_dim_of(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def make_weights(cfg, seed):
    """Random weights (float64 numpy arrays) in the classic per-expert layout.

    The scales are chosen so that a tiny model is not "flat": attention scores and router
    logits have a spread of order 1-2, the final logits reach |logit| ~ 5, and the norm
    weights vary around 1.  Tensor names and the draw order are fixed (for Mixtral, the
    order of the first version of this script, so its files do not change).
    """
    rng = np.random.default_rng(seed)
    sp = spec_of(cfg)
    fam = sp["f"]
    V, D, F = sp["V"], sp["D"], sp["F"]
    H, KV, E = sp["H"], sp["KV"], sp["E"]
    hd = sp["hd"]
    gn, un, dn = fam["names"]

    def lin(out_f, in_f, gain=1.0):   # nn.Linear layout [out_features, in_features]
        return rng.standard_normal((out_f, in_f)) * (gain / math.sqrt(in_f))

    def norm(n):
        return 1.0 + 0.1 * rng.standard_normal(n)

    def bias(n):
        return 0.2 * rng.standard_normal(n)

    w = {}
    # Embeddings: RMSNorm follows, so the scale mostly sets the residual/branch ratio.
    # The tied model reuses it as the LM head, hence the same 2/sqrt(D) as lm_head below.
    w["model.embed_tokens.weight"] = rng.standard_normal((V, D)) * (2.0 / math.sqrt(D))
    for l in range(sp["L"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(D)
        w[p + "self_attn.q_proj.weight"] = lin(H * hd, D, 1.5)
        w[p + "self_attn.k_proj.weight"] = lin(KV * hd, D, 1.5)
        w[p + "self_attn.v_proj.weight"] = lin(KV * hd, D)
        w[p + "self_attn.o_proj.weight"] = lin(D, H * hd)
        if sp["qkv_bias"]:
            w[p + "self_attn.q_proj.bias"] = bias(H * hd)
            w[p + "self_attn.k_proj.bias"] = bias(KV * hd)
            w[p + "self_attn.v_proj.bias"] = bias(KV * hd)
        if sp["o_bias"]:
            w[p + "self_attn.o_proj.bias"] = bias(D)
        if sp["qk_norm"]:
            head = sp["qk_norm"] == "head"
            w[p + "self_attn.q_norm.weight"] = norm(hd if head else H * hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd if head else KV * hd)
        w[p + "post_attention_layernorm.weight"] = norm(D)
        m = p + fam["moe"] + "."
        if l in sp["dense"]:
            Fd = sp["F_dense"]
            w[m + "gate_proj.weight"] = lin(Fd, D)
            w[m + "up_proj.weight"] = lin(Fd, D)
            w[m + "down_proj.weight"] = lin(D, Fd)
            continue
        w[m + "gate.weight"] = lin(E, D, 2.0)
        for e in range(E):
            q = f"{m}experts.{e}."
            w[q + gn + ".weight"] = lin(F, D)          # gate projection
            w[q + dn + ".weight"] = lin(D, F)          # down projection
            w[q + un + ".weight"] = lin(F, D)          # up projection
        if sp["shared"]:
            Fs = sp["F_sh"]
            w[m + "shared_expert.gate_proj.weight"] = lin(Fs, D)
            w[m + "shared_expert.up_proj.weight"] = lin(Fs, D)
            w[m + "shared_expert.down_proj.weight"] = lin(D, Fs)
            w[m + "shared_expert_gate.weight"] = lin(1, D, 2.0)
    w["model.norm.weight"] = norm(D)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = lin(V, D, 2.0)
    return w


def to_storage(weights, dtype):
    """Round the float64 weights to the storage dtype (torch tensors, contiguous)."""
    import torch
    tdt = getattr(torch, DTYPE_INFO[dtype][0])
    # float64 -> float32 -> storage: the F32 draw is the "master" copy for every dtype.
    return {k: torch.from_numpy(v.astype(np.float32)).to(tdt).contiguous()
            for k, v in weights.items()}


# --------------------------------------------------------------------------------------
# Writing the model directory
# --------------------------------------------------------------------------------------

def write_json(path, obj):
    """Indented JSON, but lists of scalars (token ids) kept on one line."""
    def enc(o, ind):
        if isinstance(o, dict):
            if not o:
                return "{}"
            pad = " " * (ind + 2)
            items = [f"{pad}{json.dumps(k)}: {enc(v, ind + 2)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * ind + "}"
        if isinstance(o, list):
            return "[" + ", ".join(enc(v, ind) for v in o) + "]"
        return json.dumps(o)
    with open(path, "w", encoding="utf-8") as f:
        f.write(enc(obj, 0) + "\n")


def fuse_experts(cfg, tensors):
    """The same weights in transformers 5's fused layout (its in-memory parameter names)."""
    import torch
    sp = spec_of(cfg)
    fam = sp["f"]
    gn, un, dn = fam["names"]
    out = {}
    for name, t in tensors.items():
        if ".experts." in name:
            continue
        out[name.replace("." + fam["moe"] + ".gate.", ".mlp.gate.")] = t
    for l in range(sp["L"]):
        if l in sp["dense"]:
            continue
        p = f"model.layers.{l}.{fam['moe']}.experts."
        E = sp["E"]
        out[f"model.layers.{l}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([tensors[f"{p}{e}.{gn}.weight"], tensors[f"{p}{e}.{un}.weight"]], 0) for e in range(E)]
        ).contiguous()
        out[f"model.layers.{l}.mlp.experts.down_proj"] = torch.stack(
            [tensors[f"{p}{e}.{dn}.weight"] for e in range(E)]).contiguous()
    return out


def write_model_dir(d, cfg, tensors, n_shards):
    """config.json plus one safetensors file or n_shards shards and the index."""
    from safetensors.torch import save_file
    write_json(os.path.join(d, "config.json"), cfg)
    meta = {"format": "pt"}
    if n_shards == 1:
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata=meta)
        return
    # Split the tensors, in their natural order, into n_shards runs of about equal bytes.
    # The cut points fall wherever the byte count says, i.e. inside layers.
    names = list(tensors)
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    total = sum(sizes)
    shard_of, acc = {}, 0
    for n, s in zip(names, sizes):
        shard_of[n] = min(n_shards - 1, acc * n_shards // total)
        acc += s
    files = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    for i, fn in enumerate(files):
        save_file({n: tensors[n] for n in names if shard_of[n] == i},
                  os.path.join(d, fn), metadata=meta)
    # Check that at least one layer really is split across shards.
    layer_shards = {}
    for n in names:
        if n.startswith("model.layers."):
            layer_shards.setdefault(n.split(".")[2], set()).add(shard_of[n])
    assert any(len(s) > 1 for s in layer_shards.values()), "no layer spans two shards"
    write_json(os.path.join(d, "model.safetensors.index.json"),
               {"metadata": {"total_size": total},
                "weight_map": {n: files[shard_of[n]] for n in sorted(names)}})


# --------------------------------------------------------------------------------------
# Reloading with transformers and checking the round trip
# --------------------------------------------------------------------------------------

def load_hf(d, family="mixtral"):
    import torch
    import transformers
    cls = getattr(transformers, FAMILIES[family]["cls"])
    model, info = cls.from_pretrained(
        d, dtype=torch.float64, attn_implementation="eager",
        experts_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{d}: transformers reported loading problems: {bad}")
    model.eval()
    return model


def check_roundtrip(model, cfg, tensors):
    """Every reloaded float64 parameter must equal the weight we wrote, upcast."""
    import torch
    sp = spec_of(cfg)
    fam = sp["f"]
    gn, un, dn = fam["names"]
    want = {k: v.to(torch.float64) for k, v in tensors.items()}
    E = sp["E"]
    seen = set()

    def same(name, got, ref_names, ref):
        if got.shape != ref.shape or not torch.equal(got, ref):
            raise SystemExit(f"round trip mismatch: transformers {name} != {ref_names}")
        seen.update(ref_names)

    sd = {k: v.detach() for k, v in model.state_dict().items()}
    for name, got in sd.items():
        if got.dtype != torch.float64:
            raise SystemExit(f"{name} reloaded as {got.dtype}, expected float64")
        if name.endswith("mlp.experts.gate_up_proj"):
            p = name[: -len("mlp.experts.gate_up_proj")] + fam["moe"] + ".experts."
            w1 = [p + f"{e}.{gn}.weight" for e in range(E)]
            w3 = [p + f"{e}.{un}.weight" for e in range(E)]
            # gate_up_proj[e] = cat(w1[e], w3[e]) along the output rows:
            # forward does `gate, up = linear(x, gate_up_proj[e]).chunk(2)`.
            ref = torch.stack([torch.cat([want[a], want[b]], 0) for a, b in zip(w1, w3)])
            same(name, got, w1 + w3, ref)
        elif name.endswith("mlp.experts.down_proj"):
            p = name[: -len("mlp.experts.down_proj")] + fam["moe"] + ".experts."
            w2 = [p + f"{e}.{dn}.weight" for e in range(E)]
            same(name, got, w2, torch.stack([want[n] for n in w2]))
        elif name == "lm_head.weight" and cfg["tie_word_embeddings"]:
            same(name, got, ["model.embed_tokens.weight"], want["model.embed_tokens.weight"])
        else:
            src = name.replace(".mlp.gate.", "." + fam["moe"] + ".gate.")
            if src not in want:
                raise SystemExit(f"transformers parameter {name} has no source tensor")
            same(name, got, [src], want[src])
    missing = set(want) - seen
    if missing:
        raise SystemExit(f"written tensors not used by transformers: {sorted(missing)}")


# --------------------------------------------------------------------------------------
# Independent numpy float64 implementation (documents and checks the semantics)
# --------------------------------------------------------------------------------------

def numpy_forward(cfg, W, tokens):
    """The forward pass of any family in plain float64 numpy; returns [T, V] logits."""
    T = len(tokens)
    sp = spec_of(cfg)
    fam = sp["f"]
    gn, un, dn = fam["names"]
    D, H, KV = sp["D"], sp["H"], sp["KV"]
    K = sp["K"]
    hd, eps, win = sp["hd"], cfg["rms_norm_eps"], cfg.get("sliding_window")
    rep = H // KV

    def rmsnorm(x, w):
        return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))

    def silu(x):
        return x / (1.0 + np.exp(-x))

    def softmax(x):
        x = x - x.max(-1, keepdims=True)
        e = np.exp(x)
        return e / e.sum(-1, keepdims=True)

    def ffn(x, g, u, d):                                                  # rows of x
        return (silu(x @ g.T) * (x @ u.T)) @ d.T

    pos = np.arange(T, dtype=np.float64)
    inv_freq = cfg["rope_theta"] ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.concatenate([pos[:, None] * inv_freq] * 2, axis=1)          # [T, hd]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):                                                          # x [T, n, hd]
        rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], axis=-1)
        return x * cos + rot * sin

    qi, ki = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = ki <= qi
    if win is not None:
        allowed &= ki > qi - win                                          # q - w < k <= q

    x = W["model.embed_tokens.weight"][tokens]
    for l in range(sp["L"]):
        p = f"model.layers.{l}."
        a = p + "self_attn."
        h = rmsnorm(x, W[p + "input_layernorm.weight"])
        q, k, v = (h @ W[a + n + "_proj.weight"].T + W.get(a + n + "_proj.bias", 0.0) for n in "qkv")
        if sp["qk_norm"] == "full":                                       # OLMoE: the whole projection
            q, k = rmsnorm(q, W[a + "q_norm.weight"]), rmsnorm(k, W[a + "k_norm.weight"])
        q, k, v = q.reshape(T, H, hd), k.reshape(T, KV, hd), v.reshape(T, KV, hd)
        if sp["qk_norm"] == "head":                                       # Qwen3: each head
            q, k = rmsnorm(q, W[a + "q_norm.weight"]), rmsnorm(k, W[a + "k_norm.weight"])
        q, k = rope(q), rope(k)
        att = np.empty((T, H, hd))
        for hh in range(H):
            s = (q[:, hh] @ k[:, hh // rep].T) / math.sqrt(hd)
            s = np.where(allowed, s, -np.inf)
            att[:, hh] = softmax(s) @ v[:, hh // rep]
        x = x + att.reshape(T, H * hd) @ W[a + "o_proj.weight"].T + W.get(a + "o_proj.bias", 0.0)

        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"])
        m = p + fam["moe"] + "."
        if l in sp["dense"]:
            x = x + ffn(h, W[m + "gate_proj.weight"], W[m + "up_proj.weight"], W[m + "down_proj.weight"])
            continue
        probs = softmax(h @ W[m + "gate.weight"].T)                       # [T, E]
        y = np.zeros_like(x)
        for t in range(T):
            top = np.argsort(-probs[t], kind="stable")[:K]
            wts = probs[t, top] / probs[t, top].sum() if sp["norm_topk"] else probs[t, top]
            for e, wt in zip(top, wts):
                q_ = f"{m}experts.{e}."
                y[t] += wt * ffn(h[t], W[q_ + gn + ".weight"], W[q_ + un + ".weight"], W[q_ + dn + ".weight"])
        if sp["shared"]:                                                  # Qwen2-MoE
            s = m + "shared_expert."
            g = 1.0 / (1.0 + np.exp(-(h @ W[m + "shared_expert_gate.weight"].T)))   # [T, 1]
            y = y + g * ffn(h, W[s + "gate_proj.weight"], W[s + "up_proj.weight"], W[s + "down_proj.weight"])
        x = x + y
    x = rmsnorm(x, W["model.norm.weight"])
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T


# --------------------------------------------------------------------------------------
# Golden logits
# --------------------------------------------------------------------------------------

def top2_gap(row):
    s = np.sort(row)
    return s[-1] - s[-2]


def run_reference(model, cfg, seed):
    """Pick a prompt, generate greedily, return (tokens, logits[T,V], router gap, tries)."""
    import torch
    V, K = cfg["vocab_size"], cfg["num_experts_per_tok"]
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        prompt = [int(t) for t in rng.integers(3, V, size=N_PROMPT)]
        tokens, ok = list(prompt), True
        with torch.no_grad():
            for _ in range(N_GEN):
                row = model(torch.tensor([tokens])).logits[0, -1].numpy()
                if top2_gap(row) < MIN_GAP:
                    ok = False
                    break
                tokens.append(int(np.argmax(row)))
            # A degenerate continuation (one token repeated) would let position bugs in
            # the C decode loop go unnoticed; ask for some variety.
            if not ok or len(set(tokens[N_PROMPT:])) < MIN_DISTINCT:
                continue
            out = model(torch.tensor([tokens]), output_router_logits=True)
        logits = out.logits[0].numpy()                                    # float64 [T, V]
        # Router decisions: gap between the k-th and (k+1)-th router logit of every token.
        rgap = math.inf
        for rl in (out.router_logits or ()):
            s = np.sort(rl.double().numpy(), axis=-1)
            if K < s.shape[-1]:
                rgap = min(rgap, float((s[:, -K] - s[:, -K - 1]).min()))
        if rgap < MIN_GAP:
            continue
        return tokens, logits, rgap, attempt
    raise SystemExit("no prompt without near-ties found in 100 attempts")


def step_by_step(model, tokens):
    """Logits from feeding one token at a time through the KV cache."""
    import torch
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    rows = []
    with torch.no_grad():
        for t in tokens:
            out = model(torch.tensor([[t]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            rows.append(out.logits[0, -1].numpy())
    return np.stack(rows)


def build(name, out_dir):
    import torch
    import transformers
    if name in FAMILY_MODELS:
        seed, family, overrides, _ = FAMILY_MODELS[name]
        dtype, n_shards = "f32", 1
        cfg = make_family_config(family, overrides)
    else:
        seed, dtype, n_shards, overrides, _ = MODELS[name]
        family = "mixtral"
        cfg = make_config(overrides, dtype)
    d = os.path.join(out_dir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)

    tensors = to_storage(make_weights(cfg, seed), dtype)
    write_model_dir(d, cfg, fuse_experts(cfg, tensors) if name == "tiny-fused" else tensors, n_shards)

    model = load_hf(d, family)
    check_roundtrip(model, cfg, tensors)

    tokens, logits, rgap, attempt = run_reference(model, cfg, seed)
    T = len(tokens)
    for i in range(N_PROMPT - 1, T - 1):
        assert tokens[i + 1] == int(np.argmax(logits[i])), f"greedy token {i + 1} mismatch"
    step_err = float(np.abs(step_by_step(model, tokens) - logits).max())
    if step_err > STEP_TOL:
        raise SystemExit(f"{name}: step-by-step differs from full forward by {step_err:g}")
    W = {k: v.to(torch.float64).numpy() for k, v in tensors.items()}
    np_err = float(np.abs(numpy_forward(cfg, W, tokens) - logits).max())
    if np_err > NUMPY_TOL:
        raise SystemExit(f"{name}: numpy reference differs from transformers by {np_err:g}")
    win = cfg.get("sliding_window")
    if win is not None:
        # The data must pin the window rule down: one position more or less must show.
        for w_alt in (win - 1, win + 1):
            alt = numpy_forward(dict(cfg, sliding_window=w_alt), W, tokens)
            if np.abs(alt - logits).max() < 0.1:
                raise SystemExit(f"{name}: window {w_alt} is indistinguishable from {win}")

    logits.astype("<f4").tofile(os.path.join(d, "logits.f32"))
    write_json(os.path.join(d, "reference.json"), {
        "model": name,
        "prompt": tokens[:N_PROMPT],
        "tokens": tokens,
        "n_vocab": cfg["vocab_size"],
        "logits_file": "logits.f32",
        "n_positions": T,
        "dtype": dtype,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "reference_dtype": "float64",
    })
    gmin = min(top2_gap(logits[i]) for i in range(N_PROMPT - 1, T - 1))
    print(f"{name:13s} max|logit| {np.abs(logits).max():6.3f}  min greedy gap {gmin:.4f}  "
          f"min router gap {rgap:.4f}  prompt try {attempt}  step err {step_err:.1e}  "
          f"numpy err {np_err:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("tests", "data"),
                    help="output directory (default: tests/data)")
    ap.add_argument("--only", choices=sorted(MODELS) + sorted(FAMILY_MODELS), action="append",
                    help="build only this model (may be repeated)")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(1)               # fixed reduction order -> reproducible bytes
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    for name in args.only or list(MODELS) + list(FAMILY_MODELS):
        build(name, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
