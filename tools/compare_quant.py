#!/usr/bin/env python3
"""Quantization error of two GGUF files of the same model, on the same tensors.

    python3 tools/compare_quant.py REF.gguf A.gguf B.gguf

REF holds the weights unquantized (F32, e.g. `moecl quantize DIR REF.gguf f32`); A and B are
quantizations of it (e.g. `moecl quantize REF.gguf A.gguf q4_K` and llama.cpp's
`llama-quantize --pure REF.gguf B.gguf Q4_K`). For every quantized type, over the tensors that
both A and B store in that type, prints the relative RMS error RMS(deq - ref) / RMS(ref) of
each file (dequantized with PyPI gguf's gguf.quants.dequantize, a reference neither wrote).
Needs numpy and gguf (pip install gguf).
"""

import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def tensors(path):
    return {t.name: t for t in GGUFReader(path).tensors}


def values(t):
    return dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    ref, a, b = (tensors(p) for p in sys.argv[1:])
    acc = {}  # type name -> [sum ref^2, sum err_a^2, sum err_b^2, tensors]
    for name, ta in a.items():
        tb, tr = b.get(name), ref.get(name)
        if tb is None or tr is None or ta.tensor_type != tb.tensor_type or ta.tensor_type.name in ("F32",):
            continue
        r = values(tr)
        s = acc.setdefault(ta.tensor_type.name, [0.0, 0.0, 0.0, 0])
        s[0] += float(np.dot(r, r))
        s[1] += float(np.sum((values(ta) - r) ** 2))
        s[2] += float(np.sum((values(tb) - r) ** 2))
        s[3] += 1
    print(f"{'type':6} {'tensors':>7} {'A rel. RMS':>11} {'B rel. RMS':>11} {'A / B':>7}")
    for k, (r2, ea, eb, n) in sorted(acc.items()):
        ra, rb = (ea / r2) ** 0.5, (eb / r2) ** 0.5
        print(f"{k:6} {n:7d} {ra:11.5f} {rb:11.5f} {ra / rb if rb else float('nan'):7.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
