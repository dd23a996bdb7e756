#!/usr/bin/env python3
"""Convert a Hugging Face MoE directory to a GGUF file, as llama.cpp would.

    python3 tools/convert_gguf.py HF_DIR OUT.gguf --type TYPE [--expert-layout stacked|split]
    python3 tools/convert_gguf.py --self-test

TYPE is one of f32, f16, bf16, q8_0, q4_0, q4_K, q5_K, q6_K, q4_K_M.  The output is what
llama.cpp's ``convert_hf_to_gguf.py`` (f32/f16/bf16/q8_0) followed by ``llama-quantize``
(q4_0, q4_K, q5_K, q6_K with ``--pure``; q4_K_M with its normal recipe) writes for a
Mixtral, built with PyPI's ``gguf`` writer.  This is a tool that makes reference data; the
moecl runtime never runs Python.

What llama.cpp does, and so this script does
--------------------------------------------
* Architecture ``llama``; Mixtral is a llama with ``llama.expert_count`` and
  ``llama.expert_used_count``.  Hyper-parameters go to ``llama.*`` keys (see
  ``write_metadata``), ``general.file_type`` is the llama_ftype of the chosen TYPE and
  ``general.quantization_version`` is 2.
* Tensor names (gguf-py ``constants.py``, numpy shape = [rows, cols], GGUF ne reversed):

      token_embd.weight               [V, D]
      blk.N.attn_norm.weight          [D]
      blk.N.attn_q.weight             [H*hd, D]    rows permuted, see below
      blk.N.attn_k.weight             [KV*hd, D]   rows permuted, see below
      blk.N.attn_v.weight             [KV*hd, D]
      blk.N.attn_output.weight        [D, H*hd]
      blk.N.ffn_norm.weight           [D]
      blk.N.ffn_gate_inp.weight       [E, D]       router, always F32
      blk.N.ffn_gate_exps.weight      [E, F, D]    stacked w1 (default layout)
      blk.N.ffn_down_exps.weight      [E, D, F]    stacked w2
      blk.N.ffn_up_exps.weight        [E, F, D]    stacked w3
      blk.N.ffn_gate.E.weight         [F, D]       per-expert w1 (--expert-layout split,
      blk.N.ffn_down.E.weight         [D, F]        the layout of older Mixtral GGUFs)
      blk.N.ffn_up.E.weight           [F, D]
      output_norm.weight              [D]
      output.weight                   [V, D]       absent when the embeddings are tied

* Q/K permutation.  HF stores q_proj/k_proj for the rotate-half RoPE (pairs i, i + hd/2);
  llama.cpp's llama arch uses the interleaved form (pairs 2i, 2i + 1).  The converter
  reorders the rows of each head: with n = heads (q) or kv heads (k),
  ``w.reshape(n, 2, hd/2, D).swapaxes(1, 2).reshape(n*hd, D)``, so GGUF row 2i of a head
  is HF row i and GGUF row 2i+1 is HF row i + hd/2.
* Other families (config ``model_type``): ``qwen3_moe`` -> architecture ``qwen3moe``,
  ``olmoe`` -> ``olmoe``, ``qwen2_moe`` -> ``qwen2moe``, as llama.cpp's converter writes
  them: no Q/K permutation (llama.cpp runs NEOX RoPE for them); keys
  ``expert_feed_forward_length`` (moe_intermediate_size) beside ``feed_forward_length``
  (intermediate_size) for the Qwen families, ``expert_shared_feed_forward_length`` for
  Qwen2-MoE; tensors ``attn_q_norm``/``attn_k_norm`` ([hd] per head for Qwen3-MoE, the
  whole projection for OLMoE), ``attn_{q,k,v}.bias`` (Qwen2-MoE), ``ffn_{gate,up,down}_shexp``
  and ``ffn_gate_inp_shexp`` ([1, D] as HF stores it).  llama.cpp has no dense layers in
  these architectures; a layer of ``mlp_only_layers`` is written as ``ffn_{gate,up,down}``
  without ``ffn_gate_inp``, as moecl quantize writes it.
* Tensor types.  1-D tensors (norms) and ffn_gate_inp stay F32 for every TYPE.  Every
  other matrix gets TYPE (``--pure`` semantics) except for q4_K_M, which follows
  llama-quantize's recipe for this architecture (``q4_k_m_type``).
* Fallback when a row length (GGUF ne[0]) is not a multiple of the type's block: q8_0 and
  q4_0 fall back to F16 (convert_hf_to_gguf's rule for q8_0; llama-quantize would refuse a
  Q4_0 tensor like that); the K-quants fall back as llama-quantize does: Q4_K -> Q5_0,
  Q5_K -> Q5_1, Q6_K -> Q8_0, and to F16 when even the 32-block does not fit.  (Q5_0 and
  Q5_1 are not types moecl reads; the golden files never need the fallback, since tiny-q
  has every row length a multiple of 256.)
* Tokenizer.  If HF_DIR has ``tokenizer.json`` of the Llama/Mistral SentencePiece-BPE kind
  (BPE with byte_fallback), tools/gguf_vocab.py writes it: ``tokenizer.ggml.model =
  "llama"``, ``pre = "default"``, tokens and token types as convert_hf_to_gguf's
  ``_set_vocab_llama_hf`` derives them (BYTE for <0xNN>, UNKNOWN for the unk token, CONTROL
  for special added tokens, NORMAL otherwise), scores = -(rank of the first merge making the
  token) so that llama.cpp's score-ordered merging follows the BPE order (its own converter
  writes -1000.0 for every token of a tokenizer.json-only directory, which loses that order),
  ``tokenizer.ggml.merges``, bos/eos/unk ids and add_bos/add_eos. This is what ``moecl
  quantize`` writes too. Without tokenizer.json no tokenizer.* keys are written.

Quantizers
----------
gguf.quants.quantize is used for F16/BF16/Q8_0/Q4_0/Q5_0/Q5_1.  It cannot quantize the
K-quants, so Q4_K, Q5_K and Q6_K are implemented here in numpy following ggml's reference
algorithm (``quantize_row_q4_K_ref`` etc. in ggml-quants.c): per 32-value (Q4_K, Q5_K)
sub-block a scale and a min are searched (``make_qkx2_quants``: an iterated weighted
least-squares fit over 20 (Q4_K) / 15 (Q5_K) trial scales), per 16-value (Q6_K) sub-block
a symmetric scale (``make_qx_quants`` with x^2 weights over 19 trial scales); the
sub-block scales are then quantized to 6 bits (Q4_K/Q5_K, against a per-super-block F16 d
and dmin) or 8 bits (Q6_K), and the values re-quantized with the stored scales.
``--self-test`` checks that gguf.quants.dequantize reads our blocks back with the expected
error, including zero blocks, constant blocks and extreme scales.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

QK_K = 256

TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_K", "q5_K", "q6_K", "q4_K_M"]


def _gguf():
    import gguf
    return gguf


# --------------------------------------------------------------------------------------
# K-quant reference quantizers (numpy, vectorised over all blocks)
# --------------------------------------------------------------------------------------

def _rint(x):
    """ggml's nearest_int: round to nearest, ties to even (float32)."""
    return np.rint(x.astype(np.float32))


