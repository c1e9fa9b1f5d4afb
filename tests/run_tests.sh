#!/bin/sh
# Run each test binary given as an argument, show its output, and add up the
# "N passed, N failed" lines. A binary that crashes, exits non-zero or prints
# no summary counts as one failure. The last line is the grand total.
total_passed=0
total_failed=0
for t in "$@"; do
    echo "== $t"
    out=$("$t" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    summary=$(printf '%s\n' "$out" | tail -n 1)
    p=$(printf '%s' "$summary" | sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1/p')
    f=$(printf '%s' "$summary" | sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\2/p')
    if [ -z "$p" ]; then
        echo "!! $t printed no summary line (exit $rc)"
        total_failed=$((total_failed + 1))
        continue
    fi
    total_passed=$((total_passed + p))
    total_failed=$((total_failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "!! $t exited $rc"
        total_failed=$((total_failed + 1))
    fi
done
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ] && [ "$total_passed" -gt 0 ]
