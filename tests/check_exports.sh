#!/bin/sh
# The shared library exports the public API (moecl_*) and nothing else.
lib="$1"
command -v nm >/dev/null || { echo "check_exports: SKIP: nm not found" >&2; exit 77; }
syms=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}')
[ -n "$syms" ] || { echo "check_exports: no symbols read from $lib" >&2; exit 1; }
bad=$(printf '%s\n' "$syms" | grep -v '^moecl_' || true)
if [ -n "$bad" ]; then
    echo "check_exports: symbols outside the public API:" >&2
    printf '%s\n' "$bad" >&2
    exit 1
fi
for f in $(grep -o 'moecl_[a-z0-9_]*(' "$(dirname "$0")/../include/moecl.h" | tr -d '(' | sort -u); do
    printf '%s\n' "$syms" | grep -qx "$f" || { echo "check_exports: $f declared but not exported" >&2; exit 1; }
done
echo "check_exports: $(printf '%s\n' "$syms" | wc -l) symbols, all moecl_*" >&2