def _f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep):
    """Asymmetric fit x ~ scale * L - mn, L in [0, nmax], per row of x [N, n].

    Returns (scale [N], the_min [N] (>= 0), L [N, n] uint8).
    """
    x = x.astype(np.float32)
    w = w.astype(np.float32)
    mn = np.minimum(x.min(axis=1), 0.0).astype(np.float32)
    mx = x.max(axis=1)
    sum_w = w.sum(axis=1)
    sum_x = (w * x).sum(axis=1)
    flat = mx == mn
    rng = np.where(flat, np.float32(1), mx - mn).astype(np.float32)
    xm = x - mn[:, None]

    iscale = np.float32(nmax) / rng
    scale = np.float32(1) / iscale
    L = np.clip(_rint(iscale[:, None] * xm), 0, nmax)
    best = (w * (scale[:, None] * L + mn[:, None] - x) ** 2).sum(axis=1)
    for step in range(nstep + 1):
        iscale = np.float32(rmin + rdelta * step + nmax) / rng
        La = np.clip(_rint(iscale[:, None] * xm), 0, nmax)
        sum_l = (w * La).sum(axis=1)
        sum_l2 = (w * La * La).sum(axis=1)
        sum_xl = (w * La * x).sum(axis=1)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, 1)
        ts = (sum_w * sum_xl - sum_x * sum_l) / Ds
        tm = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = tm > 0
        tm = np.where(pos, 0, tm)
        ts = np.where(pos, sum_xl / np.where(sum_l2 > 0, sum_l2, 1), ts)
        err = (w * (ts[:, None] * La + tm[:, None] - x) ** 2).sum(axis=1)
        better = ok & (err < best)
        L = np.where(better[:, None], La, L)
        best = np.where(better, err, best)
        scale = np.where(better, ts, scale)
        mn = np.where(better, tm, mn)
    scale = np.where(flat, 0, scale).astype(np.float32)
    L = np.where(flat[:, None], 0, L)
    return scale, (-mn).astype(np.float32), L.astype(np.uint8)


