#!/bin/sh
# tests/test_mpi.sh - data-parallel training over MPI (SPEC §9), run by
# `make mpitest`:
#   sh tests/test_mpi.sh MPI_BUILD [DEFAULT_BUILD]   the tests
#   sh tests/test_mpi.sh --bench MPI_BUILD           2 ranks x 1 thread vs 1 x 1
# MPI_BUILD holds moexc_train, moexc_crosscoder (built with make MPI=1) and
# st_maxdiff. The tests train the dense LM, the MoE LM and the crosscoder
# for a few steps on 1 rank and on 2 ranks (mpirun --oversubscribe, one
# thread each) with the same global batch: the parameters must agree within
# a float tolerance (the sums are ordered differently) and both ranks must
# end with identical bits. A resumed 2-rank run must equal the uninterrupted
# one bit for bit; the MPI build on 1 rank must equal the default build bit
# for bit (LM). A batch the rank count does not divide and mismatched options
# across ranks must end in a clear error, not a hang (timeout 120 s each).
# Prints "N passed, N failed" last.
set -u
BENCH=0
if [ "${1:-}" = "--bench" ]; then BENCH=1; shift; fi
B=${1:?usage: test_mpi.sh [--bench] MPI_BUILD [DEFAULT_BUILD]}
DEF=${2:-}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
# idle ranks yield the CPU (mpi_yield_when_idle) and float over the cores (--bind-to none): the machine
# may be shared, and a rank spinning in a sum steals the core its partner computes on
MPIRUN="mpirun --oversubscribe --allow-run-as-root --bind-to none --mca mpi_yield_when_idle 1 -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moexc_mpi.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
passed=0 failed=0
pass() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; [ -n "${2:-}" ] && [ -f "$2" ] && sed 's/^/     /' "$2" | tail -n 15; failed=$((failed + 1)); }
run() {   # log, command...: run under a timeout, output to log; returns the exit status
    log=$1; shift
    timeout 120 "$@" > "$log" 2>&1
}

# LM tolerance: 4 to 6 Adam steps at lr 1e-3 to 3e-3; the float sums of the
# gradient in another order move a parameter by a few 1e-6 (tests/test_dp.c
# measures 2e-6 to 5e-6); 5e-5 is an order above that, and 3 orders below
# what a wrong reduction gives (a local Switch f_i: 1e-2).
LM_TOL=5e-5
XC_TOL=1e-4
# within tolerance: awk exits 0 when $1 <= $2
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }

LM_ARGS="--builtin 20000 --d-model 32 --heads 2 --layers 2 --context 32 --seq-len 32 --batch 4 --steps 6
         --lr 2e-3 --warmup 1 --eval-interval 3 --eval-batches 2 --log-every 1"
MOE_ARGS="--ffn moe --experts 4 --moe-k 2"

