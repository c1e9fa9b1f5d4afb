#!/bin/sh
# tests/build_modes.sh - does moexc.h build (and run) in every supported mode?
#
#   sh tests/build_modes.sh            header build modes (part of `make test`):
#       gcc and clang -std=c99 -Wall -Wextra -pedantic -Werror; g++ -std=c++11 as C++;
#       a C++ program using a C-compiled implementation; MOEXC_STATIC in two TUs;
#       MOEXC_NO_SIMD / MOEXC_NO_AVX512 / MOEXC_NO_AVX2 (backend checked);
#       MOEXC_MALLOC/REALLOC/FREE overrides, and the #error when only some are
#       defined; no raw malloc/calloc/realloc/free/strdup in the library.
#   sh tests/build_modes.sh portable   the portability matrix (`make portable`):
#       gcc and clang build everything strict C99; the library compiled as C++
#       running the kernel tests; tcc building and running the kernel test; the
#       MOEXC_NO_SIMD build running the test suite; the test suite cross-compiled
#       for aarch64 (NEON) and s390x (big-endian) and run under qemu-user
#       (see QEMU_EXCLUDE / QEMU_S390X_ONLY below; QEMU_SKIP="test_x ..." in the
#       environment skips more, reported as SKIPPED, for quick local runs);
#       the test suite, tools and examples cross-compiled for Windows with
#       mingw-w64, the tests and moexc_train run under wine (see win_leg).
#   sh tests/build_modes.sh windows    the Windows leg alone.
# Run from the repository root. Prints "N passed, N failed" last; a leg that
# cannot run prints "SKIPPED: <why>" and counts as neither.
cd "$(dirname "$0")/.." || exit 1

WORK=build/modes
mkdir -p "$WORK"
# Checks run in parallel subshells, so results are counted from a file.
RESULTS="$WORK/results.${1:-modes}"
: > "$RESULTS"
pass() { echo "ok   $1"; echo ok >> "$RESULTS"; }
fail() { echo "FAIL $1"; [ -n "$2" ] && sed 's/^/     /' "$2" | head -n 30; echo fail >> "$RESULTS"; }
skip() { echo "SKIPPED: $1"; echo skip >> "$RESULTS"; }
have() { command -v "$1" >/dev/null 2>&1; }

STRICT="-std=c99 -Wall -Wextra -pedantic -Werror"
CXXSTRICT="-std=c++11 -Wall -Wextra -Werror"
NATIVE=$(gcc -march=native -x c -c -o /dev/null /dev/null 2>/dev/null && echo -march=native)

# A small program: prints the backend, checks a few kernels, and (with
# MOEXC_IMPLEMENTATION) is the whole library.
cat > "$WORK/use.c" <<'EOF'
#include <stdio.h>
#include "moexc.h"
int main(void)
{
    float x[5] = { 1, 2, 3, 4, 5 }, y[5];
    moexc_softmax_rows(y, x, 1, 5);             /* y_4 = e^5 / sum_k e^k = 0.6364 */
    printf("%s\n", moexc_simd_backend());
    return !(moexc_dot(x, x, 5) == 55.0f && y[4] > 0.636f && y[4] < 0.637f);
}
EOF
printf '#define MOEXC_IMPLEMENTATION\n#include "use.c"\n' > "$WORK/use_impl.c"
printf '#define MOEXC_IMPLEMENTATION\n#include "moexc.h"\n' > "$WORK/impl.c"
# MOEXC_STATIC in two translation units of one program: no clashes, no warnings.
cat > "$WORK/static_a.c" <<'EOF'
#define MOEXC_STATIC
#define MOEXC_IMPLEMENTATION
#include "moexc.h"
float static_a(void);
float static_a(void) { float x[2] = { 3, 4 }; return moexc_dot(x, x, 2); }
EOF
cat > "$WORK/static_b.c" <<'EOF'
#include <stdio.h>
#define MOEXC_STATIC
#define MOEXC_IMPLEMENTATION
#include "moexc.h"
float static_a(void);
int main(void) { float x[1] = { 2 }; printf("%s\n", moexc_simd_backend()); return !(static_a() == 25.0f && moexc_sum(x, 1) == 2.0f); }
EOF
# All three allocator overrides; the counter proves the hooks are used.
cat > "$WORK/alloc_all.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
static long n_hook;
static void *my_malloc(size_t n) { n_hook++; return malloc(n); }
static void *my_realloc(void *p, size_t n) { n_hook++; return realloc(p, n); }
static void my_free(void *p) { free(p); }
#define MOEXC_MALLOC(sz) my_malloc(sz)
#define MOEXC_REALLOC(p, sz) my_realloc(p, sz)
#define MOEXC_FREE(p) my_free(p)
#define MOEXC_STATIC
#define MOEXC_IMPLEMENTATION
#include "moexc.h"
int main(void)
{
    moexc_tokens t;
    moexc_status st;
    memset(&t, 0, sizeof t);
    st = moexc_corpus_builtin(&t, 1000, 1, NULL);
    moexc_tokens_free(&t);
    printf("%ld hook calls\n", n_hook);
    return !(st == MOEXC_OK && n_hook > 0);
}
EOF
printf '#define MOEXC_MALLOC(sz) malloc(sz)\n#define MOEXC_IMPLEMENTATION\n#include "moexc.h"\n' > "$WORK/alloc_one.c"
printf '#define MOEXC_MALLOC(sz) malloc(sz)\n#define MOEXC_FREE(p) free(p)\n#define MOEXC_IMPLEMENTATION\n#include "moexc.h"\n' > "$WORK/alloc_two.c"

