#!/bin/sh
# tests/test_pipeline.sh - the one-command pipeline (examples/moexc_demo.c):
# runs the tiny preset end to end into a temporary folder and checks that
# every report file exists and parses: PNG signature and IHDR size, JSON
# syntax and keys (a small JSON checker in awk), CSV row and column counts,
# .npy magic, header and size; the checkpoints load in the moexc_train tool;
# bad options give clear errors; the seed controls (--controls) and a
# corpus of our own (--data).  Run from the repository root after
# `make build/moexc_demo build/moexc_train`. No Python needed.
BUILD=${BUILD:-build}
BIN=$BUILD/moexc_demo
TMP=$(mktemp -d "${TMPDIR:-/tmp}/moexc_pipeline.XXXXXX") || exit 1
OUT=$TMP/report
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
bad()  { failed=$((failed + 1)); echo "FAIL $1"; }
check() { # description, then a command that must succeed
    desc=$1; shift
    if "$@" >/dev/null 2>&1; then ok "$desc"; else bad "$desc"; fi
}
fails() { # description, then a command that must fail with a message on stderr
    desc=$1; shift
    if "$@" >/dev/null 2>"$TMP/err"; then bad "$desc (succeeded)"
    elif [ -s "$TMP/err" ]; then ok "$desc: $(head -n 1 "$TMP/err")"
    else bad "$desc (no message)"; fi
}

# ---- format checkers -------------------------------------------------------
# PNG: 8-byte signature, then the IHDR chunk with big-endian width and height
# (both in [min, 4000]).
png_ok() { # file min_width min_height
    [ -s "$1" ] || return 1
    set -- "$1" "$2" "$3" "$(od -An -tx1 -N24 "$1" | tr -d ' \n')"
    case $4 in 89504e470d0a1a0a0000000d49484452*) ;; *) return 1 ;; esac
    w=$((0x$(printf '%s' "$4" | cut -c33-40)))
    h=$((0x$(printf '%s' "$4" | cut -c41-48)))
    [ "$w" -ge "$2" ] && [ "$h" -ge "$3" ] && [ "$w" -le 4000 ] && [ "$h" -le 4000 ]
}
# JSON: a recursive-descent syntax check (objects, arrays, strings with
# escapes, numbers, true/false/null), the whole file one value.
json_ok() {
    awk '
    function ws() { while (pos <= n && index(" \t\r\n", substr(s, pos, 1))) pos++ }
    function str(   c) {
        if (substr(s, pos, 1) != "\"") return 0
        for (pos++; pos <= n; pos++) {
            c = substr(s, pos, 1)
            if (c == "\\") pos++
            else if (c == "\"") { pos++; return 1 }
        }
        return 0
    }
    function num(   t) {
        t = substr(s, pos, 40)
        if (!match(t, /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/)) return 0
        pos += RLENGTH
        return 1
    }
    function word(w) { if (substr(s, pos, length(w)) != w) return 0; pos += length(w); return 1 }
    function value(   c) {
        ws(); c = substr(s, pos, 1)
        if (c == "{") return object()
        if (c == "[") return array()
        if (c == "\"") return str()
        if (c == "t") return word("true")
        if (c == "f") return word("false")
        if (c == "n") return word("null")
        return num()
    }
    function object(   c) {
        pos++; ws()
        if (substr(s, pos, 1) == "}") { pos++; return 1 }
        for (;;) {
            ws(); if (!str()) return 0
            ws(); if (substr(s, pos, 1) != ":") return 0
            pos++; if (!value()) return 0
            ws(); c = substr(s, pos, 1); pos++
            if (c == "}") return 1
            if (c != ",") return 0
        }
    }
    function array(   c) {
        pos++; ws()
        if (substr(s, pos, 1) == "]") { pos++; return 1 }
        for (;;) {
            if (!value()) return 0
            ws(); c = substr(s, pos, 1); pos++
            if (c == "]") return 1
            if (c != ",") return 0
        }
    }
    { s = s $0 "\n" }
    END { n = length(s); pos = 1; good = value(); ws(); exit !(good && pos > n) }' "$1"
}
# CSV: exactly `rows` lines after the header, every line with the header's
# number of fields.
csv_ok() { # file rows [header-prefix]
    [ -s "$1" ] || return 1
    [ "$(($(wc -l < "$1") - 1))" -eq "$2" ] || return 1
    [ -z "$3" ] || head -n 1 "$1" | grep -q "^$3" || return 1
    awk -F, 'NR == 1 { n = NF } NF != n { exit 1 }' "$1"
}
# NPY v1.0 1-D float32: magic, version, "<f4" and shape (count,) in the
# header, data starting at a multiple of 64, file size header + 4 x count.
npy_ok() { # file count
    [ -s "$1" ] || return 1
    [ "$(od -An -tx1 -N8 "$1" | tr -d ' \n')" = "934e554d50590100" ] || return 1
    hlen=$(od -An -tu2 -j8 -N2 --endian=little "$1" 2>/dev/null | tr -d ' ')
    [ -n "$hlen" ] || hlen=$(od -An -tu1 -j8 -N2 "$1" | awk '{ print $1 + 256 * $2 }')
    head -c $((10 + hlen)) "$1" | grep -q "'descr': '<f4'" || return 1
    head -c $((10 + hlen)) "$1" | grep -q "'shape': ($2,)" || return 1
    [ $(((10 + hlen) % 64)) -eq 0 ] || return 1
    [ "$(wc -c < "$1" | tr -d ' ')" -eq $((10 + hlen + 4 * $2)) ]
}
json_has() { # file key...
    f=$1; shift
    for k in "$@"; do grep -q "\"$k\"" "$f" || return 1; done
}

