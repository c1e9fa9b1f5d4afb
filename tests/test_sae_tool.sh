#!/bin/sh
# tests/test_sae_tool.sh - tools/moexc_sae end to end on two tiny models from
# moexc_train: one SAE of each variant (save, --eval, --checkpoint), an
# activation cache side, the --compare table, CSV and PNGs, the spliced loss,
# and clear errors for bad options and corrupt files. Run from the repository
# root after `make build/moexc_sae build/moexc_mkdata build/moexc_train build/moexc_crosscoder`.
BUILD=${BUILD:-build}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/moexc_sae.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
bad()  { failed=$((failed + 1)); echo "FAIL $1"; }
check() { desc=$1; shift; if "$@" >"$TMP/out" 2>"$TMP/err"; then ok "$desc"; else bad "$desc: $(tail -n 1 "$TMP/err")"; fi; }
fails() { # description, expected text on stderr, then the command
    desc=$1; want=$2; shift 2
    if "$@" >/dev/null 2>"$TMP/err"; then bad "$desc (succeeded)"
    elif grep -q -- "$want" "$TMP/err"; then ok "$desc: $(head -n 1 "$TMP/err")"
    else bad "$desc (stderr: $(head -n 1 "$TMP/err"))"; fi
}
png_ok() { [ -s "$1" ] && [ "$(od -An -tx1 -N8 "$1" | tr -d ' \n')" = 89504e470d0a1a0a ]; }
SMALL="--layer 1 --seq-len 32 --train-rows 4096 --eval-rows 1024 --latents 64 --k 4 --experts 4 --steps 30 --batch 128 --log-every 1000"

check "corpus (moexc_mkdata)" "$BUILD/moexc_mkdata" --builtin 40000 --out "$TMP/c.tok"
for f in moe dense; do
    check "small $f model (moexc_train)" "$BUILD/moexc_train" --data "$TMP/c.tok" --ffn $f --d-model 16 --heads 2 --layers 2 \
        --context 32 --experts 4 --steps 3 --batch 4 --eval-interval -1 --export "$TMP/$f.st"
done
check "--help" "$BUILD/moexc_sae" --help
for v in topk switch scale; do
    check "$v SAE on the dense model" "$BUILD/moexc_sae" --model "$TMP/dense.st" --tokens "$TMP/c.tok" $SMALL --variant $v \
        --save "$TMP/$v.safetensors" --checkpoint "$TMP/${v}_train.safetensors"
    if grep -q "held-out: FVE" "$TMP/out" && grep -q "FLOPs/token" "$TMP/out"; then ok "$v: held-out line"; else bad "$v: held-out line"; fi
    check "$v: --eval of the saved SAE" "$BUILD/moexc_sae" --model "$TMP/dense.st" --tokens "$TMP/c.tok" $SMALL --eval "$TMP/$v.safetensors"
    if grep -q "^eval: FVE" "$TMP/out"; then ok "$v: eval line"; else bad "$v: eval line"; fi
done
check "side b of a pair, spliced loss" "$BUILD/moexc_sae" --model-a "$TMP/moe.st" --model-b "$TMP/dense.st" --side b --tokens "$TMP/c.tok" \
    $SMALL --variant scale --splice --splice-seqs 2
if grep -q "^spliced: CE clean" "$TMP/out"; then ok "spliced loss line"; else bad "spliced loss line"; fi
check "activation cache (moexc_crosscoder --cache-write)" "$BUILD/moexc_crosscoder" --model-a "$TMP/moe.st" --model-b "$TMP/dense.st" \
    --tokens "$TMP/c.tok" --layer 1 --seq-len 32 --latents 32 --k 4 --steps 6 --batch 256 --shuffle 512 --eval-pairs 256 \
    --cache-write "$TMP/act.cache" --save "$TMP/xc.safetensors"
check "switch SAE on the cache's side a" "$BUILD/moexc_sae" --cache "$TMP/act.cache" --side a --train-rows 1024 --eval-rows 256 \
    --latents 64 --k 4 --experts 4 --steps 20 --batch 128 --variant switch
if grep -q "cache .*side A" "$TMP/out"; then ok "cache side named"; else bad "cache side named"; fi
check "--compare" "$BUILD/moexc_sae" --model-a "$TMP/moe.st" --model-b "$TMP/dense.st" --tokens "$TMP/c.tok" $SMALL \
    --active 2 --compare "$TMP/cmp" --splice --splice-seqs 2
if [ "$(grep -c '^|' "$TMP/cmp/sae_table.md")" = 8 ]; then ok "sae_table.md: header, rule and 6 rows"; else bad "sae_table.md"; fi
if [ "$(head -n 1 "$TMP/cmp/sae_table.csv" | cut -d, -f1-4)" = "model,variant,n_latents,k" ] &&
   [ "$(wc -l < "$TMP/cmp/sae_table.csv")" = 7 ]; then ok "sae_table.csv"; else bad "sae_table.csv"; fi
for p in sae_fve_flops sae_redundancy sae_expert_usage; do
    if png_ok "$TMP/cmp/$p.png"; then ok "$p.png"; else bad "$p.png"; fi
done
if [ -s "$TMP/cmp/sae_scale_moe.safetensors" ] && [ -s "$TMP/cmp/sae_topk_dense.safetensors" ]; then ok "the six SAEs"; else bad "the six SAEs"; fi
if grep -q '^dense,scale,64,4,4,2,' "$TMP/cmp/sae_table.csv" && grep -q '^moe,switch,64,4,4,1,' "$TMP/cmp/sae_table.csv" &&
   grep -q '^moe,topk,64,4,1,1,' "$TMP/cmp/sae_table.csv"; then ok "--experts 4 --active 2 reach the routed SAEs"; else bad "--experts/--active in --compare"; fi
if ls "$TMP/cmp" | grep -q '\.tmp$'; then bad "no temporary files left"; else ok "no temporary files left"; fi
fails "no data" "give --model" "$BUILD/moexc_sae" --variant topk
fails "bad --variant" "--variant must be" "$BUILD/moexc_sae" --model "$TMP/dense.st" --variant moe
fails "bad --k" "is not a number" "$BUILD/moexc_sae" --model "$TMP/dense.st" --k x
fails "k above the experts' latents" "k 40 outside" "$BUILD/moexc_sae" --model "$TMP/dense.st" --tokens "$TMP/c.tok" $SMALL --variant switch --k 40
fails "--compare needs a pair" "needs --model-a" "$BUILD/moexc_sae" --model "$TMP/dense.st" --compare "$TMP/x"
head -c 100 "$TMP/scale.safetensors" > "$TMP/cut.safetensors"
fails "truncated SAE file named" "cut.safetensors" "$BUILD/moexc_sae" --model "$TMP/dense.st" --tokens "$TMP/c.tok" $SMALL --eval "$TMP/cut.safetensors"
fails "a crosscoder is not an SAE" "expected \"moexc-sae\"" "$BUILD/moexc_sae" --model "$TMP/dense.st" --tokens "$TMP/c.tok" $SMALL \
    --eval "$TMP/xc.safetensors"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
