#!/bin/sh
# moecl tokenize --chat [--chat-format NAME] [--system TEXT]: one user turn gives the ids of
# transformers' apply_chat_template (taken from tests/data/tokenizer-*/refs.json, made by
# tools/make_bpe_refs.py); an unknown format name, a vocabulary without the format's special
# tokens, no template and a template moecl does not recognise are errors that say so.
#   test_tokenizer_chat_cli.sh MOECL DATA_DIR MISTRAL_TOKENIZER_JSON
set -u
moecl="$1"; data="$2"; mistral="$3"; fail=0
for f in "$data/tokenizer-qwen3/tokenizer.json" "$data/tokenizer-olmoe/tokenizer.json" \
         "$data/tokenizer-gpt2/tokenizer.json" "$mistral"; do
    [ -f "$f" ] || { echo "test_tokenizer_chat_cli: skipped: $f is absent" >&2; exit 77; }
done
command -v python3 >/dev/null || { echo "test_tokenizer_chat_cli: skipped: no python3 to read refs.json" >&2; exit 77; }
tmp="${TMPDIR:-/tmp}/moecl_chat_cli.$$"
mkdir -p "$tmp" && trap 'rm -rf "$tmp"' EXIT

# ref VOCAB FORMAT NO_THINK ROLE CONTENT [ROLE CONTENT...]: transformers' ids, as moecl prints them
ref() {
    python3 - "$data/tokenizer-$1/refs.json" "$@" <<'EOF'
import json, sys
refs, fmt, no_think, msgs = sys.argv[1], sys.argv[3], sys.argv[4] == "1", sys.argv[5:]
want = [{"role": r, "content": c} for r, c in zip(msgs[::2], msgs[1::2])]
for c in json.load(open(refs, encoding="utf-8"))["chat"]:
    if c["format"] == fmt and c["no_think"] == no_think and c["messages"] == want:
        print("[" + ", ".join(map(str, c["ids"])) + "]")
        break
else:
    sys.exit("no reference conversation for %s %s" % (fmt, want))
EOF
}
check() { # what got want
    if [ -z "$3" ] || [ "$2" != "$3" ]; then
        echo "test_tokenizer_chat_cli: $1: got '$2', want '$3'" >&2; fail=1
    fi
}
# fails what pattern... -- command...: exits non-zero and its stderr holds every pattern
fails() {
    what="$1"; shift
    pats=""
    while [ "$1" != "--" ]; do pats="$pats
$1"; shift; done
    shift
    if "$@" >/dev/null 2>"$tmp/err"; then
        echo "test_tokenizer_chat_cli: $what: succeeded" >&2; fail=1; return
    fi
    echo "$pats" | while IFS= read -r p; do
        [ -z "$p" ] || grep -qF -- "$p" "$tmp/err" || {
            echo "test_tokenizer_chat_cli: $what: the error does not say '$p': $(cat "$tmp/err")" >&2
            echo x >"$tmp/bad"
        }
    done
    [ -f "$tmp/bad" ] && { fail=1; rm -f "$tmp/bad"; }
}

q="$data/tokenizer-qwen3"; o="$data/tokenizer-olmoe"
# the tokenizer's own template
check "qwen3" "$("$moecl" tokenize -m "$q" --chat -p Hello)" "$(ref qwen3 qwen3 0 user Hello)"
check "olmoe" "$("$moecl" tokenize -m "$o" --chat -p Hello)" "$(ref olmoe olmoe 0 user Hello)"
check "olmoe from GGUF" "$("$moecl" tokenize -m "$data/tokenizer-gguf/olmoe.gguf" --chat -p Hello)" \
      "$(ref olmoe olmoe 0 user Hello)"
# --chat-format chooses another, --system adds a system message
check "--chat-format qwen2.5" "$("$moecl" tokenize -m "$q" --chat --chat-format qwen2.5 -p Hello)" \
      "$(ref qwen3 qwen2.5 0 user Hello)"
check "--chat-format qwen2 --system" \
      "$("$moecl" tokenize -m "$q" --chat --chat-format qwen2 --system "You are a helpful assistant." -p "2+2?")" \
      "$(ref qwen3 qwen2 0 system "You are a helpful assistant." user "2+2?")"
check "--chat-format chatml from GGUF" \
      "$("$moecl" tokenize -m "$data/tokenizer-gguf/qwen3.gguf" --chat --chat-format chatml -p Hello)" \
      "$(ref qwen3 chatml 0 user Hello)"

fails "unknown format" 'unknown chat format "nonesuch"' mistral chatml qwen2 qwen2.5 qwen3 olmoe -- \
      "$moecl" tokenize -m "$q" --chat --chat-format nonesuch -p Hello
fails "chatml on Mistral's vocabulary" "needs the special token <|im_start|>" -- \
      "$moecl" tokenize -m "$mistral" --chat --chat-format chatml -p Hello
fails "no template" "no chat template" --chat-format mistral chatml qwen2 qwen2.5 qwen3 olmoe -- \
      "$moecl" tokenize -m "$data/tokenizer-gpt2" --chat -p Hello
# Qwen3's vocabulary under a template of another family
mkdir -p "$tmp/other"
ln -s "$(cd "$q" && pwd)/tokenizer.json" "$tmp/other/tokenizer.json"
cat >"$tmp/other/tokenizer_config.json" <<'EOF'
{"chat_template": "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"}
EOF
fails "unrecognised template" "not one moecl recognises" --chat-format mistral chatml qwen2 qwen2.5 qwen3 olmoe -- \
      "$moecl" tokenize -m "$tmp/other" --chat -p Hello
check "unrecognised template, --chat-format chatml" \
      "$("$moecl" tokenize -m "$tmp/other" --chat --chat-format chatml -p Hello)" "$(ref qwen3 chatml 0 user Hello)"

[ $fail = 0 ] && echo "test_tokenizer_chat_cli: ok" >&2
exit $fail