# build NAME "compile-and-link command" [backend pattern, or !pattern it must not match]
# Compiles, runs the program, and checks the backend it reports.
build() {
    name=$1 cmd=$2 want=$3 log="$WORK/$1.log"
    if ! sh -c "$cmd" > "$log" 2>&1; then fail "$name: does not build" "$log"; return; fi
    if ! "$WORK/$name.bin" > "$WORK/$name.out" 2>&1; then fail "$name: program failed" "$WORK/$name.out"; return; fi
    got=$(head -n 1 "$WORK/$name.out")
    ok=1
    case "$want" in
        "") ;;
        !*) case "$got" in ${want#!}) ok=0 ;; esac ;;     # "!pattern": must not match
        *)  case "$got" in $want) ;; *) ok=0 ;; esac ;;
    esac
    if [ $ok = 0 ]; then echo "backend $got, expected $want" > "$log"; fail "$name: wrong backend" "$log"; return; fi
    pass "$name ($got)"
}

# must_fail NAME "compile command" "expected message"
must_fail() {
    name=$1 cmd=$2 msg=$3 log="$WORK/$1.log"
    if sh -c "$cmd" > "$log" 2>&1; then fail "$name: compiled but must not"; return; fi
    if grep -q "$msg" "$log"; then pass "$name (#error as expected)"; else fail "$name: failed for another reason" "$log"; fi
}

header_modes() {
    # -O0 keeps this quick; the optimised builds (where -Wmaybe-uninitialized
    # lives) are the main build and `make portable`.
    I="-I. -I$WORK"
    # The default SIMD backend of this machine (whatever -march=native gives).
    build gcc_c99    "gcc $STRICT -O0 $NATIVE $I $WORK/use_impl.c -o $WORK/gcc_c99.bin -lm" &
    build clang_c99  "clang $STRICT -O0 $NATIVE $I $WORK/use_impl.c -o $WORK/clang_c99.bin -lm"
    wait
    build gxx_cxx11  "g++ -x c++ $CXXSTRICT -O0 $NATIVE $I $WORK/use_impl.c -o $WORK/gxx_cxx11.bin" &
    # C++ program against the C-compiled library (extern "C" linkage)
    build cxx_uses_c "gcc $STRICT -O0 $NATIVE $I -c $WORK/impl.c -o $WORK/impl_c.o && \
                      g++ -x c++ $CXXSTRICT $NATIVE $I -c $WORK/use.c -o $WORK/use_cxx.o && \
                      g++ $WORK/use_cxx.o $WORK/impl_c.o -o $WORK/cxx_uses_c.bin -lm"
    wait
    build static_two_tus "gcc $STRICT -O0 $NATIVE $I $WORK/static_a.c $WORK/static_b.c -o $WORK/static_two_tus.bin -lm" &
    build no_simd    "gcc $STRICT -O0 $NATIVE -DMOEXC_NO_SIMD $I $WORK/use_impl.c -o $WORK/no_simd.bin -lm" scalar
    wait
    build no_avx512  "gcc $STRICT -O0 $NATIVE -DMOEXC_NO_AVX512 $I $WORK/use_impl.c -o $WORK/no_avx512.bin -lm" "!avx512" &
    build no_avx2    "gcc $STRICT -O0 $NATIVE -DMOEXC_NO_AVX2 $I $WORK/use_impl.c -o $WORK/no_avx2.bin -lm" "!avx*"
    wait
    build clang_no_simd "clang $STRICT -O0 $NATIVE -DMOEXC_NO_SIMD $I $WORK/use_impl.c -o $WORK/clang_no_simd.bin -lm" scalar &
    build alloc_all  "gcc $STRICT -O0 $I $WORK/alloc_all.c -o $WORK/alloc_all.bin -lm"
    wait
    must_fail alloc_only_malloc "gcc $STRICT -I. -c $WORK/alloc_one.c -o $WORK/x1.o" \
        "define all of MOEXC_MALLOC, MOEXC_REALLOC and MOEXC_FREE" &
    must_fail alloc_no_realloc "gcc $STRICT -I. -c $WORK/alloc_two.c -o $WORK/x2.o" \
        "define all of MOEXC_MALLOC, MOEXC_REALLOC and MOEXC_FREE"
    wait
    # Every allocation goes through the hooks: the only raw allocator calls are
    # the three default definitions of MOEXC_MALLOC/REALLOC/FREE.
    raw=$(grep -nE '(^|[^_a-zA-Z0-9])(malloc|calloc|realloc|free|strdup|strndup)[[:space:]]*\(' moexc.h |
          grep -vE '#[[:space:]]*define MOEXC_(MALLOC|REALLOC|FREE)' | grep -vE '^[0-9]+:[[:space:]]*(/\*|\*)')
    if [ -z "$raw" ]; then pass "no raw allocator calls outside MOEXC_MALLOC/REALLOC/FREE"
    else printf '%s\n' "$raw" > "$WORK/raw.log"; fail "raw allocator calls in moexc.h" "$WORK/raw.log"; fi
}

