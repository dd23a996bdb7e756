#!/usr/bin/env python3
"""moecl perplexity against references it did not make.

    test_perplexity.py MOECL TESTS_DATA WORK golden   # stdlib only
    test_perplexity.py MOECL TESTS_DATA WORK numpy    # exits 77 without numpy
    test_perplexity.py MOECL TESTS_DATA WORK default MODELS_DIR

golden: the chunked perplexity of the golden model tests/data/tiny-f32 on fixed ids
equals transformers' float64 value (tests/data/ppl/tiny-f32.json, made by
tools/make_ppl_refs.py) within 0.1 %, for two n_ctx and for a batch smaller than the
chunk; the KL divergence of a model against its own saved logits is 0 with 100 % top-1
agreement; against a Q4_0 GGUF of it (moecl quantize) it is > 0; and a mismatched,
foreign, truncated or absent logits file is refused with a message naming it.

numpy: saves the full log-probabilities (top-K = the vocabulary) of the F32 model and of
its Q4_0 GGUF, and checks the mean KL, its percentiles and the top-1 agreement that
--kl-base prints against numpy's float64 computation from those two files.

default: the trained default model on held-out text (tests/data/ppl/heldout.txt):
moecl's tokenization and PPL against transformers' float64 value (default.json).
"""

import json
import math
import os
import re
import struct
import subprocess
import sys

MOECL, DATA, WORK, MODE = sys.argv[1:5]
os.makedirs(WORK, exist_ok=True)
TINY = os.path.join(DATA, "tiny-f32")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def run(*args, ok=True):
    p = subprocess.run([MOECL, "perplexity", *args], capture_output=True, text=True, timeout=600)
    if ok and p.returncode != 0:
        sys.exit(f"moecl perplexity {' '.join(args)[:200]} failed ({p.returncode}): {p.stderr}")
    return p


def final(out):
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+) \((\d+) tokens scored, mean NLL ([0-9.-]+)\)", out)
    assert m, out
    return float(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4))


def kl_stats(out):
    m = re.search(r"mean ([0-9.e-]+) \+/- ([0-9.e-]+)\n\s+median ([0-9.e-]+)\s+p90 ([0-9.e-]+)\s+p99 ([0-9.e-]+)"
                  r"\s+max ([0-9.e-]+)\n\s+top-1 agreement ([0-9.]+) %", out)
    assert m, out
    return {k: float(v) for k, v in zip(["mean", "pm", "median", "p90", "p99", "max", "top1"], m.groups())}


def rel(a, b):
    return abs(a - b) / abs(b)


