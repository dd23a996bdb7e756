#!/usr/bin/env python3
"""GGUF files written by the reference writer (PyPI gguf's GGUFWriter), for
tests/test_gguf.c, and a checker that reads a file with the reference reader.

    tools/make_gguf_refs.py [OUTDIR]          # default tests/data/gguf-format
    tools/make_gguf_refs.py --check FILE.gguf FILE.expected

The first form writes, for each alignment in ALIGNMENTS, ref-aN.gguf and
ref-aN.expected; ref-bigendian.gguf (a valid big-endian file moecl refuses);
and seeds for the fuzzer (tests/fuzz/corpus/fuzz_gguf/). The .expected file
is computed from the values given to the writer (not from reading the file),
in the canonical text form below; the C test prints the same form from what
mc_gguf read and compares. As a self-check, the form is also computed from
GGUFReader's view of the file and must agree.

The second form (used by test_gguf's --python mode) computes the canonical
form of FILE.gguf through GGUFReader and compares it with FILE.expected.

Canonical form, one item per line:
    version V
    alignment A
    kv KEY VALUE          (sorted by key bytes)
    tensor NAME TYPE ne=N0,N1,.. offset=O nbytes=B fnv1a64=HEX   (file order;
                          offset relative to the data section)
VALUE: TYPE SCALAR, or string "HEX", or array ELEMTYPE N [ITEM ITEM ...]
where ITEM is a bare SCALAR, "HEX" or a nested "array ..."; integers are
decimal, bool 0/1, floats the hex of their IEEE bits (float32 0x%08x,
float64 0x%016x), strings the hex of their bytes.
"""
import os
import struct
import sys

import numpy as np

VT = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array",
      "uint64", "int64", "float64"]
ALIGNMENTS = [32, 64, 8]


def fnv1a64_fast(b):
    # numpy is far quicker than a Python loop for tensor-sized buffers
    h = np.uint64(0xcbf29ce484222325)
    p = np.uint64(0x100000001b3)
    with np.errstate(over="ignore"):
        for x in np.frombuffer(bytes(b), dtype=np.uint8):
            h = (h ^ np.uint64(x)) * p
    return int(h)


def scalar_text(vt, v):
    if vt == "float32":
        return "0x%08x" % struct.unpack("<I", struct.pack("<f", v))[0]
    if vt == "float64":
        return "0x%016x" % struct.unpack("<Q", struct.pack("<d", v))[0]
    if vt == "bool":
        return "1" if v else "0"
    return str(int(v))


def item_text(vt, v):
    """v for a value of type vt: a Python value; arrays are (elemtype, list)."""
    if vt == "string":
        return '"%s"' % (v if isinstance(v, bytes) else v.encode()).hex()
    if vt == "array":
        et, items = v
        return "array %s %d [%s]" % (et, len(items), " ".join(item_text(et, x) for x in items))
    return scalar_text(vt, v)


def value_text(vt, v):
    if vt == "array":
        return item_text(vt, v)
    return "%s %s" % (vt, item_text(vt, v))


# ---- the reference file's contents -------------------------------------------

