#!/bin/sh
# tests/test_crashsafe.sh - runs that survive kill -9, diverging runs that stop
# cleanly, and outputs checked before any work (issue 14, items 3 and 4).
#
#   1. moexc_train --save-every 1 is killed (SIGKILL) KILLS times: half at a
#      random moment, half inside a save (after a random delay the test waits
#      for "<ckpt>.tmp" to appear, i.e. the checkpoint is being written, and
#      kills then). A kill counts as "during a save" when the .tmp file is
#      still there afterwards (written, not yet renamed). After every kill the
#      last checkpoint must load (a resume that takes one step); the run is
#      then resumed, and the final checkpoint must equal, byte for byte, the
#      one of an uninterrupted run (same seed, same thread count).
#   2. The same for moexc_crosscoder --checkpoint --save-every 1 --resume,
#      comparing both the final training checkpoint and the inference file.
#      And its two schedules (the next batch drawn after the step, or during
#      it on the other thread; the probe runs both on the first steps): a
#      2-thread run that reports its choice saves the same bytes as a
#      1-thread run.
#   3. A diverging run (a huge learning rate) of either trainer stops with an
#      error naming the step and the tensor, and its last checkpoint (from
#      before the divergence) loads and diverges again at the same step.
#   4. Every tool and the demo refuse an output path they cannot write, at
#      once, naming the path.
# Needs build/moexc_train, moexc_crosscoder, moexc_mkdata, moexc_lens,
# moexc_report, moexc_demo (make test builds them). Prints "N passed, N failed".
cd "$(dirname "$0")/.." || exit 1
B=${BUILD:-build}
W=$B/crashsafe
KILLS=${KILLS:-8}
rm -rf "$W"; mkdir -p "$W"
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive
passed=0; failed=0
ok()   { echo "ok   $1"; passed=$((passed + 1)); }
bad()  { echo "FAIL $1"; [ -n "$2" ] && [ -f "$2" ] && sed 's/^/     /' "$2" | head -n 15; failed=$((failed + 1)); }
rand() { od -An -N2 -tu2 /dev/urandom | tr -d ' '; }   # 0..65535
# a random delay in seconds between $1 and $2
delay() { awk -v r="$(rand)" -v lo="$1" -v hi="$2" 'BEGIN { printf "%.3f", lo + (hi - lo) * r / 65535 }'; }
size() { wc -c < "$1" | tr -d ' '; }

for b in moexc_train moexc_crosscoder moexc_mkdata moexc_lens moexc_report moexc_demo; do
    [ -x "$B/$b" ] || { echo "FAIL $B/$b not built"; echo "0 passed, 1 failed"; exit 1; }
done

# kill_loop LABEL CKPT KILLS "fresh command" "resume command" "load check command"
# Starts the run (fresh while no checkpoint exists, else resumed), kills it,
# checks the checkpoint loads; KILLS times. Sets n_killed, n_in_save, n_loaded.
kill_loop() {
    label=$1 ckpt=$2 kills=$3 fresh=$4 resume=$5 load=$6
    n_killed=0; n_in_save=0; n_loaded=0; n_finished=0; last_step=-1
    i=0
    while [ $i -lt "$kills" ]; do
        i=$((i + 1))
        if [ -f "$ckpt" ]; then cmd=$resume; else cmd=$fresh; fi
        mode=random
        [ $((i % 2)) = 0 ] && mode=save && rm -f "$ckpt.tmp"
        d=$(delay 0.1 0.6)   # KILLS x 0.6 s stays below each run's length with --save-every 1
        sh -c "exec $cmd" > "$W/$label.run$i.log" 2>&1 &
        pid=$!
        sleep "$d"
        if [ $mode = save ]; then   # wait for a save to start (bounded: 20 s)
            t_end=$(( $(date +%s) + 20 )) n=0
            while [ ! -e "$ckpt.tmp" ] && kill -0 $pid 2>/dev/null; do
                n=$((n + 1))
                [ $((n % 20000)) = 0 ] && [ "$(date +%s)" -ge $t_end ] && break
            done
        fi
        if kill -9 $pid 2>/dev/null; then n_killed=$((n_killed + 1)); else n_finished=$((n_finished + 1)); fi
        wait $pid 2>/dev/null
        where="at a random moment"
        if [ -e "$ckpt.tmp" ]; then
            n_in_save=$((n_in_save + 1))
            where="during a save (${ckpt##*/}.tmp had $(size "$ckpt.tmp") bytes)"
        fi
        echo "     $label kill $i after $d s ($mode): $where"
        if [ ! -f "$ckpt" ]; then echo "     (no checkpoint yet)"; continue; fi
        if sh -c "$load" > "$W/$label.load$i.log" 2>&1; then
            step=$(sed -n 's/^\(resumed\|evaluating\) .* at step \([0-9]*\).*/\2/p' "$W/$label.load$i.log" | head -n 1)
            if [ -n "$step" ] && [ "$step" -ge "$last_step" ]; then
                n_loaded=$((n_loaded + 1)); last_step=$step
                echo "     checkpoint loads: step $step"
            else bad "$label: checkpoint after kill $i: no step, or step $step < $last_step" "$W/$label.load$i.log"; fi
        else bad "$label: checkpoint after kill $i does not load" "$W/$label.load$i.log"; fi
    done
}

