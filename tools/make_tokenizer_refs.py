#!/usr/bin/env python3
"""make_tokenizer_refs.py - the Mistral v1 tokenizer.json and the reference ids
the C tokenizer test compares against.

    pip install tokenizers sentencepiece mistral-common transformers protobuf
    python3 tools/make_tokenizer_refs.py            # writes models/tokenizer.json
                                                    # and tests/data/tokenizer/*
    python3 tools/make_tokenizer_refs.py --bench-texts DIR   # 1 MB english.txt, mixed.txt

models/tokenizer.json is converted from the SentencePiece model that PyPI's
mistral-common ships (data/tokenizer.model.v1, the Mistral 7B / Mixtral 8x7B
vocabulary, Apache-2.0) the way transformers converts Llama tokenizers in its
"legacy" form, which is what the Hugging Face hub's Mixtral repositories hold:
normalizer Prepend("▁") + Replace(" ", "▁"), BPE with byte fallback, merges
ordered by SentencePiece score, <s> added by the post-processor.
(transformers 5.x's own LlamaConverter passes the wrong argument to its
extractor, so the few steps are done here.)

tests/data/tokenizer/refs.json holds, for each corpus string (also as hex,
since a JSON reader may cut strings at U+0000), the ids HF tokenizers gives
without BOS, with special-token strings treated as plain text
(encode_special_tokens=True); "ms" the ids of the same vocabulary in the
non-legacy form (no normalizer, Metaspace pre-tokenizer with
prepend_scheme "first"); "msp" with Metaspace prepend_scheme "always" and
split true; and for a few strings the ids with special tokens
recognised. sentencepiece's ids are compared too; strings where the
two disagree are listed under "disagreements" (the test follows HF).
"""
import importlib
import json
import os
import random
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# mistral-common and sentencepiece are imported where used, so that other
# scripts (make_bpe_refs.py) can reuse corpus() without them.
try:
    import mistral_common
    import sentencepiece as spm
    SPM_PATH = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
except ImportError:
    mistral_common = spm = SPM_PATH = None


def build_tokenizer_json(out_path):
    tub = importlib.import_module("transformers.tokenization_utils_base")
    sp = spm.SentencePieceProcessor(model_file=SPM_PATH)
    vocab_scores = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab = {w: i for i, (w, _) in enumerate(vocab_scores)}
    merges = tub.generate_merges(vocab, vocab_scores)
    tk = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ["<unk>", "<s>", "</s>"]])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s>:1 $B:1",
                                                      special_tokens=[("<s>", 1)])
    tk.save(out_path)
    return tk