def ref_kvs():
    """(key, type, value) for every value type; arrays as (elemtype, items)."""
    return [
        ("test.u8", "uint8", 200), ("test.i8", "int8", -100), ("test.u16", "uint16", 60000),
        ("test.i16", "int16", -30000), ("test.u32", "uint32", 4000000000), ("test.i32", "int32", -2000000000),
        ("test.f32", "float32", 3.1415927410125732), ("test.bool_t", "bool", True), ("test.bool_f", "bool", False),
        ("test.str", "string", "hello, GGUF"), ("test.str_empty", "string", ""),
        ("test.str_utf8", "string", "caf\u00e9 \u6f22\u5b57 \U0001f600"),
        ("test.u64", "uint64", 18000000000000000000), ("test.i64", "int64", -9000000000000000000),
        ("test.f64", "float64", -2.718281828459045),
        ("test.arr_u8", "array", ("uint8", [0, 1, 255])), ("test.arr_i8", "array", ("int8", [-128, 0, 127])),
        ("test.arr_u16", "array", ("uint16", [0, 65535])), ("test.arr_i16", "array", ("int16", [-32768, 32767])),
        ("test.arr_u32", "array", ("uint32", [1, 2, 4294967295])),
        ("test.arr_i32", "array", ("int32", [-1, 0, 1, 2147483647])),
        ("test.arr_f32", "array", ("float32", [0.5, -1.25, 1e-3])),
        ("test.arr_bool", "array", ("bool", [True, False, True])),
        ("test.arr_str", "array", ("string", ["a", "", "b\u00e9", "longer string"])),
        ("test.arr_u64", "array", ("uint64", [0, 18446744073709551615])),
        ("test.arr_i64", "array", ("int64", [-9223372036854775808, 9223372036854775807])),
        ("test.arr_f64", "array", ("float64", [1.0 / 3.0, -0.0])),
        ("test.nested_i32", "array", ("array", [("int32", [1, 2]), ("int32", [3, 4, 5])])),
        ("test.nested_str", "array", ("array", [("string", ["x", "yy"]), ("string", ["zzz"])])),
        ("test.nested2", "array", ("array", [("array", [("int32", [1]), ("int32", [2, 3])]),
                                             ("array", [("float32", [0.25])])])),
    ]


def to_py(vt, v):
    """The Python value GGUFWriter packs (nested arrays as lists, which it types by their values)."""
    if vt == "array":
        et, items = v
        return [to_py(et, x) for x in items]
    return v


def ref_tensors(rng):
    """(name, ggml type name, ne, raw bytes, numpy array and raw_dtype for the writer)."""
    from gguf import GGMLQuantizationType as Q, quants
    out = []

    def add(name, qname, ne, arr, raw_dtype=None):
        out.append((name, qname, list(ne), arr.tobytes(), arr, raw_dtype))

    add("t.f32_1d", "f32", [7], rng.standard_normal(7).astype(np.float32))
    add("t.f32_3d", "f32", [4, 3, 2], rng.standard_normal((2, 3, 4)).astype(np.float32))
    add("t.f16_4d", "f16", [2, 3, 2, 2], rng.standard_normal((2, 2, 3, 2)).astype(np.float16))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    add("t.bf16", "bf16", [64, 3], quants.quantize(x, Q.BF16), Q.BF16)
    add("t.q8_0", "q8_0", [64, 3], quants.quantize(x, Q.Q8_0), Q.Q8_0)
    add("t.q4_0", "q4_0", [64, 3], quants.quantize(x, Q.Q4_0), Q.Q4_0)
    # K-quants and types moecl does not compute: random blocks (the reader does not decode them)
    for qname, q, rows in [("q4_K", Q.Q4_K, 2), ("q5_K", Q.Q5_K, 1), ("q6_K", Q.Q6_K, 2), ("q5_1", Q.Q5_1, 1),
                           ("iq4_xs", Q.IQ4_XS, 1)]:
        from gguf import GGML_QUANT_SIZES
        blk, nb = GGML_QUANT_SIZES[q]
        raw = rng.integers(0, 256, size=(rows, nb), dtype=np.uint8)
        add("t." + qname, qname, [blk, rows], raw, q)
    add("t.i32", "i32", [5], np.arange(-2, 3, dtype=np.int32))
    add("t.f64", "f64", [3], np.array([1.5, -2.0, 1e300]))
    return out


def expected_text(alignment, kvs, tensors):
    lines = ["version 3", "alignment %d" % alignment]
    allkv = list(kvs) + [("general.architecture", "string", "test")]
    if alignment != 32:
        allkv.append(("general.alignment", "uint32", alignment))
    for k, vt, v in sorted(allkv, key=lambda e: e[0].encode()):
        lines.append("kv %s %s" % (k, value_text(vt, v)))
    off = 0
    for name, qname, ne, raw, _, _ in tensors:
        lines.append("tensor %s %s ne=%s offset=%d nbytes=%d fnv1a64=%016x" %
                     (name, qname, ",".join(map(str, ne)), off, len(raw), fnv1a64_fast(raw)))
        off += (len(raw) + alignment - 1) // alignment * alignment
    return "\n".join(lines) + "\n"