# ---- 1. moexc_train ----------------------------------------------------------
# 3000 steps with a save after each take ~8 s here: the kills (at most 8 x
# 0.6 s of progress) cannot finish the run, else later runs end unkilled.
LM="--builtin 30000 --d-model 32 --heads 2 --layers 2 --context 32 --batch 4 --steps 3000 --eval-interval 750 --eval-batches 2 --log-every 100000"
LMDATA="--builtin 30000"
t0=$(date +%s)
if $B/moexc_train $LM --save "$W/lm_ref.ckpt" > "$W/lm_ref.log" 2>&1; then
    kill_loop lm "$W/lm.ckpt" "$KILLS" \
        "$B/moexc_train $LM --save $W/lm.ckpt --save-every 1" \
        "$B/moexc_train --resume $W/lm.ckpt $LMDATA --save $W/lm.ckpt --save-every 1 --log-every 100000" \
        "$B/moexc_train --resume $W/lm.ckpt $LMDATA --time-limit 1e-9 --log-every 100000"
    if [ -f "$W/lm.ckpt" ]; then c="--resume $W/lm.ckpt $LMDATA"; else c=$LM; fi
    $B/moexc_train $c --save "$W/lm.ckpt" --save-every 1 --log-every 100000 > "$W/lm_final.log" 2>&1
    if [ $n_in_save -lt 1 ] || [ $n_killed -lt $((KILLS / 2)) ]; then
        bad "moexc_train: $n_killed kills, $n_in_save during a save (want >= $((KILLS / 2)) kills, >= 1 in a save)"
    elif [ $n_loaded -lt 1 ]; then bad "moexc_train: no checkpoint was ever checked"
    elif cmp -s "$W/lm.ckpt" "$W/lm_ref.ckpt"; then
        ok "moexc_train: $n_killed kills ($n_in_save during a save), the checkpoint loaded after each ($n_loaded checks); resumed run == uninterrupted run, byte for byte ($(size "$W/lm.ckpt") bytes; $(( $(date +%s) - t0 )) s)"
    else bad "moexc_train: the resumed run's checkpoint differs from the uninterrupted run's" "$W/lm_final.log"; fi
else bad "moexc_train: reference run" "$W/lm_ref.log"; fi

# ---- 2. moexc_crosscoder -------------------------------------------------------
t0=$(date +%s)
for f in dense moe; do
    $B/moexc_train --builtin 30000 --ffn $f --d-model 32 --heads 2 --layers 2 --context 32 --batch 4 --steps 20 \
        --eval-interval -1 --log-every 100000 --export "$W/$f.st" > "$W/$f.log" 2>&1 || bad "training the $f model" "$W/$f.log"
