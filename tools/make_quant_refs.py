#!/usr/bin/env python3
"""Reference data for tests/test_quant.c, made by PyPI's gguf.quants.

    python3 tools/make_quant_refs.py [--out tests/data/quant]

For each quantized type (q8_0 q4_0 q4_k q5_k q6_k) writes

  <type>.deq.bin    random blocks and their float32 dequantization by
                    gguf.quants.dequantize
  <type>.quant.bin  (q8_0, q4_0 only) random float32 rows and their
                    quantization by gguf.quants.quantize

File layout (little-endian):
  "MCQ1", u32 n_blocks, u32 block_bytes, u32 block_elems,
  deq:   blocks[n_blocks * block_bytes], f32[n_blocks * block_elems]
  quant: f32[n_blocks * block_elems], blocks[n_blocks * block_bytes]

The blocks are random bytes, except for the f16 scale fields (d, and dmin for
the K-quants), which take every extreme value in turn: +0, -0, the smallest
and largest subnormal, the largest finite (+-65504), 1.0, and random finite
values of both signs. Infinite and NaN scales are not generated: random
scale bytes that decode to inf/NaN are redrawn. (Their products are inf or
NaN, whose NaN sign and payload numpy does not promise to keep.)

Deterministic (numpy PCG64, fixed seed): running it twice gives identical
files. Needs numpy and gguf; the C test suite does not.
"""
import argparse
import os
import struct

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import quants

# name: (type, n_blocks, [byte offsets of f16 scale fields])
TYPES = {
    "q8_0": (QT.Q8_0, 96, [0]),
    "q4_0": (QT.Q4_0, 96, [0]),
    "q4_k": (QT.Q4_K, 20, [0, 2]),
    "q5_k": (QT.Q5_K, 20, [0, 2]),
    "q6_k": (QT.Q6_K, 20, [208]),
}
EXTREME = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x83FF, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00]


def finite_f16(rng, n):
    h = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    bad = (h & 0x7C00) == 0x7C00
    h[bad] &= 0xBFFF  # clear the top exponent bit: finite
    return h


def random_blocks(rng, qtype, n_blocks, scale_offsets):
    elems, nbytes = quants.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint32).astype(np.uint8)
    for off in scale_offsets:
        h = finite_f16(rng, n_blocks)
        # extreme values in the first blocks, each field in turn (the other
        # field of a K-quant gets a different extreme, so pairs vary)
        for i, e in enumerate(EXTREME):
            h[i] = EXTREME[(i + 3 * off) % len(EXTREME)] if off else e
        b[:, off:off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return b, elems, nbytes


def random_rows(rng, n_blocks, elems):
    # Gaussian blocks of varied magnitude, plus special blocks
    scale = 10.0 ** rng.uniform(-3, 3, size=(n_blocks, 1))
    x = (rng.standard_normal((n_blocks, elems)) * scale).astype(np.float32)
    x[0] = 0.0                                   # all zero
    x[1] = -0.0
    x[1, 5] = 0.0
    x[2] = np.arange(elems, dtype=np.float32) - elems // 2  # ties at x * id + 0.5
    x[3] = np.float32(1e-6) * rng.standard_normal(elems)    # subnormal f16 scale
    x[4] = np.float32(1e7) * rng.standard_normal(elems)     # scale overflows f16
    x[5] = np.float32(3.0)                       # constant
    x[6] = -np.abs(x[6])                         # all negative
    x[7, :] = x[7, 0]
    x[7, 3] = -x[7, 0]                           # max magnitude twice, both signs
    return x


def write(path, n_blocks, nbytes, elems, first, second):
    with open(path, "wb") as f:
        f.write(b"MCQ1" + struct.pack("<III", n_blocks, nbytes, elems))
        f.write(first.tobytes())
        f.write(second.tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "quant"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(20240501))
    for name, (qtype, n_blocks, offs) in TYPES.items():
        blocks, elems, nbytes = random_blocks(rng, qtype, n_blocks, offs)
        deq = quants.dequantize(blocks, qtype).astype(np.float32).reshape(-1)
        assert np.isfinite(deq).all()
        write(os.path.join(args.out, name + ".deq.bin"), n_blocks, nbytes, elems, blocks, deq)
        if qtype in (QT.Q8_0, QT.Q4_0):
            x = random_rows(rng, n_blocks, elems)
            with np.errstate(over="ignore"):  # f16 scale overflow, on purpose
                q = quants.quantize(x, qtype)
            assert q.shape == (n_blocks, nbytes)
            write(os.path.join(args.out, name + ".quant.bin"), n_blocks, nbytes, elems, x, q)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("Made by `python3 tools/make_quant_refs.py` (numpy %s, gguf.quants from PyPI gguf %s); "
                "format and contents: see the script's docstring. Read by tests/test_quant.c.\n"
                % (np.__version__, gguf_version()))


def gguf_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