if [ $BENCH = 1 ]; then
    # ---- bench: throughput of 2 ranks x 1 thread against 1 rank x 1 thread ----
    echo "bench-mpi: machine load $(cut -d' ' -f1-3 /proc/loadavg) on $(getconf _NPROCESSORS_ONLN) CPUs (1-minute, 5, 15)"
    BL="--builtin 100000 --d-model 64 --heads 4 --layers 4 --context 64 --batch 16 --steps 30 --eval-interval -1 --log-every 1000"
    $MPIRUN -np 1 "$B/moexc_train" $BL --export "$WORK/d.st" > /dev/null 2>&1
    $MPIRUN -np 1 "$B/moexc_train" $BL --ffn moe --export "$WORK/m.st" > /dev/null 2>&1
    XA="--model-a $WORK/m.st --model-b $WORK/d.st --corpus 100000 --layer 2 --seq-len 64 --latents 2048 --k 32
        --batch 1024 --init-pairs 4096 --eval-pairs 1024 --shuffle 8192 --log-every 1000"
    $MPIRUN -np 1 "$B/moexc_crosscoder" $XA --steps 30 --cache-write "$WORK/c.cache" > /dev/null 2>&1
    # CPU seconds (user + sys of all ranks, start-up included) by /usr/bin/time when present
    TIMER=""; [ -x /usr/bin/time ] && TIMER="/usr/bin/time -f %U+%S -o $WORK/cpu"
    cpu() { if [ -f "$WORK/cpu" ]; then awk -F+ 'NR == 1 { printf "%.1f", $1 + $2 }' "$WORK/cpu"; else echo "?"; fi; }
    for rep in 1 2; do   # interleaved: 1 rank, 2 ranks, 1 rank, 2 ranks
        for np in 1 2; do
            rm -f "$WORK/cpu"
            lm=$($TIMER $MPIRUN -np $np "$B/moexc_train" $BL 2>/dev/null | sed -n 's/^trained \([0-9]*\) steps in \([0-9.]*\) s$/\2/p')
            lc=$(cpu); rm -f "$WORK/cpu"
            $TIMER $MPIRUN -np $np "$B/moexc_crosscoder" $XA --cache "$WORK/c.cache" --steps 40 > "$WORK/xc$np.log" 2>&1
            xc=$(cpu)
            xr=$(sed -n 's/.* \([0-9]*\) samples\/s.*/\1/p' "$WORK/xc$np.log" | tail -n 1)
            echo "  run $rep, $np rank(s) x 1 thread: LM dense d 64 (30 steps of 16 x 64 tokens) $lm s," \
                 "$(awk -v t="$lm" 'BEGIN { printf "%.0f", 30 * 16 * 64 / t }') tok/s, $lc CPU s;" \
                 "crosscoder F 2048 k 32 batch 1024 (40 steps): $xr pairs/s, $xc CPU s"
            eval "lm$np=\"\${lm$np:-} $lm\"; xr$np=\"\${xr$np:-} $xr\""
        done
    done
    # best of the two runs of each
    best_lm1=$(echo $lm1 | tr ' ' '\n' | sort -g | head -n 1); best_lm2=$(echo $lm2 | tr ' ' '\n' | sort -g | head -n 1)
    best_x1=$(echo $xr1 | tr ' ' '\n' | sort -g | tail -n 1); best_x2=$(echo $xr2 | tr ' ' '\n' | sort -g | tail -n 1)
    echo "bench-mpi: speed-up of 2 ranks x 1 thread over 1 rank x 1 thread (best of 2 each): LM" \
         "$(awk -v a="$best_lm1" -v b="$best_lm2" 'BEGIN { printf "%.2f", a / b }')x, crosscoder" \
         "$(awk -v a="$best_x1" -v b="$best_x2" 'BEGIN { printf "%.2f", b / a }')x"
    echo "bench-mpi: machine load after $(cut -d' ' -f1-3 /proc/loadavg)"
    exit 0
fi

# ---- 1. the dense and the MoE LM: 1 rank vs 2 ranks ----------------------------
for kind in dense moe; do
    extra=""; [ $kind = moe ] && extra=$MOE_ARGS
    if run "$WORK/$kind.1.log" $MPIRUN -np 1 "$B/moexc_train" $LM_ARGS $extra --save "$WORK/$kind.1.ckpt" --export "$WORK/$kind.st" &&
       run "$WORK/$kind.2.log" $MPIRUN -np 2 "$B/moexc_train" $LM_ARGS $extra --save "$WORK/$kind.2.ckpt"; then
        pass "$kind LM trains on 1 and on 2 ranks"
    else fail "$kind LM: a run failed" "$WORK/$kind.2.log"; continue; fi
    if grep -q "^ranks: all 2 hold identical parameters" "$WORK/$kind.2.log"; then pass "$kind LM: both ranks end with identical bits"
    else fail "$kind LM: the ranks' parameters differ" "$WORK/$kind.2.log"; fi
    cmp=$("$B/st_maxdiff" "$WORK/$kind.1.ckpt" "$WORK/$kind.2.ckpt")
    d=$(echo "$cmp" | awk '{ print $2 }')
    echo "     $kind LM, 6 steps, global batch 4: 1 rank vs 2 ranks: $cmp"
    if [ -n "$d" ] && le "$d" $LM_TOL; then pass "$kind LM: parameters and moments of 2 ranks within $LM_TOL of 1 rank (max $d)"
    else fail "$kind LM: 1 vs 2 ranks differ by $d > $LM_TOL"; fi
    l1=$(grep "^step     6/6" "$WORK/$kind.1.log" | sed 's/ *[0-9]* tok\/s.*//'); l2=$(grep "^step     6/6" "$WORK/$kind.2.log" | sed 's/ *[0-9]* tok\/s.*//')
    echo "     1 rank:  $l1"; echo "     2 ranks: $l2"
    # the MPI build on 1 rank is the default build, bit for bit
    if [ -n "$DEF" ] && [ -x "$DEF/moexc_train" ]; then
        if run "$WORK/$kind.def.log" "$DEF/moexc_train" $LM_ARGS $extra --save "$WORK/$kind.def.ckpt" &&
           "$B/st_maxdiff" "$WORK/$kind.1.ckpt" "$WORK/$kind.def.ckpt" | grep -q "^max_abs_diff 0 "; then
            pass "$kind LM: the MPI build on 1 rank equals the default build bit for bit"
        else fail "$kind LM: MPI build on 1 rank vs default build" "$WORK/$kind.def.log"; fi
    fi