done
XD="--model-a $W/moe.st --model-b $W/dense.st --corpus 30000 --layer 1 --seq-len 32 --shuffle 4096 --eval-pairs 512 --init-pairs 1024 --log-every 100000"
XC="$XD --latents 256 --k 8 --batch 128 --steps 2500"
OMP_NUM_THREADS=1 $B/moexc_crosscoder $XD --latents 256 --k 8 --batch 128 --steps 40 --save "$W/xc_1t.xc" > "$W/xc_1t.log" 2>&1
OMP_NUM_THREADS=2 $B/moexc_crosscoder $XD --latents 256 --k 8 --batch 128 --steps 40 --save "$W/xc_2t.xc" > "$W/xc_2t.log" 2>&1
choice=$(sed -n 's/^schedule: .*; \(.*\) from here on$/\1/p' "$W/xc_2t.log")
if [ -n "$choice" ] && [ -s "$W/xc_1t.xc" ] && cmp -s "$W/xc_1t.xc" "$W/xc_2t.xc"; then
    ok "moexc_crosscoder: both schedules probed on 2 threads (then: $choice); the same bytes as on 1 thread"
else bad "moexc_crosscoder: a 2-thread run (schedule line: '$choice') against a 1-thread run" "$W/xc_2t.log"; fi
if $B/moexc_crosscoder $XC --checkpoint "$W/xc_ref.xck" --save "$W/xc_ref.xc" > "$W/xc_ref.log" 2>&1; then
    kill_loop xc "$W/xc.xck" "$KILLS" \
        "$B/moexc_crosscoder $XC --checkpoint $W/xc.xck --save-every 1 --save $W/xc.xc" \
        "$B/moexc_crosscoder $XD --resume $W/xc.xck --checkpoint $W/xc.xck --save-every 1 --save $W/xc.xc" \
        "$B/moexc_crosscoder $XD --eval $W/xc.xck"
    if [ -f "$W/xc.xck" ]; then c="$XD --resume $W/xc.xck"; else c=$XC; fi
    $B/moexc_crosscoder $c --checkpoint "$W/xc.xck" --save-every 1 --save "$W/xc.xc" > "$W/xc_final.log" 2>&1
    if [ $n_in_save -lt 1 ] || [ $n_killed -lt $((KILLS / 2)) ]; then
        bad "moexc_crosscoder: $n_killed kills, $n_in_save during a save (want >= $((KILLS / 2)) kills, >= 1 in a save)"
    elif [ $n_loaded -lt 1 ]; then bad "moexc_crosscoder: no checkpoint was ever checked"
    elif cmp -s "$W/xc.xck" "$W/xc_ref.xck" && cmp -s "$W/xc.xc" "$W/xc_ref.xc"; then
        ok "moexc_crosscoder: $n_killed kills ($n_in_save during a save), the checkpoint loaded after each ($n_loaded checks); resumed run == uninterrupted run, byte for byte (training checkpoint and crosscoder; $(( $(date +%s) - t0 )) s)"
    else bad "moexc_crosscoder: the resumed run's files differ from the uninterrupted run's" "$W/xc_final.log"; fi
else bad "moexc_crosscoder: reference run" "$W/xc_ref.log"; fi

# ---- 3. diverging runs ---------------------------------------------------------
# lr 1e4 with a 50-step warm-up: finite for a few steps (checkpoints every 2),
# then the gradients overflow.
rm -f "$W/div.ckpt"
$B/moexc_train $LM --lr 1e4 --warmup 50 --eval-interval -1 --save "$W/div.ckpt" --save-every 2 > "$W/div.log" 2> "$W/div.err"
rc=$?
msg=$(grep 'diverged' "$W/div.err" | head -n 1)
step=$(echo "$msg" | sed -n 's/.*step \([0-9]*\) diverged.*/\1/p')
if [ $rc -ne 0 ] && [ -n "$step" ] && echo "$msg" | grep -q "'[a-z_.0-9]*'"; then
    ok "moexc_train diverging: exit $rc, $msg"
    $B/moexc_train --resume "$W/div.ckpt" $LMDATA --log-every 100000 > "$W/div2.log" 2> "$W/div2.err"
    saved=$(sed -n 's/.*resumed from [^ ]* at step \([0-9]*\).*/\1/p' "$W/div2.log")
    msg2=$(grep 'diverged' "$W/div2.err" | head -n 1)
    if [ -n "$saved" ] && [ "$saved" -lt "$step" ] && [ "$msg2" = "$msg" ]; then
        ok "moexc_train diverging: the last checkpoint (step $saved) loads and diverges again at step $step with the same message"
    else bad "moexc_train diverging: checkpoint step '$saved' (want < $step), resumed message '$msg2'" "$W/div2.err"; fi