def make_qx_quants(x, nmax):
    """Symmetric fit x ~ scale * (L - nmax), L in [0, 2*nmax), weights x^2 (rmse_type 1)."""
    x = x.astype(np.float32)
    N = x.shape[0]
    ax = np.abs(x)
    idx = ax.argmax(axis=1)
    amax = ax[np.arange(N), idx]
    mx = x[np.arange(N), idx]
    zero = amax < 1e-15
    mxs = np.where(zero, 1, mx).astype(np.float32)
    w = x * x

    def trial(iscale):
        l = np.clip(_rint(iscale[:, None] * x), -nmax, nmax - 1)
        return l, (w * x * l).sum(axis=1), (w * l * l).sum(axis=1)

    l, sumlx, suml2 = trial(np.float32(-nmax) / mxs)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, 1), 0).astype(np.float32)
    best = scale * sumlx
    L = l + nmax
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = trial(np.float32(-(nmax + 0.1 * step)) / mxs)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        s2 = np.where(better, sumlx / np.where(suml2 > 0, suml2, 1), scale)
        L = np.where(better[:, None], l + nmax, L)
        scale = s2.astype(np.float32)
        best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, 0, scale).astype(np.float32)
    L = np.where(zero[:, None], 0, L)
    return scale, L.astype(np.uint8)


