# moexc - build, test, bench, portability.
#   make            build the tests, tools and examples
#   make test       build and run the whole test suite
#   make bench      run the benchmarks (GEMM vs OpenBLAS, training vs PyTorch, ...);
#                   ends with one summary table, also in build/bench.json
#   make portable   the portability matrix (compilers, C++, tcc, scalar, aarch64, s390x,
#                   Windows: mingw-w64 + wine)
#   make crashtest  kill -9 / resume / divergence / fail-fast outputs (also in make test)
#   make valgrind   memcheck of the tiny demo pipeline (a NATIVE=0 build in build/valgrind)
#   make sanitize   the test suite under AddressSanitizer + UBSan (clang)
#   make MPI=1      the same with data-parallel tools over MPI (build/mpi; mpicc)
#   make mpitest    the tools on 2 MPI ranks against 1 (skipped without MPI)
# Variables: CC, CFLAGS, OPENMP=0/1 (default 1 when the compiler has it),
# NATIVE=0/1 (default 1: -march=native when the compiler accepts it),
# BENCH_THREADS (default 2: the thread count of every benchmark).

CC      ?= cc
OPENMP  ?= 1
NATIVE  ?= 1
# MPI=1: the tools moexc_train and moexc_crosscoder train data-parallel over
# MPI (mpicc, Debian libopenmpi-dev), everything built into build/mpi.
MPI     ?= 0
ifeq ($(MPI),1)
CC      := mpicc
BUILD   ?= build/mpi
endif
BUILD   ?= build
PYTHON  ?= /usr/bin/python3

WARN    := -std=c99 -Wall -Wextra -pedantic -Werror
OPT     ?= -O2
ifeq ($(NATIVE),1)
ARCH    := $(shell $(CC) -march=native -x c -c -o /dev/null /dev/null 2>/dev/null && echo -march=native)
endif
ifeq ($(OPENMP),1)
OMP     := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c -o /dev/null - 2>/dev/null && echo -fopenmp)
endif
CFLAGS  ?= $(OPT) -g
ALL_CFLAGS = $(WARN) $(CFLAGS) $(ARCH) $(OMP) -I.
LDLIBS  := -lm

