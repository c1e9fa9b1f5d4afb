#!/bin/sh
# tests/valgrind_readers.sh [BUILD] - valgrind memcheck of the tools on
# hostile files (`make valgrind-readers`; not part of `make test`: about 7
# minutes). BUILD (default build-vg) must hold a build without AVX-512,
# which valgrind cannot run (make BUILD=build-vg NATIVE=0 OPENMP=0 ...):
# moexc_crosscoder, moexc_train, moexc_lens, moexc_report, moexc_sae, make_fuzz_seeds.
#
# make_fuzz_seeds --hostile writes small valid files of every format and
# their damaged versions (truncated, single bits flipped, oversized shapes);
# each is fed to the tools that read it: model files to moexc_lens and
# moexc_report, training checkpoints to moexc_train --resume, token files to
# moexc_lens and moexc_train, crosscoders to moexc_crosscoder --eval and
# --resume and moexc_report, SAEs (inference files and training checkpoints)
# to moexc_sae --eval, activation caches to moexc_crosscoder --cache.
# A run passes when valgrind reports no error (invalid access, uninitialised
# value, definite or indirect leak), the tool is not killed by a signal, and
# a failing tool says why on stderr. (.npy files have no tool reader; the
# .npy reader is covered by tests/fuzz_npy.c under ASan.)
BUILD=${1:-build-vg}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/moexc_vg.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
VG="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect"
passed=0
failed=0
for t in moexc_crosscoder moexc_train moexc_lens moexc_report moexc_sae make_fuzz_seeds; do
    [ -x "$BUILD/$t" ] || { echo "valgrind_readers: $BUILD/$t is missing"; exit 1; }
done
command -v valgrind >/dev/null || { echo "valgrind_readers: valgrind is not installed"; exit 1; }
S=$TMP/seeds
mkdir -p "$S/hostile" || exit 1
"$BUILD/make_fuzz_seeds" --hostile "$S" >/dev/null || exit 1

# run DESCRIPTION TOOL ARGS...: one tool under memcheck
run() {
    desc=$1; shift
    tool=$1; shift
    rm -rf "$TMP/out"
    $VG "$BUILD/$tool" "$@" >/dev/null 2>"$TMP/err"
    rc=$?
    if [ $rc -eq 99 ]; then
        failed=$((failed + 1)); echo "FAIL $desc: valgrind errors"; grep '^==' "$TMP/err" | head -20
    elif [ $rc -ge 128 ]; then
        failed=$((failed + 1)); echo "FAIL $desc: killed by signal $((rc - 128))"
    elif [ $rc -ne 0 ] && ! grep -qv '^==' "$TMP/err"; then
        failed=$((failed + 1)); echo "FAIL $desc: exit $rc without a message"
    else
        passed=$((passed + 1))
        if [ $rc -eq 0 ]; then echo "ok   $desc (accepted)"
        else echo "ok   $desc: $(grep -v '^==' "$TMP/err" | tail -n 1 | cut -c1-150)"; fi
    fi
}

M=$S/model_moe.safetensors; D=$S/model_dense.safetensors; T=$S/tokens.tok
XC="--layer 0 --seq-len 8 --eval-pairs 64 --init-pairs 64 --shuffle 256"
lens()   { run "moexc_lens $1" moexc_lens --model "$2" --tokens "$3" --out "$TMP/out" --no-plots --no-sweep --seqs 2 --seq-len 8; }
report() { run "moexc_report $1" moexc_report --tokens "$T" --moe "$2" --dense "$D" --xc "$3" --out "$TMP/out" --layer 0 --seq-len 8 --seqs 2; }
train()  { run "moexc_train --resume $1" moexc_train --resume "$2" --data "$3"; }
xceval() { run "moexc_crosscoder --eval $1" moexc_crosscoder --eval "$2" --model-a "$M" --model-b "$D" --tokens "$T" $XC; }
xcres()  { run "moexc_crosscoder --resume $1" moexc_crosscoder --resume "$2" --model-a "$M" --model-b "$D" --tokens "$T" $XC; }
saeeval() { run "moexc_sae --eval $1" moexc_sae --eval "$2" --model "$M" --tokens "$T" --layer 0 --seq-len 8 --eval-rows 64 --train-rows 64; }
xccache() { run "moexc_crosscoder --cache $1" moexc_crosscoder --cache "$2" --latents 16 --k 2 --steps 2 --batch 4 --init-pairs 8 --eval-pairs 4; }

# the intact files first: the commands work and are clean
lens intact "$M" "$T"
report intact "$M" "$S/xc_infer.safetensors"
train intact "$S/train_dense.ckpt" "$T"
xceval intact "$S/xc_infer.safetensors"
xcres intact "$S/xc_train.safetensors"
xccache intact "$S/acts.cache"
for f in "$S"/sae_*.safetensors; do saeeval "intact ${f##*/}" "$f"; done

for f in "$S"/hostile/*; do
    n=${f##*/}
    case $n in
        model_moe.*)   lens "$n" "$f" "$T"; report "$n" "$f" "$S/xc_infer.safetensors" ;;
        model_dense.*) lens "$n" "$f" "$T"; run "moexc_report $n (as --dense)" moexc_report --tokens "$T" --moe "$M" --dense "$f" \
                           --xc "$S/xc_infer.safetensors" --out "$TMP/out" --layer 0 --seq-len 8 --seqs 2 ;;
        train_*)       train "$n" "$f" "$T" ;;
        tokens.*)      lens "$n" "$M" "$f"; train "$n (as --data)" "$S/train_dense.ckpt" "$f" ;;
        xc_train.*)    xcres "$n" "$f" ;;
        xc_*)          xceval "$n" "$f"; report "$n" "$M" "$f" ;;
        sae_*)         saeeval "$n" "$f" ;;
        acts.*)        xccache "$n" "$f" ;;
        array.*)       ;;   # no tool reads .npy (see above)
        *)             echo "valgrind_readers: no reader for $n"; failed=$((failed + 1)) ;;
    esac
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
