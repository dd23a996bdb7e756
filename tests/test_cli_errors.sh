#!/bin/sh
# moecl's command line says what went wrong, by name and number, with the right exit status.
#   test_cli_errors.sh MOECL DATA_DIR TOKENIZER_JSON WORK_DIR
set -u
moecl="$1"; data="$2"; tokjson="$3"; work="$4"; fail=0
tiny="$data/tiny-f32"
rm -rf "$work"; mkdir -p "$work"
out="$work/out.txt"; err="$work/err.txt"

# expect WHAT WANT_STATUS PATTERN CMD...: run CMD, check its exit status and grep stderr for PATTERN.
expect() {
    what="$1"; want="$2"; pat="$3"; shift 3
    "$@" >"$out" 2>"$err" </dev/null
    got=$?
    if [ "$got" != "$want" ]; then
        echo "test_cli_errors: $what: exit status $got, want $want; stderr:" >&2; cat "$err" >&2; fail=1
    elif [ -n "$pat" ] && ! grep -q -- "$pat" "$err"; then
        echo "test_cli_errors: $what: stderr lacks '$pat':" >&2; cat "$err" >&2; fail=1
    else
        echo "  $what: $(head -c 300 "$err" | tr '\n' ' ')" >&2
    fi
}

# A prompt longer than the context: says so and by how much (not "n_batch").
expect "prompt > -c" 1 "the prompt is 70 tokens and does not fit in the context of 64 positions (-c): 6 too many" \
    "$moecl" run -m "$tiny" --backend cpu -c 64 -n 1 --tokens "$(seq -s, 1 70)"
expect "prompt > trained context" 1 "does not fit in the context of 256 positions (the model's trained context): 44 too many" \
    "$moecl" run -m "$tiny" --backend cpu -n 1 --tokens "$(seq -s, 1 300 | sed 's/[0-9]*/5/g')"

# run --ids at the end of the context: the ids so far on stdout, then the error.
expect "run --ids, context ends" 1 "context of 8 positions is full after 3 prompt and 6 generated tokens" \
    "$moecl" run -m "$tiny" --backend cpu -c 8 -n 20 --ids --temp 0 --tokens 1,2,3
n_ids=$(tr -cd ',' <"$out" | wc -c)
grep -q '^\[[0-9]' "$out" && [ "$n_ids" = 5 ] || {
    echo "test_cli_errors: run --ids: stdout '$(cat "$out")', want 6 ids" >&2; fail=1; }

# -c beyond the library's limit: the limit, not "bad number".
expect "-c too large" 2 "from 1 to 16777216 (the library's limit on positions" \
    "$moecl" run -m "$tiny" -c 99999999 --tokens 1

# The real errno: a symlink loop (and, when not root, an unreadable directory).
ln -s loop "$work/loop"
expect "symlink loop (model)" 1 "Too many levels of symbolic links" "$moecl" info -m "$work/loop"
expect "symlink loop (tokenizer)" 1 "Too many levels of symbolic links" "$moecl" tokenize -m "$work/loop" -p x
mkdir "$work/locked"; cp "$tiny/config.json" "$work/locked/"; chmod 000 "$work/locked"
if [ "$(id -u)" != 0 ]; then
    expect "unreadable directory" 1 "Permission denied" "$moecl" info -m "$work/locked"
elif command -v setpriv >/dev/null && setpriv --reuid=65534 --regid=65534 --clear-groups "$moecl" help >/dev/null 2>&1; then
    # root reads every directory: ask as nobody
    expect "unreadable directory" 1 "Permission denied" \
        setpriv --reuid=65534 --regid=65534 --clear-groups "$moecl" info -m "$work/locked"
else
    echo "  unreadable directory: not checked (root reads every directory, and cannot run moecl as nobody)" >&2
fi
chmod 755 "$work/locked"

# chat -n beyond the context: names -n, before any message.
"$moecl" generate "$work/tok-model" --preset tiny --vocab 32000 >/dev/null 2>&1 && cp "$tokjson" "$work/tok-model/"
expect "chat -n 5000" 1 "\-n 5000 leaves no room for a message in the context of 4096 positions" \
    "$moecl" chat -m "$work/tok-model" --backend cpu -n 5000
expect "chat -n 63 -c 64" 1 "\-n 63 leaves no room for a message in the context of 64 positions (-c)" \
    "$moecl" chat -m "$work/tok-model" --backend cpu -n 63 -c 64
printf 'Tell me a long story about the sea and the wind and the boats.\n' >"$work/msg.txt"
"$moecl" chat -m "$work/tok-model" --backend cpu -n 40 -c 50 <"$work/msg.txt" >"$out" 2>"$err"
grep -q "with 41 kept for the reply (-n) it does not fit in the context of 50 positions" "$err" || {
    echo "test_cli_errors: chat, long message: stderr:" >&2; cat "$err" >&2; fail=1; }

# Every subcommand answers --help and -h with its usage, status 0, and does nothing else.
mkdir -p "$work/cwd"
for c in run tokenize detokenize chat info devices bench generate quantize; do
    for h in --help -h; do
        (cd "$work/cwd" && "$moecl" "$c" "$h" >"$out" 2>"$err")
        st=$?
        if [ $st != 0 ] || ! grep -q "moecl $c" "$out"; then
            echo "test_cli_errors: moecl $c $h: status $st, stdout '$(cat "$out")'" >&2; fail=1
        fi
    done
done
(cd "$work/cwd" && "$moecl" generate DIR --help >/dev/null 2>&1)
[ -z "$(ls -A "$work/cwd")" ] || { echo "test_cli_errors: --help wrote $(ls "$work/cwd")" >&2; fail=1; }
expect "generate, option first" 2 "generate needs the output directory first, before --dtype" \
    "$moecl" generate --dtype f16 "$work/x"

[ $fail = 0 ] && echo "test_cli_errors: ok" >&2
exit $fail
