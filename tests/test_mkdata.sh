#!/bin/sh
# tests/test_mkdata.sh - the moexc_mkdata tool: built-in corpus, files and
# directories assigned to domains, sizes of the output, and clear errors.
# Run from the repository root after `make build/moexc_mkdata`.
BIN=${BUILD:-build}/moexc_mkdata
TMP=${BUILD:-build}/tmp_mkdata
passed=0
failed=0
check() { # description, then a command that must succeed
    desc=$1; shift
    if "$@" >/dev/null 2>&1; then passed=$((passed + 1)); echo "ok   $desc"
    else failed=$((failed + 1)); echo "FAIL $desc"; fi
}
fails() { # description, then a command that must fail with exit status 2 or 1 and say something on stderr
    desc=$1; shift
    if "$@" >/dev/null 2>"$TMP/err" ; then failed=$((failed + 1)); echo "FAIL $desc (succeeded)"
    elif [ -s "$TMP/err" ]; then passed=$((passed + 1)); echo "ok   $desc: $(cat "$TMP/err")"
    else failed=$((failed + 1)); echo "FAIL $desc (no message)"; fi
}
size_is() { [ "$(wc -c < "$1" | tr -d ' ')" = "$2" ]; }

rm -rf "$TMP" && mkdir -p "$TMP/src/sub" "$TMP/src/.hidden"
printf 'int main(void) { return 0; }\n' > "$TMP/src/a.c"
printf 'void f(void) {}' > "$TMP/src/sub/b.c"
printf 'secret' > "$TMP/src/.hidden/c.c"
printf 'bin\000ary' > "$TMP/src/bin.o"
printf 'Once upon a time.\n' > "$TMP/story.txt"

check "--help" "$BIN" --help
check "builtin corpus" "$BIN" --builtin 1000 --seed 3 --out "$TMP/b.tok"
# 32-byte header + 3 names of 32 bytes + 3000 tokens * 3 bytes + CRC
check "builtin file size" size_is "$TMP/b.tok" $((32 + 96 + 9000 + 4))
check "same seed, same file" sh -c "'$BIN' --builtin 1000 --seed 3 --out '$TMP/b2.tok' && cmp '$TMP/b.tok' '$TMP/b2.tok'"
check "other seed, other file" sh -c "'$BIN' --builtin 1000 --seed 4 --out '$TMP/b3.tok' && ! cmp -s '$TMP/b.tok' '$TMP/b3.tok'"
check "directories and files" "$BIN" --domain code="$TMP/src" --domain stories="$TMP/story.txt" --out "$TMP/d.tok"
# code: a.c (29 bytes + separator) and sub/b.c (15 + newline + separator); stories: 18 + separator
check "documents, hidden and binary files skipped" size_is "$TMP/d.tok" $((32 + 64 + 3 * (30 + 17 + 19) + 4))
check "per-domain counts printed" sh -c "'$BIN' --domain code='$TMP/src' --out '$TMP/d.tok' | grep -q 'code .* 47 bytes in 2 documents'"
fails "no arguments" "$BIN"
fails "missing --out" "$BIN" --builtin 10
fails "both modes" "$BIN" --builtin 10 --domain a="$TMP/story.txt" --out "$TMP/x.tok"
fails "bad NAME=PATH" "$BIN" --domain nopath --out "$TMP/x.tok"
fails "missing path" "$BIN" --domain a="$TMP/nonexistent" --out "$TMP/x.tok"
fails "bad number" "$BIN" --builtin 12x --out "$TMP/x.tok"
fails "unknown option" "$BIN" --frobnicate
fails "unwritable output" "$BIN" --builtin 10 --out "$TMP/no/such/dir/x.tok"
rm -rf "$TMP"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
