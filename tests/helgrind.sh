#!/bin/sh
# Run PROGRAM ARGS under valgrind's helgrind (data races, lock-order errors):
# fails if helgrind reports any error or the program fails; exit 77 (skip)
# without valgrind.
#
#   tests/helgrind.sh PROGRAM ARGS...
if ! command -v valgrind >/dev/null 2>&1; then
    echo "helgrind: SKIP: valgrind is not installed (apt-get install valgrind)" >&2
    exit 77
fi
# valgrind cannot run a program built with AddressSanitizer (the sanitizer one-liner).
if command -v ldd >/dev/null 2>&1 && ldd "$1" 2>/dev/null | grep -q 'libasan'; then
    echo "helgrind: SKIP: $1 is built with AddressSanitizer, which valgrind cannot run" >&2
    exit 77
fi
exec valgrind --tool=helgrind --error-exitcode=99 --suppressions="$(dirname "$0")/helgrind.supp" "$@"