done

# ---- 2. --resume under MPI: stop after step 1, resume on 2 ranks -------------
if run "$WORK/res.a.log" $MPIRUN -np 2 "$B/moexc_train" $LM_ARGS $MOE_ARGS --time-limit 1e-9 --save "$WORK/res.ckpt" &&
   grep -q "time limit .* at step 1" "$WORK/res.a.log" &&
   run "$WORK/res.b.log" $MPIRUN -np 2 "$B/moexc_train" --builtin 20000 --resume "$WORK/res.ckpt" --log-every 1 --save "$WORK/res2.ckpt" &&
   grep -q "resumed from .* at step 1" "$WORK/res.b.log"; then
    cmp=$("$B/st_maxdiff" "$WORK/moe.2.ckpt" "$WORK/res2.ckpt")
    echo "     MoE LM on 2 ranks, stopped after step 1 and resumed on 2 ranks vs uninterrupted: $cmp"
    if echo "$cmp" | grep -q "^max_abs_diff 0 "; then pass "--resume on 2 ranks reproduces the uninterrupted 2-rank run bit for bit"
    else fail "--resume on 2 ranks: $cmp"; fi
else fail "--resume under MPI" "$WORK/res.b.log"; fi

# ---- 3. the crosscoder: 1 rank vs 2 ranks (harvesting, and from a cache) ------
XC_ARGS="--model-a $WORK/moe.st --model-b $WORK/dense.st --corpus 20000 --layer 1 --seq-len 32 --latents 128 --k 4
         --shared 8 --batch 64 --steps 20 --warmup 2 --lr 2e-3 --init-pairs 256 --eval-pairs 512 --shuffle 1024
         --dead-tokens 320 --log-every 5"