# ---- options and errors ----------------------------------------------------
check "--help" sh -c "'$BIN' --help | grep -q -- '--preset'"
fails "unknown option" "$BIN" --bogus 1
fails "bad preset" "$BIN" --preset huge
fails "layer out of range" "$BIN" --preset tiny --layer 7 --out "$TMP/x"
fails "non-numeric value" "$BIN" --preset tiny --xc-steps many --out "$TMP/x"
fails "missing value" "$BIN" --out

# ---- the tiny pipeline -------------------------------------------------------
start=$(date +%s)
# one thread: OpenMP threads spinning at barriers crawl on a busy machine
if "$BIN" --preset tiny --threads 1 --out "$OUT" > "$TMP/log" 2>&1; then
    ok "tiny preset runs ($(($(date +%s) - start)) s)"
else
    bad "tiny preset runs (exit $?)"; tail -n 20 "$TMP/log"
fi
check "table printed" grep -q "^dense-only" "$TMP/log"
check "findings printed" grep -q "fewer MoE-only than dense-only latents?" "$TMP/log"

F=512; LM_STEPS=30; XC_STEPS=150; LAYERS=5; DOMAINS=3; EXPERTS=8   # the tiny preset
for p in r_hist cosine_hist density_hist lm_curves xc_curves fve_curve routing_heatmap; do
    check "$p.png: PNG with a plausible size" png_ok "$OUT/$p.png" 600 400
done
check "summary.json parses" json_ok "$OUT/summary.json"
check "summary.json keys" json_has "$OUT/summary.json" fve moe dense pooled l0 dead_fraction classes \
    moe-only shared dense-only designated dead bits_per_byte code science stories routing domain_share \
    findings fewer_moe_only_than_dense_only moe_only_denser_than_shared dense_only_sparser_than_shared answer
check "summary.json class counts add up to F" sh -c "
    sed -n '/\"classes\"/,/random_pair_cosine/p' '$OUT/summary.json' |
    sed -n 's/.*\"count\": \([0-9]*\).*/\1/p' | awk '{ s += \$1 } END { exit s != $F }'"
check "summary.json FVE is a number in (-inf, 1]" sh -c "
    grep -o '\"pooled\": [-0-9.e]*' '$OUT/summary.json' | awk '{ exit !(NF == 2 && \$2 <= 1) }'"
