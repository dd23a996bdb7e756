"""A Llama/Mistral tokenizer.json as GGUF tokenizer metadata (tokenizer.ggml.*).

    from gguf_vocab import write_llama_vocab
    write_llama_vocab(writer, "path/to/tokenizer.json")   # writer: gguf.GGUFWriter

What llama.cpp's convert_hf_to_gguf.py writes for a SentencePiece-style BPE vocabulary that
comes only as tokenizer.json (``_set_vocab_llama_hf``, gguf-py's ``LlamaHfVocab`` and
``SpecialVocab``), without needing transformers:

* ``tokenizer.ggml.model = "llama"``, ``pre = "default"``;
* ``tokens``: every id's string, in id order (added tokens past the base vocabulary after it);
* ``token_type``: BYTE for ``<0xXX>``, UNKNOWN for the model's unk_token, CONTROL for the other
  added tokens with ``"special": true``, USER_DEFINED for added tokens that are not special,
  NORMAL otherwise (LlamaHfVocab asks transformers which tokens are special, and without a
  tokenizer_config.json it would call ``<s>`` NORMAL; the SentencePiece path of the converter
  types them as here);
* ``bos/eos/unknown/padding_token_id``, ``add_bos_token``, ``add_eos_token`` and
  ``tokenizer.chat_template`` from tokenizer_config.json beside tokenizer.json when present,
  else the defaults of this family: ``<s>``, ``</s>``, the model's unk_token, add_bos as the
  post-processor's template says (true for Mistral), add_eos false.

Two deliberate differences, so that the file tokenizes exactly like tokenizer.json:

* ``scores``.  LlamaHfVocab writes -1000.0 for every token.  llama.cpp tokenizes a "llama"
  vocabulary by merging, again and again, the adjacent pair whose concatenation is the
  vocabulary token of highest score (leftmost on ties), so equal scores lose the merge order
  and such a file tokenizes differently from tokenizer.json (in llama.cpp too).  We write what
  a SentencePiece model would hold: a token made by merges scores -(rank of the first merge
  that makes it), so "highest score" is "earliest merge"; every other token scores 0.
* ``merges``: the BPE merges as "left right" strings (what ``SpecialVocab(load_merges=True)``
  adds), so a reader can also merge by rank exactly as Hugging Face tokenizers does.
"""

import json
import os
import re

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

_BYTE_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _merge_pair(m):
    if isinstance(m, list):
        return m[0], m[1]
    left, sep, right = m.partition(" ")
    if not sep or " " in right:
        raise ValueError(f"merge {m!r} is not 'left right'")
    return left, right


def _template_ends(tj):
    """(starts with a special token, ends with another) for the post-processor's 'single'."""
    pp = tj.get("post_processor") or {}
    single = (pp.get("single") or []) if pp.get("type") == "TemplateProcessing" else []
    first = single[0].get("SpecialToken") if single else None
    last = single[-1].get("SpecialToken") if len(single) > 1 else None
    return (first["id"] if first else None), (last["id"] if last else None)


def _config_token(cfg, key):
    v = cfg.get(key)
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _apply_tokenizer_config(out, ids, tokenizer_dir):
    """What tokenizer_config.json beside tokenizer.json says, where it exists, over the
    defaults in out: the special token ids, add_bos/add_eos and the chat template."""
    cfg_path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    if not os.path.isfile(cfg_path):
        return
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unk", "unk_token"), ("pad", "pad_token")):
        text = _config_token(cfg, name)
        if text is not None and text in ids:
            out[key] = ids[text]
    for key in ("add_bos", "add_eos"):
        if isinstance(cfg.get(key + "_token"), bool):
            out[key] = cfg[key + "_token"]
    if isinstance(cfg.get("chat_template"), str):
        out["chat_template"] = cfg["chat_template"]