TEST_SRCS    := $(wildcard tests/test_*.c)
TEST_BINS    := $(TEST_SRCS:tests/%.c=$(BUILD)/%)
TOOL_SRCS    := $(wildcard tools/*.c)
TOOL_BINS    := $(TOOL_SRCS:tools/%.c=$(BUILD)/%)
EXAMPLE_SRCS := $(wildcard examples/*.c)
EXAMPLE_BINS := $(EXAMPLE_SRCS:examples/%.c=$(BUILD)/%)

.PHONY: all test bench portable sanitize clean
all: $(TEST_BINS) $(TOOL_BINS) $(EXAMPLE_BINS)

$(BUILD):
	mkdir -p $(BUILD)

# The implementation is compiled once; tests, tools and examples link to it.
$(BUILD)/moexc.o: tests/moexc_impl.c moexc.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/test_%: tests/test_%.c $(BUILD)/moexc.o tests/harness.h tests/counting_alloc.h moexc.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) $< $(BUILD)/moexc.o -o $@ $(LDLIBS) $(EXTRA_LIBS_$*)

$(BUILD)/%: tools/%.c $(BUILD)/moexc.o | $(BUILD)
	$(CC) $(ALL_CFLAGS) $(EXTRA_CFLAGS_$*) $< $(BUILD)/moexc.o -o $@ $(LDLIBS) $(EXTRA_LIBS_$*)

$(BUILD)/%: examples/%.c $(BUILD)/moexc.o | $(BUILD)
	$(CC) $(ALL_CFLAGS) $(EXTRA_CFLAGS_$*) $< $(BUILD)/moexc.o -o $@ $(LDLIBS) $(EXTRA_LIBS_$*)

# the benchmarks' shared fp32 peak probe
$(BUILD)/bench_gemm $(BUILD)/bench_train: tools/fma_peak.h tools/tool_clock.h

# Areas add shell-script tests with `TEST_SCRIPTS += tests/x.sh` (each prints
# "N passed, N failed" last) and benchmarks with `bench: bench-x`.
TEST_SCRIPTS :=
test: $(TEST_BINS)
	sh tests/run_tests.sh $(TEST_BINS) $(TEST_SCRIPTS)

# `make bench` first installs what the comparisons need when it is missing
# (OpenBLAS for GEMM, PyTorch for training and crosscoders; Debian packages,
# root only), then rebuilds bench_gemm so that it links OpenBLAS if present.
BENCH_PKGS := libopenblas-dev python3-torch python3-numpy
.PHONY: bench-deps
bench-deps:
	@missing=; for p in $(BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	elif [ -n "$$missing" ]; then echo "bench: missing$$missing (the comparisons that need them are skipped)"; fi
bench: bench-deps

clean:
	rm -rf $(BUILD)

# ---- area: kernels and portability ----------------------------------------
# build/test_simd_twin holds the SIMD build (build/moexc.o) and its scalar twin:
# the library compiled again with MOEXC_NO_SIMD + MOEXC_STATIC, wrapped as twin_*.
$(BUILD)/scalar_twin.o: tests/scalar_twin.c tests/scalar_twin.h moexc.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) -c $< -o $@
$(BUILD)/test_simd_twin: $(BUILD)/scalar_twin.o tests/scalar_twin.h
EXTRA_LIBS_simd_twin = $(BUILD)/scalar_twin.o -lm

# The allocator-hook test compiles the implementation itself (MOEXC_STATIC with
# counting/failing MOEXC_MALLOC/REALLOC/FREE), so it does not link build/moexc.o.
$(BUILD)/test_alloc_hooks: tests/test_alloc_hooks.c tests/harness.h moexc.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(LDLIBS)

# Header build modes (gcc/clang strict C99, C++, MOEXC_STATIC, MOEXC_NO_*,
# allocator overrides and their #error) run as part of `make test`.
TEST_SCRIPTS += tests/build_modes.sh

# make portable: the portability matrix (see tests/build_modes.sh portable).
portable:
	sh tests/build_modes.sh portable

# make sanitize: the test suite built with clang ASan + UBSan in build/san/
# (UB aborts; LeakSanitizer on). Shell-script tests are not rerun there.
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
sanitize:
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	$(MAKE) --no-print-directory CC=clang BUILD=$(BUILD)/san NATIVE=1 CFLAGS="-O1 -g $(SAN_FLAGS)" TEST_SCRIPTS= test

# ---- area: gemm and bench -------------------------------------------------
# tools/bench_gemm.c puts OpenBLAS's cblas_sgemm next to moexc_sgemm when
# OpenBLAS is installed (pkg-config, or Debian's default cblas.h). On AVX-512
# machines OpenBLAS runs its SkylakeX kernels (OPENBLAS_CORETYPE).
GEMM_OPENBLAS_LIBS := $(shell pkg-config --libs openblas 2>/dev/null)
ifneq ($(GEMM_OPENBLAS_LIBS),)
EXTRA_CFLAGS_bench_gemm := -DMOEXC_BENCH_OPENBLAS $(shell pkg-config --cflags openblas 2>/dev/null)
EXTRA_LIBS_bench_gemm   := $(GEMM_OPENBLAS_LIBS)
else
# Debian's libopenblas-dev without a .pc file: its own cblas.h (the generic
# /usr/include/.../cblas.h may be netlib's, which lacks openblas_* calls).
GEMM_OPENBLAS_INC := $(firstword $(wildcard /usr/include/*/openblas-pthread /usr/include/*/openblas-openmp /usr/include/openblas))
ifneq ($(GEMM_OPENBLAS_INC),)
EXTRA_CFLAGS_bench_gemm := -DMOEXC_BENCH_OPENBLAS -isystem $(GEMM_OPENBLAS_INC)
EXTRA_LIBS_bench_gemm   := -lopenblas
endif
endif
# Both libraries' idle threads sleep instead of spinning (OMP_WAIT_POLICY,
# OPENBLAS_THREAD_TIMEOUT): on 2 cores a spinning worker of one library steals
# the core the other one is timed on.
GEMM_BENCH_ENV := $(if $(shell grep -m1 -ow avx512f /proc/cpuinfo 2>/dev/null),OPENBLAS_CORETYPE=SkylakeX) \
                  OMP_WAIT_POLICY=passive OPENBLAS_THREAD_TIMEOUT=4
GEMM_BENCH_REPS ?= 31
BENCH_THREADS ?= 2
.PHONY: bench-gemm
bench: bench-gemm
# The OpenBLAS flags are decided when make starts, so bench-deps' install
# takes effect through a fresh make. Each bench-* target writes its results
# to $(BUILD)/bench_*.json for the summary at the end of `make bench`.
bench-gemm: bench-deps
	@rm -f $(BUILD)/bench_gemm $(BUILD)/bench_gemm.json
	@$(MAKE) --no-print-directory $(BUILD)/bench_gemm
	$(GEMM_BENCH_ENV) $(BUILD)/bench_gemm $(GEMM_BENCH_REPS) --threads $(BENCH_THREADS) --json $(BUILD)/bench_gemm.json


# ---- area: model ----------------------------------------------------------
# test_model includes the implementation itself (it tests the internal layer
# functions), so it is built from moexc.h alone, not linked with moexc.o.
$(BUILD)/test_model: tests/test_model.c moexc.h tests/harness.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(LDLIBS)
# test_attention likewise (packed attention against the blocked path).
$(BUILD)/test_attention: tests/test_attention.c moexc.h tests/harness.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(LDLIBS)
# test_select likewise (the internal top-k selection helpers).
$(BUILD)/test_select: tests/test_select.c moexc.h tests/harness.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(LDLIBS)
# Regenerate the PyTorch fixtures (needs /usr/bin/python3 with torch).
.PHONY: model-fixtures
model-fixtures:
	$(PYTHON) tools/torch_ref.py

# ---- area: training -------------------------------------------------------
# bench-train: tokens/s of the default dense and MoE training steps, moexc vs
# the PyTorch twin at the same thread count (BENCH_THREADS, default 2).
# train-fixtures: regenerate tests/fixtures/train_* with PyTorch.
.PHONY: bench-train train-fixtures
bench: bench-train
bench-train: $(BUILD)/bench_train | bench-deps
	@rm -f $(BUILD)/bench_train.json
	$(GEMM_BENCH_ENV) $(PYTHON) tools/bench_train_torch.py --c-bench $(BUILD)/bench_train --threads $(BENCH_THREADS) \
	    --json $(BUILD)/bench_train.json
train-fixtures:
	$(PYTHON) tools/torch_ref_train.py tests/fixtures

# ---- area: data and checkpoints -------------------------------------------
TEST_SCRIPTS += tests/test_mkdata.sh
test: $(BUILD)/moexc_mkdata
# Built-in corpus generation speed (3 x 2 MB), best of three.
.PHONY: bench-data
bench: bench-data
bench-data: $(BUILD)/moexc_mkdata
	@for i in 1 2 3; do $(BUILD)/moexc_mkdata --builtin 2000000 --out $(BUILD)/bench_data.tok | head -1; done
	@rm -f $(BUILD)/bench_data.tok
# `make fuzz` builds the libFuzzer harnesses tests/fuzz_*.c (one per reader
# of untrusted bytes: safetensors/JSON, metadata, model files, training
# checkpoints, crosscoders, SAEs, token files, activation caches, .npy) with clang,
# ASan and UBSan (UBSan aborts), and runs each for FUZZ_SECONDS seconds,
# seeded from tests/fixtures and small files build/make_fuzz_seeds writes
# (tests/fuzz_run.sh; not part of `make test`). It prints the executions of
# each harness and fails on any crash, leak or sanitizer report.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SRCS    := $(wildcard tests/fuzz_*.c)
FUZZ_BINS    := $(FUZZ_SRCS:tests/%.c=$(BUILD)/%)
.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BINS) $(BUILD)/make_fuzz_seeds
$(BUILD)/fuzz_%: tests/fuzz_%.c tests/fuzz_common.h moexc.h | $(BUILD)
	$(FUZZ_CC) -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I. $< -o $@ -lm
$(BUILD)/make_fuzz_seeds: tests/make_fuzz_seeds.c $(BUILD)/moexc.o | $(BUILD)
	$(CC) $(ALL_CFLAGS) $< $(BUILD)/moexc.o -o $@ $(LDLIBS)
fuzz: fuzz-build
	sh tests/fuzz_run.sh $(BUILD) $(FUZZ_SECONDS) $(FUZZ_BINS)

# `make valgrind-readers`: valgrind memcheck of the tools on hostile files
# (truncated, bit-flipped, oversized shapes; tests/valgrind_readers.sh, about
# 7 minutes on this machine, not part of `make test`). valgrind cannot run AVX-512, so the
# tools are built again without -march=native (and without OpenMP) in VG_BUILD.
VG_BUILD ?= build-vg
.PHONY: valgrind-readers
valgrind-readers:
	$(MAKE) --no-print-directory BUILD=$(VG_BUILD) NATIVE=0 OPENMP=0 $(VG_BUILD)/moexc_crosscoder \
	    $(VG_BUILD)/moexc_train $(VG_BUILD)/moexc_lens $(VG_BUILD)/moexc_report $(VG_BUILD)/moexc_sae $(VG_BUILD)/make_fuzz_seeds
	sh tests/valgrind_readers.sh $(VG_BUILD)

# ---- area: crosscoder -----------------------------------------------------
# bench-crosscoder: crosscoder training pairs/s, moexc vs an identical PyTorch
# crosscoder (tools/bench_crosscoder_torch.py runs both, same threads), at
# d 128, F 2048, k 32, batch 1024; bench-crosscoder-paper at the paper-like
# shape d 256, F 16384, k 64 (512 shared), batch 2048 (about 2 minutes).
XC_BENCH_THREADS ?= $(BENCH_THREADS)
XC_BENCH = $(GEMM_BENCH_ENV) $(PYTHON) tools/bench_crosscoder_torch.py --c-bench $(BUILD)/bench_crosscoder \
           $(if $(XC_BENCH_THREADS),--threads $(XC_BENCH_THREADS))
.PHONY: bench-crosscoder bench-crosscoder-paper
bench: bench-crosscoder bench-crosscoder-paper
bench-crosscoder: $(BUILD)/bench_crosscoder | bench-deps
	@rm -f $(BUILD)/bench_crosscoder.json
	$(XC_BENCH) --json $(BUILD)/bench_crosscoder.json
bench-crosscoder-paper: $(BUILD)/bench_crosscoder | bench-deps
	@rm -f $(BUILD)/bench_crosscoder_paper.json
	$(XC_BENCH) --d 256 --latents 16384 --k 64 --shared 512 --batch 2048 --steps 7 --json $(BUILD)/bench_crosscoder_paper.json

# ---- area: analysis and plots ---------------------------------------------
# examples/plot_decoder_norms.c writes PNGs with stb_image_write (Debian:
# libstb-dev, /usr/include/stb); point STB_DIR at another copy if needed.
STB_DIR ?= /usr/include/stb
EXTRA_CFLAGS_plot_decoder_norms := -isystem $(STB_DIR)

# `make plots`: the example's figures from synthetic decoders, in build/plots/.
.PHONY: plots
plots: $(BUILD)/plot_decoder_norms
	mkdir -p $(BUILD)/plots
	$(BUILD)/plot_decoder_norms --synthetic -o $(BUILD)/plots/synthetic_

# ---- area: demo -----------------------------------------------------------
# `make demo`: the whole study (corpus, dense + MoE LMs, crosscoder, analysis,
# report) with the default preset into ./report (about 10 minutes on 2 quiet
# cores). DEMO_ARGS adds options, e.g. `make demo DEMO_ARGS="--preset tiny"`.
# It runs on two threads (the two LMs at once, then the crosscoder on both);
# idle OpenMP threads sleep (OMP_WAIT_POLICY=passive unless set): on a shared
# machine a busy-waiting thread steals the core its partner needs.
# stb_image_write (Debian libstb-dev) is installed when it is missing.
DEMO_ARGS ?=
EXTRA_CFLAGS_moexc_demo := -isystem $(STB_DIR)
.PHONY: demo demo-stb
demo-stb:
	@test -f $(STB_DIR)/stb_image_write.h || dpkg -s libstb-dev >/dev/null 2>&1 || apt-get install -y libstb-dev
$(BUILD)/moexc_demo: | demo-stb
demo: $(BUILD)/moexc_demo
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} $(BUILD)/moexc_demo --out report $(DEMO_ARGS)
TEST_SCRIPTS += tests/test_pipeline.sh
test: $(BUILD)/moexc_demo $(BUILD)/moexc_train
# `make study`: the study with its seed controls (SPEC 5.1): besides MoE vs
# dense, dense vs dense' and MoE vs MoE' (twins that differ only in their
# seed), 3 crosscoder seeds per pair, verdicts on the paper's findings; into
# ./report_study. See the README for its measured time.
.PHONY: study
study: $(BUILD)/moexc_demo
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} $(BUILD)/moexc_demo --preset study --out report_study $(DEMO_ARGS)
# bench-demo: user CPU time over wall time of the tiny demo (3 runs, median),
# on BENCH_THREADS threads with idle OpenMP threads asleep.
.PHONY: bench-demo
bench: bench-demo
bench-demo: $(BUILD)/moexc_demo
	@rm -f $(BUILD)/bench_demo.json
	$(GEMM_BENCH_ENV) $(PYTHON) tools/bench_demo.py --demo $(BUILD)/moexc_demo --threads $(BENCH_THREADS) \
	    --json $(BUILD)/bench_demo.json

# ---- area: lens -----------------------------------------------------------
# tools/moexc_lens: the MoE Lens (SPEC §6) on a MoE checkpoint; PNGs with
# stb_image_write like the demo (installed by demo-stb when missing).
EXTRA_CFLAGS_moexc_lens := -isystem $(STB_DIR)
$(BUILD)/moexc_lens: | demo-stb
TEST_SCRIPTS += tests/test_lens_tool.sh
test: $(BUILD)/moexc_lens $(BUILD)/moexc_mkdata $(BUILD)/moexc_train

# ---- area: report ---------------------------------------------------------
# tools/moexc_report: the study's web page (report/index.html, SPEC §5.2) from
# saved files, with the writer the demo uses (tools/report_page.h). The
# browser test renders the tiny pipeline's page, and one built from a corpus
# laced with hostile HTML, in headless Chromium (Debian: chromium); where
# Chromium cannot run it prints SKIPPED with the reason.
EXTRA_CFLAGS_moexc_report := -isystem $(STB_DIR)
$(BUILD)/moexc_report: tools/report_page.h | demo-stb
$(BUILD)/moexc_demo: tools/report_page.h tools/schedule_probe.h
# every program that writes PNGs does it through tools/tool_png.h
$(BUILD)/moexc_demo $(BUILD)/moexc_report $(BUILD)/moexc_lens $(BUILD)/moexc_sae $(BUILD)/toy_superposition \
    $(BUILD)/plot_decoder_norms: tools/tool_png.h
TEST_SCRIPTS += tests/test_report_browser.sh
test: $(BUILD)/moexc_report $(BUILD)/moexc_demo $(BUILD)/moexc_mkdata

# ---- the end of make bench: one summary ------------------------------------
# tools/bench_summary.py gathers the bench-* results of this run into
# $(BUILD)/bench.json (ratios, machine, threads) and prints one table.
bench:
	@$(PYTHON) tools/bench_summary.py --build $(BUILD) --threads $(BENCH_THREADS) --out $(BUILD)/bench.json

# ---- area: toy ------------------------------------------------------------
# `make toy`: superposition in toy MoEs (SPEC §7) into ./toy_report: phase
# diagrams over feature sparsity x k/E next to the dense baseline, the n = 2,
# m = 1 phase change, expert specialisation under K-hot and Xavier router
# init, Elhage-style expert pictures (under 2 minutes on 2 cores). TOY_ARGS
# adds options (build/toy_superposition --help). PNGs via stb_image_write.
TOY_ARGS ?=
EXTRA_CFLAGS_toy_superposition := -isystem $(STB_DIR)
$(BUILD)/toy_superposition: | demo-stb
.PHONY: toy
toy: $(BUILD)/toy_superposition
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} $(BUILD)/toy_superposition --out toy_report $(TOY_ARGS)

# ---- area: data parallelism (SPEC §9) ------------------------------------
# tests/test_dp.c: the reduce hook without MPI (workers are threads of one
# process, the hook an in-process sum), part of `make test`.
EXTRA_LIBS_dp = -lpthread

# MPI=1: the two training tools call MPI through tools/mpi_reduce.h.
ifeq ($(MPI),1)
EXTRA_CFLAGS_moexc_train      += -DMOEXC_MPI
EXTRA_CFLAGS_moexc_crosscoder += -DMOEXC_MPI
endif
$(BUILD)/moexc_train $(BUILD)/moexc_crosscoder: tools/mpi_reduce.h
$(BUILD)/moexc_crosscoder: tools/schedule_probe.h

# `make mpitest`: tests/test_mpi.sh trains the dense and the MoE LM and the
# crosscoder on 2 ranks (mpirun --oversubscribe, one thread each) and on 1,
# compares the parameters, and checks the errors of a bad rank count and of
# mismatched options. Without mpicc/mpirun it says SKIPPED and succeeds.
MPI_BUILD ?= build/mpi
.PHONY: mpitest bench-mpi
mpitest: $(BUILD)/moexc_train
	@if command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory MPI=1 BUILD=$(MPI_BUILD) $(MPI_BUILD)/moexc_train $(MPI_BUILD)/moexc_crosscoder \
	        $(MPI_BUILD)/st_maxdiff && \
	    sh tests/test_mpi.sh $(MPI_BUILD) $(BUILD); \
	else echo "mpitest: SKIPPED (no mpicc/mpirun: apt-get install openmpi-bin libopenmpi-dev)"; fi
$(BUILD)/st_maxdiff: tests/st_maxdiff.c $(BUILD)/moexc.o | $(BUILD)
	$(CC) $(ALL_CFLAGS) $< $(BUILD)/moexc.o -o $@ $(LDLIBS)

# bench-mpi: crosscoder training pairs/s and LM tokens/s, 2 ranks x 1 thread
# against 1 rank x 1 thread (skipped without MPI).
bench: bench-mpi
bench-mpi:
	@if command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory MPI=1 BUILD=$(MPI_BUILD) $(MPI_BUILD)/moexc_train $(MPI_BUILD)/moexc_crosscoder && \
	    sh tests/test_mpi.sh --bench $(MPI_BUILD); \
	else echo "bench-mpi: SKIPPED (no mpicc/mpirun: apt-get install openmpi-bin libopenmpi-dev)"; fi
# ---- area: sae ------------------------------------------------------------
# `make sae`: TopK, Switch and Scale SAEs (SPEC §8) trained at equal F and k
# on the demo's dense and MoE activations (block 3, FFN output, as the demo's
# crosscoder) into ./sae_report: table (markdown, CSV), PNGs, the six SAEs.
# It reuses report/{corpus.tok,moe.ckpt,dense.ckpt} from `make demo` when all
# three exist; otherwise it makes the demo's corpus and trains both language
# models at the demo's size with fewer steps (SAE_LM_STEPS) into
# $(BUILD)/sae_lm/. SAE_ARGS adds options (build/moexc_sae --help).
SAE_LM_STEPS ?= 500
SAE_ARGS ?=
SAE_OPTS := --latents 1024 --k 32 --experts 8 --active 2 --steps 800 --batch 1024 --train-rows 262144 \
            --eval-rows 32768 --splice --splice-seqs 24 --log-every 500
SAE_LM := --d-model 64 --heads 4 --layers 5 --context 128 --steps $(SAE_LM_STEPS) --batch 16 --seq-len 128 --lr 2e-3 \
          --log-every 250 --eval-interval 1000
EXTRA_CFLAGS_moexc_sae := -isystem $(STB_DIR)
$(BUILD)/moexc_sae: | demo-stb
TEST_SCRIPTS += tests/test_sae_tool.sh
test: $(BUILD)/moexc_sae $(BUILD)/moexc_mkdata $(BUILD)/moexc_train $(BUILD)/moexc_crosscoder
.PHONY: sae
sae: $(BUILD)/moexc_sae $(BUILD)/moexc_train $(BUILD)/moexc_mkdata
	@if [ -f report/corpus.tok ] && [ -f report/moe.ckpt ] && [ -f report/dense.ckpt ]; then \
	    echo "sae: using the demo's models in report/"; d=report; \
	else \
	    d=$(BUILD)/sae_lm; mkdir -p $$d; \
	    if [ ! -f $$d/moe.ckpt ] || [ ! -f $$d/dense.ckpt ]; then \
	        echo "sae: no demo models in report/; training both at the demo's size, $(SAE_LM_STEPS) steps, into $$d/"; \
	        $(BUILD)/moexc_mkdata --builtin 2000000 --out $$d/corpus.tok || exit 1; \
	        OMP_NUM_THREADS=1 $(BUILD)/moexc_train --data $$d/corpus.tok --ffn moe --experts 8 --moe-k 2 $(SAE_LM) \
	            --export $$d/moe.ckpt > $$d/moe.log 2>&1 & p1=$$!; \
	        OMP_NUM_THREADS=1 $(BUILD)/moexc_train --data $$d/corpus.tok --ffn dense $(SAE_LM) \
	            --export $$d/dense.ckpt > $$d/dense.log 2>&1 & p2=$$!; \
	        wait $$p1 || { tail -n 5 $$d/moe.log; exit 1; }; wait $$p2 || { tail -n 5 $$d/dense.log; exit 1; }; \
	        tail -n 2 $$d/moe.log; tail -n 2 $$d/dense.log; \
	    fi; \
	fi; \
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} $(BUILD)/moexc_sae --model-a $$d/moe.ckpt --model-b $$d/dense.ckpt \
	    --tokens $$d/corpus.tok --layer 3 --compare sae_report $(SAE_OPTS) $(SAE_ARGS)
# ---- area: hardening: crash safety, fail-fast outputs, Windows, valgrind ----
# tests/test_crashsafe.sh: moexc_train and moexc_crosscoder killed (SIGKILL)
# at random moments and inside saves, resumed bit for bit; diverging runs;
# outputs that cannot be written (part of make test; `make crashtest` alone).
TEST_SCRIPTS += tests/test_crashsafe.sh
CRASH_BINS := $(addprefix $(BUILD)/,moexc_train moexc_crosscoder moexc_mkdata moexc_lens moexc_report moexc_demo)
test: $(CRASH_BINS)
.PHONY: crashtest
crashtest: $(CRASH_BINS)
	BUILD=$(BUILD) sh tests/test_crashsafe.sh
# make valgrind: memcheck of the tiny demo pipeline (corpus, both LMs,
# harvest, crosscoder, analysis, lens, plots, report page). valgrind cannot
# execute AVX-512, so the demo is built again without -march=native (the
# baseline x86-64 SSE2 backend) in $(BUILD)/valgrind, and runs on one thread.
# Fails on any memcheck error and on definite or indirect leaks.
VALGRIND_FLAGS := --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
                  --errors-for-leak-kinds=definite,indirect
.PHONY: valgrind
valgrind:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/valgrind NATIVE=0 $(BUILD)/valgrind/moexc_demo
	rm -rf $(BUILD)/valgrind/report
	OMP_WAIT_POLICY=passive valgrind $(VALGRIND_FLAGS) $(BUILD)/valgrind/moexc_demo --preset tiny --threads 1 \
	    --out $(BUILD)/valgrind/report