check "analysis.json parses" json_ok "$OUT/analysis.json"
printf '{"a": [1, 2,]}' > "$TMP/broken.json"
if json_ok "$TMP/broken.json"; then bad "json checker rejects a broken file"; else ok "json checker rejects a broken file"; fi
check "table.csv: 5 classes + random pairs" csv_ok "$OUT/table.csv" 6 "class,r_lo,r_hi,count"
check "lm_curves.csv: both models, every step" csv_ok "$OUT/lm_curves.csv" $((2 * LM_STEPS)) "model,step,loss"
check "lm_eval.csv: rows of both models" sh -c "[ \$(grep -c '^dense,' '$OUT/lm_eval.csv') -gt 0 ] && [ \$(grep -c '^moe,' '$OUT/lm_eval.csv') -eq \$(grep -c '^dense,' '$OUT/lm_eval.csv') ]"
check "xc_curves.csv: every step" csv_ok "$OUT/xc_curves.csv" $XC_STEPS "step,loss,fve_moe,fve_dense"
check "xc_eval_curve.csv: FVE over training" sh -c "[ \$(wc -l < '$OUT/xc_eval_curve.csv') -ge 3 ]"
check "routing.csv: layer x domain x expert" csv_ok "$OUT/routing.csv" $((LAYERS * DOMAINS * EXPERTS)) "layer,domain,expert,share"
for a in r cosine density norm_a norm_b class beta_moe beta_dense nu beta_err_moe beta_err_dense nu_err counts; do
    check "latent_$a.npy: float32 ($F,)" npy_ok "$OUT/latent_$a.npy" $F
done
check "crosscoder.safetensors written" test -s "$OUT/crosscoder.safetensors"
check "corpus.tok written" test -s "$OUT/corpus.tok"
if [ -x "$BUILD/moexc_train" ]; then
    for m in dense moe; do
        check "$m.ckpt loads in moexc_train --sample" "$BUILD/moexc_train" --sample "$OUT/$m.ckpt" --length 8 --prompt "a"
    done
else
    bad "$BUILD/moexc_train not built"
fi
check "no temporary files left" sh -c "! ls '$OUT' | grep -q '\.tmp'"

# ---- two threads: the two LMs at once (one thread each), the crosscoder on both
# Each LM runs on one thread either way, so its checkpoint has the bits of the
# one-thread run above; two 2-thread runs agree bit for bit. Idle OpenMP
# threads sleep (passive), as two busy-waiting threads crawl on a shared machine.
for r in 1 2; do
    if OMP_WAIT_POLICY=passive "$BIN" --preset tiny --threads 2 --out "$TMP/t2_$r" > "$TMP/log2" 2> "$TMP/err2"; then
        ok "tiny preset on 2 threads, run $r"
    else
        bad "tiny preset on 2 threads, run $r (exit $?)"; tail -n 20 "$TMP/err2"
    fi
done
for m in dense moe; do
    check "2 threads: $m.ckpt has the 1-thread bits" cmp "$OUT/$m.ckpt" "$TMP/t2_1/$m.ckpt"
done
for f in dense.ckpt moe.ckpt crosscoder.safetensors latent_r.npy; do
    check "2 threads, twice: the same $f" cmp "$TMP/t2_1/$f" "$TMP/t2_2/$f"
done
# on 2 threads the lens figures are queued and encoded at the end (to .tmp, then renamed)
for p in lens_concentration lens_perplexity expert_purity; do
    check "2 threads: $p.png as the 1-thread run's" cmp "$OUT/$p.png" "$TMP/t2_1/$p.png"
done
check "2 threads: no temporary files left" sh -c "! ls '$TMP/t2_1' | grep -q '\.tmp'"
check "2 threads: progress lines whole, each with its model's prefix" sh -c "
    grep -q '^  \[dense\] step' '$TMP/err2' && grep -q '^  \[moe  \] step' '$TMP/err2' &&
    ! grep -v '^  \[\(dense\|moe  \|xc\)\] ' '$TMP/err2'"

# ---- seed controls (--controls): dense vs dense', MoE vs MoE', 2 crosscoder seeds
C=$TMP/ctl
start=$(date +%s)
if OMP_WAIT_POLICY=passive "$BIN" --preset tiny --threads 2 --controls --seeds 2 --out "$C" > "$TMP/logc" 2> "$TMP/errc"; then
    ok "tiny preset with controls, 2 seeds ($(($(date +%s) - start)) s)"
else
    bad "tiny preset with controls (exit $?)"; tail -n 20 "$TMP/errc"
fi
check "controls: table printed for the three pairs" sh -c "
    grep -q '^moe-vs-dense ' '$TMP/logc' && grep -q '^dense-vs-dense ' '$TMP/logc' && grep -q '^moe-vs-moe ' '$TMP/logc'"