# ---------------------------------------------------------------------------
# The portability matrix
# ---------------------------------------------------------------------------
# qemu-user runs compute-heavy tests 10-50x slower, so two documented lists
# (every other tests/test_*.c, including new ones, runs on both legs):
# - not under qemu at all: compute only, no files. GEMM on NEON is compared
#   with the scalar GEMM by test_simd_twin; the scalar GEMM runs in the
#   MOEXC_NO_SIMD leg.
#   test_dp (threads as data-parallel workers, no files) takes 3 minutes under qemu-s390x.
QEMU_EXCLUDE="test_gemm test_dp"
# - big-endian leg only: they read/write files (checkpoints, caches, token
#   files, crosscoders), which is what s390x checks, but are training-heavy;
#   aarch64 adds nothing there that test_kernels/test_simd_twin do not cover.
QEMU_S390X_ONLY="test_crosscoder test_model test_train test_harvest"
# - run beside the rest of its leg, two binaries at a time: test_crosscoder
#   takes 10-12 minutes under qemu-s390x, about as long as the rest together
#   (the environment may name other binaries).
QEMU_BESIDE=${QEMU_BESIDE-test_crosscoder}

run_suite() {   # label, test binaries...
    label=$1
    shift
    log="$WORK/$(echo "$label" | tr -c 'a-zA-Z0-9\n' _).suite.log"
    sh tests/run_tests.sh "$@" > "$log" 2>&1
    total=$(tail -n 1 "$log")
    if tail -n 1 "$log" | grep -q ' passed, 0 failed$'; then pass "$label: $total"
    else grep -E '^(FAIL|!!|  FAIL)' "$log" > "$log.fail"; fail "$label: $total" "$log.fail"; fi
    SUITE_LOG=$log
}