if [ -f "$WORK/moe.st" ] && [ -f "$WORK/dense.st" ]; then
    for src in harvest cache; do
        extra=""; [ $src = cache ] && extra="--cache $WORK/xc.cache"
        [ $src = harvest ] && extra0="--cache-write $WORK/xc.cache" || extra0=""
        if run "$WORK/xc.$src.1.log" $MPIRUN -np 1 "$B/moexc_crosscoder" $XC_ARGS $extra $extra0 --checkpoint "$WORK/xc.$src.1.st" &&
           run "$WORK/xc.$src.2.log" $MPIRUN -np 2 "$B/moexc_crosscoder" $XC_ARGS $extra --checkpoint "$WORK/xc.$src.2.st"; then
            pass "crosscoder ($src) trains on 1 and on 2 ranks"
        else fail "crosscoder ($src): a run failed" "$WORK/xc.$src.2.log"; continue; fi
        if grep -q "^ranks: all 2 hold identical parameters" "$WORK/xc.$src.2.log"; then pass "crosscoder ($src): both ranks end with identical bits"
        else fail "crosscoder ($src): the ranks' parameters differ" "$WORK/xc.$src.2.log"; fi
        cmp=$("$B/st_maxdiff" "$WORK/xc.$src.1.st" "$WORK/xc.$src.2.st")
        d=$(echo "$cmp" | awk '{ print $2 }')
        echo "     crosscoder ($src), 20 steps, global batch 64: 1 rank vs 2 ranks: $cmp"
        if [ -n "$d" ] && le "$d" $XC_TOL; then pass "crosscoder ($src): 2 ranks within $XC_TOL of 1 rank (max $d)"
        else fail "crosscoder ($src): 1 vs 2 ranks differ by $d > $XC_TOL"; fi
        e1=$(grep "^held-out" "$WORK/xc.$src.1.log"); e2=$(grep "^held-out" "$WORK/xc.$src.2.log")
        echo "     1 rank:  $e1"; echo "     2 ranks: $e2"
        if grep -q "dead 0\.[0-9]*[1-9]" "$WORK/xc.$src.1.log"; then pass "crosscoder ($src): some latents died, AuxK took part"
        else fail "crosscoder ($src): no dead latents, AuxK untested" "$WORK/xc.$src.1.log"; fi
    done
    # --resume of a crosscoder checkpoint on 2 ranks (at its last step: loads, attaches the hook, evaluates)
    if run "$WORK/xc.res.log" $MPIRUN -np 2 "$B/moexc_crosscoder" $XC_ARGS --cache "$WORK/xc.cache" --resume "$WORK/xc.cache.2.st" &&
       grep -q "^resumed .* at step 20 of 20" "$WORK/xc.res.log" &&
       [ "$(grep '^held-out' "$WORK/xc.res.log")" = "$(grep '^held-out' "$WORK/xc.cache.2.log")" ]; then
        pass "crosscoder: --resume on 2 ranks (same held-out figures as the run that wrote the checkpoint)"
    else fail "crosscoder: --resume on 2 ranks" "$WORK/xc.res.log"; fi
else fail "crosscoder: no LM files from part 1"; fi

# ---- 4. errors, not hangs ---------------------------------------------------------
run "$WORK/bad.log" $MPIRUN -np 3 "$B/moexc_train" $LM_ARGS
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "batch_size 4 is not divisible by the 3 workers" "$WORK/bad.log"; then
    pass "LM: --batch 4 on 3 ranks: a clear error (exit $rc)"
else fail "LM: --batch 4 on 3 ranks (exit $rc; 124 = timeout)" "$WORK/bad.log"; fi
if [ -f "$WORK/moe.st" ]; then
    run "$WORK/bad2.log" $MPIRUN -np 3 "$B/moexc_crosscoder" $XC_ARGS
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "batch 64 is not divisible by the 3 ranks" "$WORK/bad2.log"; then
        pass "crosscoder: --batch 64 on 3 ranks: a clear error (exit $rc)"
    else fail "crosscoder: --batch 64 on 3 ranks (exit $rc)" "$WORK/bad2.log"; fi
fi
run "$WORK/mis.log" $MPIRUN -np 1 "$B/moexc_train" $LM_ARGS --lr 1e-3 : -np 1 "$B/moexc_train" $LM_ARGS --lr 2e-3
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "the 2 workers differ in their options, data or state" "$WORK/mis.log"; then
    pass "LM: --lr differing across ranks: a clear error (exit $rc)"
else fail "LM: mismatched --lr (exit $rc)" "$WORK/mis.log"; fi
if [ -f "$WORK/moe.st" ]; then
    run "$WORK/mis2.log" $MPIRUN -np 1 "$B/moexc_crosscoder" $XC_ARGS --k 4 : -np 1 "$B/moexc_crosscoder" $XC_ARGS --k 8
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "the 2 workers differ in their options, data or state" "$WORK/mis2.log"; then
        pass "crosscoder: --k differing across ranks: a clear error (exit $rc)"
    else fail "crosscoder: mismatched --k (exit $rc)" "$WORK/mis2.log"; fi
fi
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