for f in 'fewer MoE-only than dense-only latents' 'MoE-only denser than shared' 'dense-only sparser than shared'; do
    check "controls: verdict printed: $f" sh -c "grep '^  $f: ' '$TMP/logc' |
        grep -q -e 'holds' -e 'reversed' -e 'not distinguishable' -e 'mixed across seeds' -e 'no data'"
done
check "controls: summary.json parses" json_ok "$C/summary.json"
check "controls: summary.json keys" json_has "$C/summary.json" controls n_seeds pairs moe-vs-dense dense-vs-dense \
    moe-vs-moe count_mean_sd density_median_mean_sd cos_raw_mean_sd cos_aligned_mean_sd overlap_exclusive verdicts \
    verdict per_seed
check "controls: each pair's class counts add up to F in every seed" sh -c "
    awk -F, 'NR > 1 && \$3 != \"random_pairs\" { s[\$1 \",\" \$2] += \$4 }
             END { n = 0; for (k in s) { n++; if (s[k] != $F) exit 1 } exit n != 6 }' '$C/controls.csv'"
check "controls.csv: 3 pairs x 2 seeds x (5 classes + random)" csv_ok "$C/controls.csv" 36 "pair,seed,class,count"
for p in r_hist_controls class_counts_controls cosine_aligned; do
    check "$p.png: PNG with a plausible size" png_ok "$C/$p.png" 600 400
done
for m in dense moe; do check "controls: ${m}_twin.ckpt written" test -s "$C/${m}_twin.ckpt"; done
check "controls leave the study's own crosscoder unchanged (same bits as without)" \
    cmp "$TMP/t2_1/crosscoder.safetensors" "$C/crosscoder.safetensors"
check "controls: progress lines whole, with their pair's prefix" sh -c "
    grep -q '^  \[dense-vs-dense\] step' '$TMP/errc' && ! grep -v '^  \[\(dense\|moe  \|dense.\|moe. \|xc\|moe-vs-dense\|dense-vs-dense\|moe-vs-moe\)\] ' '$TMP/errc'"

# ---- --data: a corpus built by moexc_mkdata from files and directories -----
if [ -x "$BUILD/moexc_mkdata" ]; then
    "$BUILD/moexc_mkdata" --domain code=tools --domain prose=README.md --out "$TMP/own.tok" > /dev/null 2>&1
    if OMP_WAIT_POLICY=passive "$BIN" --preset tiny --threads 2 --data "$TMP/own.tok" --out "$TMP/own" > "$TMP/logd" 2>&1; then
        ok "--data: the tiny study on a moexc_mkdata corpus of two domains"
    else
        bad "--data runs (exit $?)"; tail -n 20 "$TMP/logd"
    fi
    check "--data: summary.json names the file's domains" sh -c "
        grep -q '\"prose\"' '$TMP/own/summary.json' && grep -q '\"code\"' '$TMP/own/summary.json' &&
        ! grep -q '\"stories\"' '$TMP/own/summary.json'"
    check "--data: routing.csv has 5 layers x 2 domains x 8 experts" csv_ok "$TMP/own/routing.csv" 80 "layer,domain,expert,share"
else
    bad "$BUILD/moexc_mkdata not built"
fi
fails "--data: a missing file" "$BIN" --preset tiny --data "$TMP/none.tok" --out "$TMP/x"
check "--data: the message names the missing file" grep -q "none.tok" "$TMP/err"
printf 'not a token file at all, just text' > "$TMP/junk.tok"
fails "--data: a file that is not a token file" "$BIN" --preset tiny --data "$TMP/junk.tok" --out "$TMP/x"
check "--data: the message names the bad file" grep -q "junk.tok" "$TMP/err"
printf 'int main(void) { return 0; }\n' > "$TMP/small.c"
"$BUILD/moexc_mkdata" --domain tiny="$TMP/small.c" --out "$TMP/small.tok" > /dev/null 2>&1
fails "--data: a domain too small to hold out a window" "$BIN" --preset tiny --data "$TMP/small.tok" --out "$TMP/x"
fails "an unwritable report folder fails before the work" "$BIN" --preset tiny --out /proc
fails "--seeds 0" "$BIN" --preset tiny --seeds 0 --out "$TMP/x"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