else bad "moexc_train diverging: exit $rc, message '$msg'" "$W/div.err"; fi

rm -f "$W/div.xck"
$B/moexc_crosscoder $XC --lr 1e4 --warmup 100 --checkpoint "$W/div.xck" --save-every 2 > "$W/xdiv.log" 2> "$W/xdiv.err"
rc=$?
msg=$(grep 'diverged' "$W/xdiv.err" | head -n 1)
step=$(echo "$msg" | sed -n 's/.*step \([0-9]*\) diverged.*/\1/p')
if [ $rc -ne 0 ] && [ -n "$step" ] && echo "$msg" | grep -Eq '(W_enc|W_dec|b_enc|b_dec)'; then
    ok "moexc_crosscoder diverging: exit $rc, $msg"
    $B/moexc_crosscoder $XD --resume "$W/div.xck" > "$W/xdiv2.log" 2> "$W/xdiv2.err"
    saved=$(sed -n 's/.*resumed [^ ]* at step \([0-9]*\).*/\1/p' "$W/xdiv2.log")
    msg2=$(grep 'diverged' "$W/xdiv2.err" | head -n 1)
    if [ -n "$saved" ] && [ "$saved" -lt "$step" ] && [ "$msg2" = "$msg" ]; then
        ok "moexc_crosscoder diverging: the last checkpoint (step $saved) loads and diverges again at step $step with the same message"
    else bad "moexc_crosscoder diverging: checkpoint step '$saved' (want < $step), resumed message '$msg2'" "$W/xdiv2.err"; fi
else bad "moexc_crosscoder diverging: exit $rc, message '$msg'" "$W/xdiv.err"; fi

# ---- 4. outputs that cannot be written fail at once, naming the path ---------------
mkdir -p "$W/ro/lens.json" "$W/ro/index.html" "$W/ro/corpus.tok"   # directories where files must go
N=/no/such/dir
# fail_fast LABEL "expected text" command...
fail_fast() {
    label=$1 want=$2; shift 2
    t_start=$(date +%s)
    "$@" > "$W/ff.out" 2> "$W/ff.err"
    rc=$?
    el=$(( $(date +%s) - t_start ))
    if [ $rc -ne 0 ] && grep -qF "$want" "$W/ff.err" && [ $el -le 5 ]; then ok "$label: $(head -n 1 "$W/ff.err")"
    else bad "$label: exit $rc after $el s, want an error naming $want" "$W/ff.err"; fi
}
fail_fast "moexc_train --save" "$N/x.ckpt" $B/moexc_train --builtin 100000 --save $N/x.ckpt
fail_fast "moexc_train --export" "$N/m.st" $B/moexc_train --builtin 100000 --export $N/m.st
fail_fast "moexc_train --save DIR" "$W/ro" $B/moexc_train --builtin 100000 --save "$W/ro"
fail_fast "moexc_mkdata --out" "$N/c.tok" $B/moexc_mkdata --builtin 100000 --out $N/c.tok
fail_fast "moexc_crosscoder --save" "$N/xc.st" $B/moexc_crosscoder $XC --save $N/xc.st
fail_fast "moexc_crosscoder --checkpoint" "$N/xc.ckpt" $B/moexc_crosscoder $XC --checkpoint $N/xc.ckpt
fail_fast "moexc_crosscoder --cache-write" "$N/a.cache" $B/moexc_crosscoder $XC --cache-write $N/a.cache
fail_fast "moexc_lens --out" "$W/ro/lens.json" $B/moexc_lens --model "$W/moe.st" --out "$W/ro"
fail_fast "moexc_report --out" "$W/ro/index.html" $B/moexc_report --tokens x.tok --moe "$W/moe.st" --dense "$W/dense.st" --xc x.xc --out "$W/ro"
fail_fast "moexc_demo --out" "$W/ro/corpus.tok" $B/moexc_demo --preset tiny --out "$W/ro"
fail_fast "moexc_demo --out (no parent)" "$N/r" $B/moexc_demo --preset tiny --out $N/r

echo "$passed passed, $failed failed"
[ $failed -eq 0 ] && [ $passed -gt 0 ]