def golden():
    ref = json.load(open(os.path.join(DATA, "ppl", "tiny-f32.json")))
    ids = ",".join(map(str, ref["tokens"]))
    for r in ref["refs"]:
        for b in (r["n_ctx"], 7):
            ppl, pm, count, nll = final(run("-m", TINY, "--tokens", ids, "-c", str(r["n_ctx"]), "-b", str(b),
                                            "-t", "1").stdout)
            check(count == r["count"], f"-c {r['n_ctx']} -b {b}: {count} tokens scored (transformers {r['count']})")
            check(rel(ppl, r["ppl"]) < 1e-3, f"-c {r['n_ctx']} -b {b}: PPL {ppl} vs transformers float64 "
                  f"{r['ppl']:.6f} (rel {rel(ppl, r['ppl']):.2e} < 1e-3)")
            check(rel(pm, r["ppl_pm"]) < 1e-2, f"-c {r['n_ctx']} -b {b}: +/- {pm} vs {r['ppl_pm']:.5f}")
    # KL against itself, and against a quantized copy.
    base = os.path.join(WORK, "base.kl")
    run("-m", TINY, "--tokens", ids, "-c", "32", "-t", "1", "--kl-save", base, "--kl-top-k", "16")
    check(os.path.getsize(base) == 64 + 10 * 15 * 16 * 8, "the saved file holds 64 + positions x K x 8 bytes")
    s = kl_stats(run("-m", TINY, "--tokens", ids, "-c", "32", "-t", "1", "--kl-base", base).stdout)
    check(s["mean"] == 0 and s["max"] == 0 and s["top1"] == 100, f"KL of the model against itself: {s}")
    q4 = os.path.join(WORK, "tiny-q4_0.gguf")
    subprocess.run([MOECL, "quantize", TINY, q4, "q4_0", "-t", "1"], check=True, capture_output=True)
    s = kl_stats(run("-m", q4, "--tokens", ids, "-c", "32", "-t", "1", "--kl-base", base).stdout)
    check(s["mean"] > 1e-4 and s["max"] >= s["p99"] >= s["p90"] >= s["median"] >= 0,
          f"KL against a Q4_0 copy is > 0 and ordered: {s}")
    # Refusals, each naming the file.
    for args, why in [(["-c", "64"], "other chunking"),
                      (["-c", "32", "--chunks", "4"], "other chunking")]:
        p = run("-m", TINY, "--tokens", ids, "-t", "1", "--kl-base", base, *args, ok=False)
        check(p.returncode == 1 and why in p.stderr and base in p.stderr, f"refused ({why}): {p.stderr.strip()}")
    other = ",".join(map(str, ref["tokens"][1:] + ref["tokens"][:1]))
    p = run("-m", TINY, "--tokens", other, "-c", "32", "-t", "1", "--kl-base", base, ok=False)
    check(p.returncode == 1 and "other text" in p.stderr, f"refused (other text): {p.stderr.strip()}")
    bad = os.path.join(WORK, "bad.kl")
    with open(base, "rb") as f:
        blob = f.read()
    for content, why in [(blob[:-3], "wrong size"), (b"GGUF" + blob[4:], "bad magic"), (blob[:10], "header")]:
        with open(bad, "wb") as f:
            f.write(content)
        p = run("-m", TINY, "--tokens", ids, "-c", "32", "-t", "1", "--kl-base", bad, ok=False)
        check(p.returncode == 1 and why in p.stderr and bad in p.stderr, f"refused ({why}): {p.stderr.strip()}")
    p = run("-m", TINY, "--tokens", ids, "-c", "32", "--kl-base", os.path.join(WORK, "absent.kl"), ok=False)
    check(p.returncode == 1 and "absent.kl" in p.stderr, f"refused (absent): {p.stderr.strip()}")
    p = run("-m", TINY, "--tokens", ids, "-c", "256", ok=False)
    check(p.returncode == 1 and "at least 512" in p.stderr, f"refused (too short): {p.stderr.strip()}")
    p = run("-m", TINY, "--tokens", "1,2,500", "-c", "4", ok=False)
    check(p.returncode == 1 and "outside the vocabulary" in p.stderr, f"refused (id): {p.stderr.strip()}")
    # A failed save leaves no file under the name.
    p = run("-m", TINY, "--tokens", ids, "-c", "32", "--kl-save", os.path.join(WORK, "no", "dir.kl"), ok=False)
    check(p.returncode == 1 and not os.path.exists(os.path.join(WORK, "no", "dir.kl")), "unwritable --kl-save fails")


def read_kl(path):
    import numpy as np
    with open(path, "rb") as f:
        h = f.read(64)
        assert h[:4] == b"MCKL"
        n_vocab, n_ctx, n_chunks, k, n_scored = struct.unpack("<5I", h[8:28])
        rec = np.frombuffer(f.read(), dtype="<i4").reshape(n_chunks * n_scored, 2, k)
    ids = rec[:, 0, :]
    logp = rec[:, 1, :].copy().view("<f4").astype(np.float64)
    return n_vocab, k, ids, logp


