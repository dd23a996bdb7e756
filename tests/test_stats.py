#!/usr/bin/env python3
"""`moecl stats` against its own per-token routes, recomputed here (Python standard library).

    test_stats.py MOECL_EXE TOKENIZER_JSON WORK_DIR [--pictures]
    test_stats.py MOECL_EXE --golden MODEL_DIR WORK_DIR

--golden: a golden model (no tokenizer) routed with --tokens from its routing.json
(tools/make_routing_refs.py, transformers in float64): the report's and the profile's
counts must be transformers' counts, and dense layers must be marked dense with a
profile row of zeros.

Writes a random 3-layer, 8-expert top-2 model with the Mistral tokenizer, routes a text
with digits, punctuation and other scripts, and checks the JSON report (the interface):
the counts (the library's routing counters) equal the counts of the routes (the routing
callback); the normalised entropy, Gini coefficient, max/mean, alerts, co-activation,
token-class counts and top tokens equal what this script computes from the same counts
and routes (by other formulas: Gini from the mean absolute difference); the expert
profile has the exact format the placement planner reads and freq = counts / tokens.
With --pictures: the HTML report embeds PNG and SVG pictures (base64) and --pictures
writes them; each PNG is decoded here (zlib, PNG filters) and must have the stated size
and not be blank (pixel variance, several colours); exit 77 when moecl was built
without cairo. Also the usage errors.
"""
import base64
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

FAILURES = []

TEXT = ("The quick brown fox jumps over the lazy dog. In 1969, 3 astronauts flew 384,400 km to the Moon!\n"
        "Prices rose 12.5% (from $40 to $45); see section 4.2 -- or call 555-0199.\n"
        "Le café était très bon. Das Wetter ist schön. Привет, мир! 你好，世界。こんにちは。\n"
        "def f(x):\n    return x * 2 + 1  # a comment\n\n" * 3)


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, file=sys.stderr)


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


# ---- references -----------------------------------------------------------------------------

def entropy_norm(c):
    s = sum(c)
    return -sum(x / s * math.log(x / s) for x in c if x) / math.log(len(c))


def gini_mad(c):
    """Mean absolute difference over twice the mean: sum_ij |xi - xj| / (2 n^2 mean)."""
    n, mean = len(c), sum(c) / len(c)
    return sum(abs(a - b) for a in c for b in c) / (2 * n * n * mean)


def close(a, b, tol=1e-9):
    return abs(a - b) <= tol * max(1.0, abs(b))


def check_report(r, K, E, L):
    N = r["tokens"]
    check(r["format"] == "moecl-stats" and r["n_expert"] == E and r["n_expert_used"] == K and r["n_layer"] == L,
          "report header")
    check(len(r["token_ids"]) == N and len(r["routes"]) == N, "one route row per token")
    for layer in r["layers"]:
        l = layer["layer"]
        check(not layer["dense"], "layer %d is not dense in a Mixtral model" % l)
        c = layer["counts"]
        routes = [row[l] for row in r["routes"]]
        check(all(len(x) == K and len(set(x)) == K and all(0 <= e < E for e in x) for x in routes),
              "layer %d: every token has %d distinct experts" % (l, K))
        rc = [0] * E
        for x in routes:
            for e in x:
                rc[e] += 1
        check(c == rc, "layer %d: counters %s = counts of the routes %s" % (l, c, rc))
        check(sum(c) == N * K, "layer %d: %d routings for %d tokens" % (l, sum(c), N))
        check(close(layer["entropy"], entropy_norm(c)), "layer %d: entropy %.12g vs %.12g"
              % (l, layer["entropy"], entropy_norm(c)))
        check(close(layer["gini"], gini_mad(c)), "layer %d: gini %.12g vs %.12g" % (l, layer["gini"], gini_mad(c)))
        mean = N * K / E
        check(close(layer["max_mean"], max(c) / mean), "layer %d: max/mean" % l)
        check(layer["alerts"] == [e for e in range(E) if c[e] > 3 * mean], "layer %d: alerts" % l)
        co = [[0] * E for _ in range(E)]
        for x in routes:
            for i in x:
                co[i][i] += 1
                for j in x:
                    if j != i:
                        co[i][j] += 1
        check(layer["coactivation"] == co, "layer %d: co-activation matrix" % l)
        check(all(co[i][j] == co[j][i] for i in range(E) for j in range(E)), "layer %d: symmetric" % l)
        cls = layer["class_counts"]
        check(len(cls) == len(r["classes"]) and [sum(col) for col in zip(*cls)] == c,
              "layer %d: token classes partition each expert's tokens" % l)
        # Top tokens: the counts of (token id, expert) pairs, most first.
        pair = {}
        for tid, x in zip(r["token_ids"], routes):
            for e in x:
                pair[(e, tid)] = pair.get((e, tid), 0) + 1
        for e, top in enumerate(layer["top_tokens"]):
            mine = sorted(((n, -t) for (ee, t), n in pair.items() if ee == e), reverse=True)
            want = [(-t, n) for n, t in mine[:len(top)]]
            check([(t["id"], t["count"]) for t in top] == want and len(top) == min(8, len(mine)),
                  "layer %d expert %d: top tokens %s, want %s" % (l, e, [(t["id"], t["count"]) for t in top], want))
    cs = r["consistency"]
    check(cs["tokens"] > 10 and 0 <= cs["batch"] <= 1 and 0 <= cs["after"] <= 1 and len(cs["batch_layers"]) == L,
          "consistency fields")
    # Letters, digits, punctuation, whitespace and other scripts all occur in TEXT.
    first = r["layers"][0]["class_counts"]
    for i, name in enumerate(r["classes"][:5]):
        check(sum(first[i]) > 0, "token class %s occurs" % name)