def corpus():
    rnd = random.Random(1234)
    c = []
    # English prose
    prose = [
        "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
        "I'm sure you'll agree: it's 'quoted' and \"double-quoted\".",
        "Mixture-of-Experts models route each token to a few experts.",
        "It was the best of times, it was the worst of times, it was the age of wisdom.",
        "Call me Ishmael. Some years ago - never mind how long precisely - having little money.",
        "Don't stop; won't stop; can't stop.", "e.g., i.e., etc., vs. Mr. Smith & Mrs. Jones",
        "ALL CAPS SENTENCE WITH SHOUTING", "camelCaseIdentifier and snake_case_identifier",
        "a", "I", "the", " the", "The", "THE", "hello", " hello", "hello ", "  hello  ",
        "antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis",
        "Supercalifragilisticexpialidocious!", "résumé café naïve façade coöperate",
        "What's the weather like today? Sunny, 25°C.",
        "The year 1984 had 366 days; 2023 had 365.",
    ]
    c += prose
    # source code
    code = [
        "int main(void) {\n    return 0;\n}\n",
        "def f(x):\n\treturn x ** 2  # square\n",
        "for (size_t i = 0; i < n; i++) a[i] += b[i] * c[i];",
        "#include <stdio.h>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))",
        "const x = () => { console.log(`template ${literal}`); };",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
        "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
        "fn main() { let v: Vec<u8> = vec![0xff; 16]; println!(\"{:?}\", v); }",
        "x = [i for i in range(10) if i % 2 == 0]",
        "if (a && b || !c) { x <<= 2; y >>= 3; z ^= ~w; }",
        "    indented with four spaces\n        and eight",
        "\tTab\tseparated\tvalues\n1\t2\t3",
        "git commit -m \"fix: off-by-one in tokenizer\" && git push origin main",
        "$ ls -la /usr/local/bin | grep -E '^-.*x' > out.txt 2>&1",
        "printf(\"%d %s %5.2f\\n\", n, s, f);",
        "lambda x: x if x else None",
        "@decorator\nclass Foo(Bar):\n    pass",
    ]
    c += code
    # other scripts
    langs = [
        "你好，世界！", "机器学习是人工智能的一个分支。", "混合专家模型", "我爱北京天安门",
        "日本語のテキストです。", "こんにちは、元気ですか？", "カタカナとひらがなと漢字", "東京都渋谷区",
        "Привет, мир!", "Москва — столица России.", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "مرحبا بالعالم", "اللغة العربية جميلة جدا", "السلام عليكم ورحمة الله",
        "नमस्ते दुनिया", "हिन्दी भाषा भारत में बोली जाती है।", "क्षत्रिय",
        "안녕하세요 세계", "Γειά σου Κόσμε", "שלום עולם", "สวัสดีชาวโลก", "Xin chào thế giới",
        "Ελληνικά και English mixed", "Zürich Straße Ärger Öl Übung ß",
        "Hello 你好 Привет مرحبا नमस्ते こんにちは",
    ]
    c += langs
    # emoji and other 4-byte characters
    emoji = [
        "😀", "😀😃😄😁", "I love 🍕 and 🍣!", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "🏳️‍🌈",
        "𝕳𝖊𝖑𝖑𝖔", "𝒜𝓁𝓅𝒽𝒶", "𠜎𠜱𠝹𠱓", "🦄🦀🐍", "𐍈 Gothic", "🀄🃏", "∑∫∂√∞≠≤≥", "→←↑↓⇒",
    ]
    c += emoji
    # combining marks and zero-width characters
    comb = [
        "e\u0301", "a\u0300\u0301\u0302", "n\u0303o", "Z\u0351\u0360\u0361a\u0352l\u035bgo",
        "zero\u200bwidth", "join\u200d\u200dme", "non\u200cjoiner", "\ufeffBOM at start", "word\u2060joiner",
        "soft\u00adhyphen", "\u202eright-to-left override", "a\u00a0b\u2009c\u3000d",
    ]
    c += comb
    # whitespace
    ws = [
        " ", "  ", "   ", "    ", "     ", "        ", " " * 16, " " * 33, "\t", "\t\t", "\n", "\n\n", "\r\n",
        " \n ", "a  b", "a   b", "a    b", "a\tb", "a\nb", "a\n\nb", " leading", "trailing ", "\n leading newline",
        "mixed \t\n\r whitespace", "line1\nline2\nline3\n", "  \t  \t  ", "end with spaces    ",
    ]
    c += ws
    # digits and numbers
    nums = [
        "0", "1", "12", "123", "1234", "12345", "1234567890", "3.14159265358979", "-42", "+1 (555) 123-4567",
        "1,000,000", "1e-10", "0x1F", "2023-11-23", "12:34:56", "$19.99", "50%", "½ ¾ ⅓", "١٢٣٤٥", "१२३४",
        "IV XII MMXXIII", "00000000", "9" * 40,
    ]
    c += nums
    # URLs and e-mail
    urls = [
        "https://www.example.com/path/to/page?query=1&b=2#frag", "http://localhost:8080/",
        "ftp://files.example.org/pub/file.tar.gz", "mailto:someone@example.com",
        "Visit https://huggingface.co/mistralai/Mixtral-8x7B-Instruct-v0.1 for details.",
        "user.name+tag@sub.domain.co.uk", "www.google.com/search?q=moe+inference",
    ]
    c += urls
    # long words
    c += ["a" * 200, "ab" * 150, "z" * 1000, "xyzzy" * 100, "supercalifragilistic" * 20, "日本" * 100,
          "😀" * 100, "-" * 300, "=" * 80, "_" * 64, "." * 100, "\u0301" * 50]
    # the empty string and specials written literally
    c += ["", "<s>", "</s>", "<unk>", "<s>[INST] Hello [/INST]", "[INST] What is 2+2? [/INST] 4</s>",
          "text with <s> inside", "a</s>b", "<s><s></s>", "[INST]", "[/INST]", "<<SYS>>\nsystem\n<</SYS>>",
          "<0x41>", "<0xFF> byte token text", "▁", "▁▁hello", "▁ leading metaspace"]
    # byte fallback characters (likely not in the vocabulary)
    c += ["\x00", "\x01\x02\x03", "\x7f", "\u0080", "\uffff", "\U0010ffff", "\ue000 private use", "\x1b[31mred\x1b[0m"]
    # generated: random mixes
    pool = prose + code + langs + emoji + comb + nums + urls
    while len(c) < 330:
        k = rnd.randint(2, 4)
        sep = rnd.choice([" ", "\n", "  ", "\t", "", ". "])
        c.append(sep.join(rnd.choice(pool) for _ in range(k)))
    # random unicode code points
    for _ in range(20):
        n = rnd.randint(1, 12)
        s = ""
        for _ in range(n):
            r = rnd.random()
            if r < 0.4:
                s += chr(rnd.randint(0x20, 0x7e))
            elif r < 0.7:
                s += chr(rnd.randint(0xa0, 0xd7ff))
            elif r < 0.9:
                s += chr(rnd.randint(0xe000, 0xfffd))
            else:
                s += chr(rnd.randint(0x10000, 0x10ffff))
        c.append(s)
    return c


SPECIAL_PARSED = ["<s>", "</s>", "<s>[INST] Hello [/INST]", "[INST] What is 2+2? [/INST] 4</s>",
                  "text with <s> inside", "a</s>b", "<s><s></s>", "<unk>", " <s> ", "Hi</s><s>[INST] again"]