def _kquant_scales_mins(x, nmax, rmin, nstep):
    """Shared first half of Q4_K / Q5_K: returns d16, dmin16, scales[12] bytes, L [nb,256]."""
    nb = x.shape[0]
    sub = x.reshape(nb * 8, 32)
    av_x = np.sqrt((sub * sub).sum(axis=1) / 32)
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, L = make_qkx2_quants(sub, weights, nmax, rmin, 0.1, nstep)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    L = L.reshape(nb, 256).astype(np.int32)
    max_scale = scales.max(axis=1)
    max_min = mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, 63 / np.where(max_scale > 0, max_scale, 1), 0)
    inv_min = np.where(max_min > 0, 63 / np.where(max_min > 0, max_min, 1), 0)
    ls = np.minimum(63, _rint(inv_scale[:, None] * scales)).astype(np.uint8)
    lm = np.minimum(63, _rint(inv_min[:, None] * mins)).astype(np.uint8)
    # 12 bytes of 6-bit scales and mins:
    #   bytes 0-3:  ls[0..3]  | (ls[4..7] >> 4) << 6
    #   bytes 4-7:  lm[0..3]  | (lm[4..7] >> 4) << 6
    #   bytes 8-11: (ls[4..7] & 15) | (lm[4..7] & 15) << 4
    sc = np.zeros((nb, 12), dtype=np.uint8)
    sc[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    sc[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    sc[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    d16 = _f16(max_scale / 63)
    dmin16 = _f16(max_min / 63)
    # Re-quantize every value with the scales actually stored.
    d = (d16.astype(np.float32)[:, None] * ls.astype(np.float32))            # [nb, 8]
    dm = (dmin16.astype(np.float32)[:, None] * lm.astype(np.float32))
    dv = np.repeat(d, 32, axis=1)
    dmv = np.repeat(dm, 32, axis=1)
    Lq = np.clip(_rint((x + dmv) / np.where(dv != 0, dv, 1)), 0, nmax).astype(np.int32)
    L = np.where(dv != 0, Lq, L)
    return d16, dmin16, sc, L


def quantize_q4_k(x):
    """x [nb, 256] float32 -> [nb, 144] bytes: d f16, dmin f16, scales[12], qs[128].

    qs: for each 64-value chunk c, 32 bytes; byte j holds value 64c+j in the low nibble
    and value 64c+32+j in the high nibble.
    """
    nb = x.shape[0]
    d16, dmin16, sc, L = _kquant_scales_mins(x, 15, -1.0, 20)
    L = L.reshape(nb, 4, 2, 32).astype(np.uint8)
    qs = (L[:, :, 0, :] | (L[:, :, 1, :] << 4)).reshape(nb, 128)
    return np.concatenate([d16.reshape(nb, 1).view(np.uint8), dmin16.reshape(nb, 1).view(np.uint8),
                           sc, qs], axis=1)


def quantize_q5_k(x):
    """x [nb, 256] -> [nb, 176]: d f16, dmin f16, scales[12], qh[32], qs[128].

    Low 4 bits packed as in Q4_K; bit 4 of value 64c+j goes to qh[j] bit 2c, of value
    64c+32+j to qh[j] bit 2c+1.
    """
    nb = x.shape[0]
    d16, dmin16, sc, L = _kquant_scales_mins(x, 31, -0.5, 15)
    L = L.reshape(nb, 4, 2, 32).astype(np.uint8)
    lo = L & 0xF
    hi = L >> 4
    qs = (lo[:, :, 0, :] | (lo[:, :, 1, :] << 4)).reshape(nb, 128)
    qh = np.zeros((nb, 32), dtype=np.uint8)
    for c in range(4):
        qh |= (hi[:, c, 0, :] << (2 * c)) | (hi[:, c, 1, :] << (2 * c + 1))
    return np.concatenate([d16.reshape(nb, 1).view(np.uint8), dmin16.reshape(nb, 1).view(np.uint8),
                           sc, qh, qs], axis=1)


def quantize_q6_k(x):
    """x [nb, 256] -> [nb, 210]: ql[128], qh[64], scales[16] int8, d f16.

    Values are 6-bit (L - 32) * d * scale[j] per 16-value group j.  For each 128-value
    half h and l < 32, with q1..q4 = values 128h + l, +32, +64, +96:
    ql[64h + l] = q1 & 15 | (q3 & 15) << 4, ql[64h + 32 + l] = q2 & 15 | (q4 & 15) << 4,
    qh[32h + l] = q1 >> 4 | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6.
    """
    nb = x.shape[0]
    scales, L = make_qx_quants(x.reshape(nb * 16, 16), 32)
    scales = scales.reshape(nb, 16)
    L = L.reshape(nb, 256).astype(np.int32)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), idx]
    zero = np.abs(max_scale) < 1e-15
    iscale = np.where(zero, 0, -128 / np.where(zero, 1, max_scale)).astype(np.float32)
    d16 = _f16(np.where(zero, 0, 1 / np.where(zero, 1, iscale)))
    sc = np.minimum(127, _rint(iscale[:, None] * scales)).astype(np.int8)
    dd = np.repeat(d16.astype(np.float32)[:, None] * sc.astype(np.float32), 16, axis=1)
    Lq = np.clip(_rint(x / np.where(dd != 0, dd, 1)), -32, 31).astype(np.int32) + 32
    L = np.where(dd != 0, Lq, L)
    L = np.where(zero[:, None], 0, L).astype(np.uint8)
    sc = np.where(zero[:, None], 0, sc).astype(np.int8)
    q = L.reshape(nb, 2, 4, 32)                     # [block, half, quarter, l]
    ql = np.concatenate([(q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4),
                         (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4)
          | ((q[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d16.reshape(nb, 1).view(np.uint8)], axis=1)


K_QUANTIZERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def quantize(x, qtype):
    """float array (numpy shape [..., n]) -> (data, qtype) as GGUFWriter takes it."""
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == Q.F32:
        return x
    if qtype == Q.F16:
        return x.astype(np.float16)
    if qtype.name in K_QUANTIZERS:
        rows = x.reshape(-1, x.shape[-1])
        blocks = K_QUANTIZERS[qtype.name](rows.reshape(-1, QK_K))
        bsize = gguf.GGML_QUANT_SIZES[qtype][1]
        return blocks.reshape(*x.shape[:-1], x.shape[-1] // QK_K * bsize)
    return gguf.quants.quantize(x, qtype)


# --------------------------------------------------------------------------------------
# Type selection (convert_hf_to_gguf + llama-quantize)
# --------------------------------------------------------------------------------------

# --type -> (default tensor type, llama_ftype written as general.file_type)
FTYPES = {
    "f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
    "q4_K": ("Q4_K", "MOSTLY_Q4_K_S"), "q5_K": ("Q5_K", "MOSTLY_Q5_K_S"),
    "q6_K": ("Q6_K", "MOSTLY_Q6_K"), "q4_K_M": ("Q4_K", "MOSTLY_Q4_K_M"),
}

# llama-quantize's fallback when ne[0] is not a multiple of the block size.
K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def use_more_bits(i_layer, n_layers):
    """llama-quantize: the first and last eighth of the layers, and every third between."""
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or (i_layer - n_layers // 8) % 3 == 2)


def q4_k_m_type(name, layer, n_layer, n_expert, row_len, tied):
    """llama-quantize's choice for LLAMA_FTYPE_MOSTLY_Q4_K_M, llama arch, no imatrix."""
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q8_0" if row_len % QK_K else "Q6_K"
    if ".attn_v." in name:
        if n_expert == 8:
            return "Q8_0"        # "for the 8-expert model, bumping this to Q8_0 trades ~128MB"
        return "Q6_K" if use_more_bits(layer, n_layer) else "Q4_K"
    if ".attn_k." in name:
        return "Q8_0" if n_expert == 8 else "Q4_K"
    if ".ffn_down" in name:
        return "Q6_K" if use_more_bits(layer, n_layer) else "Q4_K"
    if ".attn_output." in name:
        return "Q5_K" if n_expert == 8 else "Q4_K"
    return "Q4_K"


def tensor_type(name, shape, ftype, layer, n_layer, n_expert, tied):
    """GGML type name for one tensor (numpy shape; row length = shape[-1])."""
    if len(shape) == 1 or ".ffn_gate_inp" in name or name.endswith("_norm.weight"):
        return "F32"
    base = FTYPES[ftype][0]
    if base in ("F32", "F16", "BF16"):
        return base
    row = shape[-1]
    t = q4_k_m_type(name, layer, n_layer, n_expert, row, tied) if ftype == "q4_K_M" else base
    blk = 256 if t.endswith("_K") else 32
    if row % blk:
        t = K_FALLBACK.get(t, "F16")
        if row % 32:
            t = "F16"
    return t


# --------------------------------------------------------------------------------------
# Reading the Hugging Face directory
# --------------------------------------------------------------------------------------

# config model_type -> (GGUF architecture, experts key, expert FFN key, MoE module name,
# expert projection names gate/down/up, permute Q/K rows)
FAMILIES = {
    "mixtral": ("llama", "num_local_experts", "intermediate_size", "block_sparse_moe",
                ("w1", "w2", "w3"), True),
    "qwen3_moe": ("qwen3moe", "num_experts", "moe_intermediate_size", "mlp",
                  ("gate_proj", "down_proj", "up_proj"), False),
    "olmoe": ("olmoe", "num_experts", "intermediate_size", "mlp",
              ("gate_proj", "down_proj", "up_proj"), False),
    "qwen2_moe": ("qwen2moe", "num_experts", "moe_intermediate_size", "mlp",
                  ("gate_proj", "down_proj", "up_proj"), False),
}


def read_config(hf_dir):
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        c = json.load(f)
    family = c.get("model_type", "mixtral")
    arch, e_key, f_key, moe, names, permute = FAMILIES[family]
    rope = c.get("rope_theta")
    if rope is None:
        rope = (c.get("rope_parameters") or {}).get("rope_theta", 1e6 if family == "mixtral" else 1e4)
    D, H, L = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
    dense = set()
    if family in ("qwen3_moe", "qwen2_moe"):
        step = c.get("decoder_sparse_step", 1)
        dense = {l for l in range(L) if l in (c.get("mlp_only_layers") or []) or (l + 1) % step}
    return dict(
        V=c["vocab_size"], D=D, F=c[f_key], L=L, H=H,
        KV=c.get("num_key_value_heads") or H, E=c[e_key],
        K=c["num_experts_per_tok"], hd=c.get("head_dim") or D // H,
        explicit_hd=c.get("head_dim") is not None,
        eps=c.get("rms_norm_eps", 1e-5), theta=float(rope),
        ctx=c.get("max_position_embeddings", 4096),
        tied=bool(c.get("tie_word_embeddings", False)), raw=c,
        family=family, arch=arch, moe=moe, names=names, permute=permute, dense=dense,
        F_dense=c.get("intermediate_size"), F_sh=c.get("shared_expert_intermediate_size"),
        qk_norm={"qwen3_moe": "head", "olmoe": "full"}.get(family),
        qkv_bias=c.get("qkv_bias", True) if family == "qwen2_moe" else c.get("attention_bias", False),
        o_bias=family != "qwen2_moe" and c.get("attention_bias", False))


class HFWeights:
    """Lazy access to the safetensors tensors of a directory, as float32 numpy."""

    def __init__(self, hf_dir):
        from safetensors import safe_open
        self.files = {}
        for fn in sorted(glob.glob(os.path.join(hf_dir, "*.safetensors"))):
            h = safe_open(fn, framework="pt")
            for k in h.keys():
                self.files[k] = h
        if not self.files:
            raise SystemExit(f"{hf_dir}: no *.safetensors files")

    def __contains__(self, name):
        return name in self.files

    def get(self, name):
        import torch
        return self.files[name].get_tensor(name).to(torch.float32).numpy()


def permute_rows(w, n_head):
    """HF rotate-half row order -> llama.cpp interleaved order, per head."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_rows(w, n_head):
    """Inverse of permute_rows."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def tensor_plan(cfg, W, layout):
    """[(gguf name, numpy shape, layer or -1, loader)] in llama.cpp's order."""
    D, F, E, H, KV, hd = cfg["D"], cfg["F"], cfg["E"], cfg["H"], cfg["KV"], cfg["hd"]
    perm = permute_rows if cfg["permute"] else (lambda w, n: w)
    plan = [("token_embd.weight", (cfg["V"], D), -1, lambda: W.get("model.embed_tokens.weight"))]
    for l in range(cfg["L"]):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        a = p + "self_attn."
        m = p + cfg["moe"] + "."
        plan += [
            (b + "attn_norm.weight", (D,), l, lambda p=p: W.get(p + "input_layernorm.weight")),
            (b + "attn_q.weight", (H * hd, D), l, lambda a=a: perm(W.get(a + "q_proj.weight"), H)),
            (b + "attn_k.weight", (KV * hd, D), l, lambda a=a: perm(W.get(a + "k_proj.weight"), KV)),
            (b + "attn_v.weight", (KV * hd, D), l, lambda a=a: W.get(a + "v_proj.weight")),
            (b + "attn_output.weight", (D, H * hd), l, lambda a=a: W.get(a + "o_proj.weight")),
        ]
        if cfg["qkv_bias"]:
            for n, rows in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
                plan.append((f"{b}attn_{n}.bias", (rows,), l,
                             lambda a=a, n=n: W.get(f"{a}{n}_proj.bias")))
        if cfg["o_bias"]:
            plan.append((b + "attn_output.bias", (D,), l, lambda a=a: W.get(a + "o_proj.bias")))
        if cfg["qk_norm"]:
            head = cfg["qk_norm"] == "head"
            plan += [(b + "attn_q_norm.weight", (hd if head else H * hd,), l,
                      lambda a=a: W.get(a + "q_norm.weight")),
                     (b + "attn_k_norm.weight", (hd if head else KV * hd,), l,
                      lambda a=a: W.get(a + "k_norm.weight"))]
        plan.append((b + "ffn_norm.weight", (D,), l,
                     lambda p=p: W.get(p + "post_attention_layernorm.weight")))
        if l in cfg["dense"]:
            Fd = cfg["F_dense"]
            for g, shp in (("gate", (Fd, D)), ("down", (D, Fd)), ("up", (Fd, D))):
                plan.append((f"{b}ffn_{g}.weight", shp, l, lambda m=m, g=g: W.get(f"{m}{g}_proj.weight")))
            continue
        plan.append((b + "ffn_gate_inp.weight", (E, D), l, lambda m=m: W.get(m + "gate.weight")))
        x = m + "experts."
        parts = [(g, w, shp) for g, w, shp in zip(("gate", "down", "up"), cfg["names"],
                                                     ((F, D), (D, F), (F, D)))]
        if layout == "stacked":
            for g, w, shp in parts:
                plan.append((f"{b}ffn_{g}_exps.weight", (E,) + shp, l,
                             lambda x=x, w=w: np.stack([W.get(f"{x}{e}.{w}.weight")
                                                        for e in range(E)])))
        else:
            for e in range(E):
                for g, w, shp in parts:
                    plan.append((f"{b}ffn_{g}.{e}.weight", shp, l,
                                 lambda x=x, w=w, e=e: W.get(f"{x}{e}.{w}.weight")))
        if cfg["F_sh"]:
            s_ = m + "shared_expert."
            Fs = cfg["F_sh"]
            plan.append((b + "ffn_gate_inp_shexp.weight", (1, D), l,
                         lambda m=m: W.get(m + "shared_expert_gate.weight")))
            for g, shp in (("gate", (Fs, D)), ("down", (D, Fs)), ("up", (Fs, D))):
                plan.append((f"{b}ffn_{g}_shexp.weight", shp, l,
                             lambda s_=s_, g=g: W.get(f"{s_}{g}_proj.weight")))
    plan.append(("output_norm.weight", (D,), -1, lambda: W.get("model.norm.weight")))
    if not cfg["tied"] and "lm_head.weight" in W:
        plan.append(("output.weight", (cfg["V"], D), -1, lambda: W.get("lm_head.weight")))
    return plan


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

def write_tokenizer(writer, hf_dir):
    """tokenizer.ggml.* from tokenizer.json (tools/gguf_vocab.py): tokens and types as
    llama.cpp's converter derives them, scores from the merge ranks (llama.cpp's own
    tokenizer.json-only path writes -1000 everywhere and so loses the merge order) and the
    merges themselves, as moecl quantize writes them; False if there is no tokenizer.json."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if not os.path.isfile(path):
        return False
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gguf_vocab import write_llama_vocab
    write_llama_vocab(writer, path)
    return True


def write_metadata(writer, cfg, ftype, name):
    gguf = _gguf()
    writer.add_name(name)
    writer.add_context_length(cfg["ctx"])
    writer.add_embedding_length(cfg["D"])
    writer.add_block_count(cfg["L"])
    if cfg["family"] in ("qwen3_moe", "qwen2_moe"):
        writer.add_expert_feed_forward_length(cfg["F"])
        if cfg["F_dense"]:
            writer.add_feed_forward_length(cfg["F_dense"])
    else:
        writer.add_feed_forward_length(cfg["F"])
    if cfg["F_sh"]:
        writer.add_expert_shared_feed_forward_length(cfg["F_sh"])
    writer.add_head_count(cfg["H"])
    writer.add_head_count_kv(cfg["KV"])
    writer.add_rope_freq_base(cfg["theta"])
    writer.add_layer_norm_rms_eps(cfg["eps"])
    writer.add_expert_count(cfg["E"])
    writer.add_expert_used_count(cfg["K"])
    if cfg["explicit_hd"]:
        writer.add_key_length(cfg["hd"])
        writer.add_value_length(cfg["hd"])
    writer.add_file_type(int(gguf.LlamaFileType[FTYPES[ftype][1]]))
    writer.add_vocab_size(cfg["V"])
    writer.add_rope_dimension_count(cfg["hd"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def convert(hf_dir, out, ftype, layout, verbose=True):
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    cfg = read_config(hf_dir)
    W = HFWeights(hf_dir)
    plan = tensor_plan(cfg, W, layout)
    tied = not any(n == "output.weight" for n, *_ in plan)

    writer = gguf.GGUFWriter(out, cfg["arch"])
    write_metadata(writer, cfg, ftype, os.path.basename(os.path.normpath(hf_dir)))
    has_tok = write_tokenizer(writer, hf_dir)

    # Pass 1: every tensor's type and byte size, so the data can be streamed one tensor
    # at a time (a real Mixtral does not fit in memory as float32).
    types = []
    for name, shape, layer, _ in plan:
        t = tensor_type(name, shape, ftype, layer, cfg["L"], cfg["E"], tied)
        qt = Q[t]
        bs, ts = gguf.GGML_QUANT_SIZES[qt]
        nbytes = int(np.prod(shape)) // bs * ts
        if qt == Q.F32:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes)
        elif qt == Q.F16:
            writer.add_tensor_info(name, shape, np.dtype(np.float16), nbytes)
        else:
            bshape = tuple(shape[:-1]) + (shape[-1] // bs * ts,)
            writer.add_tensor_info(name, bshape, np.dtype(np.uint8), nbytes, raw_dtype=qt)
        types.append(qt)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    counts = {}
    for (name, shape, _, load), qt in zip(plan, types):
        x = load()
        if tuple(x.shape) != tuple(shape):
            raise SystemExit(f"{name}: HF tensor has shape {x.shape}, expected {shape}")
        writer.write_tensor_data(quantize(x, qt))
        counts[qt.name] = counts.get(qt.name, 0) + 1
    writer.close()
    if verbose:
        summary = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
        print(f"{out}: {len(plan)} tensors ({summary}), {os.path.getsize(out)} bytes"
              f"{', tokenizer' if has_tok else ''}")


# --------------------------------------------------------------------------------------
# Self-test of the quantizers against gguf.quants.dequantize
# --------------------------------------------------------------------------------------

# Bound on RMS(dequant - x) / RMS(x) for Gaussian rows (measured: 0.0723, 0.0364, 0.0178;
# Q4_0 and Q8_0 from gguf.quants give 0.0865 and 0.0054 for comparison).
SELF_TEST_BOUND = {"Q4_K": 0.075, "Q5_K": 0.038, "Q6_K": 0.019}


def self_test():
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(1)
    ok = True
    gauss = rng.standard_normal((64, 1024)).astype(np.float32)
    special = [np.zeros((1, 256), np.float32),                 # zero block
               np.full((1, 256), 3.0, np.float32),             # constant positive
               np.full((1, 256), -2.0, np.float32),            # constant negative
               # Small but not below what an F16 super-block scale can carry (ggml has
               # the same limit: at max |x| ~ 1e-4 the F16 d/dmin become subnormal).
               (rng.standard_normal((2, 256)) * 1e-2).astype(np.float32),
               (rng.standard_normal((2, 256)) * 3e4).astype(np.float32),
               np.abs(rng.standard_normal((2, 256))).astype(np.float32),   # all positive
               -np.abs(rng.standard_normal((2, 256))).astype(np.float32)]
    # Half the super-block tiny, half large: sub-block scales span the 6-bit range.
    mixed = rng.standard_normal((2, 256)).astype(np.float32)
    mixed[:, :128] *= 1e-3
    special.append(mixed)
    for name in ("Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"):
        qt = Q[name]
        back = gguf.quants.dequantize(quantize(gauss, qt), qt)
        rel = float(np.sqrt(np.mean((back - gauss) ** 2) / np.mean(gauss ** 2)))
        bound = SELF_TEST_BOUND.get(name)
        line = f"{name}: gaussian rel RMS err {rel:.4f}"
        if bound is not None:
            good = rel < bound
            for s in special:
                b = gguf.quants.dequantize(quantize(s, qt), qt)
                scale = float(np.abs(s).max()) or 1.0
                e = float(np.abs(b - s).max()) / scale
                if not np.all(np.isfinite(b)) or e > 0.2:
                    print(f"  {name}: special block (max |x| {scale:g}) max err {e:g}")
                    good = False
            line += f" (bound {bound}), special blocks {'ok' if good else 'FAILED'}"
            ok &= good
        print(line)
    print("self-test", "passed" if ok else "FAILED")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("hf_dir", nargs="?")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--type", choices=TYPES, default="f32")
    ap.add_argument("--expert-layout", choices=["stacked", "split"], default="stacked")
    ap.add_argument("--self-test", action="store_true",
                    help="check the K-quantizers against gguf.quants.dequantize and exit")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.hf_dir or not args.out:
        ap.error("HF_DIR and OUT.gguf are required")
    convert(args.hf_dir, args.out, args.type, args.expert_layout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