cross_leg() {   # arch, cross compiler, qemu, expected backend
    arch=$1 cc=$2 qemu=$3 want=$4 dir=build/port/$1
    if ! have "$cc"; then skip "$arch: $cc not installed (apt-get install gcc-$arch-linux-gnu)"; return; fi
    if ! have "$qemu"; then skip "$arch: $qemu not installed (apt-get install qemu-user)"; return; fi
    mkdir -p "$dir"
    t0=$(date +%s)
    log="$dir/build.log"
    : > "$log"
    if ! $cc $STRICT -O2 -I. -c tests/moexc_impl.c -o "$dir/moexc.o" >> "$log" 2>&1; then
        fail "$arch: library does not build" "$log"; return
    fi
    bins=""
    for src in tests/test_*.c; do
        name=$(basename "$src" .c)
        case " $QEMU_EXCLUDE " in *" $name "*) echo "     $arch: $name not run under qemu (QEMU_EXCLUDE)"; continue ;; esac
        if [ $arch != s390x ]; then
            case " $QEMU_S390X_ONLY " in *" $name "*) echo "     $arch: $name runs on s390x only (QEMU_S390X_ONLY)"; continue ;; esac
        fi
        case " $QEMU_SKIP " in *" $name "*) skip "$arch: $name (QEMU_SKIP set by the caller)"; continue ;; esac
        # tests that define MOEXC_IMPLEMENTATION themselves do not link moexc.o
        if grep -q '^#define MOEXC_IMPLEMENTATION' "$src"; then
            cmd="$cc $STRICT -O2 -I. $src -o $dir/$name -static -lm"
        elif [ $name = test_simd_twin ]; then
            cmd="$cc $STRICT -O2 -I. -c tests/scalar_twin.c -o $dir/scalar_twin.o &&
                 $cc $STRICT -O2 -I. $src $dir/moexc.o $dir/scalar_twin.o -o $dir/$name -static -lm"
        else
            cmd="$cc $STRICT -O2 -I. $src $dir/moexc.o -o $dir/$name -static -lm"
        fi
        if sh -c "$cmd" >> "$log" 2>&1; then bins="$bins $dir/$name"
        else fail "$arch: $name does not build" "$log"; fi
    done
    # run each binary under qemu from the repository root (fixtures are relative to it)
    : > "$dir/times.log"
    for b in $bins; do
        printf '#!/bin/sh\nt0=$(date +%%s)\n%s %s "$@"\nrc=$?\necho "%s $(( $(date +%%s) - t0 )) s" >> %s\nexit $rc\n' \
            "$qemu" "$b" "$(basename "$b")" "$dir/times.log" > "$b.qemu"
        chmod +x "$b.qemu"
    done
    runners="" beside=""
    for b in $bins; do
        case " $QEMU_BESIDE " in *" $(basename "$b") "*) beside="$beside $b.qemu" ;; *) runners="$runners $b.qemu" ;; esac
    done
    if [ -n "$runners$beside" ]; then
        slog="$dir/suite.log"
        beside_pid=""
        : > "$slog.main"
        : > "$dir/beside.log"
        if [ -n "$beside" ]; then sh tests/run_tests.sh $beside > "$dir/beside.log" 2>&1 & beside_pid=$!; fi
        [ -n "$runners" ] && sh tests/run_tests.sh $runners > "$slog.main" 2>&1
        [ -n "$beside_pid" ] && wait $beside_pid
        {   # both logs, then the grand total of their totals (a log without one counts as a failure)
            cat "$slog.main" "$dir/beside.log"
            for l in "$slog.main" "$dir/beside.log"; do [ -s "$l" ] && tail -n 1 "$l"; done |
                awk '{ if ($2 == "passed," && $4 == "failed") { p += $1; f += $3 } else f++ }
                     END { print p + 0 " passed, " f + 0 " failed" }'
        } > "$slog"
        rm -f "$slog.main"
        total=$(tail -n 1 "$slog")
        backend=$(sed -n 's/^ *backend \([a-z0-9]*\), width.*/\1/p' "$slog" | head -n 1)
        t1=$(date +%s)
        if tail -n 1 "$slog" | grep -q ' passed, 0 failed$'; then pass "$arch under $qemu: $total ($((t1 - t0)) s)"
        else grep -E '^(FAIL|!!|  FAIL|==)' "$slog" > "$slog.fail"; fail "$arch under $qemu: $total" "$slog.fail"; fi
        echo "     $arch seconds per test: $(tr '\n' ',' < "$dir/times.log" | sed 's/,$//; s/,/, /g')"
        if [ "$backend" = "$want" ]; then pass "$arch: SIMD backend is $backend"
        else echo "backend '$backend', expected $want" > "$dir/backend.log"; fail "$arch: backend" "$dir/backend.log"; fi
    fi
}