def write_ref(path, alignment, kvs, tensors, big_endian=False):
    import gguf
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    w = gguf.GGUFWriter(path, "test", endianess=endian)
    if alignment != 32:
        w.add_custom_alignment(alignment)
    for k, vt, v in kvs:
        if vt == "array":
            et, _ = v
            w.add_key_value(k, to_py(vt, v), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType[et.upper()])
        else:
            w.add_key_value(k, v, gguf.GGUFValueType[vt.upper()])
    for name, _, _, _, arr, raw_dtype in tensors:
        w.add_tensor(name, arr, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- the canonical form through GGUFReader -------------------------------------

def reader_text(path):
    import gguf
    r = gguf.GGUFReader(path)

    def walk(parts, i, vt):
        """(text of one value of type vt starting at parts[i], next i); bare items."""
        if vt == "string":
            return '"%s"' % bytes(parts[i + 1].tobytes()).hex(), i + 2
        if vt == "array":
            et = VT[int(parts[i][0])]
            n = int(parts[i + 1][0])
            i += 2
            items = []
            for _ in range(n):
                t, i = walk(parts, i, et)
                items.append(t)
            return "array %s %d [%s]" % (et, n, " ".join(items)), i
        return scalar_text(vt, parts[i].tolist()[0]), i + 1

    version = None
    lines = []
    kvs = []
    for name, f in r.fields.items():
        if name == "GGUF.version":
            version = int(f.parts[-1][0])
            continue
        if name.startswith("GGUF."):
            continue
        vt = VT[int(f.types[0])]
        text, i = walk(f.parts, 3, vt)
        assert i == len(f.parts), name
        if vt != "array":
            text = vt + " " + text
        kvs.append((name, text))
    lines.append("version %d" % version)
    lines.append("alignment %d" % r.alignment)
    for k, text in sorted(kvs, key=lambda e: e[0].encode()):
        lines.append("kv %s %s" % (k, text))
    for t in r.tensors:
        raw = bytes(np.ascontiguousarray(t.data).view(np.uint8).tobytes())
        lines.append("tensor %s %s ne=%s offset=%d nbytes=%d fnv1a64=%016x" %
                     (t.name, t.tensor_type.name.lower().replace("_k", "_K"), ",".join(str(int(d)) for d in t.shape),
                      t.data_offset - r.data_offset, t.n_bytes, fnv1a64_fast(raw)))
    return "\n".join(lines) + "\n"


def check(path, expected_path):
    got = reader_text(path)
    want = open(expected_path).read()
    if got != want:
        import difflib
        sys.stderr.write("".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                      expected_path, "GGUFReader(%s)" % path)))
        return 1
    print("%s: GGUFReader agrees with %s" % (path, expected_path))
    return 0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2], sys.argv[3]))
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "data", "gguf-format")
    os.makedirs(out, exist_ok=True)
    kvs = ref_kvs()
    for a in ALIGNMENTS:
        rng = np.random.default_rng(1234 + a)
        tensors = ref_tensors(rng)
        path = os.path.join(out, "ref-a%d.gguf" % a)
        write_ref(path, a, kvs, tensors)
        want = expected_text(a, kvs, tensors)
        got = reader_text(path)
        assert got == want, "GGUFReader disagrees with the values written to %s" % path
        with open(os.path.join(out, "ref-a%d.expected" % a), "w") as f:
            f.write(want)
        print("wrote", path)
    rng = np.random.default_rng(7)
    write_ref(os.path.join(out, "ref-bigendian.gguf"), 32, kvs[:3], ref_tensors(rng)[:2], big_endian=True)
    # Small seeds for the fuzzer: the smallest interesting files.
    corpus = os.path.join(root, "tests", "fuzz", "corpus", "fuzz_gguf")
    os.makedirs(corpus, exist_ok=True)
    rng = np.random.default_rng(9)
    small = [("s.f32", "f32", [4], b"", np.arange(4, dtype=np.float32), None)]
    write_ref(os.path.join(corpus, "seed-kv.gguf"), 32, kvs, [])
    write_ref(os.path.join(corpus, "seed-tensors.gguf"), 32, kvs[:2], ref_tensors(rng))
    write_ref(os.path.join(corpus, "seed-small-a8.gguf"), 8, kvs[-3:], small)


if __name__ == "__main__":
    main()
