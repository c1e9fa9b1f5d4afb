#!/bin/sh
# tests/fuzz_run.sh BUILD SECONDS HARNESS... - the body of `make fuzz`.
# Writes seed files with BUILD/make_fuzz_seeds, gives each harness a corpus
# of the seeds and fixtures of its format, runs it SECONDS seconds under
# ASan + UBSan (UBSan reports abort), prints the executions of each harness
# and their total, and fails on any crash, leak, timeout or sanitizer report.
# A single allocation above 1 GiB fails (returns NULL) instead of aborting:
# readers bound what a file's sizes can allocate by the file's own size, but
# a training checkpoint's options (batch size x sequence length) legitimately
# ask for memory no file bounds; there the library's out-of-memory error path
# runs, and is checked like any other error.
# Logs: BUILD/fuzz_logs/NAME.log; crashing inputs: BUILD/fuzz_artifacts/.
set -u
build=$1; secs=$2; shift 2
seeds=$build/fuzz_seeds; logs=$build/fuzz_logs; art=$build/fuzz_artifacts
# the path-taking readers get each input through a scratch file: in memory
# (/dev/shm) when there is one, as a disk write per input costs milliseconds
if [ -d /dev/shm ] && [ -w /dev/shm ]; then scratch=/dev/shm/moexc_fuzz_$$; else scratch=$build/fuzz_scratch; fi
mkdir -p "$seeds" "$logs" "$art" "$scratch" || exit 1
"$build/make_fuzz_seeds" "$seeds" >/dev/null || { echo "fuzz: make_fuzz_seeds failed"; exit 1; }
fx=tests/fixtures
total=0; bad=0; report=
for bin in "$@"; do
    name=$(basename "$bin")
    corpus=$build/corpus_$name
    mkdir -p "$corpus"
    maxlen=4096
    case $name in
        fuzz_safetensors) for f in $fx/*.safetensors; do cp "$f" "$corpus/fixture_${f##*/}"; done
                          cp $seeds/*.safetensors $seeds/*.ckpt "$corpus"/; maxlen=32768 ;;
        fuzz_tokens)      cp $fx/data_small.tok $seeds/tokens.tok "$corpus"/ ;;
        fuzz_json)        cp $seeds/json_* $seeds/meta_* "$corpus"/ ;;
        fuzz_model)       cp $seeds/model_*.safetensors "$corpus"/; maxlen=16384 ;;
        fuzz_train)       cp $seeds/train_*.ckpt "$corpus"/; maxlen=32768 ;;
        fuzz_xc)          cp $fx/xc_ref_*.safetensors $seeds/xc_*.safetensors "$corpus"/; maxlen=16384 ;;
        fuzz_sae)         cp $seeds/sae_*.safetensors "$corpus"/; maxlen=16384 ;;
        fuzz_act_cache)   cp $seeds/acts.cache "$corpus"/ ;;
        fuzz_npy)         cp $seeds/array.npy "$corpus"/ ;;
        *)                cp $fx/* "$corpus"/ 2>/dev/null ;;
    esac
    echo "== $name ($secs s, inputs up to $maxlen bytes)"
    FUZZ_SCRATCH=$scratch ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:allocator_may_return_null=1:max_allocation_size_mb=1024 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$bin" -max_total_time="$secs" -max_len=$maxlen -timeout=10 -print_final_stats=1 \
               -artifact_prefix="$art/$name-" "$corpus" >"$logs/$name.log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$name.log" | tail -1)
    execs=${execs:-0}
    total=$((total + execs))
    status=ok
    if [ $rc -ne 0 ] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: UndefinedBehaviorSanitizer' "$logs/$name.log"; then
        status="FAILED (exit $rc; see $logs/$name.log)"; bad=$((bad + 1))
        grep -E 'ERROR:|runtime error:|SUMMARY:|Test unit written' "$logs/$name.log" | head -5
    fi
    echo "   $execs executions, $(ls "$corpus" | wc -l) corpus files: $status"
    report="$report$(printf '  %-18s %12s  %s' "$name" "$execs" "$status")
"
done
echo "fuzz summary ($secs s per harness):"
printf '%s' "$report"
printf '  %-18s %12s\n' total "$total"
rm -f "$scratch"/moexc_fuzz_*
[ "$scratch" = "$build/fuzz_scratch" ] || rmdir "$scratch"
[ $bad -eq 0 ] || { echo "fuzz: $bad harness(es) failed"; exit 1; }