def with_numpy():
    try:
        import numpy as np
    except ImportError:
        print("perplexity_kl_numpy: SKIP: numpy not installed (pip install numpy)", file=sys.stderr)
        sys.exit(77)
    ref = json.load(open(os.path.join(DATA, "ppl", "tiny-f32.json")))
    ids = ",".join(map(str, ref["tokens"]))
    q8 = os.path.join(WORK, "tiny-q4_0.gguf")
    subprocess.run([MOECL, "quantize", TINY, q8, "q4_0", "-t", "1"], check=True, capture_output=True)
    fb, fq = os.path.join(WORK, "full-base.kl"), os.path.join(WORK, "full-q.kl")
    run("-m", TINY, "--tokens", ids, "-c", "64", "-t", "1", "--kl-save", fb, "--kl-top-k", "1000")
    run("-m", q8, "--tokens", ids, "-c", "64", "-t", "1", "--kl-save", fq, "--kl-top-k", "1000")
    s = kl_stats(run("-m", q8, "--tokens", ids, "-c", "64", "-t", "1", "--kl-base", fb).stdout)
    V, k, bi, bl = read_kl(fb)
    _, _, qi, ql = read_kl(fq)
    check(k == V == 128, f"top-K clamped to the vocabulary ({k})")
    P = np.full((bi.shape[0], V), -np.inf)
    Q = np.full((qi.shape[0], V), -np.inf)
    np.put_along_axis(P, bi, bl, axis=1)
    np.put_along_axis(Q, qi, ql, axis=1)
    check(np.all(np.abs(np.exp(P).sum(1) - 1) < 1e-5), "saved log-probabilities sum to 1")
    kl = (np.exp(P) * (P - Q)).sum(1)
    top1 = 100.0 * np.mean(P.argmax(1) == Q.argmax(1))
    ks = np.sort(kl)
    check(rel(s["mean"], kl.mean()) < 1e-4, f"mean KL {s['mean']} vs numpy {kl.mean():.6f}")
    for name, q in [("median", 0.5), ("p90", 0.9), ("p99", 0.99)]:
        v = np.quantile(ks, q)
        check(abs(s[name] - v) < 1e-5 + 1e-4 * v, f"{name} {s[name]} vs numpy {v:.6f}")
    check(abs(s["max"] - ks[-1]) < 1e-5 + 1e-4 * ks[-1], f"max {s['max']} vs numpy {ks[-1]:.6f}")
    check(abs(s["top1"] - top1) < 1e-3, f"top-1 agreement {s['top1']} vs numpy {top1:.4f}")
    check(kl.mean() > 1e-4, "the Q4_0 copy differs (KL > 0)")
    # A top-16 file holds the 16 largest of the full one, most likely first.
    f16 = os.path.join(WORK, "top16.kl")
    run("-m", TINY, "--tokens", ids, "-c", "64", "-t", "1", "--kl-save", f16, "--kl-top-k", "16")
    _, k16, ti, tl = read_kl(f16)
    order = np.argsort(-P, axis=1, kind="stable")[:, :16]
    check(k16 == 16 and np.array_equal(ti, order) and np.array_equal(tl, np.take_along_axis(P, order, 1)),
          "top-16 ids and log-probabilities are the full file's 16 largest, in order")


def default():
    models = sys.argv[5]
    ref_path = os.path.join(DATA, "ppl", "default.json")
    mdir = os.path.join(models, "default")
    ref = json.load(open(ref_path))
    if not os.path.exists(os.path.join(mdir, "model.safetensors")):
        sys.exit(f"{mdir}/model.safetensors is missing: the trained default model is committed with the repository")
    text = os.path.join(DATA, "ppl", "heldout.txt")
    for r in ref["refs"]:
        out = run("-m", mdir, "-f", text, "-c", str(r["n_ctx"]), "-t", "2")
        ppl, pm, count, nll = final(out.stdout)
        m = re.search(r"perplexity: (\d+) tokens", out.stderr)
        check(m and int(m.group(1)) == ref["n_tokens"], f"the text is {m and m.group(1)} tokens "
              f"(HF tokenizers: {ref['n_tokens']})")
        check(count == r["count"], f"-c {r['n_ctx']}: {count} tokens scored (transformers {r['count']})")
        check(rel(ppl, r["ppl"]) < 1e-3, f"-c {r['n_ctx']}: PPL {ppl} vs transformers float64 {r['ppl']:.4f} "
              f"(rel {rel(ppl, r['ppl']):.2e} < 1e-3)")


{"golden": golden, "numpy": with_numpy, "default": default}[MODE]()
if failures:
    print(f"{len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