def llama_vocab(tokenizer_json_path):
    """The tokenizer.ggml.* values for tokenizer.json, as a dict (see the module's doc)."""
    with open(tokenizer_json_path, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ValueError(f"{tokenizer_json_path}: not a SentencePiece-style BPE tokenizer with byte_fallback "
                         "(a 'llama' GGUF vocabulary)")
    vocab = model["vocab"]
    added = tj.get("added_tokens") or []
    n = max(list(vocab.values()) + [a["id"] for a in added]) + 1
    tokens = [None] * n
    for text, i in vocab.items():
        tokens[i] = text
    for a in added:
        if tokens[a["id"]] not in (None, a["content"]):
            raise ValueError(f"{tokenizer_json_path}: added token {a['content']!r} has id {a['id']}, "
                             f"which the vocabulary gives to {tokens[a['id']]!r}")
        tokens[a["id"]] = a["content"]

    unk = model.get("unk_token")
    types = []
    for i, text in enumerate(tokens):
        if text is None:  # a gap in the ids (the converter pads with [PADn])
            types.append(TOKEN_UNUSED)
        elif _BYTE_RE.fullmatch(text):
            types.append(TOKEN_BYTE)
        elif text == unk:
            types.append(TOKEN_UNKNOWN)
        else:
            types.append(TOKEN_NORMAL)
    for a in added:
        if a["content"] != unk:
            types[a["id"]] = TOKEN_CONTROL if a.get("special") else TOKEN_USER_DEFINED
    pad = 0
    for i, text in enumerate(tokens):
        if text is None:
            pad += 1
            tokens[i] = f"[PAD{pad}]"

    merges, first_rank = [], {}
    for rank, m in enumerate(model.get("merges") or []):
        left, right = _merge_pair(m)
        if " " in left or " " in right:
            raise ValueError(f"{tokenizer_json_path}: merge {rank} holds a space, which a 'llama' "
                             "vocabulary cannot carry in tokenizer.ggml.merges")
        merges.append(f"{left} {right}")
        first_rank.setdefault(left + right, rank)
    scores = [-float(first_rank[t]) if types[i] == TOKEN_NORMAL and t in first_rank else 0.0
              for i, t in enumerate(tokens)]

    ids = {t: i for i, t in enumerate(tokens)}
    bos, eos = _template_ends(tj)
    out = {
        "tokens": tokens, "scores": scores, "types": types, "merges": merges,
        "bos": ids.get(bos or "<s>"), "eos": ids.get("</s>"), "unk": ids.get(unk) if unk else None,
        "pad": None, "add_bos": bos is not None, "add_eos": eos is not None, "chat_template": None,
    }
    _apply_tokenizer_config(out, ids, os.path.dirname(os.path.abspath(tokenizer_json_path)))
    return out


def write_llama_vocab(writer, tokenizer_json_path, merges=True, scores=True):
    """Add tokenizer.ggml.* for tokenizer.json to a gguf.GGUFWriter.

    merges=False leaves tokenizer.ggml.merges out; scores=False writes -1000.0 for every token
    as llama.cpp's converter does (the two together: exactly what llama.cpp writes)."""
    v = llama_vocab(tokenizer_json_path)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(v["tokens"])
    writer.add_token_scores(v["scores"] if scores else [-1000.0] * len(v["tokens"]))
    writer.add_token_types(v["types"])
    if merges and v["merges"]:
        writer.add_token_merges(v["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if v[key] is not None:
            add(v[key])
    writer.add_add_bos_token(v["add_bos"])
    writer.add_add_eos_token(v["add_eos"])
    if v["chat_template"]:
        writer.add_chat_template(v["chat_template"])
    return v


# ------------------------------------------------------------------------------------------------
# Byte-level BPE ("gpt2") vocabularies
# ------------------------------------------------------------------------------------------------

# llama.cpp's name (tokenizer.ggml.pre) for each pre-tokenizer moecl knows, by its tokenizer.json
# pre_tokenizer and normalizer (llama.cpp's converter finds it by hashing a test encoding).
_QWEN2_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _pre_name(tj):
    pre = tj.get("pre_tokenizer") or {}
    nfc = (tj.get("normalizer") or {}).get("type") == "NFC"
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "olmo" if nfc else "gpt-2"
    steps = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and steps[0]["pattern"].get("Regex") == _QWEN2_RE and steps[1].get("type") == "ByteLevel" and nfc):
        return "qwen2"
    raise ValueError("a pre-tokenizer this script does not name")


def _looks_special(t):
    # convert_hf_to_gguf.py's does_token_look_special
    seems_special = t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems_special = seems_special or (t.startswith("<|") and t.endswith("|>"))
    seems_special = seems_special or (t.startswith("<｜") and t.endswith("｜>"))
    seems_special = seems_special or (t.startswith("<unused") and t.endswith(">"))
    return seems_special


def gpt2_vocab(tokenizer_dir):
    """The tokenizer.ggml.* values of a byte-level BPE tokenizer.json (and its tokenizer_config.json),
    as convert_hf_to_gguf.py's get_vocab_base + SpecialVocab(load_merges=True) write them:
    model "gpt2"; tokens in id order (gaps: "[PAD<id>]", UNUSED); CONTROL for added tokens that are
    special or look special (<|...|>), USER_DEFINED for the other added tokens (as their text),
    NORMAL otherwise; the merges as "left right"; no scores."""
    with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    added = tj.get("added_tokens") or []
    n = max(list(model["vocab"].values()) + [a["id"] for a in added]) + 1
    tokens, types = [None] * n, [TOKEN_NORMAL] * n
    for text, i in model["vocab"].items():
        tokens[i] = text
    for a in added:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = TOKEN_CONTROL if a.get("special") or _looks_special(a["content"]) else TOKEN_USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = TOKEN_UNUSED
    merges = []
    for m in model.get("merges") or []:
        left, right = _merge_pair(m)
        merges.append(f"{left} {right}")
    ids = {t: i for i, t in enumerate(tokens)}
    out = {"tokens": tokens, "types": types, "merges": merges, "pre": _pre_name(tj), "bos": None, "eos": None,
           "unk": None, "pad": None, "add_bos": None, "add_eos": None, "chat_template": None}
    _apply_tokenizer_config(out, ids, tokenizer_dir)
    return out


def write_gpt2_vocab(writer, tokenizer_dir):
    """Add tokenizer.ggml.* for a byte-level BPE tokenizer directory to a gguf.GGUFWriter."""
    v = gpt2_vocab(tokenizer_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(v["pre"])
    writer.add_token_list(v["tokens"])
    writer.add_token_types(v["types"])
    writer.add_token_merges(v["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if v[key] is not None:
            add(v[key])
    for key, add in (("add_bos", writer.add_add_bos_token), ("add_eos", writer.add_add_eos_token)):
        if v[key] is not None:
            add(v[key])
    if v["chat_template"]:
        writer.add_chat_template(v["chat_template"])
    return v
