#!/bin/sh
# moecl tokenize / detokenize print the reference ids and text.
#   test_tokenizer_cli.sh MOECL TOKENIZER_JSON
set -u
moecl="$1"; tok="$2"; fail=0
check() { # what got want
    if [ "$2" != "$3" ]; then echo "test_tokenizer_cli: $1: got '$2', want '$3'" >&2; fail=1; fi
}
check "tokenize" "$("$moecl" tokenize -m "$tok" -p "Hello world")" "[1, 22557, 1526]"
check "tokenize --no-bos" "$("$moecl" tokenize -m "$tok" --no-bos -p "Hello world")" "[22557, 1526]"
check "tokenize <s> as text" "$("$moecl" tokenize -m "$tok" --no-bos -p "<s>")" "[523, 28713, 28767]"
check "tokenize --special" "$("$moecl" tokenize -m "$tok" --special -p "<s>[INST] Hello [/INST]")" \
      "[1, 1, 733, 16289, 28793, 22557, 733, 28748, 16289, 28793]"
printf '你好，世界！\n' > "${TMPDIR:-/tmp}/moecl_tok_cli.txt"
check "tokenize -f" "$("$moecl" tokenize -m "$tok" --no-bos -f "${TMPDIR:-/tmp}/moecl_tok_cli.txt")" \
      "[28705, 29383, 29530, 28924, 30050, 29822, 29267, 13]"
rm -f "${TMPDIR:-/tmp}/moecl_tok_cli.txt"
check "detokenize" "$("$moecl" detokenize -m "$tok" 1 22557 1526 2)" "Hello world"
check "detokenize commas" "$("$moecl" detokenize -m "$tok" 1,22557,1526,2 --special)" "<s> Hello world</s>"
"$moecl" detokenize -m "$tok" 32000 2>/dev/null && { echo "test_tokenizer_cli: id 32000 accepted" >&2; fail=1; }
"$moecl" tokenize -m /nonexistent -p x 2>/dev/null && { echo "test_tokenizer_cli: missing tokenizer accepted" >&2; fail=1; }
[ $fail = 0 ] && echo "test_tokenizer_cli: ok" >&2
exit $fail
