#!/usr/bin/env python3
"""Write a vocabulary-only GGUF (like llama.cpp's models/ggml-vocab-*.gguf): general.architecture
"llama", general.name, llama.vocab_size and tokenizer.ggml.* from a tokenizer.json (see
tools/gguf_vocab.py for what is written and where it differs from llama.cpp's converter).

    pip install numpy gguf
    python3 tools/make_vocab_gguf.py                       # models/tokenizer.json ->
                                                           # tests/data/tokenizer-gguf/mistral-v1.gguf
    python3 tools/make_vocab_gguf.py IN.json OUT.gguf [--no-merges] [--llama-cpp-scores]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_vocab import write_llama_vocab  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer_json", nargs="?", default=os.path.join(ROOT, "models", "tokenizer.json"))
    ap.add_argument("out", nargs="?", default=os.path.join(ROOT, "tests", "data", "tokenizer-gguf", "mistral-v1.gguf"))
    ap.add_argument("--no-merges", action="store_true", help="leave tokenizer.ggml.merges out")
    ap.add_argument("--llama-cpp-scores", action="store_true", help="every score -1000.0, as llama.cpp writes them")
    ap.add_argument("--name", default="mistral-v1-vocab")
    a = ap.parse_args()
    import gguf
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(a.name)
    v = write_llama_vocab(w, a.tokenizer_json, merges=not a.no_merges, scores=not a.llama_cpp_scores)
    w.add_vocab_size(len(v["tokens"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{a.out}: {len(v['tokens'])} tokens, {len(v['merges']) if not a.no_merges else 0} merges, "
          f"{os.path.getsize(a.out)} bytes")


if __name__ == "__main__":
    main()