# Windows: the test suite, tools and examples cross-compiled with mingw-w64
# (x86_64-w64-mingw32-gcc, Debian gcc-mingw-w64-x86-64; no OpenMP, the SSE2
# backend of baseline x86-64), the tests run under wine in a prefix of its own
# (WINEPREFIX=build/port/win64/wineprefix, WINEDEBUG=-all; wineboot first, which
# takes about 10 s when it creates the prefix), and a short moexc_train run saved twice to one path
# (the MoveFileEx replacement) and resumed. wine prints CRLF: stripped.
win_leg() {
    cc=x86_64-w64-mingw32-gcc dir=build/port/win64
    if ! have $cc; then skip "windows: $cc not installed (apt-get install gcc-mingw-w64-x86-64)"; return; fi
    WINE=$(command -v wine64 || command -v wine)
    if [ -z "$WINE" ]; then skip "windows: wine not installed (apt-get install wine wine64)"; return; fi
    mkdir -p "$dir"
    t0=$(date +%s)
    log="$dir/build.log"
    : > "$log"
    if ! $cc $STRICT -O2 -I. -c tests/moexc_impl.c -o "$dir/moexc.o" >> "$log" 2>&1; then
        fail "windows: library does not build" "$log"; return
    fi
    bins=""
    for src in tests/test_*.c; do
        name=$(basename "$src" .c)
        if grep -q '^#define MOEXC_IMPLEMENTATION' "$src"; then
            cmd="$cc $STRICT -O2 -I. $src -o $dir/$name.exe -lm"
        elif [ $name = test_simd_twin ]; then
            cmd="$cc $STRICT -O2 -I. -c tests/scalar_twin.c -o $dir/scalar_twin.o &&
                 $cc $STRICT -O2 -I. $src $dir/moexc.o $dir/scalar_twin.o -o $dir/$name.exe -lm"
        else
            cmd="$cc $STRICT -O2 -I. $src $dir/moexc.o -o $dir/$name.exe -lm"
        fi
        # test_dp's workers are POSIX threads: mingw-w64's winpthreads, linked in
        [ $name = test_dp ] && cmd="$cmd -static -lpthread"
        if sh -c "$cmd" >> "$log" 2>&1; then bins="$bins $dir/$name"
        else fail "windows: $name does not build" "$log"; fi
    done
    nt=0
    for src in tools/moexc_*.c examples/*.c; do
        name=$(basename "$src" .c)
        if $cc $STRICT -O2 -I. -isystem /usr/include/stb "$src" "$dir/moexc.o" -o "$dir/$name.exe" -lm >> "$log" 2>&1; then nt=$((nt + 1))
        else fail "windows: $src does not build" "$log"; fi
    done
    pass "windows: library, $(echo $bins | wc -w) tests and $nt tools/examples build with $cc $STRICT"
    export WINEPREFIX="$PWD/$dir/wineprefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
    tb=$(date +%s)
    if ! wineboot -i > "$dir/wineboot.log" 2>&1; then fail "windows: wineboot" "$dir/wineboot.log"; return; fi
    echo "     windows: wine prefix ready in $(( $(date +%s) - tb )) s ($("$WINE" --version 2>/dev/null))"
    # wine itself now and then loses its server mid-run ("wine client error:
    # ... Connection reset by peer", the test's own output cut short): the
    # runner tries such a test once more
    for b in $bins; do
        printf '#!/bin/sh\nfor try in 1 2; do\n    %s %s.exe "$@" > %s.out 2>&1\n    rc=$?\n    grep -q "^wine client error" %s.out || break\ndone\ntr -d "\\r" < %s.out\nexit $rc\n' \
            "$WINE" "$b" "$b" "$b" "$b" > "$b.wine"
        chmod +x "$b.wine"
    done
    runners=""
    for b in $bins; do runners="$runners $b.wine"; done
    slog="$dir/suite.log"
    sh tests/run_tests.sh $runners > "$slog" 2>&1
    total=$(tail -n 1 "$slog")
    backend=$(sed -n 's/^ *backend \([a-z0-9]*\), width.*/\1/p' "$slog" | head -n 1)
    if tail -n 1 "$slog" | grep -q ' passed, 0 failed$'; then pass "windows under wine: $total ($(( $(date +%s) - t0 )) s with the build; backend $backend)"
    else grep -E '^(FAIL|!!|  FAIL|==)' "$slog" > "$slog.fail"; fail "windows under wine: $total" "$slog.fail"; fi
    # a tool: train, save over the same file again (--save-every), export, resume
    tl="$dir/tool.log"
    rm -f "$dir/w.ckpt" "$dir/w.st"
    if "$WINE" "$dir/moexc_train.exe" --builtin 20000 --d-model 16 --heads 2 --layers 1 --context 16 --batch 2 --steps 6 \
           --eval-interval -1 --save "$dir/w.ckpt" --save-every 2 --export "$dir/w.st" > "$tl" 2>&1 &&
       "$WINE" "$dir/moexc_train.exe" --resume "$dir/w.ckpt" --builtin 20000 --time-limit 1e-9 >> "$tl" 2>&1 &&
       tr -d '\r' < "$tl" | grep -q 'resumed from .* at step 6' && [ -f "$dir/w.st" ] && [ ! -f "$dir/w.ckpt.tmp" ] &&
       ! "$WINE" "$dir/moexc_train.exe" --builtin 20000 --save 'Z:\no\such\dir\x.ckpt' >> "$tl" 2>&1; then
        pass "windows: moexc_train.exe trains, replaces its checkpoint, resumes; refuses an unwritable --save"
    else fail "windows: moexc_train.exe" "$tl"; fi
    wineserver -k 2>/dev/null
}