def write_bench_texts(out_dir, size=1 << 20):
    """english.txt and mixed.txt, `size` bytes each (cut at a character
    boundary), drawn deterministically from the corpus, for the encoding
    throughput benchmark (moecl tokenize --time -f FILE)."""
    rnd = random.Random(42)
    c = corpus()
    english = [x for x in c[:27] if len(x) > 20] + [
        "Memory, not arithmetic, is the problem: every expert must be resident somewhere.",
        "A router sends every token to the top two of its eight experts, and their outputs are weighted.",
        "The library is small and embeddable, written in C, and runs on whatever GPU a desktop has.",
    ]
    mixed = [x for x in c if x]
    for name, pool, seps in (("english.txt", english, [" ", " ", "\n"]), ("mixed.txt", mixed, [" ", "\n", "\t", ""])):
        parts, n = [], 0
        while n < size:
            p = rnd.choice(pool) + rnd.choice(seps)
            parts.append(p)
            n += len(p.encode("utf-8"))
        data = "".join(parts).encode("utf-8")[:size].decode("utf-8", "ignore").encode("utf-8")
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)


CHATS = [
    [("user", "Hello")],
    [("system", "Be brief."), ("user", "Hello"), ("assistant", "Hi there!"), ("user", "How are you?")],
    [("user", "A"), ("assistant", "B"), ("user", "C"), ("assistant", "D"), ("user", "E")],
    [("system", "S1"), ("system", "S2"), ("user", "A"), ("assistant", "B"), ("user", "C")],
    [("user", "A"), ("user", "C")],
    [("user", "A"), ("assistant", "B"), ("assistant", "D"), ("user", "E")],
    [("user", "A"), ("system", "S"), ("assistant", "B"), ("user", "E")],
    [("user", ""), ("assistant", "B"), ("user", "E")],
    [("user", "Write [INST] and </s> and <s> literally."), ("assistant", "[/INST] </s>"), ("user", "ok")],
    [("user", "Translate to French: the cat sleeps."), ("assistant", "Le chat dort."),
     ("user", "你好吗？ 😀  two  spaces\n\nand newlines")],
]


def chat_refs():
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    mt = MistralTokenizer.v1()
    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    out = []
    for chat in CHATS:
        req = ChatCompletionRequest(messages=[kinds[r](content=c) for r, c in chat])
        out.append({"messages": [{"role": r, "content": c} for r, c in chat],
                    "ids": mt.encode_chat_completion(req).tokens})
    return out


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--bench-texts":
        write_bench_texts(sys.argv[2])
        return
    tok_path = os.path.join(ROOT, "models", "tokenizer.json")
    build_tokenizer_json(tok_path)
    hf = Tokenizer.from_file(tok_path)
    sp = spm.SentencePieceProcessor(model_file=SPM_PATH)
    ms = Tokenizer.from_file(tok_path)
    ms.normalizer = None
    ms.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    ms.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    msp = Tokenizer.from_file(tok_path)
    msp.normalizer = None
    msp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    msp.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    cases, disagreements = [], []
    for text in corpus():
        hf.encode_special_tokens = True
        ids = hf.encode(text, add_special_tokens=False).ids
        with_bos = hf.encode(text).ids
        assert with_bos == [1] + ids, text
        spm_ids = sp.encode(text)
        case = {"text": text, "hex": text.encode("utf-8").hex(), "ids": ids}
        ms.encode_special_tokens = True
        case["ms"] = ms.encode(text, add_special_tokens=False).ids
        msp.encode_special_tokens = True
        case["msp"] = msp.encode(text, add_special_tokens=False).ids
        if spm_ids != ids:
            disagreements.append({"text": text, "hf": ids, "sentencepiece": spm_ids})
        # the reference decode (HF, special tokens kept) must give the text back
        dec = hf.decode(ids, skip_special_tokens=False)
        if dec != text:
            case["hf_decode"] = dec
        cases.append(case)
    special = []
    for text in SPECIAL_PARSED:
        hf.encode_special_tokens = False
        ms.encode_special_tokens = False
        special.append({"text": text, "ids": hf.encode(text, add_special_tokens=False).ids,
                        "ms": ms.encode(text, add_special_tokens=False).ids})
    out = {
        "source": "HF tokenizers %s on models/tokenizer.json (from mistral-common tokenizer.model.v1); "
                  "ids without BOS; special-token strings as plain text unless in 'special'" %
                  importlib.import_module("tokenizers").__version__,
        "cases": cases,
        "special": special,
        "disagreements": disagreements,
        "chat_source": "mistral-common %s MistralTokenizer.v1().encode_chat_completion" %
                       importlib.import_module("mistral_common").__version__,
        "chat": chat_refs(),
    }
    os.makedirs(os.path.join(ROOT, "tests", "data", "tokenizer"), exist_ok=True)
    with open(os.path.join(ROOT, "tests", "data", "tokenizer", "refs.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print("%d cases, %d special, %d HF/sentencepiece disagreements" % (len(cases), len(special), len(disagreements)),
          file=sys.stderr)


if __name__ == "__main__":
    main()
