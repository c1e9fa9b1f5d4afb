#!/bin/sh
# tests/test_lens_tool.sh - tools/moexc_lens end to end: a corpus from
# moexc_mkdata, a small MoE from moexc_train, then the lens on both the token
# file and the built-in corpus; checks the tables, the CSV/JSON/PNG outputs,
# --help, and that bad options and unwritable outputs fail early with a
# message. Run from the repository root after
# `make build/moexc_lens build/moexc_mkdata build/moexc_train`.
BUILD=${BUILD:-build}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/moexc_lens.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
bad()  { failed=$((failed + 1)); echo "FAIL $1"; }
check() { desc=$1; shift; if "$@" >/dev/null 2>&1; then ok "$desc"; else bad "$desc"; fi; }
fails() { # description, expected text on stderr, then the command
    desc=$1; want=$2; shift 2
    if "$@" >/dev/null 2>"$TMP/err"; then bad "$desc (succeeded)"
    elif grep -q -- "$want" "$TMP/err"; then ok "$desc: $(head -n 1 "$TMP/err")"
    else bad "$desc (stderr: $(head -n 1 "$TMP/err"))"; fi
}
png_ok() { [ -s "$1" ] && [ "$(od -An -tx1 -N8 "$1" | tr -d ' \n')" = 89504e470d0a1a0a ]; }

check "corpus (moexc_mkdata)" "$BUILD/moexc_mkdata" --builtin 40000 --out "$TMP/c.tok"
check "small MoE (moexc_train)" "$BUILD/moexc_train" --data "$TMP/c.tok" --ffn moe --d-model 32 --heads 2 --layers 2 \
    --context 32 --experts 4 --steps 5 --batch 4 --eval-interval -1 --export "$TMP/moe.st"
check "--help" "$BUILD/moexc_lens" --help
"$BUILD/moexc_lens" --model "$TMP/moe.st" --tokens "$TMP/c.tok" --out "$TMP/lens" --seqs 4 --max-k 4 \
    >"$TMP/out" 2>"$TMP/err"
if [ $? -eq 0 ]; then ok "lens on a token file"; else bad "lens on a token file: $(tail -n 1 "$TMP/err")"; fi
for t in "routing share" "co-activation" "single-expert early decoding" "k'=4"; do
    if grep -q "$t" "$TMP/out"; then ok "table: $t"; else bad "table: $t"; fi
done
if [ "$(head -n 1 "$TMP/lens/lens.csv")" = "metric,layer,domain,k,i,j,value" ] &&
   [ "$(grep -c '^ppl,' "$TMP/lens/lens.csv")" = 20 ]; then ok "lens.csv (4 domains x k' 0..4)"; else bad "lens.csv"; fi
if grep -q '"perplexity"' "$TMP/lens/lens.json" && grep -q '"concentration"' "$TMP/lens/lens.json"; then
    ok "lens.json"; else bad "lens.json"; fi
for p in coact_L0 coact_L1 concentration early_decoding perplexity; do
    if png_ok "$TMP/lens/$p.png"; then ok "$p.png"; else bad "$p.png"; fi
done
if ls "$TMP/lens" | grep -q '\.tmp$'; then bad "no temporary files left"; else ok "no temporary files left"; fi
check "lens on the built-in corpus, prefix" "$BUILD/moexc_lens" --model "$TMP/moe.st" --builtin 30000 --seq-len 16 \
    --seqs 2 --no-sweep --out "$TMP/lens2" --prefix x_
if [ -s "$TMP/lens2/x_lens.csv" ] && png_ok "$TMP/lens2/x_coact_L1.png" && [ ! -e "$TMP/lens2/x_perplexity.png" ]; then
    ok "prefixed outputs, no sweep plot"; else bad "prefixed outputs"; fi
fails "no --model" "model is required" "$BUILD/moexc_lens" --out "$TMP/x"
fails "bad --max-k" "bad value '0' for --max-k" "$BUILD/moexc_lens" --model "$TMP/moe.st" --max-k 0
fails "max-k above E" "max_k 9" "$BUILD/moexc_lens" --model "$TMP/moe.st" --max-k 9 --out "$TMP/x"
: >"$TMP/afile"
fails "unwritable output checked first" "cannot create $TMP/afile/sub" "$BUILD/moexc_lens" --model "$TMP/missing.st" \
    --out "$TMP/afile/sub"
fails "missing checkpoint named" "missing.st" "$BUILD/moexc_lens" --model "$TMP/missing.st" --out "$TMP/x"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