def check_profile(p, r, K, E, L, model_name):
    check(list(p.keys()) == ["format", "version", "model", "n_layer", "n_expert", "n_expert_used", "tokens", "freq"],
          "profile keys in order: %s" % list(p.keys()))
    check(p["format"] == "moecl-expert-profile" and p["version"] == 1 and p["model"] == model_name,
          "profile format, version, model")
    check(p["n_layer"] == L and p["n_expert"] == E and p["n_expert_used"] == K and p["tokens"] == r["tokens"],
          "profile shape")
    check(len(p["freq"]) == L and all(len(row) == E for row in p["freq"]), "profile freq is L x E")
    for l, row in enumerate(p["freq"]):
        check(abs(sum(row) - K) < 1e-6, "profile layer %d sums to K: %g" % (l, sum(row)))
        c = r["layers"][l]["counts"]
        check(all(abs(f - n / r["tokens"]) < 1e-8 for f, n in zip(row, c)), "profile layer %d = counts / tokens" % l)


# ---- pictures -------------------------------------------------------------------------------

def png_pixels(data):
    """(width, height, rows of RGBA bytes) of an 8-bit non-interlaced RGB/RGBA PNG."""
    check(data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature")
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            check(depth == 8 and ctype in (2, 6) and interlace == 0, "PNG is 8-bit RGB(A), not interlaced")
            bpp = 4 if ctype == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, rows, prev = zlib.decompress(idat), [], bytearray(w * bpp)
    stride = w * bpp
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def check_png(data, what, min_colours):
    w, h, bpp, rows = png_pixels(data)
    check(w >= 200 and h >= 100, "%s: %dx%d" % (what, w, h))
    lum, colours = [], set()
    for row in rows[::2]:
        for x in range(0, w * bpp, bpp * 2):
            px = row[x:x + 3]
            colours.add(px)
            lum.append(0.2126 * px[0] + 0.7152 * px[1] + 0.0722 * px[2])
    mean = sum(lum) / len(lum)
    var = sum((v - mean) ** 2 for v in lum) / len(lum)
    check(var > 100, "%s: not blank (luminance variance %.1f)" % (what, var))
    check(len(colours) >= min_colours, "%s: %d colours, at least %d expected" % (what, len(colours), min_colours))
    return w, h


def check_svg(data, what):
    text = data.decode("utf-8", "replace")
    check(text.lstrip().startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>"),
          "%s: an SVG document" % what)
    check(text.count("<path") + text.count("<rect") + text.count("<use") > 10, "%s: has shapes" % what)


def check_pictures(exe, model, work, text_file, E):
    html, pics = os.path.join(work, "report.html"), os.path.join(work, "pics")
    p = run([exe, "stats", "-m", model, "-f", text_file, "-t", "2", "--layer", "1", "--html", html,
             "--pictures", pics])
    if p.returncode == 2 and "without cairo" in p.stderr:
        print("test_stats: SKIP: moecl was built without cairo", file=sys.stderr)
        return 77
    check(p.returncode == 0, "stats --html --pictures: %s" % p.stderr[-500:])
    if p.returncode:
        return 1
    for name, colours in (("heatmap", 8), ("coactivation", 8), ("passage", E)):
        with open(os.path.join(pics, name + ".png"), "rb") as f:
            check_png(f.read(), name + ".png", colours)
        with open(os.path.join(pics, name + ".svg"), "rb") as f:
            check_svg(f.read(), name + ".svg")
    with open(html, encoding="utf-8") as f:
        page = f.read()
    check(page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>"), "HTML document")
    check("src=\"http" not in page and "href=\"http" not in page, "HTML is self-contained")
    pngs = re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    svgs = re.findall(r'data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    check(len(pngs) == 3 and len(svgs) >= 3, "HTML embeds 3 PNG and 3 SVG pictures (%d, %d)" % (len(pngs), len(svgs)))
    for i, b in enumerate(pngs):
        check_png(base64.b64decode(b), "HTML PNG %d" % i, 8)
    for i, b in enumerate(svgs[:3]):
        check_svg(base64.b64decode(b), "HTML SVG %d" % i)
    return 0


def check_golden(exe, model_dir, work):
    with open(os.path.join(model_dir, "routing.json")) as f:
        ref = json.load(f)
    L, E, K, N = ref["n_layer"], ref["n_expert"], ref["n_expert_used"], len(ref["tokens"])
    js, prof = os.path.join(work, "stats.json"), os.path.join(work, "profile.json")
    p = run([exe, "stats", "-m", model_dir, "--tokens", ",".join(map(str, ref["tokens"])), "-t", "2",
             "--json", js, "--save-profile", prof])
    check(p.returncode == 0, "stats --tokens on %s: %s" % (model_dir, p.stderr[-500:]))
    if p.returncode:
        return
    with open(js) as f:
        r = json.load(f)
    with open(prof) as f:
        pr = json.load(f)
    check(r["tokens"] == N and pr["tokens"] == N, "all %d tokens routed" % N)
    for l in range(L):
        dense = ref["layers"][l]["dense"]
        check(r["layers"][l]["dense"] == dense, "layer %d dense: %s" % (l, dense))
        if dense:
            check(pr["freq"][l] == [0] * E, "dense layer %d: profile row of zeros" % l)
            continue
        check(r["layers"][l]["counts"] == ref["counts"][l], "layer %d: counts %s, transformers %s"
              % (l, r["layers"][l]["counts"], ref["counts"][l]))
        check(all(abs(a - b) < 1e-5 for a, b in zip(r["layers"][l]["weight_sums"], ref["weight_sums"][l])),
              "layer %d: weight sums" % l)
        check(all(abs(f - c / N) < 1e-8 for f, c in zip(pr["freq"][l], ref["counts"][l])), "layer %d: profile" % l)
        check(abs(sum(pr["freq"][l]) - K) < 1e-6, "layer %d: profile row sums to K" % l)
        routes = [row[l] for row in r["routes"]]
        check(routes == ref["layers"][l]["experts"], "layer %d: routes are transformers' choices" % l)


def main():
    if len(sys.argv) == 5 and sys.argv[2] == "--golden":
        exe, model_dir, work = sys.argv[1], sys.argv[3], sys.argv[4]
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        check_golden(exe, model_dir, work)
        shutil.rmtree(work, ignore_errors=True)
        print("test_stats: %d failures" % len(FAILURES), file=sys.stderr)
        return 1 if FAILURES else 0
    if len(sys.argv) < 4:
        print("usage: test_stats.py MOECL_EXE TOKENIZER_JSON WORK_DIR [--pictures]", file=sys.stderr)
        return 1
    exe, tokenizer, work = sys.argv[1:4]
    pictures = "--pictures" in sys.argv[4:]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    model = os.path.join(work, "model")
    L, E, K = 3, 8, 2
    subprocess.run([exe, "generate", model, "--preset", "tiny", "--vocab", "32000", "--layers", str(L),
                    "--experts", str(E), "--top-k", str(K), "--seed", "11"], check=True, timeout=120,
                   stderr=subprocess.DEVNULL)
    shutil.copy(tokenizer, os.path.join(model, "tokenizer.json"))
    text_file = os.path.join(work, "text.txt")
    with open(text_file, "w", encoding="utf-8") as f:
        f.write(TEXT)

    if pictures:
        rc = check_pictures(exe, model, work, text_file, E)
    else:
        js, prof = os.path.join(work, "stats.json"), os.path.join(work, "profile.json")
        # -c 64: several chunks
        p = run([exe, "stats", "-m", model, "-f", text_file, "-t", "2", "-c", "64", "--json", js,
                 "--save-profile", prof])
        check(p.returncode == 0, "stats --json --save-profile: %s" % p.stderr[-500:])
        if p.returncode == 0:
            with open(js, encoding="utf-8") as f:
                r = json.load(f)
            with open(prof, encoding="utf-8") as f:
                check_profile(json.load(f), r, K, E, L, "model")
            check(r["tokens"] > 64 * 2, "the text spans several chunks (%d tokens)" % r["tokens"])
            check_report(r, K, E, L)
            check("entropy" in p.stdout and "consistency" in p.stdout, "a summary on stdout")
        # Usage errors: exit 2 with a message; a profile that cannot be written: exit 1.
        for args, what in (([], "no text"), (["-p", "a", "-f", text_file], "both -p and -f"),
                           (["-p", "a", "--layer", "3"], "--layer beyond the model"),
                           (["-p", "a", "--bogus"], "unknown option")):
            p = run([exe, "stats", "-m", model] + args)
            check(p.returncode == 2 and p.stderr.strip(), "%s: exit 2 with a message (%d %r)"
                  % (what, p.returncode, p.stderr[-200:]))
        p = run([exe, "stats", "-m", model, "-p", "hello", "--save-profile", os.path.join(work, "no", "dir", "p.json")])
        check(p.returncode == 1 and "p.json" in p.stderr, "unwritable profile: exit 1 naming it (%r)" % p.stderr[-200:])
        rc = 0
    shutil.rmtree(work, ignore_errors=True)
    print("test_stats: %d failures" % len(FAILURES), file=sys.stderr)
    if FAILURES:
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