portable() {
    port_t0=$(date +%s)
    # 1. gcc and clang: the whole tree (library, tests, tools, examples), strict C99
    for c in gcc clang; do
        if ! have $c; then skip "$c not installed"; continue; fi
        log="$WORK/all_$c.log"
        if make --no-print-directory -j2 CC=$c BUILD=build/port/$c all > "$log" 2>&1; then pass "$c: everything builds with $STRICT"
        else fail "$c: build" "$log"; fi
    done
    # 2. the library compiled as C++ (g++), linked into the C kernel tests
    if have g++; then
        d=build/port/cxx
        mkdir -p $d
        log="$WORK/cxx.log"
        if g++ -x c++ $CXXSTRICT -O2 $NATIVE -I. -c tests/moexc_impl.c -o $d/moexc.o > "$log" 2>&1 &&
           gcc $STRICT -O2 $NATIVE -I. tests/test_kernels.c $d/moexc.o -o $d/test_kernels -lm -lstdc++ >> "$log" 2>&1 &&
           gcc $STRICT -O2 $NATIVE -I. -c tests/scalar_twin.c -o $d/scalar_twin.o >> "$log" 2>&1 &&
           gcc $STRICT -O2 $NATIVE -I. tests/test_simd_twin.c $d/moexc.o $d/scalar_twin.o -o $d/test_simd_twin -lm -lstdc++ >> "$log" 2>&1; then
            run_suite "g++-compiled library" $d/test_kernels $d/test_simd_twin
        else fail "g++: library as C++" "$log"; fi
    else skip "g++ not installed"; fi
    # 3. tcc: no intrinsics, so the scalar backend (or whatever its macros select)
    if have tcc; then
        d=build/port/tcc
        mkdir -p $d
        log="$WORK/tcc.log"
        if tcc -Wall -Werror -I. -c tests/moexc_impl.c -o $d/moexc.o > "$log" 2>&1 &&
           tcc -I. tests/test_kernels.c $d/moexc.o -o $d/test_kernels -lm >> "$log" 2>&1; then
            run_suite "tcc" $d/test_kernels
            echo "     tcc backend: $(sed -n 's/^ *backend \(.*\)/\1/p' "$SUITE_LOG")"
        else fail "tcc: build" "$log"; fi
    else skip "tcc not installed (apt-get install tcc)"; fi
    # 4. the scalar build runs the whole test suite
    log="$WORK/nosimd.log"
    if make --no-print-directory -j2 BUILD=build/port/nosimd CFLAGS="-O2 -g -DMOEXC_NO_SIMD" \
           $(for s in tests/test_*.c; do n=$(basename $s .c); echo build/port/nosimd/$n; done) > "$log" 2>&1; then
        run_suite "MOEXC_NO_SIMD suite" build/port/nosimd/test_*
    else fail "MOEXC_NO_SIMD: build" "$log"; fi
    # 5. cross: aarch64 (NEON), s390x (big-endian, scalar), in parallel
    # (the Windows leg follows aarch64, so that two legs run at a time)
    { cross_leg aarch64 aarch64-linux-gnu-gcc qemu-aarch64 neon; win_leg; } > "$WORK/aarch64.leg" 2>&1 &
    cross_leg s390x s390x-linux-gnu-gcc qemu-s390x scalar > "$WORK/s390x.leg" 2>&1
    wait
    cat "$WORK/aarch64.leg" "$WORK/s390x.leg"
    echo "portable: $(( $(date +%s) - port_t0 )) s"
}

case "$1" in
    portable) portable ;;
    windows)  win_leg ;;
    *)        header_modes ;;
esac
passed=$(grep -c '^ok' "$RESULTS")
failed=$(grep -c '^fail' "$RESULTS")
skipped=$(grep -c '^skip' "$RESULTS")
[ "$skipped" -gt 0 ] && echo "$skipped skipped (see SKIPPED lines above)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
